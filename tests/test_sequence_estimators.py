"""Exact tests of the on-policy estimators (issue 12, section 4).

Vocabulary 4, length 4: all 256 sequences are enumerated, so the sequence-level
``KL(p_s || p_t)`` and its gradient with respect to the student's parameters are known exactly.
Student, teacher and a third behaviour policy are tabular autoregressive models: the logits of
token ``t`` are a table entry ``theta[t, y_{t-1}]`` (``y_0`` reads row 0). Every estimator is
then checked, in expectation over seeded vectorised samples, against the exact numbers:

* values (k1, k3, full-vocabulary per-token reverse KL, IW reverse KL): the sample mean is
  within 4 standard errors of the exact KL (a deterministic check, since the samples are
  seeded; 4 and not 3 so that a change of random stream does not flip it by chance);
* gradients (policy gradient, IW): cosine > 0.99 and relative error < 5% against the exact
  gradient.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from distillery.errors import ConfigError, ShapeError
from distillery.sequence.divergences import (
    token_divergence,
    topk_teacher,
    topk_token_divergence,
)
from distillery.sequence.estimators import (
    importance_ratio,
    iw_reverse_kl_loss,
    k1,
    k2,
    k3,
    reverse_kl_policy_gradient_loss,
    sequence_kl_estimate,
    token_logprobs,
)

V, L = 4, 4
ALL = torch.tensor(list(itertools.product(range(V), repeat=L)))  # [256, 4]


def _table(seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, V, V, generator=g, dtype=torch.float64) * scale


STUDENT, TEACHER = _table(0), _table(1)
BEHAVIOUR = STUDENT / 1.4  # another sampler: the student at temperature 1.4


def logits_of(theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[N, L, V]``: the model's logits for every position of the sequences ``y [N, L]``."""
    prev = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)
    return theta[torch.arange(L).unsqueeze(0), prev]


def per_token_logp(theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return token_logprobs(logits_of(theta, y), y)


def sample(theta: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, L, dtype=torch.long)
    prev = torch.zeros(n, dtype=torch.long)
    for t in range(L):
        probs = torch.softmax(theta[t, prev], dim=-1)
        y[:, t] = torch.multinomial(probs, 1, generator=g).squeeze(1)
        prev = y[:, t]
    return y


def exact_kl(theta_s: torch.Tensor, theta_t: torch.Tensor) -> torch.Tensor:
    ls = per_token_logp(theta_s, ALL).sum(-1)
    lt = per_token_logp(theta_t, ALL).sum(-1)
    return (ls.exp() * (ls - lt)).sum()


def exact_grad() -> tuple[float, torch.Tensor]:
    theta = STUDENT.clone().requires_grad_(True)
    kl = exact_kl(theta, TEACHER)
    (grad,) = torch.autograd.grad(kl, theta)
    return kl.item(), grad


KL, GRAD = exact_grad()
N = 60_000


def _within(samples: torch.Tensor, target: float, k: float = 4.0) -> tuple[bool, float, float]:
    mean, se = samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())
    return abs(mean - target) < k * se, mean, se


