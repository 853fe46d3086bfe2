"""#17 OmniForcing, in miniature: one causal model that streams video and a 4x faster audio
stream jointly (Joint Self-Forcing) against separate streams (audio first, then video
conditioned on the generated audio), scored by audio-video sync over long rollouts.

Paper: Su et al. 2026, "OmniForcing: Unleashing Real-time Joint Audio-Visual Generation",
arXiv:2603.11647 (abstract: asymmetric block-causal alignment "prevents multi-modal
synchronization drift"; Joint Self-Forcing "enables the model to dynamically self-correct
cumulative cross-modal errors ... during long rollouts"; streaming "maintaining multi-modal
synchronization ... on par with the bidirectional teacher").

Miniature (``sprite_videos(audio=True)``: 16x16 videos of 8 frames, one held-out-digit sprite
whose vertical motion is driven by a 1-channel audio stream at 4 samples per frame; 2000
training / 200 test videos; chunks of 2 frames; every model a ``video_transformer`` of dim 32,
depth 2, 4 heads, patch 4, flow matching with velocity prediction):

  * teachers (once, seed 0; bidirectional, ``video_denoising``, batch 32, Adam 1e-3, EMA 0.99,
    400 steps quick / 1500 full): ``joint`` on the packed 2-channel video+audio tensor
    (:func:`~distillery.recipes.omniforcing.pack_av`), ``audio`` on the audio channel alone,
    ``video`` the 1-channel video conditioned on the true audio (``audio_dim=1, audio_rate=4``);
  * students (3 seeds each): the teacher's architecture with ``attention: block_causal``,
    initialised from it, 2 steps per chunk, a real first chunk as prefix, Self-Forcing DMD on
    their own rollouts (``self_forcing``, batch 16, Adam 2e-4, grad clip 1, one fake-score
    update per step; 60 steps quick / 300 full):
      - ``joint`` (OmniForcing): one model, one KV cache, audio and video of a chunk denoised
        together (Joint Self-Forcing on the AV rollout);
      - ``separate``: the audio student, then the video student; the video student is
        self-forced with the true audio, and at evaluation it is fed the audio student's output.
  Evaluation (the same 32 test videos and noise per seed): stream 16 chunks (32 frames, 4x the
  training length) from the real first chunk (video and audio of frames 0-1), 2 steps per chunk.

Measures: ``sync`` = :func:`~distillery.streaming.metrics.sync_error` between the generated
video and the generated audio over the transitions into frames 2..31 (pixels per frame);
``late_sync`` the same over the last quarter (frames 24..31); ``audio_motion`` = mean
``|a_t - a_{t-1}|`` of the rows the generated audio implies (:func:`~distillery.streaming.data.audio_rows`)
over frames 2..31, against the ground truth's (a frozen audio stream would make sync trivially 0);
``position_error`` of the video against the sprite's true path (for reference only: a generated
audio stream need not follow the true one).

Rules, fixed here before the reproduction was run (no pilot of the students was run; sizes
chosen for the CPU budget):
  1. joint streams stay in sync better over long rollouts: the ``joint`` students' mean ``sync``
     is lower than the ``separate`` pipelines' by more than the standard error of the
     difference (3 seeds, :func:`~distillery.reproduce.better`), AND the joint students' mean
     ``audio_motion`` is at least half of the ground truth's (no frozen-audio shortcut);
  2. the gap holds at the end of the long rollout: mean ``late_sync`` of ``joint`` lower than
     ``separate``'s by more than the standard error of the difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..recipes.omniforcing import AUDIO_RATE, data, method, net, pack_av, unpack_av
from . import Claim, Context, Reproduction, better, mean_std, register
from ._common import Settings, compose

FRAMES, CHUNK, PREFIX = 8, 2, 1
LONG = 4
NUM_VIDEOS = 32
STUDENT_STEPS = 2
SETTINGS = Settings(
    quick={"teacher_steps": 400, "student_steps": 60},
    full={"teacher_steps": 1500, "student_steps": 300},
)


def _train(steps: int, lr: float, clip: float | None = None) -> dict[str, Any]:
    out = {"steps": steps, "optimizer": {"name": "adam", "lr": lr}, "log_every": max(1, steps // 5),
           "checkpoint_every": 10**9, "keep_checkpoints": 1, "progress": False, "tensorboard": False}
    if clip:
        out["grad_clip"] = clip
    return out


def _data(stream: str, batch_size: int) -> dict[str, Any]:
    if stream == "video":
        return {"dataset": "sprite_videos", "params": {"frames": FRAMES, "audio": True, "audio_rate": AUDIO_RATE,
                                                       "n_train": 2000, "n_test": 200}, "batch_size": batch_size}
    return data(stream, frames=FRAMES, batch_size=batch_size)


def teacher_config(stream: str, steps: int) -> dict[str, Any]:
    """The bidirectional teacher of ``stream`` (``joint``, ``audio`` or ``video``)."""
    return {"engine": "streaming", "name": f"omni_teacher_{stream}", "seed": 0, "data": _data(stream, 32),
            "process": {"kind": "flow"},
            "student": {"denoiser": net("bidirectional", stream), "prediction": "velocity"},
            "method": {"kind": "video_denoising", "params": {"ema_decay": 0.99}},
            "train": _train(steps, 1e-3),
            "eval": {"steps": [16], "num_videos": 8, "metrics": ["flicker"], "media": False}}


def student_config(stream: str, teacher_run: str, steps: int, seed: int) -> dict[str, Any]:
    """The causal Self-Forcing student of ``stream`` from its teacher's weights."""
    return compose({"engine": "streaming", "name": f"omni_{stream}", "seed": seed, "data": _data(stream, 16),
                    "process": {"kind": "flow"}, "teacher": {"kind": "run", "run": teacher_run},
                    "student": {"denoiser": net("block_causal", stream), "prediction": "velocity", "init": "teacher"},
                    "train": _train(steps, 2e-4, 1.0),
                    "eval": {"steps": [STUDENT_STEPS], "num_videos": 8, "chunks": FRAMES // CHUNK,
                             "prefix_chunks": PREFIX, "metrics": ["flicker"], "media": False}},
                   method(steps=STUDENT_STEPS, prefix_chunks=PREFIX))


