"""PSRD: phase-wise self-reward decoding, its self-evaluation distilled into a small reward model.

Y. Zhang, C. Sun, K. Chen, X. Bai, Y. Xiang, M. Zhang, 2026, "Mitigating Multimodal
Hallucination via Phase-wise Self-reward", arXiv:2604.17982. "We reveal that visual
hallucination exhibits phase-wise dynamic patterns, peaking at the onset of each semantic phase
... we propose PSRD (Phase-wise Self-Reward Decoding) for online hallucination correction guided
by phase-wise self-reward signals. To reduce the cost of repeated self-evaluation during
decoding, we distill the hallucination guidance signal from LVLMs into a lightweight reward
model. The reward model subsequently provides on-the-fly guidance for targeted intervention
during the decoding process." The paper reports that PSRD "reduces the hallucination rate of
LLaVA-1.5-7B by 50.0%".

The mechanism, as expressed here (the abstract gives no formulas; what follows is [inferred]):

1. **Phases.** A caption is decoded phase by phase (one clause each;
   :func:`distillery.sequence.guided.phase_guided_decode`).
2. **Self-evaluation** (:class:`SelfEvaluation`). The model judges a phase ``a`` (after the prefix
   ``y``) by its own likelihoods, with and without the input: the pointwise mutual information

       s(a) = log p(a | scene, y) - log p(a | no scene, y),

   the "is this phrase supported by the input?" check an LM can make of itself (the no-image
   contrast of visual contrastive decoding, Leng et al., 2024, arXiv:2311.16922). The scene-free
   distribution is the same model's: its training data withholds the scene from a share of the
   examples (:class:`~distillery.sequence.tasks.captions.CaptionTask`'s ``blank``). No verifier or
   ground truth enters the self-evaluation; the procedural ground truth only *measures*.
   A phase's self-reward label is ``y = 1[s > tau]`` (or ``sigmoid(s - tau)``, soft).
3. **Distillation** (:func:`collect_self_rewards`, :func:`distill_reward_model`). The model
   samples captions of training scenes; each phase is self-evaluated (one extra LM pass per
   phase, in the scene-free context) and labelled; a
   :class:`~distillery.sequence.reward_head.RewardHead` (an MLP on what the decoder computed
   for the phase anyway: the hidden state at its last token, the mean hidden state over its
   tokens, and its summed and lowest token log-probabilities,
   :func:`~distillery.sequence.guided.phase_features`) is fitted to the labels with BCE.
4. **Guided decoding** (:func:`psrd_decode`). At the start of each phase, sample ``N``
   candidates and keep the one the reward model scores highest (``best_of``), or the first it
   accepts (``reject``, threshold ``sigmoid(r) >= 0.5``). The reward head reads features
   the decoder computes anyway, so guidance costs the ``N`` candidates' decoding steps but no
   self-evaluation pass.

:func:`base_captioner_config` is the config of the captioner (a tiny GPT fine-tuned on noisy
captions, ``configs/psrd_captions.yaml``); the distillation and decoding steps are functions of
this module, run on the finished run's student (``distillery reproduce psrd``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..sequence.guided import (
    Candidates,
    GuidedResult,
    head_scorer,
    likelihood_scorer,
    phase_features,
    phase_guided_decode,
)
from ..sequence.reward_head import RewardHead, fit_reward_head
from ..sequence.teachers import completion_logits, left_pad
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("psrd", "Zhang et al. 2026, PSRD, arXiv:2604.17982", "psrd_captions.yaml",
           "Phase-wise self-evaluation (likelihood with vs without the input) distilled into an MLP reward head "
           "on the LM's hidden states, which picks among sampled candidates at the start of each phase")
)

TASK = "distillery.sequence.tasks.captions:CaptionTask"
"""The captions task as a config names it (``data.task.name``)."""

__all__ = [
    "TASK",
    "SelfEvaluation",
    "base_captioner_config",
    "caption_task",
    "collect_self_rewards",
    "distill_reward_model",
    "psrd_decode",
    "self_reward_labels",
]


def caption_task(**params: Any) -> dict[str, Any]:
    """The ``data.task`` section of the captions task (params as in :class:`CaptionTask`)."""
    return {"name": TASK, "params": dict(params)}


def base_captioner_config(*, steps: int = 1500, num_train: int = 4000, task: dict[str, Any] | None = None,
                          dim: int = 64, depth: int = 2, lr: float = 3e-3, batch_size: int = 64) -> dict[str, Any]:
    """A sequence config (without ``seed``/``name``) that fine-tunes a tiny GPT on noisy captions
    (cross-entropy): the model whose self-evaluation PSRD distils."""
    return {
        "engine": "sequence",
        "data": {"task": task or caption_task(), "num_train": num_train},
        "tokenizer": {"kind": "char"},
        "student": {"kind": "tiny_gpt", "params": {"dim": dim, "depth": depth, "heads": 4, "max_len": 32}},
        "mode": "supervised",
        "divergence": {"kind": "ce"},
        "train": {"steps": steps, "batch_size": batch_size, "max_new_tokens": 10,
                  "optimizer": {"name": "adamw", "lr": lr}, "scheduler": {"name": "cosine"},
                  "progress": False, "tensorboard": False, "checkpoint_every": 10**9, "keep_checkpoints": 1},
        "eval": {"num_examples": 200},
    }


class SelfEvaluation:
    """The model's self-evaluation of candidate phases: ``s = log p(a | input, y) - log p(a | ref, y)``.

    ``reference_prompt``: the token ids of the input-free prompt (``<bos>`` included), here the
    captions task's blank prompt ``"="``. Called as a scorer of
    :func:`~distillery.sequence.guided.phase_guided_decode` it returns ``s`` ``(M,)`` and counts
    the LM decoding steps it spends (``lm_steps``: the candidates' tokens, fed once more in the
    reference context). With ``record=True`` it keeps every candidate it saw
    (``records``: features, score, prompt/prefix/phase ids) for distillation.
    """

    def __init__(self, lm: nn.Module, reference_prompt: Sequence[int], pad_id: int, record: bool = False) -> None:
        self.lm, self.reference, self.pad_id, self.record = lm, list(reference_prompt), pad_id, record
        self.lm_steps = 0
        self.records: list[dict[str, Any]] = []

    @torch.no_grad()
    def reference_logprob(self, prefixes: Sequence[Sequence[int]], phases: Sequence[Sequence[int]]) -> Tensor:
        """``log p(phase | reference prompt, prefix)`` ``(M,)`` (float64)."""
        device = next(self.lm.parameters()).device
        ids, mask = left_pad([self.reference + list(p) for p in prefixes], self.pad_id, device)
        width = max(1, max(len(a) for a in phases))
        comp = torch.full((len(phases), width), self.pad_id, dtype=torch.long, device=device)
        cmask = torch.zeros(len(phases), width, dtype=torch.bool, device=device)
        for i, a in enumerate(phases):
            comp[i, :len(a)] = torch.tensor(a, dtype=torch.long)
            cmask[i, :len(a)] = True
        logits = completion_logits(self.lm, ids, mask, comp, cmask).double().log_softmax(-1)
        lp = logits.gather(2, comp[..., None])[..., 0]
        return torch.where(cmask, lp, torch.zeros_like(lp)).sum(1)

    def __call__(self, c: Candidates) -> Tensor:
        ref = self.reference_logprob(c.prefix, c.phase)
        self.lm_steps += sum(len(a) for a in c.phase)
        score = c.logprob.double().cpu() - ref.cpu()
        if self.record:
            feats = phase_features(c).detach().cpu()
            for i in range(len(c.phase)):
                self.records.append({"features": feats[i], "score": float(score[i]),
                                     "prompt": c.prompt[i], "prefix": c.prefix[i], "phase": c.phase[i]})
        return score


def self_reward_labels(scores: Tensor, tau: float = 0.0, soft: bool = False) -> Tensor:
    """Self-reward labels from self-evaluation scores ``(M,)``: ``1[s > tau]`` or ``sigmoid(s - tau)``."""
    s = scores.double()
    return torch.sigmoid(s - tau).float() if soft else (s > tau).float()


def collect_self_rewards(lm: nn.Module, tok: Any, prompts: Sequence[str], *, reference_prompt: str = "=", delimiter: str = ",",
                         temperature: float = 1.0, max_phase_tokens: int = 4, max_phases: int = 6,
                         generator: torch.Generator | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Sample the model's own captions of ``prompts`` and self-evaluate every phase (phases end
    with the ``delimiter`` text's token(s) or EOS).

    Returns ``{"features": (M, 2H + 2) (:func:`~distillery.sequence.guided.phase_features`), "score": (M,), "prompt": [str], "prefix": [str], "phase": [str],
    "lm_steps": int}``, one entry per decoded phase (``lm_steps``: the self-evaluation's cost).
    """
    judge = SelfEvaluation(lm, tok.encode(reference_prompt, add_bos=True), tok.pad_id, record=True)
    for start in range(0, len(prompts), batch_size):
        chunk = [tok.encode(p, add_bos=True) for p in prompts[start:start + batch_size]]
        phase_guided_decode(lm, chunk, phase_end_ids=tok.encode(delimiter),
                            eos_id=tok.eos_id, pad_id=tok.pad_id, scorer=judge, num_candidates=1,
                            temperature=temperature, max_phase_tokens=max_phase_tokens, max_phases=max_phases,
                            generator=generator)
    recs = judge.records
    bos = 1 if recs and recs[0]["prompt"][:1] == [tok.bos_id] else 0
    return {
        "features": torch.stack([r["features"] for r in recs]) if recs else torch.zeros(0, 0),
        "score": torch.tensor([r["score"] for r in recs], dtype=torch.float64),
        "prompt": [tok.decode(r["prompt"][bos:]) for r in recs],
        "prefix": [tok.decode(r["prefix"]) for r in recs],
        "phase": [tok.decode(r["phase"]) for r in recs],
        "lm_steps": judge.lm_steps,
    }


