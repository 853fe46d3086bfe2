"""Pairwise image-text scorers: a fusion (cross-encoder) model and a dual encoder that
outputs its batch similarity matrix, as teachers for retrieval distillation (DCD).

A *fusion* model (ViLT, METER, a cross-encoder) reads an image and a text *together* and
outputs one matching score, so ranking ``N`` candidates for a query costs ``N`` forward passes
of the fusion part; a dual encoder embeds each side once and ranks by dot products, which is
why DCD (Rao et al. 2022, arXiv:2207.01426) distills the first into the second.

Both models read the paired rows of :mod:`distillery.data.paired` (``[image | text]``) and
return ``scores`` ``[B, B]``: ``scores[i, j]`` is the score of image ``i`` with text ``j`` of
the batch (the diagonal holds the true pairs), so objectives can address ``teacher.scores``.

* :class:`FusionScorer` (registered ``fusion_scorer``): ``e_i = image_proj(image)``,
  ``e_t = text_proj(text)`` (``[B, H]`` each, computed once per item), then for each pair the
  matching features ``[e_i, e_t, e_i * e_t, |e_i - e_t|]`` (``[4H]``) go through the fusion MLP
  ``fusion`` to one logit. It has no ``logits`` or ``image``/``text`` outputs, so the
  :class:`~distillery.engine.Trainer` cannot evaluate it as a student: fit it with
  ``eval_data=None`` (see :func:`distillery.recipes.dcd.fit_fusion_teacher`) and evaluate it
  with :meth:`FusionScorer.score_pairs`.
* :class:`ScoringDualEncoder` (registered ``scoring_dual_encoder``): a
  :class:`~distillery.models.dual.DualEncoder` (same parameter names, so it loads
  ``dual_encoder`` weights) that also returns ``scores = cos(image_i, text_j) / temperature``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...data.paired import unpack_views
from ...errors import ConfigError
from ...registry import MODELS
from ..dual import DualEncoder, dual_encoder
from ..reference import MLPBlock, _activation, _ints, _shape

__all__ = ["FusionScorer", "ScoringDualEncoder", "fusion_scorer", "scoring_dual_encoder"]


class FusionScorer(nn.Module):
    """A cross-encoder over (image, text) pairs; see the module docstring.

    Modules: ``image_proj``, ``text_proj`` (``Linear -> act`` to ``hidden``), ``fusion``
    (``layers.i`` ``fc``/``act`` blocks over the ``4 * hidden`` matching features, then ``out``,
    a ``Linear`` to one logit).
    """

    def __init__(self, image_dim: int, text_dim: int, hidden: int, fusion_hidden: Sequence[int], activation: str,
                 chunk: int = 64) -> None:
        super().__init__()
        self.image_dim, self.text_dim, self.chunk = int(image_dim), int(text_dim), int(chunk)
        self.image_proj = MLPBlock(self.image_dim, hidden, activation, 0.0)
        self.text_proj = MLPBlock(self.text_dim, hidden, activation, 0.0)
        layers, d = [], 4 * hidden
        for h in fusion_hidden:
            layers.append(MLPBlock(d, h, activation, 0.0))
            d = h
        self.fusion = nn.Sequential(*layers, nn.Linear(d, 1))

    def _fuse(self, e_i: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        """Scores of every pair: ``e_i [N, H]``, ``e_t [M, H]`` -> ``[N, M]``."""
        a, b = e_i[:, None, :].expand(-1, e_t.shape[0], -1), e_t[None, :, :].expand(e_i.shape[0], -1, -1)
        return self.fusion(torch.cat([a, b, a * b, (a - b).abs()], dim=-1)).squeeze(-1)

    def score_pairs(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Scores of every (image, text) pair: ``image [N, image_dim]``, ``text [M, text_dim]`` ->
        ``[N, M]``, fusing ``chunk`` images at a time (``N * M`` fusion forward passes)."""
        e_i, e_t = self.image_proj(image.reshape(image.shape[0], -1)), self.text_proj(text.reshape(text.shape[0], -1))
        return torch.cat([self._fuse(e_i[k : k + self.chunk], e_t) for k in range(0, e_i.shape[0], self.chunk)], dim=0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        image, texts = unpack_views(x, self.image_dim, self.text_dim)
        return {"scores": self.score_pairs(image, texts[:, 0])}


@MODELS.register("fusion_scorer")
def fusion_scorer(
    input_shape: Sequence[int],
    image_dim: int | None = None,
    text_dim: int | None = None,
    hidden: int = 256,
    fusion_hidden: Sequence[int] = (256,),
    activation: str = "relu",
    chunk: int = 64,
) -> FusionScorer:
    """A fusion (cross-encoder) image-text scorer over paired rows ``[image | text]``.

    ``image_dim`` / ``text_dim`` split the row (default: two halves). Outputs ``{"scores":
    [B, B]}``; :meth:`FusionScorer.score_pairs` scores arbitrary sets of images and texts.
    """
    width = math.prod(_shape(input_shape, "fusion_scorer"))
    if image_dim is None and text_dim is None:
        if width % 2:
            raise ConfigError(f"fusion_scorer: rows of odd width {width} cannot be split in halves; give image_dim and text_dim.")
        image_dim = text_dim = width // 2
    image_dim = int(image_dim) if image_dim is not None else width - int(text_dim)  # type: ignore[arg-type]
    text_dim = int(text_dim) if text_dim is not None else width - image_dim
    if image_dim <= 0 or text_dim <= 0 or image_dim + text_dim > width:
        raise ConfigError(f"fusion_scorer: image_dim {image_dim} + text_dim {text_dim} must be positive and fit rows of width {width}.")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ConfigError(f"fusion_scorer: hidden must be a positive int, got {hidden!r}.")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"fusion_scorer: chunk must be a positive int, got {chunk!r}.")
    _activation(activation, "fusion_scorer")
    return FusionScorer(image_dim, text_dim, hidden, _ints(fusion_hidden, "fusion_hidden", "fusion_scorer", allow_empty=True),
                        activation, chunk)


class ScoringDualEncoder(DualEncoder):
    """A dual encoder that also returns its batch similarity matrix
    ``scores = cos(image_i, text_j) / temperature`` ``[B, B]`` (besides ``image``, ``text``)."""

    def __init__(self, image_dim: int, text_dim: int, hidden: Sequence[int], embed_dim: int, activation: str,
                 temperature: float = 0.07) -> None:
        super().__init__(image_dim, text_dim, hidden, embed_dim, activation)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(x)
        out["scores"] = F.normalize(out["image"], dim=-1) @ F.normalize(out["text"], dim=-1).T / self.temperature
        return out


@MODELS.register("scoring_dual_encoder")
def scoring_dual_encoder(
    input_shape: Sequence[int],
    image_dim: int | None = None,
    text_dim: int | None = None,
    hidden: Sequence[int] = (256,),
    embed_dim: int = 64,
    activation: str = "relu",
    temperature: float = 0.07,
) -> ScoringDualEncoder:
    """A ``dual_encoder`` (same weights) that also outputs ``scores`` ``[B, B]`` =
    ``cos(image_i, text_j) / temperature`` for pairwise distillation (a dual-encoder DCD teacher)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ConfigError(f"scoring_dual_encoder: temperature must be a positive number, got {temperature!r}.")
    base = dual_encoder(input_shape, image_dim, text_dim, hidden, embed_dim, activation)
    model = ScoringDualEncoder(base.image_dim, base.text_dim, _ints(hidden, "hidden", "scoring_dual_encoder", allow_empty=True),
                               embed_dim, activation, temperature)
    model.load_state_dict(base.state_dict())
    return model
