"""``distillery run`` / ``validate`` on a generative config (``engine: generative``).

The run directory is made and guarded as for the existing engine (:mod:`distillery.runner`):
``config.yaml`` first (the resolved config), then ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/``, ``samples/step<k>_nfe<n>.safetensors``, the exported weights
(``<name>.safetensors``, e.g. ``model`` or ``generator``), ``summary.json`` and ``report.md``.
``--resume`` accepts only the changes in :data:`~.config.RESUMABLE_CHANGES`; a start that fails
before anything worth keeping was written removes its run directory; a run that fails later
(a non-finite loss) keeps its checkpoints and writes ``failed.json`` saying why and where.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine import distributed as D
from ..engine.rundir import check_resumed, dump_yaml, run_trainer_in_dir
from .config import RESUMABLE_CHANGES, GenerativeConfig


def dump_generative_config(cfg: GenerativeConfig) -> str:
    """The resolved config as ``config.yaml`` holds it."""
    return dump_yaml(cfg)


def check_resumed_generative_config(out: Path, cfg: GenerativeConfig) -> list[str]:
    """Refuse differences from the stored config outside :data:`RESUMABLE_CHANGES` (listing
    them); returns the allowed changes as ``key: old -> new``."""
    return check_resumed(out, dump_generative_config(cfg), RESUMABLE_CHANGES)


def run_generative(cfg: GenerativeConfig, out: Path, *, resume: bool = False, overwrite: bool = False, report: bool = True,
                   stop_after_steps: int | None = None, make: Any = None) -> dict[str, Any]:
    """Execute a generative run; returns its summary. Under torchrun every process calls this;
    rank 0 alone writes the run directory. ``make``: the trainer factory ``(cfg, out,
    stop_after_steps=) -> trainer`` (default :func:`make_trainer`; the streaming engine gives its own)."""
    make = make or make_trainer
    summary = run_trainer_in_dir(out, lambda out: make(cfg, out, stop_after_steps=stop_after_steps),
                                 device=cfg.train.device, config_text=dump_generative_config(cfg), resumable=RESUMABLE_CHANGES,
                                 resume=resume, overwrite=overwrite)
    if report and D.is_main() and summary.get("complete"):
        from .report import write_generative_report

        write_generative_report(Path(out))
    return summary


def make_trainer(cfg: GenerativeConfig, out: Path | None, *, stop_after_steps: int | None = None):
    """Build everything ``cfg`` describes and the :class:`~.trainer.GenerativeTrainer` around it."""
    from .build import build_generative
    from .trainer import GenerativeTrainer

    built = build_generative(cfg)
    return GenerativeTrainer(built.method, built.train_set, cfg, out, reference=built.splits.test.x, mixture=built.mixture,
                             num_classes=built.num_classes, stop_after_steps=stop_after_steps)


@dataclass
class GenerativeValidation:
    """What ``distillery validate`` found on a generative config; :meth:`lines` prints it."""

    name: str
    lines_: list[str] = field(default_factory=list)
    engine: str = "generative"

    def lines(self) -> list[str]:
        return [f"config {self.name}: OK ({self.engine})", *self.lines_]


def validate_generative(cfg: GenerativeConfig, name: str = "config") -> GenerativeValidation:
    """Build everything and run one update of every player (forward and backward, no optimizer
    step, nothing written); report the data, the networks and each player's loss."""
    from ..batch import to_device
    from ..engine.trainer import resolve_device
    from .build import build_generative
    from .trainer import BatchStream

    report = GenerativeValidation(name, engine=cfg.engine)
    out = report.lines_
    device = resolve_device(cfg.train.device)
    start = time.perf_counter()
    built = build_generative(cfg)
    m = built.method.to(device)
    out.append(f"data: {built.splits.summary()}; sample shape {built.sample_shape}; batch {cfg.data.batch_size}"
               + (f"; conditional on {built.num_classes} classes" if built.num_classes else ""))
    out.append(f"process: {built.process!r}")
    out.append(f"student: {type(built.student.net).__name__} predicting {built.student.prediction}, "
               f"{sum(p.numel() for p in built.student.parameters()):,} parameters")
    if built.teacher is not None:
        out.append(f"teacher: {cfg.teacher.kind if cfg.teacher else '?'} ({type(built.teacher).__name__}), "
                   f"{sum(p.numel() for p in built.teacher.parameters()):,} parameters (frozen)")
    out.append(f"method: {cfg.method.kind}, players {', '.join(m.players)}")
    stream = BatchStream(built.train_set, cfg.data.batch_size, cfg.seed)
    m.train()
    for player in m.players:
        batch = to_device(next(stream), device)
        m.zero_grad(set_to_none=True)
        loss, figures = m.loss(player, batch, 0)
        loss.backward()
        params = m.parameters_of(player)
        with_grad = sum(p.numel() for p in params if p.grad is not None)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in figures.items())
        out.append(f"player {player}: x {tuple(batch['x'].shape)}, loss {float(loss.detach()):.4g}"
                   + (f" ({shown})" if shown else "") + f"; {sum(p.numel() for p in params):,} trainable parameters, "
                   f"{with_grad:,} received gradients; {m.updates(player)} update(s) per step")
        if not torch.isfinite(loss.detach()):
            out.append(f"WARNING: the loss of player {player} is not finite on this batch.")
    m.zero_grad(set_to_none=True)
    count = f"{cfg.eval.num_samples} samples" if hasattr(cfg.eval, "num_samples") else f"{cfg.eval.num_videos} videos"
    out.append(f"eval: steps {cfg.eval.steps}, {count}, metrics {', '.join(cfg.eval.metrics)}")
    out.append(f"built and stepped in {time.perf_counter() - start:.1f}s; nothing was written")
    return report
