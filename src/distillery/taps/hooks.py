"""Taps: capture intermediate signals of any ``nn.Module`` by dotted module path.

A tap address is a path in ``model.named_modules()`` (``layers.1.fc``, ``blocks.0.attn``,
``stages.2.0``) with optional parts, in this order::

    <path>[#<call>][:input][[<key>]...]

* ``:input`` captures the module's first positional input (or its first keyword input)
  instead of its output.
* ``[<key>]`` picks an item of a module that returns a dict (``head[feat]``) or a tuple or
  list (``head[1]``; an integer index, negative counts from the end). Keys chain:
  ``head[aux][0]``. Without a key a tuple or list gives its first element, and a dict is a
  :class:`~distillery.errors.TapError` that lists its keys.
* ``#<call>`` picks one call of a module that runs several times in one forward (a shared
  layer, a weight-tied block), counted from 0 in the order they ran; ``#-1`` is the last.
  Without it the last call is captured and a warning, given once per module, says how many
  calls there were. ``#`` keeps clear of the ``:input`` suffix and of the ``@`` in output
  names such as ``logits@topk_values``.

For example ``blocks.0#1:input`` is the input of the second call of ``blocks.0``, and
``head[feat]`` the ``"feat"`` entry of the dict ``head`` returns. In configs the address
follows the source: ``student.head[feat]``, ``teacher.blocks.0#1``.

Signals are captured with forward hooks registered for the duration of one forward pass and
removed afterwards, so no user model is edited (the approach of torchdistill's
``forward_hook``). Each signal is stored under its full address.

Example::

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> with capture(net, ["0", "2:input"]) as signals:
    ...     out = net(torch.randn(3, 4))
    >>> signals["0"].shape, signals["2:input"].shape
    (torch.Size([3, 8]), torch.Size([3, 8]))
"""

from __future__ import annotations

import contextlib
import difflib
import re
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TapError

