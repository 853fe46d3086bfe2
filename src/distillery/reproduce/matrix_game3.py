"""#45 Matrix-Game 3.0, in miniature: an action-conditioned causal world model trained to
self-correct on re-injected generated frames, then multi-segment AR DMD, against plain teacher
forcing; scored on revisits of a gridworld camera.

Paper: Skywork AI Matrix-Game team 2026, "Matrix-Game 3.0: Real-Time and Streaming Interactive
World Model with Long-Horizon Memory", arXiv:2604.08995 (abstract: "by modeling prediction
residuals and re-injecting imperfect generated frames during training, the base model learns
self-correction; meanwhile, camera-aware memory retrieval and injection enable the base model to
achieve long horizon spatiotemporal consistency").

Miniature (``gridworld_videos``: a 16x16 camera over a 32x32 world of digits and grey blocks,
moved a whole view (16 pixels) per action (5 actions), so a view is either new or a revisit of
one seen before; the camera goes out and retraces its path; chunks of 2 frames; training videos
of 8 frames = 4 chunks; every rollout continues 1 real chunk):

  1. teacher, once (seed 0): a bidirectional action-conditioned ``video_transformer`` (dim 32,
     depth 2, 4 heads, patch 4; velocity prediction) trained by ``video_denoising`` on a flow
     process (Adam lr 2e-3, cosine, clip 1, EMA 0.99);
  2. per seed, two causal base models from the teacher's weights (block-causal, the same
     actions), trained by teacher-forced denoising (``matrix_game3_base``, noise per chunk,
     Adam lr 1e-3, batch 16):
       * ``plain`` (a): ``reinject = 0``: the context is always the real video;
       * ``reinject`` (b): ``reinject = 0.5``: each later context chunk is, with probability 0.5,
         the model's own 2-step rollout of it (refreshed every update);
  3. per seed and base model, multi-segment AR DMD (``self_forcing``: the student's own 4-chunk
     rollout after 1 real chunk, 2 steps per chunk, DMD against the teacher, 2 fake-score
     updates per step, Adam lr 1e-4 betas (0, 0.99)): ``plain_dmd``, ``reinject_dmd``;
  4. each model streams 48 test videos (128 in full mode) for 8 chunks (16 frames: twice the training length; the
     camera goes out for 7 moves and comes back, so every generated frame of the way back
     revisits a place seen before) from 1 real chunk with its KV cache, conditioned on its own
     output: base models at 4 steps per chunk, DMD students at 2 (fixed evaluation noise).

Measured: ``revisit_consistency`` (mean |frame_i - frame_j| over pairs of frames at the same
camera position, :func:`distillery.streaming.metrics.revisit_consistency`; the real prefix
included, lower is better) and ``render_error`` (mean |x - x_true| of the generated frames
against the ground-truth render, lower is better). The teacher-forcing and re-injection models
of a seed share the teacher, the data order and the training length.

Rules, fixed here before the 3-seed run (pilots on seed 0, all before the rules: a 4-pixel stride
(the models learned no use of the context in the budget; the whole-view stride was kept), the
base learning rate and the step counts):
  1. with re-injection the distilled (DMD) students are more consistent on revisits: mean
     ``revisit_consistency`` of ``reinject_dmd`` lower than ``plain_dmd``'s by more than the
     standard error of the difference (3 seeds);
  2. and closer to the ground-truth render: mean ``render_error`` of ``reinject_dmd`` lower than
     ``plain_dmd``'s by more than the standard error;
  3. the same two comparisons for the base models (``reinject`` vs ``plain``, 4 steps per
     chunk): re-injection lowers the revisit inconsistency (3a) and the render error (3b),
     each judged like 1 and 2.
The camera-aware memory (:func:`~distillery.recipes.matrix_game3.camera_memory_rollout`) is
reported, not judged: the ``reinject_dmd`` students streamed with a bounded context (1 recent
chunk + 1 chunk retrieved by camera position) against 1 recent chunk alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..recipes.matrix_game3 import base_config, camera_memory_rollout, dmd_config
from . import Claim, Context, Reproduction, better, mean_std, register
from ._common import Settings, compose

FRAMES, CHUNK, PREFIX, EVAL_CHUNKS = 8, 2, 1, 8
BASE_STEPS, DMD_STEPS, P = 4, 2, 0.5
NET = {"dim": 32, "depth": 2, "heads": 4, "patch": 4, "chunk": CHUNK, "num_actions": 5, "max_frames": 64}
WORLD = {"frames": FRAMES, "size": 16, "world": 32, "stride": 16, "n_actions": 5, "revisit": True}
PROCESS = {"kind": "flow"}
PREDICTION = "velocity"
SETTINGS = Settings(
    quick={"teacher_steps": 500, "base_steps": 150, "dmd_steps": 50, "n_train": 1000, "num_videos": 48},
    full={"teacher_steps": 1500, "base_steps": 400, "dmd_steps": 200, "n_train": 2000, "num_videos": 128},
)


def _data(s: dict[str, Any], batch: int) -> dict[str, Any]:
    return {"dataset": "gridworld_videos", "params": {**WORLD, "n_train": s["n_train"], "n_test": 200},
            "batch_size": batch}


def _train(steps: int, lr: float, **extra: Any) -> dict[str, Any]:
    return {"steps": steps, "optimizer": {"name": "adam", "lr": lr}, "log_every": max(1, steps // 10),
            "checkpoint_every": 10**9, "keep_checkpoints": 1, "progress": False, "tensorboard": False, **extra}


def _eval(s: dict[str, Any], steps: int) -> dict[str, Any]:
    return {"steps": [steps], "num_videos": s["num_videos"], "chunks": EVAL_CHUNKS, "prefix_chunks": PREFIX,
            "metrics": ["revisit_consistency", "flicker"], "media": True}


def teacher_config(s: dict[str, Any]) -> dict[str, Any]:
    """The bidirectional action-conditioned video teacher (seed 0)."""
    return {"engine": "streaming", "name": "matrix_game3_teacher", "seed": 0, "data": _data(s, 32), "process": PROCESS,
            "student": {"denoiser": {"name": "video_transformer", "params": {**NET, "attention": "bidirectional"}},
                        "prediction": PREDICTION},
            "method": {"kind": "video_denoising", "params": {"ema_decay": 0.99}},
            "train": _train(s["teacher_steps"], 2e-3, grad_clip=1.0, scheduler={"name": "cosine", "warmup_steps": 50}),
            "eval": {"steps": [16], "num_videos": 32, "metrics": ["flicker"], "media": False}}


def _causal(init_run: str) -> dict[str, Any]:
    return {"denoiser": {"name": "video_transformer", "params": {**NET, "attention": "block_causal"}},
            "prediction": PREDICTION, "init": "run", "init_run": init_run}


def base_configs(s: dict[str, Any], teacher_run: str) -> dict[str, dict[str, Any]]:
    """The two causal base models (without their seed)."""
    base = {"engine": "streaming", "data": _data(s, 16), "process": PROCESS, "student": _causal(teacher_run),
            "train": _train(s["base_steps"], 1e-3, grad_clip=1.0), "eval": _eval(s, BASE_STEPS)}
    return {"plain": compose(base, base_config(reinject=0.0, prefix_chunks=PREFIX)),
            "reinject": compose(base, base_config(reinject=P, reinject_steps=2, prefix_chunks=PREFIX))}


def dmd_student_config(s: dict[str, Any], teacher_run: str, base_run: str) -> dict[str, Any]:
    """Multi-segment AR DMD from a base model's run (without its seed)."""
    return compose({"engine": "streaming", "data": _data(s, 16), "process": PROCESS,
                    "teacher": {"kind": "run", "run": teacher_run}, "student": _causal(base_run),
                    "train": {**_train(s["dmd_steps"], 1e-4), "optimizer": {"name": "adam", "lr": 1e-4, "betas": [0.0, 0.99]}},
                    "eval": _eval(s, DMD_STEPS)},
                   dmd_config(steps=DMD_STEPS, prefix_chunks=PREFIX, fake_updates=2))


