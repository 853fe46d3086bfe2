"""VC-STaR: self-training on rationales the model writes for contrastive pairs.

Z. Pan, Y. Wu, J. Hua, J. Feng, S. Yan, B. Deng, Z. Cao, J. Ye, 2026, "Through the Lens of
Contrast: Self-Improving Visual Reasoning in VLMs" (ICLR 2026), arXiv:2603.02556. "When
presented with a contrastive VQA pair, i.e., two visually similar images with synonymous
questions, VLMs identify relevant visual cues more precisely ... we propose Visual Contrastive
Self-Taught Reasoner (VC-STaR) ... curate contrastive pairs according to multi-modal similarity,
and generate rationales using VC-STaR ... VisCoR-55K, which is then used to boost the reasoning
capability of various VLMs through supervised finetuning."

**Not really KD.** VC-STaR is self-training: STaR (Zelikman et al., 2022, "STaR: Bootstrapping
Reasoning With Reasoning", arXiv:2203.14465) with contrastive pairs. What in it is
self-distillation: the model is its own teacher, at the sequence level (Kim & Rush, 2016,
arXiv:1606.07947): its sampled rationales, filtered by a verifier, become the targets of its
own supervised fine-tuning; there is no second network and no soft target.

Mechanism, as expressed here (the paper's VLM pipeline also has the model analyse the pair side
by side and an LLM merge that analysis into the rationale; neither is expressed: [inferred]
reduction to STaR's loop with a pair filter):

1. pairs: contrastive pairs ``(x, x')``, near-identical prompts with different answers
   (:meth:`~distillery.sequence.tasks.contrast.ComparisonTask.sample_pairs`, or
   :func:`~distillery.sequence.tasks.contrast.curate_pairs` over a pool);
2. rationales: the current model ``M_{n-1}`` samples a rationale and answer for each prompt of
   each pair (:func:`sample_completions`, temperature ``T``);
3. filter: a pair is kept only when *both* answers are right
   (:func:`~distillery.sequence.tasks.contrast.pair_filter`); plain STaR keeps every right answer
   (:func:`~distillery.sequence.tasks.contrast.star_filter`). A guess that is right half the time
   passes STaR's filter half the time but a pair's filter only a quarter of the time, and when
   the answer ignores the input, never;
4. SFT: cross-entropy on the kept ``(prompt, rationale + answer)`` texts, starting again from the
   base model ``M_0`` as STaR does (:func:`sft_config`, the sequence engine's ``supervised``
   mode with ``divergence.kind: ce``); iterate (STaR rounds).

STaR's rationalization (re-generating failed answers with the answer as a hint) is left out
for both. :func:`base_config` is the rationale pre-training of ``M_0`` on a small seed set
(configs/vc_star_comparison.yaml); :func:`star_round` runs steps 2-3 and writes the JSONL that
:func:`sft_config` trains on; :func:`answer_accuracy` scores a model (greedy) on held-out prompts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..sequence.tasks.contrast import TASK_NAME, ComparisonTask, Sample, filter_precision, pair_filter, star_filter
from ..sequence.tasks import Example
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("vc_star", "Pan et al. 2026, VC-STaR, arXiv:2603.02556", "vc_star_comparison.yaml",
           "Self-training (STaR) on the model's own rationales for contrastive pairs, kept only when both answers are right")
)

MODEL = {"kind": "tiny_gpt", "params": {"dim": 64, "depth": 2, "heads": 4, "max_len": 40}}
"""The miniature's model (a character-level TinyGPT)."""


def comparison_task(digits: int = 6) -> dict[str, Any]:
    """The ``data.task`` section of the comparison task with rationales."""
    return {"name": TASK_NAME, "params": {"digits": digits, "rationale": True}}


def _train(steps: int, lr: float, batch_size: int, max_new_tokens: int) -> dict[str, Any]:
    return {"steps": steps, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "optimizer": {"name": "adamw", "lr": lr}, "scheduler": {"name": "cosine"},
            "progress": False, "tensorboard": False, "checkpoint_every": 10**9, "keep_checkpoints": 1}


def base_config(num_seed: int = 64, steps: int = 300, *, digits: int = 6, lr: float = 3e-3, batch_size: int = 32,
                model: dict[str, Any] | None = None, eval_examples: int = 200) -> dict[str, Any]:
    """``M_0``: cross-entropy on ``num_seed`` reference rationales of the comparison task (the
    seed set STaR starts from), drawn with the run's seed."""
    return {"engine": "sequence", "name": "vc_star_base",
            "data": {"task": comparison_task(digits), "num_train": num_seed},
            "tokenizer": {"kind": "char"}, "student": dict(model or MODEL), "mode": "supervised",
            "divergence": {"kind": "ce"}, "train": _train(steps, lr, batch_size, 3 * digits + 3),
            "eval": {"num_examples": eval_examples}}


