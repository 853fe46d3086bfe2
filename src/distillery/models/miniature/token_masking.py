"""A ViT that drops redundant patch tokens while it trains, more of them as training goes on.

Hybrid Distill (Shi et al. 2023, "Hybrid Distillation: Connecting Masked Autoencoders with
Contrastive Learners", arXiv:2306.15876) uses "a progressive redundant token masking strategy
... to reduce the distilling costs and avoid falling into local optima": the student sees only
part of the patch tokens, the teachers all of them, and the objectives compare the kept ones
(:mod:`distillery.objectives.token_relation`).

:class:`TokenMaskingViT` is the reference :class:`~distillery.models.ViT` (same parameters,
same module paths: ``patch_embed``, ``blocks.<i>.attn.softmax``, ``norm``, ``head``) whose
forward, in training mode with gradients enabled, removes ``round(r * N)`` of the ``N`` patch
tokens before the blocks. ``r`` follows a step schedule over the training forwards counted so
far: ``mask_ratios[k]`` once ``milestones[k - 1]`` forwards have run (``mask_ratios[0]`` before
the first milestone). Which tokens go:

* ``select="random"``: a uniformly random subset per sample (as MAE masks);
* ``select="scorer"``: the ones a frozen *scorer* ViT attends to least from its class token
  (mean over heads of its block ``scorer_block`` attention row of the class token), i.e. the
  tokens that teacher finds redundant. Set the scorer with :meth:`TokenMaskingViT.set_scorer`.

The number of training forwards is a buffer (``mask_step``), saved with the weights, so a
resumed run continues the schedule. Evaluation (``eval()`` or ``torch.no_grad()``) uses every
token. Outputs (a dict): ``logits`` ``[B, K]`` (head on the class token), ``tokens``
``[B, 1 + M, dim]`` (final normalised tokens, class token first) and ``keep`` ``[B, M]`` (the
kept patch indices, increasing; ``M = N`` without masking).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from ... import taps
from ...errors import ConfigError, ShapeError
from ...registry import MODELS
from ..reference import ViT, build_vit_variant, channels_first

__all__ = ["SELECT_MODES", "TokenMaskingViT", "token_masking_vit"]

SELECT_MODES = ("random", "scorer")


class TokenMaskingViT(ViT):
    """The reference ViT with progressive token dropping in training (see the module docstring).

    Args (beyond :class:`ViT`'s): ``mask_ratios`` (fractions in ``[0, 1)``, one more than
    ``milestones``), ``milestones`` (increasing counts of training forwards), ``select``
    (``"random"`` or ``"scorer"``), ``scorer_block`` (which block of the scorer ranks tokens,
    ``-1`` = the last).
    """

    def __init__(self, *args, mask_ratios: Sequence[float] = (0.0,), milestones: Sequence[int] = (),
                 select: str = "random", scorer_block: int = -1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        ratios = [float(r) for r in mask_ratios]
        steps = [int(m) for m in milestones]
        if not ratios or any(not 0.0 <= r < 1.0 for r in ratios):
            raise ConfigError(f"token_masking_vit: mask_ratios must be fractions in [0, 1), got {list(mask_ratios)!r}.")
        if len(ratios) != len(steps) + 1:
            raise ConfigError(f"token_masking_vit: give one more mask ratio than milestones; got {len(ratios)} and {len(steps)}.")
        if any(b <= a for a, b in itertools.pairwise(steps)) or any(m < 0 for m in steps):
            raise ConfigError(f"token_masking_vit: milestones must be increasing and >= 0, got {steps}.")
        if select not in SELECT_MODES:
            raise ConfigError(f"token_masking_vit: select must be one of {SELECT_MODES}, got {select!r}.")
        self.mask_ratios, self.milestones, self.select = ratios, steps, select
        self.scorer_block = int(scorer_block)
        self._scorer: list[nn.Module] = []  # a frozen reference, neither trained nor saved
        self.register_buffer("mask_step", torch.zeros((), dtype=torch.long))

    # -- schedule and selection ---------------------------------------------------------------
    def set_scorer(self, scorer: ViT) -> None:
        """Rank tokens by the class-token attention of ``scorer`` (a frozen ViT with the same
        patch grid); it is kept by reference, in eval mode, without gradients."""
        if not isinstance(scorer, ViT) or scorer.num_patches != self.num_patches:
            raise ConfigError("token_masking_vit: the scorer must be a ViT with the same number of patches.")
        depth = len(scorer.blocks)
        if not -depth <= self.scorer_block < depth:
            raise ConfigError(f"token_masking_vit: scorer_block {self.scorer_block} is not a block of a {depth}-block scorer.")
        scorer.eval()
        for p in scorer.parameters():
            p.requires_grad_(False)
        self._scorer = [scorer]

    def ratio_at(self, step: int) -> float:
        """The mask ratio after ``step`` training forwards."""
        k = sum(1 for m in self.milestones if step >= m)
        return self.mask_ratios[k]

    @torch.no_grad()
    def redundancy_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N]``: the scorer's class-token attention to each patch (mean over heads); low = redundant."""
        if not self._scorer:
            raise ConfigError("token_masking_vit: select='scorer' needs set_scorer(teacher_vit) before training.")
        scorer = self._scorer[0]
        block = self.scorer_block % len(scorer.blocks)
        address = f"blocks.{block}.attn.softmax"
        attn = taps.run_tapped(scorer, x, [address], owner="scorer")[address]  # [B, H, 1 + N, 1 + N]
        return attn[:, :, 0, 1:].mean(1)

    def choose_keep(self, x: torch.Tensor, n_keep: int) -> torch.Tensor:
        """Kept patch indices ``[B, n_keep]``, increasing."""
        b = x.shape[0]
        if self.select == "random":
            score = torch.rand(b, self.num_patches, device=x.device)
        else:
            score = self.redundancy_scores(x)
        keep = torch.sort(-score, dim=1, stable=True).indices[:, :n_keep]
        return keep.sort(dim=1).values

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        tokens = self.patch_tokens(channels_first(x, self.dims, self.add_channel, "token_masking_vit", error=ShapeError))
        b, n, d = tokens.shape
        masking = self.training and torch.is_grad_enabled()
        ratio = self.ratio_at(int(self.mask_step)) if masking else 0.0
        n_keep = n - round(ratio * n)
        if n_keep < n:
            keep = self.choose_keep(x, n_keep)
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, d))
        else:
            keep = torch.arange(n, device=tokens.device).expand(b, n)
        if masking:
            self.mask_step += 1
        t = self.encode_patches(tokens)
        return {"logits": self.head(t[:, 0]), "tokens": t, "keep": keep}


@MODELS.register("token_masking_vit")
def token_masking_vit(
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: int | Sequence[int],
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
    mask_ratios: Sequence[float] = (0.0,),
    milestones: Sequence[int] = (),
    select: str = "random",
    scorer_block: int = -1,
) -> TokenMaskingViT:
    """The reference ``vit`` that drops ``mask_ratios[k]`` of its patch tokens in training after
    ``milestones[k-1]`` training forwards (progressive redundant-token masking, Hybrid Distill).

    Same parameters and module paths as ``vit``; outputs ``logits``, ``tokens`` ``[B, 1+M, dim]``
    and ``keep`` ``[B, M]``. ``select``: ``random`` or ``scorer`` (least class-token attention of
    a frozen ViT given by ``set_scorer``; only from Python).
    """
    return build_vit_variant(TokenMaskingViT, input_shape, num_classes, patch_size, dim, depth, heads, mlp_ratio, dropout,
                             mask_ratios=mask_ratios, milestones=milestones, select=select, scorer_block=scorer_block)
