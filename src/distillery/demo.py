"""``distillery demo``: knowledge distillation on MNIST-1D, from scratch, in a few minutes.

1. A 1D-CNN teacher is trained on the 4,000 labeled MNIST-1D samples.
2. MLP students are trained over several seeds:
   (a) ``student_ce``: cross-entropy on the labeled set only;
   (b) ``student_kd``: cross-entropy + soft-target KD (Hinton et al. 2015) on the labeled set;
   (c) ``student_kd_unlabeled``: the same plus extra unlabeled samples drawn from the
       MNIST-1D generator, on which only the teacher's soft targets teach (as in SSLD).
3. A table of test accuracy (mean +- std over seeds) and wall time is printed, and
   ``summary.json``, ``report.md`` and plots are written to the demo directory.

Every number comes from the training done by this command. Each run is an ordinary
distillery run directory whose ``config.yaml`` can be copied and re-run with
``distillery run``. The KD students read the teacher's logits precomputed once over their
training set (``teacher.precompute: true``): the teacher sees un-augmented inputs, so this
equals running it online every batch, only faster.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

from .config import dump_config, parse_config
from .engine.checkpoint import atomic_write_json, atomic_write_text
from .runner import prepare_run_dir, run

STUDENTS = ("student_ce", "student_kd", "student_kd_unlabeled")


def demo_settings(quick: bool = False) -> dict[str, Any]:
    """The demo's sizes; ``quick`` shrinks everything for a smoke check."""
    if quick:
        return {"unlabeled": 8000, "teacher_epochs": 8, "student_epochs": 15, "unlabeled_epochs": 8}
    return {"unlabeled": 40000, "teacher_epochs": 30, "student_epochs": 60, "unlabeled_epochs": 10}


def demo_configs(settings: dict[str, Any], teacher_weights: str, seed: int) -> dict[str, dict[str, Any]]:
    """Raw configs of the three students for one seed (valid input of ``distillery run``)."""
    data = {"dataset": "mnist1d", "params": {"unlabeled": settings["unlabeled"]}, "batch_size": 128}
    student = {"name": "mlp", "params": {"hidden": [512, 512]}}
    train = {
        "epochs": settings["student_epochs"],
        "optimizer": {"name": "adamw", "lr": 0.003},
        "scheduler": {"name": "cosine", "warmup_steps": 100},
        "progress": False,
        "log_every": 20,
    }
    teacher = {"kind": "frozen", "model": {"name": "cnn1d", "params": {"channels": [32, 64, 64]}, "checkpoint": teacher_weights}, "precompute": True}
    kd_terms = [{"kind": "ce", "weight": 0.1}, {"kind": "kd", "params": {"temperature": 2.0}, "weight": 0.9}]
    ce = {"name": "student_ce", "seed": seed, "data": data, "student": student, "objectives": [{"kind": "ce"}], "train": train}
    kd = {"name": "student_kd", "seed": seed, "data": data, "student": student, "teacher": teacher, "objectives": kd_terms, "train": train}
    kdu = copy.deepcopy(kd)
    kdu["name"] = "student_kd_unlabeled"
    kdu["data"] = dict(data, unlabeled=True, batch_size=256)
    kdu["train"] = dict(train, epochs=settings["unlabeled_epochs"])
    return {"student_ce": ce, "student_kd": kd, "student_kd_unlabeled": kdu}


def teacher_config(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "teacher",
        "seed": 0,
        "data": {"dataset": "mnist1d", "params": {"unlabeled": settings["unlabeled"]}, "batch_size": 128},
        "student": {"name": "cnn1d", "params": {"channels": [32, 64, 64]}},
        "objectives": [{"kind": "ce"}],
        "train": {
            "epochs": settings["teacher_epochs"],
            "optimizer": {"name": "adamw", "lr": 0.003},
            "scheduler": {"name": "cosine", "warmup_steps": 100},
            "progress": False,
        },
    }


def _row(name: str, accs: list[float], walls: list[float]) -> dict[str, Any]:
    return {
        "name": name,
        "accuracy_mean": statistics.fmean(accs),
        "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "seeds": len(accs),
        "wall_s": sum(walls),
        "accuracies": accs,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'model':<24} {'test accuracy':>22} {'seeds':>6} {'wall (s)':>9}",
        "-" * 64,
    ]
    for r in rows:
        acc = f"{100 * r['accuracy_mean']:.1f}% +- {100 * r['accuracy_std']:.1f}"
        lines.append(f"{r['name']:<24} {acc:>22} {r['seeds']:>6} {r['wall_s']:>9.1f}")
    return "\n".join(lines)


