"""The step loop the generative and sequence engines share: a fixed number of steps, with
logging, evaluation, checkpoints, resume and the end of a run in one place.

:class:`StepLoop` is the base of :class:`~distillery.generative.trainer.GenerativeTrainer` and
:class:`~distillery.sequence.trainer.SequenceTrainer`. It runs ``cfg.train.steps`` steps
(:meth:`StepLoop.fit`): after each, the figures are averaged over ranks and logged every
``train.log_every`` steps (``metrics.jsonl`` and TensorBoard via
:class:`~distillery.engine.logger.MetricsLogger`), the engine evaluates every
``train.eval_every`` steps and at the end, and a checkpoint is written every
``train.checkpoint_every`` steps, at the end and where ``stop_after_steps`` stops a run (tests
of resume). A checkpoint (:func:`~distillery.engine.checkpoint.save_checkpoint`: atomic,
sha256-verified, ``keep_checkpoints`` kept) holds the engine's weights and optimizer state, the
data stream's position, the LR schedule, the evaluation history, the elapsed time and the RNG
state of every rank, so a resumed run ends with the same weights as an uninterrupted one. The
end writes the engine's exported weights and ``summary.json`` (rank 0).

What an engine provides: ``_set_up(resume) -> elapsed`` (its optimizers, data stream
``self.stream`` with ``state()``/``load()``, and, with ``resume``, :meth:`_resume`),
``train_step(step) -> figures``, ``evaluate()``, ``_trained()`` (the module put in training
mode), ``_schedule_state()``, ``_checkpoint_payload() -> (weights, optimizer state)``,
``_restore(path, state, files)``, ``_run_fields()``, ``_result_fields()`` and ``_export()``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, NonFiniteLossError
from . import checkpoint as ckpt
from . import distributed as D
from .logger import MetricsLogger
from .trainer import _progress, resolve_device


class StepLoop:
    """A step loop over ``cfg.train.steps`` steps (see the module docstring).

    Args:
        cfg: the run's config (``name``, ``seed``, ``train.steps``, ``train.log_every``,
            ``train.eval_every``, ``train.checkpoint_every``, ``train.keep_checkpoints``,
            ``train.progress``, ``train.tensorboard``, ``train.device``).
        run_dir: where logs, checkpoints and outputs go (``None``: nothing written).
        stop_after_steps: end after this many steps with a normal checkpoint.
    """

    engine = "engine"
    """The engine's name: ``summary.json``'s ``engine`` and the progress bar's default label."""

    def __init__(self, cfg: Any, run_dir: str | Path | None, stop_after_steps: int | None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.stop_after_steps = stop_after_steps
        self.device = D.device_for_rank(resolve_device(cfg.train.device))
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self.logger: MetricsLogger | None = None
        self.world, self.rank = 1, 0

    # -- hooks -------------------------------------------------------------------------------
    def _set_up(self, resume: bool) -> float:
        raise NotImplementedError

    def _trained(self) -> nn.Module:
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self) -> Any:
        raise NotImplementedError

    def _schedule_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _checkpoint_payload(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise NotImplementedError

    def _restore(self, path: Path, state: dict[str, Any], files: dict[str, dict[str, torch.Tensor]]) -> None:
        raise NotImplementedError

    def _run_fields(self) -> dict[str, Any]:
        return {}

    def _result_fields(self) -> dict[str, Any]:
        return {}

    def _export(self) -> None:
        raise NotImplementedError

    # -- set-up ------------------------------------------------------------------------------
    def _start_ranks(self) -> None:
        self.world, self.rank = D.world_size(), D.rank()
        self.ckpt_root = self.run_dir / "checkpoints" if self.run_dir is not None else None

    def _start_logging(self, resume: bool) -> None:
        if self.run_dir is not None and self.rank == 0:
            self.logger = MetricsLogger(self.run_dir, self.cfg.train.tensorboard, resume_step=self.step if resume else None)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train ``cfg.train.steps`` steps (from the last checkpoint with ``resume``); returns the
        summary, also written to ``summary.json`` with the exported weights."""
        elapsed = self._set_up(resume)
        t0 = time.perf_counter() - elapsed
        total = self.cfg.train.steps
        bar = _progress(total - self.step, f"{self.cfg.name or self.engine}", self.cfg.train.progress and self.rank == 0)
        self._trained().train()
        stopped = False
        try:
            while self.step < total:
                figures = self.train_step(self.step)
                self.step += 1
                bar.update(1)
                self._log(figures, bar)
                final = self.step == total
                every = self.cfg.train.eval_every
                if final or (every and self.step % every == 0):
                    self.evaluate()
                stop = self.stop_after_steps is not None and self.step >= self.stop_after_steps
                every = self.cfg.train.checkpoint_every
                if final or stop or (every and self.step % every == 0):
                    self._checkpoint(time.perf_counter() - t0)
                if stop and not final:
                    stopped = True
                    break
        finally:
            bar.close()
            if self.logger is not None:
                self.logger.close()
        return self._finish(time.perf_counter() - t0, stopped)

    def _kept(self) -> str:
        if self.last_checkpoint is not None:
            return f"the last good checkpoint {self.last_checkpoint} is kept (continue from it with --resume)."
        return "no checkpoint had been written yet."

    def _check_finite(self, loss: torch.Tensor, step: int, subject: str, advice: str) -> None:
        """Stop with a :class:`~distillery.errors.NonFiniteLossError` when ``loss`` is not finite
        on any rank (a collective under torchrun): ``"{subject} became {value} at step {step + 1}.
        Training stopped; {what was kept} {advice}"``."""
        value = loss.detach()
        bad = not bool(torch.isfinite(value).all())
        if self.world > 1:
            bad = D.any_rank(bad)
        if bad:
            raise NonFiniteLossError(
                f"{subject} became {float(value) if value.numel() == 1 else 'non-finite'} at step {step + 1}. "
                f"Training stopped; {self._kept()} {advice}")

    def _clip(self, params: list[torch.nn.Parameter], step: int, of: str = "") -> float:
        """Clip the gradients of ``params`` to norm ``train.grad_clip``; returns the norm before
        clipping, and stops the run when it is not finite (``of``: `` of player 'x'``)."""
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip))
        if not math.isfinite(norm):
            raise NonFiniteLossError(
                f"The gradient norm{of} became {norm} at step {step + 1} although {'its' if of else 'the'} loss was finite. "
                f"Training stopped; {self._kept()}")
        return norm

    def _log(self, figures: dict[str, float], bar: Any) -> dict[str, Any] | None:
        """Average ``figures`` over ranks (a collective: every rank takes part) and log them every
        ``train.log_every`` steps and at the last; returns the record logged (rank 0)."""
        every = self.cfg.train.log_every
        if self.step % every and self.step != self.cfg.train.steps:
            return None
        means = D.mean_over_ranks({k: torch.tensor(float(v)) for k, v in figures.items()})
        if self.logger is None:
            return None
        record: dict[str, Any] = {"split": "train", "step": self.step, **{k: float(v) for k, v in means.items()}}
        self.logger.log(record)
        return record

    # -- checkpoints -----------------------------------------------------------------------
    def _checkpoint(self, elapsed: float) -> None:
        if self.ckpt_root is None:
            return
        state = {"step": self.step, "data": self.stream.state(), **self._schedule_state(), "elapsed": elapsed,
                 "history": self.history, "world_size": self.world, "rng_per_rank": D.all_gather_objects(ckpt.rng_state())}
        if D.is_main():
            weights, optim = self._checkpoint_payload()
            self.last_checkpoint = ckpt.save_checkpoint(self.ckpt_root, self.step, weights, optim, state,
                                                        keep=self.cfg.train.keep_checkpoints)
        D.barrier()

    def _resume(self, files: tuple[str, ...] = ("model",)) -> float:
        """Restore the newest intact checkpoint: the engine's part (:meth:`_restore`, given the
        checkpoint's ``<name>.safetensors`` of ``files``), then the data position, step, history
        and every rank's RNG. Returns the elapsed training time it records."""
        from safetensors.torch import load_file

        path = ckpt.latest_checkpoint(self.ckpt_root) if self.ckpt_root is not None else None
        if path is None:
            raise CheckpointError(f"--resume was given but {self.ckpt_root} holds no checkpoint to resume from.")
        state = ckpt.verify_checkpoint(path)
        try:
            loaded = {name: load_file(str(path / f"{name}.safetensors")) for name in files}
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise CheckpointError(f"Could not read the checkpoint {path}: {exc}") from None
        self._restore(path, state, loaded)
        self.stream.load(state["data"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.last_checkpoint = path
        ckpt.restore_rng(state, self.rank, self.world, self.cfg.seed)
        return float(state.get("elapsed", 0.0))

    # -- the end ---------------------------------------------------------------------------
    def _finish(self, wall: float, stopped: bool) -> dict[str, Any]:
        summary = {
            "engine": self.engine,
            **self._run_fields(),
            "steps": self.step,
            "wall_s": wall,
            **self._result_fields(),
            "complete": not stopped,
            "world_size": self.world,
            "teacher_sharded": bool(getattr(self, "teacher_sharded", False)),
        }
        if self.run_dir is not None and not stopped and D.is_main():
            self._export()
            ckpt.atomic_write_json(self.run_dir / "summary.json", summary)
        D.barrier()
        return summary


__all__ = ["StepLoop"]
