"""Momentum-GS (#19): block weighting, the round-robin schedule, the block latent field, the
momentum-teacher step, PSNR and the seam error, each against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillery.data.miniature.procedural import (
    intensity_bins,
    pixel_centers,
    procedural_image,
)
from distillery.engine.blocks import RoundRobinBlocks
from distillery.errors import ConfigError, ShapeError
from distillery.models.miniature.block_field import BlockLatentField, block_field
from distillery.recipes.momentum_gs import (
    momentum_gs_loss,
    psnr,
    render,
    seam_error,
    train_blockwise,
)
from distillery.teachers import EMATeacher
from distillery.weighting import BlockAccuracyWeight


# ------------------------------------------------------------------ block weighting
def test_block_accuracy_weights_by_hand():
    w = BlockAccuracyWeight(num_blocks=4, sigma=2.0, momentum=0.5)
    assert w.weights().tolist() == [1.0, 1.0, 1.0, 1.0]  # nothing measured yet
    w.update(0, 30.0)
    w.update(1, 27.0)
    w.update(1, 29.0)  # running PSNR: 0.5 * 27 + 0.5 * 29 = 28
    w.update_mse(2, 0.01)  # 10 log10(1 / 0.01) = 20 dB
    assert float(w.psnr[1]) == pytest.approx(28.0) and float(w.psnr[2]) == pytest.approx(20.0)
    expected = [1.0, 2 - math.exp(-4 / 8), 2 - math.exp(-100 / 8), 1.0]
    np.testing.assert_allclose(w.weights().numpy(), expected, rtol=1e-12)
    assert w(1) == pytest.approx(expected[1])
    state = w.state_dict()
    w2 = BlockAccuracyWeight(4, sigma=2.0)
    w2.load_state_dict(state)
    np.testing.assert_allclose(w2.weights().numpy(), expected, rtol=1e-12)
    with pytest.raises(ConfigError, match="out of range"):
        w.update(4, 1.0)
    with pytest.raises(ConfigError, match="sigma"):
        BlockAccuracyWeight(2, sigma=0.0)


# ------------------------------------------------------------------ schedule
def test_round_robin_schedule():
    s = RoundRobinBlocks(num_blocks=5, steps_per_visit=3, blocks_per_visit=2)
    assert s.visits_per_round == 3 and s.steps_per_round == 9
    expected = [[0, 1]] * 3 + [[2, 3]] * 3 + [[4]] * 3 + [[0, 1]]
    assert [s.blocks_at(k) for k in range(10)] == expected
    sh = RoundRobinBlocks(6, 1, order="shuffled", seed=7)
    rounds = [[sh.blocks_at(r * 6 + v)[0] for v in range(6)] for r in range(4)]
    assert all(sorted(r) == list(range(6)) for r in rounds)  # each round visits every block once
    assert len({tuple(r) for r in rounds}) > 1  # and the order changes between rounds
    again = RoundRobinBlocks(6, 1, order="shuffled", seed=7)
    assert [again.blocks_at(k) for k in range(24)] == [sh.blocks_at(k) for k in range(24)]
    with pytest.raises(ConfigError, match="blocks_per_visit"):
        RoundRobinBlocks(2, 1, blocks_per_visit=3)


# ------------------------------------------------------------------ the field
def test_block_field_locates_and_interpolates_by_hand():
    torch.manual_seed(0)
    f = BlockLatentField(blocks=(2, 4), grid=3, features=2, hidden=5, depth=1).double()
    pts = torch.tensor([[0.1, 0.1], [0.6, 0.3], [1.0, 1.0], [0.5, 0.25], [0.49, 0.99]], dtype=torch.float64)
    index, local = f.locate(pts)
    assert index.tolist() == [0, 5, 7, 5, 3]
    torch.testing.assert_close(local, torch.tensor([[0.2, 0.4], [0.2, 0.2], [1.0, 1.0], [0.0, 0.0], [0.98, 0.96]], dtype=torch.float64))
    feats = f.features_at(pts)
    # block 5, local (0.2, 0.2) -> grid position (0.4, 0.4) between nodes (0, 0) .. (1, 1)
    L = f.latents[5]
    ref = 0.6 * 0.6 * L[:, 0, 0] + 0.6 * 0.4 * L[:, 0, 1] + 0.4 * 0.6 * L[:, 1, 0] + 0.4 * 0.4 * L[:, 1, 1]
    torch.testing.assert_close(feats[1], ref)
    torch.testing.assert_close(feats[2], f.latents[7][:, 2, 2])  # a corner node exactly
    torch.testing.assert_close(feats[3], f.latents[5][:, 0, 0])
    torch.testing.assert_close(f(pts)["value"], f.decoder(feats))
    with pytest.raises(ShapeError, match=r"\[B, 2\]"):
        f(torch.zeros(3, 3))


def test_logits_bin_the_value_and_only_present_blocks_get_gradients():
    f = block_field(blocks=(2, 2), grid=2, features=3, num_classes=8)
    out = f(torch.rand(20, 2))
    assert out["logits"].argmax(1).tolist() == intensity_bins(out["value"].detach(), 8).tolist()
    f(torch.tensor([[0.1, 0.1], [0.2, 0.3]]))["value"].sum().backward()
    assert f.latents[0].grad is not None and all(f.latents[k].grad is None for k in (1, 2, 3))


# ------------------------------------------------------------------ the Momentum-GS step
def test_loss_is_reconstruction_plus_weighted_consistency_to_the_teacher_decoder():
    torch.manual_seed(1)
    f = BlockLatentField((2, 2), grid=3, features=4, hidden=6).double()
    teacher = EMATeacher(f.decoder, momentum=0.9, final_momentum=None)
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a teacher that differs from the student
    coords = torch.rand(7, 2, dtype=torch.float64) * 0.5
    target = torch.rand(7, 1, dtype=torch.float64)
    out = momentum_gs_loss(f, teacher, coords, target, consistency_weight=0.3)
    feats = f.features_at(coords)
    v, t = f.decoder(feats), teacher.model(feats)
    torch.testing.assert_close(out["recon"], ((v - target) ** 2).mean())
    torch.testing.assert_close(out["consistency"], ((v - t) ** 2).mean())
    torch.testing.assert_close(out["loss"], out["recon"] + 0.3 * out["consistency"])
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.model.parameters())


def test_train_blockwise_updates_visited_blocks_teacher_and_weights_only():
    torch.manual_seed(2)
    f = BlockLatentField((2, 2), grid=2, features=3, hidden=5)
    coords = torch.tensor(pixel_centers(4), dtype=torch.float32)
    target = torch.rand(16, 1)
    before = [p.detach().clone() for p in f.latents]
    dec_before = [p.detach().clone() for p in f.decoder.parameters()]
    weights = BlockAccuracyWeight(4, momentum=0.5)
    out = train_blockwise(f, coords, target, RoundRobinBlocks(4, steps_per_visit=2), steps=3 * 2,
                          teacher_momentum=0.75, block_weighting=weights, lr=1e-2)
    # steps 0-1 visit block 0, 2-3 block 1, 4-5 block 2: block 3 is never touched
    assert torch.equal(f.latents[3].detach(), before[3])
    assert all(not torch.equal(f.latents[k].detach(), before[k]) for k in range(3))
    recorded = [not math.isnan(float(v)) for v in weights.psnr]
    assert recorded == [True, True, True, False]  # a PSNR is recorded for visited blocks only
    # the teacher decoder moved (6 EMA updates) but is neither the start nor the student
    t = out["teacher"].model
    for p_t, p_0, p_s in zip(t.parameters(), dec_before, f.decoder.parameters()):
        assert not torch.equal(p_t, p_s.detach()) and not torch.equal(p_t, p_0)


def test_single_step_ema_and_block_weight_record_by_hand():
    torch.manual_seed(3)
    f = BlockLatentField((1, 2), grid=2, features=2, hidden=3)
    coords = torch.tensor([[0.25, 0.25], [0.75, 0.1], [0.5, 0.75]])
    target = torch.tensor([[0.2], [0.4], [0.9]])
    dec0 = [p.detach().clone() for p in f.decoder.parameters()]
    with torch.no_grad():
        mse0 = float(((f(coords[:2])["value"] - target[:2]) ** 2).mean())
    weights = BlockAccuracyWeight(2)
    out = train_blockwise(f, coords, target, RoundRobinBlocks(2), steps=1, teacher_momentum=0.8, block_weighting=weights)
    assert float(weights.psnr[0]) == pytest.approx(10 * math.log10(1 / mse0))
    for p_t, p_0, p_s in zip(out["teacher"].model.parameters(), dec0, f.decoder.parameters()):
        torch.testing.assert_close(p_t, 0.8 * p_0 + 0.2 * p_s.detach())


# ------------------------------------------------------------------ metrics and data
def test_psnr_and_seam_error_by_hand():
    target = torch.zeros(4, 4)
    offsets = torch.tensor([[0.0, 0.1], [0.3, 0.0]])
    pred = offsets.repeat_interleave(2, 0).repeat_interleave(2, 1)  # a constant error per 2x2 block
    err = seam_error(pred, target, (2, 2))
    # inside a block the jump error is 0; across a border it is the offset difference:
    # vertical border (cols 1|2): rows 0-1 |0 - 0.1|, rows 2-3 |0.3 - 0|; horizontal (rows 1|2):
    # cols 0-1 |0 - 0.3|, cols 2-3 |0.1 - 0|
    assert err["interior"] == pytest.approx(0.0)
    assert err["seam"] == pytest.approx((2 * 0.1 + 2 * 0.3 + 2 * 0.3 + 2 * 0.1) / 8)
    assert psnr(pred, target) == pytest.approx(10 * math.log10(1 / float((pred**2).mean())))
    with pytest.raises(ShapeError, match="equal blocks"):
        seam_error(torch.zeros(5, 4), torch.zeros(5, 4), (2, 2))


def test_procedural_image_trains_on_centres_and_tests_on_corners():
    splits = procedural_image(size=8, bins=4, seed=1)
    f = splits.info["fn"]
    assert splits.train.x.shape == (64, 2) and splits.test.x.shape == (49, 2)
    torch.testing.assert_close(splits.train.x[9], torch.tensor([1.5 / 8, 1.5 / 8]))
    torch.testing.assert_close(splits.test.x[0], torch.tensor([1 / 8, 1 / 8]))
    np.testing.assert_allclose(splits.test.target.numpy()[:, 0], f(splits.test.x.double().numpy()), rtol=1e-6)
    assert splits.train.y.tolist() == intensity_bins(splits.train.target, 4).tolist()
    batch = splits.train.__getitems__([3, 5])
    torch.testing.assert_close(batch["target"], splits.train.target[[3, 5]])
    v = f(np.random.default_rng(0).uniform(0, 1, (100, 2)))
    assert v.min() > 0 and v.max() < 1


def test_render_with_the_teacher_decoder():
    torch.manual_seed(4)
    f = BlockLatentField((2, 2), grid=2, features=2, hidden=3)
    t = EMATeacher(f.decoder, 0.5, None)
    pts = torch.rand(5, 2)
    torch.testing.assert_close(render(f, pts, t.model), t.model(f.features_at(pts)).reshape(-1).detach())


# ------------------------------------------------------------------ mechanism (issue 15)
def test_consistency_gradient_reaches_latents_through_both_decoders():
    """The teacher's weights are frozen but the features enter both decoders undetached (the
    authors' code): the latents' gradient of the consistency is that of the decoders'
    disagreement, 2 (D_s - D_t)(J_s - J_t) / n, not a pull toward the teacher's value
    (2 (D_s - D_t) J_s / n, what detaching the features in the teacher branch gave)."""
    torch.manual_seed(5)
    f = BlockLatentField((1, 2), grid=3, features=4, hidden=6).double()
    teacher = EMATeacher(f.decoder, momentum=0.9, final_momentum=None)
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    coords = torch.rand(9, 2, dtype=torch.float64) * torch.tensor([1.0, 0.5], dtype=torch.float64)  # block 0
    target = torch.rand(9, 1, dtype=torch.float64)
    momentum_gs_loss(f, teacher, coords, target)["consistency"].backward()
    got = f.latents[0].grad.clone()
    assert all(p.grad is None for p in teacher.model.parameters())
    f.zero_grad(set_to_none=True)
    feats = f.features_at(coords)
    ((f.decoder(feats) - teacher.model(feats)) ** 2).mean().backward()
    torch.testing.assert_close(got, f.latents[0].grad)
    f.zero_grad(set_to_none=True)
    feats = f.features_at(coords)
    ((f.decoder(feats) - teacher.model(feats.detach())) ** 2).mean().backward()  # the old, detached form
    assert (got - f.latents[0].grad).abs().max() > 1e-3 * got.abs().max()


def test_momentum_teacher_holds_the_decoder_for_the_block_trained_before():
    """Two blocks, one shared decoder: block 0 is fitted, then block 1 alone. Without a teacher,
    fitting block 1 drags the decoder away from block 0 (its error grows many times); with the
    EMA teacher (a copy of the decoder fitted to block 0, momentum 0.99, consistency weight 1)
    the fitting of block 1 goes into block 1's own latents: block 0 keeps most of its fit, and
    block 1 still fits nearly as well. (With the features detached in the teacher branch, the
    old code, block 0's error stayed above half of the no-teacher one.)"""
    splits = procedural_image(size=16, bins=4, seed=0)
    x, y = splits.train.x, splits.train.target

    class Only:  # a schedule that trains one block at every step
        num_blocks = 2

        def __init__(self, k):
            self.k = k

        def blocks_at(self, step):
            return [self.k]

    def errors(momentum, seed):
        torch.manual_seed(seed)
        f = BlockLatentField((1, 2), grid=4, features=8, hidden=32, depth=2)
        train_blockwise(f, x, y, Only(0), steps=300, lr=5e-3)
        # the teacher starts as a copy of the decoder fitted to block 0
        train_blockwise(f, x, y, Only(1), steps=300, teacher_momentum=momentum, consistency_weight=1.0, lr=5e-3)
        with torch.no_grad():
            err = (f(x)["value"] - y) ** 2
        left = x[:, 1] < 0.5
        return float(err[left].mean()), float(err[~left].mean())

    alone = [errors(None, s) for s in (0, 1)]
    held = [errors(0.99, s) for s in (0, 1)]
    assert sum(e[0] for e in held) < 0.3 * sum(e[0] for e in alone)
    assert sum(e[1] for e in held) < 1.5 * sum(e[1] for e in alone)


def test_reproduction_arms_on_a_tiny_size():
    """The arm function shared by ``run`` and ``diagnose``, one round of one step per visit."""
    from distillery.data import load_dataset
    from distillery.reproduce import momentum_gs as rep

    splits = load_dataset("procedural_image", size=32, seed=0)
    figs = {name: rep.train_arm(name, splits, 0, rounds=1, steps_per_visit=1) for name in rep.ARMS}
    for name, f in figs.items():
        assert {"psnr", "train_psnr", "seam", "interior"} <= set(f) and all(math.isfinite(v) for v in f.values())
        assert ("teacher_psnr" in f) == (name in ("momentum", "momentum_gs"))
    assert figs["momentum"]["psnr"] != figs["independent"]["psnr"]
    with pytest.raises(ValueError, match="unknown arm"):
        rep.train_arm("nope", splits, 0, rounds=1)
    assert rep.REPRODUCTION.diagnose is rep.diagnose and rep.REPRODUCTION.default_seeds == 5
