"""#2 MCM (Motion Consistency Model) in miniature: consistency distillation on a motion
representation plus a frame discriminator against a separate sharp image set, vs plain video CD.

Paper: Zhai et al. 2024, "Motion Consistency Model: Accelerating Video Diffusion with Disentangled
Motion-Appearance Distillation", arXiv:2406.06890 (abstract: a video student distilled from a
teacher trained on low-quality videos can take its frame quality from a separate high-quality
*image* set, "without corresponding video data", by disentangling motion and appearance).

Miniature (the data-quality gap made explicit):

* video data: ``blurred_sprite_videos``: one 8x8 digit bouncing on 16x16 frames, 8 frames,
  every frame blurred by two [1, 2, 1]/4 passes (low quality);
* image set: 2048 **sharp** frames of sprite videos of another seed (unpaired, no videos);
* teacher, once (seed 0): a bidirectional ``video_transformer`` (dim 32, depth 2, 4 heads,
  patch 4, velocity prediction) trained by flow matching on the blurred videos (600 steps quick,
  1500 full, Adam 2e-3, cosine, EMA 0.99);
* per seed, two bidirectional 2-step students (MCM is not streaming) started from the teacher,
  the same steps (Adam 1e-4, batch 16, 18-point grid, Heun teacher step, EMA target 0.95,
  consistency coefficients ``lcm`` with ``sigma_data = 0.05``):
    * ``plain_cd``: consistency distillation on the whole video (``motion: none``, no GAN);
    * ``mcm``: CD on the frame differences only (``motion: difference``) + the frame
      discriminator (MLP on frames re-noised to s ~ U[0, 0.3], weight 0.1).
* evaluation: 64 videos sampled in 2 consistency steps (fixed evaluation noise).

Measured (from the sampled videos): high-frequency energy (mean squared Laplacian, sharper is
higher), the digits FD of all sampled frames against SHARP held-out frames (the sharp test
videos of the data's seed; lower is better), and the motion: the mean |second difference| of
the sprite's intensity centroid (constant-velocity data: ~0 apart from bounces; lower is
better) and the flicker against the (blurred) test videos.

Tuning, said openly: a first 3-seed run was stopped after ``plain_cd`` seed 0 (120 steps,
``sigma_data = 0.5``): its 2-step samples were dominated by noise (the consistency function's
``c_skip x`` at the second step's noise level); ``sigma_data`` was set to 0.05 and the students'
steps to 150, for both variants, before the run below. The rules were not changed.

Rules, fixed here before the 3-seed run (a 10-step smoke run and the stopped run above only):
  1. sharper frames: ``mcm``'s mean high-frequency energy is higher than ``plain_cd``'s by more
     than the standard error of the difference;
  2. closer to the sharp image distribution: ``mcm``'s mean digits FD against the sharp frames
     is lower than ``plain_cd``'s by more than the standard error of the difference;
  3. motion kept: ``mcm``'s mean centroid acceleration is at most 0.15 px/frame^2 worse than
     ``plain_cd``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..recipes.mcm import centroid_acceleration, high_frequency_energy, mcm_config
from . import Claim, Context, Reproduction, better, mean_std, not_worse, register
from ._common import Settings, compose

FRAMES, BLUR, STEPS = 8, 2, 2
SIGMA_DATA = 0.05  # LCM-style: c_skip ~ 0 away from t_min, so a 2-step sample is the x0 estimate
NET = {"dim": 32, "depth": 2, "heads": 4, "patch": 4, "chunk": FRAMES, "attention": "bidirectional"}
SETTINGS = Settings(
    quick={"teacher_steps": 600, "student_steps": 150, "n_train": 1000, "num_videos": 64},
    full={"teacher_steps": 1500, "student_steps": 400, "n_train": 2000, "num_videos": 128},
)


def _data(s: dict[str, Any], batch: int) -> dict[str, Any]:
    return {"dataset": "blurred_sprite_videos",
            "params": {"frames": FRAMES, "blur": BLUR, "n_train": s["n_train"], "n_test": 200}, "batch_size": batch}


def _train(steps: int, lr: float, **extra: Any) -> dict[str, Any]:
    return {"steps": steps, "optimizer": {"name": "adam", "lr": lr}, "log_every": max(1, steps // 10),
            "checkpoint_every": 10**9, "keep_checkpoints": 1, "progress": False, "tensorboard": False, **extra}


def teacher_config(s: dict[str, Any]) -> dict[str, Any]:
    """The bidirectional video teacher on the blurred videos (seed 0)."""
    return {"engine": "streaming", "name": "mcm_teacher", "seed": 0, "data": _data(s, 32), "process": {"kind": "flow"},
            "student": {"denoiser": {"name": "video_transformer", "params": NET}, "prediction": "velocity"},
            "method": {"kind": "video_denoising", "params": {"ema_decay": 0.99}},
            "train": _train(s["teacher_steps"], 2e-3, grad_clip=1.0, scheduler={"name": "cosine", "warmup_steps": 50}),
            "eval": {"steps": [16], "num_videos": 32, "metrics": ["flicker"], "media": False}}


def student_configs(s: dict[str, Any], teacher_run: str) -> dict[str, dict[str, Any]]:
    """The two 2-step students (without their seed)."""
    base = {"engine": "streaming", "data": _data(s, 16), "process": {"kind": "flow"},
            "teacher": {"kind": "run", "run": teacher_run},
            "student": {"denoiser": {"name": "video_transformer", "params": NET}, "prediction": "velocity",
                        "init": "teacher"},
            "train": _train(s["student_steps"], 1e-4),
            "eval": {"steps": [STEPS], "num_videos": s["num_videos"], "metrics": ["flicker"], "media": True}}
    common = {"num_scales": 18, "ema_decay": 0.95, "solver": "heun", "sigma_data": SIGMA_DATA}
    return {"plain_cd": compose(base, mcm_config(motion="none", gan_weight=0.0, **common)),
            "mcm": compose(base, mcm_config(motion="difference", gan_weight=0.1, gan_t_max=0.3, **common))}


def sharp_reference() -> torch.Tensor:
    """``(N, 1, 16, 16)`` sharp held-out frames: the unblurred test videos of the data's seed."""
    from ..streaming.data import sprite_videos

    return sprite_videos(frames=FRAMES, n_train=1, n_test=200, seed=0).test.x.flatten(0, 1)


