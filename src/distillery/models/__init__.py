"""Models: the registered reference models and :func:`build_model`.

``build_model(spec, input_shape, num_classes, **params)`` builds a registered model by
name (``"mlp"``, ``"cnn1d"``, ``"cnn2d"``, ``"resnet"``, ``"vit"``) or any ``nn.Module``
class or factory function given as an import path ``"package.module:Name"``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..config.signatures import accepts, check_params
from ..errors import ConfigError
from ..registry import MODELS
from ..registry import import_submodules as _import_submodules
from .dual import DualEncoder, dual_encoder
from .mae import MaskedAutoencoder, mae_vit
from .miniature.nas import DartsSupernet, darts
from .reference import MLP, ConvNet, ResNet, ViT, cnn1d, cnn2d, mlp, resnet, vit

_import_submodules(__name__, __path__)  # every module registers its models

__all__ = ["build_model", "resolve_model", "mlp", "cnn1d", "cnn2d", "resnet", "vit", "dual_encoder", "MLP", "ConvNet", "ResNet", "ViT", "DualEncoder", "reference", "dual", "mae", "mae_vit", "MaskedAutoencoder", "nas", "darts", "DartsSupernet"]


def _import_object(spec: str) -> Any:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(f"Model import path {spec!r} must have the form 'package.module:Name'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"Cannot import module {module_name!r} for model {spec!r}: {type(e).__name__}: {e}. "
            "Check the module path and that its package is installed or on PYTHONPATH."
        ) from e
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))
            close = difflib.get_close_matches(part, public, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            shown = ", ".join(public[:20]) + (" ..." if len(public) > 20 else "")
            raise ConfigError(
                f"Module {module_name!r} has no attribute {attr_path!r} (model {spec!r}).{hint} "
                f"Its public names: {shown or 'none'}."
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"Model {spec!r} is a {type(obj).__name__}, not a class or factory function.")
    return obj


def resolve_model(spec: str) -> Any:
    """The class or factory a model spec names: a registered name or ``package.module:Name``."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"A model spec is a registered name or 'package.module:Name', got {spec!r}.")
    if ":" in spec:
        return _import_object(spec)
    if spec not in MODELS and "." in spec:
        module, _, name = spec.rpartition(".")
        raise ConfigError(
            f"Unknown model {spec!r}. To import a class, separate module and name with a colon: "
            f"'{module}:{name}'. Registered models: {', '.join(MODELS.names())}."
        )
    return MODELS.get(spec)


def build_model(spec: str, input_shape: Sequence[int], num_classes: int, **params: Any) -> nn.Module:
    """Build the model ``spec`` (registered name or ``package.module:Name``) with ``params``.

    ``input_shape`` and ``num_classes`` are passed only to callables whose signature accepts
    them (by name or through ``**kwargs``); a value given in ``params`` takes precedence.
    Unknown names, unimportable modules, missing attributes and bad keyword arguments raise
    :class:`~distillery.errors.ConfigError`.
    """
    fn = resolve_model(spec)
    supplied: dict[str, Any] = {}
    if "input_shape" not in params and accepts(fn, "input_shape"):
        supplied["input_shape"] = tuple(int(s) for s in input_shape)
    if "num_classes" not in params and accepts(fn, "num_classes"):
        supplied["num_classes"] = int(num_classes)
    check_params(fn, params, f"model {spec!r}", supplied=supplied)
    model = fn(**supplied, **params)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"Model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model
