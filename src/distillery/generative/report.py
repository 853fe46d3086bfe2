"""``distillery report RUN_DIR`` on a generative run: sample pictures per step count, quality
against NFE per metric, and the loss terms of every player over training steps.

PNGs are written into the run directory and linked from ``report.md``:
``samples_by_steps.png`` (the last evaluation's samples, one panel per step count, from
``samples/``), ``quality_vs_nfe.png`` (one panel per metric, from ``summary.json``; the measured
network evaluations per sample on the x axis) and ``losses.png`` (one panel per player, every
``<player>/<figure>`` of ``metrics.jsonl`` except learning rate and gradient norm).
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

_SAMPLE_FILE = re.compile(r"^step(\d+)_nfe(\d+)\.safetensors$")


def is_generative_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a generative run (its ``config.yaml`` says ``engine: generative``)."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        return False
    import yaml

    try:
        raw = yaml.safe_load(config.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(raw, dict) and raw.get("engine") == "generative"


def plot_losses(records: list[dict[str, Any]], path: Path) -> list[str]:
    """One panel per player with its loss figures against training steps; returns the players."""
    from ..evaluation.report import _num, _plt

    train = [r for r in records if r.get("split") == "train"]
    keys = sorted({k for r in train for k in r if "/" in k and not k.endswith(("/lr", "/grad_norm", "/param_grad_norm"))})
    players = sorted({k.split("/")[0] for k in keys})
    if not players:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(players), figsize=(4.5 * len(players), 3.2), squeeze=False)
    for ax, player in zip(axes.flat, players):
        for key in [k for k in keys if k.startswith(player + "/")]:
            pts = [(r["step"], _num(r.get(key))) for r in train if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.1, label=key.split("/", 1)[1])
        ax.set_title(player)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return players


def plot_quality_vs_nfe(final: dict[str, dict[str, float]], path: Path) -> list[str]:
    """One panel per metric: its value at each step count's measured NFE; returns the metrics."""
    from ..evaluation.report import _plt

    skip = {"nfe", "seconds_per_sample"}
    metrics = sorted({k for r in final.values() for k, v in r.items() if k not in skip and isinstance(v, (int, float))})
    if not metrics:
        return []
    plt = _plt()
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False)
    order = sorted(final, key=lambda n: int(n))
    for ax, metric in zip(axes.flat, metrics):
        xs = [final[n].get("nfe", int(n)) for n in order if metric in final[n]]
        ys = [final[n][metric] for n in order if metric in final[n]]
        ax.plot(xs, ys, "o-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE per sample")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return metrics


def plot_samples_by_steps(run_dir: Path, path: Path, reference: Any = None, mixture: Any = None) -> list[int]:
    """The last evaluation's samples, one panel per step count (2-D scatter or an image grid)."""
    from safetensors.torch import load_file

    from ..evaluation.report import _plt

    found: dict[int, dict[int, Path]] = {}
    for f in (run_dir / "samples").glob("*.safetensors") if (run_dir / "samples").is_dir() else []:
        m = _SAMPLE_FILE.match(f.name)
        if m:
            found.setdefault(int(m.group(1)), {})[int(m.group(2))] = f
    if not found:
        return []
    last = max(found)
    counts = sorted(found[last])
    plt = _plt()
    fig, axes = plt.subplots(1, len(counts), figsize=(3.6 * len(counts), 3.8), squeeze=False)
    for ax, n in zip(axes.flat, counts):
        x = load_file(str(found[last][n]))["samples"].float()
        if x.dim() == 2 and x.shape[1] == 2:
            if reference is not None:
                ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.8")
            ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue", alpha=0.6)
            if mixture is not None:
                ax.scatter(mixture.means[:, 0], mixture.means[:, 1], marker="x", s=20, c="tab:red")
            ax.set_aspect("equal")
        elif x.dim() == 4:
            k = min(len(x), 36)
            side = int(math.ceil(k**0.5))
            c, h, w = x.shape[1:]
            canvas = x.new_full((c, side * h, side * w), -1.0)
            for i in range(k):
                r, q = divmod(i, side)
                canvas[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = x[i]
            img = ((canvas.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
            ax.axis("off")
        else:
            ax.hist(x.reshape(-1).numpy(), bins=50)
        ax.set_title(f"{n} step(s)")
    fig.suptitle(f"samples at training step {last}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return counts


def write_generative_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and its PNGs into a generative ``run_dir``; returns the report's path."""
    from ..evaluation.report import _fmt

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise DataError(f"{run_dir} is not a run directory: it has no metrics.jsonl. Give the folder a 'distillery run' wrote.")
    records = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    final: dict[str, dict[str, float]] = summary.get("final", {})
    lines = [f"# Run report: {run_dir.name}", ""]
    if summary:
        lines += [f"Method `{summary.get('method')}`, {summary.get('steps')} training steps, wall time {_fmt(summary.get('wall_s'))} s"
                  + (" (stopped early)" if not summary.get("complete", True) else "") + ".", ""]
    if final:
        metrics = sorted({k for r in final.values() for k in r if k != "nfe"})
        lines += ["| steps | NFE | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
        for n in sorted(final, key=int):
            lines.append(f"| {n} | {final[n].get('nfe')} | " + " | ".join(_fmt(final[n].get(m)) for m in metrics) + " |")
        lines.append("")
    reference, mixture = _reference(run_dir)
    if plot_samples_by_steps(run_dir, run_dir / "samples_by_steps.png", reference, mixture):
        lines += ["## Samples per step count", "", "The last evaluation's samples (grey: test data; red crosses: the mixture's modes).", "",
                  "![samples](samples_by_steps.png)", ""]
    if plot_quality_vs_nfe(final, run_dir / "quality_vs_nfe.png"):
        lines += ["## Quality against NFE", "", "Each metric at the step counts of `eval.steps` (x: measured network evaluations per sample).", "",
                  "![quality vs NFE](quality_vs_nfe.png)", ""]
    players = plot_losses(records, run_dir / "losses.png")
    if players:
        lines += ["## Losses per player", "", f"Players: {', '.join(players)}.", "", "![losses](losses.png)", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _reference(run_dir: Path) -> tuple[Any, Any]:
    """The test data and mixture of a 2-D run for the sample pictures (``(None, None)`` when the
    dataset cannot be rebuilt)."""
    import yaml

    try:
        from .build import load_splits, mixture_of
        from .config import parse_generative_config

        cfg = parse_generative_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
        splits = load_splits(cfg)
        if tuple(splits.input_shape) != (2,):
            return None, None
        return splits.test.x, mixture_of(splits, cfg)
    except Exception:  # noqa: BLE001 - a picture without its background is still a picture
        return None, None
