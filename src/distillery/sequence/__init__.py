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
* per-token divergences, sampled-token estimators and cross-tokenizer alignment
  (``divergences``, ``estimators``, ``alignment``), and later the trainer (offline, supervised,
  on-policy and GKD-mixed modes).
"""
