"""Distribution matching distillation: DMD (Yin et al. 2024, arXiv:2311.18828) and DMD2 (Yin et
al. 2024, arXiv:2405.14867).

A few-step **generator** ``G`` is trained so that its output distribution ``p_fake`` matches the
teacher's ``p_real``, by descending ``KL(p_fake,t || p_real,t)`` between the two distributions
noised to a random time ``t`` (``x_t = alpha x + sigma eps``). Its gradient per generated sample
``x = G(z)`` is ``alpha(t) (s_fake(x_t) - s_real(x_t))`` with ``s`` the scores of the noised
distributions. The real score is the frozen teacher; the fake score is a second denoiser
(``fake``) trained by denoising score matching on the generator's own (stop-grad) samples.

With ``x0``-predictions ``x0_hat = (x_t + sigma^2 s(x_t)) / alpha`` the score difference is a
difference of denoised samples, ``s_fake - s_real = alpha / sigma^2 (fake_x0 - real_x0)``, so::

    grad_x KL(p_fake,t || p_real,t) = alpha^2 / sigma^2 * (fake_x0 - real_x0)      (per sample)

DMD uses ``(fake_x0 - real_x0) / w`` with ``w = mean |x - real_x0|`` over a sample's dimensions
(its gradient normalisation, Eq. 7-8 of DMD; the form of DMD2's code), i.e. the KL gradient times
the positive weight ``sigma^2 / (alpha^2 w)``: :func:`dmd_generator_grad`. It reaches the
generator's parameters through the surrogate :func:`dmd_generator_loss`, whose gradient in ``x``
is that direction.

The method :class:`DMD` (registered as ``"dmd"``) has two players, updated in this order:

* ``fake_score`` (``fake_updates`` times per step: DMD2's two time-scale update rule, 5 by
  default; DMD used 1): :func:`fake_score_loss` on fresh generator samples, plus, with
  ``gan_weight > 0``, DMD2's GAN classifier (a small head on the fake network's ``features``)
  trained to tell real data ``batch["x"]`` from generator samples, with an optional R1 penalty;
* ``generator``: the distribution matching loss, plus DMD's regression loss on teacher ODE pairs
  (noise -> teacher sample; mean squared error here, LPIPS in the paper) and DMD2's generator
  GAN loss.

Multi-step generators (DMD2) denoise on fixed times ``t_max = t_0 > t_1 > ... > t_{K-1}``
(``process.timesteps(K)[:-1]``); each step predicts ``x0`` and re-noises it to the next time.
In training, DMD2's *backward simulation* gives the generator the input it meets at sampling
time: it runs itself (no grad) from noise for a random number ``k < K`` of its own steps, and the
loss is taken on its ``x0`` prediction at ``t_k``.

Randomness: inside the loop, every per-sample draw (prior noise, step index ``k``, re-noising,
times, the GAN head's noising, regression pair indices) is made through ``self.draw``, for the
global batch and sliced by rank (:meth:`~..method.GenerativeMethod.drawing`), so that a run on
several processes matches one process; the re-noising of backward simulation is drawn for all
``K - 1`` steps whatever a rank's largest ``k``. DMD's normalisation ``w`` is per sample, so it
shards exactly.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, NonFiniteLossError
from ..method import METHODS, GenerativeMethod
from ..processes import Process, check_interval, expand

FAKE_WEIGHTINGS = ("none", "snr", "min_snr")


# -- the math, as pure functions --------------------------------------------------------------
def dmd_generator_grad(x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor, *,
                       normalize: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """The DMD generator gradient direction (stop-grad), ``(B, ...)``.

    ``x0``: the generator's samples; ``real_x0``/``fake_x0``: the teacher's and the fake-score
    network's ``x0`` predictions at the same noised ``x_t`` of those samples; all ``(B, ...)``.
    Returns ``(fake_x0 - real_x0) / w`` with DMD's per-sample normalisation
    ``w = mean |x0 - real_x0|`` over the non-batch dimensions (floored at ``eps``), or the plain
    difference with ``normalize=False``. This is ``sigma^2 / (alpha^2 w)`` times the per-sample
    gradient of ``KL(p_fake,t || p_real,t)`` (module docstring). Descending it moves ``x0``
    from where the fake score points towards where the real score points.
    """
    with torch.no_grad():
        diff = fake_x0.detach() - real_x0.detach()
        if not normalize:
            return diff
        dims = tuple(range(1, x0.dim()))
        w = (x0.detach() - real_x0.detach()).abs().mean(dim=dims, keepdim=True) if dims else (x0.detach() - real_x0.detach()).abs()
        return diff / w.clamp_min(eps)


def dmd_generator_loss(x: torch.Tensor, grad: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The surrogate ``0.5 * ||x - sg(x - grad)||^2`` whose gradient in ``x`` is ``grad``.

    ``x``: ``(B, ...)`` generator samples (with grad); ``grad``: ``(B, ...)`` from
    :func:`dmd_generator_grad`. ``reduction="sum"``: the gradient in ``x`` is exactly ``grad``;
    ``"mean"`` (default, DMD2's code): the sum divided by ``x.numel()``, so the gradient is
    ``grad / x.numel()``. The value is ``0.5 * ||grad||^2`` (summed or averaged): a figure to log,
    not a distance to zero."""
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"dmd_generator_loss: reduction must be 'mean' or 'sum', got {reduction!r}.")
    # ``x - sg(x - grad)`` written as ``(x - sg(x)) + sg(grad)``: the same value, and a gradient
    # that is ``grad`` to the last bit (``x - (x - grad)`` is not ``grad`` in floating point)
    sq = 0.5 * ((x - x.detach()) + grad.detach()) ** 2
    return sq.mean() if reduction == "mean" else sq.sum()


