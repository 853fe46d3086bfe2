"""CMD (#16): multi-crop views, MIL attention pooling, the multi-crop network, the inter-level
objective, the fine-grained digits, the probes and the recipe's wiring, each against values
computed independently (slices, pooling, explicit loops, float64 formulas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillery.data.miniature.fine_grained import fine_grained_digits
from distillery.data.multicrop import MultiCrop, crop_resize, sample_boxes
from distillery.errors import ConfigError, ShapeError
from distillery.evaluation.probes import (
    extract_features,
    label_recall_at_k,
    linear_probe_accuracy,
)
from distillery.models.mil import MeanPool, MILAttentionPool, mil_attention
from distillery.models.multicrop import DINOHead, multicrop_convnet
from distillery.objectives import CrossLevelDINO, cross_level_dino_loss
from distillery.objectives.cross_level import level_cross_entropy
from distillery.recipes.cmd import (
    cmd_distiller,
    cmd_student,
    marker_attention_mass,
    multicrop_view,
)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------ crops
def test_integer_box_at_its_own_size_is_an_exact_slice_and_half_size_is_average_pooling():
    x = randn(3, 2, 12, 10, dtype=torch.float32)
    boxes = torch.tensor([[2.0, 1.0, 8.0, 6.0], [0.0, 0.0, 12.0, 10.0], [4.0, 4.0, 8.0, 6.0]])
    out = crop_resize(x, boxes, (8, 6))
    for b, (t, l, h, w) in enumerate(boxes.long().tolist()):
        if h == 8:
            torch.testing.assert_close(out[b], x[b, :, t : t + h, l : l + w])
    half = crop_resize(x[:1], boxes[:1], (4, 3))  # 8x6 box -> 4x3: each output pixel averages a 2x2 cell
    torch.testing.assert_close(half[0], F.avg_pool2d(x[:1, :, 2:10, 1:7], 2)[0])


def test_1d_crops_slice_and_pool_along_the_length():
    x = randn(2, 20, dtype=torch.float32)
    out = crop_resize(x, torch.tensor([[3.0, 8.0], [10.0, 8.0]]), 8)
    torch.testing.assert_close(out, torch.stack([x[0, 3:11], x[1, 10:18]]))
    xc = x[:, None]  # [B, 1, L]
    half = crop_resize(xc, torch.tensor([[4.0, 8.0], [0.0, 8.0]]), 4)
    torch.testing.assert_close(half, torch.stack([F.avg_pool1d(xc[0:1, :, 4:12], 2)[0], F.avg_pool1d(xc[1:2, :, 0:8], 2)[0]]))


def test_sampled_boxes_respect_scale_ratio_and_bounds():
    x = torch.zeros(1)
    g = torch.Generator().manual_seed(3)
    boxes = sample_boxes(500, (16, 12), (0.2, 0.5), (0.75, 4 / 3), x, g).double()
    top, left, h, w = boxes.unbind(1)
    assert bool((top >= 0).all() and (left >= 0).all() and (top + h <= 16 + 1e-5).all() and (left + w <= 12 + 1e-5).all())
    unclipped = (h < 16 - 1e-6) & (w < 12 - 1e-6)
    area = (h * w / (16 * 12))[unclipped]
    assert bool((area > 0.2 - 1e-5).all() and (area < 0.5 + 1e-5).all())
    ratio = (w / h)[unclipped]
    assert bool((ratio > 0.75 - 1e-5).all() and (ratio < 4 / 3 + 1e-5).all())
    lengths = sample_boxes(200, (40,), (0.05, 0.4), (1.0, 1.0), x, g)[:, 1]
    assert bool((lengths >= 2 - 1e-5).all() and (lengths <= 16 + 1e-5).all())


def test_multicrop_groups_shapes_determinism_and_errors():
    x = randn(5, 1, 16, 16, dtype=torch.float32)
    view = MultiCrop(n_global=2, n_local=3, global_size=16, local_size=8)
    a = view(x, torch.Generator().manual_seed(0))
    b = view(x, torch.Generator().manual_seed(0))
    assert a["global"].shape == (2, 5, 1, 16, 16) and a["local"].shape == (3, 5, 1, 8, 8)
    torch.testing.assert_close(a["local"], b["local"])
    # a constant image gives constant crops (boxes stay inside; the border never leaks zeros)
    const = view(torch.full((2, 1, 16, 16), 0.7))
    assert torch.allclose(const["local"], torch.tensor(0.7)) and torch.allclose(const["global"], torch.tensor(0.7))
    sig = MultiCrop(2, 2, local_size=5)(randn(4, 3, 20, dtype=torch.float32))
    assert sig["global"].shape == (2, 4, 3, 20) and sig["local"].shape == (2, 4, 3, 5)
    assert MultiCrop(1, 0)(x)["local"].shape == (0, 5, 1, 8, 8)
    scaled = MultiCrop(1, 2, augment=[{"name": "scale", "low": 2.0, "high": 2.0}])(torch.full((2, 1, 8, 8), 0.5))
    assert torch.allclose(scaled["local"], torch.tensor(1.0)) and torch.allclose(scaled["global"], torch.tensor(1.0))
    with pytest.raises(ConfigError, match="n_global"):
        MultiCrop(n_global=0)
    with pytest.raises(ConfigError, match="local_scale"):
        MultiCrop(local_scale=[0.5, 0.1])
    with pytest.raises(ShapeError, match="multicrop"):
        view(torch.zeros(2, 3, 4, 5, 6))


# ------------------------------------------------------------------ MIL pooling and the network
def test_mil_attention_matches_an_explicit_loop_and_is_permutation_equivariant():
    tokens = randn(2, 5, 4, seed=1)
    V, U, w = randn(3, 4, seed=2), randn(3, 4, seed=3), randn(3, seed=4)
    vb, ub = randn(3, seed=5), randn(3, seed=6)
    z, a = mil_attention(tokens, V, w, U, vb, ub)
    for b in range(2):
        scores = [float(w @ (torch.tanh(V @ h + vb) * torch.sigmoid(U @ h + ub))) for h in tokens[b]]
        e = np.exp(np.array(scores) - max(scores))
        ref_a = e / e.sum()
        np.testing.assert_allclose(a[b].numpy(), ref_a, rtol=1e-12)
        np.testing.assert_allclose(z[b].numpy(), (ref_a[:, None] * tokens[b].numpy()).sum(0), rtol=1e-12)
    perm = torch.tensor([3, 0, 4, 1, 2])
    z2, a2 = mil_attention(tokens[:, perm], V, w, U, vb, ub)
    torch.testing.assert_close(z2, z)
    torch.testing.assert_close(a2, a[:, perm])
    pool = MILAttentionPool(4, 3).double()
    zp, _ = pool(tokens)
    torch.testing.assert_close(zp, mil_attention(tokens, pool.V.weight, pool.w.weight[0], pool.U.weight, pool.V.bias, pool.U.bias)[0])
    zm, am = MeanPool()(tokens)
    torch.testing.assert_close(zm, tokens.mean(1))
    assert torch.allclose(am, torch.full((2, 5), 0.2, dtype=torch.float64))


def test_dino_head_normalises_the_bottleneck_and_the_prototypes():
    head = DINOHead(6, 5, hidden=7, bottleneck=3).double()
    x = randn(4, 6, seed=7)
    z = head.mlp(x)
    expected = (z / z.norm(dim=1, keepdim=True)) @ (head.last.weight / head.last.weight.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(head(x), expected)
    assert float(head(x).detach().abs().max()) <= 1 + 1e-12  # cosines between unit vectors


@pytest.mark.parametrize("pool", ["mil", "mean"])
def test_multicrop_net_runs_each_crop_as_the_plain_network_would(pool):
    torch.manual_seed(0)
    net = multicrop_convnet((1, 12, 12), channels=[4, 6], pool=pool, out_dim=9).double()
    crops = {"global": randn(2, 3, 1, 12, 12, seed=8), "local": randn(3, 3, 1, 6, 6, seed=9)}
    out = net(crops)
    assert out["logits"].shape == (5, 3, 9) and out["embedding"].shape == (5, 3, 6)
    torch.testing.assert_close(out["global"], out["logits"][:2])
    torch.testing.assert_close(out["local"], out["logits"][2:])
    for v in range(2):
        torch.testing.assert_close(out["global"][v], net(crops["global"][v])["logits"])
    for v in range(3):
        single = net(crops["local"][v])
        torch.testing.assert_close(out["local"][v], single["logits"])
        assert single["attention"].shape == (3, 9)  # 6x6 crop, stride 2 -> 3x3 tokens
        torch.testing.assert_close(single["attention"].sum(1), torch.ones(3, dtype=torch.float64))
    one_d = multicrop_convnet((2, 16), channels=[4], out_dim=5)
    assert one_d({"global": torch.randn(2, 3, 2, 16), "local": torch.randn(1, 3, 2, 8)})["logits"].shape == (3, 3, 5)
    with pytest.raises(ConfigError, match="pool"):
        multicrop_convnet((1, 8, 8), pool="max")


# ------------------------------------------------------------------ the inter-level objective
def _ce_ref(target, pred, center, tau_s, tau_t):
    """Explicit loops: per sample, mean over all (target view, prediction view) pairs."""
    vt, b, _ = target.shape
    vp = pred.shape[0]
    out = np.zeros(b)
    for n in range(b):
        vals = []
        for j in range(vt):
            zt = (target[j, n] - center) / tau_t
            p = np.exp(zt - zt.max())
            p /= p.sum()
            for i in range(vp):
                zs = pred[i, n] / tau_s
                log_q = zs - zs.max() - math.log(np.exp(zs - zs.max()).sum())
                vals.append(-(p * log_q).sum())
        out[n] = np.mean(vals)
    return out


@pytest.mark.parametrize("symmetric", [True, False])
def test_cross_level_dino_matches_explicit_loops(symmetric):
    region, image = randn(3, 4, 6, seed=10), randn(2, 4, 6, seed=11)
    c_r, c_i = randn(6, seed=12) * 0.3, randn(6, seed=13) * 0.3
    got = cross_level_dino_loss(region, image, c_r, c_i, 0.2, 0.05, symmetric, reduction="none")
    ref = _ce_ref(image.numpy(), region.numpy(), c_i.numpy(), 0.2, 0.05)
    if symmetric:
        ref = 0.5 * (ref + _ce_ref(region.numpy(), image.numpy(), c_r.numpy(), 0.2, 0.05))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)
    assert float(cross_level_dino_loss(region, image, c_r, c_i, 0.2, 0.05, symmetric)) == pytest.approx(ref.mean(), rel=1e-10)


def test_cross_level_targets_carry_no_gradient_and_gradcheck():
    target, pred = randn(2, 3, 5, seed=14), randn(3, 3, 5, seed=15, dtype=torch.float64).requires_grad_()
    center = randn(5, seed=16) * 0.1
    assert torch.autograd.gradcheck(lambda p: level_cross_entropy(target, p, center, 0.3, 0.1).sum(), (pred,))
    # the symmetric loss's gradient w.r.t. each input is that of its prediction role only
    region = randn(3, 2, 5, seed=17).requires_grad_()
    image = randn(2, 2, 5, seed=18).requires_grad_()
    cross_level_dino_loss(region, image, None, None, 0.3, 0.1).backward()
    r0, i0 = region.detach().clone().requires_grad_(), image.detach().clone().requires_grad_()
    zero = torch.zeros(5, dtype=torch.float64)
    (0.5 * (level_cross_entropy(image.detach(), r0, zero, 0.3, 0.1) + level_cross_entropy(region.detach(), i0, zero, 0.3, 0.1))).mean().backward()
    torch.testing.assert_close(region.grad, r0.grad)
    torch.testing.assert_close(image.grad, i0.grad)


def test_cross_level_objective_centers_and_warmup():
    loss = CrossLevelDINO(out_dim=4, student_temperature=0.1, target_temperature=0.07,
                          warmup_target_temperature=0.03, warmup_steps=4, center_momentum=0.8).double()
    region, image = randn(3, 2, 4, seed=19), randn(2, 2, 4, seed=20)
    loss.set_step(2)
    assert loss.current_target_temperature() == pytest.approx(0.05)
    torch.testing.assert_close(loss(region=region, image=image), cross_level_dino_loss(region, image, None, None, 0.1, 0.05))
    loss.update(region=region, image=image)
    torch.testing.assert_close(loss.center_image[0], 0.2 * image.reshape(-1, 4).mean(0))
    torch.testing.assert_close(loss.center_region[0], 0.2 * region.reshape(-1, 4).mean(0))
    with pytest.raises(ShapeError, match="out_dim"):
        loss(region=randn(2, 2, 5), image=image)
    with pytest.raises(ConfigError, match="out_dim"):
        CrossLevelDINO(out_dim=0)


# ------------------------------------------------------------------ data, probes, the recipe
def test_fine_grained_classes_differ_only_in_the_marker():
    splits = fine_grained_digits(copies=1, noise=0.0)
    info = splits.info
    patterns = info["patterns"]
    assert len({p.tobytes() for p in patterns}) == 10 and set(patterns.reshape(10, -1).sum(1)) == {8.0}
    x = splits.train.x[:, 0].double() * info["std"] + info["mean"]  # undo the standardisation
    for i in range(0, len(x), 97):
        t, l, m = info["train_marker_boxes"][i]
        np.testing.assert_allclose(x[i, t : t + m, l : l + m].numpy(), patterns[int(splits.train.y[i])], atol=1e-5)
        quadrant = x[i, (t // 8) * 8 : (t // 8) * 8 + 8, (l // 8) * 8 : (l // 8) * 8 + 8].clone()
        quadrant[t % 8 : t % 8 + m, l % 8 : l % 8 + m] = 0
        assert float(quadrant.abs().max()) < 1e-5  # nothing but the marker in its quadrant
    counts = torch.bincount(splits.train.y, minlength=10)
    assert int(counts.max() - counts.min()) <= 1


def test_marker_attention_mass_by_hand():
    att = torch.zeros(2, 16)
    att[0, 5] = 0.5  # token (1, 1): pixels rows 4-7, cols 4-7 of a 16x16 image
    att[0, 0] = 0.5
    att[1] = 1 / 16
    boxes = torch.tensor([[5, 6, 2], [3, 3, 2]])  # box 1 spans rows 3-4, cols 3-4: tokens (0,0),(0,1),(1,0),(1,1)
    mass = marker_attention_mass(att, boxes, (16, 16))
    torch.testing.assert_close(mass, torch.tensor([0.5, 4 / 16]))


def test_probes_retrieval_by_hand_and_separable_probe():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.6, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    # cosines of sample 4 to 0..3: 0.6, 0.685, 0.8, 0.861: its two nearest (3, 2) are of class 1,
    # its third (1) of its own class 0; every other sample's nearest neighbour shares its class
    assert label_recall_at_k(feats, labels, 1) == pytest.approx(4 / 5)
    assert label_recall_at_k(feats, labels, 2) == pytest.approx(4 / 5)
    assert label_recall_at_k(feats, labels, 3) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 2] > 0).long()
    assert linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:], C=100.0) == 1.0


def test_extract_features_reads_output_keys_and_taps():
    from distillery.data import ArrayDataset

    torch.manual_seed(0)
    net = multicrop_convnet((1, 8, 8), channels=[3, 4], out_dim=5)
    ds = ArrayDataset(torch.randn(7, 1, 8, 8), torch.arange(7) % 2)
    emb, y = extract_features(net, ds, "embedding", batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(emb, net(ds.x)["embedding"])
        tapped, _ = extract_features(net, ds, "head:input")
        torch.testing.assert_close(tapped, emb)
    assert y.tolist() == ds.y.tolist()


def test_cmd_step_is_intra_dino_plus_inter_level_on_the_same_crops():
    from distillery.objectives import dino_loss

    torch.manual_seed(0)
    student = cmd_student((1, 16, 16), channels=[4, 8], out_dim=16)
    view = multicrop_view(2, 3, 16, 8)
    d = cmd_distiller(student, view=view, inter_weight=0.5, out_dim=16)
    batch = {"x": torch.randn(4, 1, 16, 16), "y": torch.full((4,), -1)}
    d.prepare(batch)
    torch.manual_seed(1)
    losses = d.step(batch)
    torch.manual_seed(1)
    crops = view(batch)
    with torch.no_grad():
        s = student(crops)
        t = d.teacher.model(crops)  # the EMA copy equals the student at step 0
    intra = dino_loss(s["logits"], t["global"], None, 0.1, 0.04)
    inter = cross_level_dino_loss(s["local"], s["global"], None, None, 0.1, 0.04)
    torch.testing.assert_close(losses["intra"], intra)
    torch.testing.assert_close(losses["inter"], inter)
    torch.testing.assert_close(losses["loss"].detach(), intra + 0.5 * inter)


def test_shipped_dino_config_is_the_reproductions_teacher_temperature_0_02_setting():
    """configs/dino_digits.yaml is what `distillery reproduce dino` trains as 'both_t0.02'."""
    from pathlib import Path

    import yaml

    from distillery.reproduce.dino import SETTINGS, config

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "dino_digits.yaml").read_text())
    shipped.pop("name")
    expected = config(*SETTINGS["both_t0.02"], seed=0, epochs=30)
    for quiet in ("progress", "tensorboard"):  # the reproduction's runs are silent
        expected["train"].pop(quiet)
    assert shipped == expected


# ------------------------------------------------------------------ issue 15: the collapse and its fix
def _fine_grained_batch(n: int = 256) -> torch.Tensor:
    return torch.as_tensor(fine_grained_digits(copies=1).train.x[:n])


def test_batch_norm_head_makes_initial_dino_targets_informative():
    """The cause of the first design's collapse, at initialisation: without normalisation in the
    head, the small CNN's outputs are nearly the same for every image, so DINO's centred targets
    (teacher temperature 0.04) carry almost no information about the sample; with DINO's
    use_bn_in_head (head_norm="batch") they carry a lot. (Fails on the old code: no head_norm.)"""
    from distillery.objectives import dino_target_statistics

    x = _fine_grained_batch()
    mi = {}
    for norm in ("none", "batch"):
        torch.manual_seed(0)
        net = multicrop_convnet((1, 16, 16), channels=[16, 32], pool="mean", out_dim=64, head_norm=norm)
        with torch.no_grad():
            logits = net(x)["logits"]
        mi[norm] = dino_target_statistics(logits, logits.mean(0), 0.04)["mutual_information"]
    assert mi["none"] < 0.05 and mi["batch"] > 1.0, mi
    # the batch-normalised head uses the batch's statistics in eval mode too (as DINO's teacher)
    head = DINOHead(6, 5, hidden=7, bottleneck=3, norm="batch").eval()
    z = randn(8, 6, dtype=torch.float32)
    torch.testing.assert_close(head(z), head.train()(z))
    with pytest.raises(ConfigError, match="norm"):
        DINOHead(6, 5, norm="layer")



def test_dino_training_with_batch_norm_head_leaves_ln_k():
    """A short DINO run (the recipe's wiring: temperatures 0.1 / 0.04, centering, EMA teacher at
    0.996) on fine-grained digits. With head_norm="batch" the intra-level loss leaves ln K and the
    teacher's centred targets carry information about the image (mutual information > 1 nat);
    without it they carry none (< 0.05 nats): what the student is taught is the same for every
    image, the start of the first design's collapse (its full runs ended with the loss at ln K)."""
    from distillery.objectives import dino_target_statistics

    x = _fine_grained_batch(192)
    loss, mi = {}, {}
    for norm in ("none", "batch"):
        torch.manual_seed(0)
        student = multicrop_convnet((1, 16, 16), channels=[8, 16], pool="mean", out_dim=64, head_norm=norm)
        d = cmd_distiller(student, view=multicrop_view(2, 2, 16, 8), inter_weight=None, out_dim=64)
        y = torch.full((64,), -1)
        d.prepare({"x": x[:64], "y": y})
        opt = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=0.04)
        for step in range(18):
            i = (step % 3) * 64
            out = d.step({"x": x[i:i + 64], "y": y})
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            d.update()
        loss[norm] = float(out["intra"])
        with torch.no_grad():
            logits = d.teacher.model(x)["logits"]
        mi[norm] = dino_target_statistics(logits, d.objectives["intra"].center, 0.04)["mutual_information"]
    assert loss["batch"] < math.log(64) - 0.1, loss
    assert mi["none"] < 0.05 and mi["batch"] > 1.0, mi

