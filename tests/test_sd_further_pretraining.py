"""SD for further pre-training (#13): masked reconstruction, the MAE wrapper, the SD stage, the shifted domain."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from distillery.config import parse_config
from distillery.data import load_dataset
from distillery.data.miniature.domains import domain_shift
from distillery.errors import ConfigError, ShapeError
from distillery.models import build_model, vit
from distillery.models.mae import encoder_state_dict, patchify
from distillery.objectives import MaskedReconstruction, masked_reconstruction_loss
from distillery.recipes.sd_further_pretraining import (
    export_encoder,
    further_pretraining_distiller,
    reinitialise,
    self_distillation_distiller,
)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def loop_reconstruction(pred, target, mask, norm_target=False, eps=1e-6):
    """The MAE loss written out sample by sample, patch by patch."""
    out = []
    for b in range(pred.shape[0]):
        num = den = 0.0
        for n in range(pred.shape[1]):
            t = [float(v) for v in target[b, n]]
            if norm_target:
                mu = sum(t) / len(t)
                var = sum((v - mu) ** 2 for v in t) / len(t)
                t = [(v - mu) / math.sqrt(var + eps) for v in t]
            err = sum((float(p) - v) ** 2 for p, v in zip(pred[b, n], t)) / len(t)
            m = 1.0 if mask is None else float(mask[b, n])
            num += m * err
            den += m
        out.append(num / den if den > 0 else 0.0)
    return torch.tensor(out, dtype=torch.float64)


# -- the objective -------------------------------------------------------------------------
@pytest.mark.parametrize("norm_target", [False, True])
@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
def test_masked_reconstruction_matches_the_loop(norm_target, mask_kind):
    pred, target = randn(3, 5, 4, seed=1), randn(3, 5, 4, seed=2) * 2 + 1
    mask = {"bool": torch.rand(3, 5, generator=torch.Generator().manual_seed(3)) < 0.6,
            "float": torch.rand(3, 5, generator=torch.Generator().manual_seed(4)).double(), "none": None}[mask_kind]
    if mask_kind == "bool":
        mask[0] = False  # a sample with nothing masked contributes 0
    expected = loop_reconstruction(pred, target, mask, norm_target)
    got = masked_reconstruction_loss(pred, target, mask, norm_target, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(MaskedReconstruction(norm_target)(pred, target, mask), expected.mean())


@pytest.mark.parametrize("norm_target", [False, True])
def test_masked_reconstruction_gradcheck(norm_target):
    pred = randn(2, 4, 3, seed=5).requires_grad_()
    target = randn(2, 4, 3, seed=6).requires_grad_()
    weights = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p, t: masked_reconstruction_loss(p, t, weights, norm_target), (pred, target))


def test_masked_reconstruction_rejects_bad_shapes():
    with pytest.raises(ShapeError, match=r"\[B, N, P\]"):
        masked_reconstruction_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ShapeError, match="one entry per patch"):
        masked_reconstruction_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, 4))


# -- patches and the MAE wrapper -------------------------------------------------------------
def test_patchify_is_the_vit_token_order():
    """A linear map of patchify's rows with the patch conv's weights equals the ViT's patch embedding."""
    torch.manual_seed(0)
    for shape, patch in (((2, 40), 4), ((3, 2, 6, 8), (3, 2))):
        net = vit(shape[1:], 5, patch_size=patch, dim=8, depth=1, heads=2)
        x = torch.randn(*shape)
        xc = x.unsqueeze(1) if x.ndim == 2 else x
        proj = net.patch_embed.proj
        via_patches = patchify(xc, proj.kernel_size) @ proj.weight.reshape(8, -1).T + proj.bias
        torch.testing.assert_close(via_patches, net.patch_embed(xc), rtol=1e-5, atol=1e-5)
    x = torch.arange(2 * 8 * 4, dtype=torch.float64).reshape(1, 2, 8, 4)
    p = patchify(x, (2, 2))  # row-major patches, each channel-major: [c, dy, dx]
    assert p.shape == (1, 8, 8)
    assert p[0, 1].tolist() == [x[0, c, dy, 2 + dx].item() for c in range(2) for dy in range(2) for dx in range(2)]


