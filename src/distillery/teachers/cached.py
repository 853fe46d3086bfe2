"""Cached teacher: outputs read by sample index from an on-disk cache (``distillery cache build``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..batch import Batch
from ..cache.builder import TEMPERATURE_SIGNAL, apply_seeded
from ..cache.store import (
    CacheError,
    CacheIndexError,
    CacheMismatchError,
    CacheReader,
    sha256_file,
)
from ..registry import TEACHERS
from .base import BuildContext, Teacher
from .frozen import FrozenTeacher



@TEACHERS.register("cached")
class CachedTeacher(Teacher):
    """Teacher outputs read by sample index from an on-disk cache (no teacher forward).

    The cache (see :mod:`distillery.cache`) holds the outputs of a frozen teacher over the
    training set, computed once by ``distillery cache build``: dense logits (``logits``,
    stored in float16 and returned in float32), or top-k logits (``logits@topk_values``,
    ``logits@topk_index``, ``logits@tail_mass`` and ``logits@temperature``, read by the
    ``kd_topk`` objective), plus any tapped features under their module paths.
    ``batch["index"]`` must be the index of each sample in the dataset the cache was built
    over (the run checks the dataset fingerprint before training).

    **Augmentation views.** A cache built over ``V > 1`` fixed augmentations of each sample
    reads, for sample ``i`` at optimizer step ``s`` (the steps done so far, a buffer saved in
    checkpoints, so a resumed run reads the same entries), view ``(i + s) mod V``. Samples of
    one batch thus read different views, and a sample visited once per epoch draws a new one
    each time. When the teacher saw the student's own augmented input, :meth:`student_view`
    replays exactly that augmentation for the student (same per-sample generator seeds).

    Args:
        path: the cache directory.
        verify: ``"full"`` (default) checks every shard's size, header and sha256 when the
            teacher is created; ``"size"`` only sizes and headers.
        eval_model: ``"auto"``: rebuild the teacher network from the cache's model config and
            ``teacher.safetensors`` to report the teacher's accuracy and agreement on held-out
            data (skipped when the cache has no weights); a module to use instead; or ``None``.
        eval_view: the view the evaluation teacher reads (like an online teacher's ``view``).

    Example::

        teacher = CachedTeacher("caches/kd_mnist1d")
        distiller = Distiller(student, teacher, [Term("kd", SoftTargetKD(2.0))])
    """

    def __init__(self, path: str | Path, *, verify: str = "full", eval_model: Any = "auto", eval_view: Any = None) -> None:
        super().__init__(None)
        self.reader = CacheReader(path, verify)
        self.path = Path(path)
        self.manifest = self.reader.manifest
        self.num_views = self.reader.views
        topk = self.reader.topk
        self.temperature = float(topk["temperature"]) if topk else None
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        if isinstance(eval_model, str) and eval_model == "auto":
            eval_model = self._load_eval_model(verify)
        self.eval_model = FrozenTeacher(eval_model, until=self.manifest["teacher"].get("until"), view=eval_view) if eval_model is not None else None

    # -- wiring ---------------------------------------------------------------------------
    @property
    def available(self) -> list[str]:
        """The signal names this teacher returns."""
        names = list(self.reader.names)
        if self.temperature is not None:
            names.append(TEMPERATURE_SIGNAL)
        return names

    def tap_model(self) -> None:
        return None

    def eval_teacher(self) -> Teacher | None:
        return self.eval_model

    def _load_eval_model(self, verify: str) -> nn.Module | None:
        info = self.manifest.get("teacher") or {}
        weights = info.get("weights")
        model = info.get("model") or {}
        if not weights or not model.get("name") or "input_shape" not in info or "num_classes" not in info:
            return None
        path = self.path / weights
        if not path.is_file():
            raise self.reader._corrupt(f"the teacher weights {weights} are missing")
        if verify == "full" and info.get("weights_sha256") and sha256_file(path) != info["weights_sha256"]:
            raise self.reader._corrupt(f"the teacher weights {weights} have a different sha256 than when they were written")
        from ..engine import checkpoint as ckpt
        from ..models import build_model

        net = build_model(model["name"], input_shape=tuple(info["input_shape"]), num_classes=int(info["num_classes"]), **model.get("params", {}))
        ckpt.load_weights(net, path, what=f"cached teacher ({model['name']}) in {self.path}")
        return net

    # -- entries --------------------------------------------------------------------------
    def entry_views(self, index: np.ndarray | torch.Tensor) -> np.ndarray:
        """The augmentation view each sample of a batch reads now: ``(index + steps_done) mod V``."""
        index = index.detach().cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        index = index.astype(np.int64).reshape(-1)
        if self.num_views == 1:
            return np.zeros_like(index)
        return (index + int(self.steps_done)) % self.num_views

    def student_view(self) -> StudentViewReplay | None:
        """The student's input when the teacher saw the student's augmented input (the
        manifest's ``input.tied_to_student``): the same per-sample augmentation of the entry
        being read; ``None`` when the cache was built on inputs the student does not share."""
        spec = self.manifest.get("input") or {}
        if not spec.get("tied_to_student") or not spec.get("transforms"):
            return None
        if not all(isinstance(t, dict) for t in spec["transforms"]):
            raise CacheError(
                f"The cache {self.path} was built with a view given as a Python callable ({spec['transforms']}); "
                "only views given as config specs can be replayed for the student."
            )
        from ..data.views import build_view

        return StudentViewReplay(self, spec.get("key", "x"), build_view(spec["transforms"]), int(spec.get("seed", 0)))

    # -- work -----------------------------------------------------------------------------
    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        if "index" not in batch:
            raise CacheIndexError(
                f"The cached teacher ({self.path}) reads its outputs by batch['index'], but the batch has only "
                f"the fields {sorted(batch)}. Feed batches from the dataset the cache was built over."
            )
        index = batch["index"]
        idx = index.detach().cpu().numpy().astype(np.int64).reshape(-1) if isinstance(index, torch.Tensor) else np.asarray(index, dtype=np.int64)
        self.reader.check_indices(idx)
        views = self.entry_views(idx)
        device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
        out: dict[str, torch.Tensor] = {}
        for name in names:
            if name == TEMPERATURE_SIGNAL and self.temperature is not None:
                out[name] = torch.full((len(idx),), self.temperature, device=device)
                continue
            if name not in self.reader.specs:
                raise CacheMismatchError(
                    f"The teacher-output cache {self.path} holds the signals {self.available}, but a term reads "
                    f"teacher.{name}. Rebuild it with that signal ({self.reader.hint}) from a config whose "
                    "objectives read it."
                )
            value = torch.from_numpy(self.reader.lookup(name, idx, views))
            value = value.long() if not value.is_floating_point() else value.float()
            out[name] = value.to(device, non_blocking=True)
        return out

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        self.steps_done.fill_(int(step))

    def extra_repr(self) -> str:
        kind = f"top-{self.reader.topk['k']}" if self.reader.topk else "dense"
        return f"path={str(self.path)!r}, samples={self.reader.num_samples}, views={self.num_views}, {kind}"


class StudentViewReplay:
    """The student's input for the cache entries being read: ``batch[key]`` with each sample
    transformed by the generator seeded as in the build (see :func:`~distillery.cache.builder.apply_seeded`).

    Each sample is transformed on its own, which costs tens of microseconds per sample on a
    CPU (a batched view costs less than one); where the method allows, an un-augmented
    teacher input (``teacher.view: x``) needs no replay at all."""

    def __init__(self, teacher: CachedTeacher, key: str, transform: Any, seed: int) -> None:
        self.teacher, self.key, self.transform, self.seed = teacher, key, transform, seed

    def __call__(self, batch: Batch) -> torch.Tensor:
        index = batch["index"]
        return apply_seeded(self.transform, batch[self.key], index, self.teacher.entry_views(index), self.seed)

    def __repr__(self) -> str:
        return f"StudentViewReplay(key={self.key!r}, transform={self.transform!r}, seed={self.seed})"


# -- in a config: teacher: {kind: cached, path, source, verify, ...} ---------------------------
def cached_config() -> type:
    """The config section of a cached teacher (made on first use, see :mod:`distillery.registry`)."""
    from pydantic import model_validator

    from ..config.base import PosFloat, PosInt, TeacherCfgBase

    FrozenTeacherCfg = TEACHERS.config_class("frozen")

    class CachedTeacherCfg(TeacherCfgBase):
        """Teacher outputs read by sample index from a cache built by ``distillery cache build``.

        ``view`` is the teacher's input, as for any teacher (it must be the one the cache was
        built with). ``source`` (a frozen teacher) is what ``distillery cache build`` runs, and
        lets a run check the cache's teacher against the config. ``topk``, ``temperature``,
        ``views``, ``dtype`` and ``shard_size`` are build options (CLI flags override them); a
        run reads them from the cache's manifest.
        """

        kind: Literal["cached"]
        path: str
        source: FrozenTeacherCfg | None = None
        verify: Literal["full", "size"] = "full"
        topk: PosInt | None = None
        temperature: PosFloat | None = None
        views: PosInt | None = None
        dtype: Literal["float16", "float32"] = "float16"
        shard_size: PosInt = 16384

        @model_validator(mode="after")
        def _plain_source(self) -> CachedTeacherCfg:
            if self.source is not None and (self.source.view is not None or self.source.precompute):
                raise ValueError(
                    "teacher.source gives the cached teacher's model only: set the teacher's input as "
                    "teacher.view (not teacher.source.view), and leave teacher.source.precompute out"
                )
            return self

        def preflight(self) -> None:
            """A missing or unreadable cache fails before the run directory is made."""
            from ..cache.store import read_manifest

            read_manifest(Path(self.path))

    return CachedTeacherCfg


@TEACHERS.builder("cached", config=cached_config)
def build_cached(cfg: Any, ctx: BuildContext, where: str) -> Teacher:
    """The cache at ``path``; for a run's own teacher, the cache is checked against the run
    (:func:`~distillery.cache.checks.check_cached_run`) and, when the teacher saw the student's
    augmented input, the student's input becomes the replay of that augmentation."""
    # the view only feeds the evaluation teacher; training reads the cache by sample index
    teacher = CachedTeacher(cfg.path, verify=cfg.verify, eval_view=ctx.view(cfg, where))
    if ctx.run is not None:
        from ..cache.checks import check_cached_run

        run = ctx.run
        ctx.student_view = check_cached_run(run.config, teacher, run.train_set, run.terms, ctx.model)
    return teacher


__all__ = ["CachedTeacher", "StudentViewReplay"]
