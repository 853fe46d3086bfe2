"""Two CPU processes with gloo (torchrun) against one process with the same global batch.

The run has an EMA teacher, a momentum queue (InfoNCE) and a DINO center, so the test also
checks that teacher, queue and center stay consistent across ranks: the distiller state of the
2-process run equals the single-process one. Tolerance: 1e-5 absolute on every tensor and on
every logged loss (floating-point sums are reduced in a different order across processes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distillery.engine.logger import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, epochs: int = 4, **train) -> Path:
    raw = {
        "seed": 1,
        "data": {"dataset": "gaussian_mixture", "params": {"num_classes": 4, "dim": 8, "n_train": 256, "n_test": 128},
                 "batch_size": 32},
        "student": {"name": "mlp", "params": {"hidden": [32, 32]}},
        "teacher": {"kind": "ema", "momentum": 0.9, "final_momentum": None},
        "objectives": [
            {"kind": "ce"},
            {"kind": "kd", "params": {"temperature": 2.0}, "weight": 0.5},
            {"kind": "infonce", "params": {"temperature": 0.5, "queue_size": 48}, "weight": 0.0},
            {"kind": "dino", "params": {"out_dim": 4}, "weight": 0.0},
        ],
        "train": {"epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.1}, "log_every": 1, "tensorboard": False,
                  "progress": False, **train},
    }
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(config: Path, out: Path, nproc: int, *extra: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cli = ["-m", "distillery.cli", "run", str(config), "--out", str(out), *extra]
    if nproc == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", "--master_addr=127.0.0.1", *cli]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(run_dir: Path) -> list[dict]:
    # infonce is left out: its in-batch negatives are those of each rank's slice (its queue,
    # compared below, holds every rank's keys); it has weight 0, so it does not move training
    return [{k: v for k, v in r.items() if k in ("step", "loss", "ce", "kd", "dino")}
            for r in read_metrics(run_dir) if r["split"] == "train"]


def _assert_close_runs(a: Path, b: Path) -> None:
    la, lb = _losses(a), _losses(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb] and la
    for ra, rb in zip(la, lb):
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], abs=TOL), (ra["step"], k)
    sa, sb = load_file(str(a / "student.safetensors")), load_file(str(b / "student.safetensors"))
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=TOL, rtol=0)
    # the whole distiller: EMA teacher, momentum queue, DINO center, step counter
    ca = load_file(str(a / "checkpoints" / json.loads((a / "checkpoints" / "latest.json").read_text())["dir"] / "model.safetensors"))
    cb = load_file(str(b / "checkpoints" / json.loads((b / "checkpoints" / "latest.json").read_text())["dir"] / "model.safetensors"))
    assert ca.keys() == cb.keys()
    for k in ca:
        torch.testing.assert_close(ca[k].float(), cb[k].float(), atol=TOL, rtol=0, msg=k)
    assert any("queue" in k for k in ca) and any("center" in k for k in ca)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The reference: one process, 4 epochs (32 optimizer steps)."""
    tmp = tmp_path_factory.mktemp("single")
    _run(_config(tmp, epochs=4), tmp / "one", 1)
    return tmp / "one"


def test_two_gloo_processes_match_one_process(tmp_path, single):
    _run(_config(tmp_path, epochs=4), tmp_path / "two", 2)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 32
    _assert_close_runs(single, tmp_path / "two")


def test_checkpoint_of_two_processes_resumes_in_one(tmp_path, single):
    """Written once by rank 0 after 2 epochs on 2 processes, resumed on 1 process."""
    _run(_config(tmp_path, epochs=2), tmp_path / "split", 2)
    _run(_config(tmp_path, epochs=4), tmp_path / "split", 1, "--resume")
    _assert_close_runs(single, tmp_path / "split")


def test_fsdp_two_processes_match_one_process(tmp_path, single):
    """FSDP2 sharding of the student (the option for students that do not fit one device)."""
    _run(_config(tmp_path, epochs=4, distributed="fsdp"), tmp_path / "fsdp", 2)
    _assert_close_runs(single, tmp_path / "fsdp")


def test_gam_sets_the_same_weight_on_every_rank(tmp_path):
    """Each rank's gradient hooks see its own gradients; the masses are averaged over ranks so
    that both ranks take the same share and modulate lambda identically (without the
    all-reduce the histories differ from the first modulation on)."""
    out = tmp_path / "histories.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "--master_addr=127.0.0.1", str(ROOT / "tests" / "scripts" / "gam_two_ranks.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = json.loads(out.read_text())
    assert len(rank0) == 4 and rank0 == rank1
    assert rank0[-1][2] != rank0[0][2]  # lambda did move


def test_gradnorm_two_processes_match_one_process(tmp_path):
    """GradNorm weights come from the rank-averaged gradient, so they equal one process's."""
    raw = yaml.safe_load(_config(tmp_path, epochs=2).read_text())
    raw["objectives"] = [{"kind": "ce"}, {"name": "feat", "kind": "cosine",
                                          "inputs": {"student": "student.layers.1", "teacher": "teacher.layers.1"}}]
    raw["teacher"] = {"kind": "ema", "momentum": 0.5, "final_momentum": None}
    raw["weighting"] = {"gradnorm": {"task": "ce", "ratios": {"feat": 0.5}, "params": "layers"}}
    cfg = tmp_path / "gradnorm.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    _run(cfg, tmp_path / "one", 1)
    _run(cfg, tmp_path / "two", 2)
    keys = ("step", "loss", "ce", "feat", "weight/feat")
    la = [{k: r[k] for k in keys} for r in read_metrics(tmp_path / "one") if r["split"] == "train"]
    lb = [{k: r[k] for k in keys} for r in read_metrics(tmp_path / "two") if r["split"] == "train"]
    assert len(la) == 16 and [r["step"] for r in la] == [r["step"] for r in lb]
    assert len({round(r["weight/feat"], 6) for r in la}) > 1  # the weight does change
    for ra, rb in zip(la, lb):
        for k in keys:  # the weight reaches ~20: relative 1e-5 for it
            assert ra[k] == pytest.approx(rb[k], abs=TOL, rel=TOL), (ra["step"], k)
