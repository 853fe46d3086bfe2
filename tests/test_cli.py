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
    # issue 10: a run stopped before its first checkpoint resumes from the start, but only with
    # the config it was started with; this folder's config is not that one
    assert "the config differs from the one the run" in msg and "x: 1 in the run" in msg


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
    msg = _user_error(capsys, ["run", str(cfg), "--out", str(out), "--set", "train.optimizer={name: sgd, lr: 0.1}", "--set", "objectives.0.weight=1.0e+30",
                               "--set", "train.epochs=5", "--set", "train.checkpoint_every=1"])
    assert "Loss term 'ce' became" in msg and "at step" in msg and "last good checkpoint is kept" in msg
    step = int(msg.split("at step ")[1].split()[0])
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == step  # the last checkpoint is the last finite step
    assert (out / "metrics.jsonl").is_file()


def test_report_of_a_non_run_directory(tmp_path, capsys):
    msg = _user_error(capsys, ["report", str(tmp_path)])
    assert "is not a run directory" in msg


def _fake_run(run: Path, teacher: bool) -> Path:
    """A run directory as 'distillery run' leaves it: metrics, summary and predictions."""
    import torch
    from safetensors.torch import save_file

    run.mkdir()
    g = torch.Generator().manual_seed(0)
    records = [{"split": "train", "step": s, "epoch": s / 10, "lr": 0.01, "loss": 2.0 / s, "ce": 2.0 / s} for s in range(1, 31)]
    for epoch in (1, 2, 3):
        rec = {"split": "eval", "step": 10 * epoch, "epoch": epoch, "accuracy": 0.80 + 0.02 * epoch, "nll": 0.5, "ece": 0.05}
        if teacher:
            rec.update(teacher_accuracy=0.9, agreement=0.81 + 0.02 * epoch)
        records.append(rec)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    final = {k: v for k, v in records[-1].items() if k not in ("split", "step", "epoch")}
    (run / "summary.json").write_text(json.dumps({"final": final, "steps": 30, "wall_s": 1.0}))
    preds = {"y": torch.randint(0, 5, (200,), generator=g), "student": 3 * torch.randn(200, 5, generator=g)}
    if teacher:
        preds["teacher"] = 3 * torch.randn(200, 5, generator=g)
    save_file(preds, str(run / "predictions.safetensors"))
    return run


def test_report_sections_follow_what_the_run_has(tmp_path, capsys):
    # issue 10: a CE-only run's report had a "teacher-student agreement" heading
    plain = _fake_run(tmp_path / "ce_only", teacher=False)
    assert main(["report", str(plain)]) == 0
    report = (plain / "report.md").read_text()
    assert "agreement" not in report.lower()
    assert "## Accuracy\n" in report and "## Calibration" in report and "teacher ECE" not in report
    assert "samples per bin" in report  # the reliability diagram shows its bin counts
    for png in ("learning_curves.png", "eval_curves.png", "reliability.png"):
        assert (plain / png).stat().st_size > 0
    distilled = _fake_run(tmp_path / "kd", teacher=True)
    assert main(["report", str(distilled)]) == 0
    report = (distilled / "report.md").read_text()
    assert "## Accuracy and teacher-student agreement" in report and "teacher ECE" in report


def test_report_plots_agreement_apart_on_zoomed_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from distillery.engine.logger import read_metrics
    from distillery.evaluation import report

    run = _fake_run(tmp_path / "kd", teacher=True)
    records = read_metrics(run)
    made = []
    real_savefig = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        made.append(fig)
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        assert report.plot_eval_curves(records, run / "eval.png") == ["accuracy", "agreement"]
        report.plot_reliability({k: v for k, v in __import__("safetensors.torch", fromlist=["load_file"])
                                 .load_file(str(run / "predictions.safetensors")).items()}, run / "rel.png")
    finally:
        plt.Figure.savefig = real_savefig
    acc_ax, agree_ax = made[0].axes
    # accuracy 0.82..0.86 and teacher 0.9: the axis spans the data, not 0..1
    assert 0.7 < acc_ax.get_ylim()[0] < 0.82 and 0.9 < acc_ax.get_ylim()[1] < 1.0
    assert [line.get_marker() for line in acc_ax.lines] == ["o", "s"]
    assert 0.75 < agree_ax.get_ylim()[0] < 0.83 and agree_ax.get_ylim()[1] < 0.95
    # reliability: one accuracy panel and one count panel per model
    assert len(made[1].axes) == 4
    counts = [int(round(p.get_height())) for p in made[1].axes[2].patches]
    assert sum(counts) == 200


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


