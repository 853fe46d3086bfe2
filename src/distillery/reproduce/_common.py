"""What the miniature reproductions share, so that each module only says what it compares.

* :class:`Settings`: a reproduction's figures (epochs, sizes) in ``--quick`` and full mode;
* :func:`train_section`: the standard ``train`` section (AdamW, cosine schedule, no progress
  bar, no TensorBoard), with the few figures that differ as arguments;
* :func:`compose`: a run config from the recipe's fragments and the reproduction's sections;
* :func:`train_teacher`: train a teacher once (seed 0), return its frozen-teacher section;
* :func:`run_grid`: every variant for every seed, one measure per run;
* :func:`load_student`, :func:`probe_features`, :func:`linear_probe`, :func:`patch_features`:
  reading a trained run back and probing its frozen features
  (:mod:`distillery.evaluation.probes`).

A variant of :func:`run_grid` is a ``distillery run`` dict without its ``seed`` (or a function
of the seed returning one); the grid trains it under ``NAME/seed<k>`` for every seed of the
context, in seed-major order, and returns ``{variant: [measure of each seed]}``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import Context

Variant = Mapping[str, Any] | Callable[[int], Mapping[str, Any]]


@dataclass(frozen=True)
class Settings:
    """A reproduction's figures in quick and in full mode (the same keys in both).

    >>> SETTINGS = Settings(quick={"epochs": 10}, full={"epochs": 30})
    >>> SETTINGS(True)
    {'epochs': 10}
    """

    quick: Mapping[str, Any]
    full: Mapping[str, Any]

    def __post_init__(self) -> None:
        if set(self.quick) != set(self.full):
            raise ValueError(f"Settings: quick and full name different figures: {sorted(self.quick)} vs {sorted(self.full)}.")

    def __call__(self, quick: bool) -> dict[str, Any]:
        return dict(self.quick if quick else self.full)


def train_section(
    epochs: int,
    lr: float = 3e-3,
    *,
    weight_decay: float | None = None,
    warmup: int | None = None,
    scheduler: str | None = "cosine",
    eval_every: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``train`` section: AdamW at ``lr`` (with ``weight_decay`` when given), a ``scheduler``
    (cosine; ``warmup`` steps when given; ``None``: the config's default), one evaluation at the
    end (``eval_every``: another period), no progress bar or TensorBoard; ``extra`` keys
    (``checkpoint_every``, ``grad_accum``, ...) are added as they are."""
    optimizer: dict[str, Any] = {"name": "adamw", "lr": lr}
    if weight_decay is not None:
        optimizer["weight_decay"] = weight_decay
    out: dict[str, Any] = {"epochs": epochs, "optimizer": optimizer}
    if scheduler is not None:
        out["scheduler"] = {"name": scheduler} if warmup is None else {"name": scheduler, "warmup_steps": warmup}
    out.update({"eval_every": epochs if eval_every is None else eval_every, "progress": False, "tensorboard": False})
    out.update(extra)
    return out


#: ``train`` keys for runs whose checkpoints are never read: one, at the end.
ONE_CHECKPOINT = {"checkpoint_every": 10**9, "keep_checkpoints": 1}


def compose(*fragments: Mapping[str, Any] | None) -> dict[str, Any]:
    """One config from fragments, merged in order: nested dicts are merged key by key, any
    other value (lists included) replaces the earlier one; ``None`` fragments are skipped."""
    out: dict[str, Any] = {}
    for fragment in fragments:
        if fragment is not None:
            _merge(out, fragment)
    return out


def _merge(into: dict[str, Any], fragment: Mapping[str, Any]) -> None:
    for key, value in fragment.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)


@dataclass(frozen=True)
class TrainedTeacher:
    """A teacher trained by :func:`train_teacher`: its run, weights and frozen-teacher section."""

    run_dir: Path
    weights: str
    summary: dict[str, Any]
    section: dict[str, Any]

    @property
    def accuracy(self) -> float:
        return self.summary["final"]["accuracy"]


def train_teacher(
    ctx: Context,
    model: Mapping[str, Any],
    data: Mapping[str, Any],
    train: Mapping[str, Any],
    *,
    objectives: list[dict[str, Any]] | None = None,
    name: str = "teacher",
    seed: int = 0,
    **teacher: Any,
) -> TrainedTeacher:
    """Train ``model`` once (``seed``, cross-entropy unless ``objectives``) into ``ctx.out/name``;
    returns it with the ``teacher`` section of a frozen teacher holding its weights (``teacher``
    keywords such as ``precompute=True`` or ``view="x_clean"`` are added to that section)."""
    from ..recipes._fragments import frozen_teacher

    raw = {"seed": seed, "data": dict(data), "student": dict(model), "objectives": objectives or [{"kind": "ce"}],
           "train": dict(train)}
    summary = ctx.train(name, raw)
    weights = str((ctx.out / name / "student.safetensors").resolve())
    return TrainedTeacher(ctx.out / name, weights, summary, frozen_teacher(dict(model, checkpoint=weights), **teacher))


