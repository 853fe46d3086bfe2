"""GDD and GDD-I: GAN distillation at the distribution level, with most convolutions frozen.

B. Zheng, T. Yang, 2024, "Diffusion Models Are Innate One-Step Generators", arXiv:2405.20750
(code: github.com/Zyriix/GDD). "Instance-based distillation methods ... distill a one-step
generator from a DM by having a simpler student model mimic a more complex teacher model. Yet
... the teacher model, with more steps and more parameters, occupies different local minima
compared to the student model ... we introduce a novel distributional distillation method,
which uses an exclusive distributional loss ... Freezing most of the convolutional layers in a
DM during distributional distillation enables this innate capability and leads to further
performance improvements."

Mechanism, as expressed here:

* the one-step generator ``G`` is the teacher diffusion model itself (its weights copied):
  ``G(z) = x0_hat(x_T = z, t_max)``, one network evaluation from prior noise;
* **GDD** trains it with a GAN loss only ("exclusive distributional loss": no regression on
  teacher samples, no score matching): the discriminator ``D`` tells real data from generator
  samples, ``L_D = E softplus(-D(x)) + E softplus(D(G(z))) + gamma / 2 E ||grad_x D(x)||^2``
  and ``L_G = E softplus(-D(G(z)))`` (non-saturating; the paper's code also offers hinge);
  this is the engine's ``gan`` method, :class:`~distillery.generative.objectives.gan.AdversarialDistillation`;
* **GDD-I** ("innate") additionally freezes most convolutional layers of ``G``: here every
  ``Conv`` module's weights except those matching ``keep_convs`` (default: the input stem and
  the output convolution, the layers outside the residual blocks), so only the normalisation
  layers, the time/class embeddings, the per-block embedding projections (and attention,
  where a network has it) and the kept convolutions train. The paper's code freezes
  parameters whose names contain a ``freeze_layer`` key inside its U-Net blocks; the choice of
  ``keep_convs`` for the small U-Net here is [inferred].

Differences from the paper, all for the miniature: the paper's discriminator is a projected
GAN head on a frozen pretrained feature network (EfficientNet/DINO) over augmented clean
images; here it is the engine's :class:`~distillery.generative.objectives.gan.TimeAwareDiscriminator`
(an MLP on the flattened image) on images noised to a random ``t <= d_time_max``
(instance noise, [inferred] as a stand-in for the augmentation).

:class:`~distillery.generative.objectives.gdd.GDD` (re-exported here) is the generative method
``gdd``; the instance-distillation baseline is the engine's ``reflow`` with ``distill=True`` (the one-step student regresses the
teacher's ODE sample from the same noise, :func:`instance_config`). Config:
``configs/gdd_digits.yaml``; reproduction: ``distillery reproduce gdd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..generative.objectives.gdd import (
    CONV_TYPES,
    DEFAULT_KEEP_CONVS,
    GDD,
    conv_parameter_names,
    freeze_convolutions,
)
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("gdd", "Zheng & Yang 2024, GDD, arXiv:2405.20750", "gdd_digits.yaml",
           "One-step generator initialised from the diffusion teacher, trained by a GAN loss alone, most convolutions frozen (GDD-I)")
)


# -- config fragments ----------------------------------------------------------------------------
def gdd_config(freeze: str = "convs", *, kind: str = "nonsaturating", r1_gamma: float = 0.0, d_time_max: float | None = None,
               hidden: Sequence[int] = (256, 256), feature_dim: int = 128,
               keep_convs: Sequence[str] = DEFAULT_KEEP_CONVS) -> dict[str, Any]:
    """The ``method`` section of GDD (``freeze="none"``) or GDD-I (``freeze="convs"``)."""
    params: dict[str, Any] = {"freeze": freeze, "kind": kind, "r1_gamma": float(r1_gamma), "hidden": list(hidden),
                              "feature_dim": int(feature_dim)}
    if d_time_max is not None:
        params["d_time_max"] = float(d_time_max)
    if freeze == "convs":
        params["keep_convs"] = list(keep_convs)
    return {"method": {"kind": "gdd", "params": params}}


def instance_config(pairs: int = 1024, pair_steps: int = 25, solver: str = "euler") -> dict[str, Any]:
    """The ``method`` section of the instance-distillation baseline: reflow with
    ``distill=True``, i.e. the one-step student regresses the teacher's ``pair_steps``-step ODE
    sample from the same noise (``pairs`` pairs made once from the run's seed), starting from
    the teacher's weights."""
    return {"method": {"kind": "reflow", "params": {"distill": True, "pairs": int(pairs), "pair_steps": int(pair_steps),
                                                    "solver": solver, "init_from_teacher": True}}}


def teacher_student(denoiser: dict[str, Any], prediction: str, run_dir: str) -> dict[str, Any]:
    """``teacher`` (a finished denoising run) and ``student`` sections of a one-step student
    with the teacher's architecture, initialised from its weights."""
    return {"teacher": {"kind": "run", "run": run_dir},
            "student": {"denoiser": dict(denoiser), "prediction": prediction, "init": "teacher"}}


__all__ = ["CONV_TYPES", "DEFAULT_KEEP_CONVS", "GDD", "conv_parameter_names", "freeze_convolutions", "gdd_config",
           "instance_config", "teacher_student"]