def test_run_takes_the_name_of_a_bundled_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the name is looked up in the package
    assert main(["run", "dkd_digits", "--set", "train.epochs=1", "--set", "teacher.fit.epochs=1",
                 "--set", "train.tensorboard=false"]) == 0
    assert "run finished: runs/dkd_digits" in capsys.readouterr().out
    resolved = yaml.safe_load((tmp_path / "runs" / "dkd_digits" / "config.yaml").read_text())
    assert resolved["name"] == "dkd_digits" and resolved["objectives"][1]["kind"] == "dkd"


def test_an_existing_path_wins_over_a_bundled_name(tmp_path, capsys, monkeypatch):
    own = _config(tmp_path).rename(tmp_path / "dkd_digits")  # a file named like a bundled config
    monkeypatch.chdir(tmp_path)
    assert main(["run", "dkd_digits", "--out", "r", "--set", "train.epochs=1"]) == 0
    resolved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert resolved["student"]["params"]["hidden"] == [32] and own.is_file()  # this file, not the bundled one


def test_unknown_config_name_lists_close_matches(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = _user_error(capsys, ["run", "kd_mnist"])
    assert "'kd_mnist' is neither an existing config file nor the name of a bundled config" in msg
    assert "kd_mnist1d" in msg and "distillery list" in msg
    msg = _user_error(capsys, ["run", "configs/kd_mnist1d.yaml"])  # the repository path, typed elsewhere
    assert "does not exist" in msg and "'distillery run kd_mnist1d'" in msg
    assert not (tmp_path / "runs").exists()


def test_list_shows_the_bundled_configs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    section = out.split("configs (bundled;")[1]
    assert "  kd_mnist1d " in section and "recipe hinton_kd" in section
    assert "  dino_digits " in section and "  cached_kd_mnist1d " in section  # configs without a recipe too


def _component_block(out: str, name: str) -> str:
    """The lines 'distillery list --params' prints for component ``name``."""
    import re

    return re.split(r"\n(?=  \S|\n)", out.split(f"\n  {name}  ", 1)[1], maxsplit=1)[0]


def test_list_params_shows_every_dataset_view_and_model_with_types_defaults_and_meanings(capsys):
    from distillery import registry

    assert main(["list", "--params"]) == 0
    out = capsys.readouterr().out
    for section, reg in (("datasets:", registry.DATASETS), ("views:", registry.VIEWS), ("models:", registry.MODELS)):
        assert section in out
        for name in reg.names():
            assert f"\n  {name}  " in out, name
    block = _component_block(out, "image_folder")
    for line in ("path: str | os.PathLike  (required)", "test_path: str | os.PathLike | None = null",
                 "test_fraction: float = 0.2", "size: int | tuple[int, int] | None = null",
                 "grayscale: bool | None = null", "seed: int = 0"):
        assert f"\n      {line}\n" in block, line
    assert "one channel (true), RGB (false)" in block  # the meaning, from the docstring's Args section
    assert "``" not in out
    cnn = _component_block(out, "cnn2d")
    assert "input_shape: Sequence[int]  (given by the dataset)" in cnn and "channels: Sequence[int] = [32, 64, 64]" in cnn
    assert "extra_stages: int | None = null" in cnn


def test_list_params_of_one_component_and_an_unknown_name(capsys):
    assert main(["list", "--params", "npz"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset:\n  npz  ") and "models:" not in out and "image_folder" not in out
    assert "x_test" in out and "seed: int = 0" in out
    msg = _user_error(capsys, ["list", "--params", "imagefolder"])
    assert "'imagefolder'" in msg and "Did you mean 'image_folder'?" in msg


def test_docstring_args_reads_google_style_entries():
    from distillery.config.describe import docstring_args, yaml_value

    doc = """Summary.

    Args:
        path: the ``.npz`` file, e.g. ``data.npz``. More detail
            that is left out.
        low, high (float): the range
            drawn from.

        seed: after a blank line, still in the section.

    Returns the splits.
    """
    assert docstring_args(doc) == {"path": "the `.npz` file, e.g. `data.npz`.", "low": "the range drawn from.",
                                   "high": "the range drawn from.", "seed": "after a blank line, still in the section."}
    assert docstring_args(None) == {} and docstring_args("No sections.") == {}
    assert [yaml_value(v) for v in (None, True, (1, 2), "batch", "", 0.5)] == ["null", "true", "[1, 2]", "batch", "''", "0.5"]
