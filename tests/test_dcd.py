"""#50 DCD: the teacher's hard-negative miner, the difficulty weight, the DCD loss (against an
explicit float64 loop and gradcheck), the pairwise scorer loss, and the scorer models."""

from __future__ import annotations

import math

import pytest
import torch

from distillery import Distiller, FrozenTeacher
from distillery.weighting.difficulty import DifficultyWeight, difficulty_weights
from distillery.errors import ConfigError, ShapeError
from distillery.objectives.mining import candidate_set, mine_hard_negatives
from distillery.models import build_model
from distillery.objectives.dcd import (
    DynamicContrastiveDistillation,
    dcd_loss,
    pairwise_score_ce_loss,
)
from distillery.recipes.dcd import (
    dcd_terms,
    dual_retrieval_scores,
    fusion_retrieval_scores,
)


def test_the_miner_picks_the_highest_scoring_negatives_of_each_row():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 5, generator=g)
    got = mine_hard_negatives(scores, 2)
    for i in range(5):
        ranked = sorted((j for j in range(5) if j != i), key=lambda j: -float(scores[i, j]))
        assert got[i].tolist() == ranked[:2]
    assert mine_hard_negatives(scores[:2, :3], 8).shape == (2, 2)              # clipped to the 2 negatives there are
    assert candidate_set(scores, 2)[:, 0].tolist() == list(range(5))           # the positive first
    pos = torch.zeros(2, 4, dtype=torch.bool)
    pos[0, 3] = pos[1, 0] = True
    assert mine_hard_negatives(torch.tensor([[1.0, 2.0, 3.0, 9.0], [9.0, 1.0, 0.0, 5.0]]), 1, pos).tolist() == [[2], [3]]
    with pytest.raises(ConfigError, match="k must be"):
        mine_hard_negatives(scores, 0)
    with pytest.raises(ShapeError, match="score matrix"):
        mine_hard_negatives(torch.randn(5), 1)


def test_difficulty_weights():
    w = difficulty_weights(torch.tensor([0.9, 0.9, 0.1, 1.0]), torch.tensor([0.1, 0.9, 0.1, 0.0]))
    assert w.tolist() == pytest.approx([0.81, 0.09, 0.09, 1.0])
    assert DifficultyWeight("static", 0.3)(torch.rand(4), torch.rand(4)).tolist() == pytest.approx([0.3] * 4)
    with pytest.raises(ConfigError, match="mode"):
        DifficultyWeight("adaptive")
    with pytest.raises(ConfigError, match="alpha"):
        DifficultyWeight("static", 2.0)


def _dcd_loop(image, text, teacher, tau, tau_t, k, static_alpha=None):
    """DCD written out query by query in float64 (both directions, their mean per pair)."""
    b = len(image)

    def cos(u, v):
        return sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))

    s = [[cos(image[i], text[j]) / tau for j in range(b)] for i in range(b)]
    t = [[teacher[i][j] / tau_t for j in range(b)] for i in range(b)]

    def one(srow, trow, i):
        lse = math.log(sum(math.exp(v) for v in srow))
        nce = lse - srow[i]
        hard = sorted((j for j in range(b) if j != i), key=lambda j: -trow[j])[: min(k, b - 1)]
        cand = [i] + hard
        zs = math.log(sum(math.exp(srow[j]) for j in cand))
        zt = math.log(sum(math.exp(trow[j]) for j in cand))
        kl = sum(math.exp(trow[j] - zt) * ((trow[j] - zt) - (srow[j] - zs)) for j in cand)
        p_t, p_s = math.exp(trow[i] - zt), math.exp(srow[i] - zs)
        alpha = static_alpha if static_alpha is not None else p_t * (1 - p_s)
        return alpha * kl + (1 - alpha) * nce

    total = 0.0
    for i in range(b):
        i2t = one(s[i], t[i], i)
        t2i = one([s[r][i] for r in range(b)], [t[r][i] for r in range(b)], i)
        total += 0.5 * (i2t + t2i)
    return total / b


