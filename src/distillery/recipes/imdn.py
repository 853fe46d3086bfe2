"""IMDN: information multi-distillation blocks as a lightweight super-resolution network.

Z. Hui, X. Gao, Y. Yang, X. Wang, 2019, "Lightweight Image Super-Resolution with Information
Multi-distillation Network" (ACM MM 2019), arXiv:1909.11856 (code: github.com/Zheng222/IMDN).
"The distillation module extracts hierarchical features step-by-step, and fusion module
aggregates them according to the importance of candidate features, which is evaluated by the
proposed contrast-aware channel attention mechanism."

Not knowledge distillation: "distillation" here is a feature-splitting design inside one
network (each block keeps a quarter of its channels, the *distilled* features, and refines the
rest). What the library reuses: the block (:class:`~distillery.generative.restoration.IMDB`,
with :class:`~distillery.generative.restoration.ContrastChannelAttention`) and the network
(:class:`~distillery.generative.restoration.IMDN`, registered denoiser ``imdn``) as a one-step
SR student of TAD-SR (:mod:`distillery.recipes.tad_sr`) and YONOS-SR. Left out: the
pixel-shuffle upsampler (the library's SR networks read the LR image upsampled to the output
size) and the adaptive cropping strategy for images of any size.

Training: the engine's ``sr_regression`` method (one-step SR by a pixel loss; the paper trains
with L1). Config: ``configs/imdn_digits.yaml``; reproduction: ``distillery reproduce imdn``
(IMDN vs a plain CNN of equal parameter count on x2 digits).
"""

from __future__ import annotations

from typing import Any

from ..generative.restoration import (
    IMDB,
    IMDN,
    ContrastChannelAttention,
    PlainSRCNN,
    contrast,
)
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("imdn", "Hui et al. 2019, IMDN, arXiv:1909.11856", "imdn_digits.yaml",
           "Information multi-distillation blocks (progressive channel split, contrast-aware channel attention) as an SR network")
)


def imdn_net(channels: int = 24, blocks: int = 3, rate: float = 0.25, reduction: int = 4) -> dict[str, Any]:
    """The ``denoiser`` spec of an IMDN (about 52k parameters at the defaults on one channel)."""
    return {"name": "imdn", "params": {"channels": int(channels), "blocks": int(blocks), "rate": float(rate),
                                       "reduction": int(reduction)}}


def plain_cnn_net(channels: int = 38, depth: int = 6) -> dict[str, Any]:
    """The ``denoiser`` spec of the plain CNN baseline (38 x 6: about 53k parameters, within 2%
    of :func:`imdn_net`'s default)."""
    return {"name": "sr_cnn", "params": {"channels": int(channels), "depth": int(depth)}}


def sr_regression_config(scale: int = 2, upsample: str = "bicubic", loss: str = "l1") -> dict[str, Any]:
    """The ``method`` section of one-step SR by a pixel loss (``l1`` as the paper, or ``mse``)."""
    return {"method": {"kind": "sr_regression", "params": {"scale": int(scale), "upsample": upsample, "loss": loss}}}


__all__ = ["IMDB", "IMDN", "ContrastChannelAttention", "PlainSRCNN", "contrast", "imdn_net", "plain_cnn_net",
           "sr_regression_config"]
