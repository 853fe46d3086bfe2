"""Helpers shared by the dual-encoder reproductions (ALBEF, MSD, DeGLA, DCD, ...): their
training section, loading a trained dual encoder from a run directory and embedding a
dataset with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ._common import load_student, train_section


def fast_train(epochs: int, lr: float = 1e-3, warmup: int = 50, **extra: Any) -> dict[str, Any]:
    """A ``train`` section for miniature runs (:func:`~._common.train_section`): AdamW (weight
    decay 0.02, as ALBEF), cosine schedule, one evaluation and one checkpoint at the end."""
    return train_section(epochs, lr, weight_decay=0.02, warmup=warmup, checkpoint_every=10**9, **extra)


def load_dual_encoder(run_dir: Path, input_shape: tuple[int, ...], params: dict[str, Any]) -> torch.nn.Module:
    """The dual encoder a run directory's ``student.safetensors`` holds, in eval mode."""
    return load_student(run_dir, {"name": "dual_encoder", "params": params}, input_shape, 10)


@torch.no_grad()
def embed(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """The model's output signals over ``x`` ``[N, width]``, concatenated over batches."""
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, x.shape[0], batch_size):
        for k, v in model(x[i : i + batch_size]).items():
            parts.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in parts.items()}