def test_mae_encoder_sees_only_visible_patches_and_decoder_places_mask_tokens():
    torch.manual_seed(1)
    m = build_model("mae_vit", (40,), 10, patch_size=4, dim=16, depth=2, heads=2, mask_ratio=0.7).double()
    x = torch.randn(3, 40, dtype=torch.float64)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    for b, idx in enumerate(([0, 2, 3, 4, 5, 9, 7], [1, 2, 3, 4, 5, 6, 8], [9, 8, 7, 6, 5, 4, 3])):
        mask[b, idx] = True
    encoded, visible = m.encode_visible(x.unsqueeze(1), mask)
    enc = m.encoder
    for b in range(3):
        vis = [n for n in range(10) if not mask[b, n]]
        assert visible[b].tolist() == vis
        tokens = enc.patch_embed(x[b : b + 1].unsqueeze(1))[0]  # [10, dim]
        seq = torch.cat([enc.cls_token[0] + enc.pos_embed[0, :1], tokens[vis] + enc.pos_embed[0, 1:][vis]])[None]
        for block in enc.blocks:
            seq = block(seq)
        torch.testing.assert_close(encoded[b], enc.norm(seq)[0])
    # decoder input: encoded visible tokens at their positions, the mask token elsewhere
    d = m.decoder_embed(encoded)
    full = torch.empty(3, 11, d.shape[-1], dtype=torch.float64)
    for b in range(3):
        full[b, 0] = d[b, 0]
        vis_iter = iter(range(1, d.shape[1]))
        for n in range(10):
            full[b, 1 + n] = m.mask_token[0, 0] if mask[b, n] else d[b, next(vis_iter)]
    seq = full + m.decoder_pos
    for block in m.decoder_blocks:
        seq = block(seq)
    torch.testing.assert_close(m.decode(encoded, visible, mask), m.decoder_pred(m.decoder_norm(seq))[:, 1:])


def test_mae_outputs_in_train_and_eval_mode():
    torch.manual_seed(2)
    m = build_model("mae_vit", (1, 8, 8), 10, patch_size=2, dim=16, depth=1, heads=2, mask_ratio=0.75)
    x = torch.randn(4, 1, 8, 8)
    out = m.train()(x)
    assert out["reconstruction"].shape == out["patches"].shape == (4, 16, 4)
    assert out["mask"].sum(1).tolist() == [12.0] * 4  # round(0.75 * 16)
    torch.testing.assert_close(out["patches"], patchify(x, (2, 2)))
    torch.testing.assert_close(out["hidden"], m.encoder.tokens(x))
    assert set(m.eval()(x)) == {"logits", "hidden"}
    torch.testing.assert_close(m(x)["logits"], m.encoder(x))
    plain = vit((1, 8, 8), 10, patch_size=2, dim=16, depth=1, heads=2)
    plain.load_state_dict(encoder_state_dict(m))
    torch.testing.assert_close(plain.eval()(x), m(x)["logits"])
    with pytest.raises(ConfigError, match="mask_ratio"):
        build_model("mae_vit", (40,), 10, patch_size=4, mask_ratio=1.0)
    # without the unmasked pass in training: the same reconstruction for the same mask
    lean = build_model("mae_vit", (1, 8, 8), 10, patch_size=2, dim=16, depth=1, heads=2, hidden_in_training=False)
    lean.load_state_dict(m.state_dict())
    torch.manual_seed(5)
    full = m.train()(x)
    torch.manual_seed(5)
    part = lean.train()(x)
    assert set(part) == {"reconstruction", "patches", "mask"}
    torch.testing.assert_close(part["reconstruction"], full["reconstruction"])


# -- the recipe -----------------------------------------------------------------------------
def test_self_distillation_loss_is_mae_plus_weighted_hidden_mse():
    torch.manual_seed(3)
    kw = {"patch_size": 4, "dim": 16, "depth": 1, "heads": 2}
    theta0 = build_model("mae_vit", (40,), 10, **kw).state_dict()
    teacher = build_model("mae_vit", (40,), 10, **kw)
    student = reinitialise(build_model("mae_vit", (40,), 10, **kw), theta0)
    d = self_distillation_distiller(student, teacher, hidden_weight=0.3)
    batch = {"x": torch.randn(5, 40), "y": torch.full((5,), -1)}
    d.prepare(batch)
    torch.manual_seed(7)
    losses = d.step(batch)
    torch.manual_seed(7)  # the same mask, drawn independently
    out = student.train()(batch["x"])
    with torch.no_grad():
        h_t = teacher.eval()(batch["x"])["hidden"]
    mae = masked_reconstruction_loss(out["reconstruction"], out["patches"], out["mask"])
    expected = mae + 0.3 * (out["hidden"] - h_t).pow(2).mean()
    torch.testing.assert_close(losses["loss"], expected)
    torch.testing.assert_close(losses["self_distillation"], (out["hidden"] - h_t).pow(2).mean())
    assert not any(p.requires_grad for p in d.teacher.parameters())


