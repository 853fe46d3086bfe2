"""VDOT: distribution matching distillation with an optimal-transport term (Wang et al. 2025,
"VDOT: Efficient Unified Video Creation via Optimal Transport Distillation", arXiv:2512.06802).

VDOT trains a few-step generator by DMD (:mod:`.dmd`: the KL gradient ``fake_x0 - real_x0`` at
noised generator samples, a fake-score network trained on the generator's samples, DMD2's
backward simulation and GAN head) and *additionally* moves the generator along the gradient of
an entropic optimal-transport distance "between the real and fake score distributions"
(abstract). The OT distance compares *sets* and carries the geometry of the sample space, so
its gradient does not vanish or explode where the two densities barely overlap (KL's
zero-forcing / gradient collapse in the few-step regime, the paper's motivation).

Between which sets (read from the authors' training code, ``training/model/bi_dmd_gan.py`` of
github.com/hhhh1138/VDOT; the abstract does not say): the generator's samples ``x`` are noised
to a random ``t`` (``x_t = alpha x + sigma eps``, drawn afresh for the OT term); the frozen
teacher's and the fake-score network's ``x0`` predictions at those ``x_t`` form two sets,
``R = {real_x0(x_t^b)}`` and ``F = {fake_x0(x_t^b)}``; the OT direction is the gradient of the
entropic OT cost in the fake set::

    u_b = d/dF_b  S_eps(F, R),        u_b <- u_b / ||u_b||       (per-sample unit norm)

and the generator is moved by ``-ot_step * u_b`` through the same stop-grad surrogate as DMD's
(``0.5 ||x - sg(x - ot_step u)||^2``). DMD pairs each fake prediction with the real prediction
of the *same* ``x_t``; the OT term pairs them through the transport plan of the whole batch.
The generator's objective is ``kl_weight * L_DMD + ot_weight * L_OT`` (the code uses 0.2 / 0.8,
``ot_step`` 0.1) plus DMD2's GAN generator loss on real data.

Adaptations, marked [inferred] on docs/methods/vdot.md:

* the sets: in the video model each *frame*'s latent tokens (positions of the ``H x W`` grid,
  ``C`` channels each) form a set; a 2-D sample is a single point, so here the set is the
  batch (``B`` points of ``prod(sample_shape)`` values);
* the OT cost is POT's entropic OT (:func:`.ot.sinkhorn_loss`, squared Euclidean cost), plain
  as in the code (``ot_debiased=True``: Feydy et al.'s Sinkhorn divergence), with a fixed
  iteration count and a blur relative to the mean cost (``ot_relative``; the code: an absolute
  0.1 in latent units); its gradient is POT's envelope gradient (the code differentiates
  through the unrolled iterations: the same at convergence);
* the GAN: DMD2's head on the fake network's features (``gan_weight``), summed with the other
  terms every step (the code alternates: even steps KL + OT, odd steps GAN);
* ``ot_pair="samples"`` is an alternative reading, not the paper's: the OT gradient between the
  generator's samples and a real data batch ``batch["x"]``.

Pure functions: :func:`ot_generator_grad`. The method: :class:`VDOT` (``"vdot"``).

Under torchrun the OT term is *not* what one process computes: its transport plan couples the
samples of a batch, and each rank solves it on its own slice (``B / world`` points), so a run on
several processes optimises a different (smaller-batch) OT objective. The KL and GAN terms and
all draws shard exactly (:mod:`.dmd`); the 1-process equivalence of the generative engine
excludes the OT term.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, NonFiniteLossError
from ..method import METHODS
from .dmd import DMD, dmd_generator_grad, dmd_generator_loss
from .ot import sinkhorn_loss

OT_PAIRS = ("scores", "samples")


# -- the math, as pure functions ---------------------------------------------------------------
def ot_generator_grad(target: torch.Tensor, moved: torch.Tensor, *, reg: float = 0.05, relative: bool = True,
                      debiased: bool = False, normalize: bool = True, max_iter: int = 50, tol: float = 1e-7,
                      eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """VDOT's OT direction (stop-grad): ``(u (B, ...), S (0-dim))``.

    ``moved``: ``(B, ...)`` the set the gradient is taken in (the fake-score ``x0`` predictions,
    or the generator's samples); ``target``: ``(B', ...)`` the other set (the real-score
    ``x0`` predictions at the same ``x_t``, or real data). ``S`` is the entropic OT cost
    ``S_eps(moved, target)`` of :func:`.ot.sinkhorn_loss` (``reg``, ``relative``, ``debiased``,
    ``max_iter``, ``tol`` as there), and ``u_b = dS / d moved_b``; for the plain cost at
    convergence ``u_b = 2 sum_j P_bj (moved_b - target_j)`` with ``P`` the optimal plan
    (marginals ``1/B``, ``1/B'``), so ``-u_b`` points from ``moved_b`` toward the barycentre of
    its transport targets. With ``normalize`` (VDOT's code) each ``u_b`` is scaled to unit L2
    norm over its non-batch dimensions (``||u_b||`` floored at ``eps``).
    """
    with torch.enable_grad(), warnings.catch_warnings():
        # a fixed iteration count, as in VDOT's code: POT's "did not converge" is expected
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        x = moved.detach().clone().requires_grad_(True)
        value = sinkhorn_loss(x, target.detach(), reg=reg, debiased=debiased, relative=relative,
                              max_iter=max_iter, tol=tol)
        (grad,) = torch.autograd.grad(value, x)
    grad = grad.detach()
    if normalize:
        norm = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min(eps)
        grad = grad / norm.reshape(-1, *([1] * (grad.dim() - 1)))
    return grad, value.detach()


# -- the method ---------------------------------------------------------------------------------
@METHODS.register("vdot")
class VDOT(DMD):
    """VDOT (Wang et al. 2025, arXiv:2512.06802): DMD / DMD2 whose generator also descends an
    entropic OT distance between the real-score and fake-score ``x0`` predictions.

    Everything of :class:`~.dmd.DMD` (players ``fake_score`` then ``generator``, its
    parameters, the GAN head as VDOT's discriminator on real data) plus:

    * ``kl_weight`` (default 0.2): weight of DMD's KL surrogate (0: OT only);
    * ``ot_weight`` (default 0.8): weight of the OT surrogate (0 with ``kl_weight`` 1: DMD);
    * ``ot_step`` (default 0.1): the length of the per-sample OT step (the surrogate's target
      is ``x - ot_step * u``);
    * ``ot_reg`` (default 0.05), ``ot_relative`` (true), ``ot_debiased`` (false, as VDOT's
      code), ``ot_iters`` (50; the code: 60): the entropic OT of :func:`ot_generator_grad`;
      ``ot_normalize`` (true): unit per-sample directions;
    * ``ot_pair``: ``"scores"`` (default, the paper's: real vs fake ``x0`` predictions at fresh
      noised generator samples) or ``"samples"`` (generator samples vs real data ``batch["x"]``).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, kl_weight: float = 0.2, ot_weight: float = 0.8,
                 ot_step: float = 0.1, ot_reg: float = 0.05, ot_relative: bool = True, ot_debiased: bool = False,
                 ot_normalize: bool = True, ot_iters: int = 50, ot_pair: str = "scores",
                 variant: str = "dmd2", generator_steps: int = 1, fake_updates: int | None = None,
                 guidance: float | None = None, t_range: tuple[float, float] | list[float] | None = None,
                 fake_t_range: tuple[float, float] | list[float] | None = None, fake_weighting: str = "none",
                 backward_simulation: bool = True, normalize: bool = True, regression_weight: float = 0.0,
                 pairs: int = 0, pair_steps: int = 32, pair_solver: str = "heun", pair_seed: int = 0,
                 gan_weight: float = 0.0, gan_kind: str = "nonsaturating", r1_weight: float = 0.0, gan_hidden: int = 128,
                 fake_init: str | nn.Module = "teacher", max_sample_steps: int = 64) -> None:
        super().__init__(student, teacher, variant=variant, generator_steps=generator_steps, fake_updates=fake_updates,
                         guidance=guidance, t_range=t_range, fake_t_range=fake_t_range, fake_weighting=fake_weighting,
                         backward_simulation=backward_simulation, normalize=normalize,
                         regression_weight=regression_weight, pairs=pairs, pair_steps=pair_steps,
                         pair_solver=pair_solver, pair_seed=pair_seed, gan_weight=gan_weight, gan_kind=gan_kind,
                         r1_weight=r1_weight, gan_hidden=gan_hidden, fake_init=fake_init,
                         max_sample_steps=max_sample_steps)
        for key, value in (("kl_weight", kl_weight), ("ot_weight", ot_weight), ("ot_step", ot_step)):
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"vdot: {key} must be a number >= 0, got {value!r}.")
        if kl_weight == 0 and ot_weight == 0:
            raise ConfigError("vdot: kl_weight and ot_weight are both 0; the generator would get no distribution-matching signal.")
        if isinstance(ot_reg, bool) or not (isinstance(ot_reg, (int, float)) and math.isfinite(ot_reg) and ot_reg > 0):
            raise ConfigError(f"vdot: ot_reg (the Sinkhorn blur) must be a number > 0, got {ot_reg!r}.")
        if isinstance(ot_iters, bool) or not isinstance(ot_iters, int) or not 1 <= ot_iters <= 100_000:
            raise ConfigError(f"vdot: ot_iters must be an integer in [1, 100000], got {ot_iters!r}.")
        if ot_pair not in OT_PAIRS:
            raise ConfigError(f"vdot: ot_pair must be one of {', '.join(OT_PAIRS)}; got {ot_pair!r}.")
        self.kl_weight, self.ot_weight, self.ot_step = float(kl_weight), float(ot_weight), float(ot_step)
        self.ot_reg, self.ot_relative, self.ot_debiased = float(ot_reg), bool(ot_relative), bool(ot_debiased)
        self.ot_normalize, self.ot_iters, self.ot_pair = bool(ot_normalize), int(ot_iters), ot_pair

    # -- the generator's terms ----------------------------------------------------------------
    def kl_grad(self, x_gen: torch.Tensor, cond: torch.Tensor | None, step: int) -> torch.Tensor:
        """DMD's generator direction ``(B, ...)`` at a fresh noising of ``x_gen`` (stop-grad)."""
        n = x_gen.shape[0]
        t = self._times(n, self.t_range, x_gen.device, x_gen.dtype)
        x_t = self.teacher.process.add_noise(x_gen.detach(), self.draw.randn_like(x_gen), t)
        real_x0, fake_x0 = self.real_fake_x0(x_t, t, cond)
        self._check_fake(fake_x0, step)
        return dmd_generator_grad(x_gen, real_x0, fake_x0, normalize=self.normalize)

    def ot_grad(self, x_gen: torch.Tensor, cond: torch.Tensor | None, real: torch.Tensor | None,
                step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """VDOT's OT direction ``(B, ...)`` for the generator's samples and the OT cost.

        ``"scores"``: :func:`ot_generator_grad` of the fake-score ``x0`` predictions toward the
        real-score ones at a fresh noising of ``x_gen`` (the direction found for ``fake_x0``
        is applied to the sample it came from, as DMD does with ``fake_x0 - real_x0``);
        ``"samples"``: of ``x_gen`` toward the real batch ``real``."""
        kw = {"reg": self.ot_reg, "relative": self.ot_relative, "debiased": self.ot_debiased,
              "normalize": self.ot_normalize, "max_iter": self.ot_iters}
        if self.ot_pair == "samples":
            if real is None:
                raise ConfigError("vdot: ot_pair='samples' needs real data samples batch['x'].")
            return ot_generator_grad(real.to(x_gen.dtype), x_gen, **kw)
        n = x_gen.shape[0]
        t = self._times(n, self.t_range, x_gen.device, x_gen.dtype)
        x_t = self.teacher.process.add_noise(x_gen.detach(), self.draw.randn_like(x_gen), t)
        real_x0, fake_x0 = self.real_fake_x0(x_t, t, cond)
        self._check_fake(fake_x0, step)
        return ot_generator_grad(real_x0, fake_x0, **kw)

    def _check_fake(self, fake_x0: torch.Tensor, step: int) -> None:
        if not torch.isfinite(fake_x0).all():
            raise NonFiniteLossError(
                f"vdot: the fake_score network's prediction is not finite (NaN/inf) at step {step}; the fake-score "
                "player diverged (lower its learning rate or fake_updates). The last good checkpoint is kept."
            )

    def generator_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``kl_weight * L_DMD + ot_weight * L_OT`` (+ DMD's regression and GAN terms), each
        surrogate :func:`~.dmd.dmd_generator_loss` (mean reduction) on the same generator
        samples; the gradient in a sample ``x_b`` is ``(kl_weight g_b + ot_weight ot_step
        u_b) / x.numel()``."""
        n, device, cond = self._batch(batch)
        real = batch.get("x")
        x_gen, _ = self.generate(n, cond, device, real=real)
        loss = x_gen.new_zeros(())
        logs: dict[str, float] = {}
        if self.kl_weight > 0:
            g = self.kl_grad(x_gen, cond, step)
            dm = dmd_generator_loss(x_gen, g)
            loss = loss + self.kl_weight * dm
            logs.update({"dm": float(dm.detach()), "grad_norm": float(g.flatten(1).norm(dim=1).mean())})
        if self.ot_weight > 0:
            u, cost = self.ot_grad(x_gen, cond, real, step)
            ot_term = dmd_generator_loss(x_gen, self.ot_step * u)
            loss = loss + self.ot_weight * ot_term
            logs.update({"ot": float(ot_term.detach()), "ot_cost": float(cost)})
        return self.auxiliary_generator_terms(loss, logs, x_gen, cond, n, device), logs

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "vdot", "kl_weight": self.kl_weight, "ot_weight": self.ot_weight, "ot_step": self.ot_step,
                    "ot_reg": self.ot_reg, "ot_relative": self.ot_relative, "ot_debiased": self.ot_debiased,
                    "ot_normalize": self.ot_normalize, "ot_pair": self.ot_pair})
        return out
