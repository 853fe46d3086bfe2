"""The generative loop on two CPU processes (gloo, torchrun) against one process.

Every method draws each update's per-sample noise, times and step indices for the global batch
from a generator seeded by (seed, step, player, update) and every rank takes its slice
(``GenerativeMethod.drawing``), and each player's gradients are averaged over ranks, so two
processes must end with the parameters of one process (tolerance 1e-5: sums are reduced in a
different order). Checked on denoising, on DMD2 (two players, two fake-score updates per step,
a two-step generator with backward simulation, the GAN head: the whole checkpointed state) and
on consistency distillation (the EMA target). VDOT's OT term couples the samples of a batch and
is not expected to match (see ``distillery.generative.method``).
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


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    """The whole trainable state of a finished run: its last checkpoint's ``model.safetensors``."""
    import json

    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["dir"]
    return load_file(str(run / "checkpoints" / latest / "model.safetensors"))


def _one_against_two(tmp_path: Path, raw: dict) -> dict[str, torch.Tensor]:
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))
    _run(config, tmp_path / "one", 1)
    _run(config, tmp_path / "two", 2)
    return _assert_same_state(tmp_path / "one", tmp_path / "two")


def _mixture_run(method: dict, prediction: str, steps: int = 6) -> dict:
    return {
        "engine": "generative", "seed": 3,
        "data": {"dataset": "mixture2d", "params": {"modes": 4, "n_train": 256, "n_test": 64}, "batch_size": 32},
        "teacher": {"kind": "analytic_mixture", "prediction": "eps"},
        "student": {"denoiser": {"name": "mlp2d", "params": {"hidden": [16, 16], "time_dim": 8}}, "prediction": prediction},
        "method": method,
        "train": {"steps": steps, "optimizer": {"name": "adam", "lr": 1e-2}, "grad_clip": 1.0, "log_every": 3,
                  "progress": False, "tensorboard": False},
        "eval": {"steps": [1], "num_samples": 16, "metrics": []},
    }


def _dmd_config(tmp: Path, shard: bool) -> Path:
    """DMD2 against a network teacher (a random mlp2d saved as a checkpoint, so that it has
    weights to shard): fake score (2 updates per step, a copy of the teacher) + GAN head + R1,
    then the generator (2 steps, backward simulation: its per-sample step index and re-noising
    are drawn for the global batch)."""
    from safetensors.torch import save_file

    from distillery.generative.denoisers import build_denoiser_net

    spec = {"name": "mlp2d", "params": {"hidden": [16, 16], "time_dim": 8}}
    weights = tmp / "teacher.safetensors"
    if not weights.exists():
        torch.manual_seed(11)
        save_file({k: v.contiguous() for k, v in build_denoiser_net(spec, (2,), None).state_dict().items()}, str(weights))
    params = {"variant": "dmd2", "generator_steps": 2, "fake_updates": 2, "fake_init": "teacher",
              "gan_weight": 0.1, "r1_weight": 0.01, "gan_hidden": 8}
    raw = _mixture_run({"kind": "dmd", "params": params}, "x0")
    raw["teacher"] = {"kind": "denoiser", "denoiser": spec, "checkpoint": str(weights), "prediction": "velocity", "shard": shard}
    config = tmp / f"dmd-shard{int(shard)}.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


@pytest.fixture(scope="module")
def dmd_single(tmp_path_factory) -> tuple[Path, Path]:
    """The reference: one process (``teacher.shard`` is ignored there)."""
    tmp = tmp_path_factory.mktemp("dmd")
    _run(_dmd_config(tmp, shard=True), tmp / "one", 1)
    return tmp, tmp / "one"


def _assert_same_state(a: Path, b: Path) -> dict[str, torch.Tensor]:
    sa, sb = _final_state(a), _final_state(b)
    assert sa.keys() == sb.keys() and sa
    for k in sa:
        torch.testing.assert_close(sa[k].float(), sb[k].float(), atol=1e-5, rtol=0, msg=k)
    return sa


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_dmd2_with_gan_head(dmd_single):
    tmp, single = dmd_single
    _run(_dmd_config(tmp, shard=False), tmp / "ddp", 2)
    state = _assert_same_state(single, tmp / "ddp")
    assert any(k.startswith("gan_head.") for k in state) and any(k.startswith("fake.") for k in state)
    assert not any(k.startswith("teacher.") for k in state)


@pytest.mark.slow
def test_fsdp_sharded_teacher_matches_one_process_on_dmd2(dmd_single):
    """``teacher.shard: true``: the teacher's network is FSDP2-sharded over the 2 gloo ranks
    (all-gathered per forward), which leaves the run equal to one process."""
    tmp, single = dmd_single
    _run(_dmd_config(tmp, shard=True), tmp / "fsdp", 2)
    _assert_same_state(single, tmp / "fsdp")
    import json

    assert json.loads((tmp / "fsdp" / "summary.json").read_text())["teacher_sharded"] is True
    assert json.loads((single / "summary.json").read_text())["teacher_sharded"] is False


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_consistency_distillation(tmp_path):
    params = {"num_scales": 6, "ema_decay": 0.9, "solver": "euler", "init_from_teacher": False}
    state = _one_against_two(tmp_path, _mixture_run({"kind": "consistency", "params": params}, "velocity"))
    assert any(k.startswith("target.") for k in state)
