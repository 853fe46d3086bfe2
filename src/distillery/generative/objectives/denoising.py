"""Denoising: training a diffusion or flow model from data (the teacher trainer).

The regression of denoising diffusion (Ho et al. 2020, arXiv:2006.11239) and of flow matching
(Lipman et al. 2023, arXiv:2210.02747; Liu et al. 2022, arXiv:2209.03003), written once for
every process and prediction kind: with data ``x0`` ``(B, *shape)``, noise ``eps`` and a time
``t`` ``(B,)``, the network sees ``x_t = alpha(t) x0 + sigma(t) eps`` and regresses, in its own
prediction space,

* ``eps``: ``eps``;  ``x0``: ``x0``;  ``v``: ``alpha eps - sigma x0`` (Salimans & Ho 2022,
  arXiv:2202.00512);  ``velocity``: ``alpha'(t) x0 + sigma'(t) eps`` (``eps - x0`` for the
  unshifted flow process);

``loss = mean_b w(t_b) * mean_i (pred - target)^2``. Times are uniform on the process's
``[t_min, t_max]`` or logit-normal (Esser et al. 2024, arXiv:2403.03206: ``t = sigmoid(m + s n)``,
``n ~ N(0, 1)``). ``weighting="min_snr"`` multiplies by ``min(SNR, gamma) / SNR`` for ``eps``
(Hang et al. 2023, arXiv:2303.09556) and is refused for other predictions (their losses carry a
different SNR factor). An optional EMA copy of the network (``ema``) is what samples and is
exported. ``label_dropout``: each label is replaced by the null class (``cond=None`` for the
whole batch is not per-sample, so the null index ``num_classes`` is written) with that
probability, which trains the unconditional branch classifier-free guidance needs (Ho &
Salimans 2022, arXiv:2207.12598).

Randomness: the noise and times of one update are drawn for the *global* batch from a generator
seeded by ``(seed, step)`` and each rank takes its slice, so a run on several processes
draws exactly what one process draws (and a resumed run what the uninterrupted one drew).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ...engine import distributed as D
from ...errors import ConfigError
from ..denoisers import Denoiser
from ..method import METHODS, BatchDraws, GenerativeMethod, ema_update
from ..processes import Process, expand


def denoising_target(process: Process, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
    """The regression target of a network predicting ``prediction`` at ``x_t = alpha x0 + sigma eps``.

    ``x0``, ``eps``: ``(B, *shape)``; ``t``: ``(B,)``. Computed from ``(x0, eps)`` directly (not
    by converting from ``x_t``, which divides by ``sigma`` near ``t = 0``)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    a, s = process.alpha_sigma(t.to(x0.dtype))
    if prediction == "v":
        return expand(a, x0) * eps - expand(s, x0) * x0
    if prediction == "velocity":
        da, ds = process.d_alpha_sigma(t.to(x0.dtype))
        return expand(da, x0) * x0 + expand(ds, x0) * eps
    raise ConfigError(f"Unknown prediction kind {prediction!r}; choose one of eps, x0, v, velocity.")


