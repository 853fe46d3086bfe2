"""#24 Hybrid Forcing, in miniature: sliding window vs sliding window + linear memory vs full
attention, on recall beyond the window and on streaming cost.

Paper: Li et al. 2026, "Long-Horizon Streaming Video Generation via Hybrid Attention with
Decoupled Distillation", arXiv:2604.10103 (abstract: "lightweight linear temporal attention to
preserve long-range dependencies beyond the sliding window ... a compact key-value state to
incrementally absorb evicted tokens, retaining temporal context with negligible memory and
computational overhead ... A few-step initial distillation is performed under dense attention,
then the distillation of our proposed linear temporal ... attention is activated").

Miniature (``blink_sprites``, registered by :mod:`distillery.recipes.hybrid_forcing`: a static
8x8 digit on a 16x16 canvas, 12 frames = 6 chunks of 2; shown in chunk 0, hidden (black) in
chunks 1-3, shown again in chunks 4-5 at the same place). Networks: ``video_transformer``, dim 64,
depth 2, 4 heads, patch 8 (4 tokens per frame), velocity prediction on a flow process, all with
the memory gates (``memory: linear``) so that weights move between stages:

  1. the dense model, once (seed 0): block-causal attention with an unbounded window (64 chunks),
     trained by teacher-forced denoising (``video_denoising``, clean context, a noise level per
     chunk); the decoupled distillation's first stage and the teacher of the second;
  2. per seed, stage two: two students started from the dense model, trained the same number
     of steps by ``hybrid_forcing`` (match the dense model's prediction under teacher forcing):
       * ``window``: a sliding window of 2 chunks, no sinks, memory gates frozen at 0;
       * ``hybrid``: the same window plus the linear memory of evicted chunks (gates trained);
  3. each streams 64 test videos from the real chunk 0 (4 steps per chunk, fixed noise); when
     chunk 4 is generated, chunk 0 is 4 chunks back, outside the 2-chunk window (and out of
     reach through the 2 layers: chunk 4 reaches back to chunk 2 at most).

Measured: ``recall_position_error`` (pixels: the generated sprite's centroid vs the true one on
the reappeared frames 8-11; lower is better) and ``recall_accuracy`` (the digits classifier on
the 8x8 crop around the generated sprite in the mean reappeared frame vs the true digit; higher
is better); cost, on untrained networks of the same shapes (cost does not depend on the weights):
the KV cache's bytes (:meth:`KVCache.nbytes`, batch 1) when streaming reaches frame 64 and the
seconds per frame of the chunk at frame 64 (one denoising pass + one context pass, median of 5,
CPU). The window-only cost is measured with ``memory="none"`` (its trained twin holds a zero-gated
state that changes nothing).

Rules, fixed here before the 3-seed run. A first pilot (a bidirectional teacher, ODE-pair stages,
patch 4, dim 32) learned no recall at all in its budget, even under full attention (recall
accuracy at chance); the pipeline was then changed to the one above; its first 3-seed run (dense model 500 steps at
lr 1e-3) was stopped after the dense model, which did not make the digit reappear (recall
accuracy 0.11, position error 3.5 px), and the dense model's training was lengthened (1500
steps, lr 2e-3, cosine, clipping) before this run; nothing else was changed:
  1. recall beyond the window: ``hybrid``'s mean recall position error is lower than
     ``window``'s by more than the standard error of the difference (3 seeds);
  2. identity recall: ``hybrid``'s mean recall accuracy is higher than ``window``'s by more than
     the standard error of the difference (3 seeds);
  3. at sliding-window cost: at frame 64 the hybrid cache is at most 1.5x the window-only cache
     and less than half the full-attention cache (bytes, exact);
  4. reference (not the paper's claim, reported either way): the dense model's recall position
     error (one run, seed 0) is lower than ``window``'s mean (the task needs memory beyond the
     window, and the dense model has learned it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..recipes.hybrid_forcing import net_params, recall_metrics, stage_config, stream_cost
from . import Claim, Context, Reproduction, better, exact, mean_std, register, threshold_on_mean
from ._common import Settings, compose

FRAMES, CHUNK, SHOW, HIDE, WINDOW, DENSE_WINDOW, PREFIX, STEPS = 12, 2, 2, 6, 2, 64, 1, 4
ARCH = {"dim": 64, "depth": 2, "heads": 4, "patch": 8, "chunk": CHUNK}
PROCESS = {"kind": "flow"}
PREDICTION = "velocity"
COST_FRAME = 64
SETTINGS = Settings(
    quick={"teacher_steps": 1500, "stage_steps": 120, "n_train": 1000, "num_videos": 64},
    full={"teacher_steps": 4000, "stage_steps": 500, "n_train": 2000, "num_videos": 128},
)


def _data(s: dict[str, Any], batch: int) -> dict[str, Any]:
    return {"dataset": "blink_sprites", "params": {"frames": FRAMES, "show": SHOW, "hide": HIDE,
                                                   "n_train": s["n_train"], "n_test": 200}, "batch_size": batch}


def _train(steps: int, lr: float, **extra: Any) -> dict[str, Any]:
    return {"steps": steps, "optimizer": {"name": "adam", "lr": lr}, "log_every": max(1, steps // 10),
            "checkpoint_every": 10**9, "keep_checkpoints": 1, "progress": False, "tensorboard": False, **extra}


def _net(window: int, attention: str = "block_causal") -> dict[str, Any]:
    return {"name": "video_transformer", "params": net_params(window=window, attention=attention, **ARCH)}


def teacher_config(s: dict[str, Any]) -> dict[str, Any]:
    """The dense causal model (seed 0): teacher-forced denoising, unbounded window."""
    return {"engine": "streaming", "name": "hybrid_dense", "seed": 0, "data": _data(s, 32), "process": PROCESS,
            "student": {"denoiser": _net(DENSE_WINDOW), "prediction": PREDICTION},
            "method": {"kind": "video_denoising", "params": {"context": "clean", "noise": "chunk"}},
            "train": _train(s["teacher_steps"], 2e-3, scheduler={"name": "cosine", "warmup_steps": 50}, grad_clip=1.0),
            "eval": {"steps": [STEPS], "num_videos": s["num_videos"], "prefix_chunks": PREFIX, "metrics": ["flicker"],
                     "media": True}}


def stage_two_configs(s: dict[str, Any], teacher_run: str) -> dict[str, dict[str, Any]]:
    """Stage two: the two students, from the dense model (without their seed)."""
    def student(window: int) -> dict[str, Any]:
        return {"engine": "streaming", "data": _data(s, 16), "process": PROCESS,
                "teacher": {"kind": "run", "run": teacher_run},
                "student": {"denoiser": _net(window), "prediction": PREDICTION, "init": "teacher"},
                "train": _train(s["stage_steps"], 3e-4),
                "eval": {"steps": [STEPS], "num_videos": s["num_videos"], "prefix_chunks": PREFIX,
                         "metrics": ["flicker"], "media": True}}

    return {
        "window": compose(student(WINDOW), stage_config("hybrid", memory=False, noise="chunk")),
        "hybrid": compose(student(WINDOW), stage_config("hybrid", memory=True, noise="chunk")),
    }


def score_run(run_dir: Path, s: dict[str, Any], steps: int) -> dict[str, float]:
    """Recall metrics of a run's final streamed samples against the test videos."""
    from safetensors.torch import load_file

    from ..recipes.hybrid_forcing import blink_sprites

    video = load_file(str(run_dir / "samples" / f"step{steps}_nfe{STEPS}.safetensors"))["samples"]
    test = blink_sprites(frames=FRAMES, show=SHOW, hide=HIDE, n_train=s["n_train"], n_test=200).test
    n = video.shape[0]
    return recall_metrics(video, test.extra["pos"][:n], test.y[:n], SHOW + HIDE)


