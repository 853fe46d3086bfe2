"""Training-only modules: parts of a student that exist to be distilled into and are removed
when the student is exported.

Several methods attach modules to the student that only produce training signals: auxiliary
heads, probes that reproduce a privileged teacher's latents, projectors feeding a loss. At
inference they must cost nothing. V-Reflection (arXiv:2604.03307, "During inference, both
modules remain entirely inactive") is one such method: a probe cross-attends the visual map
from the model's hidden states only to be distilled toward box-guided latents.

The mechanism here:

* :func:`mark_training_only` flags a module (an attribute on the module object, so it
  survives ``deepcopy``); a model's ``forward`` runs it only when ``self.training`` and the
  module is present (``if self.training and self.probe is not None``);
* :func:`training_only_paths` lists the flagged modules of a model (outermost only);
* :func:`export_state_dict` / :func:`export_student` give the weights without them (what a
  deployment loads into the same architecture built without the modules);
* :func:`strip_training_only` returns a copy with those attributes set to ``None``;
* :func:`inference_cost` counts the parameters and the forward FLOPs
  (``torch.utils.flop_counter``) of a model in eval mode on an example input.

Example:
    >>> from torch import nn
    >>> net = nn.Module(); net.body = nn.Linear(4, 4); net.aux = mark_training_only(nn.Linear(4, 2))
    >>> training_only_paths(net), sorted(export_state_dict(net))
    (['aux'], ['body.bias', 'body.weight'])
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = [
    "export_state_dict",
    "export_student",
    "inference_cost",
    "is_training_only",
    "mark_training_only",
    "strip_training_only",
    "training_only_paths",
]

_FLAG = "_distillery_training_only"


def mark_training_only(module: nn.Module) -> nn.Module:
    """Flag ``module`` as training-only (removed at export); returns it."""
    if not isinstance(module, nn.Module):
        raise ConfigError(f"mark_training_only expects an nn.Module, got {type(module).__name__}.")
    setattr(module, _FLAG, True)
    return module


def is_training_only(module: nn.Module) -> bool:
    return bool(getattr(module, _FLAG, False))


def training_only_paths(model: nn.Module) -> list[str]:
    """Paths (``named_modules`` names) of the flagged modules, outermost only, in order."""
    paths: list[str] = []
    for name, module in model.named_modules():
        if name and is_training_only(module) and not any(name.startswith(p + ".") for p in paths):
            paths.append(name)
    return paths


def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the parameters and buffers of training-only modules."""
    drop = training_only_paths(model)
    return {k: v for k, v in model.state_dict().items() if not any(k == p or k.startswith(p + ".") for p in drop)}


def export_student(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Write :func:`export_state_dict` to ``path`` (safetensors); returns what was removed:
    ``{"removed_modules": [...], "removed_parameters": n, "kept_parameters": m}``."""
    from safetensors.torch import save_file

    state = export_state_dict(model)
    removed = training_only_paths(model)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))
    total = sum(p.numel() for p in model.parameters())
    kept = sum(v.numel() for k, v in state.items() if k in dict(model.named_parameters()))
    return {"removed_modules": removed, "removed_parameters": total - kept, "kept_parameters": kept}


def strip_training_only(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose training-only modules are replaced by ``None``
    (the model's ``forward`` must skip a ``None`` module)."""
    stripped = copy.deepcopy(model)
    for path in training_only_paths(stripped):
        parent_path, _, name = path.rpartition(".")
        parent = stripped.get_submodule(parent_path) if parent_path else stripped
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            raise ConfigError(f"strip_training_only: {path!r} sits in a {type(parent).__name__}; flag a named attribute instead.")
        delattr(parent, name)
        setattr(parent, name, None)
    return stripped


@torch.no_grad()
def inference_cost(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Parameters and forward FLOPs (counted by ``torch.utils.flop_counter.FlopCounterMode``:
    matrix products and convolutions, 2 per multiply-add) of ``model`` in eval mode on
    ``example`` ``[B, ...]``. Returns ``{"parameters", "flops", "batch"}``."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was)
    return {"parameters": sum(p.numel() for p in model.parameters()), "flops": int(counter.get_total_flops()),
            "batch": int(example.shape[0])}