def sample_times(process: Process, n: int, generator: torch.Generator, kind: str = "uniform",
                 logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """``(n,)`` training times in ``[t_min, t_max]``: uniform, or logit-normal squeezed into the
    interval (``t_min + (t_max - t_min) sigmoid(m + s n)``)."""
    lo, hi = process.t_min, process.t_max
    if kind == "uniform":
        u = torch.rand(n, generator=generator)
    else:
        u = torch.sigmoid(logit_mean + logit_std * torch.randn(n, generator=generator))
    return lo + (hi - lo) * u


@METHODS.register("denoising")
class Denoising(GenerativeMethod):
    """Trains ``student`` (a :class:`Denoiser`) by denoising regression; player ``model``.

    Args:
        student: the network to train (any process, any prediction kind).
        teacher: not used (a denoising run has none); must be ``None``.
        time_sampling: ``"uniform"`` or ``"logit_normal"``.
        logit_mean, logit_std: the logit-normal's location and scale.
        weighting: ``"none"`` or ``"min_snr"`` (``eps`` prediction only).
        min_snr_gamma: the clamp of ``min_snr``.
        ema_decay: decay of an EMA copy (``None``: none); the EMA samples and is exported.
        label_dropout: probability of replacing a label by the null class (class-conditional
            networks only).
        sample_solver: the sampler of :meth:`sample` (``euler``, ``ddim``, ``heun``).
        guidance: classifier-free guidance scale used by :meth:`sample` (``None``: none).
        seed: base seed of the per-update noise (the run's seed; set by the loop).
    """

    players = ("model",)

    def __init__(self, student: Denoiser, teacher: Denoiser | None = None, *, time_sampling: str = "uniform",
                 logit_mean: float = 0.0, logit_std: float = 1.0, weighting: str = "none", min_snr_gamma: float = 5.0,
                 ema_decay: float | None = None, label_dropout: float = 0.0, sample_solver: str = "euler",
                 guidance: float | None = None, seed: int = 0) -> None:
        super().__init__()
        if teacher is not None:
            raise ConfigError("method 'denoising' trains a model from data and takes no teacher; remove the teacher section.")
        if time_sampling not in ("uniform", "logit_normal"):
            raise ConfigError(f"method 'denoising': time_sampling must be 'uniform' or 'logit_normal', got {time_sampling!r}.")
        if not logit_std > 0:
            raise ConfigError(f"method 'denoising': logit_std must be positive, got {logit_std}.")
        if weighting not in ("none", "min_snr"):
            raise ConfigError(f"method 'denoising': weighting must be 'none' or 'min_snr', got {weighting!r}.")
        if weighting == "min_snr" and student.prediction != "eps":
            raise ConfigError(f"method 'denoising': weighting 'min_snr' is written for eps prediction; the student predicts {student.prediction!r}.")
        if ema_decay is not None and not 0.0 <= ema_decay <= 1.0:
            raise ConfigError(f"method 'denoising': ema_decay must lie in [0, 1], got {ema_decay}.")
        if not 0.0 <= label_dropout <= 1.0:
            raise ConfigError(f"method 'denoising': label_dropout must lie in [0, 1], got {label_dropout}.")
        if label_dropout and not student.num_classes:
            raise ConfigError("method 'denoising': label_dropout needs a class-conditional network (data.conditional: true).")
        if sample_solver not in ("euler", "ddim", "heun"):
            raise ConfigError(f"method 'denoising': sample_solver must be euler, ddim or heun, got {sample_solver!r}.")
        self.model = student
        self.ema = copy.deepcopy(student).requires_grad_(False) if ema_decay is not None else None
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, float(logit_mean), float(logit_std)
        self.weighting, self.min_snr_gamma = weighting, float(min_snr_gamma)
        self.ema_decay, self.label_dropout = ema_decay, float(label_dropout)
        self.sample_solver, self.guidance, self.seed = sample_solver, guidance, int(seed)

    @property
    def process(self) -> Process:
        return self.model.process

    def _noise_draws(self, x0: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's slice of the global batch's ``(eps, t, uniform)`` draws at ``step``."""
        # BatchDraws with this method's own seed of (seed, step) (one update per step), kept so
        # that denoising runs draw what they drew before the per-update seeds of the other methods
        draw, b = BatchDraws((self.seed * 1_000_003 + step) % (2**63), D.rank(), D.world_size()), x0.shape[0]
        eps = draw.randn(b, tuple(x0.shape[1:]))
        t = draw.take(sample_times(self.process, b * draw.world, draw.generator, self.time_sampling, self.logit_mean, self.logit_std))
        u = draw.rand(b)
        return eps.to(x0.device, x0.dtype), t.to(x0.device, x0.dtype), u.to(x0.device)

    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = batch["x"]
        eps, t, u = self._noise_draws(x0, step)
        cond = None
        if self.model.num_classes:
            cond = batch["y"].clone()
            if self.label_dropout:
                cond[u < self.label_dropout] = self.model.num_classes
        x_t = self.process.add_noise(x0, eps, t)
        pred = self.model(x_t, t, cond)
        target = denoising_target(self.process, x0, eps, t, self.model.prediction)
        per_sample = (pred - target).pow(2).flatten(1).mean(1)
        if self.weighting == "min_snr":
            snr = self.process.snr(t)
            per_sample = per_sample * snr.clamp(max=self.min_snr_gamma) / snr
        loss = per_sample.mean()
        return loss, {"loss": float(loss.detach())}

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            ema_update(self.ema, self.model, float(self.ema_decay))

    def sampler_net(self) -> Denoiser:
        """The network that samples: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.model

    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        from ..samplers import sample

        net = self.sampler_net()
        if net.sample_shape is None:
            raise ConfigError("method 'denoising': the network has no sample shape; build it with sample_shape.")
        x = self.process.prior((n, *net.sample_shape), generator=generator, device="cpu").to(device)
        if isinstance(cond, dict):  # a video network's conditions (labels, audio, actions)
            cond = {k: v.to(device) for k, v in cond.items()}
        elif cond is not None:
            cond = cond.to(device)
        return sample(net, x, steps=steps, solver=self.sample_solver, cond=cond, guidance=self.guidance)

    def exported(self) -> dict[str, nn.Module]:
        return {"model": self.sampler_net()}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"prediction": self.model.prediction, "process": self.process.describe(),
                    "time_sampling": self.time_sampling, "ema_decay": self.ema_decay, "sample_solver": self.sample_solver})
        return out
