"""Contrastive pairs for self-training: a comparison task with rationales, a pair curator and
the two rationale filters (STaR's and VC-STaR's).

VC-STaR (Pan et al., 2026, "Through the Lens of Contrast: Self-Improving Visual Reasoning in
VLMs", arXiv:2603.02556) builds *contrastive pairs*, two near-identical inputs with different
answers, has the model write a rationale for each, and keeps only what survives a filter
before fine-tuning on it (STaR's loop, Zelikman et al., 2022, arXiv:2203.14465). The parts:

* :class:`ComparisonTask` (registered in :data:`~distillery.sequence.tasks.TASKS` as
  ``comparison``; a config names it ``distillery.sequence.tasks.contrast:ComparisonTask``): which of
  two ``digits``-digit numbers is larger. ``"472103?478122:"`` -> ``"44 77 28 <"``: the
  rationale lists the digit pairs from the left up to the first pair that differs, then the
  answer (``<`` or ``>``). The first differing position is uniform over the digits, so every
  rationale length is as common. The verifier (STaR's) looks at the final answer only: the
  last non-space character of the completion; :meth:`ComparisonTask.faithful` also checks the
  rationale (exact match with the reference).
* :meth:`ComparisonTask.sample_pairs`: contrastive pairs drawn directly: the same ``a`` and two
  ``b`` that differ in one digit, the first position where they differ from ``a``, one above
  and one below ``a``'s digit, so the answers differ (``<`` and ``>``).
* :func:`curate_pairs`: the pair curator over an unpaired pool (the paper curates pairs by
  similarity): prompts at Hamming distance 1 whose answers differ, matched greedily.
* :func:`star_filter` (keep a sample whose answer is right) and :func:`pair_filter` (keep a
  pair's two samples only when both answers are right: VC-STaR's filter as expressed here).

A sample is a :class:`Sample` ``(prompt, completion, reward)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ...errors import ConfigError, DataError
from . import TASKS, Example, Task, _positive_int, _randint

__all__ = ["TASK_NAME", "ComparisonTask", "Sample", "curate_pairs", "filter_precision", "pair_filter", "star_filter"]

TASK_NAME = "distillery.sequence.tasks.contrast:ComparisonTask"
"""How a config's ``data.task.name`` names :class:`ComparisonTask`."""


@dataclass(frozen=True)
class Sample:
    """One generated completion of a prompt and the verifier's reward (1.0 right, 0.0 wrong)."""

    prompt: str
    completion: str
    reward: float


