"""The training loop around a :class:`~distillery.engine.distiller.Distiller`.

Optimizer and LR schedule, gradient accumulation and clipping, bf16 autocast, evaluation
each epoch, checkpoint and resume (a resumed run ends with the same weights and metrics as an
uninterrupted one), seeds, a progress bar, ``metrics.jsonl`` and TensorBoard.

Example::

    trainer = Trainer(distiller, train_data, eval_data=test_data, out_dir="runs/kd",
                      epochs=20, batch_size=128, optimizer={"name": "adamw", "lr": 1e-3})
    summary = trainer.fit()          # or trainer.fit(resume=True)
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import distributed as D
from ..evaluation import metrics as M
from ..batch import as_batch_view, to_device
from ..errors import CheckpointError, ConfigError, NonFiniteLossError
from . import checkpoint as ckpt
from .distiller import Distiller
from .loading import EpochBatchSampler, make_loader, steps_per_epoch
from .logger import MetricsLogger

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("constant", "cosine", "linear", "step")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; a device not of the allowed forms (see
    :mod:`distillery.config.devices`) or not present on this machine is a ConfigError."""
    from ..config.devices import device_problem

    problem = device_problem(device)
    if problem:
        raise ConfigError(f"train.device: {problem}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {device!r} but CUDA is not available here; use 'cpu' or 'auto'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise ConfigError(
            f"train.device is {device!r} but this machine has {count} CUDA device{'s' if count != 1 else ''} "
            f"({have}); use one of them, 'cuda' or 'auto'."
        )
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"train.device is {device!r} but MPS (Apple silicon) is not available here; use 'cpu' or 'auto'.")
    return dev


def build_optimizer(params: list[torch.nn.Parameter], spec: dict[str, Any]) -> torch.optim.Optimizer:
    """``{"name": "adamw", "lr": 1e-3, "weight_decay": 0.01, ...}`` -> a torch optimizer."""
    spec = dict(spec)
    name = spec.pop("name", "adamw")
    if name == "sgd":
        return torch.optim.SGD(params, **spec)
    if name == "adam":
        return torch.optim.Adam(params, **spec)
    if name == "adamw":
        return torch.optim.AdamW(params, **spec)
    raise ConfigError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")


