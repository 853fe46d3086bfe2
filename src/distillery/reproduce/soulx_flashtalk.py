"""#7 SoulX-FlashTalk, in miniature: intra-chunk bidirectional vs strictly causal streaming
students, and multi-step retrospective self-correction against long-rollout drift.

Paper: Shen et al. 2025, "SoulX-FlashTalk: Real-Time Infinite Streaming of Audio-Driven Avatars
via Self-Correcting Bidirectional Distillation", arXiv:2512.23379 (abstract: "Existing
approaches often compromise visual fidelity by enforcing strictly unidirectional attention
... [we retain] bidirectional attention within video chunks ... a Multi-step Retrospective
Self-Correction Mechanism, enabling the model to autonomously recover from accumulated errors
and preventing collapse"; 14B, 0.87 s start-up, 32 FPS).

Miniature: the audio-driven sprite videos and the bidirectional teacher of
:mod:`distillery.reproduce.livetalk` (trained here once, seed 0, by the same recipe code:
:func:`~distillery.reproduce.livetalk.shared_teacher`; 16x16, 8 frames, chunks of 2, dim 32,
depth 2, 16 Euler steps; 400 steps quick, 2000 full). Students (3 seeds each), the teacher's architecture initialised from
its weights, 2 denoising steps per chunk, real first chunk as prefix, Self-Forcing DMD
(self-forcing context, gradient at a random exit step of every chunk), batch 16, Adam 2e-4,
grad clip 1, one fake-score update per step, 40 steps (quick) / 400 (full), on the clean
``talking_sprites`` (no noisy conditions: that is LiveTalk's part):

  * ``bidirectional_chunks``: ``attention: block_causal`` (bidirectional inside a chunk);
  * ``strictly_causal``: ``attention: frame_causal`` (causal frame by frame), same steps and
    NFE per chunk;
  * ``self_correction``: ``block_causal`` with multi-step retrospective self-correction,
    ``retro_chunks = 4`` (each update streams ``r ~ U{0..4}`` chunks of its own first, then the
    DMD loss scores the last 4 chunks).

Evaluation, measures and the NFE as in :mod:`distillery.reproduce.livetalk`: 32 test videos
streamed for 16 chunks (4x the training length) from the real first chunk at 2 steps per chunk;
``fd`` (digits FD of frames 2..7 against the test frames) and ``sync`` on the training horizon;
``late_fd`` (digits FD of frames 24..31 of the 4x rollout) for drift.

Rules, fixed here before the reproduction was run (no pilot of these students was run):
  1. intra-chunk bidirectional attention beats strictly causal attention at equal NFE:
     ``bidirectional_chunks``' mean ``fd`` is lower than ``strictly_causal``'s by more than the
     standard error of the difference (3 seeds);
  2. self-correction reduces drift over long rollouts: ``self_correction``'s mean ``late_fd``
     is lower than ``bidirectional_chunks``' by more than the standard error of the difference
     (3 seeds).
Note (on the page too): the retrospective rollouts also visit absolute frame positions 8..23
during training, which plain Self-Forcing never does; the comparison includes that effect.
"""

from __future__ import annotations

from typing import Any

from ..recipes.livetalk import talking_data
from ..recipes.soulx_flashtalk import soulx_config
from . import Claim, Context, Reproduction, better, mean_std, register
from ._common import Settings, compose
from .livetalk import (
    FRAMES,
    PREFIX,
    STUDENT_STEPS,
    TEACHER_STEPS,
    ground_truth,
    horizon_scores,
    long_scores,
    saved_videos,
    shared_teacher,
    student_base,
    student_vs_truth_strip,
)

SETTINGS = Settings(
    quick={"teacher_steps": 400, "student_steps": 40, "retro_chunks": 4},
    full={"teacher_steps": 2000, "student_steps": 400, "retro_chunks": 4},
)


def variants(s: dict[str, Any], teacher_run: str, media: bool) -> dict[str, dict[str, Any]]:
    """The three students (without their seed)."""
    clean = {"data": talking_data(frames=FRAMES, n_test=200, noisy_fraction=0.0, curate=False)}
    out = {}
    for name, attention, retro in (("bidirectional_chunks", "block_causal", 0), ("strictly_causal", "frame_causal", 0),
                                   ("self_correction", "block_causal", s["retro_chunks"])):
        out[name] = compose(student_base(s, teacher_run, attention, media=media), clean,
                            soulx_config(steps=STUDENT_STEPS, retro_chunks=retro, prefix_chunks=PREFIX))
    return out


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    teacher_run, teacher = shared_teacher(ctx, s)
    truth_short, truth_long = ground_truth(FRAMES), ground_truth(4 * FRAMES)
    t_scores = horizon_scores(saved_videos(ctx.out / "teacher", s["teacher_steps"], TEACHER_STEPS), truth_short)
    scores: dict[str, dict[str, list[Any]]] = {}
    for seed in ctx.seeds:
        for name, cfg in variants(s, teacher_run, media=seed == ctx.seeds[0]).items():
            ctx.train(f"{name}/seed{seed}", {"name": f"soulx_{name}", "seed": seed, **cfg})
            video = saved_videos(ctx.out / name / f"seed{seed}", s["student_steps"], STUDENT_STEPS)
            got = {**horizon_scores(video, truth_short), **long_scores(video, truth_long)}
            for key, value in got.items():
                scores.setdefault(name, {}).setdefault(key, []).append(value)
            if seed == ctx.seeds[0]:
                student_vs_truth_strip(video, truth_long["x"], ctx.out / f"{name}_strip.png",
                                       f"{name}: rows 0-2 ground truth, rows 3-5 student (frames 0-1 real)")
    bi, causal, sc = scores["bidirectional_chunks"], scores["strictly_causal"], scores["self_correction"]
    claims = [
        better("Intra-chunk bidirectional attention beats strictly causal attention at equal NFE (2 steps per chunk)",
               bi["fd"], causal["fd"], a_name="bidirectional_chunks", b_name="strictly_causal", higher=False,
               metric="digits FD of frames 2-7 (training horizon)"),
        better("Multi-step retrospective self-correction reduces drift over long rollouts (4x the training length)",
               sc["late_fd"], bi["late_fd"], a_name="self_correction", b_name="bidirectional_chunks", higher=False,
               metric="digits FD of the last quarter (frames 24-31) of a 4x rollout"),
    ]
    for claim in claims:
        claim.figures.update({f"{name} {key}": mean_std(vals) if not isinstance(vals[0], list) else vals
                              for name, sc_ in scores.items() for key, vals in sc_.items()})
        claim.figures["teacher (16 steps, whole video)"] = t_scores
        claim.figures["teacher summary"] = teacher.get("final")
        claim.figures.update(s)
    return claims


REPRODUCTION = register(
    Reproduction(
        name="soulx_flashtalk",
        paper="Shen et al. 2025, arXiv:2512.23379",
        method="SoulX-FlashTalk: Self-Forcing DMD with intra-chunk bidirectional attention and multi-step "
               "retrospective self-correction",
        family="streaming",
        summary="audio-driven sprite videos: block-causal vs frame-causal 2-step students; retrospective "
                "self-correction vs plain self-forcing drift at 4x length",
        run=run,
        recipe="soulx_flashtalk",
    )
)
