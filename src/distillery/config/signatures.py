"""Checking keyword arguments against a callable's signature before calling it.

Datasets, views and models are built from config dicts. A misspelt or missing key should be
a :class:`~distillery.errors.ConfigError` that names the bad key and lists the accepted ones,
not a ``TypeError`` from deep inside a constructor; :func:`check_params` does that check with
:func:`inspect.signature`, so a ``TypeError`` raised *inside* the callable (a bug) is never
mistaken for a user error.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import ConfigError


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``inspect.signature(fn)``, or ``None`` when it has none (some builtins)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def keyword_names(fn: Callable[..., Any]) -> tuple[list[str], bool]:
    """``(names a caller may pass by keyword, whether **kwargs is accepted)``."""
    sig = signature_of(fn)
    if sig is None:
        return [], True
    names: list[str] = []
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return names, var_kw


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` accepts a keyword argument ``name`` (explicitly or through ``**kwargs``)."""
    names, var_kw = keyword_names(fn)
    return name in names or var_kw


def check_params(
    fn: Callable[..., Any],
    params: Mapping[str, Any],
    what: str,
    supplied: Iterable[str] = (),
) -> None:
    """Raise :class:`ConfigError` unless ``fn(**params, **supplied)`` binds.

    ``what`` names the component in messages (``"dataset 'npz'"``); ``supplied`` are names
    distillery passes itself (``input_shape``), which are neither reported as missing nor
    listed as accepted.
    """
    sig = signature_of(fn)
    if sig is None:
        return
    supplied = set(supplied)
    names, var_kw = keyword_names(fn)
    listed = [n for n in names if n not in supplied]
    accepted = ", ".join(listed) if listed else "none"
    if not var_kw:
        unknown = [k for k in params if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, listed, n=1, cutoff=0.6)
                hints.append(f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k))
            raise ConfigError(
                f"Unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for {what}. "
                f"Accepted parameters: {accepted}."
            )
    missing = [
        p.name
        for p in sig.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in params
        and p.name not in supplied
    ]
    if missing:
        raise ConfigError(
            f"Missing required parameter{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)} for {what}. Accepted parameters: {accepted}."
        )
    positional_only = [
        p.name
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is inspect.Parameter.empty
    ]
    if positional_only:
        raise ConfigError(
            f"{what} needs positional-only arguments ({', '.join(positional_only)}) and cannot be "
            "built from keyword parameters."
        )
