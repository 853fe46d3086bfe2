"""Hybrid Distill (#38): token gathering, relation and feature losses, the token-masking ViT,
attention statistics and the recipe's wiring."""

from __future__ import annotations

import math

import pytest
import torch

from distillery import taps
from distillery.evaluation.attention import (
    attention_distance,
    attention_entropy,
    attention_statistics,
    patch_coordinates,
)
from distillery.data import ArrayDataset
from distillery.errors import ConfigError, ShapeError
from distillery.models import build_model
from distillery.objectives import MaskedTokenRelationKD, TokenRelationKD
from distillery.objectives.token_relation import (
    gather_relations,
    gather_tokens,
    token_feature_loss,
    token_relation_loss,
)
from distillery.recipes.hybrid_distill import (
    RECIPE,
    hybrid_distiller,
    hybrid_terms,
    single_teacher_terms,
    token_features,
)

VIT = {"patch_size": 4, "dim": 16, "depth": 3, "heads": 2}


def _attn(b, h, t, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, h, t, t, generator=g, dtype=dtype), -1)


# -- gathering and the losses -------------------------------------------------------------------
def test_gather_tokens_and_relations_match_explicit_indexing():
    x = torch.randn(2, 6, 3)  # class token + 5 patches
    keep = torch.tensor([[0, 3], [1, 4]])
    got = gather_tokens(x, keep)
    for b in range(2):
        torch.testing.assert_close(got[b], torch.stack([x[b, 0], x[b, keep[b, 0] + 1], x[b, keep[b, 1] + 1]]))
    a = _attn(2, 3, 6)
    sub = gather_relations(a, keep)
    for b in range(2):
        idx = [0] + [int(k) + 1 for k in keep[b]]
        for h in range(3):
            for i, qi in enumerate(idx):
                row = torch.tensor([float(a[b, h, qi, kj]) for kj in idx], dtype=torch.float64)
                torch.testing.assert_close(sub[b, h, i], row / row.sum())
    assert gather_tokens(x, None) is x
    with pytest.raises(ShapeError, match="outside"):
        gather_tokens(x, torch.tensor([[0, 5], [1, 2]]))


def test_token_relation_loss_matches_a_loop_and_passes_gradcheck():
    t = _attn(2, 2, 6, seed=1)
    keep = torch.tensor([[1, 2, 4], [0, 3, 4]])
    logits = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    s = torch.softmax(logits, -1)
    sub = gather_relations(t, keep)
    expected = []
    for b in range(2):
        total = 0.0
        for h in range(2):
            for i in range(4):
                total += sum(float(sub[b, h, i, j]) * (math.log(float(sub[b, h, i, j])) - math.log(float(s.detach()[b, h, i, j])))
                             for j in range(4))
        expected.append(total / 8)
    got = token_relation_loss(s, t, keep, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(MaskedTokenRelationKD()(s, t, keep), got.mean())
    assert torch.autograd.gradcheck(lambda z: token_relation_loss(torch.softmax(z, -1), t, keep), (logits,))
    # heads="mean": compares head-averaged maps, so head counts may differ
    t4 = _attn(2, 4, 6, seed=2)
    mean_loss = token_relation_loss(s, t4, keep, heads="mean", reduction="none")
    ss, tt = s.mean(1), gather_relations(t4, keep).mean(1)
    torch.testing.assert_close(mean_loss, (tt * (tt.log() - ss.log())).sum(-1).mean(-1))
    with pytest.raises(ShapeError, match="heads: mean"):
        token_relation_loss(s, t4, keep)
    assert float(TokenRelationKD()(t, t)) == pytest.approx(0.0, abs=1e-12)


def test_token_feature_loss_matches_the_formula_and_passes_gradcheck():
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 3, dtype=torch.float64)
    keep = torch.tensor([[0, 2], [3, 4]])
    student = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.stack([teacher[0, [0, 1, 3]], teacher[1, [0, 4, 5]]])
    torch.testing.assert_close(token_feature_loss(student, teacher, keep, reduction="none"), ((student - target) ** 2).mean((1, 2)))
    assert torch.autograd.gradcheck(lambda z: token_feature_loss(z, teacher, keep), (student,))
    with pytest.raises(ShapeError, match="teacher's width"):
        token_feature_loss(student[..., :2], teacher, keep)


