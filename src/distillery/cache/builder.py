"""Building a teacher-output cache: run the teacher once over a dataset and store its signals.

The teacher runs in eval mode without gradients over the training set in index order, once
per augmentation view ``v`` in ``0 .. V-1``. With a random teacher input (a view with
transforms), sample ``i`` of view ``v`` is transformed on its own with a CPU generator seeded
by :func:`sample_seed` ``(seed, v, i)``: the entry does not depend on batch size or device
and can be replayed exactly (a run whose student saw the teacher's input replays the same
transform for the student, see :class:`~distillery.teachers.CachedTeacher`).

:func:`build_cache` is the library entry point (a model and a dataset);
:func:`~distillery.cache.from_config.build_cache_from_config` (what ``distillery cache build
CONFIG`` runs) builds the model and the dataset from a run config, then calls :func:`write_cache`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from . import store
from .store import TEACHER_WEIGHTS

TOPK_SIGNALS = ("logits@topk_values", "logits@topk_index", "logits@tail_mass")
TEMPERATURE_SIGNAL = "logits@temperature"
_MASK64 = (1 << 64) - 1

__all__ = [
    "TEMPERATURE_SIGNAL",
    "TOPK_SIGNALS",
    "apply_seeded",
    "build_cache",
    "sample_seed",
    "teacher_fingerprint",
    "teacher_input_spec",
]


# --------------------------------------------------------------------------------------
# reproducible per-sample views and fingerprints
# --------------------------------------------------------------------------------------


def sample_seed(seed: int, view: int, index: int) -> int:
    """The generator seed of sample ``index`` under augmentation view ``view`` (a 63-bit mix
    of the three numbers, SplitMix64 finaliser, so neighbouring samples get unrelated streams)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(view) * 0xD1B54A32D192ED03 + int(index) * 0x8CB92BA72F3D8DD7) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def apply_seeded(
    transform: Callable[..., torch.Tensor], x: torch.Tensor, index: Sequence[int] | torch.Tensor, view: Sequence[int] | torch.Tensor, seed: int
) -> torch.Tensor:
    """``transform`` applied to each row ``x[j]`` with a CPU generator seeded by
    ``sample_seed(seed, view[j], index[j])`` (views of :mod:`distillery.data.views` accept it)."""
    index = index.tolist() if isinstance(index, torch.Tensor) else list(index)
    view = view.tolist() if isinstance(view, torch.Tensor) else list(view)
    g = torch.Generator()
    rows = []
    for j, (i, v) in enumerate(zip(index, view)):
        g.manual_seed(sample_seed(seed, v, i))
        rows.append(transform(x[j : j + 1], g))
    return torch.cat(rows) if rows else x


