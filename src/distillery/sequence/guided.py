"""Phase-wise guided decoding: at the start of each phase, sample candidates and keep the best.

PSRD (Zhang et al., 2026, "Mitigating Multimodal Hallucination via Phase-wise Self-reward",
arXiv:2604.17982) observes that hallucination peaks "at the onset of each semantic phase" and
intervenes there, guided by a reward. :func:`phase_guided_decode` decodes a batch of prompts
phase by phase; a *phase* is a run of tokens that ends with one of ``phase_end_ids`` (a clause
delimiter, EOS) or after ``max_phase_tokens`` tokens. At each phase every unfinished row draws
``num_candidates`` continuations with the ordinary sampler (temperature / top-k / top-p of
:func:`~distillery.sequence.sampler.filter_logits`), a ``scorer`` scores them, and

* ``strategy="best_of"``: the highest-scoring candidate is kept (ties: the first);
* ``strategy="reject"``: candidates are examined in order and the first whose score reaches
  ``threshold`` is kept (reject-and-resample); if none does, the highest-scoring one.

With ``num_candidates=1`` (any scorer, or none) this is plain ancestral sampling.

A scorer is any callable ``scorer(c: Candidates) -> Tensor (M,)`` (higher is better); it sees the
candidates' token ids, the LM's hidden state at each candidate's last token, and the candidate's
log-probability under the LM. :func:`likelihood_scorer` is best-of-N by the model's own
likelihood, :func:`head_scorer` a reward model on the hidden state
(:class:`~distillery.sequence.reward_head.RewardHead`).

Cost, counted as a KV-cached decoder would spend it: ``lm_steps`` is the number of tokens fed
through the LM after the prompt (one decoding step each): every sampled candidate token for
``best_of``, only the candidates up to the accepted one for ``reject`` (a sequential
implementation stops there). The prefill of the prompt and the re-reading of the kept prefix
(this implementation re-runs it each phase; a cached one keeps the kept candidate's cache) are
not counted. A scorer that runs the LM itself counts its own steps (the self-evaluation scorer
of :mod:`distillery.recipes.psrd` has an ``lm_steps`` counter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .models import as_causal_lm
from .sampler import filter_logits
from .teachers import left_pad

__all__ = ["Candidates", "GuidedResult", "head_scorer", "likelihood_scorer", "phase_features", "phase_guided_decode"]


@dataclass
class Candidates:
    """The candidate phases of one decoding phase, ``M = rows x num_candidates`` of them.

    * ``row``: int64 ``(M,)``, the batch row each candidate continues (row-major: row ``b``'s
      candidates are ``b * N ... b * N + N - 1``);
    * ``prompt``, ``prefix``, ``phase``: per candidate the prompt ids, the completion so far and
      the candidate's own tokens (lists of ints);
    * ``hidden``: ``(M, H)`` the LM's hidden state at the candidate's last token;
    * ``logprob``: ``(M,)`` the sum of the candidate tokens' log-probabilities under the LM's
      raw next-token distribution (temperature 1, no filtering);
    * ``ended``: bool ``(M,)``, whether the candidate ended with a phase-end token;
    * ``hidden_mean``: ``(M, H)`` the mean hidden state over the candidate's tokens;
    * ``min_logprob``: ``(M,)`` the lowest log-probability among the candidate's tokens.
    """

    row: Tensor
    prompt: list[list[int]]
    prefix: list[list[int]]
    phase: list[list[int]]
    hidden: Tensor
    logprob: Tensor
    ended: Tensor
    hidden_mean: Tensor
    min_logprob: Tensor


def phase_features(c: Candidates) -> Tensor:
    """What a reward model reads of a candidate phase, all of it computed while decoding it:
    ``[hidden at the last token (H), mean hidden over the phase (H), summed log-prob, lowest
    token log-prob]`` ``(M, 2H + 2)``."""
    return torch.cat([c.hidden.float(), c.hidden_mean.float(), c.logprob.float()[:, None],
                      c.min_logprob.float()[:, None]], dim=1)


@dataclass
class GuidedResult:
    """``completions``: the kept token ids per row (EOS included if emitted); ``lm_steps``: LM
    decoding steps spent, in all (see the module docstring); ``phases``: phases decoded per row;
    ``scores``: per row the kept candidates' scores."""

    completions: list[list[int]]
    lm_steps: int
    phases: list[int]
    scores: list[list[float]] = field(default_factory=list)


