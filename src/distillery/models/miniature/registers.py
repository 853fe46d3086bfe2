"""A ViT given register tokens after training, with only a few weights left trainable (PH-Reg's student).

:func:`register_vit` (registered as ``register_vit``) builds the reference ``vit``, loads a plain
``vit`` checkpoint into it (``pretrained``: the very weights the frozen teacher has), then
performs the model surgery of PH-Reg (Chen, Yan, Zhou, Dai & Luo 2025, arXiv:2505.21501) with
:mod:`distillery.models.surgery`: ``registers`` fresh register tokens
(:func:`~distillery.models.surgery.add_registers`) and partial unfreezing by parameter-name patterns
(:func:`~distillery.models.surgery.freeze_except`). Module paths, outputs and the ``norm`` tap keep the
plain ViT's layout (``[B, 1 + N, dim]``: the registers are stripped at ``norm``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...errors import ConfigError
from ...registry import MODELS
from ..surgery import add_registers, freeze_except
from ..reference import ViT, vit

__all__ = ["register_vit"]


@MODELS.register("register_vit")
def register_vit(
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: int | Sequence[int],
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    registers: int = 4,
    pretrained: str | None = None,
    unfreeze: Sequence[str] | None = None,
) -> ViT:
    """A ``vit`` (loaded from ``pretrained``, a plain ``vit``'s safetensors) with ``registers`` new tokens.

    ``unfreeze``: parameter-name patterns left trainable (``fnmatch``); default: the registers,
    the position embedding and the last block, ``["registers.*", "pos_embed", "blocks.<depth-1>.*"]``.
    ``pretrained: null`` starts from a random ViT (then nothing is "post hoc": only for tests).
    """
    net = vit(input_shape, num_classes, patch_size=patch_size, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio)
    if pretrained is not None:
        from ...engine.checkpoint import load_weights

        path = Path(pretrained)
        if not path.is_file():
            raise ConfigError(f"register_vit: pretrained checkpoint {pretrained!r} does not exist.")
        load_weights(net, path, what="register_vit (pretrained vit)")
    add_registers(net, registers)
    patterns = list(unfreeze) if unfreeze is not None else ["registers.*", "pos_embed", f"blocks.{depth - 1}.*"]
    freeze_except(net, patterns)
    return net