def build_scheduler(optimizer: torch.optim.Optimizer, spec: dict[str, Any], total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """LR schedules over optimizer steps, all with an optional linear warm-up.

    ``constant``; ``cosine`` (to ``min_lr_ratio * lr`` at the last step); ``linear`` (to
    ``min_lr_ratio * lr``); ``step`` (multiply by ``gamma`` at each of ``milestones``).
    """
    spec = dict(spec)
    name = spec.pop("name", "constant")
    warmup = int(spec.pop("warmup_steps", 0))
    floor = float(spec.pop("min_lr_ratio", 0.0))
    milestones = [int(m) for m in spec.pop("milestones", [])]
    gamma = float(spec.pop("gamma", 0.1))
    if spec:
        raise ConfigError(f"Unknown scheduler option(s) {sorted(spec)} for {name!r}.")
    if name not in SCHEDULERS:
        raise ConfigError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.")
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        if name == "step":
            return gamma ** sum(1 for m in milestones if step >= m)
        progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        if name == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * (1 - progress)  # linear

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class _Run:
    """What one call of :meth:`Trainer.fit` works with, from set-up to summary."""

    world: int
    rank: int
    loader: DataLoader
    sampler: EpochBatchSampler
    batches: int  # global batches per epoch
    total_steps: int
    ckpt_root: Path | None
    wrapper: torch.nn.Module | None  # the DDP/FSDP student, or None on one process
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    extra_params: list[torch.nn.Parameter]  # trainable, but synchronised by no wrapper
    start_epoch: int = 0
    start_batch: int = 0  # micro-batch to start the first epoch at (resume)
    logger: MetricsLogger | None = None
    t0: float = 0.0  # perf_counter at the (virtual) start, earlier by the resumed run's time
    step: int = 0  # optimizer steps so far (the distiller's global_step)


class Trainer:
    """Trains a distiller's student (and adapters) on a dataset of batch dicts.

    Args:
        distiller: the step to train.
        train_data: a map-style dataset (items ``{"x", "y"}`` dicts, ``(x, y)`` tuples, or a
            distillery ``ArrayDataset``).
        eval_data: evaluated at the end of every ``eval_every`` epochs (accuracy, NLL, ECE;
            teacher accuracy and student-teacher agreement when the teacher has logits).
        out_dir: run directory (``None``: nothing is written, no checkpoints).
        epochs, batch_size, eval_batch_size: as named.
        optimizer: ``{"name": "sgd"|"adam"|"adamw", "lr": ..., **kwargs}``.
        scheduler: ``{"name": "constant"|"cosine"|"linear"|"step", "warmup_steps": ..., ...}``.
        grad_accum: micro-batches per optimizer step.
        clip_grad_norm: max global gradient norm, or ``None``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast for the forward passes).
        seed: seeds Python/NumPy/torch and the data order.
        checkpoint_every: optimizer steps between checkpoints; ``None``: at each epoch end.
        keep_checkpoints: how many step directories to keep.
        log_every: optimizer steps between ``train`` records.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        progress: show a tqdm bar (only when stderr is a terminal).
        tensorboard: also write TensorBoard event files.
        stop_after_steps: end the run after this many optimizer steps (tests of resume use it
            to simulate an interruption); the checkpoint written there is a normal one.
        eval_view: the student's input at evaluation (default ``batch["x"]``).
        distributed: under torchrun, wrap the student in ``"ddp"`` (DistributedDataParallel)
            or ``"fsdp"`` (FSDP2 ``fully_shard``, for models that do not fit one device).
        find_unused_parameters: passed to DDP (for students with branches unused in a step).
    """

    def __init__(
        self,
        distiller: Distiller,
        train_data: Dataset,
        *,
        eval_data: Dataset | None = None,
        out_dir: str | Path | None = None,
        epochs: int = 10,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        precision: str = "fp32",
        seed: int = 0,
        eval_every: int = 1,
        checkpoint_every: int | None = None,
        keep_checkpoints: int = 2,
        log_every: int = 10,
        device: str = "auto",
        progress: bool = True,
        tensorboard: bool = True,
        num_workers: int = 0,
        drop_last: bool = False,
        stop_after_steps: int | None = None,
        eval_view: Callable[[dict], torch.Tensor] | str | None = None,
        distributed: str = "ddp",
        find_unused_parameters: bool = False,
        description: str = "train",
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
        self.device = D.device_for_rank(resolve_device(device))
        if precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision 'bf16' was asked for, but this GPU does not support bfloat16; use 'fp32'.")
        self.distiller = distiller.to(self.device)
        self.train_data, self.eval_data = train_data, eval_data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size
        self.optimizer_spec = dict(optimizer or {"name": "adamw", "lr": 1e-3})
        self.scheduler_spec = dict(scheduler or {"name": "constant"})
        self.grad_accum, self.clip_grad_norm, self.precision = grad_accum, clip_grad_norm, precision
        self.seed, self.eval_every = seed, eval_every
        self.checkpoint_every, self.keep_checkpoints, self.log_every = checkpoint_every, keep_checkpoints, log_every
        self.progress, self.tensorboard, self.num_workers = progress, tensorboard, num_workers
        self.drop_last, self.stop_after_steps, self.description = drop_last, stop_after_steps, description
        self.eval_view = as_batch_view(eval_view)
        if distributed not in ("ddp", "fsdp"):
            raise ConfigError(f"distributed must be 'ddp' or 'fsdp', got {distributed!r}.")
        self.distributed, self.find_unused_parameters = distributed, find_unused_parameters
        self.on_epoch_end: list[Callable[[Trainer, int, dict[str, Any]], None]] = []
        self.history: list[dict[str, Any]] = []

    # -- helpers ---------------------------------------------------------------------------
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def predict(self, dataset: Dataset) -> dict[str, torch.Tensor]:
        """Student (and teacher, when it has logits) logits and labels over a dataset.

        A two-tower student whose output is a dict with ``image`` and ``text`` embeddings and
        no ``logits`` contributes ``student_image`` and ``student_text`` instead.
        """
        loader, _ = make_loader(dataset, self.eval_batch_size, shuffle=False)
        d = self.distiller
        was_training = d.training
        d.eval()
        out: dict[str, list[torch.Tensor]] = {"student": [], "teacher": [], "y": []}
        teacher = d.teacher.eval_teacher() if d.teacher is not None else None
        try:
            for batch in loader:
                batch = to_device(batch, self.device)
                x = self.eval_view(batch) if self.eval_view is not None else batch["x"]
                with self.autocast():
                    s_out = _output_signals(d.student(x))
                    if "logits" in s_out or not _TWO_TOWER <= set(s_out):
                        out["student"].append(_logits(s_out).float().cpu())
                    else:  # a dual encoder: evaluated by retrieval (see evaluate)
                        for key in sorted(_TWO_TOWER):
                            out.setdefault(f"student_{key}", []).append(s_out[key].float().cpu())
                    if teacher is not None:
                        x_t = teacher.view(batch) if teacher.view is not None else x
                        sig = teacher.signals(x_t, batch, ["logits"])
                        if "logits" in sig:
                            out["teacher"].append(sig["logits"].float().cpu())
                out["y"].append(batch["y"].cpu())
        finally:
            d.train(was_training)
        result = {k: torch.cat(v) for k, v in out.items() if v}
        return result

    def evaluate(self, dataset: Dataset | None = None) -> dict[str, float]:
        """Accuracy, NLL and ECE of the student; teacher accuracy and agreement if possible.

        A two-tower student (see :meth:`predict`) is evaluated by image<->text retrieval
        instead: ``i2t_r1``, ``t2i_r1``, ``r1`` (their mean), the same at 5, and class-level
        ``class_*`` variants (:func:`distillery.evaluation.retrieval.retrieval_metrics`).
        """
        dataset = dataset if dataset is not None else self.eval_data
        if dataset is None:
            return {}
        preds = self.predict(dataset)
        if "student" not in preds and "student_image" in preds:
            from ..evaluation.retrieval import retrieval_metrics

            return retrieval_metrics(preds["student_image"], preds["student_text"], ks=(1, 5), labels=preds["y"])
        s, y = preds["student"], preds["y"]
        result = {
            "accuracy": M.accuracy(s, y),
            "nll": M.nll(s, y),
            "ece": M.expected_calibration_error(F.softmax(s, -1), y),
        }
        if "teacher" in preds:
            t = preds["teacher"]
            if t.shape == s.shape:
                result["teacher_accuracy"] = M.accuracy(t, y)
                result["agreement"] = M.agreement(s, t)
        return result

    # -- the loop --------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train for ``epochs`` epochs (continuing from the last checkpoint if ``resume``).

        Returns the summary (final evaluation, steps, wall time), also written to
        ``summary.json`` together with ``student.safetensors`` and ``predictions.safetensors``.

        Under torch.distributed (launched by torchrun) ``batch_size`` is the global batch; each
        rank trains on its slice, the student is wrapped in DDP (or FSDP), and rank 0 alone
        writes logs, checkpoints and outputs.

        The steps: :meth:`_set_up` (data, distiller, resume, DDP, optimizer, logger), then
        :meth:`_train_epoch` per epoch (:meth:`_accumulate` per micro-batch,
        :meth:`_optimizer_step`, :meth:`_log_train`, :meth:`_end_epoch` for evaluation,
        :meth:`_checkpoint_due` / :meth:`_checkpoint`), then :meth:`_finish`.
        """
        run = self._set_up(resume)
        stopped_early = False
        try:
            for epoch in range(run.start_epoch, self.epochs):
                stopped_early = self._train_epoch(run, epoch)
                if stopped_early:
                    break
        finally:
            if run.logger is not None:
                run.logger.close()
        return self._finish(run, stopped_early)

    def _set_up(self, resume: bool) -> _Run:
        """Seed, build the loader, prepare the distiller on a first batch, load a checkpoint
        (``resume``), wrap the student for DDP/FSDP, build optimizer, scheduler and logger.

        The order matters: every random draw here (seeding, the first batch, lazily built
        adapters, the checkpoint's RNG states restored last) is part of what makes a resumed
        run end bit-identical to an uninterrupted one.
        """
        world, rank = D.world_size(), D.rank()
        seed_everything(self.seed + rank)
        d = self.distiller
        loader, sampler = self.train_loader(world, rank)
        batches = sampler.global_batches()
        total_steps = steps_per_epoch(batches, self.grad_accum) * self.epochs
        d.set_total_steps(total_steps)
        self._prepare_distiller(world, rank)
        ckpt_root = self.out_dir / "checkpoints" if self.out_dir else None
        resume_path, resume_state = self._load_checkpoint(ckpt_root) if resume else (None, None)
        wrapper = self._distribute(world, resumed=resume_state is not None)
        optimizer = build_optimizer(d.trainable_parameters(), self.optimizer_spec)
        scheduler = build_scheduler(optimizer, self.scheduler_spec, total_steps)
        run = _Run(world=world, rank=rank, loader=loader, sampler=sampler, batches=batches, total_steps=total_steps,
                   ckpt_root=ckpt_root, wrapper=wrapper, optimizer=optimizer, scheduler=scheduler,
                   extra_params=self._unsynced_parameters(wrapper))
        elapsed = self._resume(run, resume_path, resume_state) if resume_state is not None else 0.0
        if self.out_dir is not None and rank == 0:
            run.logger = MetricsLogger(self.out_dir, self.tensorboard, resume_step=resume_state["step"] if resume_state else None)
        run.t0 = time.perf_counter() - elapsed
        run.step = int(d.global_step)
        return run

    def train_loader(self, world: int = 1, rank: int = 0) -> tuple[DataLoader, EpochBatchSampler]:
        """This rank's loader over ``train_data`` (its slice of each global batch) and its
        resumable sampler; a ConfigError when the set holds less than one batch."""
        loader, sampler = make_loader(
            self.train_data, D.per_rank_batch(self.batch_size), seed=self.seed, drop_last=self.drop_last,
            num_workers=self.num_workers, rank=rank, world_size=world,
        )
        if sampler.global_batches() == 0:
            raise ConfigError(f"The training set has {len(self.train_data)} samples, fewer than one batch of {self.batch_size}.")  # type: ignore[arg-type]
        return loader, sampler

    def _prepare_distiller(self, world: int, rank: int) -> None:
        """Switch to training mode and let the distiller build what it sizes from data
        (adapters, lazy objectives) on the first batch of a fresh loader."""
        first = next(iter(make_loader(self.train_data, D.per_rank_batch(self.batch_size), seed=self.seed, rank=rank,
                                      world_size=world)[0]))
        self.distiller.train()
        self.distiller.prepare(to_device(first, self.device))

    def _distribute(self, world: int, resumed: bool) -> torch.nn.Module | None:
        """Under torch.distributed: the same start on every rank (unless resumed: the
        checkpoint gave it), then the student wrapped in DDP/FSDP; ``None`` on one process."""
        if world == 1:
            return None
        d = self.distiller
        if not resumed:
            D.broadcast_module_(d)  # identical start on every rank (adapters are built per rank)
        wrapper = D.wrap_student(d.student, self.distributed, self.device, self.find_unused_parameters)
        d.set_student_wrapper(wrapper)
        return wrapper

    def _load_checkpoint(self, ckpt_root: Path | None) -> tuple[Path, dict[str, Any]]:
        """The latest checkpoint's path and state, its weights loaded into the distiller
        (before any DDP/FSDP wrapping); a CheckpointError when there is none."""
        path = ckpt.latest_checkpoint(ckpt_root) if ckpt_root else None
        if path is None:
            raise CheckpointError(f"--resume was given but {ckpt_root} holds no checkpoint to resume from.")
        return path, ckpt.load_checkpoint(path, self.distiller, None)

    def _resume(self, run: _Run, path: Path, state: dict[str, Any]) -> float:
        """Restore what the weights do not hold: optimizer, scheduler, loss balancer, position
        in the data (``run.start_epoch``/``start_batch``), history and RNG states (last).
        Returns the wall time the run had already used."""
        d = self.distiller
        ckpt.load_optimizer(path, d, run.optimizer, state, sharded=self.distributed == "fsdp" and run.world > 1)
        run.scheduler.load_state_dict(state["scheduler"])
        if d.balancer is not None:
            d.balancer.load_state_dict(state.get("balancer", {}))
        run.start_epoch, run.start_batch = state["epoch"], state["batch"]
        self.history = list(state.get("history", []))
        ckpt.restore_rng(state, run.rank, run.world, self.seed)
        return float(state.get("elapsed", 0.0))

    def _train_epoch(self, run: _Run, epoch: int) -> bool:
        """One epoch (the rest of it, on resume): micro-batches, optimizer steps, logging,
        the end-of-epoch evaluation and checkpoints. Returns True when ``stop_after_steps``
        ended the run."""
        run.sampler.set_epoch(epoch, run.start_batch)
        main = run.rank == 0
        bar = _progress(len(run.sampler), f"{self.description} {epoch + 1}/{self.epochs}", self.progress and main)
        micro, window = run.start_batch, []
        run.start_batch = 0
        stopped = False
        for batch in run.loader:
            losses, last_of_group = self._accumulate(run, batch, micro)
            window.append({k: v.detach() for k, v in losses.items()})
            micro += 1
            bar.update(1)
            if not last_of_group:
                continue
            grad_norm = self._optimizer_step(run)
            self._log_train(run, window, epoch + micro / run.batches, grad_norm, bar)
            window = []
            epoch_done = micro == run.batches
            if epoch_done:
                self._end_epoch(epoch, run.step, run.logger)
            if self._checkpoint_due(run, epoch_done):
                self._checkpoint(run, epoch, micro, epoch_done)
            if self.stop_after_steps is not None and run.step >= self.stop_after_steps:
                stopped = True
                break
        bar.close()
        return stopped

    def _accumulate(self, run: _Run, batch: Any, micro: int) -> tuple[dict[str, torch.Tensor], bool]:
        """Forward and backward of micro-batch ``micro`` of the epoch, its loss divided by the
        size of its accumulation group. Returns the loss terms and whether the micro-batch
        closes its group (then gradients are synchronised and an optimizer step follows)."""
        batch = to_device(batch, self.device)
        group = min(self.grad_accum, run.batches - (micro // self.grad_accum) * self.grad_accum)
        last_of_group = (micro + 1) % self.grad_accum == 0 or micro + 1 == run.batches
        with self.autocast(), D.gradient_sync(run.wrapper, last_of_group):
            losses = self.distiller.step(batch, check_finite=run.world == 1)
            if run.world > 1:
                self._check_finite_everywhere(losses, run.step)
            (losses["loss"] / group).backward()
        return losses, last_of_group

    def _optimizer_step(self, run: _Run) -> float | None:
        """Average the unsynchronised gradients, clip, step optimizer and scheduler, then the
        distiller's own update (EMA teachers, step count; ``run.step`` follows). Returns the
        gradient norm before clipping (``None`` without ``clip_grad_norm``)."""
        d = self.distiller
        D.average_gradients(run.extra_params)
        grad_norm = None
        if self.clip_grad_norm is not None:
            grad_norm = _as_float(torch.nn.utils.clip_grad_norm_(d.trainable_parameters(), self.clip_grad_norm))
            if not math.isfinite(grad_norm):
                raise NonFiniteLossError(
                    f"The gradient norm became {grad_norm} at step {run.step} although every loss term was "
                    "finite. Training stopped; the last good checkpoint is kept."
                )
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        d.update()
        run.step = int(d.global_step)
        return grad_norm

    def _log_train(self, run: _Run, window: list[dict[str, torch.Tensor]], epoch: float, grad_norm: float | None, bar: Any) -> None:
        """Every ``log_every`` steps (and at the last): the loss terms averaged over the
        micro-batches of this step (``window``) and over ranks, with learning rate, weights and
        gradient norm, as a ``train`` record. ``epoch`` is fractional."""
        if run.step % self.log_every != 0 and run.step != run.total_steps:
            return
        means = {k: sum(w[k].float() for w in window) / len(window) for k in window[0]}
        means = D.mean_over_ranks(means)  # collective: every rank takes part
        if run.logger is None:
            return
        record = {"split": "train", "step": run.step, "epoch": epoch, "lr": run.optimizer.param_groups[0]["lr"]}
        record.update({k: float(v) for k, v in means.items()})
        record.update({f"weight/{k}": v for k, v in self.distiller.last_weights.items()})
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        run.logger.log(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}")

    def _checkpoint_due(self, run: _Run, epoch_done: bool) -> bool:
        """The checkpoint policy: every ``checkpoint_every`` steps (or at each epoch end when it
        is ``None``), at ``stop_after_steps`` and at the last step; never without ``out_dir``."""
        if run.ckpt_root is None:
            return False
        step = run.step
        return bool(
            (self.checkpoint_every and step % self.checkpoint_every == 0)
            or (self.checkpoint_every is None and epoch_done)
            or step == self.stop_after_steps
            or step == run.total_steps
        )

    def _finish(self, run: _Run, stopped_early: bool) -> dict[str, Any]:
        """The summary (final evaluation, steps, wall time); outputs written unless stopped early."""
        wall = time.perf_counter() - run.t0
        final = self.history[-1]["metrics"] if self.history else self.evaluate()
        summary = {"steps": run.step, "epochs": self.epochs, "wall_s": wall, "final": final, "complete": not stopped_early,
                   "world_size": run.world}
        if self.out_dir is not None and not stopped_early:
            self._write_outputs(summary)
        D.barrier()
        return summary

    def _unsynced_parameters(self, wrapper: torch.nn.Module | None) -> list[torch.nn.Parameter]:
        """Trainable parameters that no DDP/FSDP wrapper synchronises (adapters, objectives)."""
        if wrapper is None:
            return []
        student = {id(p) for p in self.distiller.student.parameters()}
        return [p for p in self.distiller.trainable_parameters() if id(p) not in student]

    def _check_finite_everywhere(self, losses: dict[str, torch.Tensor], step: int) -> None:
        values = {k: v for k, v in losses.items() if k != "loss"}
        local_bad = not bool(torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in values.values()])).all())
        if D.any_rank(local_bad):
            self.distiller.raise_if_not_finite(values, step, anywhere=True)

    def _end_epoch(self, epoch: int, step: int, logger: MetricsLogger | None) -> None:
        """Evaluate (every ``eval_every`` epochs and after the last), log and record the
        result in ``history``, then call the ``on_epoch_end`` hooks."""
        result: dict[str, Any] = {}
        if self.eval_data is not None and ((epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs):
            result = self.evaluate()  # on every rank: an FSDP-sharded student needs all of them
            if logger is not None:
                logger.log({"split": "eval", "step": step, "epoch": epoch + 1, **result})
            self.history.append({"epoch": epoch + 1, "step": step, "metrics": result})
        for hook in self.on_epoch_end:
            hook(self, epoch, result)

    def _checkpoint(self, run: _Run, epoch: int, micro: int, epoch_done: bool) -> None:
        """Save a checkpoint at ``run.step``: weights, optimizer, and the state that resumes
        the run where it stands (position in the data, scheduler, history, RNG of every rank)."""
        assert run.ckpt_root is not None
        next_epoch, next_batch = (epoch + 1, 0) if epoch_done else (epoch, micro)
        state = {
            "epoch": next_epoch,
            "batch": next_batch,
            "scheduler": run.scheduler.state_dict(),
            "elapsed": time.perf_counter() - run.t0,
            "history": self.history,
            "world_size": D.world_size(),
            "rng_per_rank": D.all_gather_objects(ckpt.rng_state()),
        }
        if self.distiller.balancer is not None:
            state["balancer"] = self.distiller.balancer.state_dict()
        sharded = self.distributed == "fsdp" and D.world_size() > 1
        model_state, optim_state = ckpt.gather_state(self.distiller, run.optimizer, sharded)  # collective when sharded
        if D.is_main():
            ckpt.save_checkpoint(run.ckpt_root, run.step, model_state, optim_state, state, keep=self.keep_checkpoints)
        D.barrier()

    def _write_outputs(self, summary: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        assert self.out_dir is not None
        sharded = self.distributed == "fsdp" and D.world_size() > 1
        student_state = ckpt.full_state_dict(self.distiller.student, sharded)  # collective when sharded
        preds = self.predict(self.eval_data) if self.eval_data is not None else None
        if not D.is_main():
            return
        ckpt.save_state(student_state, self.out_dir / "student.safetensors")
        if preds is not None:
            tmp = self.out_dir / ".predictions.safetensors.tmp"
            save_file({k: v.contiguous() for k, v in preds.items()}, str(tmp))
            tmp.replace(self.out_dir / "predictions.safetensors")
        ckpt.atomic_write_json(self.out_dir / "summary.json", summary)


def _as_float(value: Any) -> float:
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


_TWO_TOWER = {"image", "text"}


def _output_signals(out: Any) -> dict[str, torch.Tensor]:
    from ..taps import output_signals

    return output_signals(out)


def _logits(out: Any) -> torch.Tensor:
    from ..taps import output_signals

    return output_signals(out)["logits"]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, desc: str, enabled: bool):
    import sys

    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
