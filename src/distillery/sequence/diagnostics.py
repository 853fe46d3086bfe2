"""Diagnostics of a trained sequence student: error growth along the answer, sample precision and diversity.

These measure what the anchor papers of on-policy distillation claim about their students:

* **Exposure bias** (GKD, Agarwal et al., 2024, arXiv:2306.13649; the train/inference mismatch
  of teacher forcing, Bengio et al., 2015, arXiv:1506.03099): :func:`position_error_rates` is
  the share of greedy completions whose character at answer position ``i`` differs from the
  reference answer's (a missing character counts as an error), for ``i = 1 .. L``; a student
  whose early mistakes derail it shows rates that grow with ``i``. :func:`least_squares_slope`
  is the ordinary least-squares slope of those rates against the position (error rate per
  position).
* **Mode seeking** (MiniLLM, Gu et al., 2024, arXiv:2306.08543: a reverse-KL student gives
  "more precise" answers and puts less mass on the teacher's low-probability regions than a
  forward-KL one): :func:`sample_precision_diversity` draws ``k`` completions per prompt at a
  temperature (1 by default: the student's own distribution) and reports ``precision`` (the
  share the verifier accepts), ``distinct`` (distinct completions per prompt, in ``[1, k]``)
  and ``entropy`` (the mean per-token entropy, in nats, of the sampling distribution at the
  sampled positions).

Everything runs without gradient on the device of the model; greedy decoding draws no random
numbers, and sampling uses a generator seeded by ``seed`` (the same seed gives the same
figures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .tasks import Example

__all__ = ["answer_position_errors", "least_squares_slope", "position_error_rates", "sample_precision_diversity"]


def _device(lm: nn.Module) -> torch.device:
    p = next(lm.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _complete(lm: nn.Module, tok: Any, prompts: Sequence[str], *, max_new_tokens: int, temperature: float,
              batch_size: int, generator: torch.Generator | None = None,
              with_entropy: bool = False) -> tuple[list[str], list[float]]:
    """Decoded completions of ``prompts`` and (``with_entropy``) each one's summed per-token
    entropy and its token count, flattened as ``[sum_0, count_0, sum_1, ...]``."""
    from .sampler import filter_logits, generate
    from .teachers import left_pad

    device = _device(lm)
    was = lm.training
    lm.eval()
    texts: list[str] = []
    entropy: list[float] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            ids, mask = left_pad([tok.encode(p, add_bos=True) for p in chunk], tok.pad_id, device)
            r = generate(lm, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature, eos_id=tok.eos_id,
                         pad_id=tok.pad_id, generator=generator, return_logits=with_entropy)
            texts.extend(tok.decode(row) for row in r.completion.tolist())
            if with_entropy:
                logp = filter_logits(r.logits.reshape(-1, r.logits.shape[-1]), temperature).reshape(r.logits.shape)
                h = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)  # (B, N)
                m = r.completion_mask.to(h.dtype)
                for s, n in zip((h * m).sum(1).tolist(), m.sum(1).tolist()):
                    entropy.extend((s, n))
    finally:
        lm.train(was)
    return texts, entropy


def position_error_rates(lm: nn.Module, tok: Any, examples: Sequence[Example], *, max_new_tokens: int,
                         batch_size: int = 128) -> list[float]:
    """Per answer position ``i`` (0-based in the list), the share of ``examples`` whose greedy
    completion differs from ``example.answer`` at character ``i`` (absent = wrong), over the
    examples whose answer has a character ``i``. Returns ``L`` rates, ``L`` the longest answer."""
    if not examples:
        raise ConfigError("position_error_rates: no examples given.")
    texts, _ = _complete(lm, tok, [e.prompt for e in examples], max_new_tokens=max_new_tokens, temperature=0.0,
                         batch_size=batch_size)
    return answer_position_errors([e.answer for e in examples], texts)


def answer_position_errors(answers: Sequence[str], completions: Sequence[str]) -> list[float]:
    """The rates of :func:`position_error_rates` from given completions (surrounding whitespace
    of a completion is ignored, as the task verifiers do)."""
    if len(answers) != len(completions) or not answers:
        raise ConfigError(f"answer_position_errors: {len(answers)} answers and {len(completions)} completions; "
                          "give the same positive number.")
    length = max(len(a) for a in answers)
    wrong, count = [0] * length, [0] * length
    for answer, got in zip(answers, completions):
        got = got.strip()
        for i, ch in enumerate(answer):
            count[i] += 1
            wrong[i] += int(i >= len(got) or got[i] != ch)
    return [w / c for w, c in zip(wrong, count)]


def least_squares_slope(values: Sequence[float], positions: Sequence[float] | None = None) -> float:
    """The ordinary least-squares slope of ``values`` against ``positions`` (default ``1..n``):
    ``sum (x - mean x)(y - mean y) / sum (x - mean x)^2``. Needs >= 2 distinct positions."""
    ys = [float(v) for v in values]
    xs = [float(i + 1) for i in range(len(ys))] if positions is None else [float(p) for p in positions]
    if len(xs) != len(ys) or len(ys) < 2:
        raise ConfigError(f"least_squares_slope: needs >= 2 values with as many positions, got {len(ys)} and {len(xs)}.")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ConfigError("least_squares_slope: the positions are all equal.")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def sample_precision_diversity(lm: nn.Module, tok: Any, examples: Sequence[Example],
                               verify: Callable[[str, str], tuple[float, str]], *, samples_per_prompt: int = 8,
                               max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                               batch_size: int = 256) -> dict[str, float]:
    """``{"precision", "distinct", "entropy"}`` of ``samples_per_prompt`` sampled completions
    per example (see the module docstring). ``verify(prompt, completion) -> (reward, feedback)``;
    a completion counts as precise when its reward is >= 1."""
    k = int(samples_per_prompt)
    if k < 1 or not examples:
        raise ConfigError(f"sample_precision_diversity: needs examples and samples_per_prompt >= 1, got {len(examples)} "
                          f"examples and {samples_per_prompt}.")
    if temperature <= 0:
        raise ConfigError(f"sample_precision_diversity: temperature must be > 0 (sampling), got {temperature}.")
    prompts = [e.prompt for e in examples for _ in range(k)]
    g = torch.Generator(device=_device(lm)).manual_seed(int(seed))
    texts, ent = _complete(lm, tok, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                           batch_size=batch_size, generator=g, with_entropy=True)
    precise = sum(1 for p, t in zip(prompts, texts) if verify(p, t)[0] >= 1.0)
    distinct = [len({s.strip() for s in texts[i * k:(i + 1) * k]}) for i in range(len(examples))]
    return {"precision": precise / len(texts), "distinct": sum(distinct) / len(distinct),
            "entropy": sum(ent[0::2]) / max(sum(ent[1::2]), 1.0)}
