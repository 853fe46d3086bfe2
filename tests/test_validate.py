"""``distillery validate``: a config is checked on one batch, nothing is trained or written.

Each case prints the data, the networks, the shape and dtype of every signal each term reads and
the terms' values, then "ok"; a broken config is its named error and exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from distillery.cli import main
from distillery.config import load_config
from distillery.validate import validate


def _config(tmp_path: Path, **sections) -> Path:
    """A small digits config (MLP student, CNN teacher fitted for 2 epochs), sections replaced."""
    raw = {
        "name": "small",
        "seed": 0,
        "data": {"dataset": "digits", "batch_size": 32},
        "student": {"name": "mlp", "params": {"hidden": [16]}},
        "teacher": {"kind": "frozen", "model": {"name": "cnn2d", "params": {"channels": [4, 8, 8]}},
                    "fit": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.01}}},
        "objectives": [{"kind": "ce"}, {"kind": "kd", "params": {"temperature": 2.0}, "weight": 0.5}],
        "train": {"epochs": 3, "optimizer": {"name": "adamw", "lr": 0.01}, "tensorboard": False},
    }
    raw.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory, which must stay empty (no run directory, nothing written)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _ok(capsys, argv: list[str], cwd: Path) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.rstrip().splitlines()[-1].startswith("ok (")
    assert list(cwd.iterdir()) == []
    return out


def test_frozen_teacher_with_fit_keeps_its_random_weights(tmp_path, workdir, capsys):
    out = _ok(capsys, ["validate", str(_config(tmp_path))], workdir)
    assert "teacher would be trained first by teacher.fit (2 epochs); its random weights are used here" in out
    assert "data: digits: 1,347 train, 450 test, 0 unlabeled; input shape [1, 8, 8], 10 classes" in out
    assert "student: MLP (mlp), 1,210 parameters, 1,210 trainable" in out
    assert "teacher: FrozenTeacher, network ConvNet" in out and "0 trainable" in out
    lines = out.splitlines()
    kd = lines.index(next(line for line in lines if line.strip().startswith("kd ")))
    assert " x 0.5" in lines[kd]
    assert lines[kd + 1].split() == ["student.logits", "[32,", "10]", "float32"]
    assert lines[kd + 2].split() == ["teacher.logits", "[32,", "10]", "float32"]
    assert "batch.y" in out and "3 epochs x 43 batches = 129 optimizer steps" in out


def test_nothing_is_trained(tmp_path, monkeypatch):
    """Neither the teacher's fit nor the student's training runs, and no optimizer steps."""
    from distillery.engine.trainer import Trainer

    def refuse(*args, **kwargs):
        raise AssertionError("validate must not train")

    monkeypatch.setattr(Trainer, "fit", refuse)
    monkeypatch.setattr(torch.optim.AdamW, "step", refuse)
    report = validate(load_config(_config(tmp_path)))
    assert [t.name for t in report.terms] == ["ce", "kd"]
    assert all(torch.isfinite(torch.tensor(t.value)) for t in report.terms)
    assert report.notes == ["teacher would be trained first by teacher.fit (2 epochs); its random weights are used here"]


def test_self_distillation_with_an_ema_teacher(tmp_path, workdir, capsys):
    path = _config(
        tmp_path,
        data={"dataset": "digits", "batch_size": 32, "student_view": [{"name": "noise", "std": 0.05}]},
        student={"name": "cnn2d", "params": {"channels": [4, 8, 8]}},
        teacher={"kind": "ema", "momentum": 0.99, "view": [{"name": "noise", "std": 0.05}]},
        objectives=[{"kind": "ce"}, {"name": "consistency", "kind": "kd", "params": {"temperature": 1.0},
                                     "weight": {"kind": "linear_warmup", "value": 1.0, "warmup_steps": 10}}],
    )
    out = _ok(capsys, ["validate", str(path)], workdir)
    assert "teacher: EMATeacher, network ConvNet" in out
    assert "would be trained first" not in out
    lines = out.splitlines()
    term = lines.index(next(line for line in lines if line.strip().startswith("consistency ")))
    assert lines[term].split()[2:] == ["x", "0", "(kd)"]  # the warm-up weight at step 0
    assert lines[term + 2].split() == ["teacher.logits", "[32,", "10]", "float32"]


def test_feature_term_with_adapter_reports_both_shapes(tmp_path, workdir, capsys):
    path = _config(
        tmp_path,
        student={"name": "cnn2d", "params": {"channels": [4, 8, 8]}},
        teacher={"kind": "frozen", "model": {"name": "cnn2d", "params": {"channels": [4, 16, 16]}},
                 "fit": {"epochs": 1}},
        objectives=[{"kind": "ce"}, {"name": "hint", "kind": "mse", "adapter": "conv1x1",
                                     "inputs": {"student": "student.blocks.1", "teacher": "teacher.blocks.1"}}],
    )
    out = _ok(capsys, ["validate", str(path)], workdir)
    assert "adapters and objectives: 144 trainable parameters" in out  # 8 -> 16 channels: 8*16 + 16
    hint = [line.split() for line in out.splitlines() if "blocks.1" in line]
    assert hint[0] == ["student.blocks.1", "[32,", "8,", "4,", "4]", "float32", "->", "conv1x1", "adapter", "->",
                       "[32,", "16,", "4,", "4]"]
    assert hint[1] == ["teacher.blocks.1", "[32,", "16,", "4,", "4]", "float32"]

    report = validate(load_config(path))
    student_in = report.terms[1].inputs[0]
    assert (student_in.ref, student_in.shape, student_in.adapted) == ("student.blocks.1", (32, 8, 4, 4), (32, 16, 4, 4))


def test_bad_tap_path_is_a_named_error(tmp_path, workdir, capsys):
    path = _config(
        tmp_path,
        objectives=[{"kind": "ce"}, {"name": "hint", "kind": "mse", "adapter": "linear",
                                     "inputs": {"student": "student.layers.0", "teacher": "teacher.blocks.9"}}],
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "No module 'blocks.9' in the teacher" in " ".join(err.split())
    assert list(workdir.iterdir()) == []


def test_bundled_config_by_name(workdir, capsys):
    out = _ok(capsys, ["validate", "dkd_digits", "--set", "data.batch_size=16"], workdir)
    assert out.startswith("config: dkd_digits (") and "dkd_digits.yaml)" in out.splitlines()[0]
    assert "teacher.logits  [16, 10]" in out


def test_unknown_config_name(workdir, capsys):
    assert main(["validate", "kd_mnist1dd"]) == 2
    assert "kd_mnist1d" in capsys.readouterr().err
