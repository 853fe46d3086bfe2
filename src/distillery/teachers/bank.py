"""A weighted bank of teachers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import Batch
from ..errors import ConfigError, ShapeError
from ..registry import TEACHERS
from .base import BuildContext, Teacher


COMBINES = ("probs", "logits")
WeightFn = Callable[[Batch, list[dict[str, torch.Tensor]]], torch.Tensor]


@TEACHERS.register("bank")
class TeacherBank(Teacher):
    """Several teachers combined into one by a weighted mean of their signals.

    Args:
        teachers: the member teachers (each may have its own view).
        weights: fixed weights ``[n]`` (normalised to sum to 1), or a function
            ``fn(batch, outputs) -> Tensor`` returning ``[n]`` or per-sample ``[B, n]`` weights
            (rows are normalised), computed every batch from the members' outputs, e.g. by
            task similarity (DistillWeighted) or confidence. ``None`` means equal weights.
        combine: ``"probs"``: ``logits`` are combined as ``log(sum_i w_i softmax(l_i))``;
            ``"logits"``: as ``sum_i w_i l_i``. Other signals are always averaged as they are
            and must have the same shape in every member.

    The weights of the last batch are kept in :attr:`last_weights` (``[n]`` or ``[B, n]``).
    Each member's own signals are also returned under ``"<i>/<name>"`` (e.g. ``"0/logits"``)
    so an objective may address one member.
    """

    def __init__(self, teachers: Sequence[Teacher], weights: Sequence[float] | WeightFn | None = None, combine: str = "probs") -> None:
        super().__init__(None)
        if not teachers:
            raise ConfigError("bank: give at least one teacher.")
        if combine not in COMBINES:
            raise ConfigError(f"bank: combine must be one of {COMBINES}, got {combine!r}.")
        self.members = nn.ModuleList(teachers)
        self.combine = combine
        self.weight_fn: WeightFn | None = None
        if callable(weights):
            self.weight_fn = weights
            fixed = torch.full((len(teachers),), 1.0 / len(teachers))
        else:
            w = torch.ones(len(teachers)) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
            if w.shape != (len(teachers),) or bool((w < 0).any()) or float(w.sum()) <= 0:
                raise ConfigError(f"bank: weights must be {len(teachers)} non-negative numbers with a positive sum, got {list(w.tolist())}.")
            fixed = w / w.sum()
        self.register_buffer("fixed_weights", fixed)
        self.last_weights: torch.Tensor | None = None

    def bind(self, student: nn.Module) -> None:
        super().bind(student)
        for member in self.members:
            member.bind(student)

    def set_total_steps(self, total_steps: int | None) -> None:
        for member in self.members:
            member.set_total_steps(total_steps)

    def tap_model(self) -> nn.Module:
        return self.members[0].tap_model()

    def eval_teacher(self) -> Teacher | None:
        """The bank of the members' evaluation teachers (a precomputed member, which can only
        look up training samples, is evaluated through its model), or ``None`` when a member
        has none."""
        members = [m.eval_teacher() for m in self.members]
        if any(m is None for m in members):
            return None
        if all(a is b for a, b in zip(members, self.members)):
            return self
        weights = self.weight_fn if self.weight_fn is not None else self.fixed_weights.tolist()
        return TeacherBank(members, weights=weights, combine=self.combine)

    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        base_names = sorted({n.split("/", 1)[1] if "/" in n else n for n in names})
        outputs = []
        for member in self.members:
            x = member.view(batch) if member.view is not None else inputs
            outputs.append(member.signals(x, batch, base_names))
        w = self.weight_fn(batch, outputs) if self.weight_fn is not None else self.fixed_weights
        w = w.float().to(inputs.device)
        w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        self.last_weights = w.detach()
        result: dict[str, torch.Tensor] = {}
        # combine only the signals asked for as such ("<i>/<name>" asks for one member's only,
        # whose shape may differ from the other members')
        for name in [n for n in base_names if n in names]:
            values = [o[name] for o in outputs if name in o]
            if len(values) != len(outputs):
                continue
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) != 1:
                raise ShapeError(f"bank: members give signal {name!r} with different shapes {sorted(shapes)}; map them to one shape first.")
            stacked = torch.stack([v.float() for v in values])  # [n, B, ...]
            ww = _broadcast_weights(w, stacked)
            if name == "logits" and self.combine == "probs":
                result[name] = torch.log((ww * F.softmax(stacked, dim=-1)).sum(0).clamp_min(1e-30))
            else:
                result[name] = (ww * stacked).sum(0)
        for i, out in enumerate(outputs):
            for name, value in out.items():
                result[f"{i}/{name}"] = value
        return result

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        for member in self.members:
            member.update(student, step)


def _broadcast_weights(w: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """Shape ``[n]`` or ``[B, n]`` weights to broadcast against ``stacked`` ``[n, B, ...]``."""
    trailing = [1] * (stacked.dim() - w.dim())
    if w.dim() == 1:
        return w.reshape(-1, *trailing)
    return w.t().reshape(w.shape[1], w.shape[0], *trailing)


# -- in a config: teacher: {kind: bank, members, weights, combine} -----------------------------
def bank_config() -> type:
    """The config section of a teacher bank (made on first use, see :mod:`distillery.registry`);
    its members are the teacher kinds registered with ``member=True``."""
    from typing import Annotated

    from pydantic import Field, model_validator

    from ..config.base import TeacherCfgBase, tagged_union

    MemberCfg = tagged_union([cls for _, cls in TEACHERS.sections(member=True)])

    class BankTeacherCfg(TeacherCfgBase):
        kind: Literal["bank"]
        members: list[MemberCfg] = Field(min_length=1)
        weights: list[Annotated[float, Field(ge=0)]] | None = None
        combine: Literal["probs", "logits"] = "probs"

        @model_validator(mode="after")
        def _weights_match(self) -> BankTeacherCfg:
            if self.weights is not None and len(self.weights) != len(self.members):
                raise ValueError(f"bank has {len(self.members)} members but {len(self.weights)} weights")
            if self.weights is not None and not sum(self.weights) > 0:
                raise ValueError(f"the bank's weights are normalised to sum to 1, so at least one must be positive, got {self.weights}")
            return self

    return BankTeacherCfg


@TEACHERS.builder("bank", config=bank_config)
def build_bank(cfg: Any, ctx: BuildContext, where: str) -> Teacher:
    ctx.view(cfg, where)  # checked, though each member reads its own view
    members = [ctx.member(m, f"{where}.members.{i}") for i, m in enumerate(cfg.members)]
    return TeacherBank(members, cfg.weights, cfg.combine)
