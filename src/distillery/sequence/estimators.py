"""On-policy estimators of the sequence-level reverse KL from sampled tokens.

A rollout ``y = (y_1, ..., y_L)`` is sampled by a behaviour policy (the sampler, usually the
student itself). Each function takes per-token log-probabilities of the *sampled* tokens,
shape ``[B, T]``: ``logp_s = log p_s(y_t | y_<t)`` (the student, with grad), ``logp_t`` (the
teacher, no grad needed) and, where it matters, ``logp_b`` (the behaviour policy that sampled
them), with a ``[B, T]`` mask (True = a generated token that counts; False = prompt, padding,
after EOS). Masked entries may hold anything (-inf, NaN): they are replaced before use.

The target is the sequence-level reverse KL ``KL(p_s || p_t) = E_{y ~ p_s}[sum_t c_t]`` with the
per-token cost ``c_t = log p_s(y_t | y_<t) - log p_t(y_t | y_<t)``.

* **Value estimators** (J. Schulman, 2020, "Approximating KL Divergence", joschu.net/blog/kl-approx):
  with ``r_t = p_t(y_t | y_<t) / p_s(y_t | y_<t)``, :func:`k1` ``= -log r_t = c_t`` (unbiased),
  :func:`k2` ``= (log r_t)^2 / 2`` (biased, low variance), :func:`k3` ``= (r_t - 1) - log r_t``
  (unbiased, since ``E_{y_t ~ p_s}[r_t] = 1`` given the prefix, and never negative). Summed
  over the tokens of a student rollout, k1 and k3 are unbiased for the sequence KL.
* **Policy gradient** (:func:`reverse_kl_policy_gradient_loss`): differentiating the sampled k1
  sum is *not* the gradient of the KL (its expectation is ``E[sum_t grad log p_s] = 0``); the
  gradient is ``E[sum_t grad log p_s(y_t | y_<t) * G_t]`` with the cost-to-go
  ``G_t = sum_{t' >= t} c_t'`` (REINFORCE with reward ``-c``, stop-grad; MiniLLM, Gu et al.
  2024, arXiv:2306.08543, whose per-token "long-term" reward is this sum). On-policy
  distillation (Agarwal et al. 2024, GKD, arXiv:2306.13649; the per-token reverse KL as the
  advantage) often uses only the immediate cost ``G_t = c_t``: offered as
  ``advantage="immediate"``, it is *not* an unbiased gradient of the sequence KL.
* **Importance weighting** (:func:`importance_ratio`, :func:`iw_reverse_kl_loss`): when the
  tokens come from another policy ``p_b`` (a stale student, an inference engine, a mixture),
  weights ``p_s / p_b`` correct the expectation; clipped as in PPO (Schulman et al. 2017,
  arXiv:1707.06347). The importance-weighted reverse KL is the loss of Skill-SD
  ("Skill-SD: Skill-Conditioned Self-Distillation for Multi-turn LLM Agents", 2025), which
  weights the token-level reverse KL by clipped ratios against the sampler's log-probs.

Losses return a value that equals the estimate of the KL (for logging) while their gradient is
the estimator's gradient (the surrogate is added as ``s - s.detach()``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError, ShapeError
from ..objectives._common import check_temperature, shape_str

__all__ = [
    "ADVANTAGES",
    "ESTIMATORS",
    "PG_REDUCTIONS",
    "WEIGHTINGS",
    "importance_ratio",
    "iw_reverse_kl_loss",
    "k1",
    "k2",
    "k3",
    "reverse_kl_policy_gradient_loss",
    "sequence_kl_estimate",
    "token_logprobs",
]

#: Per-token estimators of :func:`sequence_kl_estimate`.
ESTIMATORS = ("k1", "k2", "k3")
#: Advantages of :func:`reverse_kl_policy_gradient_loss`.
ADVANTAGES = ("per_token", "sequence", "immediate")
#: Importance weightings of :func:`importance_ratio` and :func:`iw_reverse_kl_loss`.
WEIGHTINGS = ("token", "prefix")
#: Reductions of the on-policy losses.
PG_REDUCTIONS = ("mean", "sum", "token_mean")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """``log softmax(logits / T)`` at the given tokens: ``[B, T, V]``, ``[B, T]`` -> ``[B, T]``.

    ``logits[b, t]`` must be the distribution of ``tokens[b, t]`` (shift a causal LM's output by
    one first). Negative token ids (``-100`` padding) give 0.
    """
    T = check_temperature("temperature", temperature)
    if logits.shape[:-1] != tokens.shape:
        raise ShapeError(
            f"token_logprobs: logits {shape_str(logits)} need tokens of shape {shape_str(logits.shape[:-1])}, "
            f"got {shape_str(tokens)}."
        )
    dtype = torch.promote_types(torch.float32, logits.dtype)
    log_p = F.log_softmax(logits.to(dtype) / T, dim=-1)
    valid = tokens >= 0
    picked = log_p.gather(-1, tokens.long().clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def _mask(name: str, reference: Tensor, mask: Tensor | None, *others: Tensor) -> Tensor:
    for other in others:
        if other.shape != reference.shape:
            raise ShapeError(
                f"{name}: per-token log-probabilities must share one shape [B, T]; got "
                f"{shape_str(reference)} and {shape_str(other)}."
            )
    if mask is None:
        return torch.ones(reference.shape, dtype=torch.bool, device=reference.device)
    if mask.shape != reference.shape:
        raise ShapeError(f"{name}: log-probabilities {shape_str(reference)} need a mask of that shape, got {shape_str(mask)}.")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or bool(((mask != 0) & (mask != 1)).any()):
            raise DataError(f"{name}: mask must be boolean or integer 0/1 (True = counted), got {mask.dtype}.")
        mask = mask != 0
    return mask


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, torch.zeros_like(x))


def _cost(logp_s: Tensor, logp_t: Tensor, mask: Tensor) -> Tensor:
    """``c_t = log p_s - log p_t`` at counted tokens, 0 elsewhere."""
    return _masked(_masked(logp_s, mask) - _masked(logp_t, mask), mask)


def _check_pg_reduction(reduction: str) -> None:
    if reduction not in PG_REDUCTIONS:
        raise ConfigError(f"reduction must be one of {PG_REDUCTIONS}, got {reduction!r}.")


def _reduce(per_token: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """``"mean"``: mean over sequences of the sum over tokens (the sequence-level quantity);
    ``"sum"``: sum over everything; ``"token_mean"``: sum over counted tokens / their number."""
    total = per_token.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / max(per_token.shape[0], 1)
    return total / mask.sum().clamp(min=1)


# --------------------------------------------------------------------------------------
# value estimators
# --------------------------------------------------------------------------------------


def k1(logp_s: Tensor, logp_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Schulman's k1 ``= log p_s - log p_t`` per sampled token ``[B, T]`` (0 where masked).

    Unbiased for ``KL(p_s || p_t)`` at that position when the token is sampled from ``p_s``.
    """
    keep = _mask("k1", logp_s, mask, logp_t)
    return _cost(logp_s, logp_t, keep)