def _compare(g: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(g.flatten(), ref.flatten(), dim=0).item()
    rel = ((g - ref).norm() / ref.norm()).item()
    return cos, rel


@pytest.fixture(scope="module")
def rollouts():
    """Student rollouts with the teacher's per-token log-probs of them."""
    y = sample(STUDENT, N, seed=10)
    return y, per_token_logp(TEACHER, y)


def test_the_enumeration_is_a_distribution_and_the_kl_is_not_trivial():
    p = per_token_logp(STUDENT, ALL).sum(-1).exp()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert KL > 0.3 and GRAD.norm() > 0.1


# --------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_and_k3_sums_are_unbiased_for_the_sequence_kl(rollouts, estimator):
    y, lt = rollouts
    ls = per_token_logp(STUDENT, y)
    ok, mean, se = _within(sequence_kl_estimate(ls, lt, None, estimator), KL)
    assert ok, f"{estimator}: {mean:.4f} +- {se:.4f} vs exact {KL:.4f}"


def test_k2_is_biased_here(rollouts):
    y, lt = rollouts
    ok, mean, se = _within(sequence_kl_estimate(per_token_logp(STUDENT, y), lt, None, "k2"), KL)
    assert not ok, f"k2 {mean:.4f} +- {se:.4f} should differ from {KL:.4f}"


def test_full_vocabulary_reverse_kl_summed_over_positions_is_the_sequence_kl(rollouts):
    y, _ = rollouts
    per_token = token_divergence(logits_of(STUDENT, y), logits_of(TEACHER, y), None, "reverse_kl", reduction="none")
    ok, mean, se = _within(per_token.sum(-1), KL)
    assert ok, f"{mean:.4f} +- {se:.4f} vs {KL:.4f}"
    # and it has a smaller variance than k1 (it integrates the last choice out)
    k1_sum = sequence_kl_estimate(per_token_logp(STUDENT, y), per_token_logp(TEACHER, y))
    assert per_token.sum(-1).var() < k1_sum.var()


def test_topk_with_tail_equals_the_coarsened_kl_per_token(rollouts):
    y, _ = rollouts
    y = y[:64]
    s, t = logits_of(STUDENT, y), logits_of(TEACHER, y)
    ids, lp, tail = topk_teacher(t, 2)
    got = topk_token_divergence(s, ids, lp, tail, None, reduction="none")
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    kept = torch.zeros_like(p, dtype=torch.bool).scatter(-1, ids, True)
    pk, qk = torch.where(kept, p, 0.0), torch.where(kept, q, 0.0)
    pt, qt = (p * ~kept).sum(-1), (q * ~kept).sum(-1)
    ref = (torch.where(kept, pk * (pk / qk).log(), 0.0)).sum(-1) + pt * (pt / qt).log()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------
# policy gradient
# --------------------------------------------------------------------------------------


def _pg_grad(y, lt, **kw):
    theta = STUDENT.clone().requires_grad_(True)
    loss = reverse_kl_policy_gradient_loss(per_token_logp(theta, y), lt, None, **kw)
    (grad,) = torch.autograd.grad(loss, theta)
    return loss, grad


@pytest.mark.parametrize(
    "advantage,baseline", [("per_token", "mean"), ("per_token", None), ("sequence", "mean")]
)
def test_policy_gradient_matches_the_exact_gradient(rollouts, advantage, baseline):
    y, lt = rollouts
    loss, grad = _pg_grad(y, lt, advantage=advantage, baseline=baseline)
    cos, rel = _compare(grad, GRAD)
    assert cos > 0.99 and rel < 0.05, f"{advantage}/{baseline}: cos {cos:.4f}, rel {rel:.4f}"
    # its value is the k1 estimate of the KL
    torch.testing.assert_close(loss.detach(), sequence_kl_estimate(per_token_logp(STUDENT, y), lt).mean())


def test_immediate_advantage_is_not_the_sequence_kl_gradient(rollouts):
    y, lt = rollouts
    _, grad = _pg_grad(y, lt, advantage="immediate", baseline=None)
    cos, rel = _compare(grad, GRAD)
    assert rel > 0.15, f"immediate-cost gradient unexpectedly close: cos {cos:.4f}, rel {rel:.4f}"


def test_differentiating_the_sampled_k1_directly_is_not_the_gradient(rollouts):
    """The reason for the surrogate: grad of sum_t (log p_s - log p_t) has expectation 0."""
    y, lt = rollouts
    theta = STUDENT.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(k1(per_token_logp(theta, y), lt).sum(-1).mean(), theta)
    assert grad.norm() < 0.1 * GRAD.norm()


# --------------------------------------------------------------------------------------
# importance weighting against another sampler
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offpolicy():
    y = sample(BEHAVIOUR, N, seed=11)
    return y, per_token_logp(TEACHER, y), per_token_logp(BEHAVIOUR, y)


def test_unclipped_prefix_iw_reverse_kl_is_unbiased_in_value_and_gradient(offpolicy):
    y, lt, lb = offpolicy
    theta = STUDENT.clone().requires_grad_(True)
    ls = per_token_logp(theta, y)
    loss = iw_reverse_kl_loss(ls, lt, lb, None, clip=None, weighting="prefix")
    w = importance_ratio(ls.detach(), lb, None, clip=None, weighting="prefix")
    per_seq = (w * k1(ls.detach(), lt)).sum(-1)
    torch.testing.assert_close(loss.detach(), per_seq.mean())
    ok, mean, se = _within(per_seq, KL)
    assert ok, f"IW value {mean:.4f} +- {se:.4f} vs {KL:.4f}"
    (grad,) = torch.autograd.grad(loss, theta)
    cos, rel = _compare(grad, GRAD)
    assert cos > 0.99 and rel < 0.05, f"IW gradient: cos {cos:.4f}, rel {rel:.4f}"
    # without the weights the same samples estimate the wrong thing
    ok, mean, se = _within(sequence_kl_estimate(ls.detach(), lt), KL)
    assert not ok, f"unweighted off-policy k1 {mean:.4f} should be biased vs {KL:.4f}"


def test_clipping_changes_nothing_inside_the_range_and_biases_outside(offpolicy):
    y, lt, lb = offpolicy
    ls = per_token_logp(STUDENT, y)
    w = importance_ratio(ls, lb, None, clip=None, weighting="prefix")
    lo, hi = w.min().item(), w.max().item()
    wide = iw_reverse_kl_loss(ls, lt, lb, None, clip=(lo * 0.999, hi * 1.001), weighting="prefix")
    plain = iw_reverse_kl_loss(ls, lt, lb, None, clip=None, weighting="prefix")
    assert torch.equal(wide, plain)
    narrow_w = importance_ratio(ls, lb, None, clip=(0.8, 1.2), weighting="prefix")
    assert ((w < 0.8) | (w > 1.2)).float().mean() > 0.1  # many weights are clipped
    per_seq = (narrow_w * k1(ls, lt)).sum(-1)
    torch.testing.assert_close(iw_reverse_kl_loss(ls, lt, lb, None, clip=(0.8, 1.2), weighting="prefix"), per_seq.mean())
    ok, mean, se = _within(per_seq, KL)
    assert not ok, f"clipped IW {mean:.4f} +- {se:.4f} should be biased vs {KL:.4f}"


def test_token_weighting_on_policy_is_the_immediate_cost_gradient(rollouts):
    y, lt = rollouts
    y, lt = y[:2000], lt[:2000]
    theta = STUDENT.clone().requires_grad_(True)
    ls = per_token_logp(theta, y)
    iw = iw_reverse_kl_loss(ls, lt, ls.detach(), None, clip=(0.8, 1.2), weighting="token")
    w = importance_ratio(ls, ls.detach(), None, weighting="token")
    assert torch.equal(w.detach(), torch.ones_like(w))
    (g_iw,) = torch.autograd.grad(iw, theta)
    _, g_pg = _pg_grad(y, lt, advantage="immediate", baseline=None)
    torch.testing.assert_close(g_iw, g_pg)
    torch.testing.assert_close(iw.detach(), k1(ls.detach(), lt).sum(-1).mean())


# --------------------------------------------------------------------------------------
# unit checks
# --------------------------------------------------------------------------------------


def test_k_estimators_against_their_formulas_and_masks():
    g = torch.Generator().manual_seed(3)
    ls = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    lt = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(3, 5, generator=g) > 0.3
    r = (lt - ls).exp()
    torch.testing.assert_close(k1(ls, lt, mask), (ls - lt) * mask)
    torch.testing.assert_close(k2(ls, lt, mask), 0.5 * (ls - lt) ** 2 * mask)
    torch.testing.assert_close(k3(ls, lt, mask), ((r - 1) - r.log()) * mask)
    assert (k3(ls, lt) >= 0).all()
    # masked entries may hold -inf / nan without effect
    bad_s, bad_t = ls.clone(), lt.clone()
    bad_s[~mask], bad_t[~mask] = float("nan"), -float("inf")
    for f in (k1, k2, k3):
        torch.testing.assert_close(f(bad_s, bad_t, mask), f(ls, lt, mask))
    # k3 near r = 1 has no cancellation
    tiny = torch.tensor([[1e-9]], dtype=torch.float64)
    torch.testing.assert_close(k3(torch.zeros_like(tiny), tiny), tiny**2 / 2, rtol=1e-6, atol=0)


def test_masked_tokens_do_not_enter_the_losses():
    g = torch.Generator().manual_seed(4)
    ls = (-torch.rand(4, 6, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    lt = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 2
    lb = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 2
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 4:] = False
    bad_t, bad_b = lt.clone(), lb.clone()
    bad_t[:, 4:], bad_b[:, 4:] = float("nan"), -float("inf")
    for fn, args in (
        (reverse_kl_policy_gradient_loss, ()),
        (iw_reverse_kl_loss, (lb,)),
    ):
        a = fn(ls, lt, *args, mask) if not args else fn(ls, lt, args[0], mask)
        b = fn(ls, bad_t, mask) if not args else fn(ls, bad_t, bad_b, mask)
        torch.testing.assert_close(a, b)
        (ga,) = torch.autograd.grad(a, ls)
        (gb,) = torch.autograd.grad(b, ls)
        torch.testing.assert_close(ga, gb)
        assert (ga[:, 4:] == 0).all()
    short = reverse_kl_policy_gradient_loss(ls[:, :4], lt[:, :4], None)
    torch.testing.assert_close(reverse_kl_policy_gradient_loss(ls, lt, mask), short)
    torch.testing.assert_close(
        reverse_kl_policy_gradient_loss(ls, lt, mask, reduction="token_mean"),
        k1(ls, lt, mask).sum() / 16,
    )


def test_token_logprobs_and_bad_arguments():
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    tokens = torch.tensor([[0, 4, -100], [1, 2, 3]])
    got = token_logprobs(logits, tokens)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, torch.where(tokens >= 0, ref, 0.0))
    ls = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="advantage"):
        reverse_kl_policy_gradient_loss(ls, ls, advantage="gae")
    with pytest.raises(ConfigError, match="baseline"):
        reverse_kl_policy_gradient_loss(ls, ls, baseline="ema")
    with pytest.raises(ConfigError, match="clip"):
        importance_ratio(ls, ls, clip=(1.2, 0.8))
    with pytest.raises(ConfigError, match="weighting"):
        importance_ratio(ls, ls, weighting="sequence")
    with pytest.raises(ShapeError, match="one shape"):
        iw_reverse_kl_loss(ls, ls[:, :2], ls)
    with pytest.raises(ConfigError, match="estimator"):
        sequence_kl_estimate(ls, ls, estimator="k4")
    torch.testing.assert_close(importance_ratio(ls, ls - 1.0, clip=0.2), torch.full_like(ls, 1.2))
