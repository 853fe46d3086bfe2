"""SD-Zero: one model as generator and reviser; the reviser's token distributions, conditioned on
the generator's response and its binary reward, distilled on-policy into the generator.

Y. He, S. Kaur, A. Bhaskar, Y. Yang, J. Liu, N. Ri, L. Fowl, A. Panigrahi, D. Chen, S. Arora,
2026, "Self-Distillation Zero: Self-Revision Turns Binary Rewards into Dense Supervision",
arXiv:2604.12002. "SD-Zero trains a single model to play two roles: a Generator, which produces
an initial response, and a Reviser, which conditions on that response and its binary reward to
produce an improved response. We then perform on-policy self-distillation to distill the
reviser into the generator, using the reviser's token distributions conditioned on the
generator's response and its reward as supervision." Reported: "improves performance by at
least 10% over the base models" and beats RFT, GRPO and SDFT "under the same question set and
training sample budget"; ablations show "token-level self-localization" and "iterative
self-evolution ... with regular teacher synchronization".

Mechanism, per prompt ``x`` (the sequence engine's parts; [inferred] where the abstract is silent):

* the generator samples ``y ~ p_theta(. | x)`` (``mode: on_policy``); the verifier gives
  ``r in {0, 1}`` (the task's ``verify``);
* the reviser is the same weights ``theta'`` (``teacher.sync: hard_copy`` every ``every`` steps,
  or ``live``), reading ``c = x + y + mark(r)``
  (:func:`~distillery.sequence.tasks.revision.reviser_prompt`; no reference answer);
* the loss is the token-level divergence over the full vocabulary along the generator's own
  tokens, ``sum_t D(p_theta(. | x, y_<t), p_theta'(. | c, y_<t))``, divided by the number of
  response tokens; ``D`` is the reverse KL by default [inferred: the abstract says "token
  distributions ... as supervision", not which direction].

The base model must already play both roles: :func:`base_config` fine-tunes a tiny GPT on
:class:`~distillery.sequence.tasks.revision.RevisionAdditionTask` (generator and reviser examples
mixed), the miniature's stand-in for the paper's self-revision training [inferred].

The baseline, rejection-sampling fine-tuning (RFT): :func:`rejection_sample` draws ``k``
responses per question with the sampler and keeps the verified-correct ones;
:func:`run_rft` fine-tunes (cross-entropy) on that kept set through the engine's supervised
loop. Self-localisation: :func:`token_gaps` and :func:`self_localisation` measure, on wrong
responses, where the per-token log-prob gap between generator and reviser peaks.

Configs: ``configs/sd_zero_base.yaml`` (the base) and ``configs/sd_zero_addition.yaml``
(SD-Zero from it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..sequence.tasks.revision import REVISER_PROMPT, task_spec
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("sd_zero", "He et al. 2026, SD-Zero, arXiv:2604.12002", "sd_zero_addition.yaml",
           "One model as generator and reviser; the reviser (prompt + response + binary reward) distilled on-policy")
)

#: The miniature's model: a tiny GPT whose context holds the reviser's prompt and a response.
MODEL = {"kind": "tiny_gpt", "params": {"dim": 64, "depth": 2, "heads": 4, "max_len": 24}}


def _train(steps: int, batch_size: int, lr: float, max_new_tokens: int, **extra: Any) -> dict[str, Any]:
    out = {"steps": steps, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
           "optimizer": {"name": "adamw", "lr": lr}, "progress": False, "tensorboard": False,
           "checkpoint_every": 10**9, "keep_checkpoints": 1}
    out.update(extra)
    return out


def base_config(*, digits: int = 3, steps: int = 1200, revise: float = 0.5, batch_size: int = 64, lr: float = 3e-3,
                num_train: int = 20000, seed: int = 0, name: str = "sd_zero_base") -> dict[str, Any]:
    """The base: plain fine-tuning (cross-entropy) on generator and reviser examples
    (``revise`` the reviser share), stopped early so that the generator is partially right."""
    return {"engine": "sequence", "name": name, "seed": seed,
            "data": {"task": task_spec(digits=digits, reverse=True, revise=revise), "num_train": num_train},
            "tokenizer": {"kind": "char"}, "student": dict(MODEL), "mode": "supervised", "divergence": {"kind": "ce"},
            "train": _train(steps, batch_size, lr, digits + 2), "eval": {"num_examples": 500}}


def _from_base(base_student: str, digits: int, num_questions: int, name: str) -> dict[str, Any]:
    return {"engine": "sequence", "name": name,
            "data": {"task": task_spec(digits=digits, reverse=True, revise=0.0), "num_train": num_questions},
            "tokenizer": {"kind": "char"}, "student": {"kind": "tiny_gpt", "path": str(base_student)},
            "eval": {"num_examples": 500}}


def sd_zero_config(base_student: str, *, digits: int = 3, steps: int = 200, batch_size: int = 64,
                   num_questions: int = 2000, sync: str = "hard_copy", every: int = 25, divergence: str = "reverse_kl",
                   lr: float = 1e-3, temperature: float = 1.0, name: str = "sd_zero") -> dict[str, Any]:
    """SD-Zero from the base model in ``base_student`` (a ``save_lm`` directory): on-policy,
    the teacher the student's own weights (``sync``: ``hard_copy`` every ``every`` steps, or
    ``live``) reading the reviser prompt; ``steps * batch_size`` generator samples."""
    if sync not in ("hard_copy", "live"):
        from ..errors import ConfigError

        raise ConfigError(f"sd_zero_config: sync must be 'hard_copy' or 'live' (the reviser is the generator's own "
                          f"weights), got {sync!r}.")
    raw = _from_base(base_student, digits, num_questions, name)
    raw.update(mode="on_policy", teacher={"sync": sync, "every": every, "privileged": {"prompt": REVISER_PROMPT}},
               divergence={"kind": divergence, "temperature": 1.0},
               train=_train(steps, batch_size, lr, digits + 2, temperature=temperature))
    return raw


def rft_config(base_student: str, *, digits: int = 3, steps: int = 200, batch_size: int = 64,
               num_questions: int = 2000, lr: float = 1e-3, name: str = "rft") -> dict[str, Any]:
    """The supervised run of RFT (cross-entropy from the base) whose training set
    :func:`run_rft` replaces by the kept set; ``num_questions`` the question set it samples."""
    raw = _from_base(base_student, digits, num_questions, name)
    raw.update(mode="supervised", divergence={"kind": "ce"}, train=_train(steps, batch_size, lr, digits + 2))
    return raw


# --------------------------------------------------------------------------------------
# RFT
# --------------------------------------------------------------------------------------


@torch.no_grad()
def rejection_sample(lm: torch.nn.Module, tok: Any, prompts: list[list[int]], examples: list[Any], verify: Any, *,
                     k: int, temperature: float, max_new_tokens: int, seed: int,
                     batch_size: int = 256) -> tuple[list[int], list[list[int]], dict[str, float]]:
    """RFT's data: ``k`` sampled responses per question (``prompts``: token ids with BOS,
    ``examples``: their task examples), kept when ``verify`` gives reward 1. Returns the
    question index of each kept response, its tokens (up to and including EOS) and
    ``{"samples", "kept", "questions_solved"}``."""
    from ..sequence.teachers import left_pad, rollout

    g = torch.Generator().manual_seed(int(seed))
    index, kept = [], []
    solved = set()
    flat = [i for i in range(len(prompts)) for _ in range(k)]
    for start in range(0, len(flat), batch_size):
        rows = flat[start:start + batch_size]
        ids, mask = left_pad([prompts[i] for i in rows], tok.pad_id)
        r = rollout(lm, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature, eos_id=tok.eos_id,
                    pad_id=tok.pad_id, generator=g)
        for i, row, m in zip(rows, r.completion.tolist(), r.completion_mask.tolist()):
            body = [t for t, keep in zip(row, m) if keep]
            if verify(examples[i].prompt, tok.decode(body))[0] >= 1.0:
                index.append(i)
                kept.append(body)
                solved.add(i)
    stats = {"samples": float(len(flat)), "kept": float(len(kept)), "questions_solved": float(len(solved))}
    return index, kept, stats


def fine_tune_on(raw: dict[str, Any], out: Path, examples: list[Any], completions: list[list[int]] | None = None,
                 notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """A supervised run of ``raw`` (cross-entropy) into ``out`` whose training set is ``examples``
    (their ``answer`` + EOS as completions, or the token lists ``completions``) instead of the
    task's draw; the eval set stays the task's. ``out/train.jsonl`` lists the set; ``notes``
    are added to the summary."""
    from ..engine import checkpoint as ckpt
    from ..engine.trainer import seed_everything
    from ..errors import ConfigError
    from ..sequence.config import parse_sequence_config
    from ..sequence.run import build_sequence, dump_sequence_config
    from ..sequence.trainer import SequenceTrainer

    if not examples:
        raise ConfigError("fine_tune_on: the training set is empty.")
    if raw["train"]["batch_size"] > len(examples):
        raw = dict(raw, train=dict(raw["train"], batch_size=len(examples)))
    cfg = parse_sequence_config(raw, f"{out} config")
    seed_everything(cfg.seed)
    built = build_sequence(cfg)
    tok = built.tokenizer
    built.train = list(examples)
    built.prompts = [tok.encode(ex.prompt, add_bos=True) for ex in examples]
    built.completions = ([tok.encode(ex.answer) + [tok.eos_id] for ex in examples] if completions is None
                         else [list(c) for c in completions])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(out / "config.yaml", dump_sequence_config(cfg))
    with open(out / "train.jsonl", "w") as fh:
        fh.writelines(json.dumps({"prompt": ex.prompt, "completion": tok.decode(body)}) + "\n"
                      for ex, body in zip(built.train, built.completions))
    summary = SequenceTrainer(cfg, built, out).fit()
    summary.update(notes or {})
    ckpt.atomic_write_json(out / "summary.json", summary)
    return summary


def run_rft(raw: dict[str, Any], out: Path, *, k: int, temperature: float = 1.0) -> dict[str, Any]:
    """Rejection-sampling fine-tuning: build ``raw`` (:func:`rft_config`), sample ``k``
    responses per training question with the base (the run's student before training), keep
    the verified-correct ones and fine-tune on them (:func:`fine_tune_on`) into ``out``. The
    summary gains ``"rft": {"samples", "kept", "questions_solved"}``; the kept set is
    ``out/train.jsonl``."""
    from ..engine.trainer import seed_everything
    from ..errors import ConfigError
    from ..sequence.config import parse_sequence_config
    from ..sequence.run import build_sequence

    cfg = parse_sequence_config(raw, "rft config")
    seed_everything(cfg.seed)
    built = build_sequence(cfg)
    index, kept, stats = rejection_sample(built.student, built.tokenizer, built.prompts, built.train, built.verify, k=k,
                                          temperature=temperature, max_new_tokens=cfg.train.max_new_tokens,
                                          seed=cfg.seed * 7919 + 11)
    if not kept:
        raise ConfigError(f"RFT: none of the {int(stats['samples'])} sampled responses was correct; nothing to fine-tune on.")
    return fine_tune_on(raw, out, [built.train[i] for i in index], kept, notes={"rft": stats})


@torch.no_grad()
def self_revision_examples(lm: torch.nn.Module, tok: Any, examples: list[Any], verify: Any, *, k: int,
                           temperature: float, max_new_tokens: int, seed: int,
                           batch_size: int = 256) -> tuple[list[Any], dict[str, float]]:
    """Reviser examples from the model's own responses (the miniature's self-revision
    training [inferred]): ``k`` sampled responses ``y`` per question, each giving the example
    ``x + y + mark(r) -> answer`` (the reference answer as the revision target, where the paper
    keeps the model's own successful revisions). Returns them and ``{"samples", "wrong_share"}``."""
    from ..sequence.tasks.revision import reviser_prompt
    from ..sequence.tasks import Example
    from ..sequence.teachers import left_pad, rollout

    g = torch.Generator().manual_seed(int(seed))
    out, wrong = [], 0
    flat = [ex for ex in examples for _ in range(k)]
    for start in range(0, len(flat), batch_size):
        rows = flat[start:start + batch_size]
        ids, mask = left_pad([tok.encode(ex.prompt, add_bos=True) for ex in rows], tok.pad_id)
        r = rollout(lm, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature, eos_id=tok.eos_id,
                    pad_id=tok.pad_id, generator=g)
        for ex, row in zip(rows, r.completion.tolist()):
            text = tok.decode(row)
            reward = verify(ex.prompt, text)[0]
            wrong += reward < 1.0
            out.append(Example(reviser_prompt(ex, text, reward, None), ex.answer))
    return out, {"samples": float(len(flat)), "wrong_share": wrong / max(len(flat), 1)}


def train_base(out: Path, *, digits: int = 2, generator_steps: int = 600, revision_steps: int = 300, k: int = 2,
               num_questions: int = 4000, batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> Path:
    """The miniature's base, in two stages: (1) ``out/generator``: plain fine-tuning on
    generator examples (:func:`base_config` with ``revise=0``); (2) ``out/base``: self-revision
    training from it on the reviser examples of its own responses (:func:`self_revision_examples`,
    ``k`` per question over ``num_questions`` questions) mixed one to one with generator
    examples. Returns the base's ``save_lm`` directory ``out/base/student``."""
    from ..sequence.config import parse_sequence_config
    from ..sequence.run import build_sequence, run_sequence

    out = Path(out)
    gen_raw = base_config(digits=digits, steps=generator_steps, revise=0.0, batch_size=batch_size, lr=lr,
                          num_train=num_questions, seed=seed, name="sd_zero_generator")
    run_sequence(parse_sequence_config(gen_raw), out / "generator", overwrite=True)
    raw = _from_base(str(out / "generator" / "student"), digits, num_questions, "sd_zero_base")
    raw.update(seed=seed, mode="supervised", divergence={"kind": "ce"},
               train=_train(revision_steps, batch_size, lr, digits + 2))
    built = build_sequence(parse_sequence_config(raw))
    revisions, stats = self_revision_examples(built.student, built.tokenizer, built.train, built.verify, k=k,
                                              temperature=1.0, max_new_tokens=digits + 2, seed=seed * 7919 + 5)
    mixed = [x for pair in zip(revisions, [ex for ex in built.train for _ in range(k)]) for x in pair]
    fine_tune_on(raw, out / "base", mixed, notes={"self_revision": stats})
    return out / "base" / "student"


# --------------------------------------------------------------------------------------
# self-localisation
# --------------------------------------------------------------------------------------


@torch.no_grad()
def token_gaps(lm: torch.nn.Module, tok: Any, examples: list[Any], completions: list[list[int]],
               rewards: list[float]) -> list[torch.Tensor]:
    """Per response, the generator-reviser log-prob gap of each response token ``(L_i,)``:
    ``log p(y_t | x, y_<t) - log p(y_t | x + y + mark(r), y_<t)``, the same weights in both
    roles (``completions``: token ids up to and including EOS)."""
    from ..sequence.estimators import token_logprobs
    from ..sequence.tasks.revision import reviser_prompt
    from ..sequence.teachers import completion_logits, left_pad

    was = lm.training
    lm.eval()
    try:
        width = max(len(c) for c in completions)
        comp = torch.full((len(completions), width), tok.pad_id, dtype=torch.long)
        cmask = torch.zeros((len(completions), width), dtype=torch.bool)
        for i, c in enumerate(completions):
            comp[i, :len(c)] = torch.tensor(c)
            cmask[i, :len(c)] = True
        gen_ids, gen_mask = left_pad([tok.encode(ex.prompt, add_bos=True) for ex in examples], tok.pad_id)
        rev_text = [reviser_prompt(ex, tok.decode(c), r, None) for ex, c, r in zip(examples, completions, rewards)]
        rev_ids, rev_mask = left_pad([tok.encode(t, add_bos=True) for t in rev_text], tok.pad_id)
        lp_gen = token_logprobs(completion_logits(lm, gen_ids, gen_mask, comp, cmask), comp)
        lp_rev = token_logprobs(completion_logits(lm, rev_ids, rev_mask, comp, cmask), comp)
    finally:
        lm.train(was)
    gap = lp_gen - lp_rev
    return [gap[i, :len(c)] for i, c in enumerate(completions)]


def first_wrong_position(completion: list[int], reference: list[int]) -> int | None:
    """The first index where ``completion`` and ``reference`` (both ending in EOS) differ, or
    None when they are equal."""
    for t, c in enumerate(completion):
        if t >= len(reference) or c != reference[t]:
            return t
    return None if len(completion) == len(reference) else len(completion)


def localisation_share(gaps: list[torch.Tensor], first_wrong: list[int]) -> dict[str, float]:
    """Over wrong responses: ``share`` of those whose largest gap sits at the first wrong
    token, ``chance`` (the mean of ``1 / L_i``, a uniformly random position), ``n``, and the
    mean gap at the first wrong token and elsewhere."""
    hits, chance, at, other = [], [], [], []
    for g, w in zip(gaps, first_wrong):
        if w is None or w >= len(g):
            continue
        hits.append(float(int(torch.argmax(g)) == w))
        chance.append(1.0 / len(g))
        at.append(float(g[w]))
        other.extend(float(v) for j, v in enumerate(g) if j != w)
    n = len(hits)
    mean = (lambda xs: sum(xs) / len(xs) if xs else float("nan"))
    return {"share": mean(hits), "chance": mean(chance), "n": float(n), "gap_at_first_wrong": mean(at),
            "gap_elsewhere": mean(other)}


@torch.no_grad()
def self_localisation(lm: torch.nn.Module, tok: Any, examples: list[Any], verify: Any, *, max_new_tokens: int,
                      temperature: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Sample one response per example with ``lm`` (the generator), keep the wrong ones and
    measure :func:`localisation_share` of the gap (:func:`token_gaps`) between the generator
    and the same weights as reviser; ``wrong_share`` is the share of wrong responses and
    ``revised_right`` the share of wrong responses the reviser's greedy revision gets right."""
    from ..sequence.tasks.revision import reviser_prompt
    from ..sequence.teachers import left_pad, rollout

    g = torch.Generator().manual_seed(int(seed))
    ids, mask = left_pad([tok.encode(ex.prompt, add_bos=True) for ex in examples], tok.pad_id)
    r = rollout(lm, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature, eos_id=tok.eos_id,
                pad_id=tok.pad_id, generator=g)
    wrong, bodies = [], []
    for ex, row, m in zip(examples, r.completion.tolist(), r.completion_mask.tolist()):
        body = [t for t, keep in zip(row, m) if keep]
        if verify(ex.prompt, tok.decode(body))[0] < 1.0:
            wrong.append(ex)
            bodies.append(body)
    out = {"wrong_share": len(wrong) / max(len(examples), 1)}
    if not wrong:
        return {**out, "share": float("nan"), "chance": float("nan"), "n": 0.0}
    gaps = token_gaps(lm, tok, wrong, bodies, [0.0] * len(wrong))
    refs = [tok.encode(ex.answer) + [tok.eos_id] for ex in wrong]
    out.update(localisation_share(gaps, [first_wrong_position(b, ref) for b, ref in zip(bodies, refs)]))
    rev_ids, rev_mask = left_pad([tok.encode(reviser_prompt(ex, tok.decode(b), 0.0, None), add_bos=True)
                                  for ex, b in zip(wrong, bodies)], tok.pad_id)
    rr = rollout(lm, rev_ids, rev_mask, max_new_tokens=max_new_tokens, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    fixed = [verify(ex.prompt, tok.decode(row))[0] >= 1.0 for ex, row in zip(wrong, rr.completion.tolist())]
    out["revised_right"] = sum(fixed) / len(fixed)
    return out