@dataclass(frozen=True)
class Run:
    """One run of a grid: its variant, seed, run name, directory and summary (``None`` for a
    variant that is not trained)."""

    variant: str
    seed: int
    name: str
    dir: Path
    summary: dict[str, Any] | None


def final(key: str = "accuracy") -> Callable[[Run], float]:
    """A grid measure: the run's final evaluation figure ``key``."""
    return lambda run: run.summary["final"][key]


def run_grid(
    ctx: Context, variants: Mapping[str, Variant | None], measure: Callable[[Run], Any] | None = None
) -> dict[str, list[Any]]:
    """Train every variant for every seed (seed-major) and measure each run.

    ``variants``: ``{name: config without seed}`` or ``{name: seed -> config}``; each run is
    ``ctx.train(f"{name}/seed{seed}", {"seed": seed, **config})``. A variant ``None`` is not
    trained, only measured (a reference such as a random initialisation; its ``Run`` has no
    summary). ``measure``: default :func:`final` accuracy. Returns ``{name: [measure of seed 0,
    seed 1, ...]}`` over ``ctx.seeds``.
    """
    measure = measure or final()
    out: dict[str, list[Any]] = {name: [] for name in variants}
    for seed in ctx.seeds:
        for name, variant in variants.items():
            run_name = f"{name}/seed{seed}"
            summary = None
            if variant is not None:
                cfg = variant(seed) if callable(variant) else variant
                summary = ctx.train(run_name, {"seed": seed, **cfg})
            out[name].append(measure(Run(name, seed, run_name, ctx.out / run_name, summary)))
    return out


def by_metric(results: Mapping[str, list[Mapping[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """``{variant: [{metric: value} per seed]}`` -> ``{variant: {metric: [value per seed]}}``."""
    out: dict[str, dict[str, list[float]]] = {}
    for name, rows in results.items():
        out[name] = {}
        for row in rows:
            for key, value in row.items():
                out[name].setdefault(key, []).append(value)
    return out


# -- reading runs back, probing frozen features ------------------------------------------------
def load_student(run_dir: Path, model: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int,
                 file: str = "student.safetensors") -> nn.Module:
    """The network ``model`` (``{"name", "params"}``) with the weights a run directory holds, in
    eval mode."""
    from ..engine.checkpoint import load_weights
    from ..models import build_model

    net = build_model(model["name"], input_shape, num_classes, **model.get("params", {}))
    load_weights(net, Path(run_dir) / file, what=f"{model['name']} of {run_dir}")
    return net.eval()


def probe_features(model: nn.Module, splits: Any, signal: str,
                   transform: Callable[[Any], Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train features, train labels, test features, test labels)``: ``model``'s frozen
    ``signal`` (an output key or tap address) over ``splits.train`` / ``splits.test``, each
    dataset passed through ``transform`` first when given."""
    from ..evaluation.probes import extract_features

    train, test = (splits.train, splits.test) if transform is None else (transform(splits.train), transform(splits.test))
    xtr, ytr = extract_features(model, train, signal)
    xte, yte = extract_features(model, test, signal)
    return xtr, ytr, xte, yte


def linear_probe(model: nn.Module, splits: Any, signal: str, transform: Callable[[Any], Any] | None = None,
                 **probe: Any) -> float:
    """Linear-probe test accuracy (:func:`~distillery.evaluation.probes.linear_probe_accuracy`,
    keywords ``probe``) on ``model``'s frozen ``signal`` (see :func:`probe_features`)."""
    from ..evaluation.probes import linear_probe_accuracy

    return linear_probe_accuracy(*probe_features(model, splits, signal, transform), **probe)


def patch_features(model: nn.Module, dataset: Any, count: int, num_patches: int,
                   address: str = "norm") -> tuple[torch.Tensor, torch.Tensor]:
    """Dense features of a ViT: the patch tokens ``[count * num_patches, D]`` at ``address`` of
    the first ``count`` samples (the class token dropped) and their labels (``patch_labels``)."""
    from ..recipes.ph_reg import tokens_at

    t = tokens_at(model, dataset.x[:count], address)[:, 1:1 + num_patches]
    return t.reshape(-1, t.shape[-1]), dataset.fields["patch_labels"][:count].reshape(-1)
