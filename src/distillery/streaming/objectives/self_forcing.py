"""Self-Forcing: DMD on the causal student's own chunk-wise rollout.

Self-Forcing (Huang et al. 2025, arXiv:2506.08009) trains an autoregressive video diffusion
student on the videos it generates itself: chunk by chunk, with a KV cache, conditioning each
chunk on its own earlier output as at inference, and scores the *whole* rolled-out video with a
video-level loss, here distribution matching (DMD/DMD2, Yin et al. 2024, arXiv:2311.18828,
arXiv:2405.14867) against the bidirectional many-step teacher: per video ``x`` the generator's
gradient is ``(fake_x0 - real_x0) / w`` at a random noise level (see
:mod:`distillery.generative.objectives.dmd`), while a fake-score network learns the student's
video distribution. Gradients reach the student only at one exit step of the chunks that
:mod:`..rollout` marks (stochastic gradient truncation); the cache is a constant.

The rollout's ``context`` makes the paper's ablation: ``self`` (Self-Forcing), ``teacher``
(teacher forcing: real earlier chunks) or ``diffusion`` (diffusion forcing: noised real chunks),
with the same DMD loss on the generated chunks. ``prefix_chunks`` real chunks can start every
rollout (video continuation, so the ground truth of the rest is known).

This is the streaming engine's base method; the papers' variants (LiveTalk, SoulX-FlashTalk,
ASD, OmniForcing, Hybrid Forcing, Matrix-Game 3.0, Diagonal Distillation) are recipes on it.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ...generative.method import METHODS
from ...generative.objectives.dmd import DMD
from ..rollout import CONTEXTS, GRADS, chunk_schedule, conditions_of, rollout


@METHODS.register("self_forcing")
class SelfForcing(DMD):
    """DMD on chunk-wise rollouts; players ``fake_score`` and ``generator``.

    Args (besides DMD's, see :class:`~distillery.generative.objectives.dmd.DMD`; its
    ``generator_steps`` and ``backward_simulation`` are replaced by the rollout's):
        steps: denoising steps per chunk (``uniform`` schedule) or the base of ``diagonal``.
        schedule: ``"uniform"`` or ``"diagonal"`` (:func:`~..rollout.chunk_schedule`), over the
            generated chunks (the real prefix chunks take no steps).
        first, last: the diagonal schedule's steps for the first and last chunk.
        context: ``"self"``, ``"teacher"`` or ``"diffusion"`` (what the cache holds in training).
        context_noise: the noise level context chunks are appended at (training and sampling).
        grad: chunks with gradient: ``"all"``, ``"last"`` or ``"random"``.
        exit: ``"last"`` or ``"random"`` exit step.
        prefix_chunks: real chunks that start every rollout (training and evaluation).
        reinject: probability of re-injecting the student's own chunk into a teacher-forced
            context (Matrix-Game 3.0).
    """

    def __init__(self, student: Any, teacher: Any, *, steps: int = 2, schedule: str = "uniform",
                 first: int | None = None, last: int | None = None, context: str = "self", context_noise: float = 0.0,
                 grad: str = "all", exit: str = "random", prefix_chunks: int = 0, reinject: float = 0.0,
                 seed: int = 0, **dmd: Any) -> None:
        for key in ("generator_steps", "backward_simulation"):
            if key in dmd:
                raise ConfigError(f"method 'self_forcing': {key} is DMD's; a rollout's steps are set by steps/schedule.")
        net = getattr(student, "net", None)
        if not hasattr(net, "denoise_chunk") or net.attention == "bidirectional":
            raise ConfigError("method 'self_forcing': the student must be a causal video_transformer "
                              "(attention block_causal or frame_causal).")
        if context not in CONTEXTS:
            raise ConfigError(f"method 'self_forcing': context must be one of {', '.join(CONTEXTS)}; got {context!r}.")
        if grad not in GRADS or grad == "none":
            raise ConfigError(f"method 'self_forcing': grad must be 'all', 'last' or 'random'; got {grad!r}.")
        if not 0.0 <= float(context_noise) < 1.0:
            raise ConfigError(f"method 'self_forcing': context_noise must lie in [0, 1), got {context_noise!r}.")
        if not 0.0 <= float(reinject) <= 1.0:
            raise ConfigError(f"method 'self_forcing': reinject must lie in [0, 1], got {reinject!r}.")
        chunks = student.sample_shape[0] // net.chunk
        if not 0 <= int(prefix_chunks) < chunks:
            raise ConfigError(f"method 'self_forcing': prefix_chunks must be in [0, {chunks}); got {prefix_chunks!r}.")
        # the schedule spreads over the generated chunks; real prefix chunks take no steps
        schedule_steps = [0] * int(prefix_chunks) + chunk_schedule(schedule, chunks - int(prefix_chunks), steps,
                                                                   first=first, last=last)
        import inspect

        unknown = sorted(set(dmd) - set(inspect.signature(DMD.__init__).parameters))
        if unknown:
            raise ConfigError(f"method 'self_forcing': unknown parameter(s) {', '.join(unknown)}; it takes the rollout's "
                              "(steps, schedule, first, last, context, context_noise, grad, exit, prefix_chunks, reinject) "
                              "and DMD's (fake_updates, guidance, t_range, fake_t_range, normalize, gan_weight, ...).")
        super().__init__(student, teacher, generator_steps=min(max(schedule_steps), 8), **dmd)
        self.seed = int(seed)
        self.chunks, self.schedule_kind, self.schedule = chunks, schedule, schedule_steps
        self.context, self.context_noise, self.grad, self.exit = context, float(context_noise), grad, exit
        self.prefix_chunks, self.reinject = int(prefix_chunks), float(reinject)

    def _batch(self, batch: dict[str, torch.Tensor]) -> tuple[int, torch.device, Any]:
        x = batch["x"]
        return x.shape[0], x.device, conditions_of(batch, self.generator.net)

    def generate(self, n: int, cond: Any, device: torch.device, *,
                 real: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """A rolled-out video ``(n, T, C, H, W)`` (gradient at the marked chunks' exit step)."""
        r = rollout(self.generator, n, self.chunks, self.schedule, cond=cond, real=real, prefix_chunks=self.prefix_chunks,
                    context=self.context, context_noise=self.context_noise, grad=self.grad, exit=self.exit,
                    draw=self.draw, device=device, reinject=self.reinject)
        return r.video, None

    def regression_loss(self, n: int, device: torch.device) -> torch.Tensor:
        raise ConfigError("method 'self_forcing': use streaming_ode_init for regression on teacher pairs "
                          "(regression_weight must be 0).")

    def inference_schedule(self, chunks: int, steps: int, prefix_chunks: int | None = None) -> list[int]:
        """Steps per chunk of an inference stream of ``chunks`` chunks at ``steps`` steps: uniform
        here; a method with its own schedule (FFE, diagonal) overrides it. :meth:`stream` and the
        streaming trainer's evaluation read it."""
        return [int(steps)] * chunks

    @torch.no_grad()
    def stream(self, n: int, chunks: int, steps: int | list[int], *, cond: Any = None, real: torch.Tensor | None = None,
               prefix_chunks: int | None = None, device: str | torch.device = "cpu") -> Any:
        """Inference rollout of ``chunks`` chunks (any number, up to the position table): the
        student conditions on its own output (an integer ``steps`` through
        :meth:`inference_schedule`, or a schedule list); returns a :class:`~..rollout.Rollout`."""
        schedule = list(steps) if isinstance(steps, (list, tuple)) else self.inference_schedule(chunks, int(steps), prefix_chunks)
        prefix = self.prefix_chunks if prefix_chunks is None else prefix_chunks
        return rollout(self.generator, n, chunks, schedule, cond=cond, real=real, prefix_chunks=prefix,
                       context="self", context_noise=self.context_noise, device=device)

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: Any = None, generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> torch.Tensor:
        """``(n, T, C, H, W)`` videos streamed from scratch (no prefix) in ``steps`` steps per chunk."""
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        return self.stream(n, self.chunks, steps, cond=cond, prefix_chunks=0, device=device).video

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "self_forcing", "schedule": self.schedule, "nfe_per_sample": int(sum(self.schedule)),
                    "generator_steps": None, "context": self.context, "context_noise": self.context_noise,
                    "grad": self.grad, "exit": self.exit, "prefix_chunks": self.prefix_chunks, "reinject": self.reinject})
        return out