INPUT_SUFFIX = ":input"


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (truncated teachers)."""


_ADDRESS = re.compile(r"(?P<path>[^#\[\]]*?)(?:#(?P<call>-?\d+))?(?P<input>:input)?(?P<keys>(?:\[[^\[\]]+\])*)")


@dataclass(frozen=True)
class Address:
    """A parsed tap address ``<path>[#<call>][:input][[<key>]...]`` (see the module docstring).

    ``call`` is ``None`` when no call is picked (the last call, with a warning if there were
    several); ``keys`` are the bracketed selectors, as written.
    """

    path: str
    want_input: bool = False
    call: int | None = None
    keys: tuple[str, ...] = ()


def parse_address(address: str) -> Address:
    """``"blocks.0#1:input[feat]"`` -> ``Address("blocks.0", True, 1, ("feat",))``.

    A string that does not have this form is taken as a plain path (and fails in
    :func:`resolve` with the nearest valid paths).
    """
    m = _ADDRESS.fullmatch(address)
    if m is None:
        return Address(address)
    call = m.group("call")
    keys = tuple(re.findall(r"\[([^\[\]]+)\]", m.group("keys")))
    return Address(m.group("path"), m.group("input") is not None, None if call is None else int(call), keys)


def format_address(address: Address, *, call: int | None = None) -> str:
    """The text of ``address``, with its call replaced by ``call`` when given."""
    call = address.call if call is None else call
    return (
        address.path
        + ("" if call is None else f"#{call}")
        + (INPUT_SUFFIX if address.want_input else "")
        + "".join(f"[{k}]" for k in address.keys)
    )


def split_address(address: str) -> tuple[str, bool]:
    """``"layer.1:input"`` -> ``("layer.1", True)``; ``"layer.1"`` -> ``("layer.1", False)``.

    Call and key selectors are dropped: ``"head#1[feat]"`` -> ``("head", False)``.
    """
    parsed = parse_address(address)
    return parsed.path, parsed.want_input


def module_paths(model: nn.Module) -> list[str]:
    """All addressable module paths of ``model`` (the root, named ``""``, is excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve(model: nn.Module, path: str, *, owner: str = "model") -> nn.Module:
    """Return the submodule at ``path`` or raise a :class:`TapError` naming the nearest paths."""
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    paths = [p for p in modules if p]
    close = difflib.get_close_matches(path, paths, n=5, cutoff=0.4)
    if not close:  # fall back to paths sharing the longest prefix
        prefix = path.rsplit(".", 1)[0]
        close = [p for p in paths if p.startswith(prefix)][:5] or paths[:5]
    raise TapError(
        f"No module {path!r} in the {owner} ({type(model).__name__}). Nearest valid paths: "
        f"{', '.join(close)}. A tap addresses a name from model.named_modules(), "
        f"optionally followed by '#<call>', ':input' and '[<key>]'."
    )


def validate(model: nn.Module, addresses: Iterable[str], *, owner: str = "model") -> None:
    """Check every address up front, so a wrong path fails before any training."""
    for address in addresses:
        resolve(model, split_address(address)[0], owner=owner)


@contextlib.contextmanager
def capture(
    model: nn.Module,
    addresses: Iterable[str],
    *,
    stop_after: str | None = None,
    owner: str = "model",
) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager capturing the signals at ``addresses`` during forwards inside it.

    Args:
        model: any module.
        addresses: tap addresses (module paths with optional ``#<call>``, ``:input`` and
            ``[<key>]`` parts; see the module docstring).
        stop_after: if given, a module path after whose forward the pass is cut short by
            raising :class:`StopForward`; the caller catches it (see :func:`run_tapped`).
        owner: a word for error messages ("student", "teacher").

    Yields a dict that fills up with ``address -> tensor`` as the forward runs. Calls are
    counted per forward of ``model``: if a module runs several times in one forward the
    address without ``#<call>`` gets the last call, and on leaving the context a warning
    (once per module and count) names the module and the number of calls. A ``#<call>``
    beyond the calls that ran is a :class:`TapError`. All hooks are removed on exit, also
    when the forward raises.
    """
    signals: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}  # address -> calls of its module in the current forward of ``model``
    picks: list[_Pick] = []
    handles = []
    try:
        for address in dict.fromkeys(addresses):
            parsed = parse_address(address)
            module = resolve(model, parsed.path, owner=owner)
            pick = _Pick(address, parsed, owner, type(module).__name__)
            picks.append(pick)
            handles.append(module.register_forward_hook(_make_hook(signals, calls, pick), with_kwargs=True))
        if stop_after is not None:
            module = resolve(model, stop_after, owner=owner)
            handles.append(module.register_forward_hook(_stop_hook))
        if picks:
            handles.append(model.register_forward_pre_hook(_make_reset_hook(calls, picks)))
        yield signals
        _check_calls(signals, calls, picks, owner)
    finally:
        for handle in handles:
            handle.remove()


def run_tapped(
    model: nn.Module,
    inputs: torch.Tensor,
    addresses: Iterable[str],
    *,
    stop_after: str | None = None,
    owner: str = "model",
    call: Callable[[torch.Tensor], object] | None = None,
) -> dict[str, torch.Tensor]:
    """Run ``model(inputs)`` and return its signals: ``logits`` plus each tapped address.

    If the model returns a dict its items are signals under their own keys; a tuple or list
    contributes its first element as ``logits``. With ``stop_after`` the forward stops after
    that module and no ``logits`` signal exists. ``call`` runs the forward instead of
    ``model`` (a DDP/FSDP wrapper around it), while addresses stay paths of ``model``.
    """
    addresses = list(addresses)
    with capture(model, addresses, stop_after=stop_after, owner=owner) as signals:
        try:
            out = (call or model)(inputs)
        except StopForward:
            out = None
    result = dict(signals)
    if out is not None:
        result.update(output_signals(out))
    return result


def output_signals(out: object) -> dict[str, torch.Tensor]:
    """Name a model's return value: a tensor is ``logits``; a dict keeps its keys."""
    if isinstance(out, torch.Tensor):
        return {"logits": out}
    if isinstance(out, dict):
        return {str(k): v for k, v in out.items() if isinstance(v, torch.Tensor)}
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return {"logits": out[0]}
    raise TypeError(
        f"Model returned {type(out).__name__}; distillery expects a tensor of logits, a dict "
        "of named tensors, or a tuple whose first element is the logits."
    )


@dataclass
class _Pick:
    """One address being captured, and the calls of its module kept for a ``#<call>``."""

    address: str
    parsed: Address
    owner: str
    module_type: str
    kept: deque | None = None  # the last |call| values, for a negative call index

    def __post_init__(self) -> None:
        call = self.parsed.call
        if call is not None and call < 0:
            self.kept = deque(maxlen=-call)


_WARNED: set[tuple[str, str, str, int]] = set()


def _make_hook(signals: dict[str, torch.Tensor], calls: dict[str, int], pick: _Pick):
    parsed = pick.parsed

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        index = calls.get(pick.address, 0)
        calls[pick.address] = index + 1
        if parsed.call is not None and parsed.call >= 0 and index != parsed.call:
            return  # not the call asked for
        if parsed.want_input:  # the first positional input, or the first keyword input
            value = args[0] if args else next(iter(kwargs.values()), None)
        else:
            value = output
        value = _select(value, pick)
        if pick.kept is not None:
            pick.kept.append(value)
            if len(pick.kept) == pick.kept.maxlen:
                signals[pick.address] = pick.kept[0]
        else:
            signals[pick.address] = value

    return hook


def _make_reset_hook(calls: dict[str, int], picks: list[_Pick]):
    """A pre-hook on the root: each forward of the model counts calls afresh."""

    def reset(module: nn.Module, args: tuple) -> None:
        calls.clear()
        for pick in picks:
            if pick.kept is not None:
                pick.kept.clear()

    return reset


def _select(value: object, pick: _Pick) -> object:
    """Apply the address's ``[<key>]`` selectors; then a tuple or list gives its first
    element and a dict without a key is a :class:`TapError` listing its keys."""
    what = "input" if pick.parsed.want_input else "output"
    for key in pick.parsed.keys:
        if isinstance(value, dict):
            if key in value:
                value = value[key]
            elif key.lstrip("-").isdigit() and int(key) in value:
                value = value[int(key)]
            else:
                raise TapError(
                    f"Tap {pick.address!r} of the {pick.owner}: the {what} of module {pick.parsed.path!r} "
                    f"({pick.module_type}) is a dict without the key {key!r}; its keys: "
                    f"{', '.join(repr(str(k)) for k in value)}."
                )
        elif isinstance(value, (tuple, list)):
            if not key.lstrip("-").isdigit() or not -len(value) <= int(key) < len(value):
                raise TapError(
                    f"Tap {pick.address!r} of the {pick.owner}: the {what} of module {pick.parsed.path!r} "
                    f"({pick.module_type}) is a {type(value).__name__} of {len(value)} items; pick one "
                    f"with an index from 0 to {len(value) - 1}, e.g. '{pick.parsed.path}[0]'."
                )
            value = value[int(key)]
        else:
            raise TapError(
                f"Tap {pick.address!r} of the {pick.owner}: the {what} of module {pick.parsed.path!r} "
                f"({pick.module_type}) is a {type(value).__name__}, which has no item [{key}]; "
                "'[<key>]' picks from a dict, a tuple or a list."
            )
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if isinstance(value, dict):
        keys = ", ".join(repr(str(k)) for k in value)
        example = next((str(k) for k in value), "key")
        raise TapError(
            f"Tap {pick.address!r} of the {pick.owner}: the {what} of module {pick.parsed.path!r} "
            f"({pick.module_type}) is a dict with the keys {keys}; pick one with "
            f"'{pick.address}[{example}]'."
        )
    return value


def _check_calls(signals: dict[str, torch.Tensor], calls: dict[str, int], picks: list[_Pick], owner: str) -> None:
    """After the forward: a ``#<call>`` that never ran is an error; several calls without a
    ``#<call>`` are a warning (once per module and count)."""
    for pick in picks:
        n = calls.get(pick.address, 0)
        call = pick.parsed.call
        if call is not None and n and not -n <= call < n:
            raise TapError(
                f"Tap {pick.address!r} of the {owner} asks for call {call} of module {pick.parsed.path!r}, "
                f"which ran {n} time{'s' if n > 1 else ''} in this forward (calls are counted from 0; "
                "#-1 is the last)."
            )
        if call is None and n > 1:
            key = (owner, pick.module_type, pick.parsed.path, n)
            if key not in _WARNED:
                _WARNED.add(key)
                warnings.warn(
                    f"Tap {pick.address!r} of the {owner}: module {pick.parsed.path!r} ran {n} times in one "
                    f"forward, and the tap captures its last call. To pick a call write "
                    f"'{pick.parsed.path}#<i>' with i from 0 to {n - 1} (or #-1 for the last), e.g. "
                    f"'{format_address(pick.parsed, call=0)}'.",
                    UserWarning,
                    stacklevel=4,
                )


def _stop_hook(module: nn.Module, args: tuple, output: object) -> None:
    raise StopForward
