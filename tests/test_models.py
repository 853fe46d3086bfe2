"""Reference models and build_model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.models import build_model
from distillery.registry import MODELS

CASES = [
    # (name, input_shape, params, documented module paths)
    ("mlp", (40,), {"hidden": (32, 16), "dropout": 0.1}, ["layers.0.fc", "layers.0.act", "layers.0.drop", "layers.1.fc", "layers.1.act", "head"]),
    ("mlp", (1, 8, 8), {}, ["layers.0.fc", "layers.1.fc", "head"]),
    ("cnn1d", (40,), {"channels": (8, 16)}, ["blocks.0.conv", "blocks.0.norm", "blocks.0.act", "blocks.1.conv", "pool", "head"]),
    ("cnn1d", (2, 40), {}, ["blocks.0.conv", "blocks.2.act", "pool", "head"]),
    ("cnn2d", (1, 8, 8), {"channels": (8, 16), "norm": "group"}, ["blocks.0.conv", "blocks.0.norm", "blocks.1.act", "pool", "head"]),
    ("resnet", (40,), {"widths": (8, 16), "blocks_per_stage": 2}, ["stem", "stem.conv", "stages.0.0.conv1", "stages.0.0.bn1", "stages.0.1.conv2", "stages.1.0.shortcut", "stages.1.1.act2", "pool", "head"]),
    ("resnet", (3, 16, 16), {"widths": (8, 16, 32)}, ["stem", "stages.0.0.conv1", "stages.2.0.conv2", "pool", "head"]),
    ("vit", (40,), {"patch_size": 4, "dim": 16, "depth": 2, "heads": 2}, ["patch_embed", "blocks.0.norm1", "blocks.0.attn", "blocks.0.attn.softmax", "blocks.0.mlp", "blocks.1.attn.softmax", "norm", "head"]),
    ("vit", (3, 8, 8), {"patch_size": 2, "dim": 16, "depth": 1, "heads": 4}, ["patch_embed", "blocks.0.attn.softmax", "norm", "head"]),
]


@pytest.mark.parametrize("name,shape,params,paths", CASES)
def test_output_shape_and_module_paths(name, shape, params, paths):
    torch.manual_seed(0)
    model = build_model(name, shape, 7, **params)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 7)
    assert torch.isfinite(out).all()
    modules = dict(model.named_modules())
    for p in paths:
        assert p in modules, f"{name}: no module {p}"
    assert isinstance(modules["head"], nn.Linear)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_documented_in_docstrings():
    for name in ("mlp", "cnn1d", "cnn2d", "resnet", "vit"):
        assert name in MODELS and MODELS.summary(name)
        doc = MODELS.get(name).__doc__
        assert "head" in doc


def test_channel_dim_is_added_for_1d():
    m = build_model("cnn1d", (40,), 3)
    m.eval()
    x = torch.randn(2, 40)
    assert torch.allclose(m(x), m(x.unsqueeze(1)))


def test_pool_gives_features():
    m = build_model("cnn1d", (40,), 3, channels=(8, 12))
    feats = {}
    m.pool.register_forward_hook(lambda mod, i, o: feats.setdefault("pool", o))
    m(torch.randn(4, 40))
    assert feats["pool"].shape == (4, 12)


def test_cnn2d_rejects_flat_inputs():
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        build_model("cnn2d", (64,), 10)
    m = build_model("cnn2d", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match=r"\[B, C, H, W\]"):
        m(torch.randn(2, 64))


def test_vit_softmax_hook_captures_attention():
    torch.manual_seed(0)
    m = build_model("vit", (2, 40), 5, patch_size=5, dim=16, depth=2, heads=4)
    captured = []
    handle = m.blocks[1].attn.softmax.register_forward_hook(lambda mod, i, o: captured.append(o))
    m(torch.randn(3, 2, 40))
    handle.remove()
    (attn,) = captured
    n = 40 // 5 + 1
    assert attn.shape == (3, 4, n, n)
    assert torch.allclose(attn.sum(-1), torch.ones(3, 4, n), atol=1e-5)
    assert (attn >= 0).all()


def test_vit_matches_reference_attention():
    """The explicit attention equals torch's scaled_dot_product_attention."""
    torch.manual_seed(0)
    m = build_model("vit", (16,), 3, patch_size=4, dim=8, depth=1, heads=2)
    attn = m.blocks[0].attn
    x = torch.randn(2, 5, 8)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 8)
    assert torch.allclose(attn(x), attn.proj(ref), atol=1e-5)


