"""DistillNearest / DistillWeighted (#5): task similarity, weights, re-headed sources, the
distiller's loss, FixMatch's pseudo-label term, source domains and fitting on another dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillery import FrozenTeacher, TeacherBank
from distillery.config import parse_config
from distillery.data import ArrayDataset, load_dataset
from distillery.data.miniature.source_domains import source_domain_transform
from distillery.errors import ConfigError, DataError, ShapeError
from distillery.models.rehead import Reheaded, fit_linear_head
from distillery.objectives import ConfidencePseudoLabel, pseudo_label_loss
from distillery.recipes.distill_weighted import (
    RECIPE,
    distill_nearest_distiller,
    distill_weighted_distiller,
    score_sources,
)
from distillery.weighting.similarity import (
    SimilarityWeight,
    knn_task_similarity,
    leep,
    relevance_weights,
)
from distillery.teachers import PrecomputedTeacher


# -- task similarity ----------------------------------------------------------------------------
def _knn_by_loops(x: np.ndarray, y: np.ndarray, k: int) -> float:
    x = x - x.mean(0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    correct = 0
    for i in range(len(y)):
        sims = [(float(x[i] @ x[j]), j) for j in range(len(y)) if j != i]
        sims.sort(key=lambda t: (-t[0], t[1]))
        votes: dict[int, list[float]] = {}
        for s, j in sims[:k]:
            votes.setdefault(int(y[j]), []).append(s)
        best = min(votes, key=lambda c: (-len(votes[c]), -sum(votes[c]), c))
        correct += best == y[i]
    return correct / len(y)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_knn_similarity_matches_an_explicit_leave_one_out_loop(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(30, 5))
    y = rng.integers(0, 3, size=30)
    x[y == 1] += 1.5  # some structure, so the score is neither 0 nor 1
    assert knn_task_similarity(torch.tensor(x), torch.tensor(y), k) == pytest.approx(_knn_by_loops(x, y, k), abs=1e-12)


def test_knn_similarity_separated_classes_score_one_and_bad_inputs_raise():
    x = torch.tensor([[1.0, 0.0], [1.1, 0.0], [0.0, 1.0], [0.0, 1.2]])
    y = torch.tensor([0, 0, 1, 1])
    assert knn_task_similarity(x, y, k=1) == 1.0
    with pytest.raises(ConfigError, match="k must be in"):
        knn_task_similarity(x, y, k=4)
    with pytest.raises(ShapeError, match="labels"):
        knn_task_similarity(x, y[:3])


def test_leep_matches_the_formula_written_with_loops():
    rng = np.random.default_rng(0)
    theta = rng.dirichlet(np.ones(4), size=12)  # source predictions over 4 source labels
    y = np.array([0, 1, 2] * 4)
    n = len(y)
    joint = np.zeros((3, 4))
    for i in range(n):
        joint[y[i]] += theta[i] / n
    expected = 0.0
    for i in range(n):
        expected += math.log(sum(joint[y[i], z] / joint[:, z].sum() * theta[i, z] for z in range(4))) / n
    assert leep(torch.tensor(theta), torch.tensor(y)) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ShapeError, match="probabilities"):
        leep(torch.tensor(theta) * 2, torch.tensor(y))


def test_relevance_weights_and_similarity_weight():
    w = relevance_weights([0.9, 0.5, 0.1, 0.05], chance=0.1)
    assert w.tolist() == pytest.approx([0.8 / 1.2, 0.4 / 1.2, 0.0, 0.0])
    assert relevance_weights([0.05, 0.1], chance=0.1).tolist() == pytest.approx([0.5, 0.5])  # none above chance
    soft = relevance_weights([1.0, 0.0], temperature=0.5)
    assert soft.tolist() == pytest.approx([math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)], rel=1e-6)
    sw = SimilarityWeight([0.3, 0.7, 0.7], chance=0.1)
    assert sw.nearest() == 1  # the first of the tied best
    assert sw(None, [{}, {}, {}]).tolist() == pytest.approx([0.2 / 1.4, 0.6 / 1.4, 0.6 / 1.4])
    with pytest.raises(ConfigError, match="3 scores"):
        sw(None, [{}, {}])
    with pytest.raises(ConfigError, match="finite"):
        relevance_weights([float("nan")])


def test_score_sources_ranks_a_useful_source_above_a_useless_one():
    torch.manual_seed(0)
    y = torch.arange(40) % 4
    x = F.one_hot(y, 4).float() + 0.1 * torch.randn(40, 4)
    labeled = ArrayDataset(x, y)
    useful = nn.Sequential(nn.Identity(), nn.Linear(4, 4))  # features = x itself
    useless = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with torch.no_grad():
        useless[0].weight.zero_()
        useless[0].bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    sw = score_sources([useless, useful], labeled, feature="1:input", k=3)
    assert sw.scores[1] == 1.0 and sw.nearest() == 1 and sw.chance == 0.25
    assert sw.weights[1] > sw.weights[0]


# -- re-headed sources --------------------------------------------------------------------------
def test_linear_head_folds_the_standardisation_into_its_weights():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3)) * np.array([1.0, 10.0, 0.1]) + np.array([5.0, -2.0, 0.0])
    y = np.arange(60) % 3
    x[y == 2, 0] += 3.0
    head = fit_linear_head(torch.tensor(x), torch.tensor(y), 3, C=0.5)
    mean, std = x.mean(0), x.std(0)
    ref = LogisticRegression(C=0.5, max_iter=2000).fit((x - mean) / std, y)
    expected = ref.predict_proba((x - mean) / std)
    got = torch.softmax(head(torch.tensor(x, dtype=torch.float32)).double(), -1).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(DataError, match="missing \\[2\\]"):
        fit_linear_head(torch.tensor(x), torch.tensor(y % 2), 3)


def test_reheaded_model_outputs_the_backbone_feature_and_the_new_head():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    head = nn.Linear(6, 5)
    model = Reheaded(backbone, head, feature="2:input")
    x = torch.randn(3, 4)
    out = model(x)
    f = torch.relu(backbone[0](x))
    torch.testing.assert_close(out["features"], f)
    torch.testing.assert_close(out["logits"], head(f))


# -- the distiller ------------------------------------------------------------------------------
class _Src(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(4, 3)
        self.cls = nn.Linear(3, 2)

    def forward(self, x):
        f = self.body(x)
        return {"logits": self.cls(f), "features": f}


def test_weighted_distiller_loss_is_ce_plus_mixture_kd_plus_weighted_feature_terms():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    teachers = [_Src(1), _Src(2), _Src(3)]
    weights = [0.5, 0.5, 0.0]
    d = distill_weighted_distiller(student, teachers, weights, student_feature="1:input", feature_weight=0.7)
    assert [t.name for t in d.terms] == ["ce", "kd", "feat0", "feat1"]  # zero weight: no feature term
    x, y = torch.randn(6, 4), torch.tensor([0, 1, -1, -1, 1, 0])
    batch = {"x": x, "y": y, "index": torch.arange(6)}
    d.prepare(batch)
    loss = d.step(batch)["loss"]
    with torch.no_grad():
        f_s = student[0](x)
        logits = student(x)
        lab = y >= 0
        ce = F.cross_entropy(logits[lab], y[lab])
        mix = sum(w * torch.softmax(t(x)["logits"], -1) for w, t in zip(weights, teachers))
        kd = (mix * (mix.log() - torch.log_softmax(logits, -1))).sum(-1).mean()
        feats = sum(0.7 * w * (1 - F.cosine_similarity(d.adapters[f"feat{i}"](f_s), teachers[i](x)["features"], dim=1)).mean()
                    for i, w in enumerate(weights[:2]))
    torch.testing.assert_close(loss, ce + kd + feats)
    nearest = distill_nearest_distiller(student, teachers, SimilarityWeight([0.2, 0.9, 0.4]), student_feature="1:input")
    assert len(nearest.teacher.members) == 1 and nearest.teacher.members[0].model is teachers[1]
    with pytest.raises(ConfigError, match="non-negative weights"):
        distill_weighted_distiller(student, teachers, [1.0, -1.0, 0.0])


def test_precomputed_bank_members_are_evaluated_through_their_models():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    train = ArrayDataset(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))
    bank = TeacherBank([PrecomputedTeacher.from_model(a, train), PrecomputedTeacher.from_model(b, train)], weights=[0.25, 0.75])
    held_out = torch.randn(5, 4)
    ev = bank.eval_teacher()
    assert ev is not bank and all(isinstance(m, FrozenTeacher) for m in ev.members)
    got = ev.signals(held_out, {"index": torch.arange(5)}, ["logits"])["logits"]
    with torch.no_grad():
        expected = torch.log(0.25 * torch.softmax(a(held_out), -1) + 0.75 * torch.softmax(b(held_out), -1))
    torch.testing.assert_close(got, expected)
    plain = TeacherBank([FrozenTeacher(a)])
    assert plain.eval_teacher() is plain


# -- FixMatch's pseudo-label term ---------------------------------------------------------------
def test_pseudo_label_loss_matches_the_formula_and_passes_gradcheck():
    torch.manual_seed(0)
    s = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 4, dtype=torch.float64) * 3
    p = torch.softmax(t, -1)
    expected = []
    for i in range(5):
        c, k = p[i].max(), p[i].argmax()
        expected.append(float(c >= 0.7) * -torch.log_softmax(s[i], -1)[k])
    torch.testing.assert_close(pseudo_label_loss(s, t, 0.7, reduction="none"), torch.stack(expected))
    torch.testing.assert_close(ConfidencePseudoLabel(0.7)(s, t), torch.stack(expected).mean())
    assert torch.autograd.gradcheck(lambda z: pseudo_label_loss(z, t, 0.7), (s,))
    assert float(pseudo_label_loss(s.detach(), t, 1.0)) == 0.0  # no prediction is that confident
    with pytest.raises(ShapeError):
        pseudo_label_loss(s, t[:, :3])
    with pytest.raises(ConfigError, match="threshold"):
        ConfidencePseudoLabel(1.5)


# -- source domains and fitting on another dataset ----------------------------------------------
def test_source_domains_transform_and_restrict_classes():
    x = torch.arange(12.0).reshape(2, 6)
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(6, generator=g)
    torch.testing.assert_close(source_domain_transform(x, "permute", 3), x[:, perm])
    torch.testing.assert_close(source_domain_transform(x, "negate"), -x)
    with pytest.raises(ConfigError, match="domain must be one of"):
        source_domain_transform(x, "rotate")
    src = load_dataset("mnist1d_source", domain="negate", classes=[2, 7], samples=200, generator_seed=11)
    assert set(src.train.y.tolist()) == {2, 7} and set(src.test.y.tolist()) == {2, 7}
    plain = load_dataset("mnist1d_source", domain="none", classes=[2, 7], samples=200, generator_seed=11)
    torch.testing.assert_close(src.train.x, -plain.train.x)
    with pytest.raises(ConfigError, match="used by the target data"):
        load_dataset("mnist1d_source", generator_seed=42)


def test_fit_data_trains_a_teacher_on_another_dataset(tmp_path):
    from distillery.runner import fit_teacher

    cfg = parse_config({
        "data": {"dataset": "digits"}, "student": {"name": "mlp"},
        "teacher": {"kind": "frozen", "model": {"name": "mlp"},
                    "fit": {"epochs": 1, "progress": False, "tensorboard": False, "data": {"dataset": "mnist1d_source", "params": {"samples": 100}}}},
        "objectives": [{"kind": "kd"}],
    })
    digits = load_dataset("digits")
    with pytest.raises(ConfigError, match=r"teacher.members.0.fit.data: .* inputs of shape \(40,\)"):
        fit_teacher(nn.Linear(64, 10), cfg.teacher.fit, digits, tmp_path, 0, False, "teacher.members.0")
    target = load_dataset("mnist1d_shifted", shift="none", labels_per_class=2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
    fit_teacher(model, cfg.teacher.fit, target, tmp_path, 0, False, "teacher.members.0")
    import json
    summary = json.loads((tmp_path / "teacher_members_0" / "summary.json").read_text())
    assert summary["steps"] == 1  # 100 source samples, one batch of 128: not the target's 20 labels


def test_recipe_points_to_its_config():
    assert RECIPE.config_path().is_file()
