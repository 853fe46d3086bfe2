"""Models: the registered reference models and :func:`build_model`.

``build_model(spec, input_shape, num_classes, **params)`` builds a registered model by
name (``"mlp"``, ``"cnn1d"``, ``"cnn2d"``, ``"resnet"``, ``"vit"``) or any ``nn.Module``
class or factory function given as an import path ``"package.module:Name"``.

An import path loads user code (importing the module runs it), as ``trust_remote_code`` does
in transformers: use only paths to code you trust. The named attribute itself is called only
when it is an ``nn.Module`` subclass, a registered model factory, or a function whose return
annotation is ``nn.Module`` or a subclass; anything else (``os:system``, ``torch:zeros``) is
refused with a :class:`~distillery.errors.ConfigError` before it is called.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
import typing
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
    if not _builds_a_module(obj):
        raise ConfigError(
            f"Model {spec!r} names {_describe(obj)}, which is not a torch.nn.Module subclass; it is "
            "not called. Accepted: an nn.Module subclass, a registered model factory, or a function "
            "annotated as returning nn.Module or a subclass (e.g. 'def net(...) -> nn.Module'). "
            "Note that an import path loads user code: use only modules you trust."
        )
    return obj


def _describe(obj: Any) -> str:
    """What ``obj`` is, in words, for the refusal message."""
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    if inspect.isclass(obj):
        return f"the class {module}.{name}"
    if inspect.isbuiltin(obj):
        return f"the builtin function {getattr(obj, '__name__', name)}"
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return f"the function {module}.{name} (return annotation: {_return_annotation_text(obj)})"
    return f"a {type(obj).__name__} object"


def _return_annotation_text(fn: Any) -> str:
    ann = inspect.signature(fn).return_annotation if _has_signature(fn) else inspect.Signature.empty
    if ann is inspect.Signature.empty:
        return "none"
    return ann if isinstance(ann, str) else getattr(ann, "__qualname__", repr(ann))


def _has_signature(fn: Any) -> bool:
    try:
        inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return True


def _builds_a_module(obj: Any) -> bool:
    """Whether ``obj`` may be called to build a model: an ``nn.Module`` subclass, a factory in
    the model registry, or a plain function annotated as returning ``nn.Module`` (or a subclass,
    or an optional/union of them). Nothing is called to decide."""
    if inspect.isclass(obj):
        return issubclass(obj, nn.Module)
    if any(obj is MODELS.get(name) for name in MODELS.names()):
        return True
    if not (inspect.isfunction(obj) or inspect.ismethod(obj)):
        return False  # builtins, partials, callable instances: no annotation to trust
    return _is_module_type(_return_hint(obj))


def _return_hint(fn: Any) -> Any:
    """The return annotation of ``fn`` resolved to an object; string annotations (``from
    __future__ import annotations``) are resolved with :func:`typing.get_type_hints`, and when
    that fails (another annotation names something unimportable) by looking a dotted name up
    in the function's globals, attribute by attribute: nothing is evaluated."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - any failure falls back to the plain lookup below
        hints = {}
    if "return" in hints:
        return hints["return"]
    ann = getattr(fn, "__annotations__", {}).get("return")
    if not isinstance(ann, str):
        return ann
    parts = ann.strip().split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    scope = getattr(inspect.unwrap(fn), "__globals__", {})
    if parts[0] not in scope:
        return None
    value = scope[parts[0]]
    for part in parts[1:]:
        value = inspect.getattr_static(value, part, None)
        if value is None:
            return None
    return value


def _is_module_type(hint: Any) -> bool:
    if inspect.isclass(hint):
        return issubclass(hint, nn.Module)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        return bool(members) and all(_is_module_type(a) for a in members)
    return False


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
