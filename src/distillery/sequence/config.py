"""The config of a sequence run (``engine: sequence``), validated with pydantic.

Strict like the rest of distillery's schema (:class:`~distillery.config.base.Strict`: unknown
keys are errors, nothing is coerced); a failure is a :class:`~distillery.errors.ConfigError`
naming each bad key. :func:`distillery.config.parse_config` hands any raw config whose
``engine`` is ``sequence`` to :func:`parse_sequence_config`, so ``distillery run``,
``validate`` and ``--resume`` read it through the same loader as the other engines.

Example (``configs/gkd_addition.yaml``)::

    engine: sequence
    name: gkd_addition
    data: {task: {name: addition, params: {digits: 2}}, num_train: 2000}
    tokenizer: {kind: char}
    student: {kind: tiny_gpt, params: {dim: 32, depth: 2, heads: 4, max_len: 24}}
    teacher: {model: {kind: tiny_gpt, path: runs/addition_teacher/student}}
    mode: gkd
    lmbda: 0.5
    divergence: {kind: jsd, beta: 0.5}
    train: {steps: 300, batch_size: 32, max_new_tokens: 5, optimizer: {name: adamw, lr: 3.0e-3}}
    eval: {num_examples: 200}

Models (``student``, ``teacher.model``) are :func:`~distillery.sequence.models.build_lm` specs:
``{kind: tiny_gpt, params: {dim, depth, heads, max_len}}`` (``vocab`` defaults to the
tokenizer's), ``{kind: tiny_gpt, path: DIR}``, ``{kind: hf, config: gpt2 | llama, params}``
(``vocab_size`` defaults to the tokenizer's), ``{kind: hf, path: DIR}``, each with an optional
``lora: {r, alpha, target_modules}``. A teacher is a model spec or ``teacher.run`` (the run
directory of an earlier sequence run, whose student it loads); with neither it is the
student's own weights (self-distillation: ``sync`` says how it follows the student).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config.base import PosFloat, PosInt, Strict
from ..config.devices import device_problem
from ..config.training import OptimizerCfg, SchedulerCfg
from ..engine.rundir import RESUMABLE_LOGGING
from ..errors import ConfigError

MODES = ("supervised", "sequence_kd", "on_policy", "gkd")
DIVERGENCE_KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tvd", "ce")

RESUMABLE_CHANGES = (
    "train.steps",
    *RESUMABLE_LOGGING,
    "teacher.shard",
    "eval",
    "name",
)
"""Keys ``--resume`` may change in a sequence run (evaluation is greedy and draws no random
numbers, so it never changes training)."""


class TaskCfg(Strict):
    """A procedural task of :mod:`distillery.sequence.tasks` and its params."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> TaskCfg:
        from .tasks import build_task

        try:
            build_task({"kind": self.name, "params": dict(self.params)})
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class SeqDataCfg(Strict):
    """Either ``path`` (a prompt/completion JSONL file; ``eval_path`` an optional held-out one)
    or ``task`` (examples drawn with the run's seed: ``num_train`` to train on, the eval set
    drawn separately with ``eval.seed``)."""

    path: str | None = None
    eval_path: str | None = None
    prompt_key: str = "prompt"
    completion_key: str = "completion"
    task: TaskCfg | None = None
    num_train: PosInt = 2000

    @model_validator(mode="after")
    def _one_source(self) -> SeqDataCfg:
        if (self.path is None) == (self.task is None):
            raise ValueError("give exactly one of data.path (a prompt/completion JSONL file) and data.task ({name, params})")
        if self.eval_path is not None and self.path is None:
            raise ValueError("data.eval_path is read only with data.path")
        return self


class TokenizerCfg(Strict):
    """``char``: one token per character (the task's alphabet, or every character of the data,
    plus ``extra``); ``bpe``: a BPE vocabulary of ``vocab_size`` trained on the training texts;
    ``chunk`` (``teacher.tokenizer`` only): digit runs in chunks of ``chunk`` digits, other
    characters one token each (:class:`~distillery.sequence.tokenizers.ChunkTokenizer`)."""

    kind: Literal["char", "bpe", "chunk"] = "char"
    extra: str = ""
    vocab_size: Annotated[int, Field(ge=8, le=1_000_000)] = 256
    chunk: Annotated[int, Field(ge=1, le=4)] = 2


