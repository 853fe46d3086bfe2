"""GeoDistill (#15): FoV masking, the localization toy, the localizer, metrics, the EMA step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillery.data import digits, load_dataset
from distillery.data.miniature.fov import FieldOfView, fov_mask
from distillery.data.miniature.localization import RING_OFFSETS, ring_cells
from distillery.errors import ConfigError, ShapeError
from distillery.models import build_model
from distillery.recipes.geodistill import (
    ema_momentum_per_step,
    geodistill_distiller,
    localization_metrics,
    ring_fov,
)


def test_fov_mask_is_a_contiguous_circular_sector():
    got = fov_mask(torch.tensor([6, 0, 3]), torch.tensor([4, 0, 8]), 8)
    want = [[i in (6, 7, 0, 1) for i in range(8)], [False] * 8, [True] * 8]
    assert got.tolist() == want


def test_fov_view_masks_only_the_ring_and_keeps_the_right_width():
    torch.manual_seed(0)
    x = torch.randn(50, 10, 3) + 5.0  # no exact zeros
    view = FieldOfView(180, 240, dim=1, start=-8, length=8)
    out, seen = view.sample(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out[:, :2], x[:, :2])  # the map rows are untouched
    ring_seen = (out[:, 2:] != 0).all(-1)
    assert torch.equal(ring_seen, seen)
    widths = seen.sum(1)
    assert set(widths.tolist()) <= {4, 5}  # round(180/45) = 4 ... round(240/45) = round(5.33) = 5
    for row in seen:  # one contiguous run on the circle: exactly one False->True transition
        r = row.tolist()
        assert sum(1 for i in range(8) if r[i] and not r[i - 1]) == 1
    again, _ = view.sample(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, again)
    with pytest.raises(ShapeError, match="does not fit"):
        FieldOfView(dim=1, start=-8, length=8)(torch.randn(2, 5, 3))
    with pytest.raises(ConfigError, match="max_degrees"):
        FieldOfView(200, 100)


def test_tile_localization_queries_see_the_neighbours_of_the_true_cell():
    splits = load_dataset("tile_localization", grid=4, n_train=30, n_test=10, label_noise=0.5, seed=1)
    pool = digits()
    lookup = {}
    for xs, ys in ((pool.train.x, pool.train.y), (pool.test.x, pool.test.y)):
        for img, c in zip(xs.reshape(len(ys), 64).numpy(), ys.numpy()):
            lookup[img.tobytes()] = int(c)
    ds = splits.train
    cls = lambda v: lookup[v.numpy().tobytes()]
    for n in range(len(ds)):
        cell = int(ds.hidden_y[n])
        r, c = divmod(cell, 4)
        for d, (dr, dc) in enumerate(RING_OFFSETS):
            neighbour = ((r + dr) % 4) * 4 + (c + dc) % 4
            assert cls(ds.x[n, 16 + d]) == cls(ds.x[n, neighbour])           # same digit class ...
            assert not torch.equal(ds.x[n, 16 + d], ds.x[n, neighbour])     # ... another image of it
    moved = ds.y != ds.hidden_y
    assert 0 < int(moved.sum()) < len(ds)
    ring = ring_cells(ds.hidden_y.numpy(), 4)
    assert all(int(ds.y[i]) in ring[i] for i in np.flatnonzero(moved.numpy()))
    assert splits.test.hidden_y is None and splits.input_shape == (24, 64)


def test_ring_localizer_matches_its_formula_and_ignores_masked_tiles():
    torch.manual_seed(1)
    grid = 3
    net = build_model("ring_localizer", (grid * grid + 8, 5), grid * grid, hidden=6, embed=4, descriptor=3).double()
    x = torch.randn(2, grid * grid + 8, 5, dtype=torch.float64)
    x[1, -3:] = 0.0  # three query tiles outside the field of view
    out = net(x)
    for b in range(2):
        q_emb = []
        for d in range(8):
            tile = x[b, grid * grid + d]
            q_emb.append(net.query_encoder(tile) if tile.abs().sum() > 0 else torch.zeros(4, dtype=torch.float64))
        q = net.query_descriptor(torch.cat(q_emb))
        for cell in range(grid * grid):
            r, c = divmod(cell, grid)
            around = [net.map_encoder(x[b, ((r + dr) % grid) * grid + (c + dc) % grid]) for dr, dc in RING_OFFSETS]
            m = net.map_descriptor(torch.cat(around))
            assert out[b, cell].item() == pytest.approx((m @ q).item() / math.sqrt(3), abs=1e-10)


def test_localization_metrics_by_hand():
    grid = 4
    logits = torch.full((3, 16), -1e4, dtype=torch.float64)
    logits[0, 5] = 0.0               # predicts (1, 1); true (1, 1): distance 0
    logits[1, 3] = 0.0               # predicts (0, 3); true (0, 0): torus distance 1
    logits[2, 0] = logits[2, 10] = 0  # tie: arg-max takes the first, (0, 0); true (2, 2): sqrt(8)
    cells = torch.tensor([5, 0, 10])
    m = localization_metrics(logits, cells, grid)
    assert m["error"] == pytest.approx((0 + 1 + math.sqrt(8)) / 3)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["entropy"] == pytest.approx(math.log(2) / 3, abs=1e-9)  # only the tie is uncertain
    assert m["uniform_entropy"] == pytest.approx(math.log(16))


def test_geodistill_step_is_the_kl_from_the_full_view_teacher_and_the_teacher_is_an_ema():
    torch.manual_seed(2)
    grid = 3
    student = build_model("ring_localizer", (grid * grid + 8, 5), grid * grid, hidden=6, embed=4, descriptor=3)
    fov = ring_fov()
    d = geodistill_distiller(student, fov, momentum=0.75)
    x = torch.randn(4, grid * grid + 8, 5)
    batch = {"x": x, "y": torch.zeros(4, dtype=torch.long)}
    d.prepare(batch)
    torch.manual_seed(5)
    loss = d.step(batch)["loss"]
    torch.manual_seed(5)
    x_fov = fov(x)
    with torch.no_grad():
        p_t = F.softmax(student(x), -1)  # the teacher is still a copy of the student
    log_q = F.log_softmax(student(x_fov), -1)
    torch.testing.assert_close(loss, (p_t * (p_t.log() - log_q)).sum(-1).mean())
    before = [p.detach().clone() for p in d.teacher.model.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    d.update()
    for t, t0, s in zip(d.teacher.model.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.75 * t0 + 0.25 * s.detach())


def test_ema_momentum_per_step():
    assert ema_momentum_per_step(0.9, 47) == pytest.approx(math.exp(math.log(0.9) / 47))
    assert ema_momentum_per_step(0.9, 47) ** 47 == pytest.approx(0.9)
