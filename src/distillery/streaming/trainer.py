"""The streaming loop: the generative loop with a streaming evaluation.

Training is :class:`~distillery.generative.trainer.GenerativeTrainer`'s (players, optimizers,
checkpoints, exact resume, per-sample draws for the global batch). Evaluation (rank 0, every
``eval_every`` steps and at the end) streams test videos: the first ``eval.prefix_chunks``
chunks are real, the student generates the rest chunk by chunk with its KV cache, conditioning
on its own output (:func:`~.rollout.rollout`, ``context="self"``), for ``eval.chunks`` chunks, at
``steps`` per chunk or, when the method has ``inference_schedule(chunks, steps, prefix_chunks)``,
at the per-chunk schedule it returns (First-Frame Enhancement, a diagonal schedule);
a bidirectional network (a teacher's run) samples whole videos instead. The videos are scored
against the procedural ground truth (:mod:`.metrics`), saved as
``samples/step<k>_nfe<n>.safetensors`` and, with ``eval.media``, drawn as a film strip PNG and
an animated GIF next to them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..engine import checkpoint as ckpt
from ..errors import ConfigError
from ..generative.trainer import GenerativeTrainer
from .rollout import conditions_of, rollout


def streaming_student(method: Any) -> Any:
    """The network a method exports (its student Denoiser)."""
    exported = method.exported()
    if not exported:
        raise ConfigError(f"{type(method).__name__} exports no network to evaluate.")
    return next(iter(exported.values()))


def eval_videos(splits_fn: Any, frames: int) -> Any:
    """The test split at ``frames`` frames per video (regenerated when longer than training)."""
    return splits_fn(frames).test


@torch.no_grad()
def time_stream(student: Any, steps: int, chunks: int, device: Any, cond: Any = None) -> dict[str, float]:
    """Frames per second of one stream (batch 1) and the latency of its first chunk: each
    chunk denoised in ``steps`` steps from noise with the KV cache, then appended to it
    (:func:`~.metrics.stream_timing`, one warm-up chunk)."""
    from .metrics import stream_timing
    from .rollout import step_times

    net, process = student.net, student.process
    times = step_times(process, steps, device=device)
    state: dict[str, Any] = {}

    def generate_chunk(k: int) -> torch.Tensor:
        if k == 0:
            state["cache"] = net.init_cache()
        x = torch.randn(1, net.chunk, net.channels, net.size, net.size, device=device)
        chunk = x
        for s in range(steps):
            t = times[s].expand(1)
            chunk = process.convert(net.denoise_chunk(x, t, state["cache"], k, cond), x, t, student.prediction, "x0")
            if s + 1 < steps:
                x = process.add_noise(chunk, torch.randn_like(chunk), times[s + 1].expand(1))
        net.append_chunk(chunk, state["cache"], k, cond)
        return chunk

    out = stream_timing(generate_chunk, chunks)
    return {"stream_fps": float(out["fps"]), "first_chunk_latency_s": float(out["first_chunk_latency_s"])}


def score_videos(video: torch.Tensor, truth: dict[str, torch.Tensor], metrics: list[str], chunk: int,
                 prefix_frames: int) -> dict[str, float]:
    """The streaming metrics of ``video`` ``(B, T, C, H, W)`` against the ground truth ``truth``
    (``x``, ``pos``, ``audio``, ``actions`` of the same videos), on the generated frames."""
    from . import metrics as M

    out: dict[str, float] = {}
    gen, real = video[:, prefix_frames:], truth["x"][:, prefix_frames:]
    for name in metrics:
        if name == "position_error":
            if "pos" not in truth:
                raise ConfigError("eval.metrics: position_error needs ground-truth positions (a sprite_videos dataset).")
            out["position_error"] = float(M.position_error(gen, truth["pos"][:, prefix_frames:]))
        elif name == "flicker":
            out["flicker"] = float(M.flicker(gen, real))
        elif name == "drift":
            curve = M.drift(video, truth["x"], chunk)
            values = curve["per_chunk"] if isinstance(curve, dict) else list(curve)
            out["drift_first"], out["drift_last"] = float(values[0]), float(values[-1])
        elif name == "sync_error":
            if "audio" not in truth:
                raise ConfigError("eval.metrics: sync_error needs an audio stream (sprite_videos with audio: true).")
            out["sync_error"] = float(M.sync_error(video, truth["audio"], start=prefix_frames))
        elif name == "revisit_consistency":
            if "pos" not in truth:
                raise ConfigError("eval.metrics: revisit_consistency needs camera positions (a gridworld_videos dataset).")
            out["revisit_consistency"] = float(M.revisit_consistency(video, truth["pos"]))
    return out


class StreamingTrainer(GenerativeTrainer):
    """:class:`~distillery.generative.trainer.GenerativeTrainer` with the streaming evaluation.

    Args (besides the generative trainer's):
        eval_split: ``frames -> DataSplits``: the dataset rebuilt at a given video length (the
            evaluation's ground truth for rollouts longer than training).
    """

    def __init__(self, *args: Any, eval_split: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_split = eval_split

    def _metric_functions(self) -> dict[str, Any]:
        return {}  # the streaming metrics are scored in :meth:`evaluate` (:func:`score_videos`)

    def _horizon(self, net: Any) -> tuple[int, int]:
        frames = int(net.frames)
        chunks = self.cfg.eval.chunks or frames // net.chunk
        return chunks, chunks * net.chunk

    @torch.no_grad()
    def stream_videos(self, steps: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], int, float]:
        """``(videos (n, T, C, H, W), their ground truth, NFE per video, seconds)`` at ``steps``
        steps per chunk; the global random state is left as it was."""
        ev, student = self.cfg.eval, streaming_student(self.method)
        net = student.net
        chunks, frames = self._horizon(net)
        test = self.eval_split(frames)
        n = min(ev.num_videos, len(test))
        truth = {k: v[:n] for k, v in test.tensors.items()}
        was = self.method.training
        self.method.eval()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                batch = {k: v.to(self.device) for k, v in truth.items()}
                cond = conditions_of(batch, net)
                start = time.perf_counter()
                if net.attention == "bidirectional":
                    x = self.method.sample(n, steps, cond=cond, device=self.device)
                    nfe = steps
                else:
                    prefix = min(ev.prefix_chunks, chunks - 1)
                    # a method with its own per-chunk schedule (FFE, diagonal) says how ``steps`` spreads
                    plan = getattr(self.method, "inference_schedule", None)
                    schedule = list(plan(chunks, steps, prefix)) if callable(plan) else [steps] * chunks
                    r = rollout(student, n, chunks, schedule, cond=cond, real=batch["x"], prefix_chunks=prefix,
                                context="self", context_noise=float(getattr(self.method, "context_noise", 0.0)),
                                device=self.device)
                    x, nfe = r.video, r.nfe
                seconds = time.perf_counter() - start
        finally:
            self.method.train(was)
        return x.detach().float().cpu(), truth, nfe, seconds

    def evaluate(self) -> None:
        if self.rank != 0 or not self.cfg.eval.steps:
            return
        ev = self.cfg.eval
        net = streaming_student(self.method).net
        record: dict[str, Any] = {"split": "eval", "step": self.step}
        entry: dict[str, Any] = {"step": self.step, "results": {}}
        prefix = 0 if net.attention == "bidirectional" else ev.prefix_chunks * net.chunk
        for n in ev.steps:
            x, truth, nfe, seconds = self.stream_videos(n, ev.seed)
            metrics = [m for m in ev.metrics if m != "timing"]
            if net.attention == "bidirectional":  # unconditional whole videos: no continuation to compare
                metrics = [m for m in metrics if m in ("flicker", "drift")]
            scores: dict[str, float] = {"nfe_per_video": float(nfe), "seconds_per_video": seconds / max(x.shape[0], 1),
                                        "frames_per_second": x.shape[0] * x.shape[1] / max(seconds, 1e-9)}
            scores.update(score_videos(x, truth, metrics, net.chunk, prefix))
            if "timing" in ev.metrics and net.attention != "bidirectional":
                cond = conditions_of({k: v[:1].to(self.device) for k, v in truth.items()}, net)
                scores.update(time_stream(streaming_student(self.method), n, x.shape[1] // net.chunk, self.device, cond))
            entry["results"][str(n)] = scores
            record.update({f"{k}/steps{n}": v for k, v in scores.items()})
            if self.run_dir is not None:
                folder = self.run_dir / "samples"
                folder.mkdir(parents=True, exist_ok=True)
                stem = folder / f"step{self.step}_nfe{n}"
                ckpt.save_state({"samples": x.contiguous()}, Path(f"{stem}.safetensors"))
                if ev.media:
                    from .visual import animated_gif, film_strip

                    film_strip(x[:8], Path(f"{stem}.png"), title=f"{n} step(s) per chunk, step {self.step}")
                    animated_gif(x[:8], Path(f"{stem}.gif"))
        self.history.append(entry)
        if self.logger is not None:
            self.logger.log(record)
