"""Voting snapshot teacher: the student's most recent past selves, voting on the prediction.

SD-DARTS (Zhu, Li, Liu, Wang 2023, "Improving Differentiable Architecture Search via
Self-Distillation", arXiv:2302.05629): "multiple previous supernets are selected as teachers,
and their output probabilities are aggregated through voting to obtain the final teacher
prediction". Here the bank holds the ``size`` most recent snapshots of the student, one taken
every ``every`` optimizer steps (a ring buffer: a new snapshot replaces the oldest), and the
vote is

* ``"soft"``: the mean of the members' class probabilities, ``p = (1/K) sum_k softmax(l_k)``;
* ``"majority"``: the share of members predicting each class,
  ``p_c = (1/K) sum_k [argmax l_k = c]`` (hard votes; ties keep every tied class's share).

The teacher's ``logits`` are ``log p`` (floored at ``1e-30``), so ``softmax(logits) = p``
and any divergence objective (``kd``, ``reverse_kl``) reads the vote as a distribution. How
SD-DARTS selects its previous supernets and counts votes beyond the abstract is our
reading [inferred]; both parts are parameters here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import Batch
from ..errors import ConfigError, ShapeError
from ..registry import TEACHERS
from .base import BuildContext, FrozenModelMixin, Teacher, freeze, run_model
from .ema import unwrap


VOTES = ("soft", "majority")


def vote_probs(logits: torch.Tensor, vote: str = "soft") -> torch.Tensor:
    """Aggregate the members' logits ``[K, B, C]`` into one distribution ``[B, C]``.

    ``soft``: mean of ``softmax`` over members; ``majority``: the fraction of members whose
    ``argmax`` is each class.
    """
    if logits.ndim < 2:
        raise ShapeError(f"vote_probs: expected member logits [K, B, C], got {list(logits.shape)}.")
    if vote == "soft":
        return F.softmax(logits.float(), dim=-1).mean(0)
    if vote == "majority":
        one_hot = F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        return one_hot.mean(0)
    raise ConfigError(f"vote must be one of {VOTES}, got {vote!r}.")


@TEACHERS.register("voting_snapshots")
class VotingSnapshotTeacher(FrozenModelMixin, Teacher):
    """The ``size`` most recent snapshots of the student, taken every ``every`` steps, voting.

    Args:
        student: the network being trained; the first snapshot is a copy of it now.
        size: the number of past selves that vote (K).
        every: optimizer steps between snapshots (``None``: only by :meth:`snapshot`).
        vote: ``"soft"`` (mean probabilities) or ``"majority"`` (hard votes), see :func:`vote_probs`.
        view: the batch view the members read (default: the student's input).

    Signals: ``logits`` ``[B, C]`` = ``log`` of the vote; every other requested signal is the
    mean over voting members (same shape in each); ``"<i>/<name>"`` is member ``i``'s own
    signal (slot order, not age). Until ``size`` snapshots exist only the filled slots vote.
    All ``size`` slots are allocated at the start (copies of the student), so the teacher's
    state dict has a fixed shape and resumes from a checkpoint; buffers ``count`` (snapshots
    taken) and ``taken_at`` ``[size]`` (the step of each slot's snapshot, -1 if empty).

    Example::

        >>> net = nn.Linear(4, 3)
        >>> teacher = VotingSnapshotTeacher(net, size=2, every=1)
        >>> teacher.update(net, step=1)        # second snapshot; both slots vote from now on
        >>> teacher.signals(torch.randn(5, 4), {}, ["logits"])["logits"].shape
        torch.Size([5, 3])
    """

    def __init__(self, student: nn.Module, size: int = 3, every: int | None = 1, vote: str = "soft", view=None) -> None:
        super().__init__(view)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"voting_snapshots: size must be a positive int, got {size!r}.")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError(f"voting_snapshots: every must be a positive int or null, got {every!r}.")
        if vote not in VOTES:
            raise ConfigError(f"voting_snapshots: vote must be one of {VOTES}, got {vote!r}.")
        self.size, self.every, self.vote = size, every, vote
        first = freeze(copy.deepcopy(unwrap(student)))
        self.members = nn.ModuleList([first] + [freeze(copy.deepcopy(first)) for _ in range(size - 1)])
        self.register_buffer("count", torch.ones((), dtype=torch.long))
        taken = torch.full((size,), -1, dtype=torch.long)
        taken[0] = 0
        self.register_buffer("taken_at", taken)

    def frozen_modules(self) -> list[nn.Module]:
        return list(self.members)

    def tap_model(self) -> nn.Module:
        return self.members[0]

    @property
    def filled(self) -> int:
        """How many slots hold a snapshot (and vote)."""
        return min(int(self.count), self.size)

    @torch.no_grad()
    def snapshot(self, student: nn.Module, step: int | None = None) -> None:
        """Copy the student into the oldest slot (the next empty one while filling up)."""
        slot = int(self.count) % self.size
        self.members[slot].load_state_dict(unwrap(student).state_dict())
        self.taken_at[slot] = int(step) if step is not None else int(self.count)
        self.count += 1

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        if self.every is not None and step % self.every == 0:
            self.snapshot(student, step)

    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        base = sorted({n.split("/", 1)[1] if "/" in n else n for n in names} | {"logits"})
        outputs = [run_model(self.members[i], inputs, base) for i in range(self.filled)]
        result: dict[str, torch.Tensor] = {}
        for name in base:
            values = [o[name] for o in outputs if name in o]
            if len(values) != len(outputs):
                continue
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) != 1:
                raise ShapeError(f"voting_snapshots: members give {name!r} with different shapes {sorted(shapes)}.")
            stacked = torch.stack([v.float() for v in values])  # [K, B, ...]
            if name == "logits":
                result[name] = torch.log(vote_probs(stacked, self.vote).clamp_min(1e-30))
            else:
                result[name] = stacked.mean(0)
        for i, out in enumerate(outputs):
            for name, value in out.items():
                result[f"{i}/{name}"] = value
        return result


# -- in a config: teacher: {kind: voting_snapshots, size, every, vote} -------------------------
def voting_config() -> type:
    """The config section of a voting snapshot teacher (made on first use, see :mod:`distillery.registry`)."""
    from ..config.base import PosInt, TeacherCfgBase

    class VotingSnapshotTeacherCfg(TeacherCfgBase):
        """The ``size`` most recent snapshots of the student (one every ``every`` steps), voting (SD-DARTS)."""

        kind: Literal["voting_snapshots"]
        size: PosInt = 3
        every: PosInt | None = 1
        vote: Literal["soft", "majority"] = "soft"

    return VotingSnapshotTeacherCfg


@TEACHERS.builder("voting_snapshots", config=voting_config)
def build_voting(cfg: Any, ctx: BuildContext, where: str) -> Teacher:
    return VotingSnapshotTeacher(ctx.student, cfg.size, cfg.every, cfg.vote, view=ctx.view(cfg, where))
