"""Per-token divergences of the sequence engine against formulas written out here in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distillery.errors import ConfigError, DataError, ShapeError
from distillery.sequence.divergences import (
    KINDS,
    token_divergence,
    token_divergence_from_hidden,
    topk_teacher,
    topk_token_divergence,
)

# --------------------------------------------------------------------------------------
# independent reference: explicit exp / log in float64, one position at a time
# --------------------------------------------------------------------------------------


def _probs(logits: torch.Tensor, T: float) -> torch.Tensor:
    z = logits.double() / T
    z = z - z.max(-1, keepdim=True).values
    e = z.exp()
    return e / e.sum(-1, keepdim=True)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return terms.sum(-1)


def _log_probs(logits: torch.Tensor, T: float) -> torch.Tensor:
    z = logits.double() / T
    m = z.max(-1, keepdim=True).values
    return z - m - (z - m).exp().sum(-1, keepdim=True).log()


def reference(kind, s, t, *, beta=0.5, alpha=0.1, T=1.0):
    """``[...]`` per position, from the definitions (log-space KL for the plain KLs so that
    huge logits stay exact in float64)."""
    lp, lq = _log_probs(t, T), _log_probs(s, T)  # teacher p, student q
    p, q = lp.exp(), lq.exp()
    if kind == "forward_kl":
        return T * T * (p * (lp - lq)).sum(-1)
    if kind == "reverse_kl":
        return T * T * (q * (lq - lp)).sum(-1)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return T * T * (beta * _kl(p, m) + (1 - beta) * _kl(q, m))
    if kind == "skew_kl":
        return T * T * _kl(p, alpha * p + (1 - alpha) * q)
    if kind == "skew_rkl":
        return T * T * _kl(q, alpha * q + (1 - alpha) * p)
    raise AssertionError(kind)


def _data(B=3, T=6, V=13, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, T, V, generator=g) * scale).to(dtype)
    t = (torch.randn(B, T, V, generator=g) * scale).to(dtype)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    return s, t, mask


# --------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_each_kind_matches_its_formula_under_every_reduction(kind, T):
    s, t, mask = _data()
    beta, alpha = 0.3, 0.2
    ref = reference(kind, s, t, beta=beta, alpha=alpha, T=T) * mask
    kw = {"beta": beta, "alpha": alpha, "temperature": T}
    none = token_divergence(s, t, mask, kind, reduction="none", **kw)
    torch.testing.assert_close(none, ref, rtol=1e-10, atol=1e-12)
    n = mask.sum()
    torch.testing.assert_close(token_divergence(s, t, mask, kind, **kw), ref.sum() / n)
    torch.testing.assert_close(token_divergence(s, t, mask, kind, reduction="sum", **kw), ref.sum())
    per_seq = [ref[b][mask[b]].mean() for b in range(s.shape[0]) if mask[b].any()]
    torch.testing.assert_close(
        token_divergence(s, t, mask, kind, reduction="seq_mean", **kw), torch.stack(per_seq).mean()
    )


def test_jsd_beta_is_the_teacher_weight_as_in_trl():
    """TRL's generalized_jsd_loss, written out here from its definition: the mixture is
    ``logsumexp(student + log(1 - beta), teacher + log(beta))`` and ``jsd = beta *
    KL(teacher || m) + (1 - beta) * KL(student || m)``; ``batchmean`` with labels divides by
    the number of counted tokens."""
    s, t, mask = _data(seed=3)
    for beta in (0.1, 0.5, 0.9):
        ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
        b = torch.tensor(beta, dtype=ls.dtype)
        lm = torch.logsumexp(torch.stack([ls + torch.log(1 - b), lt + torch.log(b)]), dim=0)
        kl_t = F.kl_div(lm, lt, reduction="none", log_target=True)
        kl_s = F.kl_div(lm, ls, reduction="none", log_target=True)
        trl = (beta * kl_t + (1 - beta) * kl_s)[mask].sum() / mask.sum()
        torch.testing.assert_close(token_divergence(s, t, mask, "jsd", beta=beta), trl)


def test_jsd_endpoints_are_forward_and_reverse_kl_and_its_limits_agree():
    s, t, mask = _data(seed=4)
    fkl = token_divergence(s, t, mask, "forward_kl", reduction="none")
    rkl = token_divergence(s, t, mask, "reverse_kl", reduction="none")
    torch.testing.assert_close(token_divergence(s, t, mask, "jsd", beta=0.0, reduction="none"), fkl)
    torch.testing.assert_close(token_divergence(s, t, mask, "jsd", beta=1.0, reduction="none"), rkl)
    eps = 1e-7  # JSD(beta)/beta -> forward KL, JSD(beta)/(1-beta) -> reverse KL
    near0 = token_divergence(s, t, mask, "jsd", beta=eps, reduction="none") / eps
    near1 = token_divergence(s, t, mask, "jsd", beta=1 - eps, reduction="none") / eps
    torch.testing.assert_close(near0, fkl, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(near1, rkl, rtol=1e-3, atol=1e-6)


def test_skew_endpoints():
    s, t, mask = _data(seed=5)
    for skew, plain in (("skew_kl", "forward_kl"), ("skew_rkl", "reverse_kl")):
        torch.testing.assert_close(
            token_divergence(s, t, mask, skew, alpha=0.0, reduction="none"),
            token_divergence(s, t, mask, plain, reduction="none"),
        )
        one = token_divergence(s, t, mask, skew, alpha=1.0, reduction="none")
        assert torch.equal(one, torch.zeros_like(one))
    # the skew KL is bounded by log(1 / alpha) (the mixture holds at least alpha * p)
    sk = token_divergence(s * 20, t * 20, mask, "skew_kl", alpha=0.1, reduction="none")
    assert float(sk.max()) <= math.log(10) + 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    s, t, mask = _data(B=2, T=3, V=5, seed=6)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: token_divergence(x, t, mask, kind, beta=0.3, alpha=0.2, temperature=1.7, reduction="none"),
        (s,),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_huge_logits_stay_exact_and_finite(kind):
    g = torch.Generator().manual_seed(7)
    s = torch.randn(2, 3, 40, generator=g) * 1e4
    t = torch.randn(2, 3, 40, generator=g) * 1e4
    s.requires_grad_(True)
    got = token_divergence(s, t, None, kind, reduction="none")
    ref = reference(kind, s.detach(), t)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    got.sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_near_one_hot_distributions(kind):
    V = 30
    s = torch.full((1, 4, V), -40.0)
    t = torch.full((1, 4, V), -40.0)
    s[0, :, 0] = 40.0
    t[0, torch.arange(4), torch.tensor([0, 1, 2, 0])] = 40.0
    got = token_divergence(s, t, None, kind, reduction="none")
    torch.testing.assert_close(got.double(), reference(kind, s, t), rtol=1e-4, atol=1e-6)


def test_fifty_thousand_word_vocabulary_rows():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(1, 2, 50_000, generator=g) * 3
    t = torch.randn(1, 2, 50_000, generator=g) * 3
    for kind in KINDS:
        got = token_divergence(s, t, None, kind, reduction="none")
        torch.testing.assert_close(got.double(), reference(kind, s, t), rtol=2e-4, atol=1e-5)


# --------------------------------------------------------------------------------------
# masks and bad input
# --------------------------------------------------------------------------------------


def test_masked_positions_are_never_computed_even_if_nan():
    s, t, mask = _data(seed=9)
    s, t = s.clone(), t.clone()
    s[~mask] = float("nan")
    t[~mask] = float("inf")
    s.requires_grad_(True)
    for kind in KINDS:
        out = token_divergence(s, t, mask, kind)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(s.grad).all()
        assert (s.grad[~mask] == 0).all()
        s.grad = None


def test_integer_mask_is_accepted_and_float_mask_refused():
    s, t, mask = _data(seed=10)
    a = token_divergence(s, t, mask, "reverse_kl")
    torch.testing.assert_close(token_divergence(s, t, mask.long(), "reverse_kl"), a)
    with pytest.raises(DataError, match="boolean or integer"):
        token_divergence(s, t, mask.double(), "reverse_kl")
    with pytest.raises(ShapeError, match="mask of shape"):
        token_divergence(s, t, mask[:, :2], "reverse_kl")


def test_no_counted_position_gives_zero_with_a_gradient():
    s, t, mask = _data(seed=11)
    s.requires_grad_(True)
    out = token_divergence(s, t, torch.zeros_like(mask), "jsd")
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert (s.grad == 0).all()


def test_bad_arguments_are_named():
    s, t, mask = _data()
    with pytest.raises(ConfigError, match="kind"):
        token_divergence(s, t, mask, "hellinger")
    with pytest.raises(ConfigError, match="beta"):
        token_divergence(s, t, mask, "jsd", beta=1.5)
    with pytest.raises(ConfigError, match="alpha"):
        token_divergence(s, t, mask, "skew_kl", alpha=-0.1)
    with pytest.raises(ConfigError, match="reduction"):
        token_divergence(s, t, mask, "jsd", reduction="batchmean")
    with pytest.raises(ConfigError, match="align_spans"):
        token_divergence(s, t[..., :7], mask, "jsd")


# --------------------------------------------------------------------------------------
# chunked path
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("jsd", 0.0)])
@pytest.mark.parametrize("reduction", ["mean", "none", "seq_mean"])
def test_chunked_equals_dense_in_value_and_gradient(kind, beta, reduction):
    g = torch.Generator().manual_seed(12)
    B, T, H, V = 2, 5, 6, 17
    hs = torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(B, T, 4, generator=g, dtype=torch.float64)
    wt = torch.randn(V, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.3
    kw = {"beta": beta, "temperature": 1.5, "reduction": reduction}
    chunked = token_divergence_from_hidden(hs, ws, ht, wt, mask, kind, chunk_size=3, **kw)
    dense = token_divergence(hs @ ws.T, ht @ wt.T, mask, kind, **kw)
    torch.testing.assert_close(chunked, dense)
    g1 = torch.autograd.grad(chunked.sum(), (hs, ws))
    g2 = torch.autograd.grad(dense.sum(), (hs, ws))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    unchunked = token_divergence_from_hidden(hs, ws, ht, wt, mask, kind, chunked=False, **kw)
    torch.testing.assert_close(unchunked, dense)


def test_chunked_refuses_kinds_it_does_not_have():
    h, w = torch.randn(1, 2, 3), torch.randn(5, 3)
    with pytest.raises(ConfigError, match="chunked=False"):
        token_divergence_from_hidden(h, w, h, w, None, "tvd")
    out = token_divergence_from_hidden(h, w, h, w, None, "tvd", chunked=False)
    assert abs(out.item()) < 1e-6


# --------------------------------------------------------------------------------------
# top-k cached teacher
# --------------------------------------------------------------------------------------


def test_topk_equals_the_coarsened_kl_per_token():
    s, t, mask = _data(seed=13, V=9)
    T = 1.5
    ids, logprobs, tail = topk_teacher(t, 3, temperature=T)
    got = topk_token_divergence(s, ids, logprobs, tail, mask, temperature=T, reduction="none")
    p, q = _probs(t, T), _probs(s, T)
    ref = torch.zeros(mask.shape, dtype=torch.float64)
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            kept = ids[b, i].tolist()
            others = [j for j in range(9) if j not in kept]
            pk, qk = p[b, i, kept], q[b, i, kept]
            pt, qt = p[b, i, others].sum(), q[b, i, others].sum()
            ref[b, i] = T * T * ((pk * (pk / qk).log()).sum() + pt * (pt / qt).log()) * mask[b, i]
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    # a lower bound of the dense forward KL; equal to it when nothing is left out
    dense = token_divergence(s, t, mask, "forward_kl", temperature=T, reduction="none")
    assert (got <= dense + 1e-12).all()
    ids, logprobs, tail = topk_teacher(t, 9, temperature=T)
    torch.testing.assert_close(
        topk_token_divergence(s, ids, logprobs, tail, mask, temperature=T, reduction="none"), dense
    )


def test_topk_shapes_are_checked():
    s, t, mask = _data(V=9)
    ids, logprobs, tail = topk_teacher(t, 3)
    with pytest.raises(ShapeError, match="tail_mass"):
        topk_token_divergence(s, ids, logprobs, tail[:, :2], mask)
    with pytest.raises(ConfigError, match="k must be"):
        topk_teacher(t, 10)
