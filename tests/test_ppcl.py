"""PPCL (#26): surgery, layer similarity, interval search, boundary and replay terms."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from distillery import Distiller, FrozenTeacher, Term
from distillery.models import surgery
from distillery.errors import ConfigError, ShapeError
from distillery.evaluation.layer_similarity import (
    LayerProfile,
    boundary_features,
    find_redundant_intervals,
    linear_cka,
    linear_substitutability,
    similarity_profile,
)
from distillery.models import build_model
from distillery.objectives import CrossEntropy
from distillery.objectives.segment_replay import SegmentReplay, segment_replay_loss
from distillery.recipes import ppcl as P


def _net(depth=12, width=8, **kw):
    torch.manual_seed(0)
    return build_model("residual_mlp", (5,), 3, width=width, depth=depth, **kw)


def test_pruned_copy_runs_the_kept_blocks_in_order():
    full = _net()
    small = surgery.remove_blocks(full, "blocks", [3, 4, 5, 8])
    assert len(small.blocks) == 8 and len(full.blocks) == 12
    x = torch.randn(4, 5)
    h = full.stem(x)
    for i, block in enumerate(full.blocks):  # the full model's forward, skipping by hand
        if i not in (3, 4, 5, 8):
            h = block(h)
    torch.testing.assert_close(small(x), full.head(full.norm(h)))
    assert surgery.block_index_map(6, [1, 2, 4]) == [0, None, None, 1, None, 2]
    assert surgery.intervals([5, 1, 2, 9]) == [(1, 3), (5, 6), (9, 10)]
    with pytest.raises(ConfigError, match="out of range"):
        surgery.remove_blocks(full, "blocks", [12])
    with pytest.raises(ConfigError, match="nn.ModuleList"):
        surgery.remove_blocks(full, "stem", [0])


def test_residual_mlp_inherits_the_kept_blocks_from_a_frozen_teacher():
    teacher = _net()
    student = build_model("residual_mlp", (5,), 3, width=8, depth=12, remove=[0, 6, 7], inherit_teacher_weights=True)
    Distiller(student, FrozenTeacher(teacher), [Term("ce", CrossEntropy())])
    kept = [i for i in range(12) if i not in (0, 6, 7)]
    for new, old in enumerate(kept):
        torch.testing.assert_close(student.blocks[new].fc1.weight, teacher.blocks[old].fc1.weight)
    torch.testing.assert_close(student.head.weight, teacher.head.weight)
    with pytest.raises(ConfigError, match="full residual_mlp of depth 12"):
        Distiller(build_model("residual_mlp", (5,), 3, width=8, depth=12, remove=[1], inherit_teacher_weights=True),
                  FrozenTeacher(_net(depth=10)), [Term("ce", CrossEntropy())])


def _hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA from Gram matrices and the centring matrix H (Kornblith et al. 2019, eq. 3)."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: torch.trace(a @ h @ b @ h)  # noqa: E731
    return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))


def test_linear_cka_matches_the_gram_matrix_formula_and_its_invariances():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.randn(30, 7, generator=g, dtype=torch.float64) + x @ torch.randn(5, 7, generator=g, dtype=torch.float64)
    assert linear_cka(x, y) == pytest.approx(_hsic_cka(x, y), rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, torch.ones(30, 2)) == 0.0


def test_linear_probe_r2_is_one_for_a_linear_map_and_low_for_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    assert linear_substitutability(x, x @ w + 1.5, ridge=1e-9) == pytest.approx(1.0, abs=1e-6)
    assert linear_substitutability(x, torch.randn(200, 4, generator=g, dtype=torch.float64)) < 0.1
    with pytest.raises(ShapeError):
        linear_substitutability(x[:3], x[:3])


def test_profile_trend_and_breaks_by_hand():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(50, 4, generator=g)
    feats = [base, base * 2, base + 0.1 * torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)]
    prof = similarity_profile(feats)
    s = [linear_cka(feats[i], feats[i + 1]) for i in range(4)]
    torch.testing.assert_close(prof.adjacent, torch.tensor(s, dtype=torch.float64))
    d = [s[i + 1] - s[i] for i in range(3)]
    torch.testing.assert_close(prof.trend, torch.tensor(d, dtype=torch.float64))
    mag = torch.tensor([abs(v) for v in d], dtype=torch.float64)
    thr = float(mag.mean() + mag.std(unbiased=False))
    assert prof.threshold == pytest.approx(thr)
    assert prof.breaks == [j + 1 for j in range(3) if abs(d[j]) > thr]


def _brute_force(prof: LayerProfile, k: int) -> float:
    """Minimum summed cost over every set of k removed blocks whose runs span no break."""
    best = float("inf")
    for chosen in itertools.combinations(range(prof.num_blocks), k):
        runs = surgery.intervals(chosen)
        if any(a < br < b for a, b in runs for br in prof.breaks):
            continue
        best = min(best, sum(prof.cost(a, b) for a, b in runs))
    return best


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_interval_search_is_optimal_against_enumeration(k):
    g = torch.Generator().manual_seed(7)
    h = torch.randn(40, 6, generator=g)
    feats = [h]
    for _ in range(6):  # a residual stack with random blocks of varied strength
        h = h + torch.randn(1).abs().item() * torch.tanh(h @ torch.randn(6, 6, generator=g))
        feats.append(h)
    prof = similarity_profile(feats)
    got = find_redundant_intervals(prof, k)
    assert sum(b - a for a, b in got) == k
    assert all(not (a < br < b) for a, b in got for br in prof.breaks)
    assert sum(prof.cost(a, b) for a, b in got) == pytest.approx(_brute_force(prof, k), abs=1e-12)


def test_boundary_and_replay_pairs_by_hand():
    removed = [3, 4, 5, 8, 9, 10]
    assert P.boundary_pairs(12, removed) == [("blocks.2", "blocks.5"), ("blocks.4", "blocks.10")]
    assert P.replay_pairs(12, removed) == [(2, "blocks.2:input", "blocks.5"), (4, "blocks.7:input", "blocks.10")]
    assert P.boundary_pairs(6, [0, 1]) == [("stem", "blocks.1")]
    assert P.replay_pairs(6, [0, 1]) == [(0, "blocks.0:input", "blocks.2")]


def test_segment_replay_formula_and_gradcheck():
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).double()
    t_in, t_out = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    obj = SegmentReplay(lin, reduction="none")
    expected = ((t_in @ lin.weight.T + lin.bias - t_out) ** 2).mean(dim=1)
    torch.testing.assert_close(obj(t_in, t_out), expected)
    assert torch.autograd.gradcheck(lambda p, t: segment_replay_loss(p, t), (torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
                                                                           torch.randn(3, 4, dtype=torch.float64, requires_grad=True)))
    assert not list(obj.parameters())  # the student's block is referenced, not owned
    with pytest.raises(ShapeError):
        segment_replay_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_ppcl_terms_compute_boundary_and_replay_losses_from_explicit_forwards():
    teacher = _net(depth=6)
    removed = [2, 3]
    d = P.ppcl_distiller(teacher, removed)
    batch = {"x": torch.randn(5, 5), "y": torch.tensor([0, 1, 2, 0, 1])}
    d.prepare(batch)
    losses = d.step(batch)
    feats = boundary_features(teacher, batch["x"])  # h_0 .. h_6 of the frozen teacher
    student = d.student
    hs = student.blocks[1](student.blocks[0](student.stem(batch["x"])))  # student's block 1 = old block 1
    torch.testing.assert_close(losses["boundary_0"], ((hs - feats[4]) ** 2).mean())
    replay = ((student.blocks[1](feats[1]) - feats[4]) ** 2).mean()  # old block 1 on teacher's h_1 vs h_4
    torch.testing.assert_close(losses["replay_0"], replay)
    assert set(losses) == {"loss", "ce", "kd", "boundary_0", "replay_0"}
    # the replay term trains the student's block
    losses["loss"].backward()
    assert student.blocks[1].fc1.weight.grad is not None and teacher.blocks[1].fc1.weight.grad is None