def test_dcd_matches_an_explicit_loop():
    g = torch.Generator().manual_seed(1)
    img, txt, sc = (torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64),
                    3 * torch.randn(6, 6, generator=g, dtype=torch.float64))
    ref = _dcd_loop(img.tolist(), txt.tolist(), sc.tolist(), 0.2, 0.5, 3)
    assert float(dcd_loss(img, txt, sc, 0.2, 0.5, 3)) == pytest.approx(ref, rel=1e-10)
    obj = DynamicContrastiveDistillation(0.2, 0.5, 3, weighting="static", alpha=0.25, reduction="none")
    per = obj(img, txt, sc)
    assert per.shape == (6,)
    assert float(per.mean()) == pytest.approx(_dcd_loop(img.tolist(), txt.tolist(), sc.tolist(), 0.2, 0.5, 3, 0.25), rel=1e-10)
    with pytest.raises(ShapeError, match="teacher scores"):
        dcd_loss(img, txt, sc[:, :5])


def test_dcd_gradcheck_with_fixed_weights():
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    sc = torch.randn(5, 5, generator=g, dtype=torch.float64)
    weights = (torch.rand(5, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a, b: dcd_loss(a, b, sc, 0.3, 1.0, 2, weights=weights),
                                    (img.requires_grad_(), txt.requires_grad_()))
    static = DifficultyWeight("static", 0.6)
    assert torch.autograd.gradcheck(lambda a, b: dcd_loss(a, b, sc, 0.3, 1.0, 2, weighting=static, reduction="none"),
                                    (img, txt))


def test_pairwise_score_ce_matches_its_formula_and_gradcheck():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 4, generator=g, dtype=torch.float64)
    ref = 0.0
    for i in range(4):
        row = math.log(sum(math.exp(float(s[i, j])) for j in range(4))) - float(s[i, i])
        col = math.log(sum(math.exp(float(s[j, i])) for j in range(4))) - float(s[i, i])
        ref += 0.5 * (row + col) / 4
    assert float(pairwise_score_ce_loss(s)) == pytest.approx(ref, rel=1e-12)
    assert torch.autograd.gradcheck(pairwise_score_ce_loss, (s.requires_grad_(),))
    with pytest.raises(ShapeError, match="square"):
        pairwise_score_ce_loss(torch.randn(3, 4))


def test_fusion_scorer_scores_every_pair_jointly():
    torch.manual_seed(4)
    m = build_model("fusion_scorer", (10,), 10, hidden=6, fusion_hidden=[5], chunk=2)
    x = torch.randn(5, 10)
    with torch.no_grad():
        scores = m(x)["scores"]
        for i in range(5):
            for j in range(5):   # one fusion forward on the single pair (image i, text j)
                a, b = m.image_proj(x[i : i + 1, :5]), m.text_proj(x[j : j + 1, 5:])
                one = m.fusion(torch.cat([a, b, a * b, (a - b).abs()], dim=1))
                assert float(scores[i, j]) == pytest.approx(float(one), abs=1e-6)
        assert torch.allclose(fusion_retrieval_scores(m, x), scores)
    with pytest.raises(ConfigError, match="odd width"):
        build_model("fusion_scorer", (9,), 10)


def test_scoring_dual_encoder_feeds_dcd_through_the_distiller():
    torch.manual_seed(5)
    dual = build_model("dual_encoder", (10,), 10, hidden=[6], embed_dim=3)
    teacher = build_model("scoring_dual_encoder", (10,), 10, hidden=[6], embed_dim=3, temperature=0.5)
    teacher.load_state_dict(dual.state_dict())
    x = torch.randn(6, 10)
    with torch.no_grad():
        out = teacher(x)
        cos = torch.nn.functional.normalize(out["image"], dim=1) @ torch.nn.functional.normalize(out["text"], dim=1).T
    assert torch.allclose(out["scores"], cos / 0.5)
    student = build_model("dual_encoder", (10,), 10, hidden=[4], embed_dim=2)
    d = Distiller(student, FrozenTeacher(teacher), dcd_terms(num_hard_negatives=2))
    batch = {"x": x, "y": torch.zeros(6, dtype=torch.long)}
    d.prepare(batch)
    got = float(d.step(batch)["dcd"])
    with torch.no_grad():
        s = student(x)
    assert got == pytest.approx(_dcd_loop(s["image"].tolist(), s["text"].tolist(), out["scores"].tolist(), 0.07, 1.0, 2), rel=1e-5)
    assert torch.allclose(dual_retrieval_scores(student, x), torch.nn.functional.normalize(s["image"], dim=1)
                          @ torch.nn.functional.normalize(s["text"], dim=1).T)
