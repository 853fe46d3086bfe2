"""The sequence engine's step loop: supervised KD, sequence KD, on-policy and GKD in one loop.

Each step draws ``train.batch_size`` examples (global; each rank takes its contiguous slice)
from an endless, seeded, resumable stream over the training set and builds one batch of
completions to learn on:

* ``supervised``: the dataset's completions (supervised KD: the teacher scores the dataset's
  completion tokens; with ``divergence.kind: ce`` plain fine-tuning);
* ``sequence_kd``: the teacher's own greedy completions of the training prompts, generated once
  before the first step (sequence-level KD, Kim & Rush, 2016, arXiv:1606.07947);
* ``on_policy``: the student's samples (:func:`~.teachers.rollout`), each token scored by the
  teacher (:meth:`~.teachers.SequenceTeacher.score`): a full-vocabulary divergence on the
  student's own rollouts, or a sampled-token estimator (``divergence.estimator``: ``pg``,
  MiniLLM's reverse-KL policy gradient, Gu et al., 2024, arXiv:2306.08543; ``iw``, Skill-SD's
  importance-weighted reverse KL against the sampler's log-probs);
* ``gkd``: GKD (Agarwal et al., 2024, arXiv:2306.13649): with probability ``lmbda`` the step is
  on-policy, else supervised; the coin is drawn from a generator seeded by ``(seed, step)``, so
  every rank and a resumed run draw the same.

A cached teacher (``teacher.cache``, supervised mode) is read for the step's example indices
and compared by :func:`~.divergences.topk_token_divergence` (forward KL against the top-k +
tail, equal to the dense forward KL at ``k = V`` up to the cache's value precision). A teacher
with its own tokenizer scores the completion text re-tokenised
(:func:`~.teachers.retokenized_rollout`) and is compared on span-merged groups
(``divergence.alignment: spans``, :func:`~.alignment.span_merged_divergence`, summed over the
groups) or on order-aligned positions (``uld``, :func:`~.alignment.uld_loss`); either sum is
divided by the number of the student's completion tokens like the other losses.

The loss is taken on completion tokens only (prompt and padding and what follows EOS are
masked); it is the sum of the per-token values divided by the number of completion tokens of
the *global* batch (so two ranks average to exactly the one-process loss). On-policy steps
verify each rollout (``verify(prompt, completion) -> (reward, feedback)``), log the mean reward
and hand reward and feedback to a privileged teacher's prompt function. Gradients are averaged
over ranks (:func:`~distillery.engine.distributed.average_gradients`), clipped, and a
non-finite loss stops the run naming the step (the last good checkpoint stays). After each
step the teacher syncs (EMA, hard copy). Sampling uses a generator seeded by ``(seed, step,
rank)``: a resumed run continues identically.

Evaluation (every ``train.eval_every`` steps and at the end, rank 0): greedy completions of the
held-out prompts, verified: ``accuracy`` (the share with reward 1) and ``reward``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..engine import checkpoint as ckpt
from ..engine import distributed as D
from ..engine.steploop import StepLoop
from ..engine.trainer import build_optimizer, build_scheduler
from ..errors import CheckpointError, ConfigError
from .config import SequenceConfig
from .estimators import (
    iw_reverse_kl_loss,
    reverse_kl_policy_gradient_loss,
    token_logprobs,
)
from .generate import load_module_state
from .teachers import completion_logits, dataset_rollout, left_pad, rollout


class IndexStream:
    """An endless stream of global batches of example indices: a seeded permutation per epoch
    (``drop_last``); its position ``(epoch, batch)`` is saved in checkpoints."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        if batch > n:
            raise ConfigError(f"train.batch_size = {batch} exceeds the {n} training examples.")
        self.n, self.size, self.seed = n, batch, seed
        self.epoch, self.batch = 0, 0

    def _order(self) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)).tolist()

    def __next__(self) -> list[int]:
        if (self.batch + 1) * self.size > self.n:
            self.epoch, self.batch = self.epoch + 1, 0
        order = self._order()
        out = order[self.batch * self.size:(self.batch + 1) * self.size]
        self.batch += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def _seed_of(*parts: int) -> int:
    s = 0
    for p in parts:
        s = (s * 1_000_003 + int(p)) % (2**63 - 1)
    return s


