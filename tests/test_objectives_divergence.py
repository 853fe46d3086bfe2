"""Divergence and classification objectives against independent (numpy, loop-based) formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillery.errors import ShapeError
from distillery.objectives import (
    DKD,
    CrossEntropy,
    GeneralizedJSD,
    ReverseKL,
    SoftTargetKD,
    TotalVariation,
    cross_entropy_loss,
    dkd_loss,
    jsd_loss,
    kd_loss,
    reverse_kl_loss,
    tvd_loss,
)

SHAPES = [(5, 7), (3, 4, 6), (2, 1, 3, 2)]


# ---------------------------------------------------------------- independent references


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """sum_k p_k log(p_k / q_k), with 0 log 0 = 0, by an explicit loop."""
    total = 0.0
    for pk, qk in zip(p, q, strict=True):
        if pk > 0:
            total += pk * math.log(pk / qk)
    return total


def per_sample(fn, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Apply fn(row_s, row_t) to every [K] row of [B, ..., K] arrays; mean per sample."""
    out = []
    for b in range(s.shape[0]):
        vals = [fn(s[b][idx], t[b][idx]) for idx in np.ndindex(*s.shape[1:-1])]
        out.append(np.mean(vals))
    return np.array(out)


def ref_kd(s, t, T):
    return per_sample(lambda a, b: T * T * np_kl(np_softmax(b / T), np_softmax(a / T)), s, t)


def ref_rkl(s, t, T):
    return per_sample(lambda a, b: T * T * np_kl(np_softmax(a / T), np_softmax(b / T)), s, t)


def ref_jsd(s, t, beta, T):
    def one(a, b):
        q, p = np_softmax(a / T), np_softmax(b / T)
        m = beta * p + (1 - beta) * q
        return T * T * (beta * np_kl(p, m) + (1 - beta) * np_kl(q, m))

    return per_sample(one, s, t)


def ref_tvd(s, t, T):
    return per_sample(lambda a, b: 0.5 * np.abs(np_softmax(b / T) - np_softmax(a / T)).sum(), s, t)


def ref_dkd(s, t, y, alpha, beta, T):
    """Binary and non-target distributions built by hand, sample by sample."""
    out = []
    for i in range(s.shape[0]):
        if y[i] == -1:
            out.append(0.0)
            continue
        ps, pt = np_softmax(s[i] / T), np_softmax(t[i] / T)
        others = [k for k in range(s.shape[1]) if k != y[i]]
        bs = np.array([ps[y[i]], sum(ps[k] for k in others)])
        bt = np.array([pt[y[i]], sum(pt[k] for k in others)])
        ns = np.array([ps[k] for k in others]) / bs[1]
        nt = np.array([pt[k] for k in others]) / bt[1]
        out.append(T * T * (alpha * np_kl(bt, bs) + beta * np_kl(nt, ns)))
    return np.array(out)


def ref_ce(s, y, eps):
    vals = []
    for i in range(s.shape[0]):
        logp = np.log(np_softmax(s[i]))
        vals.append((1 - eps) * -logp[y[i]] + eps * np.mean(-logp))
    return np.array(vals)