def test_vit_param_errors():
    with pytest.raises(ConfigError, match="divide"):
        build_model("vit", (40,), 10, patch_size=3)
    with pytest.raises(ConfigError, match="divisible by heads"):
        build_model("vit", (40,), 10, patch_size=4, dim=10, heads=4)
    with pytest.raises(ConfigError, match="Missing required parameter 'patch_size'"):
        build_model("vit", (40,), 10)


def test_model_param_errors():
    with pytest.raises(ConfigError, match="activation"):
        build_model("mlp", (4,), 2, activation="relux")
    with pytest.raises(ConfigError, match="norm"):
        build_model("cnn1d", (40,), 2, norm="instance")
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("cnn1d", (1, 8, 8), 2)


# --------------------------------------------------------------------------------------
# build_model: import paths and errors
# --------------------------------------------------------------------------------------


@pytest.fixture
def helpers_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def test_import_path_class(helpers_path):
    m = build_model("helpers_models:TinyNet", [1, 4, 4], 3, width=5)
    assert m.got == {"input_shape": (1, 4, 4), "num_classes": 3, "width": 5}
    assert m(torch.randn(2, 1, 4, 4)).shape == (2, 3)


def test_import_path_factory_without_shape_args(helpers_path):
    m = build_model("helpers_models:fixed_net", (40,), 10, width=6)
    assert m[0].out_features == 6
    k = build_model("helpers_models:kwargs_net", (2,), 4, extra=1)
    assert k.got == {"input_shape": (2,), "num_classes": 4, "extra": 1}


def test_import_path_errors(helpers_path):
    with pytest.raises(ConfigError, match=r"Cannot import module 'no_such_pkg\.mod'.*ModuleNotFoundError"):
        build_model("no_such_pkg.mod:Net", (4,), 2)
    with pytest.raises(ConfigError, match=r"no attribute 'TinyNett'.*Did you mean 'TinyNet'"):
        build_model("helpers_models:TinyNett", (4,), 2)
    with pytest.raises(ConfigError, match=r"'depth'.*Accepted parameters: width"):
        build_model("helpers_models:TinyNet", (4,), 2, depth=3)
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        build_model("helpers_models:not_a_module", (4,), 2)
    with pytest.raises(ConfigError, match="not a class or factory"):
        build_model("helpers_models:NOT_CALLABLE", (4,), 2)
    with pytest.raises(ConfigError, match="helpers_models:TinyNet"):
        build_model("helpers_models.TinyNet", (4,), 2)


def test_unknown_registered_name():
    with pytest.raises(ConfigError, match=r"Unknown model 'resnt'.*Did you mean 'resnet'"):
        build_model("resnt", (4,), 2)
    with pytest.raises(ConfigError, match=r"'hiden'.*did you mean 'hidden'.*Accepted parameters: hidden, dropout, activation"):
        build_model("mlp", (4,), 2, hiden=(3,))


def test_import_path_never_calls_what_is_not_a_model(tmp_path, helpers_path):
    # issue 10: 'os:system' ran its command before failing; the attribute is now resolved,
    # checked, and refused without being called.
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match=r"'os:system'.*not a torch\.nn\.Module subclass.*Accepted: an nn\.Module subclass"):
        build_model("os:system", (4,), 2, command=f"touch {marker}")
    assert not marker.exists()
    with pytest.raises(ConfigError, match=r"'torch:zeros' names the builtin function .*zeros.*not called"):
        build_model("torch:zeros", (4,), 2)
    with pytest.raises(ConfigError, match=r"'helpers_models:not_a_module'.*return annotation: none"):
        build_model("helpers_models:not_a_module", (4,), 2)
    with pytest.raises(ConfigError, match=r"'math:prod'"):
        build_model("math:prod", (4,), 2)