def teacher_fingerprint(model: nn.Module, describe: Mapping[str, Any] | None = None) -> str:
    """sha256 (16 hex digits) of the model's state_dict (names, dtypes, shapes, bytes) and of
    ``describe`` (the model's config: name, params, ``until``)."""
    h = hashlib.sha256()
    h.update(json.dumps(dict(describe or {}), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def model_description(model_cfg: Any, until: str | None) -> dict[str, Any]:
    """What the teacher fingerprint covers besides the weights (never the checkpoint path)."""
    return {"name": model_cfg.name, "params": dict(model_cfg.params), "until": until}


def teacher_input_spec(cfg: Any) -> dict[str, Any]:
    """What the teacher of run config ``cfg`` sees: ``{"key", "transforms", "tied_to_student"}``.

    Mirrors the distiller: the teacher's own ``view`` if it has one, otherwise the student's
    input (``data.student_view``), otherwise ``batch["x"]``. ``tied_to_student`` is true when
    the teacher sees the student's (random) input, which a cached run then replays.
    """
    teacher_view = getattr(cfg.teacher, "view", None) if cfg.teacher is not None else None
    if teacher_view is not None:
        view, tied = teacher_view, False
    elif cfg.data.student_view is not None:
        view, tied = cfg.data.student_view, True
    else:
        return {"key": "x", "transforms": [], "tied_to_student": False}
    transforms = [dict(t) for t in view.transforms]
    return {"key": view.key, "transforms": transforms, "tied_to_student": bool(tied and transforms)}


def describe_input(spec: Mapping[str, Any]) -> str:
    if not spec.get("transforms"):
        return f"batch[{spec.get('key', 'x')!r}] as it is (no augmentation)"
    who = "the student's augmented input" if spec.get("tied_to_student") else "its own view"
    return f"{who}: batch[{spec.get('key', 'x')!r}] through {json.dumps(spec['transforms'])}"


# --------------------------------------------------------------------------------------
# the build
# --------------------------------------------------------------------------------------


def _index_dtype(num_classes: int) -> str:
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"


def write_cache(
    root: Path,
    model: nn.Module,
    dataset: Any,
    *,
    names: Sequence[str] = ("logits",),
    until: str | None = None,
    topk: int | None = None,
    temperature: float = 1.0,
    views: int = 1,
    transform: Callable[..., torch.Tensor] | None = None,
    key: str = "x",
    seed: int = 0,
    dtype: str = "float16",
    shard_size: int = 16384,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    manifest: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` into the (empty) directory ``root``; returns the manifest."""
    from ..engine.loading import make_loader
    from ..objectives.topk import topk_targets
    from ..teachers.base import run_model

    if dtype not in ("float16", "float32"):
        raise ConfigError(f"cache dtype must be 'float16' or 'float32', got {dtype!r}.")
    if views > 1 and transform is None:
        raise ConfigError(
            f"{views} augmentation views were asked for, but the teacher's input is not random (no view "
            "transforms), so every view would hold the same outputs. Use --views 1."
        )
    names = list(dict.fromkeys(names))
    if topk is not None and "logits" not in names:
        raise ConfigError("A top-k cache compresses the teacher's logits, but no logits are stored (does the teacher stop early, 'until'?).")
    n = len(dataset)
    if n == 0:
        raise ConfigError("The dataset to cache is empty.")
    loader, _ = make_loader(dataset, batch_size, shuffle=False)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    writer: store.CacheWriter | None = None
    stored_dtype = np.dtype(dtype)
    num_classes = None
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            for v in range(views):
                for batch in loader:
                    index = batch["index"]
                    start = int(index[0])
                    if not torch.equal(index, torch.arange(start, start + len(index))):
                        raise RuntimeError("cache build expects batches in index order")
                    if key not in batch:
                        raise ConfigError(f"The teacher's view reads batch[{key!r}], but batches have the fields {sorted(batch)}.")
                    x = batch[key]
                    if transform is not None:
                        x = apply_seeded(transform, x, index, [v] * len(index), seed)
                    out = run_model(model, x.to(device), names, stop_after=until)
                    rows: dict[str, np.ndarray] = {}
                    for name in names:
                        if name not in out:
                            raise ConfigError(
                                f"The teacher produced no signal {name!r} to cache; it produced {sorted(out)}. "
                                "Check the module paths the objectives read from the teacher."
                            )
                        value = out[name].detach()
                        if name == "logits" and topk is not None:
                            values, idx, tail = topk_targets(value.float(), topk, temperature)
                            num_classes = value.shape[-1]
                            rows["logits@topk_values"] = _to_numpy(values, stored_dtype, name)
                            rows["logits@topk_index"] = idx.cpu().numpy().astype(_index_dtype(num_classes))
                            rows["logits@tail_mass"] = tail.cpu().numpy().astype(np.float32)
                        else:
                            rows[name] = _to_numpy(value, stored_dtype, name)
                    if writer is None:
                        writer = store.CacheWriter(
                            root, n, views, shard_size, {k: (a.dtype, tuple(a.shape[1:])) for k, a in rows.items()}
                        )
                    writer.write(start, v, rows)
    finally:
        model.train(was_training)
    assert writer is not None
    info = dict(manifest or {})
    info["topk"] = None if topk is None else {"k": int(topk), "temperature": float(temperature), "num_classes": int(num_classes or 0)}
    info.setdefault("build", {})["seconds"] = round(time.perf_counter() - t0, 3)
    return writer.finish(info)


def _to_numpy(value: torch.Tensor, dtype: np.dtype, name: str) -> np.ndarray:
    if not value.is_floating_point():
        raise ConfigError(f"The teacher's signal {name!r} is not a floating-point tensor ({value.dtype}); it cannot be cached.")
    array = value.float().cpu().numpy().astype(dtype)
    if not np.isfinite(array).all():
        finite_before = bool(torch.isfinite(value).all())
        reason = (f"does not fit in {dtype} (values up to {float(value.abs().max()):.3g}); build with --dtype float32"
                  if finite_before else "holds NaN or infinite values (check the teacher)")
        raise ConfigError(f"The teacher's signal {name!r} {reason}.")
    return array


def save_teacher(root: Path, model: nn.Module) -> dict[str, Any]:
    """Save the teacher's weights in the cache folder ``root``; returns the manifest entries
    that name them."""
    from ..engine.checkpoint import save_weights

    path = root / TEACHER_WEIGHTS
    save_weights(model, path)
    return {"weights": TEACHER_WEIGHTS, "weights_sha256": store.sha256_file(path)}


def build_cache(
    model: nn.Module,
    dataset: Any,
    out: Path | str,
    *,
    names: Sequence[str] = ("logits",),
    until: str | None = None,
    topk: int | None = None,
    temperature: float = 1.0,
    views: int = 1,
    transform: Callable[..., torch.Tensor] | Sequence[Mapping[str, Any]] | None = None,
    key: str = "x",
    seed: int = 0,
    tied_to_student: bool = False,
    dtype: str = "float16",
    shard_size: int = 16384,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    describe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``model`` once over ``dataset`` (an :class:`~distillery.data.ArrayDataset`) and
    write a cache to ``out``; returns its manifest.

    ``names``: the signals to store (``logits`` and module paths, as teacher signals are
    named). ``topk``: keep the ``k`` largest logits, their indices and the tail mass at
    ``temperature`` instead of all logits. ``views``/``transform``/``seed``: ``V`` fixed,
    reproducible augmentations of the input (see :func:`apply_seeded`); ``transform`` is a
    view callable or a list of view specs (``[{"name": "shift1d", "max_shift": 3}]``), and
    ``tied_to_student`` records that the student sees the same augmented input. ``describe``: the
    model's config (``{"name", "params"}`` of a registered model or import path), so that
    ``CachedTeacher(eval_model="auto")`` can rebuild it to evaluate the teacher; its weights
    are stored as ``teacher.safetensors`` either way. The directory is built
    next to ``out`` and moved into place when complete.
    """
    out = store.check_target(Path(out), overwrite)
    transforms: list[Any] = []
    if transform is not None and isinstance(transform, (list, tuple)):
        from ..data.views import build_view

        transforms = [dict(t) for t in transform]
        transform = build_view(transforms) if transforms else None
    elif transform is not None:
        transforms = [repr(transform)]
    description = {"name": None, "params": {}, **dict(describe or {}), "until": until}
    manifest = {
        "teacher": {
            "fingerprint": teacher_fingerprint(model, description),
            "model": {"name": description["name"], "params": description["params"]},
            "until": until,
        },
        "dataset": dataset_info(dataset, {}),
        "input": {"key": key, "transforms": transforms, "tied_to_student": bool(tied_to_student and transforms), "seed": seed},
        "build": build_info(None),
    }
    if description["name"] is not None and until is None and hasattr(dataset, "sample_shape"):
        # what CachedTeacher(eval_model="auto") needs to rebuild the network for evaluation
        from ..teachers.base import run_model

        with torch.no_grad():
            probe = run_model(model.eval(), dataset[0]["x"][None].to(device), ["logits"])
        if "logits" in probe:
            manifest["teacher"].update(input_shape=list(dataset.sample_shape), num_classes=int(probe["logits"].shape[-1]))
    with store.staging(out) as tmp:
        manifest["teacher"].update(save_teacher(tmp, model))
        manifest = write_cache(
            tmp, model, dataset, names=names, until=until, topk=topk, temperature=temperature, views=views,
            transform=transform, key=key, seed=seed, dtype=dtype, shard_size=shard_size, batch_size=batch_size,
            device=device, manifest=manifest,
        )
        store.commit(tmp, out)
    return manifest


def dataset_info(dataset: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``dataset`` entry: the dataset's fingerprint and size, plus ``extra``."""
    if not hasattr(dataset, "fingerprint"):
        raise ConfigError(f"A cache needs a dataset with a fingerprint (an ArrayDataset), got {type(dataset).__name__}.")
    return {"fingerprint": dataset.fingerprint(), "num_samples": len(dataset), **dict(extra)}


def build_info(argv: Sequence[str] | None) -> dict[str, Any]:
    """The manifest's ``build`` entry: versions, date and the command (``argv``) that built it."""
    from importlib import metadata

    try:
        version = metadata.version("distillery")
    except metadata.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    return {
        "argv": list(argv) if argv else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "distillery": version,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
