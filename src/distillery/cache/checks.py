"""The checks a run makes before training on a cached teacher.

:func:`check_cached_run` compares the cache's manifest with the run config:

* **dataset**: the fingerprint of the exact training set (train, or train + unlabeled) must
  equal the one the cache was built over;
* **teacher input**: the view the teacher would see in this run (its own ``view``, or the
  student's) must be the one the cache was built with;
* **teacher**: when the config names the teacher (``teacher.source``), its model name,
  parameters and ``until`` must match, and with a ``model.checkpoint`` the fingerprint of
  those weights must equal the cache's. Without a checkpoint the teacher would be trained by
  ``teacher.source.fit``, so what trained the cache's teacher must be that: a teacher the
  build fitted with the same fit section (the manifest's ``teacher.fit``, keys that only
  log or checkpoint left out; the seed is not compared, so runs of several seeds share one
  cache), not one loaded from a checkpoint. Without ``teacher.source`` the teacher cannot be
  checked against the config: a warning says so, and only the dataset is checked;
* **signals**: every teacher signal the objectives read must be in the cache, and the
  temperature of each ``kd_topk`` term must be the cache's.

A failed check is a :class:`~distillery.cache.store.CacheMismatchError` saying what differs
and how to rebuild; nothing is recomputed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .builder import (
    describe_input,
    model_description,
    teacher_fingerprint,
    teacher_input_spec,
)
from .store import CacheMismatchError, _quote, fit_description


class CacheCheckWarning(UserWarning):
    """A property of a cached teacher that the run config gives no way to check."""


def _rebuild(path: Path, hint: str | None) -> str:
    text = f"rebuild it for this config with 'distillery cache build CONFIG --out {_quote(str(path))} --overwrite'"
    return text + (f" (the command it was built with, for where it is now: '{hint}')" if hint else "")


def check_signal_names(wanted: Sequence[str], held: Sequence[str], topk: bool, path: Path, hint: str | None) -> None:
    """Every teacher signal ``wanted`` by the objectives must be ``held`` by the cache."""
    missing = [n for n in wanted if n not in held]
    if not missing:
        return
    if "logits" in missing and topk:
        raise CacheMismatchError(
            f"The teacher-output cache {path} holds top-k logits only (the signals {list(held)}), but a term "
            "reads the dense teacher.logits. Use the kd_topk objective, which computes the divergence on the "
            f"kept classes plus a tail bucket, or {_rebuild(path, hint)} without --topk."
        )
    if any(n.startswith("logits@") for n in missing) and not topk:
        raise CacheMismatchError(
            f"The teacher-output cache {path} holds dense logits, but a term reads the top-k signals {missing} "
            f"(kd_topk). Use the kd objective with a dense cache, or {_rebuild(path, hint)} with --topk K."
        )
    raise CacheMismatchError(
        f"The teacher-output cache {path} holds the signals {list(held)}, but the objectives also read "
        f"{['teacher.' + n for n in missing]}. A cache stores the teacher signals the objectives of the config it "
        f"was built from read; {_rebuild(path, hint)}."
    )


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}`` (lists kept whole)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def fit_differences(cached: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The keys of two fit descriptions (:func:`~distillery.cache.store.fit_description`)
    whose values differ, as ``"optimizer.lr: 0.01 in the cache, 0.003 in the config"``."""
    a, b = _flat(cached), _flat(wanted)
    out = []
    for key in sorted(set(a) | set(b)):
        if json.dumps(a.get(key), sort_keys=True) != json.dumps(b.get(key), sort_keys=True):
            out.append(f"{key}: {json.dumps(a.get(key))} in the cache, {json.dumps(b.get(key))} in the config")
    return out


def _check_fit(source: Any, info: dict[str, Any], path: Path, hint: str | None) -> None:
    """``teacher.source`` has no checkpoint: its teacher would be trained by ``source.fit``;
    the cache's teacher must have been trained by the same fit section."""
    wanted = fit_description(source.fit)
    if info.get("fitted") is False:
        raise CacheMismatchError(
            f"The teacher-output cache {path} was computed by a teacher loaded from {info.get('checkpoint')}, but "
            f"teacher.source has no model.checkpoint and would train its teacher (teacher.source.fit), so the cache "
            f"may not hold that teacher's outputs. Set teacher.source.model.checkpoint to the weights the cache was "
            f"built with ({path / str(info.get('weights') or 'teacher.safetensors')}), or {_rebuild(path, hint)}."
        )
    cached = info.get("fit")
    if not isinstance(cached, dict):
        warnings.warn(
            f"teacher.path {path}: the cache does not record what trained its teacher (built before distillery "
            "stored teacher.fit in the manifest, or by build_cache), so teacher.source.fit cannot be compared; "
            "only the teacher's model, the dataset and the teacher's input were checked.",
            CacheCheckWarning,
            stacklevel=3,
        )
        return
    changed = fit_differences(cached, wanted or {})
    if changed:
        raise CacheMismatchError(
            f"The teacher-output cache {path} was computed by a teacher trained with another teacher.source.fit "
            f"than this config's ({'; '.join(changed)}), so it holds the outputs of another teacher (no "
            f"checkpoint pins the weights). The run is refused; {_rebuild(path, hint)}."
        )


