"""A run's life from the command line: starts that fail, resumes, and file-system errors
(issue 10, "Losing work or data"). User errors print one paragraph and exit 2."""

from __future__ import annotations

import errno
import json

import torch
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


def _teacher_config(tmp_path, epochs=2):
    raw = yaml.safe_load(_config(tmp_path).read_text())
    raw["teacher"] = {"kind": "frozen", "model": {"name": "mlp", "params": {"hidden": [16]}},
                      "fit": {"epochs": 3, "optimizer": {"name": "adamw", "lr": 0.01}, "tensorboard": False, "progress": False,
                              "checkpoint_every": 2, "batch_size": 16}}
    raw["objectives"] = [{"kind": "ce"}, {"kind": "kd", "params": {"temperature": 2.0}}]
    raw["train"]["epochs"] = epochs
    path = tmp_path / "teacher_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_run_killed_while_its_teacher_trains_resumes_to_the_same_end(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    config = _teacher_config(tmp_path)
    assert main(["run", str(config), "--out", str(tmp_path / "full")]) == 0
    real = ckpt.save_checkpoint

    def killed_after_teacher_step_4(root, step, *a, **k):
        path = real(root, step, *a, **k)
        if "teacher" in str(root) and step >= 4:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", killed_after_teacher_step_4)
    assert main(["run", str(config), "--out", str(tmp_path / "part")]) == 130
    monkeypatch.setattr(ckpt, "save_checkpoint", real)
    assert not (tmp_path / "part" / "teacher" / "summary.json").exists()
    assert ckpt.latest_checkpoint(tmp_path / "part" / "teacher" / "checkpoints").name == "step-00000004"
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(tmp_path / "part"), "--resume"]) == 0, capsys.readouterr().err
    for name in ("student.safetensors", "teacher/student.safetensors"):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(tmp_path / "part" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # and a second --resume of the finished run still works
    assert main(["run", str(config), "--out", str(tmp_path / "part"), "--resume"]) == 0


def test_resume_refuses_a_changed_config_and_keeps_the_stored_one(tmp_path, capsys):
    config = _config(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    stored = (out / "config.yaml").read_bytes()
    capsys.readouterr()
    code = main(["run", str(config), "--out", str(out), "--resume", "--set", "train.optimizer.name=sgd", "--set", "seed=3"])
    assert code == 2
    err = _error(capsys)
    assert "train.optimizer.name: 'adamw' in the run, 'sgd' now" in err and "seed: 0 in the run, 3 now" in err
    assert (out / "config.yaml").read_bytes() == stored


def test_resume_may_extend_the_epochs(tmp_path, capsys):
    config = _config(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    assert main(["run", str(config), "--out", str(out), "--resume", "--set", "train.epochs=3"]) == 0
    assert "train.epochs: 2 -> 3" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["complete"]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 3


def test_resume_on_a_folder_that_is_not_a_run_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("x")
    assert main(["run", str(_config(tmp_path)), "--out", str(folder), "--resume"]) == 2
    assert "not a run directory" in _error(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["todo.txt"]


def test_a_start_that_fails_before_training_leaves_nothing_behind(tmp_path, capsys):
    config = _config(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--set", "student.params.hiddn=[8]"]) == 2
    assert "hiddn" in _error(capsys)
    assert not out.exists()
    assert main(["run", str(config), "--out", str(out)]) == 0  # the corrected command runs as it stands
    empty = tmp_path / "made_by_user"
    empty.mkdir()
    assert main(["run", str(config), "--out", str(empty), "--set", "data.params.dim=-1"]) == 2
    assert empty.is_dir() and not any(empty.iterdir())
