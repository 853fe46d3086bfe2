"""Adversarial parts: a time-aware discriminator and the GAN losses (used by DMD2's GAN head,
GDD and TAD-SR).

* :class:`TimeAwareDiscriminator`: logits ``(B,)`` from features of *noised* samples ``x_t``
  at time ``t``, with ``t`` embedded (the discriminator of diffusion-GANs, Xiao et al. 2022,
  arXiv:2112.07804; DMD2, Yin et al. 2024, arXiv:2405.14867, puts it on the fake-score
  network's features);
* :func:`d_loss`, :func:`g_loss`: non-saturating (Goodfellow et al. 2014, arXiv:1406.2661)
  and hinge (Lim & Ye 2017, arXiv:1705.02894) losses on logits;
* :func:`r1_penalty`: ``E ||grad_x D(x)||^2`` on real data (Mescheder et al. 2018,
  arXiv:1801.04406), differentiable (``create_graph=True``) so that it trains ``D``;
* :class:`AdversarialDistillation` (method ``gan``): a one-step generator trained by the GAN
  loss alone against noised real data (GDD-style).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..denoisers import Denoiser, TimeEmbedding
from ..method import METHODS, GenerativeMethod, drawn
from ..processes import Process, check_interval
from ..samplers import sample as ode_sample
from .common import (
    batch_cond,
    check_positive_int,
    check_same_process,
    copy_teacher_weights,
    freeze,
    prior_sample,
    sample_shape_of,
)

GAN_KINDS = ("nonsaturating", "hinge")


def _check_kind(kind: str) -> None:
    if kind not in GAN_KINDS:
        raise ConfigError(f"GAN loss: unknown kind {kind!r}; choose one of {', '.join(GAN_KINDS)}.")


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """The discriminator's loss on ``(B,)`` logits (any shapes; each side averaged):

    * ``nonsaturating``: ``E softplus(-D(real)) + E softplus(D(fake))`` (= ``-E log sigmoid(D(real))
      - E log(1 - sigmoid(D(fake)))``);
    * ``hinge``: ``E relu(1 - D(real)) + E relu(1 + D(fake))``. Returns a scalar."""
    _check_kind(kind)
    if kind == "nonsaturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_loss(fake_logits: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """The generator's loss on the fake logits: ``E softplus(-D(fake))`` (``nonsaturating``)
    or ``-E D(fake)`` (``hinge``). Returns a scalar."""
    _check_kind(kind)
    if kind == "nonsaturating":
        return F.softplus(-fake_logits).mean()
    return -fake_logits.mean()


def r1_penalty(real_logits: torch.Tensor, real_x: torch.Tensor) -> torch.Tensor:
    """``mean_b ||d D(x_b) / d x_b||^2`` (Mescheder et al. 2018): ``real_logits`` ``(B,)``
    computed from ``real_x`` ``(B, ...)``, which must require grad. The graph is kept so the
    penalty trains the discriminator; multiply by ``gamma / 2`` outside."""
    if not real_x.requires_grad:
        raise ConfigError("r1_penalty: real_x must require grad (call real_x.requires_grad_() before the discriminator).")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_x, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


class TimeAwareDiscriminator(nn.Module):
    """Logits ``(B,)`` for noised samples ``x_t`` ``(B, *sample_shape)`` at times ``t`` ``(B,)``.

    ``backbone_features``: a module ``(x_t, t) -> (B, feature_dim)`` or ``(B, C, H, W)``
    features (spatially averaged), e.g. the fake-score network's encoder (DMD2); ``None``:
    an MLP backbone on the flattened sample of ``sample_dim`` values with ``t`` embedded
    (``hidden`` SiLU layers, ``feature_dim`` outputs). The head takes ``[features, emb(t)]``
    through a SiLU layer to one logit; ``num_classes``: projection conditioning (Miyato &
    Koyama 2018, arXiv:1802.05637), ``logit += <emb(y), h>``. ``process``: when given,
    :meth:`noised` noises clean samples first (``x_t = process.add_noise(x, eps, t)``).

    Example::

        disc = TimeAwareDiscriminator(None, feature_dim=128, sample_dim=2, process=FlowProcess())
        logits = disc.noised(x, t)        # (B,)
    """

    def __init__(self, backbone_features: nn.Module | None, feature_dim: int, *, sample_dim: int | None = None,
                 hidden: tuple[int, ...] | list[int] = (256, 256), time_dim: int = 64, num_classes: int | None = None,
                 process: Process | None = None) -> None:
        super().__init__()
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ConfigError(f"TimeAwareDiscriminator: feature_dim must be a positive integer, got {feature_dim!r}.")
        self.process, self.num_classes = process, num_classes
        self.time = TimeEmbedding(time_dim)
        if backbone_features is None:
            if sample_dim is None or sample_dim < 1:
                raise ConfigError("TimeAwareDiscriminator: without backbone_features give sample_dim (values per sample) for the MLP backbone.")
            layers: list[nn.Module] = []
            width = sample_dim + time_dim
            for h in hidden:
                layers += [nn.Linear(width, h), nn.SiLU()]
                width = h
            layers.append(nn.Linear(width, feature_dim))
            self.mlp = nn.Sequential(*layers)
            self.backbone = None
        else:
            self.backbone, self.mlp = backbone_features, None
        self.head = nn.Sequential(nn.Linear(feature_dim + time_dim, feature_dim), nn.SiLU())
        self.out = nn.Linear(feature_dim, 1)
        self.label = nn.Embedding(num_classes, feature_dim) if num_classes else None

    def features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(B, feature_dim)`` backbone features of ``x_t`` at ``t``."""
        if self.backbone is None:
            return self.mlp(torch.cat([x_t.flatten(1), self.time(t).to(x_t.dtype)], dim=1))
        h = self.backbone(x_t, t)
        return h.flatten(2).mean(2) if h.dim() > 2 else h

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        feats = self.features(x_t, t)
        h = self.head(torch.cat([feats, self.time(t).to(feats.dtype)], dim=1))
        logits = self.out(h).squeeze(1)
        if self.label is not None and cond is not None:
            logits = logits + (self.label(cond) * h).sum(1)
        return logits

    def noised(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None,
               cond: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of clean samples ``x`` noised to ``t`` with ``eps`` (fresh noise by default)."""
        if self.process is None:
            raise ConfigError("TimeAwareDiscriminator.noised needs the discriminator's process (process=...).")
        eps = torch.randn_like(x) if eps is None else eps
        return self(self.process.add_noise(x, eps, t), t, cond)


def flat_dim(sample_shape: tuple[int, ...]) -> int:
    """Values per sample: ``prod(sample_shape)``."""
    return int(math.prod(sample_shape))


@METHODS.register("gan")
class AdversarialDistillation(GenerativeMethod):
    """Distribution-level (GAN-only) distillation of a one-step generator (as GDD, Zheng & Yang
    2024, arXiv:2405.20750): the student, initialised from the teacher, maps prior noise to a
    sample in one evaluation (its ``x0`` prediction at ``t_max``); a
    :class:`TimeAwareDiscriminator` tells noised real data from noised student samples at a
    random ``t`` in ``[t_min, d_time_max]``.

    Players, in order: ``discriminator`` (``d_loss + r1_gamma / 2 * R1`` on the noised real
    samples) and ``student`` (``g_loss``). ``kind``: ``nonsaturating`` or ``hinge``;
    ``discriminator``: a module to use instead of the default MLP one (``feature_dim``,
    ``hidden``, ``time_dim``); ``teacher``: optional, only for ``init_from_teacher``.
    Sampling: ``steps = 1`` is the generator; more steps are the student's DDIM.
    """

    players = ("discriminator", "student")

    def __init__(self, student: Denoiser, teacher: Denoiser | None = None, kind: str = "nonsaturating", r1_gamma: float = 0.0,
                 d_time_max: float | None = None, discriminator: nn.Module | None = None, feature_dim: int = 128,
                 hidden: tuple[int, ...] | list[int] = (256, 256), time_dim: int = 64, init_from_teacher: bool = True) -> None:
        super().__init__()
        where = "gan distillation"
        _check_kind(kind)
        if isinstance(r1_gamma, bool) or not isinstance(r1_gamma, (int, float)) or not 0 <= r1_gamma < math.inf:
            raise ConfigError(f"{where}: r1_gamma must be a number >= 0, got {r1_gamma!r}.")
        process = student.process
        d_time_max = process.t_max if d_time_max is None else float(d_time_max)
        check_interval(process.t_min, d_time_max)
        shape = sample_shape_of(student, where)
        if teacher is not None and init_from_teacher:
            check_same_process(student, teacher, where)
            copy_teacher_weights(student, teacher, where)
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        if discriminator is None:
            dtype = next(student.parameters(), torch.empty(0)).dtype
            discriminator = TimeAwareDiscriminator(None, feature_dim, sample_dim=flat_dim(shape), hidden=hidden,
                                                   time_dim=time_dim, num_classes=student.num_classes).to(dtype)
        self.discriminator = discriminator
        self.kind, self.r1_gamma, self.d_time_max = kind, float(r1_gamma), d_time_max

    def generate(self, n: int, cond: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu") -> torch.Tensor:
        """One-step samples ``(n, *shape)``: the student's ``x0`` at ``t_max`` from prior noise."""
        x_T = prior_sample(self.student, n, generator=generator, device=device, where="gan distillation", draw=self.draw)
        return self.student.predict(x_T, torch.full((n,), self.student.process.t_max, dtype=x_T.dtype, device=x_T.device), cond, "x0")

    def _noised_logits(self, x: torch.Tensor, cond: torch.Tensor | None, track: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        process = self.student.process
        t = self.draw.times(process, x.shape[0], high=self.d_time_max, device=x.device, dtype=x.dtype)
        x_t = process.add_noise(x, self.draw.randn_like(x), t)
        if track:
            x_t = x_t.detach().requires_grad_(True)
        return self.discriminator(x_t, t, cond), x_t

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        real = batch["x"]
        cond = batch_cond(batch, self.student)
        if player == "discriminator":
            with torch.no_grad():
                fake = self.generate(real.shape[0], cond, device=real.device)
            real_logits, real_t = self._noised_logits(real.to(fake.dtype), cond, track=self.r1_gamma > 0)
            fake_logits, _ = self._noised_logits(fake, cond)
            loss = d_loss(real_logits, fake_logits, self.kind)
            logs = {"d_loss": float(loss.detach()), "real_logit": float(real_logits.mean().detach()),
                    "fake_logit": float(fake_logits.mean().detach())}
            if self.r1_gamma > 0:
                r1 = r1_penalty(real_logits, real_t)
                loss = loss + 0.5 * self.r1_gamma * r1
                logs["r1"] = float(r1.detach())
            return loss, logs
        fake_logits, _ = self._noised_logits(self.generate(real.shape[0], cond, device=real.device), cond)
        loss = g_loss(fake_logits, self.kind)
        return loss, {"g_loss": float(loss.detach())}

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        check_positive_int(steps, "steps", "gan distillation sample")
        if steps == 1:
            return self.generate(n, cond, generator=generator, device=device)
        x = prior_sample(self.student, n, generator=generator, device=device, where="gan distillation")
        return ode_sample(self.student, x, steps=steps, solver="ddim", cond=cond)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": self.kind, "r1_gamma": self.r1_gamma, "nfe": 1}