class LMCfg(Strict):
    """A :func:`~distillery.sequence.models.build_lm` spec (see the module docstring)."""

    kind: Literal["tiny_gpt", "hf"]
    params: dict[str, Any] = Field(default_factory=dict)
    config: Literal["gpt2", "llama"] | None = None
    path: str | None = None
    lora: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> LMCfg:
        if self.kind == "hf" and self.path is None and self.config is None:
            raise ValueError("an hf model needs config (gpt2 | llama) or path (a save_pretrained directory)")
        if self.kind == "tiny_gpt" and self.config is not None:
            raise ValueError("config is read only for kind 'hf'")
        if self.path is not None and self.params:
            raise ValueError("give params or path, not both (a saved model brings its own architecture)")
        return self

    def spec(self, vocab: int, seed: int | None = None) -> dict[str, Any]:
        """The :func:`build_lm` dict, the vocabulary filled in from the tokenizer if not given."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.path is not None:
            out["path"] = self.path
        else:
            params = dict(self.params)
            if self.kind == "tiny_gpt":
                params.setdefault("vocab", vocab)
            else:
                out["config"] = self.config
                params.setdefault("vocab_size", vocab)
            out["params"] = params
        if self.lora is not None:
            out["lora"] = dict(self.lora)
        if seed is not None:
            out["seed"] = seed
        return out


class PrivilegedCfg(Strict):
    """A privileged-context teacher: ``prompt`` is ``"module:function"`` or a registered name
    (:data:`~distillery.sequence.teachers.PRIVILEGED_PROMPTS`) called as
    ``fn(example, completion, reward, feedback) -> str``; the teacher scores the student's
    completion tokens after that text instead of the student's prompt."""

    prompt: str


class SeqTeacherCfg(Strict):
    """The teacher: ``model`` (a build_lm spec), ``run`` (an earlier sequence run's student) or
    neither (the student's own weights). ``sync``: ``frozen`` (never changes), ``live`` (the
    student itself, scored without gradient), ``ema`` (``teacher <- decay * teacher + (1 -
    decay) * student`` after each step) or ``hard_copy`` (the student's weights copied every
    ``every`` steps).

    ``cache``: a top-k teacher cache directory (:func:`~distillery.sequence.cache.build_lm_cache`
    over this run's training set, e.g. by ``distillery cache build CONFIG --topk K``); the loop
    reads it instead of running a teacher (mode ``supervised``, ``divergence.kind:
    forward_kl``). With ``model`` / ``run`` as well, those are the weights the cache is built
    from and checked against. ``tokenizer``: the teacher's own tokenizer (with ``model``); the
    teacher then scores the student's completion *text* re-tokenised with it, compared by
    ``divergence.alignment`` (``spans`` or ``uld``).

    ``shard``: under torchrun (world > 1), shard the frozen teacher LM over the processes with
    FSDP2 (:func:`~distillery.engine.distributed.shard_frozen`: each rank holds ``1 / world`` of
    its weights, each transformer block all-gathered only for its forward), for a teacher too big
    for one device; the run's numbers do not change. Only for ``sync: frozen`` without
    ``cache`` (an EMA / hard-copy / live teacher's weights change with the student's); ignored
    by a single process."""

    model: LMCfg | None = None
    run: str | None = None
    cache: str | None = None
    tokenizer: TokenizerCfg | None = None
    sync: Literal["frozen", "live", "ema", "hard_copy"] = "frozen"
    decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.99
    every: PosInt = 50
    privileged: PrivilegedCfg | None = None
    shard: bool = False

    @model_validator(mode="after")
    def _complete(self) -> SeqTeacherCfg:
        if self.shard and self.cache is not None:
            raise ValueError("teacher.shard: a teacher.cache is read from disk, no teacher model runs; remove teacher.shard")
        if self.shard and self.sync != "frozen":
            raise ValueError(f"teacher.shard: only a frozen teacher can be sharded; sync {self.sync!r} changes the teacher's "
                             "weights with the student's (use sync: frozen, or remove teacher.shard)")
        if self.model is not None and self.run is not None:
            raise ValueError("give teacher.model or teacher.run, not both")
        if self.sync != "frozen" and (self.model is not None or self.run is not None):
            raise ValueError(f"teacher.sync {self.sync!r} follows the student's weights; it needs no teacher.model / teacher.run "
                             "(leave them out, or use sync: frozen)")
        if self.cache is not None and (self.sync != "frozen" or self.privileged is not None or self.tokenizer is not None):
            raise ValueError("teacher.cache holds a frozen teacher's outputs on the dataset's own prompts: it cannot be combined "
                             "with teacher.sync other than frozen, teacher.privileged or teacher.tokenizer")
        if self.tokenizer is not None and self.model is None:
            raise ValueError("teacher.tokenizer is the vocabulary of teacher.model: give teacher.model (a teacher.run brings "
                             "its own tokenizer)")
        return self