class ComparisonTask(Task):
    """``a?b:`` with ``a != b`` written on ``digits`` digits -> the rationale and ``<`` / ``>``
    (``rationale=False``: the answer alone); see the module docstring."""

    name = "comparison"
    alphabet = " 0123456789:<>?"  # sorted: a JSONL run that sees every character builds the same vocabulary

    def __init__(self, digits: int = 6, rationale: bool = True) -> None:
        self.digits = _positive_int("digits", digits, self.name, 1, 32)
        if not isinstance(rationale, bool):
            raise ConfigError(f"task {self.name}: rationale must be true or false, got {rationale!r}.")
        self.rationale = rationale

    # -- sampling --------------------------------------------------------------------------
    def sample_pairs(self, n: int, generator: torch.Generator | None = None) -> list[tuple[Example, Example]]:
        """``n`` contrastive pairs ``(a?b_hi: -> ...<, a?b_lo: -> ...>)``: ``b_hi`` and ``b_lo`` differ
        in one digit, at the first position ``i`` (uniform) where they differ from ``a``."""
        _positive_int("n", n, self.name)
        out = []
        for _ in range(n):
            a, hi, lo = self._triple(generator)
            out.append((self._example(a, hi), self._example(a, lo)))
        return out

    def _triple(self, generator) -> tuple[str, str, str]:
        k = self.digits
        i = _randint(k, generator)[0]
        prefix = _randint(10, generator, i) if i else []
        d = 1 + _randint(8, generator)[0]  # a's digit at i in 1..8, so one digit above and one below exist
        hi = d + 1 + _randint(9 - d, generator)[0]
        lo = _randint(d, generator)[0]
        rest = k - i - 1
        a_tail = _randint(10, generator, rest) if rest else []
        b_tail = _randint(10, generator, rest) if rest else []
        join = lambda xs: "".join(map(str, xs))  # noqa: E731
        return (join([*prefix, d, *a_tail]), join([*prefix, hi, *b_tail]), join([*prefix, lo, *b_tail]))

    def _example(self, a: str, b: str) -> Example:
        prompt = f"{a}?{b}:"
        return Example(prompt, self.answer(prompt))

    def _prompt(self, generator) -> str:
        a, hi, lo = self._triple(generator)
        return f"{a}?{hi if _randint(2, generator)[0] == 0 else lo}:"

    # -- answers and verification -----------------------------------------------------------
    def _operands(self, prompt: str) -> tuple[str, str]:
        m = self._parse(rf"(\d{{{self.digits}}})\?(\d{{{self.digits}}}):", prompt)
        a, b = m.group(1), m.group(2)
        if a == b:
            raise DataError(f"task {self.name}: {prompt!r} compares a number with itself.")
        return a, b

    def truth(self, prompt: str) -> str:
        """``"<"`` if ``a < b`` else ``">"``."""
        a, b = self._operands(prompt)
        return "<" if int(a) < int(b) else ">"

    def answer(self, prompt: str) -> str:
        a, b = self._operands(prompt)
        sym = "<" if int(a) < int(b) else ">"
        if not self.rationale:
            return sym
        i = next(j for j in range(self.digits) if a[j] != b[j])
        return " ".join(a[j] + b[j] for j in range(i + 1)) + " " + sym

    def verify(self, prompt: str, completion: str) -> tuple[float, str]:
        """Reward 1 when the completion's last non-space character is the right answer (the
        rationale is not checked: STaR's answer filter)."""
        want = self.truth(prompt)
        got = completion.strip()[-1:]
        if got == want:
            return 1.0, "correct"
        if got not in ("<", ">"):
            return 0.0, f"no answer: the completion should end with '<' or '>', expected {want!r}"
        return 0.0, f"wrong answer: expected {want!r}, got {got!r}"

    def faithful(self, prompt: str, completion: str) -> bool:
        """Whether the whole completion (rationale and answer) is the reference one."""
        return completion.strip() == self.answer(prompt)


TASKS["comparison"] = ComparisonTask


# -- curation and filters --------------------------------------------------------------------
def curate_pairs(examples: Sequence[Example], label: Callable[[Example], str]) -> list[tuple[int, int]]:
    """Contrastive pairs from an unpaired pool: index pairs ``(i, j)``, ``i < j``, of prompts of
    the same length at Hamming distance 1 whose ``label`` differs, matched greedily in pool order
    (each example in at most one pair). Runs in ``O(n * L)`` with one bucket per masked position."""
    buckets: dict[tuple[int, str], list[int]] = {}
    for idx, ex in enumerate(examples):
        p = ex.prompt
        for pos in range(len(p)):
            buckets.setdefault((pos, p[:pos] + "\0" + p[pos + 1:]), []).append(idx)
    used: set[int] = set()
    pairs = []
    for idx, ex in enumerate(examples):
        if idx in used:
            continue
        p = ex.prompt
        for pos in range(len(p)):
            partner = next((j for j in buckets[(pos, p[:pos] + "\0" + p[pos + 1:])]
                            if j != idx and j not in used and examples[j].prompt != p and label(examples[j]) != label(ex)), None)
            if partner is not None:
                used.update((idx, partner))
                pairs.append((min(idx, partner), max(idx, partner)))
                break
    return sorted(pairs)


def star_filter(samples: Sequence[Sample]) -> list[Sample]:
    """STaR's filter: the samples whose answer is right (reward >= 1)."""
    return [s for s in samples if s.reward >= 1.0]


def pair_filter(pairs: Sequence[tuple[Sample, Sample]]) -> list[Sample]:
    """VC-STaR's filter: both samples of a contrastive pair, only when both answers are right."""
    return [s for first, second in pairs if first.reward >= 1.0 and second.reward >= 1.0 for s in (first, second)]


def filter_precision(kept: Sequence[Sample], faithful: Callable[[str, str], bool]) -> float:
    """The share of kept samples whose whole rationale is right (``nan`` when nothing is kept)."""
    if not kept:
        return float("nan")
    return sum(1.0 for s in kept if faithful(s.prompt, s.completion)) / len(kept)
