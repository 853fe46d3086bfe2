"""Transition Matching Distillation (TMD): W. Nie, J. Berner, N. Ma, C. Liu, S. Xie, A. Vahdat,
2026, "Transition Matching Distillation for Fast Video Generation", arXiv:2601.09881.

The student (:class:`~distillery.generative.trunk_head.TrunkHeadDenoiser`) makes ``K`` outer
transitions ``x_{t_k} -> x_{t_{k+1}}`` on ``t_0 = t_max > ... > t_K = t_min``; within each, its
trunk runs once and its flow head ``N`` times (an inner flow from noise to an ``x0`` sample of
the transition), and the next state is ``x_{t_{k+1}} = alpha(t_{k+1}) x0 + sigma(t_{k+1}) eps``
(the re-noising of DMD2's multi-step generator, :class:`~.dmd.DMD`). Training has two stages:

1. **head adaptation** (``adapt_steps`` generator updates): the head becomes a conditional flow
   towards the transition target by flow matching. With ``y_0`` the target of the outer state
   ``x_{t_k}``, ``z ~ N(0, I)``, ``s ~ U(0, 1)``, ``y_s = (1 - s) y_0 + s z``, ``m = trunk(x_{t_k},
   t_k)``::

       L_adapt = E || v(y_s, s | m) - (z - y_0) ||^2           (:func:`head_flow_matching_loss`)

   ``adapt_target="teacher"`` (default): ``(x_{t_k}, y_0)`` are states of the teacher's ODE
   trajectories from the prior (``ode_pairs``) at the outer times and their ODE end points, so
   the head learns the teacher's flow map ``x_{t_k} -> x0`` [inferred: the paper adapts the head
   with a MeanFlow-style flow-map objective (TM-MeanFlow) towards its transition target; plain
   flow matching with the teacher's ODE end point is the simplification used here];
   ``"data"``: ``x_{t_k}`` is a data sample ``x`` noised to ``t_k`` and ``y_0 = x`` (a posterior
   sample: Difference Transition Matching, Shaul et al. 2025, arXiv:2506.23589);
2. **distribution matching** on the rollouts: DMD2 (:class:`~.dmd.DMD`, reused unchanged) with
   the generator's ``x0`` at a random outer step being the full head rollout (the gradient flows
   back through all ``N`` inner steps into head and trunk).

The fake-score player (DMD's denoising score matching on the generator's samples) trains from
the first step, so it already tracks the generator when stage 2 starts. Sampling is ``K``
network evaluations (transitions), each costing one trunk and ``N`` head passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ..denoisers import Denoiser, build_denoiser_net
from ..method import METHODS
from ..trunk_head import TrunkHeadDenoiser, linear_macs
from .dmd import DMD, _check_int

ADAPT_TARGETS = ("teacher", "data")


def head_flow_matching_loss(net: TrunkHeadDenoiser, x_t: torch.Tensor, t: torch.Tensor, y0: torch.Tensor, *,
                            cond: torch.Tensor | None = None, s: torch.Tensor | None = None,
                            z: torch.Tensor | None = None) -> torch.Tensor:
    """TMD stage 1: conditional flow matching of the flow head towards the transition target.

    ``x_t``: ``(B, D)`` outer states at times ``t`` ``(B,)``; ``y0``: ``(B, D)`` their targets;
    ``s``: ``(B,)`` inner times (default ``U(0, 1)``); ``z``: ``(B, D)`` inner noise (default
    ``N(0, I)``). Returns ``mean_b mean_d (v(y_s, s | m)_bd - (z - y0)_bd)^2`` with ``y_s = (1 - s)
    y0 + s z`` and ``m`` the trunk's features of ``(x_t, t)`` (trunk and head both get gradients).
    """
    y0 = y0.detach()
    if s is None:
        s = torch.rand(y0.shape[0], device=y0.device, dtype=y0.dtype)
    if z is None:
        z = torch.randn_like(y0)
    c = net.condition(net.features(x_t, t, cond))
    s_ = s.reshape(-1, *([1] * (y0.dim() - 1)))
    y_s = (1 - s_) * y0 + s_ * z
    return ((net.velocity(y_s, s, c) - (z - y0)) ** 2).mean()


@METHODS.register("tmd")
class TMD(DMD):
    """Transition Matching Distillation (Nie et al. 2026, arXiv:2601.09881): a trunk + flow-head
    student, its head adapted by flow matching (stage 1, ``adapt_steps`` steps), then DMD2 on the
    head rollouts (stage 2).

    ``student``: a ``Denoiser`` predicting ``x0`` around a
    :class:`~distillery.generative.trunk_head.TrunkHeadDenoiser`; ``teacher``: the frozen teacher
    (its score is DMD's real score, its ODE the stage-1 target). Keys:

    * ``generator_steps``: outer transitions ``K`` (default 2); ``inner_steps``: head Euler steps
      ``N`` per transition (default: the network's own);
    * ``adapt_steps``: stage-1 length in training steps; ``adapt_target``: ``"teacher"`` (ODE
      pairs) or ``"data"``; ``adapt_pairs``, ``adapt_pair_steps``, ``adapt_solver``,
      ``adapt_seed``: the teacher trajectories (solver steps per outer interval);
    * ``fake``: the fake-score network ``{"name": ..., "params": {...}, "prediction": "x0"}`` (a
      registered denoiser; default ``mlp2d`` with ``hidden: [128, 128, 128]``); the TMD student
      is stochastic, so it is never copied as the fake score;
    * the DMD2 keys ``variant``, ``fake_updates``, ``t_range``, ``fake_t_range``,
      ``fake_weighting``, ``backward_simulation``, ``normalize``, ``guidance``,
      ``max_sample_steps`` (see :class:`~.dmd.DMD`).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, generator_steps: int = 2, inner_steps: int | None = None,
                 adapt_steps: int = 500, adapt_target: str = "teacher", adapt_pairs: int = 4096,
                 adapt_pair_steps: int = 8, adapt_solver: str = "heun", adapt_seed: int = 0,
                 fake: dict[str, Any] | None = None, variant: str = "dmd2", fake_updates: int | None = None,
                 t_range: tuple[float, float] | list[float] | None = None,
                 fake_t_range: tuple[float, float] | list[float] | None = None, fake_weighting: str = "none",
                 backward_simulation: bool = True, normalize: bool = True, guidance: float | None = None,
                 max_sample_steps: int = 64) -> None:
        net = getattr(student, "net", None)
        if not isinstance(net, TrunkHeadDenoiser):
            raise ConfigError(f"tmd: the student network must be a trunk_head2d (TrunkHeadDenoiser); got {type(net).__name__}.")
        if getattr(student, "prediction", None) != "x0":
            raise ConfigError(f"tmd: the student must predict 'x0' (its forward is a head rollout to an x0 sample); "
                              f"got student.prediction = {getattr(student, 'prediction', None)!r}.")
        if adapt_target not in ADAPT_TARGETS:
            raise ConfigError(f"tmd: adapt_target must be one of {', '.join(ADAPT_TARGETS)}; got {adapt_target!r}.")
        _check_int("adapt_steps", adapt_steps, 0, 10**9)
        if inner_steps is not None:
            _check_int("inner_steps", inner_steps, 1, 256)
            net.inner_steps = int(inner_steps)
        super().__init__(student, teacher, variant=variant, generator_steps=generator_steps, fake_updates=fake_updates,
                         guidance=guidance, t_range=t_range, fake_t_range=fake_t_range, fake_weighting=fake_weighting,
                         backward_simulation=backward_simulation, normalize=normalize,
                         fake_init=self._build_fake(fake, student, teacher), max_sample_steps=max_sample_steps)
        self.adapt_steps, self.adapt_target = int(adapt_steps), adapt_target
        if self.adapt_steps > 0 and adapt_target == "teacher":
            self._make_adapt_pairs(int(adapt_pairs), int(adapt_pair_steps), adapt_solver, int(adapt_seed))

    @staticmethod
    def _build_fake(spec: dict[str, Any] | None, student: nn.Module, teacher: nn.Module) -> Denoiser:
        spec = {"name": "mlp2d", "params": {"hidden": [128, 128, 128]}} if spec is None else dict(spec)
        if not isinstance(spec, dict) or "name" not in spec or set(spec) - {"name", "params", "prediction"}:
            raise ConfigError(f"tmd: fake must be {{name, params, prediction}} naming a registered denoiser; got {spec!r}.")
        prediction = spec.pop("prediction", "x0")
        shape = tuple(student.sample_shape)
        net = build_denoiser_net(spec, shape, student.num_classes)
        if isinstance(net, TrunkHeadDenoiser):
            raise ConfigError("tmd: the fake-score network must be a deterministic denoiser, not trunk_head2d.")
        return Denoiser(net, teacher.process, prediction, shape, student.num_classes).to(next(student.parameters()).device)

    def _make_adapt_pairs(self, pairs: int, steps: int, solver: str, seed: int) -> None:
        _check_int("adapt_pairs", pairs, 1, 10**7)
        _check_int("adapt_pair_steps", steps, 1, 10_000)
        if self.generator.process.describe() != self.teacher.process.describe():
            raise ConfigError("tmd: adapt_target 'teacher' needs the student and the teacher on the same process.")
        from ..samplers import ode_pairs

        gen = torch.Generator().manual_seed(seed)
        ref = next(self.generator.parameters())
        x_T = self.teacher.process.prior((pairs, *self._sample_shape()), generator=gen, dtype=ref.dtype).to(ref.device)
        times = self.generator.process.timesteps(self.generator_steps)
        out = ode_pairs(self.teacher, x_T, steps=steps, solver=solver, times=times)
        # (K, P, ...) states at the outer times and (P, ...) end points; remade at construction
        self.register_buffer("adapt_states", out["trajectory"][:-1].detach(), persistent=False)
        self.register_buffer("adapt_x0", out["x_0"].detach(), persistent=False)

    # -- stage 1 ---------------------------------------------------------------------------------
    def adapt_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage 1: :func:`head_flow_matching_loss` on ``n`` (outer state, target) pairs at random
        outer steps."""
        n, device, cond = self._batch(batch)
        times = self.generator_times.to(device)
        k = self.draw.randint(0, self.generator_steps, n, device=device)
        if self.adapt_target == "teacher":
            idx = self.draw.randint(0, self.adapt_x0.shape[0], n, device=self.adapt_x0.device)
            x_t = self.adapt_states[k.to(self.adapt_states.device), idx].to(device)
            y0 = self.adapt_x0[idx].to(device)
            cond = None  # the pairs are unconditional teacher trajectories
        else:
            x = batch.get("x")
            if x is None:
                raise ConfigError("tmd: adapt_target 'data' needs data samples batch['x'].")
            y0 = x.to(next(self.generator.parameters()).dtype)
            x_t = self.generator.process.add_noise(y0, self.draw.randn_like(y0), times[k].to(y0.dtype))
        t = times[k].to(x_t.dtype)
        s, z = self.draw.rand(n, device=device, dtype=y0.dtype), self.draw.randn_like(y0)
        loss = head_flow_matching_loss(self.generator.net, x_t, t, y0, cond=cond, s=s, z=z)
        return loss, {"adapt": float(loss.detach())}

    def generator_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage 1 (``step < adapt_steps``): the head's flow matching; afterwards DMD2 on rollouts."""
        if step < self.adapt_steps:
            return self.adapt_loss(batch, step)
        return super().generator_loss(batch, step)

    # -- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(n, ...)`` samples in ``steps`` outer transitions (each one trunk pass and
        ``inner_steps`` head passes); the inner noise is drawn from ``generator`` too."""
        with self.generator.net.noise_from(generator):
            return super().sample(n, steps, cond=cond, generator=generator, device=device)

    def macs_per_sample(self, steps: int | None = None) -> float:
        """Linear-layer multiply-adds per sample of :meth:`sample` in ``steps`` (default
        ``generator_steps``) transitions (:func:`~distillery.generative.trunk_head.linear_macs`)."""
        steps = self.generator_steps if steps is None else steps
        ref = next(self.generator.parameters())
        return linear_macs(self.generator, lambda: self.sample(8, steps, device=ref.device), 8)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "tmd", "inner_steps": self.generator.net.inner_steps, "adapt_steps": self.adapt_steps,
                    "adapt_target": self.adapt_target, "macs_per_sample": self.macs_per_sample()})
        return out
