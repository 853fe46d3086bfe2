"""VPD: visual program distillation, rationale + answer instruction tuning from verified programs.

Y. Hu, O. Stretcu, C.-T. Lu, K. Viswanathan, K. Hata, E. Luo, R. Krishna, A. Fuxman, 2024,
"Visual Program Distillation: Distilling Tools and Programmatic Reasoning into Vision-Language
Models" (CVPR 2024), arXiv:2312.03052. "VPD distills the reasoning ability of LLMs by using them
to sample multiple candidate programs, which are then executed and verified to identify a correct
one. It translates each correct program into a language description of the reasoning steps,
which are then distilled into a VLM."

Mechanism, as expressed here:

* data synthesis (:mod:`distillery.sequence.tasks.visual_programs`): a random program sampler (the
  LLM's stand-in) draws ``candidates`` programs of a small fold DSL for each digit-grid question;
  each is executed with the vision tool (a digit classifier trained once, seed 0); the first
  whose result matches the label is kept and rewritten as a rationale (``"add:3>3,_>3,5>8,_>8=8"``:
  the op, each cell's tool output and the running value after it, the answer). Scenes with no verified program are
  dropped (mostly those where the tool erred);
* distillation: plain instruction tuning (cross-entropy on the completion tokens, the sequence
  engine's ``supervised`` mode with ``divergence: ce``) of a tiny GPT on prompt -> rationale +
  answer (:func:`vpd_config`); the baseline tunes on the same kept examples with the answer alone
  (:func:`answer_only_config`).

The student reads the question and the tool's outputs as tokens (``"S:3_5_="``), so what it must
learn is the composition; the reproduction (``distillery reproduce vpd``) trains on grids with
two digits and tests on two, three and four (:func:`evaluate_lengths`). Config:
``configs/vpd_digit_grid.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("vpd", "Hu et al. 2024, VPD, arXiv:2312.03052", "vpd_digit_grid.yaml",
           "Sample programs, execute with a vision tool, keep the label-verified one, tune on its rationale + answer")
)

#: The task of :mod:`distillery.sequence.tasks.visual_programs`, as a config names it.
TASK = "distillery.sequence.tasks.visual_programs:DigitGridTask"
#: Completion budgets: a rationale of 4 cells is at most ``"add:9>9,9>18,9>27,9>36=36"`` (26
#: characters) and its end of sequence.
MAX_NEW = {"rationale": 28, "answer": 3}


def grid_data(completion: str, *, digits: int = 2, num_train: int = 3000, candidates: int = 8,
              cells: int = 4) -> dict[str, Any]:
    """The ``data`` section: VPD-filtered digit-grid examples with ``completion`` ``rationale``
    (rationale + answer) or ``answer`` (answer only)."""
    params = {"cells": cells, "digits": digits, "completion": completion, "candidates": candidates}
    return {"task": {"name": TASK, "params": params}, "num_train": num_train}


def _config(completion: str, student: dict[str, Any], steps: int, lr: float, batch_size: int, **data: Any) -> dict[str, Any]:
    return {
        "engine": "sequence",
        "data": grid_data(completion, **data),
        "tokenizer": {"kind": "char"},
        "student": student,
        "mode": "supervised",
        "divergence": {"kind": "ce"},
        "train": {"steps": steps, "batch_size": batch_size, "max_new_tokens": MAX_NEW[completion],
                  "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.01},
                  "scheduler": {"name": "cosine", "warmup_steps": max(1, steps // 20)},
                  "progress": False, "tensorboard": False, "checkpoint_every": 10**9, "keep_checkpoints": 1},
    }


def vpd_config(student: dict[str, Any], steps: int, *, lr: float = 3e-3, batch_size: int = 64, **data: Any) -> dict[str, Any]:
    """A sequence run (without ``seed``) distilling the verified programs' rationales + answers."""
    return _config("rationale", student, steps, lr, batch_size, **data)


def answer_only_config(student: dict[str, Any], steps: int, *, lr: float = 3e-3, batch_size: int = 64,
                       **data: Any) -> dict[str, Any]:
    """The baseline: the same kept examples, tuned on the answer alone."""
    return _config("answer", student, steps, lr, batch_size, **data)


def evaluate_lengths(run_dir: Path, lengths: tuple[int, ...] = (2, 3, 4), n: int = 300, seed: int = 1234,
                     cells: int = 4) -> dict[int, dict[str, float]]:
    """Greedy answers of a run's student on ``n`` unfiltered test grids per number of digits.

    Returns ``{digits: {"accuracy", "label_accuracy", "tool_correct"}}``: ``accuracy`` is the
    share whose final answer (after the last ``=``) equals the right composition of the tool's
    outputs shown in the prompt, ``label_accuracy`` the share equal to the true label, and
    ``tool_correct`` the share of grids where the tool read every digit right. The test grids
    are the same for every run (``seed``; images from the tool's held-out pool).
    """
    import torch

    from ..sequence.generate import load_run_student
    from ..sequence.tasks import compare_answer
    from ..sequence.trainer import evaluate_student
    from ..sequence.tasks.visual_programs import DigitGridTask, final_answer

    cfg, lm, tok = load_run_student(Path(run_dir))
    completion = cfg.data.task.params.get("completion", "rationale")
    out: dict[int, dict[str, float]] = {}
    for digits in lengths:
        task = DigitGridTask(cells=cells, digits=digits)
        scenes = task.scenes(n, torch.Generator().manual_seed(seed + digits))
        labels = {}
        for s in scenes:
            labels.setdefault(s.prompt, []).append(s.label)
        eval_set = [SimpleNamespace(prompt=s.prompt) for s in scenes]
        texts: list[str] = []

        def verify(prompt: str, text: str, _task: Any = task) -> tuple[float, str]:
            texts.append(text)
            return _task.verify(prompt, text)

        built = SimpleNamespace(tokenizer=tok, eval_set=eval_set, verify=verify)
        ecfg = SimpleNamespace(eval=SimpleNamespace(max_new_tokens=MAX_NEW[completion], batch_size=128),
                               train=SimpleNamespace(max_new_tokens=MAX_NEW[completion]))
        scores = evaluate_student(lm, built, ecfg, next(lm.parameters()).device)
        label_hits = sum(compare_answer(str(s.label), final_answer(t))[0] for s, t in zip(scenes, texts))
        out[digits] = {"accuracy": scores["accuracy"], "label_accuracy": label_hits / n,
                       "tool_correct": sum(s.tool_correct for s in scenes) / n}
    return out


__all__ = ["MAX_NEW", "RECIPE", "TASK", "answer_only_config", "evaluate_lengths", "grid_data", "vpd_config"]
