"""The sequence engine: distillation of causal language models (issue 12, C8 of ARCHITECTURE.md).

Parts, each a module imported only when used (``import distillery`` does not load this package,
and ``transformers`` / ``peft`` / ``tokenizers`` are imported inside the functions that need them):

* :mod:`~distillery.sequence.models`: the LM contract ``lm(input_ids, attention_mask, past,
  use_cache) -> LMOutput(logits, past, hidden)``; distillery's :class:`TinyGPT` (GPT-2
  architecture with a KV cache); adapters for Hugging Face ``GPT2LMHeadModel`` /
  ``LlamaForCausalLM`` and peft LoRA students; ``build_lm`` / ``save_lm``.
* :mod:`~distillery.sequence.sampler`: batched generation with a KV cache, seeded temperature /
  top-k / top-p, returning tokens, masks and the sampler's log-probs (a :class:`Rollout`).
* :mod:`~distillery.sequence.tokenizers`: character, two-digit-chunk and ``tokenizers``-trained
  BPE tokenizers with character spans (for cross-tokenizer alignment).
* :mod:`~distillery.sequence.data`: prompt/completion JSONL files (TRL's format) and the
  collate to :class:`SequenceBatch` (labels only on completion tokens, left/right padding,
  packing with per-segment positions).
* :mod:`~distillery.sequence.tasks`: procedural tasks with verifiers (addition, sorting, Dyck,
  a small list-program DSL) returning a reward and feedback text.
* :mod:`~distillery.sequence.divergences`, :mod:`~distillery.sequence.estimators`,
  :mod:`~distillery.sequence.alignment`: per-token divergences over the vocabulary (full,
  chunked, top-k with a tail), sampled-token estimators for on-policy use, cross-tokenizer
  alignment (ULD, span merging).
* :mod:`~distillery.sequence.cache`: a teacher cached as top-k log-probs per token.
* the loop: :mod:`~distillery.sequence.config` (``engine: sequence``), :mod:`~distillery.sequence.teachers`
  (frozen / live / EMA / hard-copy / privileged-prompt / cached / other-tokenizer teachers,
  ``rollout`` and ``score`` as separate calls), :mod:`~distillery.sequence.trainer` (supervised,
  sequence-KD, on-policy and GKD-mixed modes), :mod:`~distillery.sequence.run`,
  :mod:`~distillery.sequence.generate`; :mod:`~distillery.sequence.vlm` (a VLM's language head
  under the LM contract, LinguDistill's routed KD).
* parts of the papers' methods: :mod:`~distillery.sequence.guided` and
  :mod:`~distillery.sequence.reward_head` (PSRD), :mod:`~distillery.sequence.skills` (Skill-SD),
  :mod:`~distillery.sequence.diagnostics` (per-position errors, sample precision/diversity), and
  their miniature tasks in :mod:`~distillery.sequence.tasks` (``revision``, ``gridworld``,
  ``visual_programs``, ``captions``, ``contrast``, beside the core tasks).
"""
