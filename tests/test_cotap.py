"""CoTAP (#41): continuous-target AP, its sigmoid relaxation, patch-affinity targets, the filter."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ConfigError, ShapeError
from distillery.objectives import CoTAP, ObjectAwareFilter, continuous_average_precision
from distillery.objectives.ranking import cotap_loss, patch_affinity_targets
from distillery.recipes.cotap import dispersion_ratio


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _cap_by_sorting(scores, targets):
    """Exact CAP of one query by sorting (no ties): precision at a rank = mean target of the ranks above."""
    order = sorted(range(len(scores)), key=lambda j: -scores[j])
    ranked = [targets[j] for j in order]
    num, running = 0.0, 0.0
    for r, y in enumerate(ranked, start=1):
        running += y
        num += y * running / r
    return num / sum(targets)


def _smooth_cap_loops(scores, targets, tau):
    """The sigmoid-relaxed CAP written out with loops."""
    m = len(scores)
    num = 0.0
    for j in range(m):
        above_t, above = targets[j], 1.0
        for k in range(m):
            if k != j:
                h = 1 / (1 + math.exp(-(scores[k] - scores[j]) / tau))
                above_t += targets[k] * h
                above += h
        num += targets[j] * above_t / above
    return num / sum(targets)


def test_exact_cap_equals_sorted_computation_and_sklearn_ap():
    from sklearn.metrics import average_precision_score

    s = torch.randn(5, 9, generator=_g(0), dtype=torch.float64)
    y = torch.rand(5, 9, generator=_g(1), dtype=torch.float64)
    got = continuous_average_precision(s, y)
    for q in range(5):
        assert float(got[q]) == pytest.approx(_cap_by_sorting(s[q].tolist(), y[q].tolist()), rel=1e-12)
    binary = (y > 0.5).double()
    binary[:, 0] = 1.0
    ap = continuous_average_precision(s, binary)
    for q in range(5):
        assert float(ap[q]) == pytest.approx(average_precision_score(binary[q].numpy(), s[q].numpy()), rel=1e-12)


def test_relaxed_cap_matches_loops_and_tends_to_exact():
    s = torch.randn(3, 7, generator=_g(2), dtype=torch.float64)
    y = torch.rand(3, 7, generator=_g(3), dtype=torch.float64)
    relaxed = continuous_average_precision(s, y, temperature=0.3)
    for q in range(3):
        assert float(relaxed[q]) == pytest.approx(_smooth_cap_loops(s[q].tolist(), y[q].tolist(), 0.3), rel=1e-12)
    torch.testing.assert_close(continuous_average_precision(s, y, temperature=1e-5), continuous_average_precision(s, y))


def test_ideal_ranking_maximises_cap_and_masks_drop_candidates():
    y = torch.tensor([[1.0, 0.5, 0.2, 0.0]], dtype=torch.float64)
    best = continuous_average_precision(y.clone(), y)
    worst = continuous_average_precision(-y, y)
    # 1 ranked first (prec 1), 0.5 second (1.5/2), 0.2 third (1.7/3), weighted by the targets
    assert float(best) == pytest.approx((1.0 + 0.5 * 0.75 + 0.2 * 1.7 / 3) / 1.7)
    assert float(worst) < float(best)
    mask = torch.tensor([[True, True, False, True]])
    masked = continuous_average_precision(y.clone(), y, mask=mask)
    assert float(masked) == pytest.approx(_cap_by_sorting([1.0, 0.5, 0.0], [1.0, 0.5, 0.0]))


def test_cap_gradcheck_float64():
    s = torch.randn(2, 6, generator=_g(4), dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 6, generator=_g(5), dtype=torch.float64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 2] = False
    assert torch.autograd.gradcheck(lambda x: continuous_average_precision(x, y, 0.5, mask), (s,))


def test_affinity_targets_formula():
    q = torch.randn(1, 2, 3, generator=_g(6), dtype=torch.float64)
    k = torch.randn(1, 4, 3, generator=_g(7), dtype=torch.float64)
    mask = torch.tensor([[[True, False, True, True], [True, True, True, True]]])
    y = patch_affinity_targets(q, k, 0.2, mask)
    for i in range(2):
        cos = [float(q[0, i] @ k[0, j] / (q[0, i].norm() * k[0, j].norm())) for j in range(4)]
        top = max(c for c, m in zip(cos, mask[0, i].tolist()) if m)
        for j in range(4):
            want = math.exp((cos[j] - top) / 0.2) if mask[0, i, j] else 0.0
            assert float(y[0, i, j]) == pytest.approx(want, rel=1e-12)


def test_cotap_loss_by_explicit_pairs():
    s = torch.randn(2, 3, 4, generator=_g(8), dtype=torch.float64)
    t = torch.randn(2, 3, 5, generator=_g(9), dtype=torch.float64)
    tau, tau_t = 0.2, 0.1
    per_image = []
    for b in range(2):
        other = (b + 1) % 2
        cand_s = [s[b, j] for j in range(3)] + [s[other, j] for j in range(3)]
        cand_t = [t[b, j] for j in range(3)] + [t[other, j] for j in range(3)]
        caps = []
        for i in range(3):
            keep = [j for j in range(6) if j != i]   # the query itself is not a candidate
            cs = [float(s[b, i] @ cand_s[j] / (s[b, i].norm() * cand_s[j].norm())) for j in keep]
            ct = [float(t[b, i] @ cand_t[j] / (t[b, i].norm() * cand_t[j].norm())) for j in keep]
            ys = [math.exp((c - max(ct)) / tau_t) for c in ct]
            caps.append(_smooth_cap_loops(cs, ys, tau))
        per_image.append(1 - sum(caps) / 3)
    got = cotap_loss(s, t, tau, tau_t, reduction="none")
    torch.testing.assert_close(got, torch.tensor(per_image, dtype=torch.float64))


def test_cotap_objective_gradcheck_and_filter_formula():
    torch.manual_seed(0)
    obj = CoTAP(dim=4, prototypes=3, filter_dim=5, temperature=0.3).double()
    s = torch.randn(2, 1 + 4, 4, generator=_g(10), dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 1 + 4, 6, generator=_g(11), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: obj(x, t), (s,))
    f: ObjectAwareFilter = obj.filter
    z = s[0, 1:].detach()
    a = torch.softmax(f.query(z) @ f.prototypes.T / math.sqrt(5), dim=-1)
    torch.testing.assert_close(f(z), a @ f.prototypes)
    torch.testing.assert_close(f.attention(z).sum(-1), torch.ones(4, dtype=torch.float64))


def test_cotap_checks():
    with pytest.raises(ShapeError, match=r"\[2, 5, 3\]"):
        CoTAP(dim=4, prototypes=0)(torch.randn(2, 5, 3), torch.randn(2, 5, 3))
    with pytest.raises(ShapeError, match="same B and N"):
        cotap_loss(torch.randn(2, 4, 3), torch.randn(2, 5, 3))
    with pytest.raises(ConfigError, match="temperature"):
        CoTAP(dim=4, temperature=0.0)


def test_dispersion_ratio_by_hand():
    # class 0 at (1, 0) and (0, 1), class 1 twice at (-1, 0); label 9 ignored
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 1, 1, 9])
    within = 2 * 0.5   # each class-0 point is at distance sqrt(0.5) from (0.5, 0.5)
    mean = torch.tensor([-0.25, 0.25])
    total = float(sum((f[i] - mean).pow(2).sum() for i in range(4)))
    assert dispersion_ratio(f, y, ignore=9) == pytest.approx(within / total)


def _class_structured(g, b=8, n=16, classes=4, d=16, proto=None):
    """Patches whose inputs only hint at their class (prototype + strong noise); the teacher's
    features are the class one-hot, so its similarities say which patches share a class."""
    y = torch.randint(0, classes, (b, n), generator=g)
    return proto[y] + 1.5 * torch.randn(b, n, d, generator=g), y


@pytest.mark.parametrize("prototypes", [0, 8])
def test_cotap_alone_concentrates_features_of_a_class_structured_teacher(prototypes):
    # mechanism: the teacher knows each patch's class, the student's inputs carry it only noisily;
    # ranking the student's similarities like the teacher's (CoTAP alone, no feature term) must
    # concentrate the student's features by class, with and without the object-aware filter
    torch.manual_seed(0)
    proto = torch.randn(4, 16, generator=_g(20))
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32))
    obj = CoTAP(dim=32, prototypes=prototypes, filter_dim=16, temperature=0.05, target_temperature=0.1, skip_tokens=0)
    opt = torch.optim.Adam([*net.parameters(), *obj.parameters()], lr=1e-2)
    xe, ye = _class_structured(_g(21), b=16, proto=proto)
    before = dispersion_ratio(net(xe).reshape(-1, 32).detach(), ye.reshape(-1))
    g = _g(22)
    for _ in range(120):
        x, y = _class_structured(g, proto=proto)
        loss = obj(net(x), torch.nn.functional.one_hot(y, 4).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dispersion_ratio(net(xe).reshape(-1, 32).detach(), ye.reshape(-1))
    assert before > 0.6 and after < 0.5 * before


def test_reproduction_arms_and_diagnosis_on_a_tiny_size(tmp_path, monkeypatch):
    # the factored arm training (used by run and diagnose) and the diagnosis, on a tiny size
    from distillery.reproduce import Context
    from distillery.reproduce import cotap as rep
    from distillery.reproduce.diagnosis import derive

    tiny = {"teacher_epochs": 1, "teacher_canvases": 32, "epochs": 1, "n_train": 32, "diagnose_base": 16,
            "probe_train": 8, "probe_test": 8}
    monkeypatch.setattr(rep, "SETTINGS", lambda quick: tiny)
    monkeypatch.setattr(rep, "SCALE", (1, 2))
    monkeypatch.setattr(rep, "TEACHER_OFFSET", 64)
    monkeypatch.setattr(rep, "N_TEST", 16)
    ctx = Context(seeds=[0, 1], quick=True, out=tmp_path, log=lambda _: None)
    d = rep.diagnose(ctx)
    assert [p.size for p in d.points] == [16.0, 32.0]
    for p in d.points:
        assert len(p.arms["teacher"]) == 1 and all(len(p.arms[a]) == 2 for a in rep.ARMS)
        assert all(0.0 <= v <= 1.0 for a in rep.ARMS for v in p.arms[a] + p.arms[f"{a}:dispersion"])
    assert derive(d)["comparisons"][0]["a"] == "cotap"
    # the untrained arm is the initialisation of its seed: the same at every size
    assert d.points[0].arms["alone:dispersion"] == d.points[1].arms["alone:dispersion"]
