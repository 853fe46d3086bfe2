"""``distillery report RUN_DIR``: a markdown report with PNG plots of a finished run.

Plots: learning curves per loss term (train records of ``metrics.jsonl``); evaluation
accuracy per epoch and, in a panel of its own, teacher-student agreement (only when the run
has a teacher with logits), each axis zoomed to its data; and a reliability diagram
(Guo et al. 2017) with the expected calibration error of the student (and the teacher) from
``predictions.safetensors``, with the number of samples per confidence bin in a bar panel
under it.
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


_EVAL_CURVES = (  # key, label, marker, line style
    ("accuracy", "student accuracy", "o", "-"),
    ("teacher_accuracy", "teacher accuracy", "s", "--"),
    ("r1", "retrieval R@1 (mean of both directions)", "^", "-"),
    ("r5", "retrieval R@5", "D", ":"),
)


def plot_eval_curves(records: list[dict[str, Any]], path: Path) -> list[str]:
    """Accuracy per epoch (student, teacher, retrieval recall), and teacher-student
    agreement in a second panel when the run has it; returns the panels drawn
    (``"accuracy"``, ``"agreement"``), empty without evaluation records.

    Each panel's y axis spans its own data (with a margin), so curves a few points apart
    are told apart; every curve has its own marker and line style and its last value
    written beside its last point.
    """
    evals = [r for r in records if r.get("split") == "eval"]
    if not evals:
        return []
    epochs = [r["epoch"] for r in evals]
    panels: list[tuple[str, list[tuple[str, str, str, str]]]] = []
    accuracy = [c for c in _EVAL_CURVES if _has_values(evals, c[0])]
    if accuracy:
        panels.append(("accuracy", accuracy))
    if _has_values(evals, "agreement"):
        panels.append(("agreement", [("agreement", "teacher-student agreement", "v", "-")]))
    if not panels:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels):
        values = []
        for i, (key, label, marker, style) in enumerate(curves):
            ys = [_num(r.get(key)) for r in evals]
            values += [y for y in ys if math.isfinite(y)]
            (line,) = ax.plot(epochs, ys, marker=marker, ls=style, ms=5, lw=1.4, color=f"C{i if title == 'accuracy' else 2}",
                              label=label)
            last = next(((e, y) for e, y in zip(reversed(epochs), reversed(ys)) if math.isfinite(y)), None)
            if last is not None:
                ax.annotate(f"{last[1]:.3f}", last, xytext=(5, 0), textcoords="offset points", va="center",
                            fontsize=8, color=line.get_color())
        ax.set_ylim(*_zoomed_range(values))
        if title == "agreement":
            ax.set_title("teacher-student agreement (same top-1 class)")
        else:
            accuracy_keys = {"accuracy", "teacher_accuracy"} & {c[0] for c in curves}
            ax.set_title("accuracy on the evaluation set" if accuracy_keys else "retrieval recall on the evaluation set")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("epoch")
        ax.margins(x=0.12)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [title for title, _ in panels]


def _has_values(records: list[dict[str, Any]], key: str) -> bool:
    return any(key in r and math.isfinite(_num(r[key])) for r in records)


def _zoomed_range(values: list[float]) -> tuple[float, float]:
    """A y range around ``values`` (fractions in [0, 1]): 15% of their spread, at least 0.02,
    on either side, kept within [0, 1.02]."""
    if not values:
        return 0.0, 1.02
    lo, hi = min(values), max(values)
    pad = max(0.15 * (hi - lo), 0.02)
    return max(0.0, lo - pad), min(1.02, hi + pad)


def plot_reliability(predictions: dict[str, Any], path: Path, n_bins: int = 15) -> dict[str, float]:
    """Reliability diagram of the student (and teacher) with samples per bin; returns their ECE.

    Top panel: accuracy per equal-width confidence bin (bars), the bin's mean confidence
    (a marker: its vertical distance to the bar top is the bin's calibration gap) and the
    diagonal of perfect calibration. Bottom panel: the number of samples in each bin, so a
    bar resting on a handful of samples is seen as such. ECE as in Guo et al. 2017.
    """
    import torch.nn.functional as F

    from . import metrics as M

    plt = _plt()
    models = [m for m in ("student", "teacher") if m in predictions]
    fig, axes = plt.subplots(2, len(models), figsize=(4.6 * len(models), 5.6 if len(models) > 1 else 6.0), squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.2]})
    eces = {}
    for col, name in enumerate(models):
        ax, ax_n = axes[0, col], axes[1, col]
        probs = F.softmax(predictions[name].float(), -1)
        bins = M.calibration_bins(probs, predictions["y"], n_bins)
        ece = M.expected_calibration_error(probs, predictions["y"], n_bins)
        eces[name] = ece
        edges = bins["edges"]
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        filled = [i for i, n in enumerate(bins["count"]) if n]
        ax.bar([centers[i] for i in filled], [bins["accuracy"][i] for i in filled], width=1 / n_bins,
               edgecolor="k", alpha=0.75, label="accuracy per bin")
        ax.plot([centers[i] for i in filled], [bins["confidence"][i] for i in filled], "D", color="C3", ms=4,
                label="mean confidence per bin")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_title(f"{name}: ECE = {ece:.3f}")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        counts = bins["count"]
        bars = ax_n.bar(centers, counts, width=1 / n_bins, edgecolor="k", color="C7", alpha=0.8)
        for bar, n in zip(bars, counts):
            if n:
                ax_n.annotate(str(n), (bar.get_x() + bar.get_width() / 2, n), xytext=(0, 2), textcoords="offset points",
                              ha="center", va="bottom", fontsize=6, rotation=90)
        ax_n.set_ylim(0, max(counts + [1]) * 1.45)
        ax_n.set_ylabel("samples")
        ax_n.set_xlabel("confidence")
        ax_n.grid(alpha=0.3, axis="y")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    wide = len(models) > 1  # one row of legend entries above two panels, three rows above one
    fig.legend(handles, labels, loc="upper center", ncol=3 if wide else 1, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95 if wide else 0.9))
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
    panels = plot_eval_curves(records, run_dir / "eval_curves.png")
    if "agreement" in panels:
        caption = ("Left: accuracy on the evaluation set per epoch; right: the fraction of samples on which "
                   "student and teacher predict the same class. Each axis spans its own data.")
        lines += ["## Accuracy and teacher-student agreement", "", caption, "", "![evaluation](eval_curves.png)", ""]
    elif panels:
        lines += ["## Accuracy", "", "Accuracy (and retrieval recall, when measured) on the evaluation set per epoch; the axis spans the data.", "",
                  "![evaluation](eval_curves.png)", ""]
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
            "Reliability diagram (15 equal-width confidence bins) on the evaluation set, with the "
            "number of samples per bin below it; "
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