def test_run_and_diagnose_are_built_on_train_arms(tmp_path, monkeypatch):
    """The reproduction's claims and its diagnosis (premise supervised vs dino, claim cmd vs dino,
    epochs x1 x1.5 x2, the first 3 seeds) come from the one factored arm function; stubbed here."""
    from distillery.reproduce import Context
    from distillery.reproduce import cmd as rep
    from distillery.reproduce.diagnosis import derive

    calls = []

    def fake(ctx, arms, copies, epochs):
        calls.append((tuple(arms), copies, epochs, tuple(ctx.seeds)))
        n = len(ctx.seeds)
        base = {"supervised": 0.9, "dino": 0.4, "cmd": 0.45, "random_init": 0.5}
        return {a: {"probe": [base[a] + 0.01 * i for i in range(n)], "r1": [base[a]] * n, "marker_attention": [0.09] * n,
                    "final_intra_loss": [3.9] * n, "mutual_information": [2.0] * n} for a in arms}

    monkeypatch.setattr(rep, "train_arms", fake)
    ctx = Context(seeds=list(range(5)), quick=False, out=tmp_path)
    claims = rep.run(ctx)
    assert [c.held for c in claims] == [True, True, False] and claims[0].detectable["seeds"] == [5, 5]
    d = rep.diagnose(ctx)
    assert [c[2] for c in calls[1:]] == [10, 15, 20] and all(c[3] == (0, 1, 2) for c in calls[1:])
    derived = derive(d)
    assert derived["premise_held_at"] == ["10 epochs", "15 epochs", "20 epochs"]
    assert derived["comparisons"][0]["per_size"][0]["difference"] == pytest.approx(0.05)
