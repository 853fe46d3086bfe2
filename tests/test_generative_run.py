"""The generative step loop behind ``distillery run/validate/sample/report`` on ``engine: generative``.

Tiny networks and 20-step runs: resume gives the same weights as an uninterrupted run, bad
input (steps 0, an interval outside [0, 1], a net of the wrong output shape, a NaN loss) is one
clear message with exit status 2, and a NaN keeps the last good checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from distillery.cli import main
from distillery.config import load_config, parse_config
from distillery.errors import ConfigError
from distillery.generative.config import GenerativeConfig
from distillery.generative.denoisers import DENOISERS
from distillery.generative.method import METHODS
from distillery.generative.objectives.denoising import Denoising, denoising_target
from distillery.generative.processes import build_process
from distillery.generative.run import run_generative


def _raw(**over) -> dict:
    raw = {
        "engine": "generative",
        "name": "tiny",
        "seed": 3,
        "data": {"dataset": "mixture2d", "params": {"modes": 4, "n_train": 256, "n_test": 64}, "batch_size": 32},
        "process": {"kind": "flow"},
        "student": {"denoiser": {"name": "mlp2d", "params": {"hidden": [16, 16], "time_dim": 8}}, "prediction": "velocity"},
        "method": {"kind": "denoising", "params": {"ema_decay": 0.9}},
        "train": {"steps": 20, "optimizer": {"name": "adam", "lr": 1e-2}, "log_every": 5, "checkpoint_every": 5,
                  "progress": False, "tensorboard": False},
        "eval": {"steps": [1, 2], "num_samples": 64, "metrics": []},
    }
    for key, value in over.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return raw


def _write(tmp_path: Path, raw: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


# -- config ----------------------------------------------------------------------------------
def test_generative_config_parses_round_trips_and_names_bad_keys():
    cfg = parse_config(_raw())
    assert isinstance(cfg, GenerativeConfig) and cfg.train.optimizer_for("model")["lr"] == 1e-2
    assert parse_config(yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))) == cfg
    with pytest.raises(ConfigError, match=r"train.stepz: unknown key; allowed keys: .*steps"):
        parse_config(_raw(**{"train.stepz": 3}))
    with pytest.raises(ConfigError, match=r"eval.steps.0: Input should be greater than 0"):
        parse_config(_raw(**{"eval.steps": [0, 1]}))
    with pytest.raises(ConfigError, match=r"process: .*\[0, 1\]"):
        parse_config(_raw(process={"kind": "flow", "t_min": -0.5}))
    with pytest.raises(ConfigError, match=r"method.kind: .*'denoisin'"):
        parse_config(_raw(**{"method.kind": "denoisin"}))
    with pytest.raises(ConfigError, match=r"optimizers.fake: .*lr"):
        parse_config(_raw(**{"train.optimizers": {"fake": {"lr": "fast"}}}))


def test_shipped_teacher_config_loads():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "flow_mixture2d_teacher.yaml")
    assert cfg.method.kind == "denoising" and cfg.student.prediction == "velocity"


# -- the denoising method --------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "velocity"])
@pytest.mark.parametrize("spec", [{"kind": "flow", "shift": 1.0}, {"kind": "flow", "shift": 3.0}, {"kind": "vp", "schedule": "linear"}])
def test_denoising_target_is_the_prediction_of_the_true_pair(prediction, spec):
    """The target equals the exact (x0, eps) pair converted to the prediction kind from x_t."""
    torch.manual_seed(0)
    process = build_process(spec)
    x0, eps = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    t = torch.rand(16, dtype=torch.float64) * 0.8 + 0.1
    x_t = process.add_noise(x0, eps, t)
    expected = process.convert(x0, x_t, t, "x0", prediction)  # written independently: from x_t
    torch.testing.assert_close(denoising_target(process, x0, eps, t, prediction), expected)
    if spec == {"kind": "flow", "shift": 1.0} and prediction == "velocity":
        torch.testing.assert_close(denoising_target(process, x0, eps, t, prediction), eps - x0)


def test_denoising_refuses_bad_params():
    from distillery.generative.denoisers import Denoiser, MLPDenoiser

    net = Denoiser(MLPDenoiser(dim=2, hidden=[8]), build_process(None), "velocity", (2,))
    with pytest.raises(ConfigError, match="min_snr"):
        Denoising(net, weighting="min_snr")
    with pytest.raises(ConfigError, match="label_dropout needs a class-conditional"):
        Denoising(net, label_dropout=0.1)
    with pytest.raises(ConfigError, match="ema_decay"):
        Denoising(net, ema_decay=1.5)


# -- run, resume, outputs --------------------------------------------------------------------
def test_run_writes_outputs_and_resume_gives_the_same_weights(tmp_path):
    cfg = parse_config(_raw())
    full = run_generative(cfg, tmp_path / "full", report=False)
    assert full["steps"] == 20 and full["complete"] and set(full["final"]) == {"1", "2"}
    assert full["final"]["2"]["nfe"] == 2
    out = tmp_path / "full"
    assert (out / "model.safetensors").is_file() and (out / "samples" / "step20_nfe2.safetensors").is_file()
    part = run_generative(cfg, tmp_path / "split", stop_after_steps=10, report=False)
    assert part["steps"] == 10 and not part["complete"]
    again = run_generative(cfg, tmp_path / "split", resume=True, report=False)
    assert again["steps"] == 20
    a, b = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "split" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ma = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    mb = [r for r in map(json.loads, (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == [5, 10, 15, 20]
    assert ma[-1]["model/loss"] == pytest.approx(mb[-1]["model/loss"], abs=1e-6)


def test_resume_refuses_a_changed_method_but_takes_more_steps(tmp_path):
    cfg_path = _write(tmp_path, _raw(**{"train.steps": 10}))
    assert main(["run", str(cfg_path), "--out", str(tmp_path / "r")]) == 0
    changed = _write(tmp_path, _raw(**{"train.steps": 15, "method.params": {"ema_decay": 0.5}}), "c2.yaml")
    assert main(["run", str(changed), "--out", str(tmp_path / "r"), "--resume"]) == 2
    longer = _write(tmp_path, _raw(**{"train.steps": 15}), "c3.yaml")
    assert main(["run", str(longer), "--out", str(tmp_path / "r"), "--resume"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] == 15
    # report and sample on the finished run
    assert main(["report", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "losses.png" in text and "samples_by_steps.png" in text and (tmp_path / "r" / "losses.png").is_file()
    assert main(["sample", str(tmp_path / "r"), "--steps", "2", "--num", "50", "--out", str(tmp_path / "s")]) == 0
    assert load_file(str(tmp_path / "s" / "samples.safetensors"))["samples"].shape == (50, 2)
    assert (tmp_path / "s" / "samples.png").stat().st_size > 1000


def test_validate_runs_every_player_once(tmp_path, capsys):
    assert main(["validate", str(_write(tmp_path, _raw()))]) == 0
    text = capsys.readouterr().out
    assert "player model: x (32, 2)" in text and "nothing was written" in text


# -- bad input through the CLI ---------------------------------------------------------------
def test_sample_refuses_zero_steps(tmp_path, capsys):
    assert main(["run", str(_write(tmp_path, _raw(**{"train.steps": 5}))), "--out", str(tmp_path / "r")]) == 0
    assert main(["sample", str(tmp_path / "r"), "--steps", "0"]) == 2
    assert "--steps must be a positive" in capsys.readouterr().err


def test_eval_step_count_zero_and_bad_interval_exit_2(tmp_path, capsys):
    assert main(["run", str(_write(tmp_path, _raw(**{"eval.steps": [0]}))), "--out", str(tmp_path / "a")]) == 2
    assert "eval.steps.0" in capsys.readouterr().err and not (tmp_path / "a").exists()
    bad = _raw(process={"kind": "flow", "t_min": 0.2, "t_max": 1.5})
    assert main(["run", str(_write(tmp_path, bad, "b.yaml")), "--out", str(tmp_path / "b")]) == 2
    assert "[0, 1]" in capsys.readouterr().err


class _WrongShape(nn.Module):
    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim + 1)

    def forward(self, x, t, cond=None):
        return self.lin(x)


def test_a_net_whose_output_shape_differs_is_refused(tmp_path, capsys):
    if "test_wrong_shape" not in DENOISERS:
        DENOISERS.register("test_wrong_shape")(_WrongShape)
    raw = _raw(**{"student.denoiser": {"name": "test_wrong_shape"}})
    assert main(["run", str(_write(tmp_path, raw)), "--out", str(tmp_path / "w")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "returned shape (2, 3)" in err and "(2, 2)" in err and not (tmp_path / "w").exists()


class _NaNAfter(Denoising):
    """Denoising whose loss becomes NaN from step 7 on (a diverging player)."""

    def loss(self, player, batch, step):
        loss, figures = super().loss(player, batch, step)
        return (loss * float("nan") if step >= 7 else loss), figures


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, capsys):
    if "test_nan_after" not in METHODS:
        METHODS.register("test_nan_after")(_NaNAfter)
    raw = _raw(**{"method.kind": "test_nan_after"})
    assert main(["run", str(_write(tmp_path, raw)), "--out", str(tmp_path / "n")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "player 'model'" in err and "step 8" in err and "step-00000005" in err
    assert (tmp_path / "n" / "checkpoints" / "step-00000005").is_dir()
    failed = json.loads((tmp_path / "n" / "failed.json").read_text())
    assert failed["error"] == "NonFiniteLossError" and failed["step"] == 7


GENERATIVE_CONFIGS = [p for p in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
                      if yaml.safe_load(p.read_text()).get("engine") == "generative"]


def _shortened(path: Path, tmp_path: Path, extra: list[str] = ()) -> dict:
    """Run a shipped config for 3 steps; a teacher given as a run directory (``teacher.kind:
    run``) is first made by running the shipped config of that name, shortened too."""
    raw = yaml.safe_load(path.read_text())
    sets = ["train.steps=3", "train.log_every=1", "train.eval_every=null", "train.checkpoint_every=null", "eval.steps=[1]",
            "eval.num_samples=32", "eval.metrics=[]", "data.batch_size=64", "train.progress=false",
            "train.tensorboard=false", *extra]
    if raw["data"]["dataset"] == "mixture2d":
        sets.append("data.params.n_train=512")
    teacher = raw.get("teacher") or {}
    if teacher.get("kind") == "run":
        source = path.parent / f"{Path(teacher['run']).name}.yaml"
        assert source.is_file(), f"{path.name}: its teacher run {teacher['run']} has no shipped config {source.name}"
        _shortened(source, tmp_path / "teacher_run")
        sets.append(f"teacher.run={tmp_path / 'teacher_run' / 'run'}")
    cfg = load_config(path, sets)
    return run_generative(cfg, tmp_path / "run", report=False)


@pytest.mark.parametrize("path", GENERATIVE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_generative_config_runs_shortened(path, tmp_path):
    summary = _shortened(path, tmp_path)
    assert summary["complete"] and summary["steps"] == 3
