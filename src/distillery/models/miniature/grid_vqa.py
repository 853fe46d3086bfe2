"""A tiny visual-question-answering transformer with V-Reflection's two training-time modules.

V-Reflection (J. Zhou, Y. Chen, H. Li, Q. Jiang, H. Zhou, Y.-C. Chen, L. Zhang, 2026,
"V-Reflection: Transforming MLLMs from Passive Observers to Active Interrogators",
arXiv:2604.03307) teaches a multimodal model to look at the evidence for its answer:

* a **Box-Guided Compression** module (BCM, the teacher) compresses the visual features
  *inside the ground-truth box* into latent targets (:class:`BoxGuidedCompression`);
* a **Dynamic Autoregressive Compression** module (DAC, the student side) turns the model's
  hidden state into a probe that cross-attends the whole visual map
  (:class:`CrossAttentionProbe`), trained to reproduce the BCM latents;
* "During inference, both modules remain entirely inactive".

:class:`GridVQATransformer` (registered ``grid_vqa_transformer``) reads the rows of
:func:`~distillery.data.miniature.digit_grid.digit_grid` (``[image 256 | question 4 | box 16]``):

* ``mode="student"``: patch embedding of the 16x16 image into a visual map ``[B, 16, dim]``
  (``patch_embed`` + ``pos``), a question token (``question_embed``), ``blocks`` of
  pre-norm self-attention over ``[question; visual map]``, and ``head`` on the question
  token's final hidden state ``[B, dim]`` -> ``[B, 10]``. With ``probe=True`` it also holds
  ``probe`` (the DAC probe: query from that hidden state, keys and values from the visual
  map), flagged training-only (:func:`distillery.taps.training_only.mark_training_only`) and run
  only in training mode; tap its output as ``student.probe`` (``[B, latent_dim]``). The box
  part of the row is never read.
* ``mode="box_teacher"``: the privileged teacher. The same patch embedding, then ``bcm``
  (attention pooling restricted to the box's patches) -> latent ``[B, latent_dim]`` (tap
  ``teacher.bcm``) -> ``box_head`` -> ``[B, 10]``. It answers from the box content alone.

The model returns logits ``[B, 10]``. Attention is written with explicit matrix products, so
``torch.utils.flop_counter`` counts every multiply (see :func:`distillery.taps.training_only.inference_cost`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ...data.miniature.digit_grid import GRID_LAYOUT, PATCH, SIDE
from ...errors import ConfigError, ShapeError
from ...registry import MODELS
from ...taps.training_only import mark_training_only
from ..reference import _shape

__all__ = ["BoxGuidedCompression", "CrossAttentionProbe", "GridVQATransformer", "grid_vqa_transformer", "patchify"]


def patchify(image: torch.Tensor, side: int = SIDE, patch: int = PATCH) -> torch.Tensor:
    """``[B, side * side]`` (row-major pixels) -> ``[B, (side/patch)^2, patch^2]``, patches in
    row-major order of the patch grid."""
    g = side // patch
    x = image.reshape(image.shape[0], g, patch, g, patch)
    return x.permute(0, 1, 3, 2, 4).reshape(image.shape[0], g * g, patch * patch)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; ``[B, T, D]``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class CrossAttentionProbe(nn.Module):
    """DAC probe: a hidden state ``h`` ``[B, D]`` queries the visual map ``[B, P, D]``.

    ``q = W_q h``, ``k = W_k v_p``, ``a = softmax_p(<q, k_p> / sqrt(D))``, output
    ``out(sum_p a_p W_v v_p)`` ``[B, out_dim]``. Returns ``(latent [B, out_dim], a [B, P])``.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out_dim))

    def forward(self, h: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.query(h)[:, None, :]
        a = torch.softmax(q @ self.key(visual).transpose(1, 2) / math.sqrt(visual.shape[-1]), dim=-1)  # [B, 1, P]
        return self.out((a @ self.value(visual))[:, 0]), a[:, 0]


class BoxGuidedCompression(nn.Module):
    """BCM: a learned query attends only the visual tokens inside the box.

    ``visual`` ``[B, P, D]``, ``box`` ``[B, P]`` (1 inside, 0 outside; every row needs one
    patch inside). ``a = softmax_p(<q, W_k v_p> / sqrt(D) masked to the box)``, output
    ``out(sum_p a_p W_v v_p)``. Returns ``(latent [B, out_dim], a [B, P])``.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out_dim))

    def forward(self, visual: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if box.shape != visual.shape[:2] or bool((box.sum(1) <= 0).any()):
            raise ShapeError(f"BoxGuidedCompression needs a box mask [B, P] = {list(visual.shape[:2])} with a patch inside "
                             f"in every row, got {list(box.shape)}.")
        logits = (self.key(visual) @ self.query) / math.sqrt(visual.shape[-1])  # [B, P]
        a = torch.softmax(logits.masked_fill(box <= 0, float("-inf")), dim=-1)
        return self.out((a[:, None, :] @ self.value(visual))[:, 0]), a


class GridVQATransformer(nn.Module):
    """See the module docstring. ``forward(x [B, 276]) -> logits [B, num_classes]``."""

    def __init__(self, num_classes: int = 10, dim: int = 32, depth: int = 2, heads: int = 4, latent_dim: int = 32,
                 mode: str = "student", probe: bool = False) -> None:
        super().__init__()
        self.mode = mode
        self.patch_embed = nn.Linear(PATCH * PATCH, dim)
        self.pos = nn.Parameter(torch.randn(GRID_LAYOUT["box"], dim) * 0.02)
        if mode == "student":
            self.question_embed = nn.Linear(GRID_LAYOUT["question"], dim)
            self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, num_classes)
            self.probe = mark_training_only(CrossAttentionProbe(dim, latent_dim)) if probe else None
        else:
            self.bcm = BoxGuidedCompression(dim, latent_dim)
            self.box_head = nn.Linear(latent_dim, num_classes)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i, q = GRID_LAYOUT["image"], GRID_LAYOUT["question"]
        if x.ndim != 2 or x.shape[1] != i + q + GRID_LAYOUT["box"]:
            raise ShapeError(f"grid_vqa_transformer reads digit_grid rows [B, {i + q + GRID_LAYOUT['box']}], got {list(x.shape)}.")
        return x[:, :i], x[:, i : i + q], x[:, i + q :]

    def visual_map(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 256] -> [B, 16, dim]``: patch embeddings plus positions."""
        return self.patch_embed(patchify(image)) + self.pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, question, box = self._split(x)
        visual = self.visual_map(image)
        if self.mode != "student":
            latent, _ = self.bcm(visual, box)
            return self.box_head(latent)
        tokens = torch.cat([self.question_embed(question)[:, None, :], visual], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        h = self.norm(tokens[:, 0])
        if self.training and self.probe is not None:
            self.probe(h, visual)  # its output is read through the tap 'student.probe'
        return self.head(h)


@MODELS.register("grid_vqa_transformer")
def grid_vqa_transformer(
    input_shape: Sequence[int],
    num_classes: int = 10,
    dim: int = 32,
    depth: int = 2,
    heads: int = 4,
    latent_dim: int = 32,
    mode: str = "student",
    probe: bool = False,
) -> GridVQATransformer:
    """A tiny VQA transformer over ``digit_grid`` rows (see :class:`GridVQATransformer`).

    ``mode``: ``"student"`` or ``"box_teacher"``; ``probe``: add V-Reflection's training-only
    DAC probe (student mode). Module paths: ``patch_embed``, ``pos``, ``question_embed``,
    ``blocks.<i>``, ``norm``, ``head``, ``probe`` | ``bcm``, ``box_head``.
    """
    width = math.prod(_shape(input_shape, "grid_vqa_transformer"))
    expected = sum(GRID_LAYOUT.values())
    if width != expected:
        raise ConfigError(f"grid_vqa_transformer reads digit_grid rows of width {expected}, but the data has width {width}.")
    if mode not in ("student", "box_teacher"):
        raise ConfigError(f"grid_vqa_transformer: mode must be 'student' or 'box_teacher', got {mode!r}.")
    if probe and mode != "student":
        raise ConfigError("grid_vqa_transformer: the probe belongs to the student (mode: student).")
    for name, v in (("dim", dim), ("depth", depth), ("heads", heads), ("latent_dim", latent_dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"grid_vqa_transformer: {name} must be a positive int, got {v!r}.")
    if dim % heads:
        raise ConfigError(f"grid_vqa_transformer: dim {dim} must be divisible by heads {heads}.")
    return GridVQATransformer(int(num_classes), dim, depth, heads, latent_dim, mode, bool(probe))