def likelihood_scorer(c: Candidates) -> Tensor:
    """Best-of-N by the model's own likelihood: the candidate's summed log-probability."""
    return c.logprob


def head_scorer(head: nn.Module) -> Callable[[Candidates], Tensor]:
    """A reward model on :func:`phase_features` of each candidate (no LM step)."""

    def score(c: Candidates) -> Tensor:
        with torch.no_grad():
            return head(phase_features(c)).float()

    return score


@torch.no_grad()
def _sample_phase(lm: nn.Module, prompts: list[list[int]], prefixes: list[list[int]], *, max_phase_tokens: int,
                  end_ids: Tensor, temperature: float, top_k: int | None, top_p: float | None, pad_id: int,
                  generator: torch.Generator | None, device: torch.device):
    """One phase for every given row: ``(phase ids per row, hidden (M, H), logprob (M,), ended (M,),
    hidden_mean (M, H), min_logprob (M,))``."""
    ids, mask = left_pad([p + q for p, q in zip(prompts, prefixes)], pad_id, device)
    out = lm(ids, mask, use_cache=True)
    logits, past = out.logits[:, -1], out.past
    m = ids.shape[0]
    alive = torch.ones(m, dtype=torch.bool, device=device)
    ended = torch.zeros(m, dtype=torch.bool, device=device)
    hidden = out.hidden[:, -1].clone()
    logprob = torch.zeros(m, dtype=torch.float64, device=device)
    low = torch.zeros(m, dtype=torch.float64, device=device)
    total = torch.zeros_like(hidden)
    count = torch.zeros(m, 1, dtype=hidden.dtype, device=device)
    tokens: list[Tensor] = []
    for _ in range(max_phase_tokens):
        if temperature == 0:
            nxt = logits.argmax(dim=-1)
        else:
            nxt = torch.multinomial(filter_logits(logits, temperature, top_k, top_p).exp(), 1, generator=generator)[:, 0]
        raw = logits.double().log_softmax(dim=-1).gather(1, nxt[:, None])[:, 0]
        nxt = torch.where(alive, nxt, torch.full_like(nxt, pad_id))
        logprob = logprob + torch.where(alive, raw, torch.zeros_like(raw))
        low = torch.where(alive & ((count[:, 0] == 0) | (raw < low)), raw, low)
        tokens.append(torch.where(alive, nxt, torch.full_like(nxt, -1)))
        mask = torch.cat([mask, alive.long()[:, None]], dim=1)
        out = lm(nxt[:, None], mask, past=past, use_cache=True)
        logits, past = out.logits[:, -1], out.past
        hidden = torch.where(alive[:, None], out.hidden[:, -1], hidden)
        total = total + torch.where(alive[:, None], out.hidden[:, -1], torch.zeros_like(hidden))
        count = count + alive[:, None].to(count.dtype)
        stop = alive & torch.isin(nxt, end_ids)
        ended |= stop
        alive = alive & ~stop
        if not bool(alive.any()):
            break
    phase = [[t for t in row if t >= 0] for row in torch.stack(tokens, dim=1).tolist()]
    return phase, hidden, logprob, ended, total / count.clamp(min=1), low