class SequenceTrainer(StepLoop):
    """Trains ``built.student`` as ``cfg`` says (see the module docstring); ``built`` is a
    :class:`~.run.SequenceBuild`."""

    def __init__(self, cfg: SequenceConfig, built: Any, run_dir: Path | None, *, stop_after_steps: int | None = None) -> None:
        super().__init__(cfg, run_dir, stop_after_steps)
        self.built = built
        self.student = built.student.to(self.device)
        self.teacher = built.teacher.to(self.device) if built.teacher is not None else None
        self.tok = built.tokenizer

    # -- set-up ------------------------------------------------------------------------------
    def _set_up(self, resume: bool) -> float:
        cfg = self.cfg
        self._start_ranks()
        self.teacher_sharded = bool(cfg.teacher is not None and cfg.teacher.shard and self.world > 1)
        if self.teacher_sharded:
            self.teacher.shard()  # FSDP2 over the ranks (teacher.shard); a collective from here on
        self.per_rank = D.per_rank_batch(cfg.train.batch_size, "train.batch_size")
        self.stream = IndexStream(len(self.built.train), cfg.train.batch_size, cfg.seed)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("student: the model has no trainable parameters.")
        self.optimizer = build_optimizer(self.params, cfg.train.optimizer.torch_kwargs())
        self.scheduler = build_scheduler(self.optimizer, cfg.train.scheduler.model_dump(), cfg.train.steps)
        self.completions = self.built.completions
        if cfg.mode == "sequence_kd":
            self.completions = self.teacher_completions()
        elapsed = self._resume() if resume else 0.0
        self._start_logging(resume)
        return elapsed

    def _trained(self) -> torch.nn.Module:
        return self.student

    @torch.no_grad()
    def teacher_completions(self) -> list[list[int]]:
        """The teacher's greedy completions of every training prompt (sequence KD's data)."""
        assert self.teacher is not None
        out: list[list[int]] = []
        prompts = self.built.prompts
        size = self.cfg.eval.batch_size
        for start in range(0, len(prompts), size):
            ids, mask = left_pad(prompts[start:start + size], self.tok.pad_id, self.device)
            r = rollout(self.teacher.lm, ids, mask, max_new_tokens=self.cfg.train.max_new_tokens, temperature=0.0,
                        eos_id=self.tok.eos_id, pad_id=self.tok.pad_id)
            for row, m in zip(r.completion.tolist(), r.completion_mask.tolist()):
                out.append([t for t, keep in zip(row, m) if keep])
        return out

    # -- the loop ------------------------------------------------------------------------------
    def is_on_policy(self, step: int) -> bool:
        """Whether step ``step`` (0-based) learns on the student's rollouts (GKD's coin)."""
        if self.cfg.mode == "on_policy":
            return True
        if self.cfg.mode != "gkd":
            return False
        u = torch.rand((), generator=torch.Generator().manual_seed(_seed_of(self.cfg.seed, 17, step)))
        return bool(u < self.cfg.lmbda)

    def batch_for(self, indices: list[int], step: int, on_policy: bool) -> tuple[Any, dict[str, Any]]:
        """The completions of this rank's examples at ``step``: a :class:`Rollout` and extras
        (the examples, and on on-policy steps the completion texts, rewards and feedback)."""
        tok, cfg = self.tok, self.cfg
        prompts = [self.built.prompts[i] for i in indices]
        examples = [self.built.train[i] for i in indices]
        extra: dict[str, Any] = {"examples": examples, "indices": list(indices)}
        if on_policy:
            ids, mask = left_pad(prompts, tok.pad_id, self.device)
            g = torch.Generator(device=self.device).manual_seed(_seed_of(cfg.seed, 29, step, self.rank))
            r = rollout(self.student, ids, mask, max_new_tokens=cfg.train.max_new_tokens, temperature=cfg.train.temperature,
                        top_k=cfg.train.top_k, top_p=cfg.train.top_p, eos_id=tok.eos_id, pad_id=tok.pad_id, generator=g)
            texts = [tok.decode(row) for row in r.completion.tolist()]
            verdicts = [self.built.verify(ex.prompt, text) for ex, text in zip(examples, texts)]
            extra.update(texts=texts, rewards=[v[0] for v in verdicts], feedback=[v[1] for v in verdicts])
        else:
            r = dataset_rollout(prompts, [self.completions[i] for i in indices], tok.pad_id, self.device)
        return r, extra

    def loss_of(self, r: Any, extra: dict[str, Any], on_policy: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The summed per-token loss of this rank's batch (not yet normalised) and its figures."""
        dcfg = self.cfg.divergence
        mask = r.completion_mask
        s_logits = completion_logits(self.student, *_prompt(r), r.completion, mask)
        figures: dict[str, float] = {}
        if on_policy:
            figures["reward"] = sum(extra["rewards"]) / max(len(extra["rewards"]), 1)
            figures["completion_tokens"] = float(mask.sum(1).float().mean())
        if dcfg.kind == "ce":
            nll = -token_logprobs(s_logits, r.completion)
            return torch.where(mask, nll, torch.zeros_like(nll)).sum(), figures
        assert self.teacher is not None
        if getattr(self.teacher, "sync", None) == "cached":
            return self._cached_loss(s_logits, r, extra), figures
        if getattr(self.teacher, "tokenizer", None) is not None or dcfg.alignment == "spans":
            return self._cross_tokenizer_loss(s_logits, r, extra), figures
        t_ids = t_mask = None
        if self.teacher.prompt_fn is not None:
            texts = extra.get("texts") or [self.tok.decode(row) for row in r.completion.tolist()]
            rewards = extra.get("rewards") or [None] * len(texts)
            feedback = extra.get("feedback") or [None] * len(texts)
            privileged = [self.teacher.prompt_fn(ex, t, rw, fb) for ex, t, rw, fb in zip(extra["examples"], texts, rewards, feedback)]
            t_ids, t_mask = left_pad([self.tok.encode(p, add_bos=True) for p in privileged], self.tok.pad_id, self.device)
        t_logits = self.teacher.score(r, t_ids, t_mask)
        if on_policy and dcfg.estimator is not None:
            logp_s = token_logprobs(s_logits, r.completion, dcfg.temperature)
            logp_t = token_logprobs(t_logits, r.completion, dcfg.temperature)
            if dcfg.estimator == "pg":
                loss = reverse_kl_policy_gradient_loss(logp_s, logp_t, mask, advantage=dcfg.advantage, reduction="sum")
            elif dcfg.estimator == "k1":  # no importance weight: grad = sum_t grad log p_s(y_t), zero in expectation
                loss = torch.where(mask, logp_s - logp_t, torch.zeros_like(logp_s)).sum()
            else:
                clip = None if dcfg.clip is None else (max(0.0, 1.0 - dcfg.clip), 1.0 + dcfg.clip)
                loss = iw_reverse_kl_loss(logp_s, logp_t, r.logprobs, mask, clip=clip, reduction="sum")
            return loss, figures
        if dcfg.alignment == "uld":
            from .alignment import uld_loss

            return uld_loss(s_logits, t_logits, mask, mask, temperature=dcfg.temperature, reduction="sum"), figures
        from .divergences import token_divergence

        loss = token_divergence(s_logits, t_logits, mask, dcfg.kind, beta=dcfg.beta, alpha=dcfg.alpha,
                                temperature=dcfg.temperature, reduction="sum")
        return loss, figures

    def _cached_loss(self, s_logits: torch.Tensor, r: Any, extra: dict[str, Any]) -> torch.Tensor:
        """The summed top-k forward KL against the cached teacher of this batch's examples."""
        from .divergences import topk_token_divergence

        cached = self.teacher.lookup(extra["indices"], s_logits.device)
        if cached.mask.shape != r.completion_mask.shape or not bool((cached.mask == r.completion_mask).all()):
            raise ConfigError(f"teacher.cache: the cached completions of examples {extra['indices'][:8]} do not have this "
                              "run's completion lengths; rebuild the cache over this config's training set.")
        return topk_token_divergence(s_logits, cached.ids, cached.logprobs, cached.tail_mass, r.completion_mask,
                                     temperature=self.cfg.divergence.temperature, reduction="sum")

    def _cross_tokenizer_loss(self, s_logits: torch.Tensor, r: Any, extra: dict[str, Any]) -> torch.Tensor:
        """The summed span-merged (or ULD) loss against a teacher that reads the completion text
        with its own tokenizer (the student's when it has none)."""
        from .alignment import span_merged_divergence, uld_loss
        from .teachers import retokenized_rollout, span_groups

        dcfg, teacher = self.cfg.divergence, self.teacher
        t_tok = teacher.tokenizer or self.tok
        prompts = [ex.prompt for ex in extra["examples"]]
        if teacher.prompt_fn is not None:
            texts = extra.get("texts") or [self.tok.decode(row) for row in r.completion.tolist()]
            rewards = extra.get("rewards") or [None] * len(texts)
            feedback = extra.get("feedback") or [None] * len(texts)
            prompts = [teacher.prompt_fn(ex, t, rw, fb) for ex, t, rw, fb in zip(extra["examples"], texts, rewards, feedback)]
        t_r, s_rows, t_rows = retokenized_rollout(r, self.tok, t_tok, prompts, self.device)
        t_logits = teacher.score(t_r)
        if dcfg.alignment == "uld":
            return uld_loss(s_logits, t_logits, r.completion_mask, t_r.completion_mask, temperature=dcfg.temperature,
                            reduction="sum")
        logp_s = token_logprobs(s_logits, r.completion, dcfg.temperature)
        logp_t = token_logprobs(t_logits, t_r.completion, dcfg.temperature)
        groups = [span_groups(s, t, self.tok, t_tok) for s, t in zip(s_rows, t_rows)]
        return span_merged_divergence(logp_s, logp_t, groups, kind=dcfg.kind, reduction="sum")

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step at ``step`` (0-based); returns the figures."""
        on_policy = self.is_on_policy(step)
        global_indices = next(self.stream)
        mine = global_indices[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        r, extra = self.batch_for(mine, step, on_policy)
        self.optimizer.zero_grad(set_to_none=True)
        total, figures = self.loss_of(r, extra, on_policy)
        count = r.completion_mask.sum().float()
        if self.world > 1:
            count = D.all_reduce_mean_(count.clone()) * self.world
        loss = total / count.clamp(min=1.0) * self.world
        self._check_finite(loss, step, "The loss", "Lower train.optimizer.lr, add train.grad_clip, or check divergence.temperature.")
        loss.backward()
        D.average_gradients(self.params)
        if self.cfg.train.grad_clip is not None:
            figures["grad_norm"] = self._clip(self.params, step)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.teacher is not None:
            self.teacher.after_step(step + 1)
        figures.update(loss=float(loss.detach()), on_policy=float(on_policy), lr=self.optimizer.param_groups[0]["lr"])
        return figures

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Greedy completions of the eval prompts, verified (rank 0; no random numbers drawn)."""
        if self.rank != 0:
            return None
        scores = evaluate_student(self.student, self.built, self.cfg, self.device)
        self.history.append({"step": self.step, **scores})
        if self.logger is not None:
            self.logger.log({"split": "eval", "step": self.step, **scores})
        return scores

    # -- checkpoints -----------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        state = {f"student.{k}": v for k, v in ckpt.full_state_dict(self.student).items()}
        if self.teacher is not None and self.teacher.owns_weights:
            state.update({f"teacher.{k}": v for k, v in ckpt.full_state_dict(self.teacher.lm).items()})
        return state

    def _schedule_state(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict()}

    def _checkpoint_payload(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self._weights(), dict(self.optimizer.state_dict(), keyed_by="index")

    def _restore(self, path: Path, state: dict[str, Any], files: dict[str, dict[str, torch.Tensor]]) -> None:
        weights = files["model"]
        parts = {"student": self.student}
        if self.teacher is not None and self.teacher.owns_weights:
            parts["teacher"] = self.teacher.lm
        for name, module in parts.items():
            sub = {k[len(name) + 1:]: v.to(self.device) for k, v in weights.items() if k.startswith(name + ".")}
            load_module_state(module, sub, f"the {name} in the checkpoint {path}")
        ckpt.load_optimizer(path, self.student, self.optimizer, state)
        try:
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"The scheduler state in {path} does not match this run: {exc}") from None

    # -- the end ---------------------------------------------------------------------------
    def _run_fields(self) -> dict[str, Any]:
        return {"mode": self.cfg.mode, "divergence": self.cfg.divergence.kind}

    def _result_fields(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {"final": {k: v for k, v in last.items() if k != "step"}}

    def _export(self) -> None:
        from .generate import export_student

        export_student(self.run_dir, self.student, self.tok)


def _prompt(r: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = r.tokens.shape[1] - r.completion.shape[1]
    return r.tokens[:, :p], r.attention_mask[:, :p]


@torch.no_grad()
def evaluate_student(student: torch.nn.Module, built: Any, cfg: SequenceConfig, device: torch.device) -> dict[str, float]:
    """``{"accuracy", "reward", "completion_tokens"}`` of greedy completions of ``built.eval_set``."""
    tok = built.tokenizer
    n_new = cfg.eval.max_new_tokens or cfg.train.max_new_tokens
    rewards, lengths = [], []
    for start in range(0, len(built.eval_set), cfg.eval.batch_size):
        chunk = built.eval_set[start:start + cfg.eval.batch_size]
        ids, mask = left_pad([tok.encode(ex.prompt, add_bos=True) for ex in chunk], tok.pad_id, device)
        r = rollout(student, ids, mask, max_new_tokens=n_new, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id)
        for ex, row, m in zip(chunk, r.completion.tolist(), r.completion_mask.tolist()):
            rewards.append(float(built.verify(ex.prompt, tok.decode(row))[0]))
            lengths.append(sum(m))
    n = max(len(rewards), 1)
    return {"accuracy": sum(1.0 for x in rewards if x >= 1.0) / n, "reward": sum(rewards) / n,
            "completion_tokens": sum(lengths) / n}
