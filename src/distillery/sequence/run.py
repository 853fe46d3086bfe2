"""``distillery run`` / ``validate`` on a sequence config (``engine: sequence``).

:func:`build_sequence` builds data, tokenizer, student and teacher (what run, validate and
``generate`` share); :func:`run_sequence` trains in a run directory made and guarded as for the
other engines (:func:`~distillery.runner.prepare_run_dir`): ``config.yaml`` first, then
``metrics.jsonl``, ``tensorboard/``, ``checkpoints/``, the student (:mod:`.generate`) and
``summary.json`` with the final task accuracy. ``--resume`` accepts only the changes in
:data:`~.config.RESUMABLE_CHANGES`; a start that fails before anything worth keeping was written
removes its run directory; a later failure keeps the checkpoints and writes ``failed.json``.

Bad input is a :class:`~distillery.errors.ConfigError` / ``DataError`` (exit status 2): a JSONL
line without the fields (its line number), an empty completion, an example longer than the
context, a teacher whose vocabulary differs from the student's without ``divergence.alignment``,
a ``teacher.cache`` built over another dataset or tokenizer (its fingerprint), or at another
temperature or vocabulary.

:func:`build_sequence_cache` builds the ``teacher.cache`` of a config from its ``teacher.model``
/ ``teacher.run`` (``distillery cache build SEQ_CONFIG --topk K``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.rundir import check_resumed, dump_yaml, run_trainer_in_dir
from ..errors import ConfigError, DataError
from .config import RESUMABLE_CHANGES, SequenceConfig
from .tasks import Example, compare_answer


@dataclass
class SequenceBuild:
    """Everything a sequence config builds before its first step."""

    tokenizer: Any
    train: list[Example]
    eval_set: list[Example]
    prompts: list[list[int]]
    completions: list[list[int]]
    verify: Callable[[str, str], tuple[float, str]]
    student: nn.Module
    teacher: Any
    context: int
    notes: list[str] = field(default_factory=list)


def _examples(cfg: SequenceConfig) -> tuple[list[Example], list[Example], Callable[[str, str], tuple[float, str]], str]:
    """Train and eval examples, the verifier and the task's alphabet ('' for JSONL data)."""
    d = cfg.data
    if d.task is not None:
        from .tasks import build_task

        task = build_task({"kind": d.task.name, "params": dict(d.task.params)})
        train = task.sample(d.num_train, torch.Generator().manual_seed(cfg.seed))
        eval_set = task.sample(cfg.eval.num_examples, torch.Generator().manual_seed(cfg.eval.seed))
        return train, eval_set, task.verify, task.alphabet
    from .data import read_prompt_completion_jsonl

    keys = {"prompt_key": d.prompt_key, "completion_key": d.completion_key}
    train = [Example(x.prompt, x.completion) for x in read_prompt_completion_jsonl(d.path, **keys)]
    if d.eval_path is not None:
        eval_set = [Example(x.prompt, x.completion) for x in read_prompt_completion_jsonl(d.eval_path, **keys)]
    else:
        eval_set = train[: cfg.eval.num_examples]
    answers = {ex.prompt: ex.answer for ex in [*train, *eval_set]}

    def verify(prompt: str, completion: str) -> tuple[float, str]:  # exact match with the reference completion
        return compare_answer(answers[prompt], completion)

    return train, eval_set[: cfg.eval.num_examples], verify, ""


def build_tokenizer(cfg: SequenceConfig, train: list[Example], eval_set: list[Example], alphabet: str, spec: Any = None):
    """The tokenizer ``spec`` says (default ``cfg.tokenizer``; ``teacher.tokenizer`` for a
    teacher with its own), trained / built on the run's texts."""
    from .tokenizers import CharTokenizer, ChunkTokenizer, train_bpe

    spec = cfg.tokenizer if spec is None else spec
    texts = [t for ex in [*train, *eval_set] for t in (ex.prompt, ex.answer)]
    if spec.kind == "bpe":
        return train_bpe(texts + ([spec.extra] if spec.extra else []), spec.vocab_size)
    chars = alphabet or "".join(sorted(set("".join(texts))))
    if spec.kind == "chunk":
        return ChunkTokenizer(spec.chunk, alphabet="".join(c for c in chars + spec.extra if not c.isdigit()))
    return CharTokenizer(chars + spec.extra)