def costs() -> dict[str, dict[str, float]]:
    """Cache bytes and seconds per frame at frame 64, for the three attention kinds."""
    import torch

    from ..streaming.models import VideoTransformer

    kinds = {"full": {"window": None, "memory": "none"}, "window": {"window": WINDOW, "memory": "none"},
             "hybrid": {"window": WINDOW, "memory": "linear"}}
    torch.manual_seed(0)
    return {k: stream_cost(VideoTransformer(FRAMES, 1, 16, attention="block_causal", layout="joint", max_frames=128,
                                            **ARCH, **v),
                           COST_FRAME) for k, v in kinds.items()}


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    ctx.train("teacher", teacher_config(s))
    teacher_run = str((ctx.out / "teacher").resolve())
    keys = ("recall_position_error", "recall_accuracy")
    dense = score_run(ctx.out / "teacher", s, s["teacher_steps"])
    ctx.log("  teacher (dense model): " + ", ".join(f"{k} {v:.4g}" for k, v in dense.items()))
    res: dict[str, dict[str, list[float]]] = {v: {k: [] for k in keys} for v in ("window", "hybrid")}
    for seed in ctx.seeds:
        for name, cfg in stage_two_configs(s, teacher_run).items():
            ctx.train(f"{name}/seed{seed}", {"name": f"hybrid_{name}", "seed": seed, **cfg})
            scores = score_run(ctx.out / f"{name}/seed{seed}", s, s["stage_steps"])
            ctx.log(f"  {name}/seed{seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
            for k, v in scores.items():
                res[name][k].append(v)
    cost = costs()
    cb = {k: c["cache_bytes"] for k, c in cost.items()}
    ok = cb["hybrid"] <= 1.5 * cb["window"] and cb["hybrid"] < 0.5 * cb["full"]
    claims = [
        better("Recall beyond the window: after the sprite was hidden longer than the window, the window + linear "
               "memory student puts it back closer to its true place than the window-only student",
               res["hybrid"]["recall_position_error"], res["window"]["recall_position_error"], a_name="hybrid",
               b_name="window", higher=False, metric="recall position error in pixels (lower is better)"),
        better("Identity recall beyond the window: the reappearing digit is classified as the shown one more often "
               "with the linear memory than with the window only",
               res["hybrid"]["recall_accuracy"], res["window"]["recall_accuracy"], a_name="hybrid", b_name="window",
               higher=True, metric="digit recall accuracy (higher is better)"),
        exact("At sliding-window cost: at frame 64 the hybrid KV cache stays near the window-only size and far below "
              "full attention's",
              "hybrid cache bytes <= 1.5 x window-only bytes and < 0.5 x full-attention bytes at frame 64 (exact)",
              ok, {f"{k} cache_bytes": c["cache_bytes"] for k, c in cost.items()}),
        Claim("Reference: the dense model recalls better than the window only (the task needs memory beyond the "
              "window)", "dense model's recall position error (one run) < window's mean over seeds",
              dense["recall_position_error"] < mean_std(res["window"]["recall_position_error"])["mean"], {},
              detectable=threshold_on_mean(res["window"]["recall_position_error"], dense["recall_position_error"],
                                           what="the window's mean error against the dense model's one run")),
    ]
    claims[2].figures.update({f"{k} seconds_per_frame": c["seconds_per_frame"] for k, c in cost.items()})
    table = {f"{v} {k}": mean_std(res[v][k]) for v in res for k in keys}
    for claim in claims:
        claim.figures.update(table)
        claim.figures.update({f"dense model {k}": v for k, v in dense.items()})
        claim.figures.update({**s, "window_chunks": WINDOW, "hidden_chunks": HIDE // CHUNK, "cost_frame": COST_FRAME})
    return claims


REPRODUCTION = register(
    Reproduction(
        name="hybrid_forcing",
        paper="Li et al. 2026, arXiv:2604.10103",
        method="Hybrid Forcing: sliding-window attention plus a linear-attention memory of evicted tokens, distilled "
               "dense first, then with window + memory",
        family="streaming",
        summary="blinking-digit videos (hidden longer than the window): window vs window + linear memory vs full "
                "attention, on recall after reappearance and on cache size / time at frame 64",
        run=run,
        recipe="hybrid_forcing",
    )
)
