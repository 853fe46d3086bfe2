"""FFP-300K's identity-propagation self-distillation regulariser (Huang et al. 2026, "FFP-300K:
Scaling First-Frame Propagation for Generalizable Video Editing", arXiv:2601.01720).

First-frame propagation (FFP): a video model conditioned on an (edited) first frame propagates
it through the rest of the video. The paper's FreeProp model adds, besides a dataset and
AST-RoPE, a *self-distillation* regulariser built on an **identity-propagation task**: when the
first frame is the source's own (unchanged), the output should reproduce the source video; the
paper uses the model's own representation of this identity task as the teacher of the edit task
(with an MMD loss on token relations) to keep long-term temporal stability and prevent drift.

Here (the streaming engine): the causal student continues a video from a real prefix chunk
(Self-Forcing DMD on its own rollout, :class:`~distillery.streaming.objectives.self_forcing.SelfForcing`,
``prefix_chunks >= 1``); the regulariser is the identity task on that very rollout: the prefix
*is* the source's own first chunk, so the student's continuation is regressed to the source
video's continuation (the data's ground truth) [inferred: the paper's loss is an MMD between
the identity branch's and the edit branch's token relations; with no edit in the miniature we
regress the outputs, and to the source frames rather than to an EMA's identity output]::

    L = L_DMD(x^) + lambda_id * || x^_{P F:} - x_{P F:} ||^2 / (numel),
    x^ = rollout_theta(prefix = x_{:P F})

(``P`` prefix chunks of ``F`` frames; the gradient reaches the student at the rollout's exit
steps only, as DMD's does). ``identity_weight = 0`` is plain Self-Forcing.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..generative.method import METHODS
from ..streaming.objectives.self_forcing import SelfForcing
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("ffp", "Huang et al. 2026, FFP-300K, arXiv:2601.01720", "ffp_sprites.yaml",
           "first-frame propagation with an identity-propagation regulariser: a streaming student continuing the "
           "source's own first chunk is regressed to the source, against temporal drift")
)


def identity_loss(video: torch.Tensor, source: torch.Tensor, prefix_frames: int) -> torch.Tensor:
    """``mean (video[:, P:] - source[:, P:])^2`` over the frames after the ``P = prefix_frames``
    prefix frames (the identity-propagation regression). ``video``, ``source``: ``(B, T, C, H, W)``
    (``source`` may be longer; its first ``T`` frames are used)."""
    if video.dim() != 5 or source.dim() != 5:
        raise ConfigError(f"ffp: identity_loss needs videos (B, T, C, H, W); got {tuple(video.shape)}, {tuple(source.shape)}.")
    t = video.shape[1]
    if not 0 <= prefix_frames < t or source.shape[1] < t:
        raise ConfigError(f"ffp: identity_loss needs 0 <= prefix_frames < {t} and a source of >= {t} frames; "
                          f"got prefix_frames {prefix_frames}, source {tuple(source.shape)}.")
    return (video[:, prefix_frames:] - source[:, prefix_frames:t].to(video.dtype)).pow(2).mean()


@METHODS.register("ffp")
class FirstFramePropagation(SelfForcing):
    """Self-Forcing from a real prefix plus the identity-propagation regulariser; players
    ``fake_score`` and ``generator`` (see the module docstring).

    Args (besides :class:`SelfForcing`'s; ``prefix_chunks`` must be >= 1):
        identity_weight: ``lambda_id >= 0``.
    """

    def __init__(self, student: Any, teacher: Any, *, identity_weight: float = 1.0, prefix_chunks: int = 1,
                 **params: Any) -> None:
        if isinstance(identity_weight, bool) or not isinstance(identity_weight, (int, float)) or identity_weight < 0:
            raise ConfigError(f"method 'ffp': identity_weight must be a number >= 0, got {identity_weight!r}.")
        if isinstance(prefix_chunks, bool) or not isinstance(prefix_chunks, int) or prefix_chunks < 1:
            raise ConfigError(f"method 'ffp': prefix_chunks must be >= 1 (the propagated first chunk), got {prefix_chunks!r}.")
        super().__init__(student, teacher, prefix_chunks=prefix_chunks, **params)
        self.identity_weight = float(identity_weight)
        self._source: torch.Tensor | None = None

    def generate(self, n: int, cond: Any, device: torch.device, *,
                 real: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        self._source = real  # the identity task's target (the rollout's own source videos)
        return super().generate(n, cond, device, real=real)

    def auxiliary_generator_terms(self, loss: torch.Tensor, logs: dict[str, float], x_gen: torch.Tensor,
                                  cond: Any, n: int, device: torch.device) -> torch.Tensor:
        loss = super().auxiliary_generator_terms(loss, logs, x_gen, cond, n, device)
        if self.identity_weight > 0:
            if self._source is None:
                raise ConfigError("method 'ffp': the identity regulariser needs the batch's source videos (batch['x']).")
            reg = identity_loss(x_gen, self._source, self.prefix_chunks * self.generator.net.chunk)
            loss = loss + self.identity_weight * reg
            logs["identity"] = float(reg.detach())
        self._source = None
        return loss

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "ffp", "identity_weight": self.identity_weight})
        return out


def ffp_config(*, identity_weight: float = 1.0, steps: int = 2, prefix_chunks: int = 1, **params: Any) -> dict[str, Any]:
    """The ``method`` fragment of an FFP run (``identity_weight=0``: plain Self-Forcing)."""
    return {"method": {"kind": "ffp", "params": {"identity_weight": identity_weight, "steps": steps,
                                                 "prefix_chunks": prefix_chunks, "context": "self", "grad": "all",
                                                 "exit": "random", **params}}}


__all__ = ["FirstFramePropagation", "ffp_config", "identity_loss"]
