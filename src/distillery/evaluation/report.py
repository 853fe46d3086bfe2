"""``distillery report RUN_DIR``: a markdown report with PNG plots of a finished run.

Plots: learning curves per loss term (train records of ``metrics.jsonl``), evaluation
accuracy with teacher-student agreement per epoch, and a reliability diagram with the
expected calibration error of the student (and the teacher) from ``predictions.safetensors``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ..engine.checkpoint import atomic_write_text
from ..engine.logger import read_metrics
from ..errors import DataError

_SKIP = {"split", "step", "epoch", "lr", "grad_norm"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(records: list[dict[str, Any]], path: Path) -> list[str]:
    """One panel per loss term (and the total) against optimizer steps; returns the terms."""
    train = [r for r in records if r.get("split") == "train"]
    terms = [k for k in train[0] if k not in _SKIP and not k.startswith("weight/")] if train else []
    if not terms:
        return []
    plt = _plt()
    cols = min(3, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    steps = [r["step"] for r in train]
    for ax, term in zip(axes.flat, terms):
        ax.plot(steps, [_num(r.get(term)) for r in train], lw=1.2)
        ax.set_title(term)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return terms


def plot_eval_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """Student (and teacher) accuracy and student-teacher agreement per epoch."""
    evals = [r for r in records if r.get("split") == "eval"]
    if not evals:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = [r["epoch"] for r in evals]
    for key, label in (("accuracy", "student accuracy"), ("teacher_accuracy", "teacher accuracy"), ("agreement", "teacher-student agreement"),
                       ("r1", "retrieval R@1 (mean of both directions)"), ("r5", "retrieval R@5")):
        if any(key in r for r in evals):
            ax.plot(epochs, [_num(r.get(key)) for r in evals], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_reliability(predictions: dict[str, Any], path: Path, n_bins: int = 15) -> dict[str, float]:
    """Reliability diagram of the student (and teacher); returns their ECE."""
    import torch.nn.functional as F

    from . import metrics as M

    plt = _plt()
    models = [m for m in ("student", "teacher") if m in predictions]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4), squeeze=False)
    eces = {}
    for ax, name in zip(axes.flat, models):
        probs = F.softmax(predictions[name].float(), -1)
        bins = M.calibration_bins(probs, predictions["y"], n_bins)
        ece = M.expected_calibration_error(probs, predictions["y"], n_bins)
        eces[name] = ece
        edges = bins["edges"]
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        acc = [0.0 if math.isnan(a) else a for a in bins["accuracy"]]
        ax.bar(centers, acc, width=1 / n_bins, edgecolor="k", alpha=0.75, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_title(f"{name}: ECE = {ece:.3f}")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return eces


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and its PNGs into ``run_dir``; returns the report's path."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise DataError(f"{run_dir} is not a run directory: it has no metrics.jsonl. Give the folder a 'distillery run' wrote.")
    records = read_metrics(run_dir)
    summary = _load_json(run_dir / "summary.json")
    lines = [f"# Run report: {run_dir.name}", ""]
    if summary:
        final = summary.get("final", {})
        lines += ["| metric | value |", "|---|---|"]
        for key in ("accuracy", "teacher_accuracy", "agreement", "nll", "ece", "i2t_r1", "t2i_r1", "r1", "r5"):
            if key in final:
                lines.append(f"| {key} | {_fmt(final[key])} |")
        lines += [f"| optimizer steps | {summary.get('steps')} |", f"| wall time (s) | {_fmt(summary.get('wall_s'))} |", ""]
    terms = plot_learning_curves(records, run_dir / "learning_curves.png")
    if terms:
        lines += ["## Learning curves", "", f"Loss terms: {', '.join(terms)}.", "", "![learning curves](learning_curves.png)", ""]
    if plot_eval_curves(records, run_dir / "eval_curves.png"):
        lines += ["## Accuracy and teacher-student agreement", "", "![evaluation](eval_curves.png)", ""]
    pred_path = run_dir / "predictions.safetensors"
    predictions: dict[str, Any] = {}
    if pred_path.is_file():
        from safetensors.torch import load_file

        predictions = load_file(str(pred_path))
    if "student" in predictions or "teacher" in predictions:  # logits (a dual encoder has none)
        eces = plot_reliability(predictions, run_dir / "reliability.png")
        lines += [
            "## Calibration",
            "",
            "Reliability diagram (15 equal-width confidence bins) on the evaluation set; "
            + ", ".join(f"{k} ECE = {v:.4f}" for k, v in eces.items())
            + ".",
            "",
            "![reliability](reliability.png)",
            "",
        ]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def replace_block(text: str, begin: str, end: str, block: str, heading: str = "") -> str:
    """``text`` with its generated block (``begin`` ... ``end``, markers included) replaced by
    ``block``; without one, ``block`` is appended after ``heading``. Prose around it stays."""
    if begin in text:
        return re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.DOTALL)
    return text.rstrip() + "\n\n" + heading + block + "\n"
