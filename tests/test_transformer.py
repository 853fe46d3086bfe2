"""The shared transformer block (models/transformer.py): one block for every ViT, pluggable attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distillery.errors import ConfigError, ShapeError
from distillery.models import build_model
from distillery.models.linear_attention import LinearAttention, LinearViT
from distillery.models.reference import ViT, channels_first
from distillery.models.transformer import Attention, TransformerBlock


def test_block_equals_the_pre_norm_formula():
    """x + softmax-attention(LN(x)), then + W2 gelu(W1 LN(x) + b1) + b2, written with torch.functional."""
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, mlp_ratio=1.5, dropout=0.0).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    a = block.attn
    h = F.layer_norm(x, (8,), block.norm1.weight, block.norm1.bias)
    q, k, v = F.linear(h, a.qkv.weight, a.qkv.bias).reshape(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 5, 8)
    x1 = x + F.linear(att, a.proj.weight, a.proj.bias)
    m = block.mlp
    h2 = F.layer_norm(x1, (8,), block.norm2.weight, block.norm2.bias)
    expected = x1 + F.linear(F.gelu(F.linear(h2, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)
    torch.testing.assert_close(block(x), expected)
    assert m.fc1.out_features == 12


def test_block_module_names_are_the_checkpoint_keys():
    keys = list(TransformerBlock(8, 2, 2.0, 0.0).state_dict())
    assert keys == ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]


def test_every_vit_is_built_from_the_shared_block():
    kw = {"patch_size": 4, "dim": 16, "depth": 2, "heads": 2}
    models = {
        "vit": build_model("vit", (40,), 3, **kw),
        "linear_vit": build_model("linear_vit", (40,), 3, **kw),
        "token_masking_vit": build_model("token_masking_vit", (40,), 3, **kw),
        "register_vit": build_model("register_vit", (40,), 3, registers=2, **kw),
    }
    mae = build_model("mae_vit", (40,), 3, decoder_depth=2, **kw)
    models["mae_vit"] = mae.encoder
    for name, m in models.items():
        assert all(type(b) is TransformerBlock for b in m.blocks), name
    assert all(type(b) is TransformerBlock for b in mae.decoder_blocks)
    assert all(isinstance(b.attn, LinearAttention) for b in models["linear_vit"].blocks)


def test_attention_is_pluggable():
    """A ViT built with attention=LinearAttention has linear_vit's layout and runs."""
    torch.manual_seed(0)
    plugged = ViT(1, (40,), 3, (4,), 16, 2, 2, 2.0, 0.0, attention=LinearAttention)
    swapped = build_model("linear_vit", (40,), 3, patch_size=4, dim=16, depth=2, heads=2)
    assert isinstance(swapped, LinearViT)
    assert list(plugged.state_dict()) == list(swapped.state_dict())
    assert all(isinstance(b.attn, LinearAttention) for b in plugged.blocks)
    assert plugged(torch.randn(2, 40)).shape == (2, 3)
    assert isinstance(build_model("vit", (40,), 3, patch_size=4, dim=8, depth=1, heads=2).blocks[0].attn, Attention)


def test_vit_steps_compose_to_tokens():
    """patch_tokens + encode_patches on all patches gives the same tokens as ViT.tokens."""
    torch.manual_seed(0)
    m = build_model("vit", (2, 8, 8), 3, patch_size=4, dim=16, depth=2, heads=2).eval()
    x = torch.randn(3, 2, 8, 8)
    torch.testing.assert_close(m.encode_patches(m.patch_tokens(x)), m.tokens(x))
    assert m.encode_patches(m.patch_tokens(x)[:, :2]).shape == (3, 3, 16)


def test_channels_first():
    x = torch.zeros(2, 40)
    assert channels_first(x, 1, True, "m").shape == (2, 1, 40)
    assert channels_first(torch.zeros(2, 3, 40), 1, False, "m").shape == (2, 3, 40)
    assert channels_first(torch.zeros(2, 1, 8, 8), 2, False, "m").shape == (2, 1, 8, 8)
    with pytest.raises(ConfigError, match=r"m expects input \[B, L\] or \[B, C, L\]; got a tensor of shape \[2, 40\]"):
        channels_first(x, 1, False, "m")
    with pytest.raises(ShapeError, match=r"\[B, C, H, W\]"):
        channels_first(x, 2, False, "m", error=ShapeError)
