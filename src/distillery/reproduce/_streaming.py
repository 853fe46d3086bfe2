"""What the streaming reproductions on moving-digit videos share: the data section, the train
section, the bidirectional video teacher (trained once per reproduction, seed 0) and the base of
their causal students (started from the teacher's weights, streamed from a real prefix)."""

from __future__ import annotations

from typing import Any

PROCESS = {"kind": "flow"}
PREDICTION = "velocity"


def sprite_data(frames: int, n_train: int, batch: int, n_test: int = 200) -> dict[str, Any]:
    """A ``data`` section of ``sprite_videos``."""
    return {"dataset": "sprite_videos", "params": {"frames": frames, "n_train": n_train, "n_test": n_test},
            "batch_size": batch}


def stream_train(steps: int, lr: float, *, optimizer: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A ``train`` section: Adam at ``lr`` (plus ``optimizer`` keys), one checkpoint, quiet."""
    return {"steps": steps, "optimizer": {"name": "adam", "lr": lr, **(optimizer or {})},
            "log_every": max(1, steps // 10), "checkpoint_every": 10**9, "keep_checkpoints": 1, "progress": False,
            "tensorboard": False, **extra}


def video_teacher(name: str, net: dict[str, Any], frames: int, n_train: int, steps: int) -> dict[str, Any]:
    """The bidirectional video teacher's run (seed 0): flow matching, velocity, EMA 0.99,
    Adam 2e-3 with a cosine schedule (50 warm-up steps) and clipping, batch 32."""
    return {"engine": "streaming", "name": name, "seed": 0, "data": sprite_data(frames, n_train, 32), "process": PROCESS,
            "student": {"denoiser": {"name": "video_transformer", "params": {**net, "attention": "bidirectional"}},
                        "prediction": PREDICTION},
            "method": {"kind": "video_denoising", "params": {"ema_decay": 0.99}},
            "train": stream_train(steps, 2e-3, grad_clip=1.0, scheduler={"name": "cosine", "warmup_steps": 50}),
            "eval": {"steps": [16], "num_videos": 32, "metrics": ["flicker"], "media": False}}


def causal_student(net: dict[str, Any], frames: int, n_train: int, teacher_run: str, train: dict[str, Any],
                   eval_section: dict[str, Any]) -> dict[str, Any]:
    """The base of a block-causal student config (no method, no seed): the teacher's weights at
    the start, batch 16."""
    return {"engine": "streaming", "data": sprite_data(frames, n_train, 16), "process": PROCESS,
            "teacher": {"kind": "run", "run": teacher_run},
            "student": {"denoiser": {"name": "video_transformer", "params": {**net, "attention": "block_causal"}},
                        "prediction": PREDICTION, "init": "teacher"},
            "train": train, "eval": eval_section}
