"""EVLF: early vision-language fusion for generative dataset distillation.

W. Cai, Y. Zou, G. Li, C. Gu, C. Zhang, 2026, "EVLF: Early Vision-Language Fusion for
Generative Dataset Distillation", arXiv:2603.07476 (code: github.com/wenqi-cai297/earlyfusion-for-dd).
"Recent diffusion-based DD methods commonly introduce semantic guidance through late-stage
cross-attention, where textual prompts tend to dominate the generative process ... we introduce
an Early Vision-Language Fusion (EVLF) method that aligns textual and visual embeddings at the
transition between the encoder and the generative backbone ... a lightweight cross-attention
module at this transition".

Mechanism, as expressed here (the library's parts):

* the generator is a class-conditional diffusion/flow denoiser trained from data by the
  engine's ``denoising`` method (label dropout for classifier-free guidance); its network is
  :class:`~distillery.generative.fusion.FusionUNet` (denoiser ``unet_fusion``), whose only
  access to the class is one cross-attention block
  (:class:`~distillery.generative.fusion.ClassCrossAttention`: positions as queries, ``n_tokens``
  learned class tokens, the class "prompt", as keys and values), placed by ``fusion``:
  ``early`` (EVLF: on the stem's output, the encoder -> denoiser transition) or ``late`` (in
  the decoder before the output layer, the late cross-attention the paper argues against);
* dataset distillation: the trained generator draws ``ipc`` images per class
  (:func:`~distillery.generative.synthetic.synthetic_set`), the distilled set;
* evaluation: a fresh classifier trained on the distilled set alone, tested on real images
  (:func:`~distillery.generative.synthetic.train_on_synthetic`).

Left out (the miniature has no text and no VAE): the text encoder (CLIP prompts are class
tokens here), the latent autoencoder (the "encoder" is the U-Net's input stem on pixels), the
paper's base DD pipelines (D4M's prototype clustering, Minimax/IGD guidance) and its soft-label
evaluation protocol. Config: ``configs/evlf_digits.yaml``; reproduction: ``distillery reproduce evlf``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..generative.fusion import FUSIONS, ClassCrossAttention, ClassTokens, FusionUNet, cross_attention
from ..generative.synthetic import save_class_grid, synthetic_set, train_on_synthetic
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("evlf", "Cai et al. 2026, EVLF, arXiv:2603.07476", "evlf_digits.yaml",
           "Class-conditional diffusion as a dataset distiller, the class fused by cross-attention early (input stem) vs late (decoder)")
)


# -- config fragments ----------------------------------------------------------------------------
def fusion_denoiser(fusion: str = "early", *, channels: tuple[int, int] | list[int] = (16, 32), n_tokens: int = 4,
                    heads: int = 1) -> dict[str, Any]:
    """The ``student.denoiser`` section of a ``unet_fusion`` network fusing the class ``fusion``
    (``early``, ``late`` or ``both``)."""
    if fusion not in FUSIONS:
        raise ConfigError(f"evlf: fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}.")
    return {"name": "unet_fusion", "params": {"channels": list(channels), "fusion": fusion, "n_tokens": int(n_tokens),
                                              "heads": int(heads)}}


def generator_config(fusion: str = "early", *, label_dropout: float = 0.1, ema_decay: float = 0.995,
                     prediction: str = "velocity", channels: tuple[int, int] | list[int] = (16, 32),
                     n_tokens: int = 4) -> dict[str, Any]:
    """``data`` (conditional), ``student`` and ``method`` sections of the class-conditional
    generator (a ``denoising`` run of a ``unet_fusion`` network)."""
    return {"data": {"conditional": True},
            "student": {"denoiser": fusion_denoiser(fusion, channels=channels, n_tokens=n_tokens), "prediction": prediction},
            "method": {"kind": "denoising", "params": {"ema_decay": ema_decay, "label_dropout": float(label_dropout),
                                                       "sample_solver": "euler"}}}


__all__ = ["ClassCrossAttention", "ClassTokens", "FUSIONS", "FusionUNet", "cross_attention", "fusion_denoiser",
           "generator_config", "save_class_grid", "synthetic_set", "train_on_synthetic"]