def build_sequence(cfg: SequenceConfig) -> SequenceBuild:
    """Build data, tokenizer, student and teacher as ``cfg`` says (seeded: every rank builds
    the same weights); checks the lengths against the context and the vocabularies."""
    from .models import as_causal_lm
    from .teachers import SequenceTeacher, resolve_prompt_fn

    train, eval_set, verify, alphabet = _examples(cfg)
    tok = build_tokenizer(cfg, train, eval_set, alphabet)
    prompts, completions = [], []
    for i, ex in enumerate(train):
        where = f"data example {i + 1}" + (f" ({cfg.data.path}, example {i + 1})" if cfg.data.path else "")
        try:
            prompts.append(tok.encode(ex.prompt, add_bos=True))
            body = tok.encode(ex.answer)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if not body:
            raise DataError(f"{where}: the completion of prompt {ex.prompt[:40]!r} is empty; every example needs a completion.")
        completions.append(body + [tok.eos_id])
    student = _build_model(cfg.student, tok.vocab_size, cfg.seed, "student")
    lm = as_causal_lm(student)
    context = int(lm.max_len)
    if int(lm.vocab_size) < tok.vocab_size:
        raise ConfigError(f"student: the model's vocabulary has {int(lm.vocab_size)} tokens but the tokenizer has "
                          f"{tok.vocab_size}; remove the vocab size from student.params (it defaults to the tokenizer's).")
    _check_lengths(cfg, train, prompts, completions, context)
    teacher = None
    if cfg.teacher is not None and cfg.teacher.cache is not None:
        teacher = _cached_teacher(cfg, tok, prompts, completions, int(lm.vocab_size))
    elif cfg.teacher is not None:
        t = cfg.teacher
        t_lm, t_tok = None, None
        if t.tokenizer is not None:
            t_tok = build_tokenizer(cfg, train, eval_set, alphabet, t.tokenizer)
        if t.model is not None:
            t_lm = _build_model(t.model, (t_tok or tok).vocab_size, cfg.seed + 1, "teacher.model")
        elif t.run is not None:
            t_lm, t_tok = _load_teacher_run(Path(t.run), tok, cfg.divergence.alignment)
        prompt_fn = resolve_prompt_fn(t.privileged.prompt) if t.privileged is not None else None
        teacher = SequenceTeacher(t_lm, student, sync=t.sync, decay=t.decay, every=t.every, prompt_fn=prompt_fn,
                                  tokenizer=t_tok)
        if t_tok is not None:
            _check_teacher_tokens(teacher, t_tok, tok, train, completions)
            return SequenceBuild(tok, train, eval_set, prompts, completions, verify, student, teacher, context)
        t_vocab, s_vocab = teacher.vocab_size, int(lm.vocab_size)
        if t_vocab != s_vocab and cfg.divergence.alignment is None and cfg.divergence.kind != "ce":
            raise ConfigError(
                f"teacher and student vocabularies differ ({t_vocab} and {s_vocab} tokens) and no alignment is set: the "
                "per-token divergences compare the same token ids. Set divergence.alignment: uld (ULD's sorted-probability "
                "distance, Boizard et al., 2024), or give the teacher the student's vocabulary.")
        if t_vocab < tok.vocab_size:
            raise ConfigError(f"teacher: its vocabulary of {t_vocab} tokens cannot read this run's {tok.vocab_size}-token "
                              "tokenizer (the teacher scores the student's token ids).")
    return SequenceBuild(tok, train, eval_set, prompts, completions, verify, student, teacher, context)


