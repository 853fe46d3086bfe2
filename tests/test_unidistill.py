"""UniDistill (#57): keypoints, bilinear samples, Gaussian masks, the three foreground losses, AP."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ShapeError
from distillery.objectives.foreground_grid import (
    box_keypoints,
    center_average_precision,
    gaussian_center_mask,
    gaussian_radius,
    sample_points,
    valid_boxes,
)
from distillery.objectives.foreground import (
    center_focal_loss,
    foreground_feature_loss,
    foreground_relation_loss,
    foreground_response_loss,
)

BOXES = torch.tensor([
    [[1.0, 1.0, 4.0, 3.0], [0.0, 0.0, 0.0, 0.0]],     # one object (3 x 2 cells), one padding row
    [[0.0, 2.0, 2.0, 6.0], [3.0, 0.0, 6.0, 2.0]],     # two objects
], dtype=torch.float64)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _bilinear(fmap, r, c):
    """Value of ``fmap [C, H, W]`` at grid point (r, c) (cell centres at i + 0.5), zero outside."""
    y, x = r - 0.5, c - 0.5
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(fmap.shape[0], dtype=fmap.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < fmap.shape[1] and 0 <= xx < fmap.shape[2]:
                out = out + wy * wx * fmap[:, yy, xx]
    return out


def test_keypoints_of_a_box_by_hand():
    kp = box_keypoints(torch.tensor([[[1.0, 1.0, 4.0, 3.0]]]))[0, 0]
    # corner cells (1,1), (1,2), (3,2), (3,1): centres at +0.5; centre (2.5, 2.0); edge midpoints
    want = [[1.5, 1.5], [1.5, 2.5], [3.5, 2.5], [3.5, 1.5], [2.5, 2.0], [1.5, 2.0], [2.5, 2.5], [3.5, 2.0], [2.5, 1.5]]
    torch.testing.assert_close(kp, torch.tensor(want))
    assert valid_boxes(BOXES).tolist() == [[True, False], [True, True]]


def test_sample_points_is_exact_at_cell_centres_and_bilinear_between():
    fmap = torch.randn(1, 3, 5, 6, generator=_g(0), dtype=torch.float64)
    pts = torch.tensor([[[[2.5, 3.5], [0.5, 0.5], [1.0, 2.25], [4.9, 5.9]]]], dtype=torch.float64)
    got = sample_points(fmap, pts)[0, 0]
    torch.testing.assert_close(got[0], fmap[0, :, 2, 3])
    torch.testing.assert_close(got[1], fmap[0, :, 0, 0])
    for p in (2, 3):
        torch.testing.assert_close(got[p], _bilinear(fmap[0], float(pts[0, 0, p, 0]), float(pts[0, 0, p, 1])))


def test_gaussian_radius_and_mask_by_formula():
    # CenterNet's three quadratic roots, written out for one box
    h, w, o = 4.0, 6.0, 0.7
    r1 = ((h + w) + math.sqrt((h + w) ** 2 - 4 * w * h * (1 - o) / (1 + o))) / 2
    r2 = (2 * (h + w) + math.sqrt(4 * (h + w) ** 2 - 16 * (1 - o) * w * h)) / 2
    r3 = (-2 * o * (h + w) + math.sqrt(4 * o * o * (h + w) ** 2 - 16 * o * (o - 1) * w * h)) / 2
    assert float(gaussian_radius(torch.tensor(h), torch.tensor(w))) == pytest.approx(min(r1, r2, r3), rel=1e-6)
    boxes = torch.tensor([[[2.0, 2.0, 6.0, 8.0]]])
    mask = gaussian_center_mask(boxes, (10, 12))[0]
    r = math.floor(min(r1, r2, r3))
    sigma = (2 * r + 1) / 6
    for i in range(10):
        for j in range(12):
            di, dj = i - 4, j - 5   # centre cell (floor(4), floor(5))
            want = math.exp(-(di * di + dj * dj) / (2 * sigma * sigma)) if abs(di) <= r and abs(dj) <= r else 0.0
            assert float(mask[i, j]) == pytest.approx(want, abs=1e-6)
    assert float(mask[4, 5]) == 1.0
    # padding rows draw nothing
    assert float(gaussian_center_mask(torch.zeros(1, 2, 4), (5, 5)).abs().sum()) == 0.0


def _objects(boxes):
    return [(b, m) for b in range(boxes.shape[0]) for m in range(boxes.shape[1]) if boxes[b, m, 2] > boxes[b, m, 0]]


def test_feature_loss_is_l1_at_keypoints_averaged_over_objects():
    s = torch.randn(2, 3, 7, 7, generator=_g(1), dtype=torch.float64)
    t = torch.randn(2, 3, 7, 7, generator=_g(2), dtype=torch.float64)
    kps = box_keypoints(BOXES)
    per_object = {}
    for b, m in _objects(BOXES):
        diffs = [(_bilinear(s[b], float(r), float(c)) - _bilinear(t[b], float(r), float(c))).abs().mean() for r, c in kps[b, m]]
        per_object[(b, m)] = sum(diffs) / 9
    want = sum(per_object.values()) / 3
    torch.testing.assert_close(foreground_feature_loss(s, t, BOXES), want)
    shares = foreground_feature_loss(s, t, BOXES, reduction="none")
    torch.testing.assert_close(shares, torch.stack([per_object[(0, 0)] * 2 / 3, (per_object[(1, 0)] + per_object[(1, 1)]) * 2 / 3]))
    torch.testing.assert_close(shares.mean(), want)


def test_relation_loss_compares_keypoint_cosine_matrices():
    s = torch.randn(2, 3, 7, 7, generator=_g(3), dtype=torch.float64)
    t = torch.randn(2, 5, 7, 7, generator=_g(4), dtype=torch.float64)   # channel counts may differ
    kps = box_keypoints(BOXES)
    losses = []
    for b, m in _objects(BOXES):
        fs = [_bilinear(s[b], float(r), float(c)) for r, c in kps[b, m]]
        ft = [_bilinear(t[b], float(r), float(c)) for r, c in kps[b, m]]
        err = 0.0
        for i in range(9):
            for j in range(9):
                cs = float(fs[i] @ fs[j] / (fs[i].norm() * fs[j].norm()))
                ct = float(ft[i] @ ft[j] / (ft[i].norm() * ft[j].norm()))
                err += abs(cs - ct)
        losses.append(err / 81)
    assert float(foreground_relation_loss(s, t, BOXES)) == pytest.approx(sum(losses) / 3, rel=1e-9)
    assert float(foreground_relation_loss(3 * t, t, BOXES)) == pytest.approx(0.0, abs=1e-12)


def test_response_loss_is_mask_weighted_l1_of_max_probabilities():
    s = torch.randn(2, 2, 7, 7, generator=_g(5), dtype=torch.float64)
    t = torch.randn(2, 2, 7, 7, generator=_g(6), dtype=torch.float64)
    mask = gaussian_center_mask(BOXES, (7, 7)).double()
    num = 0.0
    for b in range(2):
        for i in range(7):
            for j in range(7):
                ps = max(1 / (1 + math.exp(-float(s[b, k, i, j]))) for k in range(2))
                pt = max(1 / (1 + math.exp(-float(t[b, k, i, j]))) for k in range(2))
                num += float(mask[b, i, j]) * abs(ps - pt)
    assert float(foreground_response_loss(s, t, BOXES)) == pytest.approx(num / float(mask.sum()), rel=1e-9)


def test_center_focal_loss_by_formula():
    logits = torch.randn(2, 1, 4, 4, generator=_g(7), dtype=torch.float64)
    target = torch.rand(2, 1, 4, 4, generator=_g(8), dtype=torch.float64) * 0.9
    target[0, 0, 1, 1] = 1.0
    target[1, 0, 2, 3] = 1.0
    total = 0.0
    for idx in torch.cartesian_prod(torch.arange(2), torch.arange(4), torch.arange(4)).tolist():
        b, i, j = idx
        p, y = 1 / (1 + math.exp(-float(logits[b, 0, i, j]))), float(target[b, 0, i, j])
        total += -(1 - p) ** 2 * math.log(p) if y == 1.0 else -((1 - y) ** 4) * p**2 * math.log(1 - p)
    assert float(center_focal_loss(logits, target)) == pytest.approx(total / 2, rel=1e-9)


def test_foreground_losses_gradcheck_float64():
    boxes = BOXES[:, :, :]
    s = torch.randn(2, 3, 7, 7, generator=_g(9), dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 7, 7, generator=_g(10), dtype=torch.float64)
    h = torch.randn(2, 1, 7, 7, generator=_g(11), dtype=torch.float64, requires_grad=True)
    ht = torch.randn(2, 1, 7, 7, generator=_g(12), dtype=torch.float64)
    target = gaussian_center_mask(BOXES, (7, 7)).double().unsqueeze(1)
    assert torch.autograd.gradcheck(lambda x: foreground_feature_loss(x, t, boxes, distance="mse"), (s,))
    assert torch.autograd.gradcheck(lambda x: foreground_relation_loss(x, t, boxes), (s,))
    assert torch.autograd.gradcheck(lambda x: foreground_response_loss(x, ht, boxes), (h,))
    assert torch.autograd.gradcheck(lambda x: center_focal_loss(x, target), (h,))


def test_shapes_are_checked():
    with pytest.raises(ShapeError, match=r"\[2, 3, 7, 7\].*\[2, 4, 7, 7\]"):
        foreground_feature_loss(torch.zeros(2, 3, 7, 7), torch.zeros(2, 4, 7, 7), BOXES.float())
    with pytest.raises(ShapeError, match="boxes"):
        foreground_relation_loss(torch.zeros(2, 3, 7, 7), torch.zeros(2, 3, 7, 7), torch.zeros(2, 4))


def test_center_average_precision_on_hand_made_heatmaps():
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 6.0, 6.0]]])   # centres (1, 1) and (5, 5)
    # a strictly decreasing background (row-major) has no local maximum away from the set peaks
    background = -1.0 - 0.01 * torch.arange(64, dtype=torch.float32).reshape(1, 8, 8)
    heat = background.clone()
    heat[0, 1, 1], heat[0, 5, 5] = 0.9, 0.8        # peaks at cell centres (1.5, 1.5), (5.5, 5.5): both hits
    assert center_average_precision(heat, boxes) == pytest.approx(1.0)
    heat[0, 1, 6] = 0.95                            # a false positive ranked first
    # ranks: FP (p=0), TP (1/2, r=1/2), TP (2/3, r=1): interpolated AP = 1/2 * 2/3 + 1/2 * 2/3
    assert center_average_precision(heat, boxes) == pytest.approx(2 / 3)
    heat[0, 5, 5] = background[0, 5, 5]             # the second object missed: recall stops at 1/2
    assert center_average_precision(heat, boxes) == pytest.approx(0.5 * 0.5)


def test_bev_rectangles_fields_agree():
    from distillery.data import load_dataset

    d = load_dataset("bev_rectangles", size=12, n_train=20, n_test=5, max_objects=3, max_side=4, seed=3)
    batch = d.train.__getitems__(list(range(20)))
    for i in range(20):
        occ = torch.zeros(12, 12)
        for r0, c0, r1, c1 in batch["boxes"][i].long().tolist():
            assert occ[r0:r1, c0:c1].sum() == 0
            occ[r0:r1, c0:c1] = 1
        assert torch.equal(occ, batch["x_clean"][i, 0])
        n = int(valid_boxes(batch["boxes"][i:i + 1]).sum())
        assert int(batch["y"][i]) == n - 1 and int((batch["heatmap"][i] == 1.0).sum()) == n
