"""A finished sequence run's student: export, loading back, and ``distillery generate``.

A run directory of the sequence engine holds, besides ``config.yaml``, ``metrics.jsonl``,
``checkpoints/`` and ``summary.json``:

* ``student.safetensors``: the student module's full state dict (what ``--resume`` and
  ``distillery generate`` load into the student the config builds);
* ``student/``: :func:`~distillery.sequence.models.save_lm`'s directory (a TinyGPT's
  ``tiny_gpt.json`` + weights; a Hugging Face student's ``save_pretrained`` with its tokenizer,
  loadable by ``transformers``; a LoRA student's adapter, the ``peft`` way);
* ``tokenizer.json``: ``{"kind": "char", "alphabet": ...}`` or ``{"kind": "bpe", "raw": ...}``
  (the ``tokenizers`` JSON), so the run's vocabulary is restored exactly.

``distillery generate RUN_DIR --prompt TEXT [--max-new-tokens N] [--temperature T]`` prints
the student's completion (greedy unless ``--temperature`` > 0; seeded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine import checkpoint as ckpt
from ..errors import RunDirError
from .tokenizers import BPETokenizer, CharTokenizer, Tokenizer

__all__ = ["export_student", "generate_text", "load_module_state", "load_run_student", "load_tokenizer", "save_tokenizer"]


def load_module_state(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module``; every parameter must be there. Extra keys are accepted
    only as aliases of tied weights (a Hugging Face model's ``state_dict`` lists a tied
    embedding under both names, while ``load_state_dict`` may expect one)."""
    from ..errors import CheckpointError

    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"The weights of {what} do not match the model the config builds: {str(exc).splitlines()[0]}. "
                              "Use the config the weights were trained with.") from None
    own = list(module.state_dict().values())
    untied = [k for k in unexpected if not any(v.shape == state[k].shape and torch.equal(v.cpu(), state[k].cpu()) for v in own)]
    if missing or untied:
        raise CheckpointError(f"The weights of {what} do not match the model the config builds: missing keys {sorted(missing)[:8]}, "
                              f"unexpected keys {sorted(untied)[:8]}. Use the config the weights were trained with.")


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write ``tokenizer.json`` (see the module docstring)."""
    if isinstance(tok, BPETokenizer):
        obj = {"kind": "bpe", "raw": tok.raw.to_str()}
    else:
        obj = {"kind": "char", "alphabet": "".join(tok.id_to_token[3:])}
    ckpt.atomic_write_json(Path(path), obj)


def load_tokenizer(path: Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} does not exist: the run has not finished (resume it first).")
    obj = json.loads(path.read_text())
    if obj.get("kind") == "bpe":
        from tokenizers import Tokenizer as RawTokenizer

        return BPETokenizer(RawTokenizer.from_str(obj["raw"]))
    return CharTokenizer(obj["alphabet"])


def export_student(run_dir: Path, student: nn.Module, tok: Tokenizer) -> None:
    """``student.safetensors``, ``student/`` (save_lm) and ``tokenizer.json`` in ``run_dir``."""
    from .models import TinyGPT, save_lm, unwrap_lm

    run_dir = Path(run_dir)
    ckpt.save_state(ckpt.full_state_dict(student), run_dir / "student.safetensors")
    hf_tok = None if isinstance(unwrap_lm(student), TinyGPT) else tok.hf_tokenizer()
    save_lm(student, hf_tok, run_dir / "student")
    save_tokenizer(tok, run_dir / "tokenizer.json")


def load_run_student(run_dir: Path) -> tuple[Any, nn.Module, Tokenizer]:
    """``(config, student with the trained weights (eval mode), tokenizer)`` of a finished run."""
    from ..engine.rundir import read_run_config
    from .config import parse_sequence_config
    from .models import build_lm

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, "sequence", parse_sequence_config)
    tok = load_tokenizer(run_dir / "tokenizer.json")
    weights = run_dir / "student.safetensors"
    if not weights.is_file():
        raise RunDirError(f"{weights} does not exist: the run in {run_dir} has not finished (resume it first).")
    student = build_lm(cfg.student.spec(tok.vocab_size, seed=cfg.seed))
    from safetensors.torch import load_file

    load_module_state(student, load_file(str(weights)), f"the student of {run_dir}")
    return cfg, student.eval(), tok


def generate_text(run_dir: Path, prompt: str, *, max_new_tokens: int | None = None, temperature: float = 0.0,
                  seed: int = 0) -> str:
    """The run's student's completion of ``prompt`` (``<bos>`` is added as in training)."""
    from .sampler import generate

    cfg, student, tok = load_run_student(run_dir)
    n = max_new_tokens if max_new_tokens is not None else (cfg.eval.max_new_tokens or cfg.train.max_new_tokens)
    ids = torch.tensor([tok.encode(prompt, add_bos=True)], dtype=torch.long)
    out = generate(student, ids, max_new_tokens=n, temperature=temperature, eos_id=tok.eos_id, pad_id=tok.pad_id,
                   generator=torch.Generator().manual_seed(seed))
    return tok.decode(out.completion[0].tolist())
