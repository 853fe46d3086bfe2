"""Feature, attention and relational objectives against loop-based references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from distillery.errors import ShapeError
from distillery.objectives import (
    AttentionTransfer,
    FeatureCosine,
    FeatureMSE,
    FeatureSmoothL1,
    RKDAngle,
    RKDDistance,
    SimilarityKL,
    attention_transfer_loss,
    feature_cosine_loss,
    feature_mse_loss,
    feature_smooth_l1_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_kl_loss,
)




def randn(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def assert_matches(actual: torch.Tensor, expected, dtype: torch.dtype) -> None:
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(
        actual.detach().double(), torch.as_tensor(expected, dtype=torch.float64), rtol=tol, atol=tol
    )


def huber(x: float, y: float, delta: float = 1.0) -> float:
    d = abs(x - y)
    return 0.5 * d * d / delta if d < delta else d - 0.5 * delta


# ---------------------------------------------------------------- feature matching


FEATURE_SHAPES = [(4, 6), (3, 5, 2, 3), (2, 4, 7)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", FEATURE_SHAPES)
def test_mse_and_smooth_l1_values(shape, dtype):
    s, t = randn(*shape, dtype=dtype, seed=1), randn(*shape, dtype=dtype, seed=2) * 1.5
    sn, tn = s.double().numpy(), t.double().numpy()
    B = shape[0]
    exp_mse = np.array([np.mean((sn[b] - tn[b]) ** 2) for b in range(B)])
    assert_matches(feature_mse_loss(s, t, "none"), exp_mse, dtype)
    assert_matches(FeatureMSE()(s, t), exp_mse.mean(), dtype)
    for beta in (1.0, 0.5, 0.0):
        exp = np.array(
            [np.mean([huber(a, c, beta) if beta > 0 else abs(a - c)
                      for a, c in zip(sn[b].ravel(), tn[b].ravel(), strict=True)])
             for b in range(B)]
        )
        assert_matches(feature_smooth_l1_loss(s, t, beta, "none"), exp, dtype)
        assert_matches(FeatureSmoothL1(beta)(s, t), exp.mean(), dtype)


def np_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cosine_values(dtype):
    # [B, D]: one cosine per sample
    s, t = randn(5, 4, dtype=dtype, seed=3), randn(5, 4, dtype=dtype, seed=4)
    sn, tn = s.double().numpy(), t.double().numpy()
    exp = np.array([1 - np_cos(sn[b], tn[b]) for b in range(5)])
    assert_matches(FeatureCosine(reduction="none")(s, t), exp, dtype)
    # [B, C, H, W] with the default dim=1: per position over channels, averaged per sample
    s, t = randn(2, 3, 4, 5, dtype=dtype, seed=5), randn(2, 3, 4, 5, dtype=dtype, seed=6)
    sn, tn = s.double().numpy(), t.double().numpy()
    exp = np.array(
        [np.mean([1 - np_cos(sn[b, :, h, w], tn[b, :, h, w]) for h in range(4) for w in range(5)])
         for b in range(2)]
    )
    assert_matches(feature_cosine_loss(s, t, reduction="none"), exp, dtype)
    assert_matches(FeatureCosine()(s, t), exp.mean(), dtype)
    # [B, L, D] with dim=-1: per token
    s, t = randn(2, 3, 4, dtype=dtype, seed=7), randn(2, 3, 4, dtype=dtype, seed=8)
    sn, tn = s.double().numpy(), t.double().numpy()
    exp = np.array([np.mean([1 - np_cos(sn[b, i], tn[b, i]) for i in range(3)]) for b in range(2)])
    assert_matches(FeatureCosine(dim=-1, reduction="none")(s, t), exp, dtype)


def test_feature_gradcheck():
    s = randn(3, 4, 2, seed=9).requires_grad_()
    t = randn(3, 4, 2, seed=10).requires_grad_()
    for fn in (
        feature_mse_loss,
        feature_cosine_loss,
        lambda a, b: feature_cosine_loss(a, b, dim=-1),
        lambda a, b: feature_smooth_l1_loss(a, b, 1.0),
        lambda a, b: feature_smooth_l1_loss(a, b * 0.2, 0.5),
    ):
        assert torch.autograd.gradcheck(fn, (s, t))


def test_features_zero_when_equal_and_shape_errors():
    x = randn(3, 4, 5, 5, seed=11)
    for obj in (FeatureMSE(), FeatureCosine(), FeatureSmoothL1()):
        assert obj(x, x.clone()).abs().item() < 1e-12
        with pytest.raises(ShapeError, match=r"\[3, 4, 5, 5\].*\[3, 8, 5, 5\].*adapter"):
            obj(x, randn(3, 8, 5, 5))
    assert FeatureCosine()(x, 2.5 * x).abs().item() < 1e-12  # scale invariant


# ---------------------------------------------------------------- attention transfer


def ref_at(s: np.ndarray, t: np.ndarray, p: float) -> np.ndarray:
    """Attention maps with a channel *sum* (normalisation makes sum vs mean irrelevant)."""
    out = []
    for b in range(s.shape[0]):
        qs = (np.abs(s[b]) ** p).sum(0).ravel()
        qt = (np.abs(t[b]) ** p).sum(0).ravel()
        qs, qt = qs / math.sqrt((qs**2).sum()), qt / math.sqrt((qt**2).sum())
        out.append(np.mean([(a - c) ** 2 for a, c in zip(qs, qt, strict=True)]))
    return np.array(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
@pytest.mark.parametrize("shapes", [((3, 4, 5, 6), (3, 7, 5, 6)), ((2, 3, 9), (2, 5, 9))])
def test_attention_transfer_values(dtype, p, shapes):
    s, t = randn(*shapes[0], dtype=dtype, seed=12), randn(*shapes[1], dtype=dtype, seed=13)
    exp = ref_at(s.double().numpy(), t.double().numpy(), p)
    assert_matches(attention_transfer_loss(s, t, p, "none"), exp, dtype)
    assert_matches(AttentionTransfer(p)(s, t), exp.mean(), dtype)


def test_attention_transfer_gradcheck_and_errors():
    s = randn(2, 3, 3, 4, seed=14).requires_grad_()
    t = randn(2, 5, 3, 4, seed=15).requires_grad_()
    assert torch.autograd.gradcheck(attention_transfer_loss, (s, t))
    assert torch.autograd.gradcheck(lambda a, b: attention_transfer_loss(a, b, 3.0), (s, t))
    x = s.detach()
    assert AttentionTransfer()(x, x.clone()).abs().item() < 1e-12
    with pytest.raises(ShapeError, match=r"\[2, 3, 3, 4\].*\[2, 5, 4, 4\]"):
        AttentionTransfer()(x, randn(2, 5, 4, 4))
    with pytest.raises(ShapeError, match=r"\[2, 3\]"):
        AttentionTransfer()(randn(2, 3), randn(2, 3))


# ---------------------------------------------------------------- relational


def ref_rkd_distance(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    B = s.shape[0]
    pairs = [(i, j) for i in range(B) for j in range(B) if i != j]
    ds = {(i, j): np.linalg.norm(s[i] - s[j]) for i, j in pairs}
    dt = {(i, j): np.linalg.norm(t[i] - t[j]) for i, j in pairs}
    mus, mut = np.mean(list(ds.values())), np.mean(list(dt.values()))
    return np.array(
        [np.mean([huber(ds[i, j] / mus, dt[i, j] / mut) for j in range(B) if j != i])
         for i in range(B)]
    )


def ref_rkd_angle(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    B = s.shape[0]

    def cos(x, v, a, b):
        e1 = (x[a] - x[v]) / np.linalg.norm(x[a] - x[v])
        e2 = (x[b] - x[v]) / np.linalg.norm(x[b] - x[v])
        return float(e1 @ e2)

    out = []
    for v in range(B):
        vals = [huber(cos(s, v, a, b), cos(t, v, a, b))
                for a, b in itertools.permutations([k for k in range(B) if k != v], 2)]
        out.append(np.mean(vals))
    return np.array(out)


def ref_gram_kl(s: np.ndarray, t: np.ndarray, tau: float) -> np.ndarray:
    B = s.shape[0]
    out = []
    for i in range(B):
        others = [j for j in range(B) if j != i]
        ls = np.array([np_cos(s[i], s[j]) / tau for j in others])
        lt = np.array([np_cos(t[i], t[j]) / tau for j in others])
        ps, pt = np.exp(ls) / np.exp(ls).sum(), np.exp(lt) / np.exp(lt).sum()
        out.append(sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True)))
    return np.array(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,Ds,Dt", [(5, 3, 7), (8, 6, 6), (3, 2, 4)])
def test_relational_values(dtype, B, Ds, Dt):
    s, t = randn(B, Ds, dtype=dtype, seed=16), randn(B, Dt, dtype=dtype, seed=17) * 3 + 1
    sn, tn = s.double().numpy(), t.double().numpy()
    exp = ref_rkd_distance(sn, tn)
    assert_matches(rkd_distance_loss(s, t, "none", average_over="distinct"), exp, dtype)
    assert_matches(RKDDistance(average_over="distinct")(s, t), exp.mean(), dtype)
    exp = ref_rkd_angle(sn, tn)
    assert_matches(rkd_angle_loss(s, t, "none", average_over="distinct"), exp, dtype)
    assert_matches(RKDAngle(average_over="distinct")(s, t), exp.mean(), dtype)
    for tau in (1.0, 0.2):
        exp = ref_gram_kl(sn, tn, tau)
        assert_matches(similarity_kl_loss(s, t, tau, "none"), exp, dtype)
        assert_matches(SimilarityKL(tau)(s, t), exp.mean(), dtype)


def authors_rkd_distance(s: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    """RKD distance loss as the authors' code computes it (lenscloth/RKD, metric/loss.py,
    RkdDistance; torchdistill likewise), by loops: the B x B distance matrix with a zero
    diagonal, divided by the mean of its positive entries, then the smooth-L1 loss averaged
    over all B^2 entries. Returns the loss and the per-anchor row means."""
    B = s.shape[0]

    def normalized_distances(x):
        d = np.array([[np.linalg.norm(x[i] - x[j]) if i != j else 0.0 for j in range(B)]
                      for i in range(B)])
        return d / d[d > 0].mean()

    ds, dt = normalized_distances(s), normalized_distances(t)
    h = np.array([[huber(ds[i, j], dt[i, j]) for j in range(B)] for i in range(B)])
    return float(h.sum() / B**2), h.mean(1)


def authors_rkd_angle(s: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    """RKD angle loss as the authors' code computes it (RKdAngle): for every vertex i the
    unit vectors u_ij = (x_j - x_i) / |x_j - x_i| (the zero vector for j = i, as
    F.normalize gives), the B x B x B cosines <u_ij, u_ik>, and the smooth-L1 loss averaged
    over all B^3 entries. Returns the loss and the per-vertex means over (j, k)."""
    B = s.shape[0]

    def cosines(x):
        u = np.zeros((B, B, x.shape[1]))
        for i in range(B):
            for j in range(B):
                if i != j:
                    u[i, j] = (x[j] - x[i]) / np.linalg.norm(x[j] - x[i])
        return np.einsum("ijc,ikc->ijk", u, u)

    cs, ct = cosines(s), cosines(t)
    h = np.array([[[huber(cs[i, j, k], ct[i, j, k]) for k in range(B)] for j in range(B)]
                  for i in range(B)])
    return float(h.sum() / B**3), h.reshape(B, -1).mean(1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,Ds,Dt", [(5, 3, 7), (8, 6, 6), (3, 2, 4), (16, 5, 9)])
def test_rkd_default_follows_the_authors_code(dtype, B, Ds, Dt):
    """Default average_over="all": the mean over all B^2 pairs / B^3 triplets (the authors'
    code); "distinct" is B/(B-1) resp. B^2/((B-1)(B-2)) times that."""
    s, t = randn(B, Ds, dtype=dtype, seed=30), randn(B, Dt, dtype=dtype, seed=31) * 3 + 1
    sn, tn = s.double().numpy(), t.double().numpy()
    loss, per_anchor = authors_rkd_distance(sn, tn)
    assert_matches(RKDDistance()(s, t), loss, dtype)
    assert_matches(RKDDistance(average_over="all")(s, t), loss, dtype)
    assert_matches(rkd_distance_loss(s, t), loss, dtype)
    assert_matches(rkd_distance_loss(s, t, "none"), per_anchor, dtype)
    assert_matches(RKDDistance(average_over="distinct")(s, t), loss * B / (B - 1), dtype)
    loss, per_vertex = authors_rkd_angle(sn, tn)
    assert_matches(RKDAngle()(s, t), loss, dtype)
    assert_matches(RKDAngle(average_over="all")(s, t), loss, dtype)
    assert_matches(rkd_angle_loss(s, t), loss, dtype)
    assert_matches(rkd_angle_loss(s, t, "none"), per_vertex, dtype)
    factor = B * B / ((B - 1) * (B - 2))
    assert_matches(RKDAngle(average_over="distinct")(s, t), loss * factor, dtype)


def test_rkd_average_over_is_checked_and_shown():
    from distillery.errors import ConfigError

    for cls, fn in ((RKDDistance, rkd_distance_loss), (RKDAngle, rkd_angle_loss)):
        with pytest.raises(ConfigError, match="average_over"):
            cls(average_over="pairs")
        with pytest.raises(ConfigError, match="average_over"):
            fn(randn(4, 3), randn(4, 3), average_over="mean")
        assert "average_over='all'" in repr(cls())
        assert "average_over='distinct'" in repr(cls(average_over="distinct"))
    s = randn(5, 3, seed=32).requires_grad_()
    t = randn(5, 4, seed=33).requires_grad_()
    for fn in (rkd_distance_loss, rkd_angle_loss):
        assert torch.autograd.gradcheck(lambda a, b, fn=fn: fn(a, b, average_over="distinct"), (s, t))


def test_relational_flattens_feature_maps():
    s, t = randn(4, 2, 3, 3, seed=18), randn(4, 5, seed=19)
    for fn in (rkd_distance_loss, rkd_angle_loss, similarity_kl_loss):
        torch.testing.assert_close(fn(s, t), fn(s.reshape(4, -1), t))


def test_relational_gradcheck():
    s = randn(5, 3, seed=20).requires_grad_()
    t = randn(5, 4, seed=21).requires_grad_()
    for fn in (rkd_distance_loss, rkd_angle_loss, lambda a, b: similarity_kl_loss(a, b, 0.5)):
        assert torch.autograd.gradcheck(fn, (s, t))


def test_relational_invariances_and_edge_cases():
    x = randn(6, 4, seed=22)
    rot, _ = torch.linalg.qr(randn(4, 4, seed=23))
    y = 2.0 * x @ rot + 5.0  # a similarity transform keeps every relation
    for obj in (RKDDistance(), RKDAngle()):
        assert obj(x, y).abs().item() < 1e-10
    assert SimilarityKL()(x, 3.0 * x @ rot).abs().item() < 1e-10
    # duplicated samples (zero distances) stay finite, also in the gradient
    d = torch.cat([x[:3], x[:3]]).requires_grad_()
    for fn in (rkd_distance_loss, rkd_angle_loss, similarity_kl_loss):
        out = fn(d, randn(6, 5, seed=24))
        (g,) = torch.autograd.grad(out, d)
        assert torch.isfinite(out) and torch.isfinite(g).all()
    # too small batches give a zero attached to the graph
    for fn, n in ((rkd_distance_loss, 1), (rkd_angle_loss, 2), (similarity_kl_loss, 1)):
        e = randn(n, 3).requires_grad_()
        out = fn(e, randn(n, 4))
        assert out.item() == 0.0 and out.requires_grad
        assert fn(e, randn(n, 4), reduction="none").shape == (n,)
    with pytest.raises(ShapeError, match=r"\[4, 3\].*\[5, 3\]"):
        RKDDistance()(randn(4, 3), randn(5, 3))
    with pytest.raises(ShapeError, match=r"\[4, 3\].*\[5, 2\]"):
        SimilarityKL()(randn(4, 3), randn(5, 2))