def run_demo(out: Path, *, quick: bool = False, overwrite: bool = False, seeds: int = 3, log=print) -> dict[str, Any]:
    """Run the demo into ``out``; returns the summary (also written to ``summary.json``)."""
    if seeds < 1:
        from .errors import ConfigError

        raise ConfigError(f"--seeds must be at least 1, got {seeds}.")
    out = prepare_run_dir(Path(out), overwrite=overwrite, resumable=False)
    settings = demo_settings(quick)
    t_start = time.perf_counter()
    log(f"distillery demo: MNIST-1D, 4000 labeled + {settings['unlabeled']} unlabeled samples, {seeds} seed(s) per student")

    t0 = time.perf_counter()
    tcfg = parse_config(teacher_config(settings), "demo teacher")
    tsum = run(tcfg, out / "teacher", report=False)
    teacher_row = _row("teacher", [tsum["final"]["accuracy"]], [time.perf_counter() - t0])
    log(f"  teacher (cnn1d): test accuracy {100 * teacher_row['accuracy_mean']:.1f}%  [{teacher_row['wall_s']:.1f}s]")

    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in STUDENTS}
    weights = str((out / "teacher" / "student.safetensors").resolve())
    for seed in range(seeds):
        for name, raw in demo_configs(settings, weights, seed).items():
            cfg = parse_config(raw, f"demo {name}")
            t0 = time.perf_counter()
            summary = run(cfg, out / name / f"seed{seed}", report=False)
            wall = time.perf_counter() - t0
            results[name][0].append(summary["final"]["accuracy"])
            results[name][1].append(wall)
            log(f"  {name} seed {seed}: test accuracy {100 * summary['final']['accuracy']:.1f}%  [{wall:.1f}s]")

    rows = [teacher_row] + [_row(name, *results[name]) for name in STUDENTS]
    summary = {
        "rows": rows,
        "settings": settings,
        "total_wall_s": time.perf_counter() - t_start,
        "kd_unlabeled_minus_ce_points": 100 * (rows[3]["accuracy_mean"] - rows[1]["accuracy_mean"]),
    }
    atomic_write_json(out / "summary.json", summary)
    for name, raw in demo_configs(settings, weights, 0).items():
        atomic_write_text(out / f"{name}.yaml", dump_config(parse_config(raw, name)))
    write_demo_report(out, summary)
    log("")
    log(format_table(rows))
    log("")
    log(f"KD with unlabeled data minus CE: {summary['kd_unlabeled_minus_ce_points']:+.1f} points; total {summary['total_wall_s']:.0f}s")
    log(f"summary: {out / 'summary.json'}   report: {out / 'report.md'}")
    return summary


def write_demo_report(out: Path, summary: dict[str, Any]) -> Path:
    """``report.md`` of the demo: the table, an accuracy bar chart, and the per-run plots of seed 0."""
    from .engine.logger import read_metrics
    from .evaluation.report import _plt, plot_eval_curves, plot_learning_curves, plot_reliability

    plt = _plt()
    rows = summary["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    names = [r["name"] for r in rows]
    means = [100 * r["accuracy_mean"] for r in rows]
    stds = [100 * r["accuracy_std"] for r in rows]
    ax.bar(names, means, yerr=stds, capsize=4, color=["#555", "#c44", "#48c", "#4a4"])
    for i, r in enumerate(rows):
        for a in r["accuracies"]:
            ax.plot(i, 100 * a, "k.", ms=4)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    lines = [
        "# distillery demo: knowledge distillation on MNIST-1D",
        "",
        f"4,000 labeled training samples, {summary['settings']['unlabeled']} extra unlabeled samples from the MNIST-1D "
        "generator, 1,000 test samples. Teacher: 1D CNN; students: MLP (512-512).",
        "",
        "| model | test accuracy (mean +- std) | seeds | wall time (s) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {100 * r['accuracy_mean']:.1f}% +- {100 * r['accuracy_std']:.1f} | {r['seeds']} | {r['wall_s']:.1f} |")
    lines += [
        "",
        f"KD with unlabeled data minus CE: **{summary['kd_unlabeled_minus_ce_points']:+.1f} points**.",
        "",
        "![accuracy](accuracy.png)",
        "",
    ]
    for name in STUDENTS:
        run_dir = out / name / "seed0"
        if not (run_dir / "metrics.jsonl").is_file():
            continue
        records = read_metrics(run_dir)
        plot_learning_curves(records, out / f"{name}_curves.png")
        lines += [f"## {name} (seed 0)", "", f"Config: [{name}.yaml]({name}.yaml)", "", f"![{name} learning curves]({name}_curves.png)", ""]
        if plot_eval_curves(records, out / f"{name}_eval.png"):
            lines += [f"![{name} evaluation]({name}_eval.png)", ""]
    pred = out / "student_kd_unlabeled" / "seed0" / "predictions.safetensors"
    if pred.is_file():
        from safetensors.torch import load_file

        eces = plot_reliability(load_file(str(pred)), out / "reliability.png")
        lines += [
            "## Calibration of the KD-with-unlabeled student (seed 0)",
            "",
            ", ".join(f"{k} ECE = {v:.4f}" for k, v in eces.items()) + ".",
            "",
            "![reliability](reliability.png)",
            "",
        ]
    lines += ["Re-run with `make demo` or `distillery demo`; every figure above comes from that run.", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(out / "summary.txt", format_table(rows) + "\n")
    return path