@torch.no_grad()
def phase_guided_decode(lm: nn.Module, prompts: Sequence[Sequence[int]], *, phase_end_ids: Sequence[int], eos_id: int,
                        pad_id: int, scorer: Callable[[Candidates], Tensor] | None = None, num_candidates: int = 1,
                        strategy: str = "best_of", threshold: float = 0.0, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None, max_phase_tokens: int = 8,
                        max_phases: int = 8, max_new_tokens: int | None = None,
                        generator: torch.Generator | None = None) -> GuidedResult:
    """Decode ``prompts`` (token id lists, ``<bos>`` included) phase by phase; see the module docstring.

    ``eos_id`` ends a row (it should also be in ``phase_end_ids``); a row also stops after
    ``max_phases`` phases or ``max_new_tokens`` tokens (default: up to the model's context).
    ``scorer`` is required when ``num_candidates > 1``.
    """
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
        raise ConfigError(f"phase_guided_decode: num_candidates must be a positive integer, got {num_candidates!r}.")
    if strategy not in ("best_of", "reject"):
        raise ConfigError(f"phase_guided_decode: strategy must be 'best_of' or 'reject', got {strategy!r}.")
    if num_candidates > 1 and scorer is None:
        raise ConfigError("phase_guided_decode: num_candidates > 1 needs a scorer to choose among the candidates.")
    for name, v in (("max_phase_tokens", max_phase_tokens), ("max_phases", max_phases)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"phase_guided_decode: {name} must be a positive integer, got {v!r}.")
    lm = as_causal_lm(lm)
    device = next(lm.parameters()).device
    context = int(lm.max_len)
    longest = max((len(p) for p in prompts), default=0)
    budget = context - longest if max_new_tokens is None else max_new_tokens
    if budget < 1 or longest + budget > context:
        raise ConfigError(f"phase_guided_decode: prompts of up to {longest} tokens + {budget} new tokens exceed the "
                          f"model's context of {context} tokens.")
    end_ids = torch.tensor(sorted(set(int(i) for i in phase_end_ids) | {int(eos_id)}), device=device)
    n = num_candidates
    completions: list[list[int]] = [[] for _ in prompts]
    scores: list[list[float]] = [[] for _ in prompts]
    phases = [0] * len(prompts)
    done = [False] * len(prompts)
    lm_steps = 0
    for _ in range(max_phases):
        rows = [b for b in range(len(prompts)) if not done[b]]
        if not rows:
            break
        cand_rows = [b for b in rows for _ in range(n)]
        c_prompts = [list(prompts[b]) for b in cand_rows]
        c_prefix = [list(completions[b]) for b in cand_rows]
        room = min(max_phase_tokens, min(budget - len(completions[b]) for b in rows))
        phase, hidden, logprob, ended, hidden_mean, low = _sample_phase(
            lm, c_prompts, c_prefix, max_phase_tokens=room, end_ids=end_ids, temperature=temperature, top_k=top_k,
            top_p=top_p, pad_id=pad_id, generator=generator, device=device)
        cands = Candidates(torch.tensor(cand_rows, device=device), c_prompts, c_prefix, phase, hidden, logprob, ended,
                           hidden_mean, low)
        if n == 1:
            score = scorer(cands).float().reshape(-1) if scorer is not None else torch.zeros(len(cand_rows))
            pick = [0] * len(rows)
            lm_steps += sum(len(p) for p in phase)
        else:
            score = scorer(cands).float().reshape(len(rows), n)
            pick = []
            for i in range(len(rows)):
                s = score[i]
                j = int(s.argmax())
                if strategy == "reject":
                    ok = (s >= threshold).nonzero()
                    j = int(ok[0, 0]) if ok.numel() else j
                    spent = range(j + 1) if ok.numel() else range(n)
                else:
                    spent = range(n)
                lm_steps += sum(len(phase[i * n + k]) for k in spent)
                pick.append(j)
            score = score.reshape(-1)
        for i, b in enumerate(rows):
            k = i * n + pick[i]
            completions[b].extend(phase[k])
            scores[b].append(float(score[k]))
            phases[b] += 1
            if (phase[k] and phase[k][-1] == eos_id) or len(completions[b]) >= budget:
                done[b] = True
    return GuidedResult(completions, lm_steps, phases, scores)