# -- the token-masking ViT ----------------------------------------------------------------------
def _masking_vit(**kw):
    torch.manual_seed(0)
    return build_model("token_masking_vit", (40,), 10, **VIT, **kw)


def test_eval_mode_equals_the_plain_vit_and_loads_its_weights():
    plain = build_model("vit", (40,), 10, **VIT)
    m = _masking_vit(mask_ratios=[0.5])
    missing = m.load_state_dict(plain.state_dict(), strict=False)
    assert missing.missing_keys == ["mask_step"] and not missing.unexpected_keys
    m.eval()
    x = torch.randn(3, 40)
    out = m(x)
    torch.testing.assert_close(out["logits"], plain(x))
    torch.testing.assert_close(out["tokens"], plain.tokens(x))
    assert out["keep"].tolist() == [list(range(10))] * 3


def test_masked_forward_runs_the_blocks_on_the_kept_tokens_and_follows_the_schedule():
    m = _masking_vit(mask_ratios=[0.0, 0.3, 0.5], milestones=[1, 3], select="random")
    assert [m.ratio_at(k) for k in range(5)] == [0.0, 0.3, 0.3, 0.5, 0.5]
    x = torch.randn(4, 40)
    sizes = []
    for _ in range(4):
        torch.manual_seed(7)
        out = m(x)
        sizes.append(out["keep"].shape[1])
    assert sizes == [10, 7, 7, 5] and int(m.mask_step) == 4
    with torch.no_grad():  # no gradients: evaluation-like, nothing dropped, nothing counted
        assert m(x)["keep"].shape[1] == 10 and int(m.mask_step) == 4
    # the masked pass equals the blocks run by hand on the class token and the kept patches
    keep = out["keep"]
    assert bool((keep[:, 1:] > keep[:, :-1]).all())
    t = m.patch_embed(x.unsqueeze(1)) + m.pos_embed[:, 1:]  # [B, N, dim]
    t = torch.stack([t[b, keep[b]] for b in range(4)])
    t = torch.cat([(m.cls_token + m.pos_embed[:, :1]).expand(4, -1, -1), t], 1)
    for block in m.blocks:
        t = block(t)
    torch.testing.assert_close(out["tokens"], m.norm(t))


def test_scorer_selection_keeps_the_tokens_the_scorer_attends_to_most():
    torch.manual_seed(1)
    scorer = build_model("vit", (40,), 10, **VIT).eval()
    m = _masking_vit(mask_ratios=[0.4], select="scorer")
    x = torch.randn(3, 40)
    with pytest.raises(ConfigError, match="set_scorer"):
        m(x)
    m.set_scorer(scorer)
    out = m(x)
    with torch.no_grad():
        attn = taps.run_tapped(scorer, x, ["blocks.2.attn.softmax"])["blocks.2.attn.softmax"]
    cls_row = attn[:, :, 0, 1:].mean(1)
    for b in range(3):
        expected = sorted(torch.argsort(cls_row[b], descending=True)[:6].tolist())
        assert out["keep"][b].tolist() == expected
    assert not any(p.requires_grad for p in scorer.parameters())
    assert not any(k.startswith("_scorer") for k in m.state_dict())


def test_token_masking_vit_rejects_bad_schedules():
    with pytest.raises(ConfigError, match="one more mask ratio"):
        _masking_vit(mask_ratios=[0.1, 0.2])
    with pytest.raises(ConfigError, match="fractions"):
        _masking_vit(mask_ratios=[1.0])
    with pytest.raises(ConfigError, match="increasing"):
        _masking_vit(mask_ratios=[0.1, 0.2, 0.3], milestones=[5, 5])
    with pytest.raises(ConfigError, match="select"):
        _masking_vit(select="entropy")