class DivergenceCfg(Strict):
    """The per-token loss. ``kind``: a :func:`~distillery.sequence.divergences.token_divergence`
    kind over the full vocabulary, or ``ce`` (cross-entropy on the completion tokens, no
    teacher). ``estimator`` (on-policy batches only): ``null`` (full-vocabulary ``kind`` on the
    student's own rollouts), ``pg`` (MiniLLM's reverse-KL policy gradient) or ``iw`` (Skill-SD's
    importance-weighted reverse KL against the sampler's log-probs) or ``k1`` (the sampled
    per-token reverse KL differentiated directly, without importance weight: the
    gradient-incorrect baseline of Skill-SD's ablation). ``alignment: uld`` allows a teacher
    whose vocabulary differs (ULD, Boizard et al., 2024, arXiv:2402.12030); with a teacher that
    has its own tokenizer, ``uld`` compares the order-aligned positions of the two tokenizations
    and ``spans`` the span-merged groups (:func:`~distillery.sequence.alignment.align_spans`,
    ``kind`` forward_kl or reverse_kl)."""

    kind: Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tvd", "ce"] = "forward_kl"
    beta: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    temperature: PosFloat = 1.0
    estimator: Literal["pg", "iw", "k1"] | None = None
    advantage: Literal["per_token", "sequence", "immediate"] = "per_token"
    clip: PosFloat | None = 0.2
    alignment: Literal["uld", "spans"] | None = None


class SeqTrainCfg(Strict):
    """The step loop: ``steps`` optimizer steps of ``batch_size`` examples (global, split over
    ranks); rollouts of at most ``max_new_tokens`` tokens sampled at ``temperature`` (``top_k``,
    ``top_p``)."""

    steps: Annotated[int, Field(gt=0, le=10**9)]
    batch_size: PosInt = 32
    max_new_tokens: PosInt = 16
    temperature: Annotated[float, Field(ge=0.0)] = 1.0
    top_k: PosInt | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    optimizer: OptimizerCfg = OptimizerCfg(name="adamw", lr=1e-3)
    scheduler: SchedulerCfg = SchedulerCfg()
    grad_clip: PosFloat | None = 1.0
    log_every: PosInt = 10
    eval_every: PosInt | None = None
    checkpoint_every: PosInt | None = None
    keep_checkpoints: PosInt = 2
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        problem = device_problem(device)
        if problem:
            raise ValueError(problem)
        return device


class SeqEvalCfg(Strict):
    """Greedy completions of ``num_examples`` held-out prompts, scored by the verifier (task
    accuracy; exact match with the reference completion for JSONL data)."""

    num_examples: PosInt = 200
    max_new_tokens: PosInt | None = None
    batch_size: PosInt = 64
    seed: int = 1234


