"""Checking keyword arguments against a callable's signature before calling it.

Datasets, views and models are built from config dicts. A misspelt or missing key should be
a :class:`~distillery.errors.ConfigError` that names the bad key and lists the accepted ones,
not a ``TypeError`` from deep inside a constructor; :func:`check_params` does that check with
:func:`inspect.signature`, so a ``TypeError`` raised *inside* the callable (a bug) is never
mistaken for a user error.

Values are checked against the parameters' annotations too (:func:`type_problem`): a dict
where a ``float`` belongs, a string where a list of ints belongs, or a bool where a number
belongs is a ConfigError naming the parameter, not a crash inside the component. Nothing is
coerced: ``"1e-3"`` is not a number and ``true`` is not an int.
"""

from __future__ import annotations

import collections.abc as cabc
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePath
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
    hints = annotations_of(fn)
    for name, value in params.items():
        if name in hints:
            problem = type_problem(value, hints[name])
            if problem:
                raise ConfigError(f"Parameter {name!r} of {what}: {problem}.")
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


# -- annotations -----------------------------------------------------------------------------
def annotations_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """The evaluated annotations of ``fn``'s parameters (of ``__init__`` for a class); a
    parameter whose annotation cannot be evaluated (a name imported only for type checkers)
    is left out, so it is not checked."""
    target = fn.__init__ if isinstance(fn, type) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - fall back to one parameter at a time
        pass
    raw = getattr(target, "__annotations__", {}) or {}
    module = inspect.getmodule(target)
    namespace = dict(vars(module)) if module is not None else {}
    hints: dict[str, Any] = {}
    for name, ann in raw.items():
        if isinstance(ann, str):
            try:
                ann = eval(ann, namespace)  # noqa: S307 - an annotation of distillery's or the user's own code
            except Exception:  # noqa: BLE001
                continue
        hints[name] = ann
    return hints


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def _type_name(ann: Any) -> str:
    if ann is type(None):
        return "null"
    if isinstance(ann, type):
        return {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}.get(ann.__name__, ann.__name__)
    return str(ann).replace("typing.", "").replace("collections.abc.", "")


def type_problem(value: Any, ann: Any) -> str | None:
    """``None`` when ``value`` (parsed from YAML) fits annotation ``ann``, else a message.

    Understood: ``float`` (an int or a float, not a bool), ``int`` (not a bool), ``bool``,
    ``str``, ``None``, unions / ``Optional``, ``Literal``, ``list``/``tuple``/``Sequence``
    (with item types; a string is not a sequence here), ``dict``/``Mapping``, and classes
    (``isinstance``). Anything else (``Any``, callables, type variables) is not checked.
    """
    if ann is Any or ann is inspect.Parameter.empty or isinstance(ann, typing.TypeVar):
        return None
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(ann, types.UnionType)):
        problems = [type_problem(value, a) for a in args]
        if any(p is None for p in problems):
            return None
        return f"expects {' or '.join(_type_name(a) for a in args)}, got {_describe(value)}"
    if origin is typing.Literal:
        return None if any(value == a and type(value) is type(a) for a in args) else (
            f"expects one of {', '.join(repr(a) for a in args)}, got {_describe(value)}")
    if ann is type(None) or ann is None:
        return None if value is None else f"expects null, got {_describe(value)}"
    if ann is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expects a number, got {_describe(value)}"
    if ann is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expects an integer, got {_describe(value)}"
    if ann is bool:
        return None if isinstance(value, bool) else f"expects true or false, got {_describe(value)}"
    if ann is str:
        return None if isinstance(value, str) else f"expects a string, got {_describe(value)}"
    container = origin or ann
    if container in (list, tuple, cabc.Sequence, cabc.Iterable, cabc.Collection, cabc.MutableSequence):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            return f"expects a list, got {_describe(value)}"
        if container is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return f"expects a list of {len(args)} items, got {_describe(value)}"
            item_types = list(args)
        else:
            item_types = [args[0] if args else Any] * len(value)
        for i, (item, item_ann) in enumerate(zip(value, item_types)):
            problem = type_problem(item, item_ann)
            if problem:
                return f"item {i} {problem}"
        return None
    if container in (dict, cabc.Mapping, cabc.MutableMapping):
        if not isinstance(value, Mapping):
            return f"expects a mapping, got {_describe(value)}"
        if len(args) == 2:
            for k, v in value.items():
                problem = type_problem(k, args[0]) or type_problem(v, args[1])
                if problem:
                    return f"entry {k!r} {problem}"
        return None
    if isinstance(container, type) and origin is None:
        if issubclass(container, PurePath) and isinstance(value, str):
            return None
        try:
            return None if isinstance(value, container) else f"expects {_type_name(container)}, got {_describe(value)}"
        except TypeError:
            return None
    return None
