"""Splat and Distill (Shavin & Benaim 2026, arXiv:2602.06032): geometry, splatting, the loss,
the correspondence metric and the recipe's loop, each against values computed independently."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from distillery.errors import ConfigError, ShapeError
from distillery.generative import multiview as mv
from distillery.models.miniature.splat_featnet import SplatFeatureNet, splat_featnet
from distillery.objectives.splat import (
    SplatFeatureKD,
    masked_standardize,
    splat_feature_loss,
)
from distillery.recipes import splat_distill as sd


def _one_sphere(radius: float = 0.5, z: float = 0.5) -> mv.Scene:
    return mv.Scene(
        kind=torch.tensor([2]),
        center=torch.tensor([[0.0, 0.0, z]], dtype=torch.float64),
        size=torch.full((1, 3), radius, dtype=torch.float64),
        color=torch.tensor([[0.8, 0.2, 0.2]], dtype=torch.float64),
        freq=torch.zeros(1, 2, 3, dtype=torch.float64),
        phase=torch.full((1, 2), math.pi / 2, dtype=torch.float64),
        ground=torch.tensor([[0.4, 0.4, 0.4], [0.6, 0.6, 0.6]], dtype=torch.float64),
    )


@pytest.fixture(scope="module")
def small_set():
    return mv.multiview_set(3, views=3, size=8, seed=3)


# -- cameras and rendering -----------------------------------------------------------------------
def test_look_at_is_a_rotation_facing_the_target():
    eye, target = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0.0, 0.5, 0.2])
    pose = mv.look_at(eye, target)
    R = pose[:3, :3]
    assert torch.allclose(R.T @ R, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert abs(float(torch.linalg.det(R)) - 1.0) < 1e-12
    forward = (target - eye).double() / (target - eye).double().norm()
    assert torch.allclose(R[:, 2], forward, atol=1e-12)
    assert float(R[2, 1]) < 0  # image "down" points downwards in the world (z up)


def test_unproject_then_project_returns_each_pixel_and_its_depth():
    K = mv.intrinsics(6, 60.0)
    pose = mv.orbit_camera(40.0, 30.0, 3.0)
    depth = 1.0 + torch.rand(6, 6, dtype=torch.float64)
    pts = mv.unproject(depth, K, pose)
    vu, z = mv.project(pts, K, pose)
    rows, cols = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    assert torch.allclose(vu[:, 0], rows.reshape(-1).double(), atol=1e-9)
    assert torch.allclose(vu[:, 1], cols.reshape(-1).double(), atol=1e-9)
    assert torch.allclose(z, depth.reshape(-1), atol=1e-12)


def test_intrinsics_focal_length_matches_the_field_of_view():
    K = mv.intrinsics(10, 90.0)
    assert abs(float(K[0, 0]) - 5.0) < 1e-12 and float(K[0, 2]) == 4.5


def test_render_sphere_depth_has_the_closed_form_at_the_centre_pixel():
    # camera on the x axis at distance 4 from the sphere's centre, looking at it: the ray through
    # the image centre hits the sphere at depth 4 - r (size 9: the centre is a pixel centre)
    scene = _one_sphere(0.5, 0.5)
    pose = mv.look_at(torch.tensor([4.0, 0.0, 0.5]), torch.tensor([0.0, 0.0, 0.5]))
    out = mv.render(scene, mv.intrinsics(9, 40.0), pose, 9)
    assert abs(float(out["depth"][4, 4]) - 3.5) < 1e-9
    assert int(out["primitive"][4, 4]) == 1 and int(out["classes"][4, 4]) == mv.CLASSES.index("sphere")
    assert torch.allclose(out["points"][4, 4], torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64), atol=1e-9)
    assert torch.isinf(out["depth"][0, 4]) and int(out["classes"][0, 4]) == 0  # sky above
    # Lambertian shading is view independent: the same point from another camera has the same colour
    assert out["rgb"].shape == (3, 9, 9) and out["rgb"].dtype == torch.float32


def test_multiview_set_shapes_and_determinism(small_set):
    d = small_set
    assert d["rgb"].shape == (3, 3, 3, 8, 8) and d["splat"].shape == (3, 3, 64)
    assert d["classes"].max() <= 3 and d["rgb"].min() >= 0 and d["rgb"].max() <= 1
    again = mv.multiview_set(3, views=3, size=8, seed=3)
    assert torch.equal(again["rgb"], d["rgb"]) and torch.equal(again["splat"], d["splat"])


# -- splatting -----------------------------------------------------------------------------------
def _reference_splat(depths, K, poses, target_pose):
    """Brute force: every finite context pixel is moved to the target pixel it rounds to, and
    each target pixel keeps the point of smallest target depth (ties: largest source index)."""
    V, H, W = depths.shape
    K = K.double()
    Kinv = torch.linalg.inv(K)
    best = {}
    for v in range(V):
        for r in range(H):
            for c in range(W):
                z = float(depths[v, r, c])
                if not math.isfinite(z):
                    continue
                X = poses[v][:3, :3] @ (Kinv @ torch.tensor([c, r, 1.0], dtype=torch.float64) * z) + poses[v][:3, 3]
                cam = target_pose[:3, :3].T @ (X - target_pose[:3, 3])
                if cam[2] <= 1e-3:
                    continue
                p = K @ (cam / cam[2])
                q = (int(torch.round(p[1])), int(torch.round(p[0])))
                if not (0 <= q[0] < H and 0 <= q[1] < W):
                    continue
                src = v * H * W + r * W + c
                key = (float(cam[2]), src)
                old = best.get(q)
                if old is None or key[0] < old[0] or (key[0] == old[0] and src > old[1]):
                    best[q] = key
    index = torch.full((H * W,), -1, dtype=torch.long)
    for (r, c), (_, src) in best.items():
        index[r * W + c] = src
    return index


def test_splat_index_matches_a_brute_force_z_buffer(small_set):
    d = small_set
    for i in range(2):
        index, mask = mv.splat_index(d["depth"][i, [0, 2]], d["K"], d["poses"][i, [0, 2]], d["poses"][i, 1])
        ref = _reference_splat(d["depth"][i, [0, 2]], d["K"], d["poses"][i, [0, 2]], d["poses"][i, 1])
        assert torch.equal(index, ref)
        assert torch.equal(mask.reshape(-1), ref >= 0)
        assert torch.equal(d["splat"][i, 1], index)


def test_splat_index_into_the_same_camera_is_the_identity(small_set):
    d = small_set
    index, _ = mv.splat_index(d["depth"][0, :1], d["K"], d["poses"][0, :1], d["poses"][0, 0])
    finite = torch.isfinite(d["depth"][0, 0].reshape(-1))
    assert torch.equal(index[finite], torch.nonzero(finite).flatten())
    assert (index[~finite] == -1).all()


def test_splat_features_gathers_by_index_with_zero_holes():
    feats = torch.randn(2, 3, 4, 2, 2, dtype=torch.float64)  # B, V, C, H, W
    index = torch.tensor([[0, 5, -1, 11], [3, -1, 7, 2]])
    out = mv.splat_features(feats, index)
    for b in range(2):
        for q in range(4):
            src = int(index[b, q])
            expect = torch.zeros(4, dtype=torch.float64) if src < 0 else feats[b, src // 4, :, (src % 4) // 2, src % 2]
            assert torch.equal(out[b, :, q // 2, q % 2], expect)
    with pytest.raises(ShapeError):
        mv.splat_features(feats, torch.tensor([[0, 1, 2, 12], [0, 0, 0, 0]]))


def test_splat_of_colours_reproduces_the_target_view(small_set):
    # world-space textures and view-independent shading: splatted colours agree with the render
    d = small_set
    index = d["splat"][0, 1]
    out = mv.splat_features(d["rgb"][0, [0, 2]], index)
    covered = index >= 0
    err = (out - d["rgb"][0, 1]).abs().amax(0).reshape(-1)[covered]
    assert covered.float().mean() > 0.4 and float(err.median()) < 0.15


# -- correspondence ------------------------------------------------------------------------------
def test_correspondences_pass_the_depth_test(small_set):
    d = small_set
    ia, ib = mv.correspondences(d["depth"][0, 0], d["depth"][0, 1], d["K"], d["poses"][0, 0], d["poses"][0, 1])
    assert len(ia) > 0
    a = mv.unproject(d["depth"][0, 0], d["K"], d["poses"][0, 0])[ia]
    b = mv.unproject(d["depth"][0, 1], d["K"], d["poses"][0, 1])[ib]
    # the matched pixels see 3-D points within about a pixel's footprint of each other
    assert float((a - b).norm(dim=1).median()) < 0.3


def test_correspondence_accuracy_counts_nearest_neighbours_within_the_radius():
    C, H, W = 5, 4, 4
    feat_b = torch.randn(C, H, W, dtype=torch.float64)
    perm = torch.randperm(H * W)
    feat_a = feat_b.reshape(C, -1)[:, perm].reshape(C, H, W)  # pixel p of a shows pixel perm[p] of b
    idx_a = torch.arange(H * W)
    assert mv.correspondence_accuracy(feat_a, feat_b, idx_a, perm, radius=0) == 1.0
    # claiming pixel (0, 0) for everything: right only where the true match is within the radius
    wrong = torch.zeros(H * W, dtype=torch.long)
    expect = float((((perm // W) <= 1) & ((perm % W) <= 1)).double().mean())
    assert mv.correspondence_accuracy(feat_a, feat_b, idx_a, wrong, radius=1) == pytest.approx(expect)
    assert math.isnan(mv.correspondence_accuracy(feat_a, feat_b, idx_a[:0], perm[:0]))


# -- the loss ------------------------------------------------------------------------------------
def _loss_reference(student, teacher, index, distance, eps=1e-5):
    B, _, H, W = student.shape
    V = teacher.shape[1]
    out = []
    for b in range(B):
        qs = [q for q in range(H * W) if int(index[b, q]) >= 0]
        if not qs:
            out.append(torch.zeros((), dtype=student.dtype))
            continue
        s = torch.stack([student[b, :, q // W, q % W] for q in qs])  # [M, C]
        t = torch.stack([teacher[b, int(index[b, q]) // (H * W), :, (int(index[b, q]) % (H * W)) // W, int(index[b, q]) % W]
                         for q in qs])
        assert V >= 1
        if distance == "cosine":
            out.append((1 - (s * t).sum(1) / (s.norm(dim=1).clamp_min(1e-8) * t.norm(dim=1).clamp_min(1e-8))).mean())
            continue
        if distance == "standardized_mse":
            s = (s - s.mean(0)) / torch.sqrt(s.var(0, unbiased=False) + eps)
            t = (t - t.mean(0)) / torch.sqrt(t.var(0, unbiased=False) + eps)
        out.append(((s - t) ** 2).mean())
    return torch.stack(out)


@pytest.mark.parametrize("distance", ["standardized_mse", "cosine", "mse"])
def test_splat_feature_loss_matches_the_formula(distance):
    torch.manual_seed(0)
    student = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    teacher = torch.randn(3, 2, 4, 3, 3, dtype=torch.float64)
    index = torch.randint(-1, 18, (3, 9))
    index[2] = -1  # a sample with no covered pixel contributes 0
    got = splat_feature_loss(student, teacher, index, distance, reduction="none")
    ref = _loss_reference(student, teacher, index, distance)
    assert torch.allclose(got, ref, atol=1e-12)
    assert float(got[2]) == 0.0
    assert torch.allclose(splat_feature_loss(student, teacher, index, distance), ref.mean(), atol=1e-12)


@pytest.mark.parametrize("distance", ["standardized_mse", "cosine"])
def test_splat_feature_loss_gradcheck(distance):
    torch.manual_seed(1)
    student = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([[0, 1, 2, -1, 4, 5, 6, 7, -1], [8, 7, 6, 5, 4, 3, -1, 1, 0]])
    assert torch.autograd.gradcheck(lambda s, t: splat_feature_loss(s, t, index, distance), (student, teacher))


def test_standardized_loss_is_invariant_to_affine_maps_per_channel_and_rules_out_collapse():
    torch.manual_seed(2)
    t = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    index = torch.arange(16).repeat(2, 1)
    s = 3.0 * t + 1.5  # a per-channel affine copy of the teacher: zero loss
    assert float(splat_feature_loss(s, t, index)) < 1e-6
    # a collapsed (constant) student standardises to 0: the loss is mean_c var_c / (var_c + eps), about 1
    var = t.var(dim=(-2, -1), unbiased=False)
    expect = float((var / (var + 1e-5)).mean())
    assert float(splat_feature_loss(torch.ones_like(t), t, index)) == pytest.approx(expect, rel=1e-9)
    z = masked_standardize(t, torch.ones(2, 4, 4, dtype=torch.bool))
    assert torch.allclose(z.mean(dim=(-2, -1)), torch.zeros(2, 3, dtype=torch.float64), atol=1e-12)


def test_splat_kd_objective_and_bad_inputs():
    from distillery.registry import OBJECTIVES

    assert OBJECTIVES.get("splat_kd") is SplatFeatureKD
    obj = SplatFeatureKD(distance="mse")
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    index = torch.arange(9).repeat(2, 1)
    assert torch.allclose(obj(student=s, teacher=t, index=index), ((s - t) ** 2).mean(), atol=1e-6)
    with pytest.raises(ConfigError, match="distance"):
        SplatFeatureKD(distance="l3")
    with pytest.raises(ConfigError, match="eps"):
        SplatFeatureKD(eps=0.0)
    with pytest.raises(ShapeError, match="index"):
        obj(student=s, teacher=t, index=torch.arange(8).repeat(2, 1))
    with pytest.raises(ShapeError):
        obj(student=s, teacher=torch.randn(2, 5, 3, 3), index=index)


# -- model, data, recipe -------------------------------------------------------------------------
def test_splat_featnet_outputs_and_config_errors():
    net = splat_featnet((3, 8, 8), 4, width=8, features=6)
    out = net(torch.rand(2, 3, 8, 8))
    assert out["features"].shape == (2, 6, 8, 8) and out["segmentation"].shape == (2, 4, 8, 8)
    assert out["reconstruction"].shape == (2, 27, 8, 8)
    assert torch.equal(out["logits"], out["segmentation"][:, :, 4, 4])
    with pytest.raises(ConfigError, match="input_shape"):
        splat_featnet((1, 8, 8), 4)
    with pytest.raises(ConfigError, match="width"):
        splat_featnet((3, 8, 8), 4, width=0)
    with pytest.raises(ShapeError):
        net(torch.rand(2, 3, 6, 6))


def test_translation_index_is_a_shift():
    index = sd.translation_index(4, 1, -2)
    for r in range(4):
        for c in range(4):
            sr, sc = r - 1, c + 2
            expect = sr * 4 + sc if 0 <= sr < 4 and 0 <= sc < 4 else -1
            assert int(index[r * 4 + c]) == expect


def test_distill_same_view_is_a_fixed_point_and_splat_moves_the_student(small_set):
    torch.manual_seed(0)
    net = SplatFeatureNet(8, 4, width=4, features=4, depth=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = sd.distill(net, small_set, "same_view", 2, batch_size=2, seed=0)
    assert max(out["losses"]) < 1e-9  # the EMA teacher starts as the student: nothing to learn
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for mode in ("splat", "shift_2d"):
        out = sd.distill(net, small_set, mode, 2, batch_size=2, seed=0, momentum=0.5)
        assert all(math.isfinite(v) and v > 0 for v in out["losses"])
        assert not torch.equal(out["teacher"].model.stem.weight, before["stem.weight"])
    with pytest.raises(ConfigError, match="mode"):
        sd.distill(net, small_set, "splat3d", 1)
    with pytest.raises(ConfigError, match="distance"):
        sd.distill(net, small_set, "splat", 1, distance="kl")
    score = sd.correspondence_score(net, small_set)
    assert 0.0 <= score <= 1.0


def test_splat_views_dataset_and_bundled_config():
    from distillery.config import parse_config
    from distillery.data.miniature.splat_views import splat_views
    from distillery.recipes import CONFIG_DIR
    from distillery.registry import RECIPES

    splits = splat_views(scenes=2, test_scenes=1, size=8)
    batch = splits.train.__getitems__([0, 1, 2])
    assert batch["x"].shape == (3, 3, 8, 8) and batch["x_context"].shape == (3, 3, 8, 8)
    assert batch["splat_index"].shape == (3, 64) and batch["splat_index"].dtype == torch.long
    # samples 0 and 1 are the two orders of one scene
    assert torch.equal(batch["x"][0], batch["x_context"][1]) and torch.equal(batch["x"][1], batch["x_context"][0])
    with pytest.raises(ConfigError, match="azimuth_step"):
        splat_views(scenes=1, test_scenes=1, size=8, azimuth_step=(50.0, 10.0))
    with pytest.raises(ConfigError, match="scenes"):
        splat_views(scenes=0)
    assert "splat_distill" in RECIPES
    raw = yaml.safe_load((CONFIG_DIR / "splat_distill_scenes.yaml").read_text())
    cfg = parse_config(raw, "splat_distill_scenes")
    assert cfg.teacher.kind == "ema"
    fragment = sd.splat_distill_config()
    assert fragment["teacher"]["view"] == "x_context" and fragment["objectives"][0]["kind"] == "splat_kd"
    with pytest.raises(ConfigError, match="distance"):
        sd.splat_distill_config(distance="l7")
