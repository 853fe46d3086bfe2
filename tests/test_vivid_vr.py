"""#33 Vivid-VR's concept distillation (Bai et al. 2025, arXiv:2508.14483): the degradation (blur
kernel, blur, noise) and PSNR against formulas written here, the restorer, the teacher's concept
synthesis (from noise and by re-drawing real images), the config and the errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distillery.config import parse_config
from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.networks import UNet
from distillery.generative.processes import build_process
from distillery.generative.synthetic import resynthesise
from distillery.recipes.vivid_vr import (
    Restorer,
    blur,
    concept_images,
    degrade,
    gaussian_kernel,
    psnr,
    restoration_psnr,
    teacher_config,
    train_restorer,
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


def test_gaussian_kernel_matches_the_formula():
    sigma = 0.8
    k = gaussian_kernel(sigma, dtype=torch.float64)
    size = 2 * math.ceil(2 * sigma) + 1
    assert k.shape == (size, size)
    c = (size - 1) / 2
    raw = torch.tensor([[math.exp(-((i - c) ** 2 + (j - c) ** 2) / (2 * sigma**2)) for j in range(size)] for i in range(size)],
                       dtype=torch.float64)
    torch.testing.assert_close(k, raw / raw.sum())
    with pytest.raises(ConfigError, match="blur_sigma"):
        gaussian_kernel(0.0)
    with pytest.raises(ConfigError, match="odd"):
        gaussian_kernel(1.0, size=4)


def test_blur_is_the_convolution_written_out_and_keeps_constants():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    k = gaussian_kernel(1.0, 5, torch.float64)
    out = blur(x, 1.0, 5)
    for b in range(2):  # interior pixels: no border rule involved
        for i in range(2, 6):
            for j in range(2, 6):
                expected = sum(k[u, v] * x[b, 0, i + u - 2, j + v - 2] for u in range(5) for v in range(5))
                torch.testing.assert_close(out[b, 0, i, j], expected)
    const = torch.full((1, 2, 8, 8), 0.3, dtype=torch.float64)
    torch.testing.assert_close(blur(const, 1.0), const)  # the kernel sums to 1, reflected borders


def test_degrade_is_blur_plus_scaled_noise_from_the_generator():
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    y = degrade(x, blur_sigma=1.0, noise_std=0.2, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(y, blur(x, 1.0) + 0.2 * noise)
    torch.testing.assert_close(degrade(x, blur_sigma=1.0, noise_std=0.0), blur(x, 1.0))
    with pytest.raises(ConfigError, match="noise_std"):
        degrade(x, noise_std=-0.1)


def test_psnr_against_its_definition():
    target = torch.zeros(2, 1, 4, 4)
    pred = target.clone()
    pred[0] += 0.1  # mse 0.01 -> 10 log10(4 / 0.01) = 26.02 dB
    pred[1, 0, 0, 0] = 1.0  # mse 1 / 16 -> 10 log10(64) = 18.06 dB
    torch.testing.assert_close(psnr(pred, target), torch.tensor([10 * math.log10(400.0), 10 * math.log10(64.0)], dtype=torch.float64))
    assert torch.isinf(psnr(target, target)).all()
    with pytest.raises(ConfigError, match="shape"):
        psnr(pred, target[:1])


def test_restorer_starts_as_the_identity_and_training_improves_psnr():
    net = Restorer(1, width=8, depth=3)
    y = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(net(y), y)
    g = torch.Generator().manual_seed(0)
    clean = (torch.rand(32, 1, 1, 1, generator=g) * 2 - 1).expand(32, 1, 8, 8).contiguous()  # flat images: noise is removable
    degraded = degrade(clean, generator=torch.Generator().manual_seed(1))
    trained = train_restorer(clean, steps=20, batch_size=32, width=8, depth=3, lr=1e-2, seed=0)
    assert restoration_psnr(trained, clean, degraded) > float(psnr(degraded, clean).mean()) + 0.5
    with pytest.raises(ConfigError, match="clean images"):
        train_restorer(torch.zeros(0, 1, 8, 8))


def _teacher(conditional: bool = True) -> Denoiser:
    torch.manual_seed(0)
    net = UNet(1, 8, (4, 8), num_classes=3 if conditional else None)
    with torch.no_grad():
        net.out.weight.normal_(0, 0.1)
    return Denoiser(net, build_process({"kind": "flow"}), "velocity", (1, 8, 8), num_classes=3 if conditional else None)


def test_concept_images_from_noise_and_from_real_images():
    teacher = _teacher()
    x = concept_images(teacher, 2, 5, steps=2, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 8, 8) and float(x.abs().max()) <= 1.0
    real = torch.rand(2, 1, 8, 8) * 2 - 1
    r = concept_images(teacher, 1, 4, real=real, t_start=0.5, steps=2, generator=torch.Generator().manual_seed(0))
    assert r.shape == (4, 1, 8, 8)
    # re-drawing from a tiny noise level returns (nearly) the real images, cycled over the n draws
    near = resynthesise(teacher, real, torch.tensor([1, 1]), t_start=1e-4, steps=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(near, real.clamp(-1, 1), atol=2e-3, rtol=0)


@pytest.mark.parametrize(("kwargs", "word"), [({"concept": 3}, "concept"), ({"concept": True}, "concept"),
                                              ({"t_start": 0.5}, "real")])
def test_concept_errors_name_the_key(kwargs, word):
    args = {"concept": 0, **kwargs}
    with pytest.raises(ConfigError, match=word):
        concept_images(_teacher(), args.pop("concept"), 2, steps=1, **args)


def test_an_unconditional_teacher_is_refused():
    with pytest.raises(ConfigError, match="class-conditional"):
        concept_images(_teacher(conditional=False), 0, 2, steps=1)
    with pytest.raises(ConfigError, match="t_start"):
        resynthesise(_teacher(), torch.zeros(1, 1, 8, 8), torch.tensor([0]), t_start=1.5)


def test_shipped_config_and_fragment_parse():
    import yaml

    cfg = parse_config(yaml.safe_load((CONFIGS / "vivid_vr_digits.yaml").read_text()), "vivid_vr_digits.yaml")
    assert cfg.data.conditional and cfg.method.params["label_dropout"] > 0
    raw = compose({"engine": "generative", "data": {"dataset": "digit_images"}, "process": {"kind": "flow"},
                   "train": {"steps": 1}}, teacher_config())
    assert parse_config(raw, "fragment").student.denoiser.name == "unet"
