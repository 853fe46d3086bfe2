"""DDAE++: self-conditioning and contrastive self-distillation inside a denoising diffusion model.

W. Xiang, H. Yang, D. Huang, Y. Wang, 2025, "DDAE++: Enhancing Diffusion Models Towards Unified
Generative and Discriminative Learning", arXiv:2505.10999: "self-conditioning, a straightforward
yet effective mechanism that internally leverages the rich semantics inherent in denoising
network to guide its own decoding layers ... boosts both generation FID and recognition
accuracy with 1% computational overhead ... self-conditioning facilitates an effective
integration of discriminative techniques, such as contrastive self-distillation, directly into
diffusion models without sacrificing generation quality."

Self-conditioning is an architecture change, not distillation: the denoiser ``sc_unet``
(:class:`~distillery.generative.self_conditioning.SelfConditionedUNet`) pools its bottleneck
features ``z`` and adds ``MLP(z)`` to the embedding its decoder blocks read. What distils is the
add-on: the denoiser's own EMA is the teacher of its mid-level features.

:class:`DDAE` (generative method ``ddae``, one player ``model``) trains, per batch ``x0``::

    L = L_denoise(x0)  +  lambda * L_SD(x0)

* ``L_denoise``: the engine's denoising regression
  (:class:`~distillery.generative.objectives.denoising.Denoising`, whose EMA copy samples);
* ``L_SD`` [inferred: the paper names "contrastive self-distillation" with an EMA teacher;
  the views, the projector and InfoNCE are this library's MoCo-style reading of it]: two views
  of every image, each shifted by up to ``sd_shift`` pixels (edge pixels replicated) and noised
  to its own time ``t_a, t_b ~ U[t_min, sd_t_max]``; the student's pooled features of view a
  through a projector ``g`` (``F -> sd_hidden -> sd_dim``) are the queries
  ``q = g(z_theta(x_a, t_a))``, the EMA teacher's (the denoiser's EMA and the projector's EMA,
  no gradient) of view b the keys ``k = g_ema(z_ema(x_b, t_b))``; InfoNCE with in-batch
  negatives (:func:`distillery.objectives.contrastive.infonce_loss`)::

      L_SD = -1/B sum_i log( exp(q_i . k_i / tau) / sum_j exp(q_i . k_j / tau) ),  q, k L2-normalised

  The teacher is updated after every step, ``theta_ema <- m theta_ema + (1 - m) theta``
  (:func:`~distillery.generative.method.ema_update`, ``m = ema_decay``), the same EMA that samples.

Views use only the encoder half (``features``); ``sd_weight = 0`` is plain denoising (with the
network's self-conditioning or not). Config: ``configs/ddae_digits.yaml``; reproduction:
``distillery reproduce ddae`` (three arms: plain, +self-conditioning, +self-conditioning
+contrastive SD; digits FD, a linear probe on the pooled features, MACs).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import distributed as D
from ..errors import ConfigError
from ..generative.denoisers import Denoiser
from ..generative.method import (
    GLOBAL_DRAWS,
    METHODS,
    BatchDraws,
    GlobalDraws,
    ema_update,
    update_seed,
)
from ..generative.objectives.denoising import Denoising
from ..generative.self_conditioning import (
    SelfConditionedUNet,
    describe_self_conditioning,
    forward_macs,
    pooled_features,
)
from ..objectives.contrastive import infonce_loss
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("ddae", "Xiang et al. 2025, DDAE++, arXiv:2505.10999", "ddae_digits.yaml",
           "Denoiser whose pooled mid-level features condition its decoder (self-conditioning), plus contrastive "
           "self-distillation of those features from its EMA")
)

__all__ = ["DDAE", "SelfConditionedUNet", "ddae_config", "linear_probe", "probe_features", "random_shift",
           "sc_unet", "self_conditioning_overhead"]


def random_shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, max_shift: int) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` translated per sample by ``(dy, dx)`` ``(B,)`` integers in
    ``[-max_shift, max_shift]``: ``out[b, :, i, j] = x[b, :, clip(i - dy_b), clip(j - dx_b)]``
    (edge pixels replicated). ``max_shift = 0`` returns ``x``."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    s = int(max_shift)
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    rows = (s - dy.long())[:, None] + torch.arange(h, device=x.device)[None]  # (B, H)
    cols = (s - dx.long())[:, None] + torch.arange(w, device=x.device)[None]  # (B, W)
    out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _projector(dim_in: int, hidden: int, dim_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.SiLU(), nn.Linear(hidden, dim_out))


@METHODS.register("ddae")
class DDAE(Denoising):
    """Denoising plus DDAE++'s contrastive self-distillation of pooled mid-level features from
    the EMA (see the module docstring); player ``model`` (the denoiser and the projector).

    Args (besides :class:`~distillery.generative.objectives.denoising.Denoising`'s):
        sd_weight: ``lambda``, the weight of ``L_SD`` (0: plain denoising, no projector built).
        sd_temperature: InfoNCE's ``tau``.
        sd_dim, sd_hidden: the projector's output and hidden widths.
        sd_t_max: the views' times are uniform in ``[t_min, sd_t_max]``.
        sd_shift: the views' largest translation in pixels (0: none).
        ema_decay: the EMA's ``m``; required when ``sd_weight > 0`` (the EMA is the teacher).
    """

    players = ("model",)

    def __init__(self, student: Denoiser, teacher: Denoiser | None = None, *, sd_weight: float = 0.0,
                 sd_temperature: float = 0.2, sd_dim: int = 64, sd_hidden: int = 128, sd_t_max: float = 0.3,
                 sd_shift: int = 1, time_sampling: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
                 weighting: str = "none", min_snr_gamma: float = 5.0, ema_decay: float | None = 0.995,
                 label_dropout: float = 0.0, sample_solver: str = "euler", guidance: float | None = None,
                 seed: int = 0) -> None:
        if teacher is not None:
            raise ConfigError("method 'ddae': the teacher is the model's own EMA; remove the teacher section.")
        super().__init__(student, None, time_sampling=time_sampling, logit_mean=logit_mean, logit_std=logit_std,
                         weighting=weighting, min_snr_gamma=min_snr_gamma, ema_decay=ema_decay,
                         label_dropout=label_dropout, sample_solver=sample_solver, guidance=guidance, seed=seed)
        if not sd_weight >= 0:
            raise ConfigError(f"method 'ddae': sd_weight must be >= 0, got {sd_weight}.")
        if not sd_temperature > 0:
            raise ConfigError(f"method 'ddae': sd_temperature must be positive, got {sd_temperature}.")
        for key, value in (("sd_dim", sd_dim), ("sd_hidden", sd_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"method 'ddae': {key} must be a positive integer, got {value!r}.")
        if isinstance(sd_shift, bool) or not isinstance(sd_shift, int) or sd_shift < 0:
            raise ConfigError(f"method 'ddae': sd_shift must be a non-negative integer, got {sd_shift!r}.")
        process = student.process
        if not process.t_min < sd_t_max <= process.t_max:
            raise ConfigError(f"method 'ddae': sd_t_max must lie in (t_min, t_max] = ({process.t_min}, {process.t_max}], "
                              f"got {sd_t_max}.")
        self.sd_weight, self.sd_temperature, self.sd_t_max = float(sd_weight), float(sd_temperature), float(sd_t_max)
        self.sd_shift = int(sd_shift)
        self.projector: nn.Module | None = None
        self.ema_projector: nn.Module | None = None
        if self.sd_weight > 0:
            if ema_decay is None:
                raise ConfigError("method 'ddae': sd_weight > 0 needs ema_decay (the EMA is the self-distillation teacher).")
            net = student.net
            if getattr(net, "features", None) is None or not isinstance(getattr(net, "feature_dim", None), int):
                raise ConfigError(f"method 'ddae': student.denoiser {type(net).__name__} has no features(x_t, t, cond) / "
                                  "feature_dim; use sc_unet, unet or dit.")
            if student.sample_shape is None or len(student.sample_shape) != 3:
                raise ConfigError("method 'ddae': sd_weight > 0 shifts images; the data must be (C, H, W) images.")
            self.projector = _projector(net.feature_dim, sd_hidden, sd_dim)
            self.ema_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def parameters_of(self, player: str) -> list[nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.projector is not None:
            params += [p for p in self.projector.parameters() if p.requires_grad]
        return params

    def _view(self, x0: torch.Tensor, draw: BatchDraws | GlobalDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """One view of every image: ``(x_t (B, C, H, W), t (B,))``, shifted and lightly noised."""
        b, s = x0.shape[0], self.sd_shift
        dy = draw.randint(-s, s + 1, b, device=x0.device)
        dx = draw.randint(-s, s + 1, b, device=x0.device)
        t = draw.times(self.process, b, high=self.sd_t_max, device=x0.device, dtype=x0.dtype)
        eps = draw.randn_like(x0)
        return self.process.add_noise(random_shift(x0, dy, dx, s), eps, t), t

    def self_distillation_loss(self, x0: torch.Tensor, draw: BatchDraws | GlobalDraws | None = None) -> torch.Tensor:
        """``L_SD`` on clean images ``x0`` ``(B, C, H, W)``: InfoNCE of the student's projected
        features of one view against the EMA teacher's of another (a scalar). ``draw``: where
        the views' shifts, times and noise come from (default: the global RNG)."""
        assert self.projector is not None and self.ema_projector is not None and self.ema is not None
        draw = draw if draw is not None else GLOBAL_DRAWS
        x_a, t_a = self._view(x0, draw)
        x_b, t_b = self._view(x0, draw)
        q = self.projector(pooled_features(self.model, x_a, t_a))
        with torch.no_grad():
            k = self.ema_projector(pooled_features(self.ema, x_b, t_b))
        return infonce_loss(q, k, temperature=self.sd_temperature)

    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        denoise, figures = super().loss(player, batch, step)
        if self.projector is None:
            return denoise, figures
        # the views' draws for the global batch, seeded by (seed, step) like the denoising draws
        # (Denoising keeps its own per-step seeding; its _draws method shadows GenerativeMethod.draw)
        draw = BatchDraws(update_seed(self.seed, step, "ddae/views", 0), D.rank(), D.world_size())
        sd = self.self_distillation_loss(batch["x"], draw)
        loss = denoise + self.sd_weight * sd
        return loss, {"loss": float(loss.detach()), "denoise": float(denoise.detach()), "sd": float(sd.detach())}

    def after_step(self, step: int) -> None:
        super().after_step(step)
        if self.projector is not None:
            ema_update(self.ema_projector, self.projector, float(self.ema_decay))

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"sd_weight": self.sd_weight, "sd_temperature": self.sd_temperature, "sd_t_max": self.sd_t_max,
                    "sd_shift": self.sd_shift, "self_condition": bool(getattr(self.model.net, "sc", None) is not None)})
        if self.model.sample_shape is not None:
            out.update(describe_self_conditioning(self.model.net, self.model.sample_shape))
        return out