def distill_reward_model(data: dict[str, Any], *, tau: float = 0.0, soft: bool = False, hidden: int = 64,
                         steps: int = 400, lr: float = 3e-3, seed: int = 0) -> RewardHead:
    """Fit the lightweight reward model to the self-reward labels of :func:`collect_self_rewards`."""
    targets = self_reward_labels(data["score"], tau, soft)
    return fit_reward_head(data["features"], targets, hidden=hidden, steps=steps, lr=lr, seed=seed)


def psrd_decode(lm: nn.Module, tok: Any, prompts: Sequence[str], *, scorer: Any = None, head: nn.Module | None = None,
                num_candidates: int = 4, strategy: str = "best_of", threshold: float = 0.0, temperature: float = 1.0,
                max_phase_tokens: int = 4, max_phases: int = 6, delimiter: str = ",",
                generator: torch.Generator | None = None, batch_size: int = 256) -> tuple[list[str], int]:
    """Captions of ``prompts`` decoded phase by phase, guided by ``head`` (a reward model; default
    scorer) or any ``scorer`` (e.g. :func:`~distillery.sequence.guided.likelihood_scorer`,
    a :class:`SelfEvaluation`); ``num_candidates=1`` is plain sampling. Returns the caption texts
    (EOS removed) and the LM decoding steps spent."""
    if scorer is None and head is not None:
        scorer = head_scorer(head)
    texts: list[str] = []
    steps = 0
    for start in range(0, len(prompts), batch_size):
        chunk = [tok.encode(p, add_bos=True) for p in prompts[start:start + batch_size]]
        res: GuidedResult = phase_guided_decode(
            lm, chunk, phase_end_ids=tok.encode(delimiter), eos_id=tok.eos_id, pad_id=tok.pad_id, scorer=scorer,
            num_candidates=num_candidates, strategy=strategy, threshold=threshold, temperature=temperature,
            max_phase_tokens=max_phase_tokens, max_phases=max_phases, generator=generator)
        steps += res.lm_steps
        texts += [tok.decode([t for t in row if t != tok.eos_id]) for row in res.completions]
    return texts, steps


likelihood = likelihood_scorer
"""Best-of-N by the model's own likelihood (re-exported for the reproduction)."""