def k2(logp_s: Tensor, logp_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Schulman's k2 ``= (log p_s - log p_t)^2 / 2`` per sampled token ``[B, T]`` (biased)."""
    keep = _mask("k2", logp_s, mask, logp_t)
    return 0.5 * _cost(logp_s, logp_t, keep).square()


def k3(logp_s: Tensor, logp_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Schulman's k3 ``= (r - 1) - log r``, ``r = p_t / p_s``, per sampled token ``[B, T]``.

    Unbiased for the per-position ``KL(p_s || p_t)`` under sampling from ``p_s`` (``E[r] = 1``)
    and ``>= 0`` token by token. Computed as ``expm1(d) - d`` with ``d = log p_t - log p_s``
    (no cancellation for ``r`` near 1).
    """
    keep = _mask("k3", logp_s, mask, logp_t)
    d = -_cost(logp_s, logp_t, keep)
    return _masked(torch.expm1(d) - d, keep)


def sequence_kl_estimate(
    logp_s: Tensor, logp_t: Tensor, mask: Tensor | None = None, estimator: str = "k1"
) -> Tensor:
    """``[B]``: per-sequence sum of the per-token estimator (``"k1"``, ``"k2"`` or ``"k3"``).

    For rollouts of the student, k1 and k3 sums are unbiased for the sequence-level
    ``KL(p_s || p_t)``; k2 is not.
    """
    fns = {"k1": k1, "k2": k2, "k3": k3}
    if estimator not in fns:
        raise ConfigError(f"sequence_kl_estimate: estimator must be one of {ESTIMATORS}, got {estimator!r}.")
    return fns[estimator](logp_s, logp_t, mask).sum(-1)


# --------------------------------------------------------------------------------------
# policy gradient
# --------------------------------------------------------------------------------------


def _advantage_weights(cost: Tensor, mask: Tensor, advantage: str, baseline: str | None) -> Tensor:
    """The stop-grad factor ``G_t`` multiplying ``log p_s(y_t | y_<t)`` in the surrogate."""
    if advantage == "per_token":  # cost-to-go: sum over t' >= t
        G = cost.flip(-1).cumsum(-1).flip(-1)
    elif advantage == "sequence":
        G = cost.sum(-1, keepdim=True).expand_as(cost)
    else:  # immediate
        G = cost
    if baseline == "mean":
        # leave-one-out mean over the other sequences (per position for per_token/immediate):
        # independent of the sequence it is subtracted from, so the gradient stays unbiased
        if advantage == "sequence":
            totals = cost.sum(-1)
            n = totals.shape[0]
            b = (totals.sum() - totals) / max(n - 1, 1) if n > 1 else torch.zeros_like(totals)
            G = G - b.unsqueeze(-1)
        else:
            m = mask.to(G.dtype)
            n = m.sum(0, keepdim=True)
            s = (G * m).sum(0, keepdim=True)
            b = torch.where(n > 1, (s - G * m) / (n - 1).clamp(min=1), torch.zeros_like(G))
            G = G - b
    return _masked(G, mask)


def reverse_kl_policy_gradient_loss(
    logp_s: Tensor,
    logp_t: Tensor,
    mask: Tensor | None = None,
    *,
    baseline: str | None = "mean",
    advantage: str = "per_token",
    reduction: str = "mean",
) -> Tensor:
    """REINFORCE surrogate of the sequence-level reverse KL ``KL(p_s || p_t)`` on student rollouts.

    With ``c_t = log p_s(y_t | y_<t) - log p_t(y_t | y_<t)`` (stop-grad), the surrogate is
    ``sum_t G_t * log p_s(y_t | y_<t)`` where ``G_t`` is

    * ``"per_token"``: the cost-to-go ``sum_{t' >= t} c_t'`` (MiniLLM's long-term reward;
      unbiased, lower variance than ``"sequence"``);
    * ``"sequence"``: the whole sequence's cost ``sum_t' c_t'`` (unbiased);
    * ``"immediate"``: ``c_t`` alone (on-policy distillation's per-token reverse KL advantage;
      biased: it drops the effect of a token on the later costs).

    ``baseline="mean"`` subtracts the leave-one-out mean of ``G`` over the other sequences of
    the batch (per position for the token-wise advantages), which keeps the estimator unbiased.
    The tokens must be sampled from the student itself (on-policy); for another sampler use
    :func:`iw_reverse_kl_loss`.

    Args: ``logp_s`` ``[B, T]`` (with grad), ``logp_t`` ``[B, T]``, ``mask`` ``[B, T]``.
    ``reduction``: ``"mean"`` (over sequences of the per-sequence sum: its gradient estimates
    the gradient of the sequence KL), ``"sum"``, or ``"token_mean"`` (divided by the number of
    counted tokens, as token-averaging trainers do). Returns a scalar whose *value* is the k1
    estimate of the KL under the same reduction and whose *gradient* is the policy gradient.
    """
    if advantage not in ADVANTAGES:
        raise ConfigError(f"reverse_kl_policy_gradient_loss: advantage must be one of {ADVANTAGES}, got {advantage!r}.")
    if baseline not in ("mean", None):
        raise ConfigError(f"reverse_kl_policy_gradient_loss: baseline must be 'mean' or None, got {baseline!r}.")
    _check_pg_reduction(reduction)
    keep = _mask("reverse_kl_policy_gradient_loss", logp_s, mask, logp_t)
    logp_s = _masked(logp_s, keep)
    cost = _cost(logp_s.detach(), logp_t.detach(), keep)
    G = _advantage_weights(cost, keep, advantage, baseline)
    surrogate = _reduce(G * logp_s, keep, reduction)
    estimate = _reduce(cost, keep, reduction)
    return surrogate - surrogate.detach() + estimate


# --------------------------------------------------------------------------------------
# importance weighting
# --------------------------------------------------------------------------------------


def _check_clip(name: str, clip: tuple[float, float] | float | None) -> tuple[float, float] | None:
    if clip is None:
        return None
    if isinstance(clip, (int, float)):
        clip = (1.0 - float(clip), 1.0 + float(clip))
    try:
        lo, hi = (float(c) for c in clip)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: clip must be (low, high), a float eps or None, got {clip!r}.") from None
    if not 0.0 <= lo <= 1.0 <= hi:
        raise ConfigError(f"{name}: clip (low, high) needs 0 <= low <= 1 <= high, got {(lo, hi)!r}.")
    return lo, hi


def importance_ratio(
    logp_s: Tensor,
    logp_behaviour: Tensor,
    mask: Tensor | None = None,
    *,
    clip: tuple[float, float] | float | None = (0.8, 1.2),
    weighting: str = "token",
) -> Tensor:
    """Importance weights of the student against the sampler, ``[B, T]`` (1 where masked).

    ``"token"``: ``rho_t = p_s(y_t | y_<t) / p_b(y_t | y_<t)`` (PPO's per-token ratio; it
    corrects the choice of the token, not the distribution of its prefix). ``"prefix"``:
    ``w_t = prod_{t' <= t} rho_t'`` (per-decision importance sampling: the exact weight of
    everything up to ``t``, so ``E_{p_b}[w_t f(y_<=t)] = E_{p_s}[f(y_<=t)]``). ``clip =
    (low, high)`` (or ``eps`` for ``(1 - eps, 1 + eps)``) clamps the weight; the clamped
    weight has zero gradient outside the range. ``None`` leaves it unclipped. The weight
    carries the gradient of ``p_s`` (``grad w = w * grad log w``).
    """
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"importance_ratio: weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
    bounds = _check_clip("importance_ratio", clip)
    keep = _mask("importance_ratio", logp_s, mask, logp_behaviour)
    log_w = _masked(logp_s, keep) - _masked(logp_behaviour, keep).detach()
    if weighting == "prefix":
        log_w = log_w.cumsum(-1)
    w = _masked(log_w, keep).exp()
    if bounds is not None:
        w = w.clamp(*bounds)
    return torch.where(keep, w, torch.ones_like(w))


def iw_reverse_kl_loss(
    logp_s: Tensor,
    logp_t: Tensor,
    logp_behaviour: Tensor,
    mask: Tensor | None = None,
    *,
    clip: tuple[float, float] | float | None = (0.8, 1.2),
    weighting: str = "token",
    reduction: str = "mean",
) -> Tensor:
    """Importance-weighted token-level reverse KL (Skill-SD) on tokens sampled by ``p_b``.

    ``loss = sum_t w_t * c_t`` with the stop-grad cost ``c_t = log p_s - log p_t`` and the
    weight ``w_t`` of :func:`importance_ratio` (which carries the gradient). Its gradient is
    ``sum_t w_t c_t grad log w_t``:

    * ``weighting="prefix"``, unclipped: ``E_{p_b}[loss]`` is exactly the sequence-level
      ``KL(p_s || p_t)`` and its gradient exactly that KL's gradient (``grad log w_t =
      sum_{t' <= t} grad log p_s``, i.e. the cost-to-go REINFORCE estimator, reweighted), for
      any sampler whose support covers the student's;
    * ``weighting="token"`` (PPO/Skill-SD style): ``w_t = rho_t``; when the sampler is the
      student (``p_b = p_s`` up to numerics, ``rho = 1`` in value) the gradient is
      ``sum_t c_t grad log p_s(y_t | y_<t)``, on-policy distillation's immediate-cost gradient.
      With a different sampler the prefix's shift is ignored (a biased, lower-variance choice).

    Clipping (``clip``) changes a weight only where it leaves ``[low, high]``: if every weight
    is inside, the loss equals the unclipped one sample by sample; otherwise it trades bias for
    bounded variance (as PPO does). ``logp_s`` ``[B, T]`` (with grad), ``logp_t``,
    ``logp_behaviour`` ``[B, T]``, ``mask`` ``[B, T]``; ``reduction`` as in
    :func:`reverse_kl_policy_gradient_loss`. Returns a scalar (value = the weighted estimate).
    """
    _check_pg_reduction(reduction)
    keep = _mask("iw_reverse_kl_loss", logp_s, mask, logp_t, logp_behaviour)
    w = importance_ratio(logp_s, logp_behaviour, keep, clip=clip, weighting=weighting)
    cost = _cost(logp_s.detach(), logp_t.detach(), keep)
    return _reduce(w * cost, keep, reduction)