def _truth(s: dict[str, Any]) -> dict[str, torch.Tensor]:
    from ..data import load_dataset
    from ..streaming import register as register_streaming

    register_streaming()
    test = load_dataset("gridworld_videos", **{**WORLD, "n_train": s["n_train"], "n_test": 200,
                                               "frames": EVAL_CHUNKS * CHUNK}).test
    return {k: v[:s["num_videos"]] for k, v in test.tensors.items()}


def render_error(run_dir: Path, summary: dict[str, Any], steps: int, truth: dict[str, torch.Tensor]) -> float:
    """Mean |x - x_true| of the generated frames of the run's final evaluation videos."""
    from safetensors.torch import load_file

    x = load_file(str(run_dir / "samples" / f"step{summary['steps']}_nfe{steps}.safetensors"))["samples"]
    gen = slice(PREFIX * CHUNK, None)
    return float((x[:, gen] - truth["x"][: len(x), gen]).abs().mean())


def memory_figures(run_dir: Path, truth: dict[str, torch.Tensor]) -> dict[str, float]:
    """Revisit consistency / render error of the run's student streamed with a bounded context:
    1 recent chunk alone vs 1 recent + 1 retrieved by camera position."""
    from ..generative.sample import load_generative_run
    from ..streaming.metrics import revisit_consistency
    from ..streaming.trainer import streaming_student

    _, built = load_generative_run(run_dir)
    student = streaming_student(built.method).eval()
    out: dict[str, float] = {}
    cond = {"actions": truth["actions"]}
    for name, memory in (("recent_only", 0), ("camera_memory", 1)):
        torch.manual_seed(1234)
        x = camera_memory_rollout(student, len(truth["x"]), EVAL_CHUNKS, [DMD_STEPS] * EVAL_CHUNKS, cond=cond,
                                  real=truth["x"], prefix_chunks=PREFIX, window=1, memory=memory)
        out[f"{name} revisit_consistency"] = revisit_consistency(x, truth["pos"])
        out[f"{name} render_error"] = float((x[:, PREFIX * CHUNK:] - truth["x"][:, PREFIX * CHUNK:]).abs().mean())
    return out


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    ctx.train("teacher", teacher_config(s))
    teacher_run = str((ctx.out / "teacher").resolve())
    truth = _truth(s)
    bases = base_configs(s, teacher_run)
    keys = ("revisit_consistency", "render_error")
    names = ("plain", "reinject", "plain_dmd", "reinject_dmd")
    res: dict[str, dict[str, list[float]]] = {v: {k: [] for k in keys} for v in names}
    memory: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        for name, cfg in bases.items():
            run_name = f"{name}/seed{seed}"
            summary = ctx.train(run_name, {"name": f"matrix_game3_{name}", "seed": seed, **cfg})
            final = summary["final"][str(BASE_STEPS)]
            res[name]["revisit_consistency"].append(float(final["revisit_consistency"]))
            res[name]["render_error"].append(render_error(ctx.out / run_name, summary, BASE_STEPS, truth))
            dmd_name = f"{name}_dmd/seed{seed}"
            dmd_cfg = dmd_student_config(s, teacher_run, str((ctx.out / run_name).resolve()))
            summary = ctx.train(dmd_name, {"name": f"matrix_game3_{name}_dmd", "seed": seed, **dmd_cfg})
            final = summary["final"][str(DMD_STEPS)]
            res[f"{name}_dmd"]["revisit_consistency"].append(float(final["revisit_consistency"]))
            res[f"{name}_dmd"]["render_error"].append(render_error(ctx.out / dmd_name, summary, DMD_STEPS, truth))
            if name == "reinject":
                for k, v in memory_figures(ctx.out / dmd_name, truth).items():
                    memory.setdefault(k, []).append(v)
    rc = "revisit consistency: mean |frame_i - frame_j| over frame pairs at the same camera position (lower is better)"
    re_ = "render error: mean |x - x_true| of the generated frames against the ground-truth render (lower is better)"
    claims = [
        better("With re-injection of generated frames, the distilled (multi-segment DMD) world model is more consistent "
               "when the camera revisits a place", res["reinject_dmd"]["revisit_consistency"],
               res["plain_dmd"]["revisit_consistency"], a_name="reinject_dmd", b_name="plain_dmd", higher=False, metric=rc),
        better("... and its long rollouts stay closer to the ground-truth render", res["reinject_dmd"]["render_error"],
               res["plain_dmd"]["render_error"], a_name="reinject_dmd", b_name="plain_dmd", higher=False, metric=re_),
        better("The self-correcting base model (before DMD) is more consistent on revisits than the teacher-forced one",
               res["reinject"]["revisit_consistency"], res["plain"]["revisit_consistency"], a_name="reinject",
               b_name="plain", higher=False, metric=rc),
        better("... and closer to the ground-truth render", res["reinject"]["render_error"], res["plain"]["render_error"],
               a_name="reinject", b_name="plain", higher=False, metric=re_),
    ]
    table = {f"{v} {k}": mean_std(res[v][k]) for v in names for k in keys}
    table.update({f"reinject_dmd, bounded context: {k}": mean_std(v) for k, v in memory.items()})
    for claim in claims:
        claim.figures.update(table)
        claim.figures.update({**s, "eval_chunks": EVAL_CHUNKS, "training_chunks": FRAMES // CHUNK, "reinject_p": P,
                              "base_eval_steps": BASE_STEPS, "dmd_eval_steps": DMD_STEPS})
    return claims


REPRODUCTION = register(
    Reproduction(
        name="matrix_game3",
        paper="Skywork AI Matrix-Game team 2026, arXiv:2604.08995",
        method="Matrix-Game 3.0: action-conditioned causal world model trained to self-correct on re-injected "
               "generated frames, camera-aware memory retrieval, then multi-segment AR DMD",
        family="streaming",
        summary="gridworld camera videos that revisit places: revisit consistency and render error with vs without "
                "re-injection of generated frames, before and after DMD",
        run=run,
        recipe="matrix_game3",
    )
)
