"""A two-tower (dual) encoder for image-text-style contrastive training (CLIP, ALBEF).

The model reads the flat paired rows of :mod:`distillery.data.paired`
(``x = [image | text_0 | text_1 | ...]``), encodes the image with one MLP tower and every
text with another, and returns a dict of signals that objectives address as
``student.image`` / ``teacher.text`` etc.:

* ``image``: ``[B, E]`` image embeddings (not normalised; contrastive objectives and the
  retrieval metrics L2-normalise them);
* ``text``: ``[B, E]`` embeddings of ``text_0``, the paired caption;
* ``text_negatives``: ``[B, T-1, E]`` embeddings of ``text_1..``, present only when the rows
  hold hard-negative captions.

A dict output without ``logits`` makes the :class:`~distillery.engine.Trainer` evaluate the
model by image<->text retrieval (:func:`distillery.evaluation.retrieval.retrieval_metrics`).

Module paths (for taps): ``image_encoder.layers.0.fc``, ``image_encoder.layers.0.act``, ...,
``image_encoder.proj``, and the same under ``text_encoder``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..data.paired import unpack_views
from ..errors import ConfigError
from ..registry import MODELS
from .reference import MLPBlock, _activation, _ints, _shape

__all__ = ["DualEncoder", "Tower", "dual_encoder"]


class Tower(nn.Module):
    """One encoder: ``layers.i`` (``fc``, ``act``) then ``proj`` (linear, to ``embed_dim``).

    ``[B, in_dim] -> [B, embed_dim]``.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], embed_dim: int, activation: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        d = in_dim
        for h in hidden:
            self.layers.append(MLPBlock(d, h, activation, 0.0))
            d = h
        self.proj = nn.Linear(d, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.proj(x)


class DualEncoder(nn.Module):
    """Image tower + text tower over paired rows; see the module docstring for the outputs.

    Args:
        image_dim: values of the image view at the start of each row.
        text_dim: values of each text after it (a row holds ``(width - image_dim) / text_dim``
            texts).
        hidden, embed_dim, activation: the towers' hidden sizes, the shared embedding size and
            the activation (both towers alike).
    """

    def __init__(self, image_dim: int, text_dim: int, hidden: Sequence[int], embed_dim: int, activation: str) -> None:
        super().__init__()
        self.image_dim, self.text_dim, self.embed_dim = int(image_dim), int(text_dim), int(embed_dim)
        self.image_encoder = Tower(self.image_dim, hidden, self.embed_dim, activation)
        self.text_encoder = Tower(self.text_dim, hidden, self.embed_dim, activation)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, image_dim] -> [B, E]``."""
        return self.image_encoder(image.reshape(image.shape[0], -1))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """``[..., text_dim] -> [..., E]`` (any leading dims)."""
        lead = text.shape[:-1]
        return self.text_encoder(text.reshape(-1, self.text_dim)).reshape(*lead, self.embed_dim)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        image, texts = unpack_views(x, self.image_dim, self.text_dim)
        out = {"image": self.encode_image(image)}
        emb = self.encode_text(texts)  # [B, T, E]
        out["text"] = emb[:, 0]
        if emb.shape[1] > 1:
            out["text_negatives"] = emb[:, 1:]
        return out


@MODELS.register("dual_encoder")
def dual_encoder(
    input_shape: Sequence[int],
    image_dim: int | None = None,
    text_dim: int | None = None,
    hidden: Sequence[int] = (256,),
    embed_dim: int = 64,
    activation: str = "relu",
) -> DualEncoder:
    """Two MLP towers over paired rows ``[image | text_0 | ...]`` (CLIP-style dual encoder).

    ``input_shape``: ``(width,)`` of the rows (from the dataset). Without ``image_dim`` and
    ``text_dim`` the row is split in two equal halves (one text); with one of them the other
    is the rest of the row (one text); with both, the row may hold several texts.
    Outputs ``{"image": [B, E], "text": [B, E]}`` (+ ``"text_negatives": [B, T-1, E]``).
    Modules: ``image_encoder.layers.0.fc`` ... ``image_encoder.proj``, ``text_encoder...``.
    """
    width = math.prod(_shape(input_shape, "dual_encoder"))
    if image_dim is None and text_dim is None:
        if width % 2:
            raise ConfigError(f"dual_encoder: rows of odd width {width} cannot be split in halves; give image_dim and text_dim.")
        image_dim = text_dim = width // 2
    elif image_dim is None:
        image_dim = width - int(text_dim)  # type: ignore[arg-type]
    elif text_dim is None:
        text_dim = width - int(image_dim)
    image_dim, text_dim = int(image_dim), int(text_dim)  # type: ignore[arg-type]
    if image_dim <= 0 or text_dim <= 0 or (width - image_dim) < text_dim or (width - image_dim) % text_dim:
        raise ConfigError(
            f"dual_encoder: rows of width {width} do not split into an image of {image_dim} values and whole "
            f"texts of {text_dim} values; use the dataset's info['image_dim'] and info['text_dim']."
        )
    hidden = _ints(hidden, "hidden", "dual_encoder", allow_empty=True)
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
        raise ConfigError(f"dual_encoder: embed_dim must be a positive int, got {embed_dim!r}.")
    _activation(activation, "dual_encoder")
    return DualEncoder(image_dim, text_dim, hidden, embed_dim, activation)
