"""Building the teacher-output cache a run config describes (``distillery cache build CONFIG``).

The config's frozen teacher (or its cached teacher's ``source``) is built, and first trained
when it has no checkpoint, as a run would build it (:mod:`distillery.runner`); the dataset is
the one the run trains on. :func:`~distillery.cache.builder.write_cache` then runs the teacher
over it. This half of cache building reads run configs and so imports the runner; the other
half (:mod:`.builder`), which :class:`~distillery.teachers.CachedTeacher` imports, does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config.base import ViewCfg
from ..engine.build import build_model, build_terms, build_view
from ..engine.distiller import signal_names
from ..engine.trainer import resolve_device, seed_everything
from ..errors import ConfigError
from ..runner import fit_teacher, load_data
from . import store
from .builder import (
    build_info,
    dataset_info,
    save_teacher,
    model_description,
    teacher_fingerprint,
    teacher_input_spec,
    write_cache,
)


def source_teacher(cfg: Any) -> Any:
    """The frozen-teacher section a cache is built from: ``teacher`` itself when it is frozen,
    ``teacher.source`` when it is cached."""
    teacher = cfg.teacher
    kind = getattr(teacher, "kind", None)
    if kind == "frozen":
        return teacher
    if kind == "cached":
        if teacher.source is None:
            raise ConfigError(
                "cache build: the config's teacher is a cache without teacher.source, so there is no teacher "
                "to run. Add teacher.source (a frozen teacher: model with checkpoint, or fit), or give a "
                "config whose teacher is frozen."
            )
        return teacher.source
    raise ConfigError(
        f"cache build needs a config whose teacher is frozen (or cached with a source); this one's is "
        f"{kind!r}" + (" (none)." if teacher is None else ". Teachers that follow the student (ema, snapshot, ...) change during training and cannot be cached.")
    )


def default_temperature(terms: Sequence[Any]) -> float:
    """The temperature of the config's ``kd_topk`` (else ``kd``) terms, else 1.0."""
    from ..objectives import SoftTargetKD, TopKKD

    for kind in (TopKKD, SoftTargetKD):
        temps = {float(t.objective.temperature) for t in terms if isinstance(t.objective, kind) and t.objective.temperature is not None}
        if len(temps) > 1:
            raise ConfigError(f"cache build: the config's terms use the temperatures {sorted(temps)}; choose the cache's with --temperature.")
        if temps:
            return temps.pop()
    return 1.0


def build_cache_from_config(
    cfg: Any,
    out: Path | str | None = None,
    *,
    topk: int | None = None,
    temperature: float | None = None,
    views: int | None = None,
    dtype: str | None = None,
    shard_size: int | None = None,
    batch_size: int = 1024,
    overwrite: bool = False,
    argv: Sequence[str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Build the cache a run config describes (what ``distillery cache build`` runs).

    The teacher is the config's frozen teacher (or its cached teacher's ``source``): loaded
    from ``model.checkpoint``, or first trained as ``fit`` says (its run directory is kept in
    ``<cache>/teacher``). The dataset is the one the run trains on (``data``, with the
    unlabeled samples when ``data.unlabeled``); the signals are those the config's objectives
    read from the teacher. Options not given fall back to the cached teacher's config keys
    (``topk``, ``temperature``, ``views``, ``dtype``, ``shard_size``). Returns ``(path, manifest)``.
    """
    source = source_teacher(cfg)
    cached = cfg.teacher if cfg.teacher.kind == "cached" else None
    if out is None:
        if cached is None:
            raise ConfigError("cache build: give --out DIR (the config's teacher is frozen, so it names no cache path).")
        out = cached.path
    out = store.check_target(Path(out), overwrite)

    def pick(value: Any, key: str, default: Any) -> Any:
        if value is not None:
            return value
        from_cfg = getattr(cached, key, None) if cached is not None else None
        return from_cfg if from_cfg is not None else default

    topk = pick(topk, "topk", None)
    dtype = pick(dtype, "dtype", "float16")
    shard_size = pick(shard_size, "shard_size", 16384)
    terms = build_terms(cfg.objectives)
    wanted = signal_names(terms, "teacher")
    if any(n.startswith("logits@") for n in wanted) and topk is None:
        raise ConfigError("cache build: the config's objectives read top-k teacher signals (kd_topk); give --topk K.")
    temperature = pick(temperature, "temperature", None)
    if temperature is None:
        temperature = default_temperature(terms) if topk is not None else 1.0
    spec = teacher_input_spec(cfg)
    random_input = bool(spec["transforms"])
    views = pick(views, "views", 4 if random_input else 1)
    names = ["logits"] if source.until is None else []
    names += [n for n in wanted if n != "logits" and not n.startswith("logits@") and n not in names]
    if not names:
        raise ConfigError("cache build: the config's objectives read nothing from the teacher, and it has no logits (until).")
    if cached is not None and topk is not None and "logits" in wanted:  # this config will run on the cache
        raise ConfigError(
            "cache build: --topk keeps only the k largest teacher logits, but the config's objectives read the "
            "dense teacher.logits (e.g. kd), so its run would be refused. Use {kind: kd_topk} in the config, "
            "or build without --topk."
        )

    splits = load_data(cfg)
    if cfg.data.unlabeled and splits.unlabeled is None:
        raise ConfigError(f"data.unlabeled is true, but dataset {cfg.data.dataset!r} was given no unlabeled samples (see its params).")
    train_set = splits.train_with_unlabeled() if cfg.data.unlabeled else splits.train
    device = resolve_device(cfg.train.device)
    transform = None
    if random_input:
        transform = build_view(_view_cfg(spec), "teacher input").transform
    description = model_description(source.model, source.until)
    with store.staging(out) as tmp:
        seed_everything(cfg.seed)
        model = build_model(source.model, splits.input_shape, splits.num_classes, "teacher.model")
        fitted = source.model.checkpoint is None
        if fitted:
            model = fit_teacher(model, source.fit, splits, tmp, cfg.seed, False, "teacher")
        manifest = {
            "teacher": {
                "fingerprint": teacher_fingerprint(model, description),
                "model": {"name": source.model.name, "params": dict(source.model.params)},
                "until": source.until,
                "checkpoint": source.model.checkpoint,
                "fitted": fitted,
                "fit": store.fit_description(source.fit) if fitted else None,  # what trained it (checks.py)
                "input_shape": list(splits.input_shape),
                "num_classes": int(splits.num_classes),
                **save_teacher(tmp, model),
            },
            "dataset": dataset_info(train_set, {
                "name": cfg.data.dataset, "params": dict(cfg.data.params), "unlabeled": bool(cfg.data.unlabeled),
            }),
            "input": {**spec, "seed": int(cfg.seed)},
            "build": build_info(argv),
        }
        manifest = write_cache(
            tmp, model.to(device), train_set, names=names, until=source.until, topk=topk, temperature=float(temperature),
            views=int(views), transform=transform, key=spec["key"], seed=int(cfg.seed), dtype=dtype,
            shard_size=int(shard_size), batch_size=batch_size, device=device, manifest=manifest,
        )
        store.commit(tmp, out)
    return out, manifest


def _view_cfg(spec: Mapping[str, Any]) -> ViewCfg:
    return ViewCfg(key=spec["key"], transforms=list(spec["transforms"]))


__all__ = ["build_cache_from_config", "default_temperature", "source_teacher"]
