"""A run's life from the command line: starts that fail, resumes, and file-system errors
(issue 10, "Losing work or data"). User errors print one paragraph and exit 2."""

from __future__ import annotations

import errno

import yaml

from distillery.cli import main
from distillery.engine import checkpoint as ckpt


def _config(tmp_path, **train):
    raw = {
        "seed": 0,
        "data": {"dataset": "gaussian_mixture", "params": {"num_classes": 3, "dim": 6, "n_train": 64, "n_test": 32}, "batch_size": 16},
        "student": {"name": "mlp", "params": {"hidden": [8]}},
        "objectives": [{"kind": "ce"}],
        "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.01}, "tensorboard": False, "progress": False, **train},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


def test_a_full_disk_is_one_paragraph_and_exit_2(tmp_path, capsys, monkeypatch):
    real = ckpt.atomic_write_text

    def full(path, text):
        if path.name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(ckpt, "atomic_write_text", full)
    assert main(["run", str(_config(tmp_path)), "--out", str(tmp_path / "run")]) == 2
    err = _error(capsys)
    assert "No space left on device" in err and "summary.json" in err and "--resume" in err
    monkeypatch.setattr(ckpt, "atomic_write_text", real)
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints") is not None  # the last checkpoint is kept


def test_out_pointing_at_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    assert main(["run", str(_config(tmp_path)), "--out", str(target)]) == 2
    assert "a_file" in _error(capsys)
    assert target.read_text() == "keep me"
