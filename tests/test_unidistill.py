"""UniDistill (#57): keypoints, bilinear samples, Gaussian masks, the three foreground losses, AP."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ShapeError
from distillery.objectives.foreground import (
    center_focal_loss,
    foreground_feature_loss,
    foreground_relation_loss,
    foreground_response_loss,
)
from distillery.objectives.foreground_grid import (
    box_keypoints,
    center_average_precision,
    gaussian_center_mask,
    gaussian_radius,
    sample_points,
    valid_boxes,
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


# -- issue 15: the review against the authors' code, and the mechanism -------------------------
def test_response_loss_softens_the_teacher_heatmap():
    """The authors' ResponseDistillLoss compares the student's sigmoid(hm) with the teacher's
    sigmoid(hm / 2): the teacher's heatmap is softened, the student's is not."""
    from distillery.objectives.foreground import ForegroundResponseKD

    s = torch.randn(2, 1, 7, 7, generator=_g(13), dtype=torch.float64)
    t = 4 * torch.randn(2, 1, 7, 7, generator=_g(14), dtype=torch.float64)
    mask = gaussian_center_mask(BOXES, (7, 7)).double()
    want = float((mask * (torch.sigmoid(s[:, 0]) - torch.sigmoid(t[:, 0] / 2)).abs()).sum() / mask.sum())
    assert float(foreground_response_loss(s, t, BOXES, teacher_temperature=2.0)) == pytest.approx(want, rel=1e-9)
    assert float(ForegroundResponseKD(teacher_temperature=2.0)(s, t, BOXES)) == pytest.approx(want, rel=1e-9)
    # a student equal to the softened teacher has no loss; the unsoftened one has
    assert float(foreground_response_loss(t / 2, t, BOXES, teacher_temperature=2.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(foreground_response_loss(t, t, BOXES, teacher_temperature=2.0)) > 0.01


def test_recipe_reads_the_authors_signals():
    """Feature loss on the encoder's (low-level) BEV features, relation loss on the BEV
    backbone's output, response loss with the teacher softened at T = 2 - as in the authors'
    code (the earlier recipe put both feature terms on the backbone's output, unsoftened)."""
    from distillery.recipes.unidistill import (
        WEIGHTS,
        unidistill_objectives,
        unidistill_terms,
    )

    terms = {t["name"]: t for t in unidistill_objectives()}
    assert terms["feature"]["inputs"] == {"student": "student.low_features", "teacher": "teacher.low_features"}
    assert terms["relation"].get("inputs", {"student": "student.features"})["student"] == "student.features"
    assert terms["response"]["params"]["teacher_temperature"] == 2.0
    assert {k: terms[k]["weight"] for k in WEIGHTS} == WEIGHTS == {"feature": 10.0, "relation": 5.0, "response": 1.0}
    built = {t.name: t for t in unidistill_terms()}
    assert built["feature"].inputs["student"] == "student.low_features" and built["response"].objective.teacher_temperature == 2.0


def test_bev_detector_low_features_are_the_first_half_of_the_backbone():
    from distillery.models import build_model

    net = build_model("bev_detector", (1, 8, 8), 3, width=4, depth=4).eval()
    x = torch.randn(2, 1, 8, 8, generator=_g(15))
    out = net(x)
    torch.testing.assert_close(out["low_features"], net.backbone[:4](x))   # conv, ReLU, conv, ReLU
    torch.testing.assert_close(out["features"], net.backbone(x))


def test_distiller_feeds_the_teacher_the_clean_view(tmp_path):
    """Which arm gets which input: in the reproduction's config the teacher reads ``x_clean``,
    the student the degraded ``x``."""
    from safetensors.torch import save_file

    from distillery.config import parse_config
    from distillery.data import load_dataset
    from distillery.engine.build import build_distiller, build_teacher, build_terms
    from distillery.models import build_model
    from distillery.recipes._fragments import frozen_teacher
    from distillery.recipes.unidistill import unidistill_config
    from distillery.reproduce._common import compose
    from distillery.reproduce.unidistill import MODEL

    splits = load_dataset("bev_rectangles", size=16, n_train=8, n_test=4)
    teacher_net = build_model("bev_detector", splits.input_shape, splits.num_classes, **MODEL["params"]).eval()
    save_file(teacher_net.state_dict(), str(tmp_path / "t.safetensors"))
    raw = compose({"data": {"dataset": "bev_rectangles", "params": {"size": 16, "n_train": 8, "n_test": 4}, "batch_size": 4},
                   "student": MODEL, "teacher": frozen_teacher(dict(MODEL, checkpoint=str(tmp_path / "t.safetensors")), view="x_clean")},
                  unidistill_config())
    cfg = parse_config(raw, "unidistill")
    student = build_model("bev_detector", splits.input_shape, splits.num_classes, **MODEL["params"])
    teacher = build_teacher(cfg.teacher, student, splits.input_shape, splits.num_classes, fit_teacher=None)
    distiller = build_distiller(cfg, student, teacher, build_terms(cfg.objectives))
    batch = splits.train.__getitems__(list(range(4)))
    distiller.prepare(batch)
    signals, values = distiller.dry_step(batch)
    with torch.no_grad():
        want_t = teacher_net(batch["x_clean"])
        want_s = student(batch["x"])
    torch.testing.assert_close(signals["teacher"]["low_features"], want_t["low_features"])
    torch.testing.assert_close(signals["teacher"]["heatmap"], want_t["heatmap"])
    torch.testing.assert_close(signals["student"]["low_features"], want_s["low_features"])
    assert not torch.allclose(batch["x"], batch["x_clean"]) and set(values) >= {"feature", "relation", "response"}


def test_feature_kd_transfers_occupancy_the_labels_do_not_hold():
    """Mechanism: the teacher's features hold the local occupancy density of the clean view
    (how much of each object lies around a cell: its extent, which no centre label holds). The
    feature term alone makes a student on the degraded view reproduce it at the objects'
    keypoints, far better than the best constant, and never touches the background."""
    from torch import nn

    from distillery.data import load_dataset

    torch.manual_seed(0)
    # a milder degradation than the miniature's, so that 200 steps suffice: this tests the loss, not the miniature
    splits = load_dataset("bev_rectangles", size=10, n_train=128, n_test=64, max_side=5, seed=1, keep=0.8, noise=0.2, clutter=0.02)

    def teacher(clean):  # the clean occupancy averaged over 5x5 cells: varies with each object's size and position
        return torch.nn.functional.avg_pool2d(clean, 5, stride=1, padding=2, count_include_pad=True)

    student = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
    opt = torch.optim.Adam(student.parameters(), lr=0.01)
    x, clean, boxes = splits.train.x, splits.train.fields["x_clean"], splits.train.fields["boxes"]
    for _ in range(200):
        loss = foreground_feature_loss(student(x), teacher(clean), boxes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tx, tclean, tboxes = splits.test.x, splits.test.fields["x_clean"], splits.test.fields["boxes"]
    with torch.no_grad():
        target = sample_points(teacher(tclean), box_keypoints(tboxes))[valid_boxes(tboxes)]
        got = sample_points(student(tx), box_keypoints(tboxes))[valid_boxes(tboxes)]
    constant = (target - target.median()).abs().mean()  # the best constant under L1 (0.10 here; the student ~0.05)
    assert float((got - target).abs().mean()) < 0.6 * float(constant)
    # background filtering: no gradient reaches cells that no keypoint's bilinear footprint covers
    fmap = torch.zeros(1, 1, 10, 10, requires_grad=True)
    box = torch.tensor([[[2.0, 2.0, 5.0, 6.0]]])
    foreground_feature_loss(fmap, torch.ones(1, 1, 10, 10), box).backward()
    inside = torch.zeros(10, 10, dtype=torch.bool)
    inside[2:5, 2:6] = True
    assert float(fmap.grad[0, 0][~inside].abs().sum()) == 0.0 and float(fmap.grad[0, 0][inside].abs().sum()) > 0


def test_train_arms_on_a_tiny_size(tmp_path):
    """The arm function shared by run and diagnose: every arm, every seed, one AP each."""
    from distillery.reproduce import Context
    from distillery.reproduce.unidistill import train_arms

    ctx = Context(seeds=[0], quick=True, out=tmp_path, log=lambda _: None)
    teacher_ap, ap, teacher = train_arms(ctx, 32, epochs=1, teacher_epochs=1, n_test=16, prefix="tiny/")
    assert set(ap) == {"none", "dense", "unidistill"} and all(len(v) == 1 and 0.0 <= v[0] <= 1.0 for v in ap.values())
    assert 0.0 <= teacher_ap <= 1.0 and (tmp_path / "tiny" / "teacher" / "student.safetensors").is_file()
    again, _, same = train_arms(ctx, 64, ("none",), epochs=1, teacher_epochs=1, n_test=16, prefix="more/", teacher=teacher)
    assert same is teacher and again == teacher_ap and not (tmp_path / "more" / "teacher").exists()
    with pytest.raises(ValueError, match="unknown arms"):
        train_arms(ctx, 32, ("kd",), epochs=1, teacher_epochs=1, n_test=16)