def test_import_path_accepts_annotated_and_registered_factories(helpers_path):
    # string annotations (from __future__ import annotations) resolve to nn.Sequential
    assert isinstance(build_model("helpers_models:annotated_net", (3,), 2, width=5), nn.Sequential)
    # get_type_hints fails (a TYPE_CHECKING-only name): the return annotation is looked up alone
    assert isinstance(build_model("helpers_models:typed_net", (3,), 2, width=5), nn.Linear)
    # a registered factory, reached by its import path
    assert isinstance(build_model("distillery.models.reference:mlp", (4,), 2), nn.Module)
    # torch's own classes are nn.Module subclasses
    assert isinstance(build_model("torch.nn:Linear", (4,), 2, in_features=4, out_features=2), nn.Linear)
    # an annotation that lies is still caught after the call
    with pytest.raises(ConfigError, match="returned a int, not a torch.nn.Module"):
        build_model("helpers_models:lying_net", (4,), 2)


def _last_feature_map(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    seen = {}
    model.pool.register_forward_hook(lambda mod, inputs, out: seen.update(map=tuple(inputs[0].shape[2:])))
    model.eval()
    model(torch.zeros(2, *shape))
    return seen["map"]


@pytest.mark.parametrize("name", ["cnn2d", "resnet"])
def test_2d_reference_models_deepen_with_the_image_size(name):
    # (side, stages, last feature map): up to 16x16 the network is the one tuned on 8x8 digits;
    # a larger image gets a stride-2 stage per doubling beyond 8, back to the 2x2 map of 8x8
    expected = [(8, 3, (2, 2)), (16, 3, (4, 4)), (17, 5, (2, 2)), (28, 5, (2, 2)), (32, 5, (2, 2)), (64, 6, (2, 2))]
    counts = []
    for side, stages, last in expected:
        m = build_model(name, (1, side, side), 10)
        assert len(m.blocks if name == "cnn2d" else m.stages) == stages, side
        assert _last_feature_map(m, (1, side, side)) == last, side
        counts.append(sum(p.numel() for p in m.parameters()))
    assert counts[0] == counts[1] == (56554 if name == "cnn2d" else 77754)  # what 8x8 digits always got
    assert counts[1] < counts[2] == counts[3] == counts[4] < counts[5]
    # non-square images follow their longer side
    assert _last_feature_map(build_model(name, (3, 8, 28), 10), (3, 8, 28)) == (1, 2)
    # extra_stages: 0 keeps three stages at any size; an explicit count is taken as given
    assert _last_feature_map(build_model(name, (1, 28, 28), 10, extra_stages=0), (1, 28, 28)) == (7, 7)
    assert _last_feature_map(build_model(name, (1, 8, 8), 10, extra_stages=1), (1, 8, 8)) == (1, 1)
    with pytest.raises(ConfigError, match="extra_stages"):
        build_model(name, (1, 28, 28), 10, extra_stages=-1)


def test_cnn2d_added_blocks_follow_the_last_width_and_explicit_strides_turn_them_off():
    m = build_model("cnn2d", (1, 28, 28), 10, channels=[8, 16])
    assert [b.conv.out_channels for b in m.blocks] == [8, 16, 16, 16]
    assert [b.conv.stride for b in m.blocks] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert _last_feature_map(m, (1, 28, 28)) == (4, 4)  # as small as this network's map on 8x8 images
    assert m.head.in_features == 16
    fixed = build_model("cnn2d", (1, 28, 28), 10, channels=[8, 16], strides=[1, 2])
    assert len(fixed.blocks) == 2 and _last_feature_map(fixed, (1, 28, 28)) == (14, 14)
    # 1D models keep their depth: MNIST-1D (L = 40) networks are unchanged
    assert len(build_model("resnet", (40,), 10).stages) == 3
    assert len(build_model("cnn1d", (400,), 10).blocks) == 3