def shared_teacher(ctx: Context, stream: str, steps: int) -> str:
    """Train the ``stream`` teacher once (seed 0), reusing a finished run of the same config."""
    import json

    import yaml

    from ..config import parse_config

    raw = teacher_config(stream, steps)
    run_dir = ctx.out / f"teacher_{stream}"
    done = run_dir / "summary.json"
    if done.is_file() and (run_dir / "config.yaml").is_file():
        same = parse_config(yaml.safe_load((run_dir / "config.yaml").read_text()), "t") == parse_config(raw, "t")
        if json.loads(done.read_text()).get("complete") and same:
            ctx.log(f"  teacher {stream}: reusing {run_dir}")
            return str(run_dir.resolve())
    ctx.train(f"teacher_{stream}", raw)
    return str(run_dir.resolve())


def ground_truth(frames: int, n: int = NUM_VIDEOS) -> dict[str, torch.Tensor]:
    """The first ``n`` test videos of ``sprite_videos(audio=True)`` at ``frames`` frames."""
    from ..streaming.data import sprite_videos

    test = sprite_videos(frames=frames, audio=True, audio_rate=AUDIO_RATE, n_train=1, n_test=200).test
    return {"x": test.x[:n], "audio": test.extra["audio"][:n], "pos": test.extra["pos"][:n]}


def _stream(run_dir: Path, real: torch.Tensor, seed: int, cond: Any = None) -> torch.Tensor:
    """Roll the student of ``run_dir`` for ``real.shape[1] / CHUNK`` chunks from the real first chunk."""
    from ..generative.build import load_run_denoiser
    from ..streaming.rollout import chunk_schedule, rollout

    student = load_run_denoiser(run_dir, sample_shape=tuple(real.shape[1:])).eval()
    chunks = real.shape[1] // CHUNK
    torch.manual_seed(10_000 + seed)
    with torch.no_grad():
        out = rollout(student, real.shape[0], chunks, chunk_schedule("uniform", chunks, STUDENT_STEPS), cond=cond,
                      real=real, prefix_chunks=PREFIX)
    return out.video.float()


def audio_motion(audio: torch.Tensor, frames: int, start: int = PREFIX * CHUNK, size: int = 16) -> float:
    """Mean ``|a_t - a_{t-1}|`` (pixels per frame) of the rows ``audio`` implies, frames ``>= start``."""
    from ..streaming.data import audio_rows

    rows = audio_rows(audio, frames, float(size - 8))
    return float((rows[:, start:] - rows[:, start - 1:-1]).abs().mean())