def randn(*shape, dtype=torch.float64, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def assert_matches(actual: torch.Tensor, expected: np.ndarray, dtype: torch.dtype) -> None:
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(
        actual.detach().double(), torch.as_tensor(expected, dtype=torch.float64), rtol=tol, atol=tol
    )


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_kd_reverse_tvd_values(shape, dtype, T):
    s, t = randn(*shape, dtype=dtype, seed=1), randn(*shape, dtype=dtype, seed=2)
    sn, tn = s.double().numpy(), t.double().numpy()
    assert_matches(kd_loss(s, t, T, reduction="none"), ref_kd(sn, tn, T), dtype)
    assert_matches(reverse_kl_loss(s, t, T, reduction="none"), ref_rkl(sn, tn, T), dtype)
    assert_matches(tvd_loss(s, t, T, reduction="none"), ref_tvd(sn, tn, T), dtype)
    assert_matches(SoftTargetKD(T)(s, t), ref_kd(sn, tn, T).mean(), dtype)
    assert_matches(ReverseKL(T)(s, t), ref_rkl(sn, tn, T).mean(), dtype)
    assert_matches(TotalVariation(T)(s, t), ref_tvd(sn, tn, T).mean(), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_values(shape, dtype, beta):
    s, t = randn(*shape, dtype=dtype, seed=3), randn(*shape, dtype=dtype, seed=4)
    expected = ref_jsd(s.double().numpy(), t.double().numpy(), beta, 2.0)
    assert_matches(jsd_loss(s, t, beta, 2.0, reduction="none"), expected, dtype)
    assert_matches(GeneralizedJSD(beta, 2.0)(s, t), expected.mean(), dtype)


def test_jsd_endpoints_follow_gkd_convention():
    s, t = randn(6, 5, seed=5), randn(6, 5, seed=6)
    sn, tn = s.numpy(), t.numpy()
    # beta = 0 -> forward KL(p_t || p_s), beta = 1 -> reverse KL(p_s || p_t), both times T^2
    assert_matches(jsd_loss(s, t, 0.0, 3.0, reduction="none"), ref_kd(sn, tn, 3.0), torch.float64)
    assert_matches(jsd_loss(s, t, 1.0, 3.0, reduction="none"), ref_rkl(sn, tn, 3.0), torch.float64)
    # ... which are the limits of JSD(beta)/beta and JSD(beta)/(1-beta)
    eps = 1e-6
    near0 = jsd_loss(s, t, eps, 3.0, reduction="none") / eps
    near1 = jsd_loss(s, t, 1 - eps, 3.0, reduction="none") / eps
    torch.testing.assert_close(near0, jsd_loss(s, t, 0.0, 3.0, reduction="none"), rtol=1e-4, atol=0)
    torch.testing.assert_close(near1, jsd_loss(s, t, 1.0, 3.0, reduction="none"), rtol=1e-4, atol=0)
    # the symmetric JSD is symmetric and bounded by T^2 log 2
    sym = jsd_loss(s, t, 0.5, 1.0, reduction="none")
    torch.testing.assert_close(sym, jsd_loss(t, s, 0.5, 1.0, reduction="none"))
    assert bool((sym <= math.log(2)).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,alpha,beta", [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0)])
def test_dkd_values(dtype, T, alpha, beta):
    B, K = 7, 6
    s, t = randn(B, K, dtype=dtype, seed=7), randn(B, K, dtype=dtype, seed=8)
    y = torch.tensor([0, 5, -1, 2, 2, -1, 4])
    expected = ref_dkd(s.double().numpy(), t.double().numpy(), y.numpy(), alpha, beta, T)
    assert_matches(dkd_loss(s, t, y, alpha, beta, T, reduction="none"), expected, dtype)
    # "mean" averages over the 5 labeled samples only
    labeled = y.numpy() != -1
    assert_matches(DKD(alpha, beta, T)(s, t, target=y), expected[labeled].mean(), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_ce_values(dtype, eps):
    s = randn(6, 5, dtype=dtype, seed=9)
    y = torch.tensor([1, -1, 4, 0, -1, 3])
    valid = (y != -1).numpy()
    full = ref_ce(s.double().numpy(), np.where(valid, y.numpy(), 0), eps)
    expected_none = np.where(valid, full, 0.0)
    assert_matches(cross_entropy_loss(s, y, eps, reduction="none"), expected_none, dtype)
    assert_matches(CrossEntropy(eps)(s, y), full[valid].mean(), dtype)


def test_ce_and_dkd_sequence_inputs_average_labeled_positions():
    s, t = randn(2, 3, 4, seed=10), randn(2, 3, 4, seed=11)
    y = torch.tensor([[1, -1, 3], [-1, -1, 0]])
    per_pos = ref_ce(s.reshape(6, 4).numpy(), y.reshape(6).clamp(min=0).numpy(), 0.0).reshape(2, 3)
    mask = (y != -1).numpy()
    expected = np.array([per_pos[0][mask[0]].mean(), per_pos[1][mask[1]].mean()])
    assert_matches(cross_entropy_loss(s, y, reduction="none"), expected, torch.float64)
    assert_matches(cross_entropy_loss(s, y), per_pos[mask].mean(), torch.float64)
    dk = ref_dkd(s.reshape(6, 4).numpy(), t.reshape(6, 4).numpy(), y.reshape(6).numpy(), 1, 8, 4)
    dk = dk.reshape(2, 3)
    expected = np.array([dk[0][mask[0]].mean(), dk[1][mask[1]].mean()])
    assert_matches(dkd_loss(s, t, y, reduction="none"), expected, torch.float64)
    assert_matches(dkd_loss(s, t, y), dk[mask].mean(), torch.float64)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, t: kd_loss(s, t, 2.0),
        lambda s, t: reverse_kl_loss(s, t, 1.5),
        lambda s, t: jsd_loss(s, t, 0.3, 2.0),
        lambda s, t: jsd_loss(s, t, 0.0, 2.0),
        lambda s, t: jsd_loss(s, t, 1.0, 2.0),
        lambda s, t: tvd_loss(s, t, 1.0),
        lambda s, t: dkd_loss(s, t, torch.tensor([0, 3, -1, 1]), 1.0, 8.0, 4.0),
    ],
    ids=["kd", "reverse_kl", "jsd", "jsd0", "jsd1", "tvd", "dkd"],
)
def test_divergence_gradcheck(fn):
    s = randn(4, 5, seed=12).requires_grad_()
    t = randn(4, 5, seed=13).requires_grad_()
    assert torch.autograd.gradcheck(fn, (s, t))


def test_gradcheck_teacher_probs_and_ce():
    s = randn(4, 5, seed=14).requires_grad_()
    p = torch.softmax(randn(4, 5, seed=15), -1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: kd_loss(a, None, 2.0, teacher_probs=b), (s, p))
    assert torch.autograd.gradcheck(lambda a, b: jsd_loss(a, None, 0.4, teacher_probs=b), (s, p))
    y = torch.tensor([1, -1, 0, 4])
    assert torch.autograd.gradcheck(lambda a: cross_entropy_loss(a, y, 0.1), (s,))


# ---------------------------------------------------------------- special cases


@pytest.mark.parametrize("fn", [kd_loss, reverse_kl_loss])
def test_temperature_squared_identity(fn):
    # T^2 * KL(softmax(t/T) || softmax(s/T)) == T^2 * [the T = 1 loss of s/T, t/T]
    s, t = randn(5, 6, seed=16), randn(5, 6, seed=17)
    for T in (0.5, 2.0, 8.0):
        lhs = fn(s, t, T, reduction="none")
        rhs = T * T * fn(s / T, t / T, 1.0, reduction="none")
        torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    for T in (0.5, 4.0):
        lhs = jsd_loss(s, t, 0.3, T, reduction="none")
        torch.testing.assert_close(lhs, T * T * jsd_loss(s / T, t / T, 0.3, 1.0, reduction="none"))
        y = torch.tensor([0, 1, 2, 3, 4])
        lhs = dkd_loss(s, t, y, 1.0, 8.0, T, reduction="none")
        rhs = T * T * dkd_loss(s / T, t / T, y, 1.0, 8.0, 1.0, reduction="none")
        torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize(
    "obj", [SoftTargetKD(), ReverseKL(2.0), GeneralizedJSD(0.5), GeneralizedJSD(0.0),
            GeneralizedJSD(1.0), TotalVariation()],
    ids=["kd", "reverse_kl", "jsd", "jsd0", "jsd1", "tvd"],
)
def test_zero_when_student_equals_teacher(obj):
    x = randn(4, 3, 9, seed=18)
    assert obj(x, x.clone()).abs().item() < 1e-12
    y = torch.tensor([2, -1, 0, 8])
    assert DKD()(x[:, 0], x[:, 0].clone(), target=y).abs().item() < 1e-12


def test_teacher_probs_path_equals_logits_path():
    s, t = randn(6, 7, seed=19), randn(6, 7, seed=20)
    y = torch.tensor([1, 0, 6, -1, 3, 3])
    for T in (1.0, 3.0):
        p = torch.softmax(t / T, dim=-1)
        pairs = [
            (kd_loss(s, t, T), kd_loss(s, None, T, teacher_probs=p)),
            (reverse_kl_loss(s, t, T), reverse_kl_loss(s, None, T, teacher_probs=p)),
            (jsd_loss(s, t, 0.3, T), jsd_loss(s, None, 0.3, T, teacher_probs=p)),
            (tvd_loss(s, t, T), tvd_loss(s, None, T, teacher_probs=p)),
            (dkd_loss(s, t, y, 1.0, 8.0, T), dkd_loss(s, None, y, 1.0, 8.0, T, teacher_probs=p)),
            (SoftTargetKD(T)(s, t), SoftTargetKD(T)(s, teacher_probs=p)),
            (DKD(temperature=T)(s, t, target=y), DKD(temperature=T)(s, teacher_probs=p, target=y)),
        ]
        for a, b in pairs:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_exactly_one_teacher_input():
    s, t = randn(2, 3), randn(2, 3, seed=1)
    with pytest.raises(TypeError, match="exactly one"):
        kd_loss(s)
    with pytest.raises(TypeError, match="exactly one"):
        SoftTargetKD()(s, t, teacher_probs=torch.softmax(t, -1))


def test_zero_teacher_probabilities_are_finite():
    s = randn(3, 5, seed=21).requires_grad_()
    onehot = torch.nn.functional.one_hot(torch.tensor([1, 4, 0]), 5).double()
    T = 2.0
    # KL(onehot || q) = -log q_y
    index = torch.tensor([[1], [4], [0]])
    expected = -T * T * torch.log_softmax(s.detach() / T, -1).gather(1, index)
    got = kd_loss(s, None, T, teacher_probs=onehot, reduction="none")
    torch.testing.assert_close(got, expected.squeeze(1))
    for fn in (kd_loss, reverse_kl_loss, tvd_loss):
        out = fn(s, None, T, teacher_probs=onehot)
        (g,) = torch.autograd.grad(out, s)
        assert torch.isfinite(out) and torch.isfinite(g).all(), fn.__name__
    for beta in (0.0, 0.5, 1.0):
        out = jsd_loss(s, None, beta, T, teacher_probs=onehot)
        (g,) = torch.autograd.grad(out, s)
        assert torch.isfinite(out) and torch.isfinite(g).all()
    # the symmetric JSD against a one-hot target, by hand
    exp_jsd = ref_jsd(s.detach().numpy(), np.log(np.clip(onehot.numpy(), 1e-300, None)), 0.5, 1.0)
    assert_matches(jsd_loss(s, None, 0.5, 1.0, teacher_probs=onehot, reduction="none"), exp_jsd,
                   torch.float64)
    # teacher logits of -inf (a masked vocabulary entry) and student -inf there too
    t = randn(3, 5, seed=22).clone()
    t[:, 2] = -math.inf
    s2 = s.detach().clone()
    s2[:, 2] = -math.inf
    s2.requires_grad_()
    out = kd_loss(s2, t, T)
    (g,) = torch.autograd.grad(out, s2)
    assert torch.isfinite(out) and torch.isfinite(g).all()
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(out, kd_loss(s2.detach()[:, keep], t[:, keep], T))
    # DKD against a one-hot target: NCKD is 0, TCKD = KL([1, 0] || b_s) = -log p_s[y]
    y = torch.tensor([1, 4, 0])
    out = dkd_loss(s, None, y, 1.0, 8.0, T, teacher_probs=onehot, reduction="none")
    (g,) = torch.autograd.grad(out.sum(), s)
    torch.testing.assert_close(out, expected.squeeze(1))
    assert torch.isfinite(g).all()
    # a teacher probability of 0 still gives a finite (clamped) reverse KL
    assert torch.isfinite(reverse_kl_loss(s, None, 1.0, teacher_probs=onehot))


def test_dkd_ignores_unlabeled_samples():
    s = randn(6, 5, seed=23).requires_grad_()
    t = randn(6, 5, seed=24)
    y = torch.tensor([3, -1, 0, -1, 4, 1])
    keep = y != -1
    full = DKD()(s, t, target=y)
    sub = DKD()(s.detach()[keep], t[keep], target=y[keep])
    torch.testing.assert_close(full, sub)
    (g,) = torch.autograd.grad(full, s)
    assert (g[~keep] == 0).all() and (g[keep] != 0).any()
    none = DKD(reduction="none")(s, t, target=y)
    assert none.shape == (6,) and (none[~keep] == 0).all()
    # every sample unlabeled: a zero that keeps the graph
    allu = DKD()(s, t, target=torch.full((6,), -1))
    assert allu.item() == 0.0 and allu.requires_grad
    (g,) = torch.autograd.grad(allu, s)
    assert (g == 0).all()


def test_ce_all_ignored_is_zero_with_grad():
    s = randn(4, 3, seed=25).requires_grad_()
    loss = CrossEntropy()(s, torch.full((4,), -1))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert loss.requires_grad
    loss.backward()
    assert s.grad is not None and (s.grad == 0).all()
    none = CrossEntropy(reduction="none")(s, torch.full((4,), -1))
    assert none.shape == (4,) and (none == 0).all()
    # a custom ignore index
    y = torch.tensor([2, 7, 7, 0])
    got = CrossEntropy(ignore_index=7)(s, y)
    expected = ref_ce(s.detach().numpy()[[0, 3]], np.array([2, 0]), 0.0).mean()
    assert_matches(got, expected, torch.float64)


def test_label_errors_and_shape_errors():
    s, t = randn(4, 5), randn(4, 6, seed=1)
    with pytest.raises(ShapeError, match=r"\[4, 5\].*\[4, 6\]"):
        kd_loss(s, t)
    for obj in (ReverseKL(), GeneralizedJSD(), TotalVariation()):
        with pytest.raises(ShapeError, match=r"\[4, 5\].*\[4, 6\]"):
            obj(s, t)
    with pytest.raises(ShapeError, match=r"\[4, 5\].*\[4, 6\]"):
        DKD()(s, t, target=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"\[3\]"):
        DKD()(s, s, target=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"\[4, 5\].*\[4\].*\[2\]"):
        CrossEntropy()(s, torch.zeros(2, dtype=torch.long))
    from distillery.errors import DataError

    with pytest.raises(DataError, match="labels"):
        CrossEntropy()(s, torch.tensor([0, 1, 5, 2]))
    with pytest.raises(DataError, match="labels"):
        DKD()(s, s, target=torch.tensor([0, -2, 1, 2]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_upcast(dtype):
    s, t = randn(4, 6, dtype=dtype, seed=26), randn(4, 6, dtype=dtype, seed=27)
    y = torch.tensor([0, 1, 2, -1])
    for fn in (
        lambda a, b: kd_loss(a, b, 4.0),
        lambda a, b: jsd_loss(a, b, 0.5, 2.0),
        lambda a, b: dkd_loss(a, b, y),
        lambda a, b: cross_entropy_loss(a, y),
    ):
        out = fn(s, t)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(s.float(), t.float()))
    assert kd_loss(s.double(), t, 4.0).dtype == torch.float64


# ---------------------------------------------------------------- hard inputs
#
# Large logits (std 20 and 50), peaked and one-hot-like distributions, and a 32k vocabulary,
# for every divergence, against float64 formulas written here from the definitions (with a
# float64 log_softmax), in float64 and in float32. A log-probability of -100 or -1000 is an
# ordinary value here, and the float32 result must equal the float64 one up to rounding.

HARD_CASES = ["std20", "std50", "peaked", "one_hot_like", "vocab32k"]


def hard_logits(case: str, seed: int, shape=(6, 23)) -> torch.Tensor:
    """float64 logits of one of the HARD_CASES; ``shape`` is ignored for ``vocab32k``."""
    g = torch.Generator().manual_seed(seed)
    if case == "vocab32k":
        shape = (2, 2, 32_000)  # [B, L, V]: a token sequence over a 32k vocabulary
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    hot = torch.nn.functional.one_hot(
        torch.randint(0, shape[-1], shape[:-1], generator=g), shape[-1]
    ).double()
    if case in ("std20", "vocab32k"):
        return 20.0 * x
    if case == "std50":
        return 50.0 * x
    if case == "peaked":  # one class holds nearly all the mass, the rest is spread
        return 2.0 * x + 12.0 * hot
    if case == "one_hot_like":  # one logit +30 above nearly equal others
        return 0.1 * x + 30.0 * hot
    raise AssertionError(case)


def f64_log_probs(logits: torch.Tensor, T: float) -> torch.Tensor:
    return torch.log_softmax(logits.double() / T, dim=-1)


def f64_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_k p_k (log p_k - log q_k) over the last dim, 0 where p_k = 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def f64_per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1).mean(1)


def f64_divergence(name: str, s: torch.Tensor, t: torch.Tensor, T: float, beta: float = 0.5):
    """Per-sample T^2 * divergence (no T^2 for TVD) from the definitions, in float64."""
    log_ps, log_pt = f64_log_probs(s, T), f64_log_probs(t, T)
    if name == "kd":
        d = T * T * f64_kl(log_pt, log_ps)
    elif name == "reverse_kl":
        d = T * T * f64_kl(log_ps, log_pt)
    elif name == "tvd":
        d = 0.5 * (log_pt.exp() - log_ps.exp()).abs().sum(-1)
    elif name == "jsd":
        # m = beta p_t + (1 - beta) p_s, in log space so that no probability underflows
        log_m = torch.logaddexp(math.log(beta) + log_pt, math.log1p(-beta) + log_ps)
        d = T * T * (beta * f64_kl(log_pt, log_m) + (1 - beta) * f64_kl(log_ps, log_m))
    else:
        raise AssertionError(name)
    return f64_per_sample(d)


def f64_dkd(s, t, y, alpha, beta, T):
    """DKD from its definition: b = [p_y, 1 - p_y], p_hat = p_k / (1 - p_y) over k != y."""
    K = s.shape[-1]
    others = torch.stack([torch.tensor([k for k in range(K) if k != int(c)]) for c in y])

    def parts(logits):
        log_p = f64_log_probs(logits, T)
        log_rest = torch.logsumexp(log_p.gather(1, others), dim=1)  # log(1 - p_y)
        binary = torch.stack([log_p.gather(1, y.view(-1, 1)).squeeze(1), log_rest], dim=1)
        return binary, log_p.gather(1, others) - log_rest.unsqueeze(1)

    (bs, ns), (bt, nt) = parts(s), parts(t)
    return T * T * (alpha * f64_kl(bt, bs) + beta * f64_kl(nt, ns))


DIVERGENCE_FNS = {
    "kd": lambda s, t, T: kd_loss(s, t, T, reduction="none"),
    "reverse_kl": lambda s, t, T: reverse_kl_loss(s, t, T, reduction="none"),
    "tvd": lambda s, t, T: tvd_loss(s, t, T, reduction="none"),
    "jsd0": lambda s, t, T: jsd_loss(s, t, 0.0, T, reduction="none"),
    "jsd0.1": lambda s, t, T: jsd_loss(s, t, 0.1, T, reduction="none"),
    "jsd0.5": lambda s, t, T: jsd_loss(s, t, 0.5, T, reduction="none"),
    "jsd0.9": lambda s, t, T: jsd_loss(s, t, 0.9, T, reduction="none"),
    "jsd1": lambda s, t, T: jsd_loss(s, t, 1.0, T, reduction="none"),
}


def f64_reference(name: str, s, t, T):
    if name.startswith("jsd"):
        beta = float(name[3:])
        # the GKD endpoints: beta = 0 is the forward KL, beta = 1 the reverse KL
        if beta == 0.0:
            return f64_divergence("kd", s, t, T)
        if beta == 1.0:
            return f64_divergence("reverse_kl", s, t, T)
        return f64_divergence("jsd", s, t, T, beta)
    return f64_divergence(name, s, t, T)


def assert_hard_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """float64: equal to 1e-9 relative; float32: to 1e-4 relative, plus an absolute slack
    for near-zero values (float32 log-probabilities of 1 - 1e-13 round to 0)."""
    rtol, atol = (1e-9, 1e-9) if dtype == torch.float64 else (1e-4, 1e-4)
    torch.testing.assert_close(actual.detach().double(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("case", HARD_CASES)
@pytest.mark.parametrize("name", sorted(DIVERGENCE_FNS))
def test_hard_inputs_match_float64_definitions(name, case, T, dtype):
    s, t = hard_logits(case, seed=40), hard_logits(case, seed=41)
    expected = f64_reference(name, s, t, T)
    got = DIVERGENCE_FNS[name](s.to(dtype), t.to(dtype), T)
    assert got.dtype == dtype
    assert_hard_close(got, expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [1.0, 0.5, 4.0])
@pytest.mark.parametrize("case", HARD_CASES)
def test_dkd_hard_inputs_match_float64_definition(case, T, dtype):
    s, t = hard_logits(case, seed=42), hard_logits(case, seed=43)
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])  # DKD on [N, K]
    g = torch.Generator().manual_seed(44)
    # labels: the teacher's top class (the usual case) and random ones
    y = torch.where(torch.rand(s.shape[0], generator=g) < 0.5, t.argmax(-1),
                    torch.randint(0, s.shape[-1], (s.shape[0],), generator=g))
    expected = f64_dkd(s, t, y, 1.0, 8.0, T)
    got = dkd_loss(s.to(dtype), t.to(dtype), y, 1.0, 8.0, T, reduction="none")
    assert_hard_close(got, expected, dtype)


def test_reverse_kl_keeps_small_teacher_probabilities():
    """log p_t = -100 is kept as is, not clamped at log(float32 tiny) = -87.3."""
    s, t = torch.zeros(1, 2), torch.tensor([[0.0, -100.0]])
    # p_s = (1/2, 1/2), log p_t = (0, -100) up to 4e-44: KL = 50 - log 2
    expected = 50.0 - math.log(2.0)
    for got in (reverse_kl_loss(s, t), jsd_loss(s, t, 1.0), ReverseKL()(s, t),
                GeneralizedJSD(1.0)(s, t), reverse_kl_loss(s.double(), t.double())):
        assert abs(got.item() - expected) < 1e-5 * expected, got


def test_only_true_zero_teacher_probabilities_are_floored():
    """A teacher probability of exactly 0 is replaced by float32's smallest normal number
    (finite loss); a tiny non-zero one (1e-40, subnormal in float32) is used as is."""
    s = torch.zeros(1, 3)
    tiny = torch.finfo(torch.float32).tiny
    p_zero = torch.tensor([[0.5, 0.5, 0.0]])
    expected_zero = (2 / 3) * math.log((1 / 3) / 0.5) + (1 / 3) * math.log((1 / 3) / tiny)
    got = reverse_kl_loss(s, None, teacher_probs=p_zero)
    assert abs(got.item() - expected_zero) < 1e-5 * abs(expected_zero)
    p_small = torch.tensor([[0.5, 0.5, 1e-40]])
    small = float(p_small[0, 2])  # the float32 value actually stored
    expected_small = (2 / 3) * math.log((1 / 3) / 0.5) + (1 / 3) * math.log((1 / 3) / small)
    for got in (reverse_kl_loss(s, None, teacher_probs=p_small),
                jsd_loss(s, None, 1.0, teacher_probs=p_small)):
        assert abs(got.item() - expected_small) < 1e-5 * abs(expected_small), got
    # a teacher logit of -inf is a true zero too: finite, with finite gradients
    s2 = torch.zeros(1, 3, requires_grad=True)
    t2 = torch.tensor([[0.0, 0.0, -math.inf]])
    out = reverse_kl_loss(s2, t2)
    (g,) = torch.autograd.grad(out, s2)
    assert abs(out.item() - expected_zero) < 1e-5 * abs(expected_zero)
    assert torch.isfinite(g).all()


HARD_GRAD_FNS = {
    "kd": lambda s, t: kd_loss(s, t, 0.5),
    "reverse_kl": lambda s, t: reverse_kl_loss(s, t, 0.5),
    "jsd": lambda s, t: jsd_loss(s, t, 0.3, 0.5),
    "jsd0": lambda s, t: jsd_loss(s, t, 0.0, 2.0),
    "jsd1": lambda s, t: jsd_loss(s, t, 1.0, 1.0),
    "tvd": lambda s, t: tvd_loss(s, t, 1.0),
    "dkd": lambda s, t: dkd_loss(s, t, torch.tensor([0, 3, 1]), 1.0, 8.0, 2.0),
}


@pytest.mark.parametrize("case", ["std20", "std50", "peaked", "one_hot_like"])
@pytest.mark.parametrize("name", sorted(HARD_GRAD_FNS))
def test_hard_inputs_gradcheck(name, case):
    s = hard_logits(case, seed=45, shape=(3, 5)).requires_grad_()
    t = hard_logits(case, seed=46, shape=(3, 5)).requires_grad_()
    assert torch.autograd.gradcheck(HARD_GRAD_FNS[name], (s, t))


@pytest.mark.parametrize("case", HARD_CASES)
@pytest.mark.parametrize("name", ["kd", "reverse_kl", "jsd0.5", "jsd1"])
def test_hard_inputs_float32_gradients_match_float64(name, case):
    """The student gradient in float32 equals the float64 one up to rounding."""
    s, t = hard_logits(case, seed=47), hard_logits(case, seed=48)
    grads = []
    for dtype in (torch.float64, torch.float32):
        x = s.to(dtype).requires_grad_()
        (g,) = torch.autograd.grad(DIVERGENCE_FNS[name](x, t.to(dtype), 0.5).sum(), x)
        grads.append(g.double())
    scale = float(grads[0].abs().max())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-4 * max(scale, 1.0))


# ---------------------------------------------------------------- TRL's generalized JSD


def trl_generalized_jsd(student, teacher, beta, temperature=1.0, labels=None):
    """TRL's ``GKDTrainer.generalized_jsd_loss`` (huggingface/trl,
    trl/experimental/gkd/gkd_trainer.py), ``reduction="batchmean"``, re-derived from its
    definition in float64: logits divided by T (no T^2 factor), elementwise KL terms
    ``exp(log target) * (log target - log input)``; ``beta = 0`` is KL(teacher || student),
    ``beta = 1`` KL(student || teacher), otherwise ``beta KL(t || m) + (1 - beta) KL(s || m)``
    with ``m = beta p_t + (1 - beta) p_s``; the masked terms summed and divided by the
    number of counted positions (labels != -100), or by the first dimension without labels.
    """
    log_s = torch.log_softmax(student.double() / temperature, -1)
    log_t = torch.log_softmax(teacher.double() / temperature, -1)

    def terms(log_target, log_input):
        return log_target.exp() * (log_target - log_input)

    if beta == 0:
        jsd = terms(log_t, log_s)
    elif beta == 1:
        jsd = terms(log_s, log_t)
    else:
        log_m = torch.logaddexp(log_s + math.log1p(-beta), log_t + math.log(beta))
        jsd = beta * terms(log_t, log_m) + (1 - beta) * terms(log_s, log_m)
    if labels is not None:
        mask = labels != -100
        return jsd[mask].sum() / mask.sum().clamp(min=1)
    return jsd.sum() / jsd.shape[0]


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("case", ["mild", "std20", "one_hot_like", "vocab32k"])
def test_jsd_equals_trl_at_t1_and_carries_t_squared(beta, case):
    """Same beta convention as TRL; equal at T = 1, T^2 times TRL's value otherwise."""
    if case == "mild":
        s, t = randn(6, 23, seed=49), randn(6, 23, seed=50)
    else:
        s, t = hard_logits(case, seed=49), hard_logits(case, seed=50)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        for T in (1.0, 2.0, 0.5):
            if s.ndim == 3:  # [B, L, V]: TRL's batchmean over positions needs the labels
                labels = torch.zeros(s.shape[:-1], dtype=torch.long)
                trl = trl_generalized_jsd(s, t, beta, T, labels)
            else:
                trl = trl_generalized_jsd(s, t, beta, T)
            ours = GeneralizedJSD(beta, T)(s.to(dtype), t.to(dtype))
            torch.testing.assert_close(ours.double(), T * T * trl, rtol=tol, atol=tol)
