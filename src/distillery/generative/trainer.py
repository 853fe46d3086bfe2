"""The generative step loop: several players, each with its own optimizer, in a fixed order.

One training step updates every player of the :class:`~.method.GenerativeMethod` in
``method.players`` order, ``method.updates(player)`` times each (DMD2's two time scales); each
update draws a fresh batch from an infinite, seeded, resumable stream over the training set,
zeroes the gradients, computes the player's loss, refuses a non-finite one (naming the player
and step; the last good checkpoint stays), backpropagates, averages the player's gradients over
ranks, clips them and steps the player's optimizer and LR schedule. Then ``after_step`` (EMA
updates).

The loop reuses the existing engine's parts: :func:`~distillery.engine.trainer.build_optimizer`,
:func:`~distillery.engine.trainer.build_scheduler`, the checkpoint helpers (atomic writes,
sha256 digests, keep N, RNG of every rank), :class:`~distillery.engine.logger.MetricsLogger`
(``metrics.jsonl`` and TensorBoard, records ``<player>/<figure>``) and the distributed helpers
(gradients all-reduced with :func:`~distillery.engine.distributed.average_gradients`; each
rank reads its slice of every global batch). A run resumed from a checkpoint ends with the
same weights as an uninterrupted one.

Evaluation (every ``eval.every`` steps and at the end, on rank 0): ``eval.num_samples``
samples at each step count of ``eval.steps`` from a seeded generator (the global random state is
restored afterwards, so evaluating never changes training), scored by the metrics of
:mod:`distillery.generative.metrics` against the test split and saved as
``samples/step<k>_nfe<n>.safetensors``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..batch import to_device
from ..engine import checkpoint as ckpt
from ..engine import distributed as D
from ..engine.loading import make_loader
from ..engine.steploop import StepLoop
from ..engine.trainer import build_optimizer, build_scheduler
from ..errors import CheckpointError, ConfigError
from .config import GenerativeConfig
from .method import GenerativeMethod


def shard_teacher(method: GenerativeMethod, device: torch.device) -> nn.Module:
    """Shard ``method.teacher``'s network over the processes with FSDP2 (``fully_shard``, via
    the engines' shared :func:`~distillery.engine.distributed.shard_frozen`): each rank keeps
    ``1 / world`` of every weight, and a forward all-gathers them (bitwise the unsharded weights,
    so the teacher's outputs do not change) and frees them again. The innermost ``net`` is
    sharded (what a :class:`~.denoisers.Denoiser` or a guidance wrapper calls), with its
    ``features`` registered as a forward method; every rank must call the teacher equally often
    (it is a collective). Returns the sharded module."""
    teacher = getattr(method, "teacher", None)
    target = teacher
    while isinstance(getattr(target, "denoiser", None), nn.Module) or isinstance(getattr(target, "net", None), nn.Module):
        target = target.denoiser if isinstance(getattr(target, "denoiser", None), nn.Module) else target.net
    if not isinstance(target, nn.Module) or not any(True for _ in target.parameters()):
        raise ConfigError("teacher.shard: this method's teacher has no weights to shard; remove teacher.shard.")
    return D.shard_frozen(target, forward_methods=("features",) if callable(getattr(type(target), "features", None)) else ())


class BatchStream:
    """An endless stream of this rank's slices of global batches (``drop_last``: every batch
    full), epoch after epoch in the seeded order of :func:`~distillery.engine.loading.make_loader`;
    its position ``(epoch, batch)`` is saved in checkpoints and restored on resume."""

    def __init__(self, dataset: Any, global_batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        per_rank = D.per_rank_batch(global_batch)
        self.loader, self.sampler = make_loader(dataset, per_rank, seed=seed, drop_last=True, rank=rank, world_size=world)
        if self.sampler.global_batches() == 0:
            raise ConfigError(f"data.batch_size = {global_batch} exceeds the {len(dataset)} training samples.")
        self.epoch, self.batch = 0, 0
        self._it: Any = None

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self.sampler.set_epoch(self.epoch, self.batch)
            self._it = iter(self.loader)
        try:
            out = next(self._it)
        except StopIteration:
            self.epoch, self.batch = self.epoch + 1, 0
            self.sampler.set_epoch(self.epoch, 0)
            self._it = iter(self.loader)
            out = next(self._it)
        self.batch += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self._it = int(state["epoch"]), int(state["batch"]), None


def _metric_table() -> dict[str, Callable[..., dict[str, float]]]:
    """Metric name -> ``fn(samples, reference, mixture) -> {figure: float}``, each resolved from
    :mod:`distillery.generative.metrics` by name when called (a missing one fails clearly)."""

    def get(name: str) -> Callable[..., Any]:
        try:
            from . import metrics as M
        except ImportError as exc:
            raise ConfigError(f"eval.metrics: {name!r} needs distillery.generative.metrics, which cannot be imported ({exc}).") from None
        fn = getattr(M, name, None)
        if fn is None:
            raise ConfigError(f"eval.metrics: distillery.generative.metrics has no {name!r}; remove it from eval.metrics.")
        return fn

    def coverage(samples: torch.Tensor, reference: torch.Tensor, mixture: Any) -> dict[str, float]:
        if mixture is None:
            raise ConfigError("eval.metrics: 'mode_coverage' needs a Gaussian-mixture dataset (mixture2d).")
        std = torch.as_tensor(mixture.stds).max().item()
        out = get("mode_coverage")(samples, torch.as_tensor(mixture.means), std)
        return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    return {
        "sliced_wasserstein": lambda s, r, m: {"sliced_wasserstein": float(get("sliced_wasserstein")(s, r))},
        "mmd": lambda s, r, m: {"mmd": float(get("mmd")(s, r))},
        "mode_coverage": coverage,
        "digits_fd": lambda s, r, m: {"digits_fd": float(get("digits_fd")(s, r))},
    }


class GenerativeTrainer(StepLoop):
    """Trains ``method`` on ``data`` (a map-style dataset of ``{"x", "y"}``) as ``cfg.train`` says.

    Args:
        method: the method (its players, losses, sampling).
        data: the training set.
        cfg: the run's config (``train``, ``eval``, ``seed``, ``data.batch_size``).
        run_dir: where logs, checkpoints, samples and outputs go (``None``: nothing written).
        reference: ``(N, *shape)`` data the evaluation metrics compare samples with.
        mixture: the data's Gaussian mixture (``mode_coverage``), if any.
        stop_after_steps: end after this many steps with a normal checkpoint (tests of resume).
    """

    def __init__(self, method: GenerativeMethod, data: Any, cfg: GenerativeConfig, run_dir: str | Path | None = None, *,
                 reference: torch.Tensor | None = None, mixture: Any = None, num_classes: int | None = None,
                 stop_after_steps: int | None = None) -> None:
        super().__init__(cfg, run_dir, stop_after_steps)
        self.data, self.reference, self.mixture = data, reference, mixture
        self.num_classes = num_classes
        self.method = method.to(self.device)
        self.metrics = self._metric_functions()

    def _metric_functions(self) -> dict[str, Callable[..., dict[str, float]]]:
        """``eval.metrics`` resolved to their functions (a subclass with other metrics overrides it)."""
        table = _metric_table()
        return {name: table[name] for name in self.cfg.eval.metrics}

    # -- set-up ------------------------------------------------------------------------------
    def _set_up(self, resume: bool) -> float:
        cfg, m = self.cfg, self.method
        self._start_ranks()
        self.teacher_sharded = cfg.teacher is not None and cfg.teacher.shard and self.world > 1
        if self.teacher_sharded:
            shard_teacher(m, self.device)
        self.stream = BatchStream(self.data, cfg.data.batch_size, cfg.seed, self.rank, self.world)
        self.params = {p: m.parameters_of(p) for p in m.players}
        for player, params in self.params.items():
            if not params:
                raise ConfigError(f"method {cfg.method.kind!r}: player {player!r} has no trainable parameters.")
        unknown = sorted(set(cfg.train.optimizers) - set(m.players))
        if unknown:
            raise ConfigError(f"train.optimizers: {', '.join(map(repr, unknown))} is not a player of method {cfg.method.kind!r} "
                              f"(its players: {', '.join(m.players)}).")
        self.optimizers = {p: build_optimizer(self.params[p], cfg.train.optimizer_for(p)) for p in m.players}
        sched = cfg.train.scheduler.model_dump()
        self.schedulers = {p: build_scheduler(self.optimizers[p], sched, cfg.train.steps * m.updates(p)) for p in m.players}
        elapsed = 0.0
        if resume:
            elapsed = self._resume(("model", "optimizer"))
        elif self.world > 1:
            self._broadcast()
        self._start_logging(resume)
        return elapsed

    def _trained(self) -> nn.Module:
        return self.method

    def _broadcast(self) -> None:
        """The same start on every rank: rank 0's trainable state (not the frozen teacher)."""
        import torch.distributed as dist

        skip = self.method.frozen_prefixes()
        with torch.no_grad():
            for name, tensor in list(self.method.named_parameters()) + list(self.method.named_buffers()):
                if not name.startswith(skip):
                    dist.broadcast(tensor.data, src=0)

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        """Every player's updates at ``step`` (0-based), then ``after_step``; returns the figures."""
        m, figures = self.method, {}
        for player in m.players:
            k = m.updates(player)
            sums: dict[str, float] = {}
            for update in range(k):
                batch = to_device(next(self.stream), self.device)
                m.zero_grad(set_to_none=True)
                m.begin_update(player, step, update)  # the key of this update's per-sample draws
                loss, figs = m.loss(player, batch, step)
                self._check_finite(loss, step, f"The loss of player {player!r}",
                                   f"Lower the learning rate of this player (train.optimizers.{player}.lr), add "
                                   "train.grad_clip, or check the method's params.")
                loss.backward()
                D.average_gradients(self.params[player])
                if self.cfg.train.grad_clip is not None:
                    norm = self._clip(self.params[player], step, f" of player {player!r}")
                    sums["param_grad_norm"] = sums.get("param_grad_norm", 0.0) + norm
                self.optimizers[player].step()
                self.schedulers[player].step()
                for key, value in figs.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
            figures.update({f"{player}/{key}": value / k for key, value in sums.items()})
            figures[f"{player}/lr"] = self.optimizers[player].param_groups[0]["lr"]
        m.zero_grad(set_to_none=True)
        m.after_step(step)
        return figures

    def _log(self, figures: dict[str, float], bar: Any) -> dict[str, Any] | None:
        record = super()._log(figures, bar)
        losses = {k: v for k, v in (record or {}).items() if k.endswith("/loss")}
        if losses:
            bar.set_postfix(**{k.split("/")[0]: f"{v:.4f}" for k, v in losses.items()})
        return record

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, steps: int, seed: int) -> tuple[torch.Tensor, int, float]:
        """``(samples (n, *shape) on CPU, measured NFE, seconds)``: ``n`` samples in ``steps`` steps
        from a generator seeded with ``seed``; the global random state is left as it was."""
        m = self.method
        was = m.training
        m.eval()
        calls = [0]
        hooks = [mod.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for mod in m.exported().values()]
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                g = torch.Generator().manual_seed(seed)
                cond = None
                if self.num_classes:
                    cond = torch.arange(n) % self.num_classes
                start = time.perf_counter()
                x = m.sample(n, steps, cond=cond, generator=g, device=self.device)
                seconds = time.perf_counter() - start
        finally:
            for h in hooks:
                h.remove()
            m.train(was)
        return x.detach().float().cpu(), calls[0], seconds

    def evaluate(self) -> None:
        if self.rank != 0 or not self.cfg.eval.steps:
            return
        ev = self.cfg.eval
        record: dict[str, Any] = {"split": "eval", "step": self.step}
        entry: dict[str, Any] = {"step": self.step, "results": {}}
        for n in ev.steps:
            x, nfe, seconds = self.sample(ev.num_samples, n, ev.seed)
            scores: dict[str, float] = {"nfe": nfe, "seconds_per_sample": seconds / max(ev.num_samples, 1)}
            ref = self.reference if self.reference is not None else None
            for name, fn in self.metrics.items():
                if ref is None and name != "mode_coverage":
                    raise ConfigError(f"eval.metrics: {name!r} compares samples with the test split, which this run has none of.")
                scores.update(fn(x.reshape(x.shape[0], *x.shape[1:]), ref, self.mixture))
            entry["results"][str(n)] = scores
            record.update({f"{k}/steps{n}": v for k, v in scores.items()})
            if self.run_dir is not None:
                (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
                ckpt.save_state({"samples": x.contiguous()}, self.run_dir / "samples" / f"step{self.step}_nfe{n}.safetensors")
        self.history.append(entry)
        if self.logger is not None:
            self.logger.log(record)

    # -- checkpoints -----------------------------------------------------------------------
    def _schedule_state(self) -> dict[str, Any]:
        return {"schedulers": {p: s.state_dict() for p, s in self.schedulers.items()}}

    def _checkpoint_payload(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        model_state = {k: v.detach().cpu().clone().contiguous() for k, v in self.method.trainable_state().items()}
        optim: dict[str, Any] = {"state": {}, "param_groups": {}, "keyed_by": "player"}
        for player, opt in self.optimizers.items():
            sd = opt.state_dict()
            optim["param_groups"][player] = sd["param_groups"]
            for idx, entry in sd["state"].items():
                optim["state"][f"{player}/{idx}"] = entry
        return model_state, optim

    def _restore(self, path: Path, state: dict[str, Any], files: dict[str, dict[str, torch.Tensor]]) -> None:
        weights, tensors = files["model"], files["optimizer"]
        missing, unexpected = self.method.load_state_dict({k: v.to(self.device) for k, v in weights.items()}, strict=False)
        missing = [k for k in missing if not k.startswith(self.method.frozen_prefixes())]
        if missing or unexpected:
            raise CheckpointError(f"The checkpoint {path} does not match this run's method: missing keys {sorted(missing)[:8]}, "
                                  f"unexpected keys {sorted(unexpected)[:8]}. Resume with the config the run was started with.")
        meta = state["optimizer"]
        per_player: dict[str, dict[int, dict[str, Any]]] = {p: {} for p in self.optimizers}
        for full, value in tensors.items():
            key, name = full.split(ckpt.SEP, 1)
            player, idx = key.split("/")
            per_player.setdefault(player, {}).setdefault(int(idx), {})[name] = value
        for key, entry in meta.get("scalars", {}).items():
            player, idx = key.split("/")
            per_player.setdefault(player, {}).setdefault(int(idx), {}).update(entry)
        for player, opt in self.optimizers.items():
            groups = meta["param_groups"].get(player)
            if groups is None:
                raise CheckpointError(f"The checkpoint {path} holds no optimizer of player {player!r}.")
            try:
                opt.load_state_dict({"state": per_player.get(player, {}), "param_groups": groups})
                self.schedulers[player].load_state_dict(state["schedulers"][player])
            except (ValueError, KeyError, RuntimeError) as exc:
                raise CheckpointError(f"The optimizer state of player {player!r} in {path} does not match this run: {exc}") from None

    # -- the end ---------------------------------------------------------------------------
    def _run_fields(self) -> dict[str, Any]:
        return {"method": self.cfg.method.kind}

    def _result_fields(self) -> dict[str, Any]:
        m = self.method
        last = self.history[-1] if self.history else {"results": {}}
        return {"final": last["results"], "nfe": {n: r.get("nfe") for n, r in last["results"].items()},
                "describe": m.describe(), "exported": list(m.exported())}

    def _export(self) -> None:
        for name, module in self.method.exported().items():
            ckpt.save_state(ckpt.full_state_dict(module), self.run_dir / f"{name}.safetensors")
