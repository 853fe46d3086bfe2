"""GDD-I's partial freezing and the ``gdd`` method (Zheng & Yang 2024, "Diffusion Models Are
Innate One-Step Generators", arXiv:2405.20750).

* :func:`conv_parameter_names`, :func:`freeze_convolutions`: freeze every convolution of a
  network except those matching ``fnmatch`` patterns (partial unfreezing: norms, embeddings,
  attention and the kept convolutions train), through
  :func:`distillery.models.surgery.freeze_except`;
* :class:`GDD` (method ``gdd``): :class:`~.gan.AdversarialDistillation` (a one-step generator
  initialised from the teacher, trained by the GAN loss alone) with ``freeze="convs"`` (GDD-I)
  or ``"none"`` (GDD).

The method lives in the engine (not only in :mod:`distillery.recipes.gdd`, which holds its
paper notes and config fragments) so that a config naming ``method.kind: gdd`` finds it:
:func:`distillery.generative.config.load_methods` imports this package's modules.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from torch import nn

from ...errors import ConfigError
from ...models.surgery import freeze_except
from ..method import METHODS
from .gan import AdversarialDistillation

#: the module types whose parameters ``freeze="convs"`` freezes
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                           nn.ConvTranspose3d)
FREEZE_MODES = ("none", "convs")
DEFAULT_KEEP_CONVS = ("stem.*", "out.*")


def conv_parameter_names(net: nn.Module, keep: Sequence[str] = ()) -> list[str]:
    """Names of the parameters (as ``net.named_parameters()`` spells them) that belong to a
    convolution module (:data:`CONV_TYPES`) and match none of the ``fnmatch`` patterns ``keep``."""
    out = []
    for mod_name, module in net.named_modules():
        if isinstance(module, CONV_TYPES):
            for p_name, _ in module.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if not any(fnmatch.fnmatchcase(full, pat) for pat in keep):
                    out.append(full)
    return out


def freeze_convolutions(net: nn.Module, keep: Sequence[str] = DEFAULT_KEEP_CONVS) -> dict[str, Any]:
    """GDD-I's partial unfreezing, in place: every convolution parameter of ``net`` not matching
    ``keep`` gets ``requires_grad=False``; everything else stays trainable (through
    :func:`distillery.models.surgery.freeze_except` with the complement). A ``keep`` pattern
    that matches no convolution parameter is refused (a typo would silently freeze it).

    Returns ``{"frozen": [names], "trainable": [names], "frozen_fraction": float}``, the
    fraction counted in parameters (elements), not tensors."""
    keep = list(keep)
    convs_all = conv_parameter_names(net)
    unused = [pat for pat in keep if not any(fnmatch.fnmatchcase(n, pat) for n in convs_all)]
    if unused:
        shown = ", ".join(convs_all[:10]) + (" ..." if len(convs_all) > 10 else "")
        raise ConfigError(f"gdd: keep_convs patterns {unused} match no convolution parameter; they include: {shown}.")
    frozen = set(conv_parameter_names(net, keep))
    if not frozen:
        raise ConfigError(f"gdd: freeze='convs' found no convolution to freeze in {type(net).__name__} "
                          f"(keep_convs={keep}); use freeze='none'.")
    params = dict(net.named_parameters())
    trainable = [n for n in params if n not in frozen]
    if not trainable:
        raise ConfigError(f"gdd: freezing the convolutions of {type(net).__name__} leaves nothing to train.")
    freeze_except(net, trainable)
    total = sum(p.numel() for p in params.values())
    return {"frozen": sorted(frozen), "trainable": trainable,
            "frozen_fraction": sum(params[n].numel() for n in frozen) / max(total, 1)}


@METHODS.register("gdd")
class GDD(AdversarialDistillation):
    """GDD / GDD-I (Zheng & Yang 2024, arXiv:2405.20750): the ``gan`` method (a one-step
    generator from the teacher's weights, trained by the GAN loss alone) plus GDD-I's frozen
    convolutions.

    ``freeze``: ``"none"`` (GDD: every layer trains) or ``"convs"`` (GDD-I: the student
    network's convolutions are frozen except those matching ``keep_convs``, ``fnmatch``
    patterns over the network's parameter names, default ``("stem.*", "out.*")``).
    ``init_from_teacher`` must stay true with a teacher: the method is defined by its start.
    The other parameters are :class:`~distillery.generative.objectives.gan.AdversarialDistillation`'s:
    ``kind`` (``nonsaturating``/``hinge``), ``r1_gamma``, ``d_time_max`` (the discriminator sees
    samples noised to ``t <= d_time_max``), ``feature_dim``, ``hidden``, ``time_dim``.
    Players, in order: ``discriminator``, ``student``; sampling in one step.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, *, freeze: str = "convs",
                 keep_convs: Sequence[str] = DEFAULT_KEEP_CONVS, kind: str = "nonsaturating", r1_gamma: float = 0.0,
                 d_time_max: float | None = None, feature_dim: int = 128, hidden: Sequence[int] = (256, 256),
                 time_dim: int = 64, init_from_teacher: bool = True) -> None:
        if freeze not in FREEZE_MODES:
            raise ConfigError(f"gdd: freeze must be one of {', '.join(FREEZE_MODES)}, got {freeze!r}.")
        if isinstance(keep_convs, str) or not all(isinstance(k, str) for k in keep_convs):
            raise ConfigError(f"gdd: keep_convs must be a list of fnmatch patterns (strings), got {keep_convs!r}.")
        if teacher is not None and not init_from_teacher:
            raise ConfigError("gdd: init_from_teacher must be true: GDD's generator starts from the teacher's weights "
                              "(for a GAN from scratch use method 'gan').")
        super().__init__(student, teacher, kind=kind, r1_gamma=r1_gamma, d_time_max=d_time_max, feature_dim=feature_dim,
                         hidden=tuple(hidden), time_dim=time_dim, init_from_teacher=init_from_teacher)
        self.freeze_mode, self.keep_convs = freeze, tuple(keep_convs)
        net = getattr(student, "net", student)
        self.freezing: dict[str, Any] = {"frozen": [], "trainable": [n for n, _ in net.named_parameters()],
                                         "frozen_fraction": 0.0}
        if freeze == "convs":
            self.freezing = freeze_convolutions(net, self.keep_convs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": "gdd", "freeze": self.freeze_mode, "keep_convs": list(self.keep_convs),
                "frozen_fraction": self.freezing["frozen_fraction"], "frozen_tensors": len(self.freezing["frozen"])}


__all__ = ["CONV_TYPES", "DEFAULT_KEEP_CONVS", "FREEZE_MODES", "GDD", "conv_parameter_names", "freeze_convolutions"]
