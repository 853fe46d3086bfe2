"""Taps: capture intermediate signals of any ``nn.Module`` by dotted module path.

A tap address is a path in ``model.named_modules()`` (``layers.1.fc``, ``blocks.0.attn``,
``stages.2.0``), optionally followed by ``:input`` to capture the module's first positional
input instead of its output. Signals are captured with forward hooks registered for the
duration of one forward pass and removed afterwards, so no user model is edited
(the approach of torchdistill's ``forward_hook``).

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
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from ..errors import TapError

INPUT_SUFFIX = ":input"


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (truncated teachers)."""


def split_address(address: str) -> tuple[str, bool]:
    """``"layer.1:input"`` -> ``("layer.1", True)``; ``"layer.1"`` -> ``("layer.1", False)``."""
    if address.endswith(INPUT_SUFFIX):
        return address[: -len(INPUT_SUFFIX)], True
    return address, False


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
        f"optionally followed by ':input'."
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
        addresses: tap addresses (module paths, optionally with ``:input``).
        stop_after: if given, a module path after whose forward the pass is cut short by
            raising :class:`StopForward`; the caller catches it (see :func:`run_tapped`).
        owner: a word for error messages ("student", "teacher").

    Yields a dict that fills up with ``address -> tensor`` as the forward runs. If a module
    runs several times in one pass the last call wins. All hooks are removed on exit, also
    when the forward raises.
    """
    signals: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for address in dict.fromkeys(addresses):
            path, want_input = split_address(address)
            module = resolve(model, path, owner=owner)
            handles.append(module.register_forward_hook(_make_hook(signals, address, want_input), with_kwargs=True))
        if stop_after is not None:
            module = resolve(model, stop_after, owner=owner)
            handles.append(module.register_forward_hook(_stop_hook))
        yield signals
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


def _make_hook(signals: dict[str, torch.Tensor], address: str, want_input: bool):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if want_input:  # the first positional input, or the first keyword input
            value = args[0] if args else next(iter(kwargs.values()), None)
        else:
            value = output
        if isinstance(value, (tuple, list)):
            value = value[0]
        signals[address] = value

    return hook


def _stop_hook(module: nn.Module, args: tuple, output: object) -> None:
    raise StopForward