def _build_model(spec: Any, vocab: int, seed: int, where: str) -> nn.Module:
    from .models import build_lm

    try:
        return build_lm(spec.spec(vocab, seed=seed))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _load_teacher_run(run: Path, tok: Any, alignment: str | None = None) -> tuple[nn.Module, Any]:
    """The run's student and, if its tokenizer differs from ``tok`` and an alignment is set,
    that tokenizer (the teacher then reads re-tokenised text), else None."""
    from .generate import load_run_student

    _, lm, t_tok = load_run_student(run)
    if t_tok.id_to_token != tok.id_to_token and alignment is not None:
        return lm, t_tok
    if t_tok.id_to_token != tok.id_to_token:
        raise ConfigError(f"teacher.run: the teacher's tokenizer ({run / 'tokenizer.json'}, {t_tok.vocab_size} tokens) differs "
                          f"from this run's ({tok.vocab_size} tokens). The teacher scores the student's token ids, so it needs "
                          "the same tokenizer: use the data and tokenizer settings of the teacher's run, or set "
                          "divergence.alignment (spans or uld) to have the teacher read the completion text re-tokenised "
                          "with its own tokenizer.")
    return lm, None


def _check_teacher_tokens(teacher: Any, t_tok: Any, tok: Any, train: list[Example], completions: list[list[int]]) -> None:
    """A teacher with its own tokenizer: its model covers that vocabulary, and every training
    prompt and completion re-tokenised fits its context."""
    from .models import as_causal_lm
    from .sampler import Rollout
    from .teachers import retokenized_rollout

    t_lm = as_causal_lm(teacher.lm)
    if int(t_lm.vocab_size) < t_tok.vocab_size:
        raise ConfigError(f"teacher: its model's vocabulary of {int(t_lm.vocab_size)} tokens cannot read its "
                          f"{t_tok.vocab_size}-token tokenizer (teacher.tokenizer).")
    width = max(len(c) for c in completions)
    comp = torch.tensor([c + [tok.pad_id] * (width - len(c)) for c in completions])
    mask = torch.tensor([[True] * len(c) + [False] * (width - len(c)) for c in completions])
    fake = Rollout(tokens=comp, completion=comp, completion_mask=mask, logprobs=torch.zeros(comp.shape),
                   attention_mask=mask.long())
    t_r, _, _ = retokenized_rollout(fake, tok, t_tok, [ex.prompt for ex in train])
    need = t_r.tokens.shape[1]
    if need > int(t_lm.max_len):
        raise ConfigError(f"teacher: the training prompts and completions take up to {need} of the teacher's tokens, more "
                          f"than its context of {int(t_lm.max_len)}; give the teacher a longer context (max_len).")


def _cached_teacher(cfg: SequenceConfig, tok: Any, prompts: list[list[int]], completions: list[list[int]],
                    s_vocab: int) -> Any:
    """Open ``teacher.cache`` and check it against this run: dataset and tokenizer (the
    fingerprint of the token ids of every pair), temperature, vocabulary, and with
    ``teacher.model`` / ``teacher.run`` the teacher's weights."""
    from ..cache.store import CacheError
    from .cache import LMCache
    from .teachers import CachedLMTeacher

    t = cfg.teacher
    assert t is not None and t.cache is not None
    try:
        cache = LMCache(t.cache, verify="size", dataset=list(zip(prompts, completions)))
        if t.model is not None or t.run is not None:
            cache.check_teacher(_cache_source(cfg, tok))
    except CacheError as exc:
        raise ConfigError(f"teacher.cache: {exc} (a cache is built over this config's training set, tokenizer and "
                          "teacher: distillery cache build CONFIG --topk K)") from None
    if abs(cache.temperature - cfg.divergence.temperature) > 1e-12:
        raise ConfigError(f"teacher.cache: the cache {t.cache} holds the teacher at temperature {cache.temperature}, but "
                          f"divergence.temperature is {cfg.divergence.temperature}; rebuild the cache at that temperature "
                          "(--temperature) or set divergence.temperature to the cache's.")
    if cache.vocab_size != s_vocab:
        raise ConfigError(f"teacher.cache: the cached teacher has a vocabulary of {cache.vocab_size} tokens and the student "
                          f"{s_vocab}; the cached top-k ids must index the student's vocabulary.")
    return CachedLMTeacher(cache)


def _cache_source(cfg: SequenceConfig, tok: Any) -> nn.Module:
    """The weights ``teacher.model`` / ``teacher.run`` name (what a ``teacher.cache`` is built from)."""
    t = cfg.teacher
    assert t is not None
    if t.model is not None:
        return _build_model(t.model, tok.vocab_size, cfg.seed + 1, "teacher.model")
    if t.run is not None:
        return _load_teacher_run(Path(t.run), tok)[0]
    raise ConfigError("teacher: give teacher.model or teacher.run, the teacher the cache is built from.")