class SequenceConfig(Strict):
    """A whole sequence run."""

    engine: Literal["sequence"]
    name: str | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    data: SeqDataCfg
    tokenizer: TokenizerCfg = TokenizerCfg()
    student: LMCfg
    teacher: SeqTeacherCfg | None = None
    mode: Literal["supervised", "sequence_kd", "on_policy", "gkd"] = "supervised"
    lmbda: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """GKD's on-policy fraction (Agarwal et al., 2024, arXiv:2306.13649): the probability that
    a step's batch is the student's own rollouts rather than the dataset's completions."""
    divergence: DivergenceCfg = DivergenceCfg()
    train: SeqTrainCfg
    eval: SeqEvalCfg = SeqEvalCfg()

    @model_validator(mode="after")
    def _coherent(self) -> SequenceConfig:
        kind = self.divergence.kind
        if kind != "ce" and self.teacher is None:
            raise ValueError(f"divergence.kind {kind!r} compares the student with a teacher: add a teacher section "
                             "(or use divergence.kind: ce for plain fine-tuning)")
        if kind == "ce" and self.mode in ("on_policy", "gkd"):
            raise ValueError(f"divergence.kind 'ce' has no target on the student's own rollouts (mode {self.mode!r}); "
                             "use a divergence kind with a teacher")
        if self.mode == "sequence_kd" and self.teacher is None:
            raise ValueError("mode 'sequence_kd' trains on teacher-generated completions: add a teacher section")
        if self.mode == "sequence_kd" and self.teacher is not None and self.teacher.sync != "frozen":
            raise ValueError("mode 'sequence_kd' generates the teacher's completions once: teacher.sync must be 'frozen'")
        if self.divergence.estimator is not None and self.mode in ("supervised", "sequence_kd"):
            raise ValueError(f"divergence.estimator {self.divergence.estimator!r} needs sampled rollouts: mode on_policy or gkd")
        if self.divergence.estimator is not None and self.divergence.alignment is not None:
            raise ValueError("divergence.estimator and divergence.alignment cannot be combined (the estimators need the "
                             "teacher's log-prob of the student's token)")
        if self.tokenizer.kind == "chunk":
            raise ValueError("tokenizer.kind 'chunk' is a teacher's vocabulary only (teacher.tokenizer); a student's tokenizer "
                             "is char or bpe (saved with the run)")
        t = self.teacher
        if t is not None and t.cache is not None:
            if self.mode != "supervised":
                raise ValueError(f"teacher.cache scores the dataset's own completions: mode must be 'supervised', got {self.mode!r} "
                                 "(sequence_kd, on_policy and gkd need a live teacher: use teacher.model / teacher.run)")
            if kind != "forward_kl" or self.divergence.alignment is not None:
                raise ValueError(f"teacher.cache stores a top-k forward-KL target: divergence.kind must be 'forward_kl' with no "
                                 f"alignment, got kind {kind!r}" + (f", alignment {self.divergence.alignment!r}"
                                                                   if self.divergence.alignment else ""))
        if self.divergence.alignment == "spans" and kind not in ("forward_kl", "reverse_kl"):
            raise ValueError(f"divergence.alignment 'spans' compares two-outcome distributions per text piece: divergence.kind "
                             f"must be forward_kl or reverse_kl, got {kind!r}")
        if t is not None and t.tokenizer is not None and self.divergence.alignment is None and kind != "ce":
            raise ValueError("teacher.tokenizer gives the teacher its own vocabulary, and no alignment is set: the per-token "
                             "divergences compare the same token ids. Set divergence.alignment: spans (span-merged groups) or "
                             "uld (ULD's sorted-probability distance)")
        return self


def parse_sequence_config(raw: dict[str, Any], source: str = "config") -> SequenceConfig:
    """Validate a raw dict; a failure is a ConfigError naming every bad key."""
    from ..config.messages import validate_config

    return validate_config(SequenceConfig, raw, source)


__all__ = [
    "DIVERGENCE_KINDS",
    "MODES",
    "RESUMABLE_CHANGES",
    "DivergenceCfg",
    "LMCfg",
    "PrivilegedCfg",
    "SeqDataCfg",
    "SeqEvalCfg",
    "SeqTeacherCfg",
    "SeqTrainCfg",
    "SequenceConfig",
    "TaskCfg",
    "TokenizerCfg",
    "parse_sequence_config",
]