# -- config fragments ----------------------------------------------------------------------------
def sc_unet(channels: Sequence[int] = (16, 32), self_condition: bool = True, **params: Any) -> dict[str, Any]:
    """The ``student.denoiser`` section of the self-conditioned U-Net (``self_condition=False``:
    the same network without the path)."""
    return {"name": "sc_unet", "params": {"channels": [int(c) for c in channels], "self_condition": bool(self_condition),
                                           **params}}


def ddae_config(sd_weight: float = 0.0, *, sd_temperature: float = 0.2, sd_dim: int = 64, sd_hidden: int = 128,
                sd_t_max: float = 0.3, sd_shift: int = 1, ema_decay: float = 0.995,
                sample_solver: str = "euler") -> dict[str, Any]:
    """The ``method`` section of DDAE++ (``sd_weight = 0``: denoising only)."""
    params: dict[str, Any] = {"sd_weight": float(sd_weight), "ema_decay": float(ema_decay), "sample_solver": sample_solver}
    if sd_weight > 0:
        params.update({"sd_temperature": float(sd_temperature), "sd_dim": int(sd_dim), "sd_hidden": int(sd_hidden),
                       "sd_t_max": float(sd_t_max), "sd_shift": int(sd_shift)})
    return {"method": {"kind": "ddae", "params": params}}


