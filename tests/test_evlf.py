"""#9 EVLF (Cai et al. 2026, arXiv:2603.07476): the cross-attention fusion block against formulas
written here, its gradients, where the U-Net reads the class (early vs late), the synthetic-set
generator and the train-on-synthetic evaluator, the config and the errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distillery.config import parse_config
from distillery.errors import ConfigError
from distillery.generative.denoisers import DENOISERS, Denoiser, build_denoiser_net
from distillery.generative.processes import build_process
from distillery.recipes.evlf import (
    ClassCrossAttention,
    FusionUNet,
    cross_attention,
    fusion_denoiser,
    generator_config,
    save_class_grid,
    synthetic_set,
    train_on_synthetic,
)
from distillery.reproduce._common import compose

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread (a shared CPU makes a second one much slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Every parameter drawn at random (the zero-initialised output projections included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def _softmax_attention_by_hand(q, k, v):
    """Loops over batch, head and query: ``sum_m exp(s_m) v_m / sum_m exp(s_m)``, ``s_m = q.k_m / sqrt(d)``."""
    b, h, n, d = q.shape
    out = torch.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                s = torch.stack([(q[bi, hi, i] * k[bi, hi, m]).sum() / math.sqrt(d) for m in range(k.shape[2])])
                w = torch.exp(s - s.max())
                w = w / w.sum()
                out[bi, hi, i] = (w[:, None] * v[bi, hi]).sum(0)
    return out


def test_cross_attention_matches_the_softmax_written_out():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 3, generator=g, dtype=torch.float64) * 2 for _ in range(3))
    k, v = k[:, :, :4], v[:, :, :4]  # 4 keys for 5 queries
    torch.testing.assert_close(cross_attention(q, k, v), _softmax_attention_by_hand(q, k, v))


def test_fusion_block_matches_its_formula_per_position():
    torch.manual_seed(0)
    block = ClassCrossAttention(channels=4, context_dim=3, heads=2).double()
    _randomise(block)
    h = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    ctx = torch.randn(2, 5, 3, dtype=torch.float64)
    # GroupNorm by hand: 2 groups of 2 channels, per sample over (channels of the group, H, W)
    groups = block.norm.num_groups
    hg = h.reshape(2, groups, -1)
    normed = ((hg - hg.mean(-1, keepdim=True)) / torch.sqrt(hg.var(-1, unbiased=False, keepdim=True) + block.norm.eps)).reshape_as(h)
    normed = normed * block.norm.weight[None, :, None, None] + block.norm.bias[None, :, None, None]
    expected = h.clone()
    d = 2  # head width
    for b in range(2):
        keys = ctx[b] @ block.k.weight.T + block.k.bias  # (M, C)
        values = ctx[b] @ block.v.weight.T + block.v.bias
        for i in range(3):
            for j in range(3):
                query = block.q.weight @ normed[b, :, i, j] + block.q.bias  # (C,)
                heads = []
                for hh in range(2):
                    sl = slice(hh * d, (hh + 1) * d)
                    w = torch.softmax(keys[:, sl] @ query[sl] / math.sqrt(d), 0)
                    heads.append(w @ values[:, sl])
                expected[b, :, i, j] += block.o.weight @ torch.cat(heads) + block.o.bias
    torch.testing.assert_close(block(h, ctx), expected)


def test_fusion_block_gradcheck_float64():
    torch.manual_seed(1)
    block = ClassCrossAttention(channels=4, context_dim=3, heads=2).double()
    _randomise(block, seed=1)
    h = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (h, ctx), eps=1e-6, atol=1e-5)


def test_fusion_block_is_the_identity_at_initialisation():
    block = ClassCrossAttention(channels=8, context_dim=4)
    h = torch.randn(3, 8, 4, 4)
    torch.testing.assert_close(block(h, torch.randn(3, 2, 4)), h)


def _net(fusion: str, seed: int = 0) -> FusionUNet:
    torch.manual_seed(seed)
    net = FusionUNet(1, 8, (4, 8), num_classes=3, fusion=fusion, n_tokens=2)
    _randomise(net, seed)
    return net


@pytest.mark.parametrize("fusion", ["early", "late", "both"])
def test_the_class_enters_only_through_the_cross_attention(fusion):
    net = _net(fusion).double()
    x, t = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    a, b = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 0, 1, 1])
    assert not torch.allclose(net(x, t, a), net(x, t, b))
    with torch.no_grad():  # cut the cross-attention outputs: the labels no longer matter
        for block in (net.early, net.late):
            if block is not None:
                block.o.weight.zero_()
                block.o.bias.zero_()
    torch.testing.assert_close(net(x, t, a), net(x, t, b))
    assert net.label is None  # no additive class embedding in the residual blocks


def test_early_fusion_reads_the_stem_output_and_late_fusion_feeds_the_output_layer():
    seen = {}
    early, late = _net("early"), _net("late")
    early.early.register_forward_hook(lambda m, i, o: seen.__setitem__("early_in", i[0]))
    early.stem.register_forward_hook(lambda m, i, o: seen.__setitem__("stem_out", o))
    late.up0[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("decoder_out", o))

    def on_late(module, inputs, output):
        seen["late_in"], seen["late_out"] = inputs[0], output

    late.late.register_forward_hook(on_late)
    late.out_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("out_norm_in", i[0]))
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1])
    early(x, t, y)
    late(x, t, y)
    assert seen["early_in"] is seen["stem_out"]
    assert seen["early_in"].shape == (2, 4, 8, 8)  # full resolution, channels[0]
    assert seen["late_in"] is seen["decoder_out"] and seen["out_norm_in"] is seen["late_out"]
    # the same module in both places: equal parameter counts
    assert sum(p.numel() for p in early.parameters()) == sum(p.numel() for p in late.parameters())


def test_the_null_class_is_what_none_selects():
    net = _net("early")
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.tensor([3, 3])))


def test_registered_and_built_from_a_spec_with_the_class_count():
    assert "unet_fusion" in DENOISERS
    net = build_denoiser_net(fusion_denoiser("late", channels=(4, 8)), (1, 8, 8), num_classes=10)
    assert isinstance(net, FusionUNet) and net.fusion == "late" and net.num_classes == 10
    assert net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 9])).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(("kwargs", "word"), [({"fusion": "middle"}, "fusion"), ({"num_classes": None}, "conditional"),
                                              ({"n_tokens": 0}, "n_tokens"), ({"heads": 3}, "heads")])
def test_bad_settings_are_config_errors_naming_the_key(kwargs, word):
    params = {"num_classes": 10, **kwargs}
    with pytest.raises(ConfigError, match=word):
        FusionUNet(1, 8, (4, 8), **params)
    if "fusion" in kwargs:
        with pytest.raises(ConfigError, match="fusion"):
            fusion_denoiser(kwargs["fusion"])


def _denoiser() -> Denoiser:
    return Denoiser(_net("early"), build_process({"kind": "flow"}), "velocity", (1, 8, 8), num_classes=3)


def test_synthetic_set_is_class_major_clamped_and_reproducible():
    den = _denoiser()
    x, y = synthetic_set(den, 2, 3, steps=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 8, 8) and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert float(x.abs().max()) <= 1.0
    x2, _ = synthetic_set(den, 2, 3, steps=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, x2)
    x3, _ = synthetic_set(den, 2, 3, steps=2, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(x, x3)  # guidance changes the draws
    with pytest.raises(ConfigError, match="ipc"):
        synthetic_set(den, 0, 3)


def _quadrant_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes: the bright 4x4 quadrant of a noisy 8x8 image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5 - 1
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 2
    return x, y


def test_train_on_synthetic_learns_a_separable_set_and_checks_its_input():
    x, y = _quadrant_images(40, 0)
    test_x, test_y = _quadrant_images(200, 1)
    acc = train_on_synthetic(x, y, test_x, test_y, num_classes=4, steps=30, lr=1e-2, seed=0, model="mlp", params={})
    assert acc > 0.9  # chance is 0.25
    with pytest.raises(ConfigError, match="same non-zero count"):
        train_on_synthetic(x, y[:5], test_x, test_y)


def test_class_grid_png_is_written(tmp_path):
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    path = save_class_grid(x, torch.tensor([0, 0, 1, 1, 2, 2]), tmp_path / "grid.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shipped_config_and_fragments_parse():
    import yaml

    cfg = parse_config(yaml.safe_load((CONFIGS / "evlf_digits.yaml").read_text()), "evlf_digits.yaml")
    assert cfg.student.denoiser.name == "unet_fusion" and cfg.data.conditional
    raw = compose({"engine": "generative", "data": {"dataset": "digit_images"}, "process": {"kind": "flow"},
                   "train": {"steps": 1}}, generator_config("late"))
    cfg = parse_config(raw, "fragment")
    assert cfg.student.denoiser.params["fusion"] == "late" and cfg.method.params["label_dropout"] == 0.1
