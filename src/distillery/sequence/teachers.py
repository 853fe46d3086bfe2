"""Teachers of the sequence engine: sampling and scoring as two separate steps, and teacher sync.

**The interface.** An on-policy step is two calls that never share state:

* :func:`rollout` ``(student, prompt_ids, prompt_mask, ...) -> Rollout``: the student samples
  completions (:func:`~distillery.sequence.sampler.generate`; no gradient);
* ``teacher.score(rollout, prompt_ids=None, prompt_mask=None) -> logits (B, N, V)``: the
  teacher's next-token logits at each of the ``N`` completion positions of the rollout, i.e.
  the distribution the teacher gives to ``rollout.completion[:, n]`` after the prompt and the
  completion's first ``n`` tokens (rows where ``completion_mask`` is False are ignored). With
  ``prompt_ids`` the teacher reads *its own* prompt (``(B, P')`` left-padded, a privileged
  context) before the same completion tokens.

Anything with that ``score`` method can be a teacher, e.g. a client of a teacher served by
another process (as TRL does with vLLM): it receives the token ids and masks of the rollout
(CPU or device tensors) and returns logits of shape ``(B, N, V)``. The supervised modes use
the same call on a :class:`Rollout` made from dataset completions (:func:`dataset_rollout`).

**Teacher sync** (:class:`SequenceTeacher`): ``frozen`` (separate weights that never change,
e.g. the student's initial weights: SD-Zero's frozen base), ``live`` (the student itself,
scored without gradient), ``ema`` (after every step ``teacher <- decay * teacher + (1 - decay)
* student``, the mean-teacher update of Tarvainen & Valpola, 2017, arXiv:1703.01780) and
``hard_copy`` (the student's weights copied every ``every`` steps, SD-Zero's periodic sync).

**Privileged-context teachers** (Skill-SD, SD-Zero): the teacher's prompt is a function
``fn(example, completion, reward, feedback) -> str`` of the task example (``prompt``,
``answer``), the student's completion text and the verifier's reward and feedback; the teacher
scores the student's completion tokens after that text. Given as ``"module:function"`` or a
name of :data:`PRIVILEGED_PROMPTS`. A loaded object with the attribute ``per_run = True`` is a
factory: it is called once per run (with no arguments) and the function it returns is the
prompt function, so state such as a skill memory never leaks from one run to the next.

**A teacher with its own tokenizer** (``SequenceTeacher(..., tokenizer=...)``): the teacher
reads the student's completion *text*, re-tokenised with its tokenizer
(:func:`retokenized_rollout`), and the two are compared on aligned character spans
(:func:`span_groups`, :mod:`~.alignment`).

**A cached teacher** (:class:`CachedLMTeacher`): the top-k log-probabilities of a frozen
teacher on the dataset's completions, read from a :class:`~.cache.LMCache` by example index
instead of scoring (supervised KD only; it has no ``score``).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .models import as_causal_lm
from .sampler import Rollout, generate
from .tasks import Example

__all__ = [
    "PRIVILEGED_PROMPTS",
    "CachedLMTeacher",
    "SequenceTeacher",
    "completion_logits",
    "dataset_rollout",
    "ema_update_",
    "left_pad",
    "resolve_prompt_fn",
    "retokenized_rollout",
    "rollout",
    "span_groups",
]

PromptFn = Callable[[Example, str, "float | None", "str | None"], str]


def reference_answer(example: Example, completion: str, reward: float | None, feedback: str | None) -> str:
    """The prompt, the reference answer and the prompt's last character again (``"12+3=15="``):
    a teacher that knows the answer (ground-truth privileged information)."""
    return example.prompt + example.answer + example.prompt[-1:]


def own_attempt(example: Example, completion: str, reward: float | None, feedback: str | None) -> str:
    """The prompt, the student's own completion and the prompt's last character: a reviser that
    has seen its first attempt (SD-Zero's reviser without the reward)."""
    return example.prompt + completion + example.prompt[-1:]


#: Registered privileged prompt functions (``teacher.privileged.prompt: NAME``).
PRIVILEGED_PROMPTS: dict[str, PromptFn] = {"reference_answer": reference_answer, "own_attempt": own_attempt}


def resolve_prompt_fn(spec: str) -> PromptFn:
    """A registered name or ``"module:function"``; a clear ConfigError otherwise."""
    if spec in PRIVILEGED_PROMPTS:
        return PRIVILEGED_PROMPTS[spec]
    if ":" not in spec:
        raise ConfigError(f"teacher.privileged.prompt: {spec!r} is neither a registered prompt ({', '.join(sorted(PRIVILEGED_PROMPTS))}) "
                          "nor 'module:function'.")
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"teacher.privileged.prompt: cannot load {spec!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"teacher.privileged.prompt: {spec!r} is not callable.")
    if getattr(fn, "per_run", False):  # a factory of stateful prompt functions (Skill-SD's skill memory)
        fn = fn()
    return fn


# --------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any = None) -> tuple[Tensor, Tensor]:
    """``(ids (B, P), mask (B, P))``, int64, every row padded on the left with ``pad_id``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def dataset_rollout(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int,
                    device: Any = None) -> Rollout:
    """A :class:`Rollout` of given completions (left-padded prompts, right-padded completions;
    ``logprobs`` zero): the supervised modes go through the same scoring code as rollouts."""
    p_ids, p_mask = left_pad(prompts, pad_id)
    width = max(len(c) for c in completions)
    comp = torch.full((len(completions), width), int(pad_id), dtype=torch.long)
    cmask = torch.zeros((len(completions), width), dtype=torch.bool)
    for i, c in enumerate(completions):
        comp[i, :len(c)] = torch.tensor(list(c), dtype=torch.long)
        cmask[i, :len(c)] = True
    r = Rollout(tokens=torch.cat([p_ids, comp], 1), completion=comp, completion_mask=cmask,
                logprobs=torch.zeros(comp.shape), attention_mask=torch.cat([p_mask, cmask.long()], 1))
    return Rollout(*(t.to(device) for t in (r.tokens, r.completion, r.completion_mask, r.logprobs, r.attention_mask)))


def prompt_part(r: Rollout) -> tuple[Tensor, Tensor]:
    """The rollout's prompt ids and mask ``(B, P)``."""
    p = r.tokens.shape[1] - r.completion.shape[1]
    return r.tokens[:, :p], r.attention_mask[:, :p]


def completion_logits(lm: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion: Tensor,
                      completion_mask: Tensor) -> Tensor:
    """Next-token logits ``(B, N, V)`` of ``lm`` at the ``N`` completion positions: row ``n`` is
    the distribution of ``completion[:, n]`` given the prompt and ``completion[:, :n]``."""
    p, n = prompt_ids.shape[1], completion.shape[1]
    ids = torch.cat([prompt_ids, completion.to(prompt_ids.device)], 1)
    mask = torch.cat([prompt_mask.long(), completion_mask.to(prompt_mask.device).long()], 1)
    return as_causal_lm(lm)(ids, mask).logits[:, p - 1:p - 1 + n]


def rollout(student: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int, temperature: float,
            eos_id: int, pad_id: int, top_k: int | None = None, top_p: float | None = None,
            generator: torch.Generator | None = None) -> Rollout:
    """The student's completions of left-padded prompts (no gradient; the student's training
    mode is restored): the sampling half of an on-policy step."""
    was = student.training
    student.eval()
    try:
        return generate(student, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, eos_id=eos_id, pad_id=pad_id, generator=generator)
    finally:
        student.train(was)


# --------------------------------------------------------------------------------------
# sync
# --------------------------------------------------------------------------------------


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student``, parameter by parameter (the
    teacher moves towards the student, never the reverse); buffers are copied."""
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ConfigError("teacher.sync ema: the teacher's parameters differ from the student's.")
    for name, t in t_params.items():
        t.mul_(decay).add_(s_params[name].detach().to(t.dtype), alpha=1.0 - decay)
    s_buffers = dict(student.named_buffers())
    for name, b in teacher.named_buffers():
        b.copy_(s_buffers[name])


class SequenceTeacher:
    """A teacher LM with its sync mode; see the module docstring.

    ``lm``: the teacher's weights (for ``frozen``), ignored for ``live`` (the student is used),
    and for ``ema`` / ``hard_copy`` a copy of the student is made when ``lm`` is None.
    ``prompt_fn``: the privileged prompt function, or None (the teacher reads the student's prompt).
    ``tokenizer``: the teacher's own tokenizer (frozen teachers only), or None (the student's:
    the teacher scores the student's token ids).
    """

    def __init__(self, lm: nn.Module | None, student: nn.Module, *, sync: str = "frozen", decay: float = 0.99,
                 every: int = 50, prompt_fn: PromptFn | None = None, tokenizer: Any = None) -> None:
        if sync not in ("frozen", "live", "ema", "hard_copy"):
            raise ConfigError(f"teacher.sync must be frozen, live, ema or hard_copy, got {sync!r}.")
        if tokenizer is not None and sync != "frozen":
            raise ConfigError(f"teacher.tokenizer: a teacher with its own tokenizer must be frozen, got sync {sync!r}.")
        self.sync, self.decay, self.every, self.prompt_fn = sync, float(decay), int(every), prompt_fn
        self.tokenizer = tokenizer
        self.student = student
        if sync == "live":
            self.lm = student
        else:
            self.lm = lm if lm is not None else copy.deepcopy(student)
            self.lm.requires_grad_(False).eval()

    @property
    def owns_weights(self) -> bool:
        """Whether the teacher's weights change during training (and are checkpointed)."""
        return self.sync in ("ema", "hard_copy")

    @property
    def vocab_size(self) -> int:
        return int(as_causal_lm(self.lm).vocab_size)

    def to(self, device: Any) -> SequenceTeacher:
        if self.sync != "live":
            self.lm.to(device)
        return self

    def shard(self) -> nn.Module:
        """Shard the frozen teacher LM over the processes with FSDP2 (``teacher.shard``, under
        torchrun; call after :meth:`to`): :func:`~distillery.engine.distributed.shard_frozen` on
        the module the sequence-engine contract calls (the LM itself, or the TinyGPT inside a
        peft wrapper), each layer of its longest ``nn.ModuleList`` (the transformer blocks) a
        group of its own. Scores and greedy completions are those of the unsharded teacher (the
        weights are all-gathered bit for bit); every rank must score equally often. Returns the
        sharded module."""
        from ..engine.distributed import shard_frozen
        from .models import TinyGPT, _base_hf

        if self.sync != "frozen":
            raise ConfigError(f"teacher.shard: only a frozen teacher can be sharded, got sync {self.sync!r}.")
        target = self.lm
        if isinstance(_base_hf(target), TinyGPT):  # a peft TinyGPT is called through its base model
            target = _base_hf(target)
        if not any(True for _ in target.parameters()):
            raise ConfigError("teacher.shard: the teacher has no weights to shard; remove teacher.shard.")
        lists = [m for m in target.modules() if isinstance(m, nn.ModuleList)]
        blocks = list(max(lists, key=len)) if lists else []
        return shard_frozen(target, blocks)

    @torch.no_grad()
    def score(self, r: Rollout, prompt_ids: Tensor | None = None, prompt_mask: Tensor | None = None) -> Tensor:
        """The teacher's logits ``(B, N, V)`` at the rollout's completion positions (float, no
        gradient), after ``prompt_ids`` if given, else after the rollout's own prompts."""
        if prompt_ids is None:
            prompt_ids, prompt_mask = prompt_part(r)
        was = self.lm.training
        self.lm.eval()
        try:
            return completion_logits(self.lm, prompt_ids, prompt_mask, r.completion, r.completion_mask).detach()
        finally:
            self.lm.train(was)

    def after_step(self, step: int) -> None:
        """Sync after optimizer step ``step`` (1-based count of steps done)."""
        if self.sync == "ema":
            ema_update_(self.lm, self.student, self.decay)
        elif self.sync == "hard_copy" and step % self.every == 0:
            with torch.no_grad():
                self.lm.load_state_dict(self.student.state_dict())


# --------------------------------------------------------------------------------------
# a teacher with its own tokenizer
# --------------------------------------------------------------------------------------


def retokenized_rollout(r: Rollout, student_tok: Any, teacher_tok: Any, prompts: Sequence[str],
                        device: Any = None) -> tuple[Rollout, list[list[int]], list[list[int]]]:
    """The student's completions as the teacher's tokens.

    Each row's counted completion tokens (``r.completion_mask``) are decoded to text with
    ``student_tok`` (special tokens dropped) and encoded with ``teacher_tok``; a row that ends
    with the student's ``<eos>`` ends with the teacher's ``<eos>``. ``prompts[b]`` (text) is
    encoded with ``<bos>`` by ``teacher_tok``. Returns ``(teacher_rollout, student_ids,
    teacher_ids)``: the teacher's :class:`Rollout` (:func:`dataset_rollout` layout, padded with
    the teacher's pad id; width ``N_t``) and, per row, the counted student and teacher
    completion ids (the inputs of :func:`span_groups`).
    """
    from ..errors import DataError

    s_rows, t_rows, t_prompts = [], [], []
    for b, (row, keep) in enumerate(zip(r.completion.tolist(), r.completion_mask.tolist())):
        ids = [t for t, k in zip(row, keep) if k]
        text = student_tok.decode(ids)
        try:
            t_ids = teacher_tok.encode(text)
            t_prompts.append(teacher_tok.encode(prompts[b], add_bos=True))
        except DataError as exc:
            raise DataError(f"the teacher's tokenizer cannot read row {b} (prompt {prompts[b][:40]!r}, completion "
                            f"{text[:40]!r}): {exc}") from None
        if ids and ids[-1] == student_tok.eos_id:
            t_ids.append(teacher_tok.eos_id)
        s_rows.append(ids)
        t_rows.append(t_ids)
    t_r = dataset_rollout(t_prompts, t_rows, teacher_tok.pad_id, device if device is not None else r.completion.device)
    return t_r, s_rows, t_rows


def span_groups(student_ids: Sequence[int], teacher_ids: Sequence[int], student_tok: Any,
                teacher_tok: Any) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """:func:`~.alignment.align_spans` of one completion's student and teacher tokens (their
    character spans in the decoded text), plus the group ``((i_eos,), (j_eos,))`` when both end
    with ``<eos>`` (the event "the text ends here", which covers no characters)."""
    from .alignment import align_spans

    groups = align_spans(student_tok.char_spans(student_ids), teacher_tok.char_spans(teacher_ids))
    if (student_ids and teacher_ids and student_ids[-1] == student_tok.eos_id
            and teacher_ids[-1] == teacher_tok.eos_id):
        groups.append(((len(student_ids) - 1,), (len(teacher_ids) - 1,)))
    return groups


# --------------------------------------------------------------------------------------
# a cached teacher
# --------------------------------------------------------------------------------------


class CachedLMTeacher:
    """A frozen teacher read from a top-k cache (:class:`~.cache.LMCache`) by example index.

    The cache must have been built over this run's ``(prompt_ids, completion_ids)`` pairs in
    order (its dataset fingerprint is checked when the run builds it); :meth:`lookup` gives the
    :class:`~.cache.CachedTopK` of a batch's examples, laid out like :func:`dataset_rollout`'s
    completions of the same examples. There is nothing to sync or checkpoint.
    """

    sync = "cached"
    prompt_fn = None
    tokenizer = None
    owns_weights = False

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.device: Any = None

    @property
    def vocab_size(self) -> int:
        return int(self.cache.vocab_size)

    @property
    def temperature(self) -> float:
        return float(self.cache.temperature)

    def to(self, device: Any) -> CachedLMTeacher:
        self.device = device
        return self

    def lookup(self, indices: Sequence[int], device: Any = None) -> Any:
        """The cached top-k ids, log-probs ``(B, N, k)``, tail mass and mask ``(B, N)`` of the examples."""
        return self.cache.batch(list(indices), device if device is not None else self.device)

    def score(self, *args: Any, **kwargs: Any) -> Tensor:
        raise ConfigError("teacher.cache: a cached teacher has only the dataset's completions (supervised KD); it cannot "
                          "score other completions. Use teacher.model / teacher.run for this mode.")

    def after_step(self, step: int) -> None:
        """Nothing to sync."""
