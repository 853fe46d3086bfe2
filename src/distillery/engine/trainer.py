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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import distributed as D
from ..evaluation import metrics as M
from ..batch import as_batch_view, to_device
from ..errors import CheckpointError, ConfigError, NonFiniteLossError
from . import checkpoint as ckpt
from .distiller import Distiller
from .loading import make_loader, steps_per_epoch
from .logger import MetricsLogger

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("constant", "cosine", "linear", "step")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; an unavailable device is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {device!r} but CUDA is not available here; use 'cpu' or 'auto'.")
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
        """
        world, rank = D.world_size(), D.rank()
        seed_everything(self.seed + rank)
        d = self.distiller
        per_rank = D.per_rank_batch(self.batch_size)
        loader, sampler = make_loader(
            self.train_data, per_rank, seed=self.seed, drop_last=self.drop_last, num_workers=self.num_workers,
            rank=rank, world_size=world,
        )
        batches = sampler.global_batches()
        if batches == 0:
            raise ConfigError(f"The training set has {len(self.train_data)} samples, fewer than one batch of {self.batch_size}.")  # type: ignore[arg-type]
        per_epoch = steps_per_epoch(batches, self.grad_accum)
        total_steps = per_epoch * self.epochs
        d.set_total_steps(total_steps)

        first = next(iter(make_loader(self.train_data, per_rank, seed=self.seed, rank=rank, world_size=world)[0]))
        d.train()
        d.prepare(to_device(first, self.device))
        ckpt_root = self.out_dir / "checkpoints" if self.out_dir else None
        resume_state = None
        if resume:
            path = ckpt.latest_checkpoint(ckpt_root) if ckpt_root else None
            if path is None:
                raise CheckpointError(f"--resume was given but {ckpt_root} holds no checkpoint to resume from.")
            resume_state = ckpt.load_checkpoint(path, d, None)
        elif world > 1:
            D.broadcast_module_(d)  # identical start on every rank (adapters are built per rank)
        wrapper = None
        if world > 1:
            wrapper = D.wrap_student(d.student, self.distributed, self.device, self.find_unused_parameters)
            d.set_student_wrapper(wrapper)
        optimizer = build_optimizer(d.trainable_parameters(), self.optimizer_spec)
        scheduler = build_scheduler(optimizer, self.scheduler_spec, total_steps)
        extra_params = self._unsynced_parameters(wrapper)

        start_epoch, start_batch, elapsed = 0, 0, 0.0
        if resume_state is not None:
            ckpt.load_optimizer(path, d, optimizer, resume_state, sharded=self.distributed == "fsdp" and world > 1)
            scheduler.load_state_dict(resume_state["scheduler"])
            if d.balancer is not None:
                d.balancer.load_state_dict(resume_state.get("balancer", {}))
            start_epoch, start_batch = resume_state["epoch"], resume_state["batch"]
            elapsed = float(resume_state.get("elapsed", 0.0))
            self.history = list(resume_state.get("history", []))
            ckpt.restore_rng(resume_state, rank, world, self.seed)
        main = rank == 0
        logger = None
        if self.out_dir is not None and main:
            logger = MetricsLogger(self.out_dir, self.tensorboard, resume_step=resume_state["step"] if resume_state else None)
        t0 = time.perf_counter() - elapsed
        step = int(d.global_step)
        stopped_early = False
        try:
            for epoch in range(start_epoch, self.epochs):
                sampler.set_epoch(epoch, start_batch)
                bar = _progress(len(sampler), f"{self.description} {epoch + 1}/{self.epochs}", self.progress and main)
                micro, window = start_batch, []
                start_batch = 0
                for batch in loader:
                    batch = to_device(batch, self.device)
                    group = min(self.grad_accum, batches - (micro // self.grad_accum) * self.grad_accum)
                    last_of_group = (micro + 1) % self.grad_accum == 0 or micro + 1 == batches
                    with self.autocast(), D.gradient_sync(wrapper, last_of_group):
                        losses = d.step(batch, check_finite=world == 1)
                        if world > 1:
                            self._check_finite_everywhere(losses, step)
                        (losses["loss"] / group).backward()
                    window.append({k: v.detach() for k, v in losses.items()})
                    micro += 1
                    bar.update(1)
                    if not last_of_group:
                        continue
                    D.average_gradients(extra_params)
                    grad_norm = None
                    if self.clip_grad_norm is not None:
                        grad_norm = _as_float(torch.nn.utils.clip_grad_norm_(d.trainable_parameters(), self.clip_grad_norm))
                        if not math.isfinite(grad_norm):
                            raise NonFiniteLossError(
                                f"The gradient norm became {grad_norm} at step {step} although every loss term was "
                                "finite. Training stopped; the last good checkpoint is kept."
                            )
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    d.update()
                    step = int(d.global_step)
                    if step % self.log_every == 0 or step == total_steps:
                        means = {k: sum(w[k].float() for w in window) / len(window) for k in window[0]}
                        means = D.mean_over_ranks(means)
                        if logger is not None:
                            record = {"split": "train", "step": step, "epoch": epoch + micro / batches,
                                      "lr": optimizer.param_groups[0]["lr"]}
                            record.update({k: float(v) for k, v in means.items()})
                            record.update({f"weight/{k}": v for k, v in d.last_weights.items()})
                            if grad_norm is not None:
                                record["grad_norm"] = grad_norm
                            logger.log(record)
                            bar.set_postfix(loss=f"{record['loss']:.4f}")
                    window = []
                    epoch_done = micro == batches
                    if epoch_done:
                        self._end_epoch(epoch, step, logger)
                    if ckpt_root is not None and (
                        (self.checkpoint_every and step % self.checkpoint_every == 0)
                        or (self.checkpoint_every is None and epoch_done)
                        or step == self.stop_after_steps
                        or step == total_steps
                    ):
                        self._checkpoint(ckpt_root, step, optimizer, scheduler, epoch, micro, epoch_done, t0)
                    if self.stop_after_steps is not None and step >= self.stop_after_steps:
                        stopped_early = True
                        break
                bar.close()
                if stopped_early:
                    break
        finally:
            if logger is not None:
                logger.close()
        wall = time.perf_counter() - t0
        final = self.history[-1]["metrics"] if self.history else self.evaluate()
        summary = {"steps": step, "epochs": self.epochs, "wall_s": wall, "final": final, "complete": not stopped_early,
                   "world_size": world}
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
        result: dict[str, Any] = {}
        if self.eval_data is not None and ((epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs):
            result = self.evaluate()  # on every rank: an FSDP-sharded student needs all of them
            if logger is not None:
                logger.log({"split": "eval", "step": step, "epoch": epoch + 1, **result})
            self.history.append({"epoch": epoch + 1, "step": step, "metrics": result})
        for hook in self.on_epoch_end:
            hook(self, epoch, result)

    def _checkpoint(self, root: Path, step: int, optimizer, scheduler, epoch: int, micro: int, epoch_done: bool, t0: float) -> None:
        next_epoch, next_batch = (epoch + 1, 0) if epoch_done else (epoch, micro)
        state = {
            "epoch": next_epoch,
            "batch": next_batch,
            "scheduler": scheduler.state_dict(),
            "elapsed": time.perf_counter() - t0,
            "history": self.history,
            "world_size": D.world_size(),
            "rng_per_rank": D.all_gather_objects(ckpt.rng_state()),
        }
        if self.distiller.balancer is not None:
            state["balancer"] = self.distiller.balancer.state_dict()
        sharded = self.distributed == "fsdp" and D.world_size() > 1
        model_state, optim_state = ckpt.gather_state(self.distiller, optimizer, sharded)  # collective when sharded
        if D.is_main():
            ckpt.save_checkpoint(root, step, model_state, optim_state, state, keep=self.keep_checkpoints)
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