def prediction_target(process: Process, kind: str, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What a denoiser predicting ``kind`` should output at ``x_t = alpha x0 + sigma eps``:
    ``eps``, ``x0``, ``v = alpha eps - sigma x0`` or ``velocity = alpha' x0 + sigma' eps``.
    ``x0``, ``eps``: ``(B, ...)``; ``t``: ``(B,)``."""
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        a, s = process.alpha_sigma(t)
        return expand(a, x0) * eps - expand(s, x0) * x0
    if kind == "velocity":
        da, ds = process.d_alpha_sigma(t)
        return expand(da, x0) * x0 + expand(ds, x0) * eps
    raise ConfigError(f"Unknown prediction kind {kind!r}.")


def snr_weight(process: Process, t: torch.Tensor, weighting: str, gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weights ``(B,)`` of a denoising loss: ``none`` (1), ``snr`` (``alpha^2 /
    sigma^2``) or ``min_snr`` (``min(snr, gamma)``, Hang et al. 2023, arXiv:2303.09556)."""
    if weighting == "none":
        return torch.ones_like(t)
    snr = process.snr(t)
    if weighting == "snr":
        return snr
    if weighting == "min_snr":
        return snr.clamp(max=gamma)
    raise ConfigError(f"fake_weighting must be one of {', '.join(FAKE_WEIGHTINGS)}; got {weighting!r}.")


def fake_score_loss(fake: nn.Module, x_gen: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, *,
                    cond: torch.Tensor | None = None, weighting: str = "none") -> torch.Tensor:
    """Denoising score matching of the fake-score network on stop-grad generator samples (DMD
    Eq. 6), in the fake network's own prediction space.

    ``fake``: a :class:`~distillery.generative.denoisers.Denoiser`; ``x_gen``: ``(B, ...)``
    generator samples (detached here); ``t``: ``(B,)`` times; ``eps``: ``(B, ...)`` noise.
    Returns ``mean_b( w(t_b) * mean_d (fake(x_t)_bd - target_bd)^2 )`` with ``x_t = alpha x_gen +
    sigma eps``, ``target`` from :func:`prediction_target` and ``w`` from :func:`snr_weight`."""
    x0 = x_gen.detach()
    process = fake.process
    x_t = process.add_noise(x0, eps, t)
    pred = fake(x_t, t, cond)
    target = prediction_target(process, fake.prediction, x0, eps, t)
    per_sample = ((pred - target) ** 2).flatten(1).mean(dim=1)
    return (snr_weight(process, t, weighting).to(per_sample.dtype) * per_sample).mean()


# -- the GAN head of DMD2 ----------------------------------------------------------------------
class FeatureClassifier(nn.Module):
    """DMD2's GAN classifier: a small head on the fake-score network's features, ``(B, F) -> (B,)``
    real/fake logits (the paper puts it on the U-Net bottleneck of the fake network)."""

    def __init__(self, in_features: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats.flatten(1)).squeeze(-1)


def features_of(denoiser: nn.Module) -> Any:
    """The ``features(x_t, t, cond) -> (B, F)`` callable of a denoiser or its wrapped network, or
    ``None``."""
    feats = getattr(denoiser, "features", None)
    if feats is None:
        feats = getattr(getattr(denoiser, "net", None), "features", None)
    return feats


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` are constants for autograd inside the block (the graph built
    there sends no gradient to them); their ``requires_grad`` flags are restored after."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


# -- the method ---------------------------------------------------------------------------------
@METHODS.register("dmd")
class DMD(GenerativeMethod):
    """DMD / DMD2 (Yin et al. 2024, arXiv:2311.18828, arXiv:2405.14867): a few-step generator
    trained by distribution matching against a frozen teacher, with a fake-score network.

    ``student``: the generator (a ``Denoiser``; its ``x0`` prediction at ``t_max`` is the
    one-step sample); ``teacher``: the real score (frozen, excluded from checkpoints).

    Parameters (config ``params``):

    * ``variant``: ``"dmd2"`` (default) or ``"dmd"``: only sets the default of ``fake_updates``;
    * ``generator_steps`` (1-8): the generator's steps, on ``process.timesteps(K)[:-1]``;
    * ``fake_updates``: fake-score updates per generator update (default 5 for DMD2, 1 for DMD);
    * ``guidance``: classifier-free guidance scale of the real score (conditional teachers);
    * ``t_range``: ``(low, high)`` where real and fake scores are compared (default
      ``(0.02, 0.98)`` within the process interval); ``fake_t_range``: where the fake network is
      trained (default: ``t_range``); ``fake_weighting``: ``none``/``snr``/``min_snr``;
    * ``backward_simulation`` (default true): multi-step training inputs from the generator's
      own rollout; false: real data ``batch["x"]`` noised to the step's time;
    * ``normalize`` (default true): DMD's per-sample gradient normalisation;
    * ``regression_weight``, ``pairs``, ``pair_steps``, ``pair_solver``, ``pair_seed``: DMD's
      regression on ``pairs`` teacher ODE pairs made at construction (MSE);
    * ``gan_weight``, ``gan_kind``, ``r1_weight``, ``gan_hidden``: DMD2's GAN head;
    * ``fake_init``: ``"teacher"`` (a copy, default), ``"student"``, or a ``Denoiser``;
    * ``max_sample_steps``: the most steps :meth:`sample` accepts (default 64).
    """

    players = ("fake_score", "generator")

    def __init__(self, student: nn.Module, teacher: nn.Module, *, variant: str = "dmd2", generator_steps: int = 1,
                 fake_updates: int | None = None, guidance: float | None = None,
                 t_range: tuple[float, float] | list[float] | None = None,
                 fake_t_range: tuple[float, float] | list[float] | None = None, fake_weighting: str = "none",
                 backward_simulation: bool = True, normalize: bool = True,
                 regression_weight: float = 0.0, pairs: int = 0, pair_steps: int = 32, pair_solver: str = "heun",
                 pair_seed: int = 0, gan_weight: float = 0.0, gan_kind: str = "nonsaturating",
                 r1_weight: float = 0.0, gan_hidden: int = 128, fake_init: str | nn.Module = "teacher",
                 max_sample_steps: int = 64) -> None:
        super().__init__()
        if variant not in ("dmd", "dmd2"):
            raise ConfigError(f"dmd: variant must be 'dmd' or 'dmd2', got {variant!r}.")
        _check_int("generator_steps", generator_steps, 1, 8)
        fake_updates = (5 if variant == "dmd2" else 1) if fake_updates is None else fake_updates
        _check_int("fake_updates", fake_updates, 1, 100)
        _check_int("max_sample_steps", max_sample_steps, 1, 10_000)
        for key, value in (("regression_weight", regression_weight), ("gan_weight", gan_weight), ("r1_weight", r1_weight)):
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"dmd: {key} must be a number >= 0, got {value!r}.")
        if guidance is not None and not (isinstance(guidance, (int, float)) and guidance >= 0):
            raise ConfigError(f"dmd: guidance must be a number >= 0 (1: no guidance), got {guidance!r}.")
        if fake_weighting not in FAKE_WEIGHTINGS:
            raise ConfigError(f"dmd: fake_weighting must be one of {', '.join(FAKE_WEIGHTINGS)}; got {fake_weighting!r}.")
        for name, net in (("student", student), ("teacher", teacher)):
            if not (hasattr(net, "predict") and hasattr(net, "process")):
                raise ConfigError(f"dmd: the {name} must be a Denoiser (with .predict and .process); got {type(net).__name__}.")

        self.generator = student
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.variant, self.generator_steps, self.fake_updates = variant, int(generator_steps), int(fake_updates)
        self.guidance = None if guidance is None else float(guidance)
        self.fake_weighting, self.backward_simulation, self.normalize = fake_weighting, bool(backward_simulation), bool(normalize)
        self.regression_weight, self.gan_weight, self.r1_weight = float(regression_weight), float(gan_weight), float(r1_weight)
        self.gan_kind, self.max_sample_steps = gan_kind, int(max_sample_steps)

        score_process = teacher.process
        self.t_range = _interval("t_range", t_range, score_process)
        self.fake_t_range = self.t_range if fake_t_range is None else _interval("fake_t_range", fake_t_range, score_process)

        self.fake = self._make_fake(fake_init, student, teacher)
        self.generator_times = self.generator.process.timesteps(self.generator_steps)[:-1]
        self._check_generator_endpoint()

        self.gan_head: FeatureClassifier | None = None
        if self.gan_weight > 0:
            self.gan_head = self._make_gan_head(int(gan_hidden))
            from .gan import GAN_KINDS

            if gan_kind not in GAN_KINDS:
                raise ConfigError(f"dmd: gan_kind must be one of {', '.join(GAN_KINDS)}; got {gan_kind!r}.")

        if self.regression_weight > 0:
            self._make_pairs(int(pairs), int(pair_steps), pair_solver, int(pair_seed))
        elif pairs:
            raise ConfigError("dmd: pairs > 0 needs regression_weight > 0 (the pairs only feed DMD's regression loss).")

    # -- construction helpers ---------------------------------------------------------------
    def _make_fake(self, fake_init: str | nn.Module, student: nn.Module, teacher: nn.Module) -> nn.Module:
        if isinstance(fake_init, nn.Module):
            fake = fake_init
        elif fake_init == "teacher":
            # a guided teacher (samplers.Guided) is copied without its guidance: the fake score
            # models the generator's own distribution
            fake = copy.deepcopy(getattr(teacher, "denoiser", teacher) if hasattr(teacher, "scale") else teacher)
        elif fake_init == "student":
            fake = copy.deepcopy(student)
        else:
            raise ConfigError(f"dmd: fake_init must be 'teacher' or 'student' (or a Denoiser), got {fake_init!r}.")
        fake.requires_grad_(True)
        fake.train()
        if not any(True for _ in fake.parameters()):
            raise ConfigError(
                f"dmd: the fake-score network (fake_init={fake_init if isinstance(fake_init, str) else 'module'!r}) has no "
                "trainable parameters (an analytic teacher has none); use fake_init='student' or give a network."
            )
        if not (hasattr(fake, "predict") and hasattr(fake, "process")):
            raise ConfigError(f"dmd: the fake-score network must be a Denoiser; got {type(fake).__name__}.")
        if fake.process.describe() != teacher.process.describe():
            raise ConfigError(
                f"dmd: the fake-score network's process {fake.process.describe()} differs from the teacher's "
                f"{teacher.process.describe()}; real and fake scores must be compared on one process."
            )
        return fake

    def _check_generator_endpoint(self) -> None:
        a, _ = self.generator.process.alpha_sigma(self.generator_times[:1].double())
        if self.generator.prediction == "eps" and float(a[0]) < 1e-3:
            raise ConfigError(
                f"dmd: a generator predicting 'eps' cannot give x0 at t_max, where alpha = {float(a[0]):.1e} "
                "(x0 = (x_t - sigma eps) / alpha); "
                "use an 'x0', 'v' or 'velocity' prediction for the generator."
            )

    def _sample_shape(self) -> tuple[int, ...]:
        shape = getattr(self.generator, "sample_shape", None)
        if shape is None:
            raise ConfigError("dmd: the generator Denoiser needs its sample_shape to draw samples from noise.")
        return tuple(shape)

    def _make_gan_head(self, hidden: int) -> FeatureClassifier:
        feats = features_of(self.fake)
        if feats is None:
            raise ConfigError(
                f"dmd: gan_weight > 0 needs a fake-score network with features(x_t, t, cond) -> (B, F); "
                f"{type(getattr(self.fake, 'net', self.fake)).__name__} has none."
            )
        shape = self._sample_shape()
        ref = next(self.fake.parameters())
        with torch.no_grad():
            x = torch.zeros((2, *shape), dtype=ref.dtype, device=ref.device)
            cond = torch.zeros(2, dtype=torch.long, device=ref.device) if getattr(self.fake, "num_classes", None) else None
            f = feats(x, torch.full((2,), 0.5, dtype=ref.dtype, device=ref.device), cond)
        return FeatureClassifier(int(f[0].numel()), hidden).to(device=ref.device, dtype=ref.dtype)

    def _make_pairs(self, pairs: int, steps: int, solver: str, seed: int) -> None:
        _check_int("pairs", pairs, 1, 10**7)
        if self.generator.process.describe() != self.teacher.process.describe():
            raise ConfigError("dmd: the regression loss needs the generator and the teacher on the same process "
                              "(the pairs start from the teacher's prior noise).")
        from ..samplers import ode_pairs

        shape = self._sample_shape()
        gen = torch.Generator().manual_seed(seed)
        ref = next(self.generator.parameters())
        x_T = self.teacher.process.prior((pairs, *shape), generator=gen, dtype=ref.dtype).to(ref.device)
        with torch.no_grad():
            out = ode_pairs(self.teacher, x_T, steps=steps, solver=solver)
        # remade identically at construction: not saved in checkpoints
        self.register_buffer("pairs_noise", out["x_T"].detach(), persistent=False)
        self.register_buffer("pairs_x0", out["x_0"].detach(), persistent=False)

    # -- players -------------------------------------------------------------------------------
    def parameters_of(self, player: str) -> list[nn.Parameter]:
        if player == "fake_score":
            mods = [self.fake] + ([self.gan_head] if self.gan_head is not None else [])
            return [p for m in mods for p in m.parameters() if p.requires_grad]
        if player == "generator":
            return [p for p in self.generator.parameters() if p.requires_grad]
        raise ConfigError(f"dmd: unknown player {player!r}; the players are {', '.join(self.players)}.")

    def updates(self, player: str) -> int:
        return self.fake_updates if player == "fake_score" else 1

    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if player not in ("fake_score", "generator"):
            raise ConfigError(f"dmd: unknown player {player!r}; the players are {', '.join(self.players)}.")
        with self.drawing(player, step):  # per-sample draws for the global batch, this rank's slice
            return self.fake_loss(batch, step) if player == "fake_score" else self.generator_loss(batch, step)

    # -- the generator's samples --------------------------------------------------------------
    def _batch(self, batch: dict[str, torch.Tensor]) -> tuple[int, torch.device, torch.Tensor | None]:
        x = batch.get("x")
        if x is None:
            x = next(v for v in batch.values() if torch.is_tensor(v))
        n, device = x.shape[0], x.device
        classes = getattr(self.generator, "num_classes", None)
        if not classes:  # an unconditional generator: labels in the batch are ignored
            return n, device, None
        cond = batch.get("y")
        if cond is None:
            cond = self.draw.randint(0, classes, n, device=device)
        return n, device, cond

    def generate(self, n: int, cond: torch.Tensor | None, device: torch.device, *,
                 real: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training samples ``(n, ...)`` of the generator (with grad, unless called under
        ``no_grad``) and the ``(n,)`` time each was denoised from.

        One step: ``G(prior, t_max)``. ``K`` steps: each sample gets a random step
        ``k in [0, K)``; its input is the generator's own rollout to ``t_k`` (backward
        simulation, no grad) or, without it, ``real`` data noised to ``t_k``."""
        gen, times = self.generator, self.generator_times.to(device)
        dtype = next(gen.parameters()).dtype
        x = self.draw.prior(gen.process, n, self._sample_shape(), device=device, dtype=dtype)
        k = self.draw.randint(0, self.generator_steps, n, device=device) if self.generator_steps > 1 else torch.zeros(n, dtype=torch.long, device=device)
        t_in = times[k].to(dtype)
        if self.generator_steps > 1:
            if self.backward_simulation:
                # the re-noising draws of every step, whatever this rank's largest k (same draws on every rank)
                noise = [self.draw.randn_like(x) for _ in range(self.generator_steps - 1)]
                states = [x]
                with torch.no_grad():
                    for i in range(int(k.max())):
                        x0 = gen.predict(states[-1], times[i].expand(n).to(dtype), cond, "x0")
                        states.append(gen.process.add_noise(x0, noise[i], times[i + 1].expand(n).to(dtype)))
                x = torch.stack(states)[k, torch.arange(n, device=device)]
            else:
                if real is None:
                    raise ConfigError("dmd: backward_simulation=false needs real data batch['x'] to noise as the generator's input.")
                noised = gen.process.add_noise(real.to(dtype), self.draw.randn_like(x), t_in)
                x = torch.where((k == 0).reshape(n, *([1] * (x.dim() - 1))), x, noised)
        return gen.predict(x, t_in, cond, "x0"), t_in

    def real_fake_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(real_x0, fake_x0)``: the teacher's (with classifier-free guidance) and the fake
        network's ``x0`` predictions at ``(x_t, t)``, no grad."""
        with torch.no_grad():
            real = self.teacher.predict(x_t, t, cond, "x0")
            if self.guidance is not None and self.guidance != 1.0 and cond is not None:
                uncond = self.teacher.predict(x_t, t, None, "x0")
                real = uncond + self.guidance * (real - uncond)
            fake = self.fake.predict(x_t, t, cond, "x0")
        return real, fake

    def _times(self, n: int, interval: tuple[float, float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self.draw.times(self.teacher.process, n, low=interval[0], high=interval[1], device=device, dtype=dtype)

    # -- losses ---------------------------------------------------------------------------------
    def generator_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator's loss: distribution matching (+ regression, + GAN)."""
        n, device, cond = self._batch(batch)
        x_gen, _ = self.generate(n, cond, device, real=batch.get("x"))
        t = self._times(n, self.t_range, device, x_gen.dtype)
        x_t = self.teacher.process.add_noise(x_gen.detach(), self.draw.randn_like(x_gen), t)
        real_x0, fake_x0 = self.real_fake_x0(x_t, t, cond)
        if not torch.isfinite(fake_x0).all():
            raise NonFiniteLossError(
                f"dmd: the fake_score network's prediction is not finite (NaN/inf) at step {step}; the fake-score "
                "player diverged (lower its learning rate or fake_updates). The last good checkpoint is kept."
            )
        grad = dmd_generator_grad(x_gen, real_x0, fake_x0, normalize=self.normalize)
        dm = dmd_generator_loss(x_gen, grad)
        loss = dm
        logs = {"dm": float(dm.detach()), "grad_norm": float(grad.flatten(1).norm(dim=1).mean())}
        return self.auxiliary_generator_terms(loss, logs, x_gen, cond, n, device), logs

    def auxiliary_generator_terms(self, loss: torch.Tensor, logs: dict[str, float], x_gen: torch.Tensor,
                                  cond: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        """``loss`` plus the generator's optional terms: DMD's regression on teacher ODE pairs
        and DMD2's GAN term from the (frozen) fake network's head; their values go to ``logs``."""
        if self.regression_weight > 0:
            reg = self.regression_loss(n, device)
            loss = loss + self.regression_weight * reg
            logs["regression"] = float(reg.detach())
        if self.gan_head is not None:
            from .gan import g_loss

            with frozen(self.fake, self.gan_head):
                logits, _ = self._logits(x_gen, cond)
            adv = g_loss(logits, self.gan_kind)
            loss = loss + self.gan_weight * adv
            logs["gan"] = float(adv.detach())
        return loss

    def regression_loss(self, n: int, device: torch.device) -> torch.Tensor:
        """DMD's regression loss: mean squared error between the one-step generator on the
        stored teacher noises and the teacher's ODE samples from them (a random batch of
        ``n`` pairs)."""
        idx = self.draw.randint(0, self.pairs_noise.shape[0], n, device=self.pairs_noise.device)
        x_T, x0 = self.pairs_noise[idx].to(device), self.pairs_x0[idx].to(device)
        t = self.generator_times[0].to(device=device, dtype=x_T.dtype).expand(n)
        return ((self.generator.predict(x_T, t, None, "x0") - x0) ** 2).mean()

    def fake_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The fake-score player's loss: denoising on stop-grad generator samples (+ the GAN
        classifier's loss and R1)."""
        n, device, cond = self._batch(batch)
        with torch.no_grad():
            x_gen, _ = self.generate(n, cond, device, real=batch.get("x"))
        t = self._times(n, self.fake_t_range, device, x_gen.dtype)
        dsm = fake_score_loss(self.fake, x_gen, t, self.draw.randn_like(x_gen), cond=cond, weighting=self.fake_weighting)
        loss = dsm
        logs = {"denoising": float(dsm.detach())}
        if self.gan_head is not None:
            from .gan import d_loss, r1_penalty

            real = batch.get("x")
            if real is None:
                raise ConfigError("dmd: gan_weight > 0 needs real data samples batch['x'] for the GAN classifier.")
            real_logits, real_t = self._logits(real.to(x_gen.dtype), cond, track=self.r1_weight > 0)
            fake_logits, _ = self._logits(x_gen, cond)
            disc = d_loss(real_logits, fake_logits, self.gan_kind)
            loss = loss + self.gan_weight * disc
            logs["gan_d"] = float(disc.detach())
            if self.r1_weight > 0:
                r1 = r1_penalty(real_logits, real_t)
                loss = loss + self.r1_weight * r1
                logs["r1"] = float(r1.detach())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"dmd: the fake_score player's loss is not finite ({float(loss.detach())}) at step {step}; the fake-score "
                "network diverged (lower its learning rate or fake_updates). The last good checkpoint is kept."
            )
        return loss, logs

    def _logits(self, x: torch.Tensor, cond: torch.Tensor | None, *, track: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """GAN classifier logits ``(B,)`` of clean samples ``x``, noised to a random time in
        ``fake_t_range`` (DMD2's diffusion GAN) and read through the fake network's features,
        and the noised input ``x_t`` (requiring grad with ``track``, for R1 on what the
        classifier sees)."""
        t = self._times(x.shape[0], self.fake_t_range, x.device, x.dtype)
        x_t = self.teacher.process.add_noise(x, self.draw.randn_like(x), t)
        if track:
            x_t = x_t.detach().requires_grad_(True)
        return self.gan_head(features_of(self.fake)(x_t, t, cond)), x_t

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(n, *sample_shape)`` samples in ``steps`` generator evaluations: predict ``x0`` at
        ``t_max``, re-noise it to the next of ``process.timesteps(steps)`` and predict again
        (consistency-model multistep sampling, Song et al. 2023; DMD2). ``steps`` equal to
        ``generator_steps`` uses the training times; any other count also works."""
        _check_int("steps", steps, 1, self.max_sample_steps)
        gen = self.generator
        dtype = next(gen.parameters()).dtype
        times = gen.process.timesteps(steps)[:-1].to(device=device, dtype=dtype)
        x = gen.process.prior((n, *self._sample_shape()), generator=generator, device=device, dtype=dtype)
        x0 = x
        for i in range(steps):
            x0 = gen.predict(x, times[i].expand(n), cond, "x0")
            if i + 1 < steps:
                eps = torch.randn(x0.shape, generator=generator, device=device, dtype=dtype)
                x = gen.process.add_noise(x0, eps, times[i + 1].expand(n))
        return x0

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        teacher_calls = 2 if self.guidance is not None and self.guidance != 1.0 else 1
        out.update({
            "method": "dmd", "variant": self.variant, "nfe_per_sample": self.generator_steps,
            "generator_steps": self.generator_steps, "fake_updates": self.fake_updates,
            "t_range": list(self.t_range), "fake_t_range": list(self.fake_t_range), "guidance": self.guidance,
            "teacher_nfe_per_generator_update": teacher_calls,
            "regression_weight": self.regression_weight, "gan_weight": self.gan_weight,
        })
        return out


def _check_int(key: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"dmd: {key} must be an integer in [{low}, {high}], got {value!r}.")


def _interval(key: str, value: Any, process: Process) -> tuple[float, float]:
    """A ``(low, high)`` time interval inside ``[process.t_min, process.t_max]``; default
    ``(0.02, 0.98)`` clipped to it (DMD2 compares scores on 2%-98% of the schedule)."""
    if value is None:
        return max(0.02, process.t_min), min(0.98, process.t_max)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"dmd: {key} must be a pair (low, high) of times in [0, 1], got {value!r}.") from None
    try:
        check_interval(low, high)
    except ConfigError as exc:
        raise ConfigError(f"dmd: {key}: {exc}") from None
    if low < process.t_min or high > process.t_max:
        raise ConfigError(f"dmd: {key} = ({low}, {high}) leaves the process interval [{process.t_min}, {process.t_max}].")
    return low, high