def sft_config(base_run: str | Path, data_path: str | Path, eval_path: str | Path, steps: int = 200, *,
               digits: int = 6, lr: float = 1e-3, batch_size: int = 32, eval_examples: int = 200) -> dict[str, Any]:
    """A STaR round's fine-tuning: cross-entropy on the kept rationales (``data_path``, JSONL
    ``prompt``/``completion``), from the base model's weights (``base_run``). ``eval_path``: held-out
    prompts with reference rationales, covering every character of the task (so the run builds
    the base model's vocabulary; the engine's ``accuracy`` is then exact match of the rationale)."""
    return {"engine": "sequence", "name": "vc_star_sft",
            "data": {"path": str(data_path), "eval_path": str(eval_path)},
            "tokenizer": {"kind": "char"}, "student": {"kind": "tiny_gpt", "path": str(Path(base_run) / "student")},
            "mode": "supervised", "divergence": {"kind": "ce"}, "train": _train(steps, lr, batch_size, 3 * digits + 3),
            "eval": {"num_examples": eval_examples}}


# -- generation, filtering, scoring ------------------------------------------------------------
def sample_completions(run_dir: str | Path, prompts: Sequence[str], *, temperature: float, seed: int,
                       max_new_tokens: int, batch_size: int = 256) -> list[str]:
    """The completions a finished sequence run's student writes for ``prompts`` (``temperature``
    0: greedy; else sampled with a generator seeded by ``seed``)."""
    import torch

    from ..sequence.generate import load_run_student
    from ..sequence.teachers import left_pad, rollout

    _, lm, tok = load_run_student(Path(run_dir))
    g = torch.Generator().manual_seed(seed)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad([tok.encode(p, add_bos=True) for p in prompts[start:start + batch_size]], tok.pad_id)
        r = rollout(lm, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature, eos_id=tok.eos_id,
                    pad_id=tok.pad_id, generator=g if temperature > 0 else None)
        out.extend(tok.decode(row) for row in r.completion.tolist())
    return out


def answer_accuracy(run_dir: str | Path, examples: Sequence[Example], task: ComparisonTask) -> dict[str, float]:
    """Greedy completions of ``examples``: ``accuracy`` (right final answer) and ``faithful``
    (the whole rationale right)."""
    prompts = [ex.prompt for ex in examples]
    texts = sample_completions(run_dir, prompts, temperature=0.0, seed=0, max_new_tokens=3 * task.digits + 3)
    n = max(len(prompts), 1)
    return {"accuracy": sum(task.verify(p, t)[0] for p, t in zip(prompts, texts)) / n,
            "faithful": sum(1.0 for p, t in zip(prompts, texts) if task.faithful(p, t)) / n}


def star_round(run_dir: str | Path, pairs: Sequence[tuple[Example, Example]], task: ComparisonTask, *, temperature: float,
               seed: int, samples: list[Sample] | None = None) -> dict[str, Any]:
    """Steps 2-3 of a round: the model of ``run_dir`` writes one rationale per prompt of every
    pair (or ``samples`` given: those, in the same order, e.g. shared by two arms); returns
    ``{"samples", "star", "vc_star"}``: every sample and what each filter keeps."""
    if samples is None:
        prompts = [ex.prompt for pair in pairs for ex in pair]
        texts = sample_completions(run_dir, prompts, temperature=temperature, seed=seed, max_new_tokens=3 * task.digits + 3)
        samples = [Sample(p, t, task.verify(p, t)[0]) for p, t in zip(prompts, texts)]
    paired = list(zip(samples[0::2], samples[1::2]))
    return {"samples": samples, "star": star_filter(samples), "vc_star": pair_filter(paired)}


def round_figures(kept: Sequence[Sample], samples: Sequence[Sample], task: ComparisonTask) -> dict[str, float]:
    """How many samples a filter kept, and the share of them whose whole rationale is right."""
    return {"kept": len(kept), "kept_share": len(kept) / max(len(samples), 1),
            "precision": filter_precision(kept, task.faithful)}


def write_jsonl(path: str | Path, rows: Sequence[Sample | Example]) -> Path:
    """``{"prompt", "completion"}`` lines (a sample's completion, an example's reference answer)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            completion = r.completion.strip() if isinstance(r, Sample) else r.answer
            f.write(json.dumps({"prompt": r.prompt, "completion": completion}) + "\n")
    return path


def write_eval_file(path: str | Path, examples: Sequence[Example], task: ComparisonTask) -> Path:
    """Held-out examples with reference rationales; they must use every character of the task's
    alphabet, so that a JSONL run builds the same character vocabulary as the base model."""
    seen = set("".join(ex.prompt + ex.answer for ex in examples))
    missing = sorted(set(task.alphabet) - seen)
    if missing:
        raise ValueError(f"the eval examples never use {missing}: draw more, or the SFT runs' vocabulary would differ")
    return write_jsonl(path, examples)
