"""``distillery run`` / ``validate`` on a streaming config (``engine: streaming``).

The generative engine's run (:func:`distillery.generative.run.run_generative`: the same run
directory, checkpoints, exact resume, ``failed.json``) with the streaming trainer
(:class:`~.trainer.StreamingTrainer`) and a report of its own: the losses per player, the
streaming metrics per step count, and the film strips and GIFs of the last evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..engine import distributed as D
from ..generative.run import run_generative, validate_generative
from .config import StreamingConfig


def make_streaming_trainer(cfg: StreamingConfig, out: Path | None, *, stop_after_steps: int | None = None) -> Any:
    """Build everything ``cfg`` describes and the :class:`~.trainer.StreamingTrainer` around it."""
    from ..data import load_dataset
    from ..generative.build import build_generative
    from .trainer import StreamingTrainer

    built = build_generative(cfg)
    frames = int(built.sample_shape[0])

    def eval_split(horizon: int) -> Any:
        if horizon == frames:
            return built.splits.test
        return load_dataset(cfg.data.dataset, **{**cfg.data.params, "frames": horizon}).test

    return StreamingTrainer(built.method, built.train_set, cfg, out, num_classes=built.num_classes,
                            stop_after_steps=stop_after_steps, eval_split=eval_split)


def run_streaming(cfg: StreamingConfig, out: Path, *, resume: bool = False, overwrite: bool = False, report: bool = True,
                  stop_after_steps: int | None = None) -> dict[str, Any]:
    """Execute a streaming run; returns its summary (rank 0 writes the run directory)."""
    summary = run_generative(cfg, out, resume=resume, overwrite=overwrite, report=False, stop_after_steps=stop_after_steps,
                             make=make_streaming_trainer)
    if report and D.is_main() and summary.get("complete"):
        write_streaming_report(Path(out))
    return summary


def validate_streaming(cfg: StreamingConfig, name: str = "config") -> Any:
    """Build everything and run one update of every player; nothing is written."""
    return validate_generative(cfg, name)


def write_streaming_report(run_dir: Path) -> Path:
    """``report.md``: final streaming metrics per step count, the loss curves, the media."""
    from ..generative.report import plot_losses

    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    lines = [f"# Streaming run {run_dir.name}", "", f"method: {summary.get('method')}; steps: {summary.get('steps')}", ""]
    final = summary.get("final", {})
    keys = sorted({k for scores in final.values() for k in scores})
    if final:
        lines += ["| steps per chunk | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for n, scores in final.items():
            lines.append(f"| {n} | " + " | ".join(f"{scores.get(k, float('nan')):.4g}" for k in keys) + " |")
        lines.append("")
    if plot_losses(records, run_dir / "losses.png"):
        lines += ["![losses](losses.png)", ""]
    media = sorted((run_dir / "samples").glob(f"step{summary.get('steps')}_nfe*.png")) if (run_dir / "samples").is_dir() else []
    for png in media:
        gif = png.with_suffix(".gif")
        lines += [f"![{png.stem}](samples/{png.name})" + (f" (animated: [samples/{gif.name}](samples/{gif.name}))" if gif.is_file() else ""), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
