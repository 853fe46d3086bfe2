"""The generative loop on two CPU processes (gloo, torchrun) against one process.

The denoising method draws each update's noise and times for the global batch from a
generator seeded by (seed, step) and every rank takes its slice, and each player's gradients
are averaged over ranks, so two processes must end with the parameters of one process
(tolerance 1e-5: sums are reduced in a different order).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(config: Path, out: Path, nproc: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cli = ["-m", "distillery.cli", "run", str(config), "--out", str(out)]
    if nproc == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", "--master_addr=127.0.0.1", *cli]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_gloo_processes_match_one_process_on_denoising(tmp_path):
    raw = {
        "engine": "generative", "seed": 2,
        "data": {"dataset": "mixture2d", "params": {"modes": 4, "n_train": 256, "n_test": 64}, "batch_size": 32},
        "student": {"denoiser": {"name": "mlp2d", "params": {"hidden": [16, 16], "time_dim": 8}}, "prediction": "velocity"},
        "method": {"kind": "denoising", "params": {"ema_decay": 0.9}},
        "train": {"steps": 12, "optimizer": {"name": "adam", "lr": 1e-2}, "grad_clip": 1.0, "log_every": 4,
                  "checkpoint_every": 6, "progress": False, "tensorboard": False},
        "eval": {"steps": [1], "num_samples": 32, "metrics": []},
    }
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))
    _run(config, tmp_path / "one", 1)
    _run(config, tmp_path / "two", 2)
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    import json

    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