def test_reinitialise_restores_theta0_and_export_encoder_gives_a_vit(tmp_path):
    torch.manual_seed(4)
    kw = {"patch_size": 4, "dim": 16, "depth": 1, "heads": 2}
    model = build_model("mae_vit", (40,), 10, **kw)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    d = further_pretraining_distiller(model)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.5)
    d.step({"x": torch.randn(8, 40), "y": torch.full((8,), -1)})["loss"].backward()
    opt.step()
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight, theta0["encoder.blocks.0.attn.qkv.weight"])
    reinitialise(model, theta0)
    assert all(torch.equal(v, theta0[k]) for k, v in model.state_dict().items())
    from distillery.engine.checkpoint import save_state

    save_state(model.state_dict(), tmp_path / "mae.safetensors")
    out = export_encoder(tmp_path / "mae.safetensors", tmp_path / "vit.safetensors")
    plain = vit((40,), 10, **kw)
    plain.load_state_dict(load_file(str(out)))
    x = torch.randn(3, 40)
    torch.testing.assert_close(plain.eval()(x), model.eval()(x)["logits"])


# -- the target domain and teacher.fit.objectives ------------------------------------------------
def fake_mnist1d(unlabeled=0, seed=42, unlabeled_seed=1):
    """A small stand-in for the MNIST-1D generator (the real one takes seconds)."""
    from distillery.data import ArrayDataset, DataSplits

    g = torch.Generator().manual_seed(seed)
    train = ArrayDataset(torch.randn(60, 40, generator=g), torch.randperm(60, generator=g) % 10)
    test = ArrayDataset(torch.randn(15, 40, generator=g), torch.arange(15) % 10)
    gu = torch.Generator().manual_seed(unlabeled_seed)
    unl = ArrayDataset(torch.randn(unlabeled, 40, generator=gu), None, hidden_y=torch.arange(unlabeled) % 10) if unlabeled else None
    return DataSplits(train, test, unl, 10, (40,), "mnist1d", info={"mean": 0.0, "std": 1.0})


@pytest.fixture
def small_mnist1d(monkeypatch):
    from distillery.data.miniature import domains

    monkeypatch.setattr(domains, "mnist1d", fake_mnist1d)


def test_mnist1d_shifted_is_reversed_plus_a_wave_with_the_first_k_labels_per_class(small_mnist1d):
    base = fake_mnist1d(unlabeled=20, unlabeled_seed=2)
    shifted = load_dataset("mnist1d_shifted", labels_per_class=3, unlabeled=20, wave_amplitude=0.5, wave_period=8.0)
    t = torch.arange(40, dtype=torch.float64)
    wave = 0.5 * torch.sin(2 * math.pi * t / 8.0)
    for i in (0, 7, 14):
        expected = torch.tensor([float(base.test.x[i, 39 - k]) + float(wave[k]) for k in range(40)], dtype=torch.float64)
        torch.testing.assert_close(shifted.test.x[i].double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(shifted.unlabeled.x, domain_shift(base.unlabeled.x, "reverse_wave", 0.5, 8.0))
    first = [i for c in range(10) for i in [j for j in range(len(base.train)) if int(base.train.y[j]) == c][:3]]
    assert shifted.train.y.tolist() == base.train.y[sorted(first)].tolist()
    torch.testing.assert_close(shifted.train.x, domain_shift(base.train.x[sorted(first)], "reverse_wave", 0.5, 8.0))
    assert shifted.train.y.bincount().tolist() == [3] * 10
    assert load_dataset("mnist1d_shifted", shift="none").test.x.equal(base.test.x)
    with pytest.raises(ConfigError, match="shift"):
        load_dataset("mnist1d_shifted", shift="rotate")
    with pytest.raises(ConfigError, match="labels_per_class=7"):
        load_dataset("mnist1d_shifted", labels_per_class=7)


def test_a_teacher_can_be_fitted_by_masked_reconstruction_on_unlabeled_data(tmp_path, small_mnist1d):
    from distillery.runner import run

    vit_params = {"patch_size": 4, "dim": 8, "depth": 1, "heads": 2, "decoder_dim": 8, "decoder_heads": 2}
    cfg = parse_config({
        "data": {"dataset": "mnist1d_shifted", "params": {"labels_per_class": 2, "unlabeled": 100}, "batch_size": 32},
        "student": {"name": "mae_vit", "params": vit_params},
        "teacher": {"kind": "frozen", "model": {"name": "mae_vit", "params": vit_params},
                    "fit": {"objectives": [{"kind": "masked_reconstruction", "name": "mae"}], "unlabeled": True,
                            "epochs": 1, "batch_size": 40, "log_every": 1, "progress": False, "tensorboard": False}},
        "objectives": [{"kind": "mse", "inputs": {"student": "student.hidden", "teacher": "teacher.hidden"}}],
        "train": {"epochs": 1, "progress": False, "tensorboard": False},
    })
    run(cfg, tmp_path / "run", report=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert any("mae" in r for r in lines) and all("ce" not in r for r in lines)
    assert max(r.get("step", 0) for r in lines) == math.ceil((20 + 100) / 40)  # labeled + unlabeled samples
