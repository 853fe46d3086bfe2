"""``distillery sample RUN_DIR --steps N --num K`` on a streaming run: film strips and a GIF.

Streams ``K`` test videos (the run's ``eval.prefix_chunks`` real chunks, then the student's own
chunks with its KV cache) for ``--chunks`` chunks (default: the run's ``eval.chunks``), at ``N``
denoising steps per chunk, and writes into ``out`` (default ``<run_dir>/sample_steps<N>``):

* ``samples.safetensors``: ``{"samples": (K, T, C, H, W), "truth": (K, T, C, H, W)}``;
* ``samples.png``: a film strip, each generated video above its ground truth;
* ``samples.gif``: the generated videos as an animated GIF;
* ``metrics.json``: the streaming metrics of these videos (position error, flicker, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..engine import checkpoint as ckpt
from ..errors import ConfigError


def sample_stream_run(run_dir: Path, *, steps: int, num: int = 8, seed: int = 0, out: Path | None = None,
                      chunks: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Stream ``num`` videos of the run; returns the written paths, the videos and their metrics."""
    from ..generative.sample import load_generative_run
    from ..data import load_dataset
    from .rollout import conditions_of, rollout
    from .trainer import score_videos, streaming_student
    from .visual import animated_gif, film_strip

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be a positive number of denoising steps per chunk, got {steps!r}.")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ConfigError(f"--num must be a positive number of videos, got {num!r}.")
    run_dir = Path(run_dir)
    cfg, built = load_generative_run(run_dir)
    student = streaming_student(built.method).to(device).eval()
    net = student.net
    chunks = chunks or cfg.eval.chunks or net.frames // net.chunk
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ConfigError(f"--chunks must be a positive number of chunks, got {chunks!r}.")
    frames = chunks * net.chunk
    if frames > net.max_frames:
        raise ConfigError(f"--chunks {chunks}: {frames} frames exceed the student's position table (max_frames={net.max_frames}).")
    test = built.splits.test if frames == net.frames else load_dataset(cfg.data.dataset, **{**cfg.data.params, "frames": frames}).test
    if num > len(test):
        raise ConfigError(f"--num {num} exceeds the {len(test)} test videos.")
    truth = {k: v[:num] for k, v in test.tensors.items()}
    torch.manual_seed(seed)
    with torch.no_grad():
        batch = {k: v.to(device) for k, v in truth.items()}
        if net.attention == "bidirectional":
            x, prefix = built.method.sample(num, steps, cond=conditions_of(batch, net), device=device), 0
        else:
            prefix = min(cfg.eval.prefix_chunks, chunks - 1)
            x = rollout(student, num, chunks, [steps] * chunks, cond=conditions_of(batch, net), real=batch["x"],
                        prefix_chunks=prefix, context_noise=float(getattr(built.method, "context_noise", 0.0)),
                        device=device).video
    x = x.detach().float().cpu()
    out = Path(out) if out is not None else run_dir / f"sample_steps{steps}"
    out.mkdir(parents=True, exist_ok=True)
    ckpt.save_state({"samples": x.contiguous(), "truth": truth["x"].float().contiguous()}, out / "samples.safetensors")
    paired = torch.stack([x, truth["x"].float()], 1).reshape(-1, *x.shape[1:])  # generated, truth, generated, ...
    title = f"{cfg.name or run_dir.name}: {steps} step(s) per chunk, {chunks} chunks (rows: generated / ground truth)"
    png = film_strip(paired[:16], out / "samples.png", title=title) or out / "samples.png"
    gif = animated_gif(x[:16], out / "samples.gif") or out / "samples.gif"
    metrics = [m for m in cfg.eval.metrics if m != "timing"]
    if net.attention == "bidirectional":
        metrics = [m for m in metrics if m in ("flicker", "drift")]
    scores = score_videos(x, truth, metrics, net.chunk, prefix * net.chunk)
    (out / "metrics.json").write_text(json.dumps(scores, indent=2))
    return {"samples": out / "samples.safetensors", "png": Path(png), "gif": Path(gif), "x": x, "metrics": scores}