def scores(video: torch.Tensor, audio: torch.Tensor, truth: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``sync``, ``late_sync``, a sync curve per quarter, ``audio_motion``, ``position_error``."""
    from ..streaming.metrics import position_error, sync_error_curve

    t = video.shape[1]
    start = PREFIX * CHUNK
    curve = sync_error_curve(video, audio, start=start)  # transitions into frames start..t-1
    quarter = t // 4
    per_quarter = [sum(curve[max(0, q * quarter - start):(q + 1) * quarter - start]) /
                   len(curve[max(0, q * quarter - start):(q + 1) * quarter - start]) for q in range(4)]
    return {"sync": sum(curve) / len(curve), "late_sync": per_quarter[-1], "sync_per_quarter": per_quarter,
            "audio_motion": audio_motion(audio, t), "position_error": position_error(video[:, start:],
                                                                                     truth["pos"][:, start:t])}


def strip(video: torch.Tensor, truth: torch.Tensor, path: Path, title: str, frames: int = 16) -> None:
    """3 ground-truth videos, then the same 3 streamed (frames 0-1 real)."""
    from ..streaming.visual import film_strip

    film_strip(torch.cat([truth[:3, :frames], video[:3, :frames]]), path, title=title)


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    teachers = {stream: shared_teacher(ctx, stream, s["teacher_steps"]) for stream in ("joint", "audio", "video")}
    truth = ground_truth(LONG * FRAMES)
    real_v, real_a = truth["x"], truth["audio"]
    results: dict[str, dict[str, list[Any]]] = {"joint": {}, "separate": {}, "separate_true_audio": {}}
    for seed in ctx.seeds:
        runs = {}
        for stream in ("joint", "audio", "video"):
            ctx.train(f"{stream}/seed{seed}", student_config(stream, teachers[stream], s["student_steps"], seed))
            runs[stream] = ctx.out / stream / f"seed{seed}"
        jv, ja = unpack_av(_stream(runs["joint"], pack_av(real_v, real_a), seed), AUDIO_RATE)
        _, sa = unpack_av(_stream(runs["audio"], pack_av(real_v[:, :, :0], real_a), seed), AUDIO_RATE)
        sv = _stream(runs["video"], real_v, seed, cond={"audio": sa})
        tv = _stream(runs["video"], real_v, seed, cond={"audio": real_a})
        got = {"joint": scores(jv, ja, truth), "separate": scores(sv, sa, truth),
               "separate_true_audio": scores(tv, real_a, truth)}
        for name, sc in got.items():
            for key, value in sc.items():
                results[name].setdefault(key, []).append(value)
        if seed == ctx.seeds[0]:
            strip(jv, real_v, ctx.out / "joint_strip.png", "joint: rows 0-2 ground truth, rows 3-5 student (frames 0-1 real)")
            strip(sv, real_v, ctx.out / "separate_strip.png",
                  "separate: rows 0-2 ground truth, rows 3-5 video student on generated audio")
    truth_motion = audio_motion(real_a, LONG * FRAMES)
    jm = mean_std(results["joint"]["audio_motion"])["mean"]
    c1 = better("Joint AV streaming keeps video and audio in sync better than separate streams over 4x-long rollouts",
                results["joint"]["sync"], results["separate"]["sync"], a_name="joint", b_name="separate", higher=False,
                metric="sync error (px/frame), frames 2-31 of a 32-frame rollout")
    motion_ok = jm >= 0.5 * truth_motion
    c1 = Claim(c1.claim, c1.rule + "; AND the joint students' mean audio_motion >= 0.5 x the ground truth's",
               c1.held and motion_ok, {**c1.figures, "joint audio_motion": jm, "ground-truth audio_motion": truth_motion,
                                       "audio_motion ok": motion_ok}, detectable=c1.detectable)
    c2 = better("The sync advantage holds at the end of the long rollout", results["joint"]["late_sync"],
                results["separate"]["late_sync"], a_name="joint", b_name="separate", higher=False,
                metric="sync error (px/frame), frames 24-31")
    for claim in (c1, c2):
        claim.figures.update({f"{name} {key}": mean_std(vals) if not isinstance(vals[0], list) else vals
                              for name, sc in results.items() for key, vals in sc.items()})
        claim.figures.update(s)
    return [c1, c2]


REPRODUCTION = register(
    Reproduction(
        name="omniforcing",
        paper="Su et al. 2026, arXiv:2603.11647",
        method="OmniForcing: Joint Self-Forcing of one causal model over video and a 4x faster audio stream "
               "(shared tokens and KV cache)",
        family="streaming",
        summary="audio-driven sprite videos: joint AV causal streaming vs separate streams (audio, then video on "
                "the generated audio); sync error over 4x-long rollouts",
        run=run,
        recipe="omniforcing",
    )
)
