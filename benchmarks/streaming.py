"""Bench rows of the streaming engine (issue 13, section 4): the cost per frame of streaming
with a rolling KV cache, and the frame rate of the few-step causal student against the
many-step bidirectional teacher.

Both use the engine's :class:`~distillery.streaming.models.VideoTransformer` with random
weights (the figures depend on sizes, not on what the weights learned; the zero-initialised
output layers are re-drawn so that every prediction is non-trivial) on 16x16 frames, patch 4
(16 tokens per frame), width 64, 4 blocks, chunks of 4 frames, under ``torch.no_grad``.

* ``rolling_kv_per_frame_cost``: the student streams 64 frames (16 chunks, 2 denoising steps
  per chunk plus the pass that appends the chunk to the cache) with a rolling cache (a window
  of 2 chunks plus 1 sink chunk: at most 3 chunks of keys and values per layer); the row is the
  time per frame of the chunk ending at frame 64 over that of the chunk ending at frame 8
  (goal <= 1.1: a constant cost per frame however long the stream). For contrast, in the
  detail: the same with an unbounded cache (every past chunk kept), and without a cache (each
  chunk re-runs the whole prefix, as a model without KV caching must), whose cost per frame
  grows with the frame index.
* ``streaming_student_vs_teacher``: frames per second of the 2-step causal student streaming
  16 frames (4 chunks; 2 steps + 1 cache pass per chunk) against the bidirectional teacher
  sampling the same 16 frames in 50 Euler steps (50 evaluations of the whole clip), batch 8;
  the row is teacher time / student time (how many times faster the student produces frames),
  ``goal`` none (a report), with the NFE of both in the detail.

On CPU all rows run with one intra-op thread (:func:`benchmarks._timing.one_thread`); repeats
alternate, medians are reported.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from benchmarks._timing import one_thread, sync, timed

SIZES = {"dim": 64, "depth": 4, "heads": 4, "patch": 4, "chunk": 4}


def _net(attention: str, frames: int = 16, **kw: Any) -> torch.nn.Module:
    from distillery.streaming.models import VideoTransformer

    torch.manual_seed(0)
    net = VideoTransformer(frames, attention=attention, max_frames=128, **SIZES, **kw)
    with torch.no_grad():
        for layer in [net.out, net.final_ada, *[b.ada for b in net.blocks]]:
            layer.weight.normal_(0.0, 0.02)
    return net.eval()


def _chunk_times(net: torch.nn.Module, chunks: int, n: int, device: str, *, cached: bool, steps: int = 2) -> list[float]:
    """Seconds spent on each chunk of a stream of ``chunks`` chunks (``steps`` denoising calls
    and, with the cache, one append), batch ``n``."""
    F = net.chunk
    shape = (n, F, 1, net.size, net.size)
    times: list[float] = []
    cache = net.init_cache() if cached else None
    done: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(chunks):
            x = torch.randn(shape, device=device)
            t = torch.ones(n, device=device)

            def one_chunk() -> None:
                nonlocal x
                if cached:
                    for _ in range(steps):
                        x = net.denoise_chunk(x, t, cache, i)
                    net.append_chunk(x, cache, i)
                else:  # re-run the whole prefix (clean context) with the noisy chunk at its end
                    prefix = torch.cat(done, 1) if done else None
                    for _ in range(steps):
                        if prefix is None:
                            x = net(x, t)
                        else:
                            full = net(torch.cat([prefix, x], 1), torch.cat([torch.zeros(n, prefix.shape[1], device=device),
                                                                           t[:, None].expand(n, F)], 1))
                            x = full[:, -F:]
            times.append(timed(one_chunk, device))
            done.append(x)
    return times


def rolling_kv_per_frame_cost(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    repeats = 3 if quick else 5
    chunks, n = 16, 4
    variants = {"rolling": _net("block_causal", window=2, sinks=1).to(device),
                "unbounded": _net("block_causal").to(device),
                "no_cache": _net("block_causal").to(device)}
    per: dict[str, list[list[float]]] = {k: [] for k in variants}
    with one_thread(device):
        for _ in range(repeats):
            for name, net in variants.items():
                per[name].append(_chunk_times(net, chunks, n, device, cached=name != "no_cache"))
    F = SIZES["chunk"]

    def ratio(name: str) -> float:
        late = statistics.median(r[-1] for r in per[name])  # the chunk ending at frame 64
        early = statistics.median(r[1] for r in per[name])  # the chunk ending at frame 8
        return late / early

    detail = {name: {"ratio_frame64_vs_frame8": round(ratio(name), 3),
                     "ms_per_frame_at_8": round(1000 * statistics.median(r[1] for r in per[name]) / F, 2),
                     "ms_per_frame_at_64": round(1000 * statistics.median(r[-1] for r in per[name]) / F, 2)}
              for name in per}
    return {"name": "rolling_kv_per_frame_cost", "ratio": round(ratio("rolling"), 3), "goal": 1.1,
            "unit": "time per frame at frame 64 / at frame 8, rolling KV cache (window 2 + 1 sink chunk), 2 steps per chunk",
            "detail": {**detail, "batch": n, "chunk_frames": F, "repeats": repeats, **SIZES}}


def streaming_student_vs_teacher(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    from distillery.generative.denoisers import Denoiser
    from distillery.generative.processes import build_process
    from distillery.generative.samplers import sample
    from distillery.streaming.rollout import rollout

    repeats = 3 if quick else 5
    frames, n, teacher_steps, student_steps = 16, 8, 50, 2
    flow = build_process({"kind": "flow"})
    teacher = Denoiser(_net("bidirectional", frames).to(device), flow, "velocity", sample_shape=(frames, 1, 16, 16))
    student = Denoiser(_net("block_causal", frames).to(device), flow, "x0", sample_shape=(frames, 1, 16, 16))
    chunks = frames // SIZES["chunk"]
    t_teacher, t_student = [], []
    with one_thread(device), torch.no_grad():
        x = torch.randn(n, frames, 1, 16, 16, device=device)
        for _ in range(repeats + 1):
            t_teacher.append(timed(lambda: sample(teacher, x, steps=teacher_steps, solver="euler"), device))
            t_student.append(timed(lambda: rollout(student, n, chunks, [student_steps] * chunks, device=device), device))
    sync(device)
    tt, ts = statistics.median(t_teacher[1:]), statistics.median(t_student[1:])
    return {"name": "streaming_student_vs_teacher", "ratio": round(tt / ts, 2), "goal": None,
            "unit": "frames/s of the 2-step causal student streaming / of the 50-step bidirectional teacher (a report)",
            "detail": {"teacher_fps": round(n * frames / tt, 1), "student_fps": round(n * frames / ts, 1),
                       "teacher_nfe_per_clip": teacher_steps, "student_nfe_per_clip": student_steps * chunks,
                       "student_cache_passes": chunks - 1, "frames": frames, "batch": n, "repeats": repeats, **SIZES}}


def benchmark(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    return [rolling_kv_per_frame_cost(device, quick), streaming_student_vs_teacher(device, quick)]


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(json.dumps(benchmark(args.quick, args.device), indent=1, default=str))
