"""Model surgery: remove blocks from a stack, swap modules, copy weights into the result.

Architecture-level distillation starts from a trained network and changes its structure:
PPCL (Ma et al. 2025, arXiv:2511.16156) removes contiguous intervals of blocks and recovers
the rest by distillation; LinFusion (Liu et al. 2024, arXiv:2409.02097) replaces every
softmax attention by a linear one initialised from it. The edits are small and the same
for every model, so they live here, addressed by module path (as taps are):

* :func:`remove_blocks` returns a copy of a model whose block stack at ``container`` (an
  ``nn.ModuleList`` or ``nn.Sequential``, e.g. ``"blocks"``) lacks the given indices;
* :func:`block_index_map` maps old block indices to new ones (``None`` for removed blocks);
* :func:`copy_kept_weights` loads a full model's weights into its pruned copy;
* :func:`swap_modules` replaces, in place, every module matching a type or a predicate by
  ``factory(module)`` and returns the paths it replaced;
* :func:`intervals` groups removed indices into contiguous ``(start, stop)`` runs.

Example::

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    >>> small = remove_blocks(net, "", [1])
    >>> [type(m).__name__ for m in small]
    ['Linear', 'Linear']
    >>> intervals([2, 3, 4, 7, 9, 10])
    [(2, 5), (7, 8), (9, 11)]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .. import taps
from ..errors import ConfigError

__all__ = [
    "RegisterTokens",
    "add_registers",
    "freeze_except",
    "block_index_map",
    "copy_kept_weights",
    "count_parameters",
    "get_module",
    "intervals",
    "remove_blocks",
    "set_module",
    "swap_modules",
]


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` (``""`` is the model itself); a bad path lists valid ones."""
    if path == "":
        return model
    return taps.resolve(model, path, owner="model")


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at ``path`` (not the root) by ``new``, in place."""
    if not path:
        raise ConfigError("set_module: the root module cannot be replaced in place; use the new module itself.")
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path)
    get_module(model, path)  # a clear error if the path does not exist
    if isinstance(parent, (nn.ModuleList, nn.Sequential)) and name.isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def _stack(model: nn.Module, container: str) -> nn.Module:
    stack = get_module(model, container)
    if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
        raise ConfigError(
            f"The module at {container!r} is a {type(stack).__name__}; block surgery needs an "
            "nn.ModuleList or nn.Sequential of blocks (e.g. 'blocks' of a vit or residual_mlp)."
        )
    return stack


def _check_indices(indices: Iterable[int], n: int, what: str) -> list[int]:
    out = sorted({int(i) for i in indices})
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ConfigError(f"{what}: block indices {bad} are out of range; the stack has {n} blocks (0..{n - 1}).")
    return out


def block_index_map(num_blocks: int, removed: Iterable[int]) -> list[int | None]:
    """``map[old] = new`` index of each block after removing ``removed`` (``None`` if removed).

    ``num_blocks`` is the original depth ``L``; the result has length ``L``.
    """
    gone = set(_check_indices(removed, num_blocks, "block_index_map"))
    out: list[int | None] = []
    new = 0
    for old in range(num_blocks):
        if old in gone:
            out.append(None)
        else:
            out.append(new)
            new += 1
    return out


def intervals(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Contiguous runs of sorted indices as half-open ``(start, stop)`` pairs."""
    runs: list[tuple[int, int]] = []
    for i in sorted({int(i) for i in indices}):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def remove_blocks(model: nn.Module, container: str, remove: Iterable[int], *, copy_model: bool = True) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself with ``copy_model=False``) whose block stack at
    ``container`` no longer has the blocks ``remove`` (indices into the original stack).

    The remaining blocks keep their weights and order; a model whose ``forward`` iterates over
    the stack (as every distillery reference model does) then runs the shallower network.
    Removing every block is allowed (the stack becomes empty: an identity).
    """
    out = copy.deepcopy(model) if copy_model else model
    stack = _stack(out, container)
    gone = set(_check_indices(remove, len(stack), f"remove_blocks({container!r})"))
    kept = [m for i, m in enumerate(stack) if i not in gone]
    new = type(stack)(*kept) if isinstance(stack, nn.Sequential) else nn.ModuleList(kept)
    if container:
        set_module(out, container, new)
        return out
    return new


def copy_kept_weights(pruned: nn.Module, full: nn.Module, container: str, removed: Sequence[int]) -> nn.Module:
    """Load ``full``'s weights into ``pruned`` (``full`` with blocks ``removed`` taken out of
    the stack at ``container``); returns ``pruned``.

    Keys of the stack are renumbered with :func:`block_index_map`; keys of removed blocks are
    dropped; every other key must match exactly (a mismatch raises ConfigError naming keys).
    """
    n = len(_stack(full, container))
    index = block_index_map(n, removed)
    prefix = f"{container}." if container else ""
    state = {}
    for key, value in full.state_dict().items():
        if key.startswith(prefix):
            head, _, rest = key[len(prefix):].partition(".")
            if head.isdigit():
                new = index[int(head)]
                if new is None:
                    continue
                key = f"{prefix}{new}.{rest}"
        state[key] = value
    missing, unexpected = pruned.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"copy_kept_weights: the pruned model does not match the full one with blocks {sorted(removed)} "
            f"removed from {container!r}: missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}."
        )
    return pruned


def swap_modules(
    model: nn.Module,
    match: type | tuple[type, ...] | Callable[[str, nn.Module], bool],
    factory: Callable[[nn.Module], nn.Module],
) -> list[str]:
    """Replace, in place, every module of ``model`` that ``match`` selects by ``factory(module)``.

    ``match`` is a class (or tuple of classes: ``isinstance``) or a predicate
    ``match(path, module) -> bool``. Matching modules are replaced outermost-first and not
    searched inside. Returns the replaced paths (empty if none matched: nothing changes).
    The root module itself is never replaced.
    """
    if isinstance(match, (type, tuple)):
        classes = match

        def match(path: str, module: nn.Module) -> bool:  # noqa: F811
            return isinstance(module, classes)

    replaced: list[str] = []
    for path, module in list(model.named_modules()):
        if not path or any(path.startswith(done + ".") for done in replaced):
            continue
        if match(path, module):
            new = factory(module)
            if not isinstance(new, nn.Module):
                raise ConfigError(f"swap_modules: the factory returned a {type(new).__name__} for {path!r}, not an nn.Module.")
            ref = next((p for p in module.parameters()), None)
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype)
            set_module(model, path, new)
            replaced.append(path)
    return replaced


@torch.no_grad()
def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


# -- register tokens and partial unfreezing (PH-Reg, Chen et al. 2025, arXiv:2505.21501) ------------
class RegisterTokens(nn.Module):
    """``num`` learnable tokens ``[1, num, dim]`` appended to a transformer's token sequence.

    Registers (Darcet, Oquab, Mairal & Bojanowski 2024, "Vision Transformers Need Registers",
    arXiv:2309.16588) take part in self-attention but are dropped from the output. Installed
    by :func:`add_registers`: :meth:`insert` is a forward pre-hook that appends them to the
    first block's input ``[B, T, dim]``, :meth:`strip` a forward hook that removes them from
    the output of a later module, so every module in between sees ``T + num`` tokens and the
    model's output keeps its layout.
    """

    def __init__(self, num: int, dim: int, std: float = 0.02) -> None:
        super().__init__()
        self.num = num
        self.tokens = nn.Parameter(torch.zeros(1, num, dim))
        nn.init.trunc_normal_(self.tokens, std=std)

    def insert(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (torch.cat([x, self.tokens.expand(x.shape[0], -1, -1).to(x.dtype)], dim=1), *args[1:])

    def strip(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output[:, : output.shape[1] - self.num]


def add_registers(
    model: nn.Module, num_registers: int, *, into: str = "blocks.0", strip_at: str = "norm", dim: int | None = None,
    name: str = "registers",
) -> RegisterTokens:
    """Give a trained transformer ``num_registers`` fresh register tokens, in place (PH-Reg's student).

    The tokens are appended to the input of the module at ``into`` (the first block: after the
    class token and position embeddings) and removed from the output of the module at
    ``strip_at`` (the final norm), so the model's outputs and tap layouts do not change
    (``[B, 1 + N, dim]`` at ``norm`` for a distillery ``vit``). They become the submodule
    ``name`` (parameter ``<name>.tokens``); ``dim`` defaults to the width of the first
    ``LayerNorm`` inside ``into``. Registers are not position-embedded (as in Darcet et al.).

    Example:
        >>> import torch
        >>> from distillery.models import vit
        >>> net = vit((1, 8, 8), 3, patch_size=4, dim=16, depth=2, heads=2)
        >>> regs = add_registers(net, 2)
        >>> net.tokens(torch.zeros(5, 1, 8, 8)).shape   # registers stripped at "norm"
        torch.Size([5, 5, 16])
    """
    if isinstance(num_registers, bool) or not isinstance(num_registers, int) or num_registers < 1:
        raise ConfigError(f"add_registers: num_registers must be a positive int, got {num_registers!r}.")
    if hasattr(model, name):
        raise ConfigError(f"add_registers: the model already has an attribute {name!r}; choose another name.")
    first, last = get_module(model, into), get_module(model, strip_at)
    if dim is None:
        norm = next((m for m in first.modules() if isinstance(m, nn.LayerNorm)), None)
        if norm is None:
            raise ConfigError(f"add_registers: no LayerNorm inside {into!r} to read the token width from; pass dim.")
        dim = int(norm.normalized_shape[-1])
    ref = next(model.parameters(), None)
    registers = RegisterTokens(num_registers, dim)
    if ref is not None:
        registers = registers.to(device=ref.device, dtype=ref.dtype)
    setattr(model, name, registers)
    first.register_forward_pre_hook(registers.insert)
    last.register_forward_hook(registers.strip)
    return registers


def freeze_except(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Train only the parameters whose names match one of ``patterns`` (``fnmatch``); returns them.

    E.g. ``["registers.*", "pos_embed", "blocks.3.*"]``: every other parameter gets
    ``requires_grad=False`` (partial unfreezing, as PH-Reg unlocks "a small subset" of the
    student's weights). A pattern that matches no parameter raises ConfigError listing names.
    """
    import fnmatch

    names = [n for n, _ in model.named_parameters()]
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unused:
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise ConfigError(f"freeze_except: patterns {unused} match no parameter; parameters include: {shown}.")
    trainable = []
    for n, p in model.named_parameters():
        keep = any(fnmatch.fnmatchcase(n, pat) for pat in patterns)
        p.requires_grad_(keep)
        if keep:
            trainable.append(n)
    return trainable
