"""DCD: dynamic contrastive distillation of a (fusion) retrieval teacher into a dual encoder.

J. Rao, L. Ding, S. Qi, M. Fang, Y. Liu, L. Shen, D. Tao, 2022, "Dynamic Contrastive
Distillation for Image-Text Retrieval" (IEEE TMM 2023), arXiv:2207.01426. "We propose to use
a teacher network to estimate the difficult samples for students, making the students absorb
the powerful knowledge from pre-trained teachers, and master the knowledge from hard samples
... we propose dynamic distillation to dynamically learn samples of different difficulties
... Encouragingly, we can speed up the inference at least 129 times compared to the existing
ITR models."

Mechanism, as expressed here (details the abstract leaves open are marked [inferred] in
:mod:`distillery.objectives.dcd`):

* the teacher is a frozen pairwise scorer: a fusion model (:class:`~distillery.models.miniature.fusion.FusionScorer`,
  which reads each image-text pair jointly) or a bigger dual encoder
  (:class:`~distillery.models.miniature.fusion.ScoringDualEncoder`); either returns ``scores`` ``[B, B]``
  over the batch's pairs;
* the student is a dual encoder (:class:`~distillery.models.dual.DualEncoder`): at retrieval
  time each side is embedded once and candidates are ranked by dot products, while the
  fusion teacher needs one forward pass per (query, candidate) pair;
* one ``dcd`` term (:class:`~distillery.objectives.DynamicContrastiveDistillation`): the
  teacher mines each query's hardest in-batch negatives (:mod:`distillery.objectives.mining`), the
  student's similarity distribution over the positive and those negatives is distilled
  toward the teacher's (KL), and InfoNCE over the batch keeps the student's self-learning;
  per sample the two are mixed by difficulty (:class:`~distillery.weighting.difficulty.DifficultyWeight`).

:func:`dcd_config` states the term as a config fragment. The baseline "student alone" is
CLIP's symmetric InfoNCE (:func:`student_alone_terms`). The
miniature (``distillery reproduce dcd``) fits a fusion teacher on digit halves (top half as
"image", bottom half as "text"), compares the student alone with the student + DCD on R@1,
and measures the retrieval speed-up of the student over the fusion teacher. Config (with a
bigger dual-encoder teacher, which the config schema can fit in the run):
``configs/dcd_digits.yaml``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.distiller import Distiller, Term
from ..engine.trainer import Trainer
from ..models.miniature.fusion import FusionScorer
from ..objectives import PairwiseScoreCE
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import terms_from
from ._itc import clip_terms

RECIPE = register_recipe(
    Recipe("dcd", "Rao et al. 2022, DCD, arXiv:2207.01426", "dcd_digits.yaml",
           "Teacher-mined hard negatives + similarity distillation + InfoNCE, mixed per sample by difficulty")
)


def student_alone_terms(temperature: float = 0.07) -> list[Term]:
    """The baseline: CLIP's symmetric InfoNCE on the student's own embeddings."""
    return clip_terms(temperature)


def dcd_config(temperature: float = 0.07, teacher_temperature: float = 1.0, num_hard_negatives: int = 8,
               weighting: str = "dynamic", alpha: float = 0.5) -> dict[str, Any]:
    """The method's ``objectives``: one ``dcd`` term reading ``student.image``, ``student.text``
    and ``teacher.scores`` (add a frozen pairwise-scoring ``teacher``; ``weighting="static"``
    mixes with the constant ``alpha`` instead of the per-sample difficulty)."""
    params = {"temperature": temperature, "teacher_temperature": teacher_temperature,
              "num_hard_negatives": num_hard_negatives, "weighting": weighting, "alpha": alpha}
    return {"objectives": [{"name": "dcd", "kind": "dcd", "params": params}]}


def dcd_terms(temperature: float = 0.07, teacher_temperature: float = 1.0, num_hard_negatives: int = 8,
              weighting: str = "dynamic", alpha: float = 0.5) -> list[Term]:
    """One ``dcd`` term reading ``student.image``, ``student.text`` and ``teacher.scores``."""
    return terms_from(dcd_config(temperature, teacher_temperature, num_hard_negatives, weighting, alpha)["objectives"])


def dcd_distiller(student: nn.Module, teacher: nn.Module, **kwargs: Any) -> Distiller:
    """``student``: a dual encoder; ``teacher``: a trained model with a ``scores`` output."""
    return Distiller(student, FrozenTeacher(teacher), dcd_terms(**kwargs))


def fit_fusion_teacher(model: FusionScorer, train_data: Any, out_dir: str | Path | None, *, epochs: int = 40,
                       batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> dict[str, Any]:
    """Train a fusion scorer with :class:`~distillery.objectives.PairwiseScoreCE` on in-batch
    pairs (no evaluation: the Trainer's metrics need logits or two embeddings); returns the
    Trainer's summary. Evaluate it with :func:`fusion_retrieval_scores`."""
    trainer = Trainer(Distiller(model, None, [Term("itm", PairwiseScoreCE())]), train_data, eval_data=None, out_dir=out_dir,
                      epochs=epochs, batch_size=batch_size, seed=seed, optimizer={"name": "adamw", "lr": lr, "weight_decay": 0.02},
                      scheduler={"name": "cosine", "warmup_steps": 50}, checkpoint_every=10**9, progress=False, tensorboard=False)
    return trainer.fit()


@torch.no_grad()
def fusion_retrieval_scores(teacher: FusionScorer, x: torch.Tensor) -> torch.Tensor:
    """Image->text scores ``[N, N]`` of a fusion teacher over paired rows ``x`` ``[N, width]``
    (``N * N`` fusion forward passes)."""
    teacher.eval()
    return teacher.score_pairs(x[:, : teacher.image_dim], x[:, teacher.image_dim : teacher.image_dim + teacher.text_dim])


@torch.no_grad()
def dual_retrieval_scores(student: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Image->text cosine scores ``[N, N]`` of a dual encoder over paired rows ``x`` (``2 N``
    tower forward passes, then one matrix product)."""
    student.eval()
    out = student(x)
    i, t = torch.nn.functional.normalize(out["image"], dim=1), torch.nn.functional.normalize(out["text"], dim=1)
    return i @ t.T


def time_retrieval(score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time (s) of ``score_fn(x)``, ranking every candidate for every query."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        score_fn(x)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
