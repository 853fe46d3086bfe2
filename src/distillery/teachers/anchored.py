"""Anchored teacher: the previous generation's prediction pulled toward a base teacher.

Recursive meta-distillation (Recursive Meta-Distillation: An Axiomatic Framework for
Iterative Knowledge Refinement, 2025; seed-paper #12) models multi-generation distillation as
distribution operators ``q_{t+1} = T(q_t)`` *anchored* to a base teacher ``p``. Two operator
families satisfy its axioms (the abstract fixes none; these are the two standard ones):

* arithmetic anchoring ``T(q) = lam p + (1 - lam) q`` (a mixture of distributions). Because KL
  is convex in its second argument, ``KL(p || T(q)) <= (1 - lam) KL(p || q)``, and
  ``q_t = p + (1 - lam)^t (q_0 - p)``;
* geometric anchoring ``T(q) ∝ p^lam q^(1 - lam)`` (a product of experts): in log space the
  centred log-ratio ``clr(q_t) - clr(p)`` shrinks by exactly ``(1 - lam)^t``.

Both contract to the unique fixed point ``p``. :class:`AnchoredTeacher` applies the operator
to two teachers per batch (the base teacher and, in a generation loop, a frozen copy of the
previous generation) and returns the logits ``log T(q)`` of the anchored target; a student
trained by KD (temperature 1) toward it is the projection of ``T(q_t)`` onto its model family.

The same targets are reachable with :class:`~.bank.TeacherBank` (``combine="probs"`` with
weights ``[lam, 1 - lam]`` is arithmetic; ``combine="logits"`` is geometric up to
normalisation); this class names the operator, keeps ``lam`` and the mode explicit, and
computes in log space (exact for ``lam`` in {0, 1}, no clamping).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import Batch
from ..errors import ConfigError, ShapeError
from ..registry import TEACHERS
from .base import BuildContext, Teacher


MODES = ("arithmetic", "geometric")

__all__ = ["MODES", "AnchoredTeacher", "anchor_log_probs", "anchor_probs", "check_anchoring"]


def check_anchoring(strength: float, mode: str) -> float:
    """Validate ``strength`` (in ``[0, 1]``) and ``mode``; returns ``strength`` as a float."""
    if mode not in MODES:
        raise ConfigError(f"anchoring mode must be one of {MODES}, got {mode!r}.")
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"anchoring strength must be in [0, 1], got {strength}.")
    return strength


def anchor_log_probs(anchor_log_p: torch.Tensor, log_q: torch.Tensor, strength: float, mode: str = "arithmetic") -> torch.Tensor:
    """``log T(q)`` from log-probabilities over the last dim (``[..., K]``, same shape).

    * ``"arithmetic"``: ``log(lam p + (1 - lam) q)``, computed as a log-sum-exp;
    * ``"geometric"``: ``log_softmax(lam log p + (1 - lam) log q)``, i.e. ``T(q) ∝ p^lam q^(1-lam)``.

    ``strength`` is ``lam`` in ``[0, 1]``; 0 returns ``log q`` (no anchoring), 1 returns ``log p``.
    Inputs must be normalised log-probabilities (``log_softmax`` of logits).
    """
    lam = check_anchoring(strength, mode)
    if anchor_log_p.shape != log_q.shape:
        raise ShapeError(
            f"anchoring: the base teacher gives shape {list(anchor_log_p.shape)} but the current "
            f"generation gives {list(log_q.shape)}; both must be distributions over the same classes."
        )
    if lam == 0.0:
        return log_q
    if lam == 1.0:
        return anchor_log_p
    if mode == "arithmetic":
        return torch.logaddexp(anchor_log_p + math.log(lam), log_q + math.log1p(-lam))
    return F.log_softmax(lam * anchor_log_p + (1.0 - lam) * log_q, dim=-1)


def anchor_probs(p: torch.Tensor, q: torch.Tensor, strength: float, mode: str = "arithmetic") -> torch.Tensor:
    """``T(q)`` for probability vectors ``p``, ``q`` ``[..., K]`` (rows summing to 1)."""
    lam = check_anchoring(strength, mode)
    if mode == "arithmetic":
        if p.shape != q.shape:
            raise ShapeError(f"anchoring: p has shape {list(p.shape)} but q has {list(q.shape)}.")
        return lam * p + (1.0 - lam) * q
    return anchor_log_probs(torch.log(p), torch.log(q), lam, mode).exp()


@TEACHERS.register("anchored")
class AnchoredTeacher(Teacher):
    """A target ``T(q)`` anchored to a base teacher ``p`` (recursive meta-distillation, #12).

    Args:
        anchor: the base teacher ``p`` (usually a :class:`~.frozen.FrozenTeacher`).
        current: the teacher ``q_t`` being refined: a frozen copy of the previous generation
            (what :func:`distillery.engine.generations.anchored_to` builds), or a
            :class:`~.snapshot.SnapshotTeacher` of the student for generations within one run.
        strength: ``lam`` in ``[0, 1]``, the weight of the anchor.
        mode: ``"arithmetic"`` (``lam p + (1 - lam) q``) or ``"geometric"`` (``∝ p^lam q^(1-lam)``).
        view: the input both members read when they have no view of their own (default: the
            input the student saw).

    Signals: ``logits`` only, equal to ``log T(q)`` (``[B, K]``, normalised log-probabilities).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from distillery import FrozenTeacher
        >>> t = AnchoredTeacher(FrozenTeacher(nn.Linear(4, 3)), FrozenTeacher(nn.Linear(4, 3)), 0.3)
        >>> t.signals(torch.randn(2, 4), {}, ["logits"])["logits"].exp().sum(-1)
        tensor([1.0000, 1.0000])
    """

    def __init__(self, anchor: Teacher, current: Teacher, strength: float, mode: str = "arithmetic", view=None) -> None:
        super().__init__(view)
        self.strength = check_anchoring(strength, mode)
        self.mode = mode
        self.anchor = anchor
        self.current = current

    def bind(self, student: nn.Module) -> None:
        super().bind(student)
        self.anchor.bind(student)
        self.current.bind(student)

    def set_total_steps(self, total_steps: int | None) -> None:
        self.anchor.set_total_steps(total_steps)
        self.current.set_total_steps(total_steps)

    def tap_model(self) -> nn.Module | None:
        return None  # only the anchored logits exist; checked on the first batch

    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        unknown = [n for n in names if n != "logits"]
        if unknown:
            raise ConfigError(f"anchored teacher: only the 'logits' signal exists, but {unknown} were asked for.")
        logits = []
        for member in (self.anchor, self.current):
            x = member.view(batch) if member.view is not None else inputs
            out = member.signals(x, batch, ["logits"])
            if "logits" not in out:
                raise ConfigError(f"anchored teacher: member {type(member).__name__} gives no logits.")
            logits.append(out["logits"])
        dtype = torch.promote_types(torch.promote_types(logits[0].dtype, logits[1].dtype), torch.float32)
        log_p, log_q = (F.log_softmax(z.to(dtype), dim=-1) for z in logits)
        return {"logits": anchor_log_probs(log_p, log_q, self.strength, self.mode)}

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        self.anchor.update(student, step)
        self.current.update(student, step)

    def extra_repr(self) -> str:
        return f"strength={self.strength}, mode={self.mode!r}"


# -- in a config: teacher: {kind: anchored, anchor, current, strength, mode} -------------------
def anchored_config() -> type:
    """The config section of an anchored teacher (made on first use, see :mod:`distillery.registry`);
    ``anchor`` and ``current`` are teachers of the kinds registered with ``member=True``."""
    from ..config.base import TeacherCfgBase, Unit, tagged_union

    MemberCfg = tagged_union([cls for _, cls in TEACHERS.sections(member=True)])

    class AnchoredTeacherCfg(TeacherCfgBase):
        """A target anchored to a base teacher (recursive meta-distillation): ``strength * p +
        (1 - strength) * q`` (arithmetic) or ``∝ p^strength q^(1 - strength)`` (geometric), where
        ``anchor`` gives ``p`` and ``current`` gives ``q`` (e.g. a snapshot of the student)."""

        kind: Literal["anchored"]
        anchor: MemberCfg
        current: MemberCfg
        strength: Unit = 0.5
        mode: Literal["arithmetic", "geometric"] = "arithmetic"

    return AnchoredTeacherCfg


@TEACHERS.builder("anchored", config=anchored_config)
def build_anchored(cfg: Any, ctx: BuildContext, where: str) -> Teacher:
    view = ctx.view(cfg, where)
    anchor = ctx.member(cfg.anchor, f"{where}.anchor")
    current = ctx.member(cfg.current, f"{where}.current")
    return AnchoredTeacher(anchor, current, cfg.strength, cfg.mode, view=view)
