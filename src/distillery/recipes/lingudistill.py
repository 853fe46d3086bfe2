"""LinguDistill: recover an adapted model's language ability from its own pre-adaptation self.

"LinguDistill: Recovering Linguistic Ability in Vision-Language Models via Selective
Cross-Modal Distillation" (2026; the seed listing gives no authors or arXiv id). "We propose
LinguDistill, an adapter-free distillation method that restores linguistic capability by
utilizing the original frozen LM as a teacher ... We then selectively distill the teacher's
strong linguistic signal on language-intensive data to recover language capability, while
preserving the student's visual grounding on multimodal tasks. As a result, LinguDistill
recovers ~10% of the performance lost on language and knowledge benchmarks, while
maintaining comparable performance on vision-heavy tasks."

Wiring in distillery:

* teacher: :class:`~distillery.teachers.FrozenTeacher` holding the LM as it was before the
  adaptation to images (the same architecture, so its token logits align with the student's);
* data router: the student's ``language`` signal (True for samples without an image) gates
  the ``routed_kd`` term (:class:`~distillery.objectives.routed.RoutedTokenKD`, token-level
  ``KL(teacher || student)`` on routed samples' text positions), computed by the sequence
  engine: :func:`distillery.sequence.divergences.token_divergence` with the router as its
  token mask (:func:`distillery.sequence.vlm.routed_token_divergence`);
* the language head as a causal LM: :func:`distillery.sequence.vlm.language_lm` gives a
  ``tiny_lm`` (or a Hugging Face language model) the sequence engine's contract
  ``input_ids -> LMOutput``, and :func:`distillery.sequence.vlm.language_kd_loss` is the same
  KD written against that contract only (the path for a Hugging Face VLM's language head);
* the usual next-token cross-entropy (``ce`` on ``student.tokens`` vs ``student.targets``)
  stays on every sample, so multimodal samples keep their captioning loss.

Simplified: the paper's layer-wise KV-cache sharing, which lets the text-only teacher attend
to the student's image positions on multimodal samples, is left out. Here KD is routed only to
language-only samples, where the teacher sees exactly the student's input and needs no visual
context, so no KV is shared.

Stages (``distillery reproduce lingudistill`` runs them): pre-train the LM on the grammar;
adapt it to captions of digit images (the language perplexity rises); recover with
LinguDistill (or with replay, plain cross-entropy on the same mixture). Config (stage 3):
``configs/lingudistill_grammar.yaml``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.distiller import Distiller, Term
from ..errors import ConfigError
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("lingudistill", "LinguDistill (2026), selective cross-modal distillation", "lingudistill_grammar.yaml",
           "The frozen pre-adaptation LM teaches the adapted model on language-only data (routed token KD)")
)

__all__ = ["RECIPE", "caption_accuracy", "language_perplexity", "lingudistill_config", "lingudistill_distiller", "lm_objective",
           "lm_term", "recovered_fraction"]

LM_INPUTS = {"student": "student.tokens", "target": "student.targets"}


def lm_objective(weight: float = 1.0) -> dict[str, Any]:
    """``lm``: next-token cross-entropy on every text position (targets ``-1`` are skipped), as
    one ``objectives`` entry."""
    return {"kind": "ce", "name": "lm", "weight": weight, "inputs": dict(LM_INPUTS)}


def lingudistill_config(temperature: float = 1.0, kd_weight: float = 1.0) -> dict[str, Any]:
    """The recovery stage's ``objectives``: :func:`lm_objective` on all samples + ``routed_kd``
    toward the teacher (the frozen pre-adaptation LM, to add as ``teacher``) on the samples the
    router marks as language-only."""
    return {"objectives": [lm_objective(), {"kind": "routed_kd", "params": {"temperature": temperature}, "weight": kd_weight}]}


def lm_term(weight: float = 1.0) -> Term:
    """Next-token cross-entropy on every text position (targets ``-1`` are skipped)."""
    return terms_from([lm_objective(weight)])[0]


def lingudistill_distiller(student: nn.Module, pre_adaptation_lm: nn.Module, temperature: float = 1.0,
                           kd_weight: float = 1.0) -> Distiller:
    """Cross-entropy on all samples + token KD toward the frozen pre-adaptation LM on the
    samples the router marks as language-only (:func:`lingudistill_config`). ``student`` and
    ``pre_adaptation_lm`` are ``tiny_lm`` models (or any model returning ``tokens``, ``targets``
    and ``language``)."""
    return Distiller(student, FrozenTeacher(pre_adaptation_lm), terms_from(lingudistill_config(temperature, kd_weight)["objectives"]))


@torch.no_grad()
def language_perplexity(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> float:
    """``exp`` of the mean next-token NLL over all counted text positions of ``x`` (packed
    samples ``[N, 1 + F + L]``, normally language-only windows)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, x.shape[0], batch_size):
            out = model(x[i:i + batch_size])
            keep = out["targets"] >= 0
            nll = F.cross_entropy(out["tokens"][keep].double(), out["targets"][keep], reduction="sum")
            total, count = total + float(nll), count + int(keep.sum())
    finally:
        model.train(was)
    return math.exp(total / max(count, 1))


@torch.no_grad()
def caption_accuracy(model: nn.Module, x: torch.Tensor, answer_position: int | None = None) -> float:
    """The new-task metric: how often the caption's digit word (token ``answer_position``,
    predicted at position ``answer_position - 1``) is the arg-max. ``x``: captions ``[N, ...]``."""
    from ..data.miniature.language import ANSWER_POSITION, unpack_multimodal

    pos = ANSWER_POSITION if answer_position is None else answer_position
    was = model.training
    model.eval()
    try:
        out = model(x)
        tokens = unpack_multimodal(x, getattr(model, "image_features", 64))[2]
        return float((out["tokens"][:, pos - 1].argmax(-1) == tokens[:, pos]).float().mean())
    finally:
        model.train(was)


def recovered_fraction(ppl_original: float, ppl_adapted: float, ppl_recovered: float) -> float:
    """``(ppl_adapted - ppl_recovered) / (ppl_adapted - ppl_original)``: the share of the
    perplexity lost in adaptation that comes back (1 = all of it, 0 = none, < 0 = worse)."""
    lost = ppl_adapted - ppl_original
    if not lost > 0:
        raise ConfigError(f"Adaptation did not raise the perplexity ({ppl_original:.4g} -> {ppl_adapted:.4g}); "
                          "there is nothing to recover.")
    return (ppl_adapted - ppl_recovered) / lost