# -- attention statistics -----------------------------------------------------------------------
def test_attention_distance_and_entropy_match_closed_forms_and_loops():
    n = 5
    uniform = torch.full((2, 3, n + 1, n + 1), 1.0 / (n + 1))
    # uniform over patch keys: mean |i - j| over a 1D grid = (n^2 - 1) / (3n)
    torch.testing.assert_close(attention_distance(uniform, (n,)), torch.full((3,), (n * n - 1) / (3 * n), dtype=torch.float64))
    torch.testing.assert_close(attention_entropy(uniform, (n,)), torch.full((3,), math.log(n + 1), dtype=torch.float64))
    a = _attn(2, 2, 5, seed=3)  # 2x2 grid
    pos = patch_coordinates((2, 2))
    assert pos.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    for h in range(2):
        d = 0.0
        for b in range(2):
            for i in range(4):
                row = a[b, h, i + 1, 1:] / a[b, h, i + 1, 1:].sum()
                d += sum(float(row[j]) * math.dist(pos[i].tolist(), pos[j].tolist()) for j in range(4)) / 8
        assert float(attention_distance(a, (2, 2))[h]) == pytest.approx(d, abs=1e-12)
    with pytest.raises(ShapeError, match="N = 4"):
        attention_distance(_attn(1, 1, 6), (2, 2))


def test_attention_statistics_over_a_dataset():
    torch.manual_seed(0)
    model = build_model("vit", (40,), 10, **VIT)
    data = ArrayDataset(torch.randn(20, 40), torch.zeros(20, dtype=torch.long))
    stats = attention_statistics(model, data, (10,), 3, batch_size=8)
    with torch.no_grad():
        sig = taps.run_tapped(model.eval(), data.x, [f"blocks.{i}.attn.softmax" for i in range(3)])
    for i in range(3):
        d = attention_distance(sig[f"blocks.{i}.attn.softmax"], (10,))
        assert stats["distance"][i] == pytest.approx(d.tolist(), abs=1e-9)
        assert stats["diversity"][i] == pytest.approx(float(d.std(unbiased=False)), abs=1e-9)
    assert stats["mean_diversity"] == pytest.approx(sum(stats["diversity"]) / 3)


# -- the recipe ---------------------------------------------------------------------------------
def test_hybrid_distiller_loss_is_mim_relations_plus_supervised_features():
    torch.manual_seed(0)
    mim, sup = build_model("vit", (40,), 10, **VIT), build_model("vit", (40,), 10, **VIT)
    student = _masking_vit(mask_ratios=[0.5], select="scorer")
    d = hybrid_distiller(student, mim, sup, relation_blocks=[1])
    assert [t.name for t in d.terms] == ["relation1", "feature"]
    x = torch.randn(4, 40)
    batch = {"x": x, "y": torch.full((4,), -1), "index": torch.arange(4)}
    d.prepare(batch)
    student.mask_step.zero_()
    loss = d.step(batch)["loss"]
    student.mask_step.zero_()  # the same (scorer-chosen, deterministic) masked pass again, by hand
    s_sig = taps.run_tapped(student, x, ["blocks.1.attn.softmax"])
    keep = s_sig["keep"]
    assert keep.shape == (4, 5)
    t_attn = taps.run_tapped(mim, x, ["blocks.1.attn.softmax"])["blocks.1.attn.softmax"]
    t_tok = taps.run_tapped(sup, x, ["norm"])["norm"]
    expected = token_relation_loss(s_sig["blocks.1.attn.softmax"], t_attn, keep) + token_feature_loss(s_sig["tokens"], t_tok, keep)
    torch.testing.assert_close(loss, expected)
    single = single_teacher_terms([1, 2], member=0)
    assert [t.inputs["teacher"] for t in single] == ["teacher.0/blocks.1.attn.softmax", "teacher.0/blocks.2.attn.softmax", "teacher.0/norm"]
    with pytest.raises(ConfigError, match="at least one relation block"):
        hybrid_terms([])
    feats, _ = token_features(sup, ArrayDataset(x, torch.zeros(4, dtype=torch.long)))
    torch.testing.assert_close(feats, sup.eval().tokens(x).mean(1))
    assert RECIPE.config_path().is_file()
