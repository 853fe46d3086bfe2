"""VDOT: distribution matching distillation with an entropic optimal-transport term.

Y. Wang, H. Zhang, T. Xue, Y. Qiao, Y. Wang, C. Xu, X. Chen, 2025, "VDOT: Efficient Unified
Video Creation via Optimal Transport Distillation" (CVPR 2026), arXiv:2512.06802. "We model the
training process with the distribution matching distillation (DMD) paradigm. Instead of using
the Kullback-Leibler (KL) minimization, we additionally employ a novel computational optimal
transport (OT) technique to optimize the discrepancy between the real and fake score
distributions ... mitigating potential zero-forcing or gradient collapse issues that may arise
during KL-based distillation within the few-step generation scenario ... Further, we integrate
a discriminator to enable the model to perceive real video data."

How distillery expresses it (the mechanics are in :mod:`distillery.generative.objectives.vdot`,
where ``distillery run`` finds every generative method; this module holds the recipe and its
config fragments):

==================================  ==========================================================
paper                               distillery
==================================  ==========================================================
few-step generator, backward sim.   :class:`~distillery.generative.objectives.dmd.DMD` (DMD2)
real score (frozen teacher)         ``teacher`` (here the analytic mixture score)
fake score, trained on G's samples  DMD's ``fake_score`` player (``fake_updates`` per step)
KL gradient ``fake_x0 - real_x0``   :func:`~distillery.generative.objectives.dmd.dmd_generator_grad`
OT between real/fake score sets     :func:`~distillery.generative.objectives.vdot.ot_generator_grad`
                                    on POT's entropic OT (:func:`~distillery.generative.objectives.ot.sinkhorn_loss`)
generator loss 0.2 KL + 0.8 OT      :class:`~distillery.generative.objectives.vdot.VDOT` (``kl_weight``, ``ot_weight``)
discriminator on real data          DMD2's GAN head on the fake network (``gan_weight``)
==================================  ==========================================================

:func:`vdot_config` gives the ``method`` section of VDOT, :func:`kl_dmd_config` the KL-only DMD
it is compared with, :func:`mixture2d_sections` the 2-D mixture with the analytic teacher.
Config: ``configs/vdot_mixture2d.yaml``; miniature: ``distillery reproduce vdot``.
"""

from __future__ import annotations

from typing import Any

from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("vdot", "Wang et al. 2025, VDOT, arXiv:2512.06802", "vdot_mixture2d.yaml",
           "DMD whose generator also descends an entropic OT distance between real- and fake-score x0 predictions "
           "(+ DMD2's GAN head on real data)")
)


def vdot_config(*, generator_steps: int = 1, kl_weight: float = 0.2, ot_weight: float = 0.8, ot_step: float = 0.1,
                ot_reg: float = 0.05, ot_relative: bool = True, ot_debiased: bool = False, ot_normalize: bool = True,
                ot_iters: int = 50, ot_pair: str = "scores", fake_updates: int = 5, gan_weight: float = 0.0,
                **dmd: Any) -> dict[str, Any]:
    """The ``method`` section of VDOT (:class:`~distillery.generative.objectives.vdot.VDOT`).

    Defaults follow the authors' code: KL and OT weighted 0.2 / 0.8, unit per-sample OT
    directions of length 0.1, the plain (not debiased) entropic OT with a fixed iteration
    count; the blur is relative to the mean cost (``ot_reg``). ``gan_weight > 0`` adds the
    discriminator on real data (DMD2's GAN head). Other DMD params (``t_range``,
    ``fake_init``, ``r1_weight``, ...) pass through ``dmd``."""
    params = {"generator_steps": generator_steps, "fake_updates": fake_updates, "kl_weight": kl_weight,
              "ot_weight": ot_weight, "ot_step": ot_step, "ot_reg": ot_reg, "ot_relative": ot_relative,
              "ot_debiased": ot_debiased, "ot_normalize": ot_normalize, "ot_iters": ot_iters, "ot_pair": ot_pair,
              "gan_weight": gan_weight, **dmd}
    return {"method": {"kind": "vdot", "params": params}}


def kl_dmd_config(*, generator_steps: int = 1, fake_updates: int = 5, gan_weight: float = 0.0, **dmd: Any) -> dict[str, Any]:
    """The ``method`` section of the KL-only baseline: DMD2 (``dmd``) with the same players,
    schedule and fake-score updates as :func:`vdot_config` and no OT term."""
    return {"method": {"kind": "dmd", "params": {"generator_steps": generator_steps, "fake_updates": fake_updates,
                                                 "gan_weight": gan_weight, **dmd}}}


def mixture2d_sections(*, layout: str = "grid", modes: int = 25, std: float = 0.05, batch_size: int = 256,
                       hidden: tuple[int, ...] | list[int] = (128, 128, 128), n_train: int = 10000) -> dict[str, Any]:
    """``data``, ``process``, ``teacher`` and ``student`` of a 2-D Gaussian mixture distilled
    from its exact (analytic) score: a flow-matching process, an MLP generator predicting
    ``x0``."""
    return {
        "engine": "generative",
        "data": {"dataset": "mixture2d", "params": {"layout": layout, "modes": modes, "std": std, "n_train": n_train},
                 "batch_size": batch_size},
        "process": {"kind": "flow", "shift": 1.0},
        "teacher": {"kind": "analytic_mixture", "prediction": "eps"},
        "student": {"denoiser": {"name": "mlp2d", "params": {"hidden": list(hidden)}}, "prediction": "x0"},
    }


def __getattr__(name: str) -> Any:  # the method class, imported when asked for
    if name in ("VDOT", "ot_generator_grad"):
        from ..generative.objectives import vdot

        return getattr(vdot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
