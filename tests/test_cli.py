"""The command line: a full run, its outputs, the demo, and every user-error path.

User errors must print one paragraph (no traceback) and exit with status 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from distillery.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **changes) -> Path:
    """A small digits run: MLP student, frozen CNN teacher fitted for 2 epochs."""
    raw = {
        "seed": 0,
        "data": {"dataset": "digits", "batch_size": 64},
        "student": {"name": "mlp", "params": {"hidden": [32]}},
        "teacher": {"kind": "frozen", "model": {"name": "cnn2d", "params": {"channels": [8, 16, 16]}},
                    "fit": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.01}}},
        "objectives": [{"kind": "ce"}, {"kind": "kd", "params": {"temperature": 2.0}}],
        "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.01}, "tensorboard": False},
    }
    for key, value in changes.items():
        node = raw
        parts = key.split("__")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[parts[-1]] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _user_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    return " ".join(err.split())


def test_run_writes_every_output_and_report_regenerates(tmp_path, capsys):
    cfg = _config(tmp_path, train__tensorboard=True)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--set", "train.epochs=3"]) == 0
    printed = capsys.readouterr().out
    assert "run finished" in printed and "accuracy=" in printed
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "student.safetensors", "predictions.safetensors",
                 "report.md", "learning_curves.png", "eval_curves.png", "reliability.png", "teacher/student.safetensors"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == 3  # the override is recorded
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["complete"]
    report = (out / "report.md").read_text()
    assert "ECE" in report and "learning_curves.png" in report
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report


def test_resume_of_a_finished_run_reproduces_its_summary(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    first = json.loads((out / "summary.json").read_text())
    assert main(["run", str(cfg), "--out", str(out), "--resume"]) == 0
    second = json.loads((out / "summary.json").read_text())
    assert second["final"] == first["final"] and second["steps"] == first["steps"]


def test_existing_run_directory_is_never_overwritten(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(out)])
    assert "already exists and is not empty" in msg and "--overwrite" in msg
    assert (out / "precious.txt").read_text() == "keep me"
    assert main(["run", str(cfg), "--out", str(out), "--overwrite", "--set", "train.epochs=1"]) == 0
    assert not (out / "precious.txt").exists()


def test_resume_without_checkpoint_is_refused(tmp_path, capsys):
    cfg = _config(tmp_path)
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(tmp_path / "none"), "--resume"])
    assert "does not exist or is empty" in msg
    empty = tmp_path / "partial"
    empty.mkdir()
    (empty / "config.yaml").write_text("x: 1\n")
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(empty), "--resume"])
    assert "holds no checkpoint to resume from" in msg


def test_bad_config_names_the_key(tmp_path, capsys):
    cfg = _config(tmp_path)
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(tmp_path / "r"), "--set", "train.optimizer.lr=-1"])
    assert "train.optimizer.lr: Input should be greater than 0 (got -1)" in msg
    assert not (tmp_path / "r").exists()


def test_missing_data_file(tmp_path, capsys):
    cfg = _config(tmp_path, data={"dataset": "npz", "params": {"path": str(tmp_path / "missing.npz")}})
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(tmp_path / "r")])
    assert "missing.npz" in msg and "does not exist" in msg


def test_npz_user_data_runs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    x = rng.normal(size=(150, 5)) + 3 * np.eye(3, 5)[y]
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), y=y)
    cfg = _config(tmp_path, data={"dataset": "npz", "params": {"path": str(tmp_path / "d.npz")}, "batch_size": 32},
                  teacher={"kind": "frozen", "model": {"name": "mlp", "params": {"hidden": [16]}},
                           "fit": {"epochs": 5, "optimizer": {"name": "adamw", "lr": 0.02}}})
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--set", "train.epochs=5"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["final"]["accuracy"] > 0.7  # three well-separated blobs


def test_wrong_module_path_lists_nearest_paths(tmp_path, capsys):
    cfg = _config(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["objectives"].append({"name": "feat", "kind": "mse", "inputs": {"student": "student.layers.0.fc", "teacher": "teacher.blocks.1.convv"}, "adapter": "linear"})
    cfg.write_text(yaml.safe_dump(raw))
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(tmp_path / "r"), "--set", "teacher.fit.epochs=1"])
    assert "No module 'blocks.1.convv' in the teacher" in msg and "blocks.1.conv" in msg


def test_unmatched_shapes_are_explained(tmp_path, capsys):
    cfg = _config(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["objectives"].append({"name": "feat", "kind": "mse", "inputs": {"student": "student.layers.0.fc", "teacher": "teacher.pool"}})
    cfg.write_text(yaml.safe_dump(raw))
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(tmp_path / "r"), "--set", "teacher.fit.epochs=1"])
    assert "[64, 32]" in msg and "[64, 16]" in msg and "adapter" in msg


def test_impossible_adapter_is_explained(tmp_path, capsys):
    cfg = _config(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["objectives"].append({"name": "feat", "kind": "mse", "adapter": "conv1x1",
                              "inputs": {"student": "student.layers.0.fc", "teacher": "teacher.blocks.1"}})
    cfg.write_text(yaml.safe_dump(raw))
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(tmp_path / "r"), "--set", "teacher.fit.epochs=1"])
    assert "conv1x1 adapter for term 'feat'" in msg


def test_nan_loss_stops_names_term_and_step_and_keeps_checkpoint(tmp_path, capsys):
    cfg = _config(tmp_path, teacher=None, objectives=[{"kind": "ce"}])
    out = tmp_path / "r"
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(out), "--set", "train.optimizer={name: sgd, lr: 1.0e+30}",
                               "--set", "train.epochs=5", "--set", "train.checkpoint_every=1"])
    assert "Loss term 'ce' became" in msg and "at step" in msg and "last good checkpoint is kept" in msg
    step = int(msg.split("at step ")[1].split()[0])
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == step  # the last checkpoint is the last finite step
    assert (out / "metrics.jsonl").is_file()


def test_report_of_a_non_run_directory(tmp_path, capsys):
    msg = _user_error(capsys, ["report", str(tmp_path)])
    assert "is not a run directory" in msg


def test_list_names_every_component(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for section in ("teachers:", "objectives:", "weightings:", "datasets:", "views:", "models:", "recipes:"):
        assert section in out
    for name in ("ema", "self_ensemble", "privileged", "bank", "kd", "dkd", "dino", "gradnorm", "gt_mix", "mnist1d",
                 "image_folder", "vit", "resnet", "patch_mask", "hinton_kd", "mean_teacher"):
        assert f"  {name} " in out, name
    assert "``" not in out  # reST literals are shown as `x`, not ``x``
    # a summary is the docstring's whole first paragraph, not its first line cut mid-sentence
    assert "and InfoNCE self-learning, mixed per sample by difficulty" in out


def test_registry_summary_is_the_first_paragraph():
    from distillery.registry import _first_line

    doc = """Soft KD with ``T``
    over two lines.

    Details that stay out of the summary.
    """
    assert _first_line(doc) == "Soft KD with `T` over two lines."
    assert _first_line(None) == "" and _first_line("   ") == ""


def test_user_error_from_a_real_process_has_no_traceback(tmp_path):
    cfg = _config(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-m", "distillery.cli", "run", str(cfg), "--set", "train.epochs=0"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train.epochs: Input should be greater than 0" in proc.stderr


def test_quick_demo_writes_the_summary_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--seeds", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["rows"]}
    assert list(rows) == ["teacher", "student_ce", "student_kd", "student_kd_unlabeled"]
    for r in rows.values():
        assert set(r) >= {"name", "accuracy_mean", "accuracy_std", "seeds", "wall_s"}
        assert 0.0 <= r["accuracy_mean"] <= 1.0 and r["wall_s"] > 0
    assert rows["student_ce"]["seeds"] == 1
    # the effect the demo exists to show, from the training it just did
    assert rows["teacher"]["accuracy_mean"] > rows["student_kd_unlabeled"]["accuracy_mean"] > rows["student_ce"]["accuracy_mean"]
    for name in ("report.md", "accuracy.png", "student_kd_unlabeled.yaml"):
        assert (out / name).is_file()
    assert "student_kd_unlabeled" in printed and "+-" in printed
    # the copied config runs as it stands (here shortened)
    assert main(["run", str(out / "student_ce.yaml"), "--out", str(tmp_path / "again"), "--set", "train.epochs=1"]) == 0


def test_bad_objective_of_a_teacher_fit_names_its_own_key(tmp_path, capsys):
    cfg = _config(tmp_path, teacher__fit__objectives=[{"kind": "ce", "params": {"label_smoothin": 0.1}}])
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert "teacher.fit.objectives.0 (ce).params" in msg and "label_smoothin" in msg
