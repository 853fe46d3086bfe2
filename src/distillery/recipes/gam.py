"""RT-DETRv4: deep feature injection from a frozen teacher, weighted by GAM.

Liao, Zhao, Shan, Yan, Liu, Lu, Ji, Chen 2025, "RT-DETRv4: Painlessly Furthering Real-Time
Object Detection with Vision Foundation Models", arXiv:2510.25257: "we introduce a Deep
Semantic Injector (DSI) module that facilitates the integration of high-level representations
from VFMs into the deep layers of the detector ... we devise a Gradient-guided Adaptive
Modulation (GAM) strategy, which dynamically adjusts the intensity of semantic transfer based
on gradient norm ratios. Without increasing deployment and inference overhead ...".

In distillery the Deep Semantic Injector is a feature term on a *deep* student layer: a
trainable projector (an adapter, dropped after training: no inference cost) maps the
student's deep feature map onto the frozen teacher's, and a cosine distance aligns them per
position (the released code: ``1 - cos`` per patch after a feature projector). GAM is the
balancer :class:`distillery.weighting.gam.GradientGuidedModulation`; it modulates the weight of that
term from the share of the gradient that lands on the injection layer.

* :func:`injection_objectives` / :func:`gam_config`: cross-entropy + the injected cosine
  term, and GAM's ``weighting`` section, as config fragments;
* :func:`injection_terms`: those terms, built;
* :func:`calibrate_rho`: a target share for GAM without looking at accuracy (see its
  docstring; the paper sets ``rho`` by hand, 11% for its detectors);
* :func:`gam_distiller`: the distiller with GAM.

Config: ``configs/gam_digits.yaml``. Claim check: ``distillery reproduce gam``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..engine.distiller import Distiller, Term
from ..errors import ConfigError
from ..teachers import Teacher
from ..weighting.gam import GradientGuidedModulation, gradient_share
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("gam", "Liao et al. 2025, RT-DETRv4, arXiv:2510.25257", "gam_digits.yaml",
           "Deep feature injection (projector + cosine) weighted by Gradient-guided Adaptive Modulation")
)


def injection_objectives(student_layer: str, teacher_layer: str, weight: float = 1.0, adapter: str = "conv1x1") -> list[dict[str, Any]]:
    """``ce`` and ``inject`` as ``objectives``: 1 - cos between the projected student map and
    the teacher's, per position (``[B, C, H, W]`` maps: cosine over channels, mean over
    positions; ``cosine``'s default ``dim=1``)."""
    return [
        {"kind": "ce"},
        {"kind": "cosine", "name": "inject", "weight": weight, "adapter": adapter,
         "inputs": {"student": f"student.{student_layer}", "teacher": f"teacher.{teacher_layer}"}},
    ]


def gam_config(student_layer: str, teacher_layer: str, *, rho: float, delta: float, every: int, initial: float = 1.0,
               params: str | None = None, adapter: str = "conv1x1") -> dict[str, Any]:
    """The method as config fragments: :func:`injection_objectives` (the injection weight
    starting at ``initial``) and the ``weighting.gam`` section that modulates it every
    ``every`` steps toward the gradient share ``rho`` +- ``delta`` on the student module
    ``params`` (default: ``student_layer``, the injection layer itself)."""
    gam = {"task": "ce", "term": "inject", "params": params or student_layer, "rho": rho, "delta": delta,
           "initial": initial, "every": every}
    return {"objectives": injection_objectives(student_layer, teacher_layer, initial, adapter), "weighting": {"gam": gam}}


def injection_terms(student_layer: str, teacher_layer: str, weight: float = 1.0, adapter: str = "conv1x1") -> list[Term]:
    """The terms of :func:`injection_objectives`: ``ce`` and ``inject``."""
    return terms_from(injection_objectives(student_layer, teacher_layer, weight, adapter))


def calibrate_rho(distiller: Distiller, batch: dict, term: str = "inject", task: str = "ce", params: str = "") -> dict[str, float]:
    """A GAM target from gradient statistics at initialisation (no accuracy involved).

    On one batch, the share of the gradient's L1 mass on the injection parameters (student
    parameters under ``params``) is measured for the task loss alone (``p0``) and for the
    distillation loss alone (``p1``); with weight ``lambda`` the share of the sum moves
    monotonically from ``p0`` (``lambda -> 0``) to ``p1`` (``lambda -> inf``). The midpoint
    ``rho = (p0 + p1) / 2`` is the share reached when both terms put equal gradient mass on
    the network; GAM then keeps that balance as training changes the two gradients. Returns
    ``{"p0", "p1", "rho"}`` and warns when ``p1 <= p0`` (then GAM's rule cannot steer). Call
    :meth:`Distiller.prepare` on ``batch`` first.
    """
    if not params:
        raise ConfigError("calibrate_rho: give the injection module's path prefix (e.g. 'blocks.2').")
    values = distiller.term_values(batch)
    everything = distiller.trainable_parameters()
    inside = [p for n, p in distiller.student.named_parameters() if n == params or n.startswith(params + ".")]
    if not inside:
        raise ConfigError(f"calibrate_rho: no student parameters under {params!r}.")
    shares = {}
    for name, key in ((task, "p0"), (term, "p1")):
        grads = torch.autograd.grad(values[name], everything, retain_graph=True, allow_unused=True)
        by_id = {id(p): g for p, g in zip(everything, grads)}
        shares[key] = gradient_share([by_id.get(id(p)) for p in inside], grads)
    shares["rho"] = 0.5 * (shares["p0"] + shares["p1"])
    if shares["p1"] <= shares["p0"]:
        warnings.warn(
            f"calibrate_rho: the injection loss puts a smaller share of its gradient on {params!r} ({shares['p1']:.3f}) "
            f"than the task loss ({shares['p0']:.3f}); raising lambda would lower the share, so GAM would steer the "
            "wrong way. Inject at a layer where the distillation gradient is more concentrated.",
            stacklevel=2,
        )
    return shares


def gam_distiller(
    student: nn.Module,
    teacher: Teacher,
    student_layer: str,
    teacher_layer: str,
    *,
    rho: float,
    delta: float,
    every: int,
    initial: float = 1.0,
    params: str | None = None,
) -> Distiller:
    """CE + injected cosine term, its weight modulated by GAM on the student module
    ``params`` (default: ``student_layer``, the injection layer itself): :func:`gam_config`."""
    cfg = gam_config(student_layer, teacher_layer, rho=rho, delta=delta, every=every, initial=initial, params=params)
    return Distiller(student, teacher, terms_from(cfg["objectives"]), balancer=GradientGuidedModulation(**cfg["weighting"]["gam"]))