def measure(run_dir: Path, steps: int, reference: torch.Tensor) -> dict[str, float]:
    """Sharpness, FD against ``reference`` and motion figures of a run's last samples."""
    from safetensors.torch import load_file

    from ..generative.metrics import digits_fd
    from ..streaming.metrics import _frames_8x8

    video = load_file(str(run_dir / "samples" / f"step{steps}_nfe{STEPS}.safetensors"))["samples"]
    frames = video.flatten(0, 1)
    fd = float(digits_fd(_frames_8x8(frames, "samples"), _frames_8x8(reference, "reference")))
    return {"hf_energy": high_frequency_energy(frames), "fd_sharp": fd, "acceleration": centroid_acceleration(video)}


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    ctx.train("teacher", teacher_config(s))
    variants = student_configs(s, str((ctx.out / "teacher").resolve()))
    reference = sharp_reference()
    keys = ("hf_energy", "fd_sharp", "acceleration", "flicker")
    res: dict[str, dict[str, list[float]]] = {v: {k: [] for k in keys} for v in variants}
    for seed in ctx.seeds:
        for name, cfg in variants.items():
            summary = ctx.train(f"{name}/seed{seed}", {"name": f"mcm_{name}", "seed": seed, **cfg})
            got = measure(ctx.out / name / f"seed{seed}", s["student_steps"], reference)
            got["flicker"] = float(summary["final"][str(STEPS)]["flicker"])
            for k in keys:
                res[name][k].append(got[k])
    from ..recipes.mcm import blurred_sprite_videos

    blurred = blurred_sprite_videos(frames=FRAMES, blur=BLUR, n_train=1, n_test=200).test.x
    data_figures = {"hf_energy of the sharp frames": high_frequency_energy(reference),
                    "hf_energy of the blurred training-quality frames": high_frequency_energy(blurred),
                    "centroid acceleration of the blurred test videos": centroid_acceleration(blurred)}
    claims = [
        better("Sharper frames than plain video CD at equal steps (frame quality from the image set)",
               res["mcm"]["hf_energy"], res["plain_cd"]["hf_energy"], a_name="mcm", b_name="plain_cd", higher=True,
               metric="high-frequency energy of the 2-step samples (mean squared Laplacian; higher is sharper)"),
        better("Frames closer to the high-quality image distribution than plain video CD",
               res["mcm"]["fd_sharp"], res["plain_cd"]["fd_sharp"], a_name="mcm", b_name="plain_cd", higher=False,
               metric="digits FD of the sampled frames against sharp held-out frames (lower is better)"),
        not_worse("Motion kept: the sprite's trajectory is as smooth as with plain video CD",
                  res["mcm"]["acceleration"], res["plain_cd"]["acceleration"], a_name="mcm", b_name="plain_cd",
                  tolerance=0.15, higher=False,
                  metric="mean |second difference| of the sprite centroid (px/frame^2; lower is better)"),
    ]
    table = {f"{v} {k}": mean_std(res[v][k]) for v in res for k in keys}
    for claim in claims:
        claim.figures.update(table)
        claim.figures.update({**s, **data_figures, "blur_passes": BLUR, "frames": FRAMES, "sampling_steps": STEPS,
                              "sigma_data": SIGMA_DATA})
    return claims


REPRODUCTION = register(
    Reproduction(
        name="mcm",
        paper="Zhai et al. 2024, arXiv:2406.06890",
        method="Motion Consistency Model: consistency distillation on frame differences plus a frame "
               "discriminator against a separate sharp image set",
        family="streaming",
        summary="blurred moving-digit videos + sharp digit images: motion-only CD + frame GAN vs plain video CD, "
                "sharpness and motion of 2-step samples",
        run=run,
        recipe="mcm",
    )
)