def _data_text(info: dict[str, Any]) -> str:
    params = json.dumps(info.get("params", {}), sort_keys=True)
    return f"dataset {info.get('name')!r} with params {params}, unlabeled {info.get('unlabeled')}"


def check_cached_run(
    cfg: Any, teacher: Any, train_set: Any, terms: Sequence[Any], build_model: Callable[[Any, str], Any]
) -> Callable | None:
    """Check a cached teacher against the run config; returns the student's view replay when
    the teacher saw the student's augmented input (else ``None``). ``build_model(model_cfg,
    where)`` builds a ``model`` section sized for the run's data (the teacher builder's
    context provides it), to fingerprint ``teacher.source``'s checkpoint."""
    from ..engine.distiller import signal_names
    from ..objectives import TopKKD

    m = teacher.manifest
    path = teacher.path
    hint = teacher.reader.hint
    tcfg = cfg.teacher

    # dataset
    ds = m.get("dataset") or {}
    fingerprint = train_set.fingerprint()
    if fingerprint != ds.get("fingerprint"):
        here = {"name": cfg.data.dataset, "params": dict(cfg.data.params), "unlabeled": cfg.data.unlabeled}
        raise CacheMismatchError(
            f"The teacher-output cache {path} does not match this run's dataset: it was built over "
            f"{ds.get('num_samples')} samples ({_data_text(ds)}; fingerprint {ds.get('fingerprint')}), but this "
            f"run trains on {len(train_set)} samples ({_data_text(here)}; fingerprint {fingerprint}), so its "
            f"outputs would belong to other samples. The run is refused; {_rebuild(path, hint)}."
        )

    # what the teacher sees
    cached_input = {k: (m.get("input") or {}).get(k) for k in ("key", "transforms", "tied_to_student")}
    cached_input["transforms"] = list(cached_input["transforms"] or [])
    run_input = teacher_input_spec(cfg)
    if json.dumps(cached_input, sort_keys=True) != json.dumps(run_input, sort_keys=True):
        raise CacheMismatchError(
            f"The teacher-output cache {path} holds the teacher's outputs on {describe_input(cached_input)}, but in "
            f"this run the teacher would see {describe_input(run_input)}. Set teacher.view (or data.student_view) "
            f"as the cache was built, or {_rebuild(path, hint)}."
        )

    # the teacher
    info = m.get("teacher") or {}
    source = getattr(tcfg, "source", None)
    if source is not None:
        want = model_description(source.model, source.until)
        have = {"name": (info.get("model") or {}).get("name"), "params": (info.get("model") or {}).get("params", {}), "until": info.get("until")}
        if json.dumps(want, sort_keys=True) != json.dumps(have, sort_keys=True):
            raise CacheMismatchError(
                f"The teacher-output cache {path} was computed by the teacher {json.dumps(have, sort_keys=True)}, "
                f"but teacher.source names {json.dumps(want, sort_keys=True)}. The run is refused; {_rebuild(path, hint)}."
            )
        if source.model.checkpoint is not None:
            model = build_model(source.model, "teacher.source")
            found = teacher_fingerprint(model, want)
            if found != info.get("fingerprint"):
                raise CacheMismatchError(
                    f"The teacher-output cache {path} was computed by a teacher with fingerprint {info.get('fingerprint')}, "
                    f"but the weights in {source.model.checkpoint} (teacher.source.model.checkpoint) have fingerprint "
                    f"{found}: the teacher changed since the cache was built. The run is refused; {_rebuild(path, hint)}."
                )
        else:
            _check_fit(source, info, path, hint)
    else:
        warnings.warn(
            f"teacher.path {path}: the config has no teacher.source, so the cached outputs cannot be checked "
            f"against a teacher (the cache's teacher: {info.get('model', {}).get('name')}, fingerprint "
            f"{info.get('fingerprint')}); only the dataset and the teacher's input were checked.",
            CacheCheckWarning,
            stacklevel=2,
        )

    # signals and temperatures
    wanted = signal_names(terms, "teacher")
    topk = m.get("topk")
    check_signal_names(wanted, teacher.available, bool(topk), path, hint)
    if topk:
        for term in terms:
            T = getattr(term.objective, "temperature", None) if isinstance(term.objective, TopKKD) else None
            if T is not None and abs(T - float(topk["temperature"])) > 1e-6 * max(1.0, float(topk["temperature"])):
                raise CacheMismatchError(
                    f"Term {term.name!r} (kd_topk) has temperature {T}, but the top-k cache {path} stores the "
                    f"teacher's tail mass at temperature {topk['temperature']}. Set the term's temperature to "
                    f"{topk['temperature']} (or leave it out), or {_rebuild(path, hint)} with --temperature {T}."
                )
    return teacher.student_view()


__all__ = ["CacheCheckWarning", "check_cached_run", "check_signal_names", "fit_differences"]