def build_sequence_cache(cfg: SequenceConfig, out: Path | str | None = None, *, k: int, temperature: float | None = None,
                         batch_size: int = 64, shard_size: int = 4096, overwrite: bool = False) -> Any:
    """Build the top-``k`` teacher cache of a sequence config and return the opened
    :class:`~.cache.LMCache`.

    The teacher is ``teacher.model`` / ``teacher.run`` (frozen), run once over the config's
    training set (the ``(prompt_ids, completion_ids)`` pairs its tokenizer makes, in order);
    ``out`` defaults to ``teacher.cache``; ``temperature`` to ``divergence.temperature``. A
    run with ``teacher: {cache: out}`` then reads it (``distillery cache build CONFIG --topk K``).
    """
    from .cache import build_lm_cache

    t = cfg.teacher
    if t is None or (t.model is None and t.run is None):
        raise ConfigError("cache build: the config needs teacher.model or teacher.run (the frozen teacher to cache).")
    if t.tokenizer is not None:
        raise ConfigError("cache build: a teacher with its own tokenizer (teacher.tokenizer) cannot be cached; the cache "
                          "stores token ids of the student's vocabulary.")
    out = out if out is not None else t.cache
    if out is None:
        raise ConfigError("cache build: give --out DIR or set teacher.cache in the config.")
    train, eval_set, _, alphabet = _examples(cfg)
    tok = build_tokenizer(cfg, train, eval_set, alphabet)
    pairs = [(tok.encode(ex.prompt, add_bos=True), tok.encode(ex.answer) + [tok.eos_id]) for ex in train]
    teacher = _cache_source(cfg, tok)
    T = cfg.divergence.temperature if temperature is None else float(temperature)
    return build_lm_cache(teacher, pairs, k, out, temperature=T, batch_size=batch_size, shard_size=shard_size,
                          pad_id=tok.pad_id, overwrite=overwrite)


def _check_lengths(cfg: SequenceConfig, train: list[Example], prompts: list[list[int]], completions: list[list[int]],
                   context: int) -> None:
    """Every batch must fit the context: prompts are left-padded to the longest prompt and
    completions (dataset or sampled) right-padded to the longest completion."""
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    p_max = len(prompts[longest])
    new = cfg.train.max_new_tokens if cfg.mode in ("on_policy", "gkd", "sequence_kd") else 0
    c_max = max(len(c) for c in completions) if cfg.mode in ("supervised", "gkd") else 0
    need = p_max + max(new, c_max)
    if p_max >= context:
        raise ConfigError(f"data: the prompt of example {longest + 1} ({train[longest].prompt[:40]!r}) has {p_max} tokens, "
                          f"not shorter than the student's context of {context} tokens; shorten the prompts or give the student "
                          "a longer context (max_len / n_positions).")
    if need > context:
        what = f"train.max_new_tokens ({new})" if new >= c_max else f"the longest completion ({c_max} tokens)"
        raise ConfigError(f"data: the longest prompt ({p_max} tokens, example {longest + 1}) plus {what} = {need} tokens exceeds "
                          f"the student's context of {context} tokens; lower train.max_new_tokens, shorten the data, or give "
                          "the student a longer context (max_len / n_positions).")
    eval_new = cfg.eval.max_new_tokens or cfg.train.max_new_tokens
    if p_max + eval_new > context:
        raise ConfigError(f"eval.max_new_tokens: the longest prompt ({p_max} tokens) plus {eval_new} new tokens exceeds the "
                          f"student's context of {context} tokens.")


# --------------------------------------------------------------------------------------
# run directory
# --------------------------------------------------------------------------------------


def dump_sequence_config(cfg: SequenceConfig) -> str:
    """The resolved config as ``config.yaml`` holds it."""
    return dump_yaml(cfg)


def check_resumed_sequence_config(out: Path, cfg: SequenceConfig) -> list[str]:
    """Refuse differences from the stored config outside :data:`RESUMABLE_CHANGES`."""
    return check_resumed(out, dump_sequence_config(cfg), RESUMABLE_CHANGES)


