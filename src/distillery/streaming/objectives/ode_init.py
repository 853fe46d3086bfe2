"""ODE-pair initialisation of a causal few-step student from a bidirectional teacher.

CausVid (Yin et al. 2025, arXiv:2412.07772, Sec. 4.2) and Self-Forcing (Huang et al. 2025,
arXiv:2506.08009) start the causal student from the teacher's deterministic trajectories: the
teacher solves its probability-flow ODE from noise ``x_T`` to a video ``x_0``, recording the state
at the student's step times ``t_0 = t_max > t_1 > ... > t_{K-1}``; the student, with teacher
forcing (the teacher's clean frames as the context of earlier chunks), regresses ``x_0`` from the
recorded state of each chunk at an independently drawn step ``k``::

    L = E_{pair, k_c} || G_x0(x_{t_k}^{(c)}, t_k | x_0^{(< c)}) - x_0 ||^2

The pairs (``pairs`` videos, ``pair_steps`` solver steps per interval) are made once at
construction from a seeded generator and kept out of checkpoints (remade identically).
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ...generative.method import METHODS, GenerativeMethod, drawn
from ...generative.samplers import ode_pairs
from ..rollout import chunk_schedule, rollout, step_times


@METHODS.register("streaming_ode_init")
class StreamingODEInit(GenerativeMethod):
    """Player ``student``: regression on teacher ODE pairs (see the module docstring).

    Args:
        student: the causal student Denoiser (``video_transformer``, block-causal).
        teacher: the bidirectional teacher Denoiser.
        steps: the student's denoising steps per chunk ``K``.
        pairs: teacher trajectories made at construction.
        pair_steps: teacher solver steps per interval between the student's times.
        pair_solver: ``euler``, ``ddim`` or ``heun``.
        pair_seed: seed of the pairs' noise.
        batch_pairs: trajectories per update (default: the data batch size).
    """

    players = ("student",)

    def __init__(self, student: Any, teacher: Any, *, steps: int = 2, pairs: int = 256, pair_steps: int = 8,
                 pair_solver: str = "euler", pair_seed: int = 0, seed: int = 0) -> None:
        super().__init__()
        if teacher is None:
            raise ConfigError("method 'streaming_ode_init' regresses a teacher's ODE pairs; give a teacher.")
        if not hasattr(student.net, "denoise_chunk") or student.net.attention == "bidirectional":
            raise ConfigError("method 'streaming_ode_init': the student must be a causal video_transformer.")
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 16:
            raise ConfigError(f"method 'streaming_ode_init': steps must be an integer in [1, 16], got {steps!r}.")
        if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
            raise ConfigError(f"method 'streaming_ode_init': pairs must be a positive integer, got {pairs!r}.")
        self.student, self.teacher = student, teacher
        self.teacher.requires_grad_(False).eval()
        self.steps, self.seed = int(steps), int(seed)
        shape = tuple(student.sample_shape)
        ref = next(student.parameters())
        grid = torch.cat([step_times(teacher.process, steps, dtype=torch.float64),
                          torch.tensor([float(teacher.process.timesteps(1)[-1])], dtype=torch.float64)])
        gen = torch.Generator().manual_seed(int(pair_seed))
        x_T = teacher.process.prior((pairs, *shape), generator=gen, dtype=ref.dtype)
        with torch.no_grad():
            out = ode_pairs(teacher, x_T.to(ref.device), steps=int(pair_steps), solver=pair_solver, times=grid)
        # (K + 1, P, T, C, H, W): the states at t_0 .. t_{K-1} and the endpoint x_0
        self.register_buffer("trajectory", out["trajectory"].detach(), persistent=False)
        self.register_buffer("times", grid.to(ref.dtype), persistent=False)

    def parameters_of(self, player: str) -> list[torch.nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        n = batch["x"].shape[0]
        net = self.student.net
        device = batch["x"].device
        idx = self.draw.randint(0, self.trajectory.shape[1], n, device=self.trajectory.device)
        T = self.trajectory.shape[2]
        chunks = T // net.chunk
        k = self.draw.randint(0, self.steps, n * chunks, device=self.trajectory.device).reshape(n, chunks)
        k_frames = k.repeat_interleave(net.chunk, 1)  # (n, T)
        states = self.trajectory[:, idx]  # (K + 1, n, T, ...)
        x_in = states[k_frames, torch.arange(n)[:, None], torch.arange(T)[None, :]]  # (n, T, ...): chunk c at its step k
        t_in = self.times[k_frames]  # (n, T)
        x0 = states[-1]
        pred = net(x_in.to(device), t_in.to(device), None, context=x0.to(device))
        x0_hat = self.student.process.convert(pred, x_in.to(device), t_in.to(device), self.student.prediction, "x0")
        loss = (x0_hat - x0.to(device)).pow(2).mean()
        return loss, {"regression": float(loss.detach())}

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: Any = None, generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> torch.Tensor:
        chunks = self.student.sample_shape[0] // self.student.net.chunk
        return rollout(self.student, n, chunks, chunk_schedule("uniform", chunks, steps), cond=cond, device=device).video

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "streaming_ode_init", "steps": self.steps, "pairs": int(self.trajectory.shape[1])})
        return out
