"""A component's parameters as a config writes them, for ``distillery list --params``.

Datasets, views and models are built by calling a registered factory or class with the
parameters of their config section (see :mod:`.signatures`), so their signature *is* their
documentation: :func:`parameters` reads each parameter's annotation and default from it and
what the parameter means from the docstring's ``Args:`` section (Google style: one
``name: meaning`` entry per parameter, ``a, b: meaning`` for several, continuation lines
indented deeper), falling back to the ``__init__`` docstring of a class::

    Args:
        test_fraction: the share of each class held out as the test set, in (0, 1).
        seed: the seed of the stratified train/test split.

Defaults are shown as YAML writes them (``null``, ``true``, ``[32, 64, 64]``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .signatures import signature_of

__all__ = ["Parameter", "describe", "docstring_args", "parameters", "yaml_value"]

_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Params|Keyword arguments|Keyword args):\s*$")
_ENTRY = re.compile(r"^([A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


@dataclass(frozen=True)
class Parameter:
    """One keyword parameter of a component.

    ``type``: the annotation as written in the code (empty if none); ``default``: the default
    as YAML (``None`` when the parameter is required); ``meaning``: the first sentence of its
    ``Args:`` entry (empty if undocumented); ``supplied``: distillery passes it itself (a
    model's ``input_shape`` and ``num_classes``, taken from the dataset)."""

    name: str
    type: str
    default: str | None
    meaning: str
    supplied: bool = False


def yaml_value(value: Any) -> str:
    """``value`` as it is written in a YAML config: ``null``, ``true``, ``0.25``, ``[1, 2]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value if value and re.fullmatch(r"[A-Za-z_][\w.\-/]*", value) and value not in ("null", "true", "false") else repr(value)
    return str(value)


_ABBREVIATIONS = ("e.g", "i.e", "etc", "cf", "vs", "approx")
# a Sphinx role: :func:`~a.b.name` is shown as `name`, :class:`a.B` as `a.B`
_ROLE = re.compile(r":[a-z]+:`(~?)([^`]*)`")


def _first_sentence(text: str) -> str:
    """The text up to its first full stop (not one of e.g., i.e., etc.), on one line."""
    text = " ".join(text.split()).replace("``", "`")
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    for m in re.finditer(r"\.(?=\s|$)", text):
        word = text[: m.start()].rsplit(" ", 1)[-1].lstrip("(")
        if word.lower() not in _ABBREVIATIONS:
            return text[: m.end()]
    return text


def docstring_args(doc: str | None) -> dict[str, str]:
    """``{parameter: meaning}`` from a docstring's ``Args:`` (or ``Parameters:``) section;
    an entry naming several parameters (``min_degrees, max_degrees: ...``) gives each the
    same meaning. The meaning is the entry's first sentence, reST ``literals`` shown as
    `literals`."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    entries: list[tuple[list[str], list[str]]] = []  # (names, text lines)
    i = 0
    while i < len(lines):
        m = _SECTION.match(lines[i])
        i += 1
        if not m:
            continue
        base = len(m.group(1))
        entry_indent: int | None = None
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                # a blank line ends the section unless the next text is still indented in it
                nxt = next((ln for ln in lines[i + 1:] if ln.strip()), "")
                if len(nxt) - len(nxt.lstrip()) <= base:
                    break
                i += 1
                continue
            indent = len(line) - len(line.lstrip())
            if indent <= base:
                break
            if entry_indent is None:
                entry_indent = indent
            e = _ENTRY.match(line.strip()) if indent == entry_indent else None
            if e:
                entries.append(([n.strip() for n in e.group(1).split(",")], [e.group(2)]))
            elif indent > entry_indent and entries:
                entries[-1][1].append(line.strip())
            else:
                break
            i += 1
    out: dict[str, str] = {}
    for names, text in entries:
        for n in names:
            out.setdefault(n, _first_sentence(" ".join(text)))
    return out


def _annotation(ann: Any) -> str:
    if ann is inspect.Parameter.empty:
        return ""
    if isinstance(ann, str):
        return ann
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "").replace("collections.abc.", "")


def parameters(fn: Callable[..., Any], supplied: Iterable[str] = ()) -> list[Parameter]:
    """The keyword parameters of ``fn`` (a factory, or a class: its ``__init__``), in
    signature order, with their meanings from the docstring (see :func:`docstring_args`).
    ``*args`` and ``**kwargs`` are left out; ``supplied`` names are marked as such."""
    sig = signature_of(fn)
    if sig is None:
        return []
    meanings = docstring_args(fn.__doc__)
    if isinstance(fn, type):
        for k, v in docstring_args(fn.__init__.__doc__).items():
            meanings.setdefault(k, v)
    supplied = set(supplied)
    out = []
    for p in sig.parameters.values():
        if p.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            continue
        default = None if p.default is inspect.Parameter.empty else yaml_value(p.default)
        out.append(Parameter(p.name, _annotation(p.annotation), default, meanings.get(p.name, ""), p.name in supplied))
    return out


def describe(kind: str, name: str, fn: Callable[..., Any], summary: str, supplied: Iterable[str] = (), width: int = 100) -> list[str]:
    """The lines ``distillery list --params`` prints for one ``kind`` of component (dataset,
    view, model): its name and summary, then per parameter ``name: type = default`` (``(required)``
    without a default, ``(given by the dataset)`` for ``supplied`` ones) and, below it, its
    meaning wrapped to ``width`` columns."""
    import textwrap

    params = parameters(fn, supplied)
    summary_wrap = textwrap.TextWrapper(width, initial_indent="  ", subsequent_indent="      ", break_on_hyphens=False)
    meaning_wrap = textwrap.TextWrapper(width, initial_indent=" " * 10, subsequent_indent=" " * 10, break_on_hyphens=False)
    lines = summary_wrap.wrap(f"{name}  {summary}")
    if not params:
        lines.append(f"      (no parameters; the {kind} is used as is)")
    for p in params:
        head = f"{p.name}: {p.type}" if p.type else p.name
        if p.supplied:
            head += "  (given by the dataset)"
        elif p.default is None:
            head += "  (required)"
        else:
            head += f" = {p.default}"
        lines.append(f"      {head}")
        if p.meaning:
            lines += meaning_wrap.wrap(p.meaning)
    return lines