def make_trainer(cfg: SequenceConfig, out: Path | None, *, stop_after_steps: int | None = None):
    from ..engine.trainer import seed_everything
    from .trainer import SequenceTrainer

    seed_everything(cfg.seed)
    return SequenceTrainer(cfg, build_sequence(cfg), out, stop_after_steps=stop_after_steps)


def run_sequence(cfg: SequenceConfig, out: Path, *, resume: bool = False, overwrite: bool = False,
                 stop_after_steps: int | None = None) -> dict[str, Any]:
    """Execute a sequence run; returns its summary. Under torchrun every process calls this;
    rank 0 alone writes the run directory."""
    return run_trainer_in_dir(out, lambda out: make_trainer(cfg, out, stop_after_steps=stop_after_steps),
                              device=cfg.train.device, config_text=dump_sequence_config(cfg), resumable=RESUMABLE_CHANGES,
                              resume=resume, overwrite=overwrite)


@dataclass
class SequenceValidation:
    """What ``distillery validate`` found on a sequence config; :meth:`lines` prints it."""

    name: str
    lines_: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"config {self.name}: OK (sequence)", *self.lines_]


def validate_sequence(cfg: SequenceConfig, name: str = "config") -> SequenceValidation:
    """Build everything and compute one batch's loss (and backward) in each kind of step the
    mode uses, without an optimizer step; nothing is written."""
    from ..engine.trainer import seed_everything
    from .trainer import SequenceTrainer

    report = SequenceValidation(name)
    out = report.lines_
    start = time.perf_counter()
    seed_everything(cfg.seed)
    built = build_sequence(cfg)
    tok = built.tokenizer
    n_params = sum(p.numel() for p in built.student.parameters())
    n_train = sum(p.numel() for p in built.student.parameters() if p.requires_grad)
    src = f"task {cfg.data.task.name}" if cfg.data.task is not None else f"{cfg.data.path}"
    out.append(f"data: {src}, {len(built.train)} training examples, {len(built.eval_set)} eval examples; "
               f"longest prompt {max(map(len, built.prompts))} tokens, longest completion {max(map(len, built.completions))}")
    out.append(f"tokenizer: {cfg.tokenizer.kind}, {tok.vocab_size} tokens")
    out.append(f"student: {type(built.student).__name__}, {n_params:,} parameters ({n_train:,} trainable), context {built.context}")
    if built.teacher is not None:
        out.append(f"teacher: sync {built.teacher.sync}, vocabulary {built.teacher.vocab_size}"
                   + (", privileged prompt" if built.teacher.prompt_fn is not None else ""))
    trainer = SequenceTrainer(cfg, built, None)
    trainer.world, trainer.rank = 1, 0
    trainer.completions = trainer.teacher_completions() if cfg.mode == "sequence_kd" else built.completions
    indices = list(range(min(cfg.train.batch_size, len(built.train))))
    kinds = {"supervised": [False], "sequence_kd": [False], "on_policy": [True], "gkd": [False, True]}[cfg.mode]
    for on_policy in kinds:
        r, extra = trainer.batch_for(indices, 0, on_policy)
        built.student.zero_grad(set_to_none=True)
        total, figures = trainer.loss_of(r, extra, on_policy)
        loss = total / r.completion_mask.sum().clamp(min=1)
        loss.backward()
        shown = ", ".join(f"{k}={v:.4g}" for k, v in figures.items())
        out.append(f"{'on-policy' if on_policy else 'dataset'} batch: completions {tuple(r.completion.shape)}, "
                   f"loss {float(loss.detach()):.4g}" + (f" ({shown})" if shown else ""))
        if not torch.isfinite(loss.detach()):
            out.append("WARNING: the loss is not finite on this batch.")
    built.student.zero_grad(set_to_none=True)
    out.append(f"mode {cfg.mode}, divergence {cfg.divergence.kind}" + (f", estimator {cfg.divergence.estimator}" if cfg.divergence.estimator else ""))
    out.append(f"built and stepped in {time.perf_counter() - start:.1f}s; nothing was written")
    return report
