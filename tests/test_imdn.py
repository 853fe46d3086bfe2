"""IMDN (Hui et al. 2019, arXiv:1909.11856): the block, the attention, the networks, the SR
regression method and the config."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser, build_denoiser_net
from distillery.generative.processes import FlowProcess
from distillery.generative.restoration import (
    IMDB,
    IMDN,
    ContrastChannelAttention,
    PlainSRCNN,
    SRRegression,
    contrast,
    lr_condition,
    parameter_count,
)
from distillery.recipes.imdn import imdn_net, plain_cnn_net, sr_regression_config


def test_contrast_is_std_plus_mean():
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    flat = x.reshape(3, 5, -1).numpy()
    want = flat.std(axis=2) + flat.mean(axis=2)  # numpy's population std (ddof 0)
    assert torch.allclose(contrast(x).squeeze(-1).squeeze(-1), torch.as_tensor(want))


def test_channel_attention_formula():
    torch.manual_seed(0)
    cca = ContrastChannelAttention(8, reduction=4).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    stat = x.std(dim=(2, 3), unbiased=False) + x.mean(dim=(2, 3))  # (2, 8)
    w1, b1 = cca.squeeze.weight[:, :, 0, 0], cca.squeeze.bias
    w2, b2 = cca.excite.weight[:, :, 0, 0], cca.excite.bias
    gate = torch.sigmoid(torch.relu(stat @ w1.T + b1) @ w2.T + b2)
    assert torch.allclose(cca(x), x * gate[:, :, None, None])


def test_imdb_split_sizes_and_gradcheck():
    torch.manual_seed(0)
    assert (IMDB(8, rate=0.25).d, IMDB(8, rate=0.25).r) == (2, 6)
    block = IMDB(4, rate=0.25).double()
    assert (block.d, block.r) == (1, 3)
    assert block.c4.out_channels == 1 and block.cca.squeeze.in_channels == 4 and block.fuse.out_channels == 4
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert block(x).shape == x.shape
    assert torch.autograd.gradcheck(lambda v: block(v), (x,), eps=1e-6, atol=1e-5)


def test_imdn_starts_as_identity_and_reads_cond():
    net = IMDN(channels=8, blocks=2)
    x_t, cond = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    assert torch.equal(net(x_t, torch.rand(2), cond), cond)  # zero-initialised output conv
    assert torch.equal(net(x_t, torch.rand(2), None), x_t)
    torch.nn.init.normal_(net.out.weight)
    out = net(x_t, torch.rand(2), cond)
    assert out.shape == cond.shape and not torch.equal(out, cond)
    assert torch.equal(out, net(torch.zeros_like(x_t), torch.zeros(2), cond))  # x_t and t are ignored


def test_equal_parameter_counts():
    from distillery.reproduce.imdn import NETS

    for imdn_spec, cnn_spec in ((imdn_net(), plain_cnn_net()), (NETS["imdn"], NETS["plain_cnn"])):
        a = parameter_count(build_denoiser_net(imdn_spec, (1, 8, 8)))
        b = parameter_count(build_denoiser_net(cnn_spec, (1, 8, 8)))
        assert abs(a - b) / b <= 0.05, (a, b)
    # the plain CNN's count in closed form: 9 c + c + (depth - 2) (9 c^2 + c) + 9 c + 1
    c, depth = 21, 6
    assert parameter_count(PlainSRCNN(channels=c, depth=depth)) == 9 * c + c + (depth - 2) * (9 * c * c + c) + 9 * c + 1


def test_bad_networks():
    with pytest.raises(ConfigError, match="cond"):
        IMDN(channels=8, blocks=1)(torch.randn(2, 1, 8, 8), None, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="data.conditional"):
        IMDN(num_classes=10)
    with pytest.raises(ConfigError, match="rate"):
        IMDB(8, rate=1.0)
    with pytest.raises(ConfigError, match="depth"):
        PlainSRCNN(depth=1)


def test_sr_regression_loss_and_sampling():
    torch.manual_seed(0)
    student = Denoiser(IMDN(channels=8, blocks=1), FlowProcess(), "x0", (1, 8, 8))
    torch.nn.init.normal_(student.net.out.weight, std=0.1)
    method = SRRegression(student, scale=2, upsample="bicubic", loss="l1")
    hr = torch.rand(4, 1, 8, 8) * 2 - 1
    loss, logs = method.loss("student", {"x": hr, "y": torch.zeros(4, dtype=torch.long)}, 0)
    want = (student.net(hr, None, lr_condition(hr, 2, "bicubic")) - hr).abs().mean()
    want = float(want.detach())
    assert math.isclose(float(loss.detach()), want, rel_tol=1e-5) and math.isclose(logs["loss"], want, rel_tol=1e-5)
    assert method.sample(5, 1, cond=lr_condition(hr[:1].expand(5, -1, -1, -1), 2)).shape == (5, 1, 8, 8)
    with pytest.raises(ConfigError, match="eval.steps"):
        method.sample(2, 4)


def test_sr_regression_bad_params():
    student = Denoiser(IMDN(channels=8, blocks=1), FlowProcess(), "x0", (1, 8, 8))
    with pytest.raises(ConfigError, match="scale"):
        SRRegression(student, scale=3)
    with pytest.raises(ConfigError, match="upsample"):
        SRRegression(student, upsample="lanczos")
    with pytest.raises(ConfigError, match="loss"):
        SRRegression(student, loss="huber")


def test_config_parses_and_builds_the_network():
    import yaml

    from distillery.config.bundled import CONFIG_DIR
    from distillery.generative.config import parse_generative_config

    cfg = parse_generative_config(yaml.safe_load((CONFIG_DIR / "imdn_digits.yaml").read_text()))
    assert cfg.method.kind == "sr_regression" and cfg.student.denoiser.name == "imdn"
    assert sr_regression_config()["method"]["kind"] == "sr_regression"
    net = build_denoiser_net(cfg.student.denoiser.model_dump(), (1, 8, 8))
    assert isinstance(net, IMDN)


def test_sr_picture_is_the_lr_sr_hr_triplet(tmp_path):
    """``distillery sample`` draws an SR run's samples as LR | SR | HR triplets (the method's picture hook)."""
    from PIL import Image

    from distillery.generative.sample import save_picture

    student = Denoiser(IMDN(channels=8, blocks=1), FlowProcess(), "x0", (1, 8, 8))
    method = SRRegression(student, scale=2)
    x = torch.rand(12, 1, 8, 8) * 2 - 1
    path = method.picture(x, tmp_path / "triplets.png", "t")
    assert path == tmp_path / "triplets.png" and path.is_file()
    generic = save_picture(x, tmp_path / "grid.png")
    w, h = Image.open(path).size
    assert h > w  # 8 rows of 3 columns: taller than wide, unlike the square generic grid
    assert Image.open(generic).size != (w, h)