# -- measuring ----------------------------------------------------------------------------------
@torch.no_grad()
def probe_features(denoiser: nn.Module, x: torch.Tensor, t: float = 0.0, *, noise_seed: int = 0,
                   batch_size: int = 512) -> torch.Tensor:
    """``(N, F)`` pooled mid-level features of ``denoiser`` (a :class:`Denoiser` or its net) on
    images ``x`` ``(N, C, H, W)`` noised to time ``t`` (``t = 0``: clean; else
    ``alpha(t) x + sigma(t) eps`` with ``eps`` from ``noise_seed``), in eval mode."""
    process = getattr(denoiser, "process", None)
    if t > 0 and process is None:
        raise ConfigError("probe_features: t > 0 needs a Denoiser (its process adds the noise).")
    was = denoiser.training
    denoiser.eval()
    try:
        if t > 0:
            eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(noise_seed)).to(x)
            x = process.add_noise(x, eps, torch.full((x.shape[0],), float(t), dtype=x.dtype))
        out = [pooled_features(denoiser, x[i:i + batch_size], torch.full((len(x[i:i + batch_size]),), float(t)))
               for i in range(0, len(x), batch_size)]
    finally:
        denoiser.train(was)
    return torch.cat(out).float()


def linear_probe(denoiser: nn.Module, splits: Any, t: float = 0.0, *, C: float = 1.0) -> float:
    """Linear-probe test accuracy on ``denoiser``'s pooled mid-level features at time ``t``:
    multinomial logistic regression (:func:`distillery.evaluation.probes.linear_probe_accuracy`,
    standardised features, L-BFGS, inverse regularisation ``C``) fitted on ``splits.train``,
    scored on ``splits.test``."""
    from ..evaluation.probes import linear_probe_accuracy

    train = probe_features(denoiser, splits.train.x.float(), t)
    test = probe_features(denoiser, splits.test.x.float(), t, noise_seed=1)
    return linear_probe_accuracy(train, splits.train.y, test, splits.test.y, C=C)


def self_conditioning_overhead(channels: Sequence[int] = (16, 32), sample_shape: tuple[int, ...] = (1, 8, 8),
                               **params: Any) -> dict[str, float]:
    """Per-sample multiply-accumulates of one forward pass of the plain and the self-conditioned
    ``sc_unet`` (:func:`~distillery.generative.self_conditioning.forward_macs`) and the relative
    extra compute ``sc / plain - 1``."""
    size = {"in_channels": sample_shape[0], "image_size": sample_shape[-1]}
    plain = forward_macs(SelfConditionedUNet(channels=channels, self_condition=False, **size, **params), sample_shape)
    sc = forward_macs(SelfConditionedUNet(channels=channels, self_condition=True, **size, **params), sample_shape)
    return {"macs_plain": float(plain), "macs_self_conditioned": float(sc), "extra_fraction": sc / plain - 1.0}
