"""The generative engine's reference denoisers: MLP features, the small U-Net and DiT."""

from __future__ import annotations

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import (
    DENOISERS,
    Denoiser,
    MLPDenoiser,
    build_denoiser_net,
)
from distillery.generative.networks import DiT, UNet, count_parameters, unpatchify
from distillery.generative.processes import build_process


def _perturb(net: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its (partly zero) initialisation, so outputs depend on everything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_mlp_features_are_the_penultimate_activations():
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, hidden=(16, 8), time_dim=8, num_classes=3)
    x, t, y = torch.randn(5, 2), torch.rand(5), torch.tensor([0, 1, 2, 0, 1])
    f = net.features(x, t, y)
    assert f.shape == (5, 8)
    assert bool((f >= -0.2785).all())  # after SiLU (its minimum is about -0.2785)
    torch.testing.assert_close(net.body[-1](f), net(x, t, y))
    # None is the null class, in features as in forward
    null = torch.full((5,), 3)
    torch.testing.assert_close(net.features(x, t, None), net.features(x, t, null))


def test_mlp_seeded_weights_unchanged():
    # the features method must not change the module layout (checkpoints, seeded weights)
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, hidden=(4,), time_dim=4)
    assert [k for k, _ in net.named_parameters()] == [
        "time.mlp.0.weight", "time.mlp.0.bias", "time.mlp.2.weight", "time.mlp.2.bias",
        "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]


@pytest.mark.parametrize("name", ["unet", "dit"])
@pytest.mark.parametrize("size", [8, 16])
def test_image_networks_shapes_and_contract(name, size):
    torch.manual_seed(0)
    net = build_denoiser_net({"name": name}, (3, size, size), num_classes=10)
    assert DENOISERS.get(name).shape_kind == "image"
    x, t = torch.randn(4, 3, size, size), torch.rand(4)
    out = net(x, t, torch.arange(4))
    assert out.shape == x.shape
    assert float(out.detach().abs().max()) == 0.0  # zero-initialised output layer
    f = net.features(x, t, torch.arange(4))
    assert f.shape == (4, net.feature_dim) == (4, 64)
    den = Denoiser(net, build_process({"kind": "vp"}), "eps", sample_shape=(3, size, size), num_classes=10)
    assert den.predict(x, t, torch.arange(4), "x0").shape == x.shape


@pytest.mark.parametrize("cls", [UNet, DiT])
def test_image_networks_parameter_budget(cls):
    for classes in (None, 10):
        net = cls(in_channels=3, image_size=16, num_classes=classes)
        assert count_parameters(net) < 200_000


@pytest.mark.parametrize("cls", [UNet, DiT])
def test_conditioning_and_gradients(cls):
    torch.manual_seed(0)
    net = cls(in_channels=1, image_size=8, num_classes=4)
    _perturb(net)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5)
    with torch.no_grad():
        a, b = net(x, t, torch.zeros(4, dtype=torch.long)), net(x, t, torch.ones(4, dtype=torch.long))
        assert float((a - b).abs().max()) > 1e-4  # the label matters
        torch.testing.assert_close(net(x, t, None), net(x, t, torch.full((4,), 4)))  # None: the null class
        c = net(x, torch.full((4,), 0.9), torch.zeros(4, dtype=torch.long))
        assert float((a - c).abs().max()) > 1e-4  # the time matters
        # each sample's output depends on its own input only (no mixing across the batch)
        x2 = x.clone()
        x2[1:] += 1.0
        torch.testing.assert_close(net(x2, t, None)[0], net(x, t, None)[0])
    loss = net(x, t, None).square().mean() + net.features(x, t, None).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_dit_unpatchify_inverts_patchify():
    # a patchify written here independently: (B, C, H, W) -> (B, N, p * p * C) with (row, col, C) order
    b, c, h, p = 2, 3, 8, 2
    x = torch.randn(b, c, h, h)
    g = h // p
    tokens = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * c)
    torch.testing.assert_close(unpatchify(tokens, p, c), x)


def test_dit_blocks_start_as_identity():
    torch.manual_seed(0)
    net = DiT(in_channels=1, image_size=8)
    tokens = torch.randn(3, 16, 64)
    c = torch.randn(3, 32)
    torch.testing.assert_close(net.blocks[0](tokens, c), tokens)


def test_bad_shapes_refused():
    with pytest.raises(ConfigError, match="square"):
        build_denoiser_net({"name": "unet"}, (1, 8, 6))
    with pytest.raises(ConfigError, match="divisible by patch"):
        build_denoiser_net({"name": "dit", "params": {"patch": 3}}, (1, 8, 8))
    with pytest.raises(ConfigError, match="even"):
        build_denoiser_net({"name": "unet"}, (1, 7, 7))
    with pytest.raises(ConfigError, match="channels"):
        build_denoiser_net({"name": "unet", "params": {"channels": [8, 16, 32]}}, (1, 8, 8))
    with pytest.raises(ConfigError, match="unet"):
        build_denoiser_net({"name": "unet", "params": {"width": 3}}, (1, 8, 8))


def test_unet_more_blocks_and_widths():
    net = build_denoiser_net({"name": "unet", "params": {"channels": [16, 24], "blocks": 2}}, (2, 8, 8))
    x = torch.randn(2, 2, 8, 8)
    assert net(x, torch.rand(2), None).shape == x.shape
    assert net.features(x, torch.rand(2)).shape == (2, 24)


def test_importing_the_denoisers_does_not_import_diffusers():
    import subprocess
    import sys

    code = ("import sys, distillery.generative.denoisers as d; "
            "assert 'diffusers_unet2d' in d.DENOISERS and 'unet' in d.DENOISERS; "
            "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
