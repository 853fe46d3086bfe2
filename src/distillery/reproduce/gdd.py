"""#31 GDD / GDD-I, in miniature: GAN-only distillation of a one-step generator from a digits
flow teacher, with and without frozen convolutions, against instance distillation.

Paper: Zheng & Yang 2024, "Diffusion Models Are Innate One-Step Generators", arXiv:2405.20750
(abstract: instance-based distillation is limited because "the teacher model, with more steps
and more parameters, occupies different local minima compared to the student model"; an
"exclusive distributional loss" exceeds it; "freezing most of the convolutional layers in a DM
during distributional distillation ... leads to further performance improvements"; CIFAR-10
FID 1.54).

Miniature (8x8 digits, ``digit_images``: 1347 training and 450 test images in [-1, 1]):

  1. teacher: a flow-matching U-Net (``unet``, channels (16, 32), one residual block per
     resolution, velocity prediction, ~30k parameters) trained from data by the engine's
     ``denoising`` method, once (seed 0): 2000 steps (quick: 600), batch 128, Adam lr 2e-3,
     cosine schedule, EMA 0.995; its digits FD at 25 Euler steps (and at 1 step) is reported;
  2. one-step students, all with the teacher's architecture and weights at the start, the
     same optimizer (Adam, lr 1e-3, betas (0, 0.99)), batch 64, 800 steps (quick: 250):
       * ``instance`` (a): instance distillation, the engine's ``reflow`` with
         ``distill=True``: the student's one-step sample from noise ``eps`` regresses the
         teacher's 25-step Euler sample from the same ``eps`` (mean squared error; 2048
         pairs, quick: 1024, made from the run's seed);
       * ``gdd`` (b): GDD, the GAN loss alone (non-saturating; the engine's time-aware MLP
         discriminator on images noised to ``t <= 0.5``), every layer trainable;
       * ``gdd_i`` (c): GDD-I, the same with every convolution frozen except the input stem
         and the output convolution (89% of the parameters frozen).

Measured: digits FD (:func:`distillery.generative.metrics.digits_fd`, Frechet distance in the
features of a small classifier trained on scikit-learn's digits) of 1000 one-step samples
(quick and full; fixed evaluation noise) against the 450 real test digits; lower is better
(the training set against the test set: about 8).

Rules, fixed here before the reproduction was run (the claims were fixed in the brief; one
pilot on seed 0, 200-400 steps, was run before to choose the learning rate and the
discriminator's noise level, the same for every variant):
  1. distribution-level distillation beats instance distillation: ``gdd_i``'s mean FD is
     lower than ``instance``'s by more than the standard error of the difference (3 seeds);
  2. freezing helps: ``gdd_i``'s mean FD is lower than ``gdd``'s by more than the standard
     error of the difference (3 seeds).
"""

from __future__ import annotations

from typing import Any

from ..recipes.gdd import gdd_config, instance_config, teacher_student
from . import Claim, Context, Reproduction, better, mean_std, register
from ._common import Settings, compose

UNET = {"name": "unet", "params": {"channels": [16, 32]}}
PREDICTION = "velocity"
DATA = {"dataset": "digit_images", "params": {"size": 8}}
PROCESS = {"kind": "flow", "shift": 1.0}
D_TIME_MAX = 0.5
STUDENT_OPTIMIZER = {"name": "adam", "lr": 1e-3, "betas": [0.0, 0.99]}
SETTINGS = Settings(
    quick={"teacher_steps": 600, "student_steps": 250, "pairs": 1024, "num_samples": 1000},
    full={"teacher_steps": 2000, "student_steps": 800, "pairs": 2048, "num_samples": 1000},
)


def _train_section(steps: int, optimizer: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"steps": steps, "optimizer": dict(optimizer), "log_every": max(1, steps // 10), "checkpoint_every": 10**9,
            "keep_checkpoints": 1, "progress": False, "tensorboard": False, **extra}


def teacher_config(s: dict[str, Any]) -> dict[str, Any]:
    """The teacher's denoising run (seed 0)."""
    return {"engine": "generative", "name": "gdd_teacher", "seed": 0, "data": {**DATA, "batch_size": 128},
            "process": PROCESS, "student": {"denoiser": UNET, "prediction": PREDICTION},
            "method": {"kind": "denoising", "params": {"ema_decay": 0.995, "sample_solver": "euler"}},
            "train": _train_section(s["teacher_steps"], {"name": "adam", "lr": 2e-3}, grad_clip=1.0,
                                    scheduler={"name": "cosine", "warmup_steps": 50}),
            "eval": {"steps": [1, 25], "num_samples": s["num_samples"], "metrics": ["digits_fd"], "solver": "euler"}}


def student_configs(s: dict[str, Any], teacher_run: str) -> dict[str, dict[str, Any]]:
    """The three one-step students (without their seed)."""
    base = {"engine": "generative", "data": {**DATA, "batch_size": 64}, "process": PROCESS,
            **teacher_student(UNET, PREDICTION, teacher_run),
            "train": _train_section(s["student_steps"], STUDENT_OPTIMIZER),
            "eval": {"steps": [1], "num_samples": s["num_samples"], "metrics": ["digits_fd"]}}
    return {
        "instance": compose(base, instance_config(pairs=s["pairs"], pair_steps=25, solver="euler")),
        "gdd": compose(base, gdd_config("none", d_time_max=D_TIME_MAX)),
        "gdd_i": compose(base, gdd_config("convs", d_time_max=D_TIME_MAX)),
    }


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    teacher = ctx.train("teacher", teacher_config(s))
    teacher_fd = {f"teacher FD at {n} step(s)": r["digits_fd"] for n, r in teacher["final"].items()}
    variants = student_configs(s, str((ctx.out / "teacher").resolve()))
    fd: dict[str, list[float]] = {name: [] for name in variants}
    frozen_fraction = None
    for seed in ctx.seeds:
        for name, cfg in variants.items():
            summary = ctx.train(f"{name}/seed{seed}", {"name": f"gdd_{name}", "seed": seed, **cfg})
            fd[name].append(summary["final"]["1"]["digits_fd"])
            if name == "gdd_i":
                frozen_fraction = summary["describe"].get("frozen_fraction")
    metric = "digits FD of 1000 one-step samples against the 450 test digits (lower is better)"
    claims = [
        better("Distribution-level (GAN-only, GDD-I) distillation beats instance distillation (regression on the "
               "teacher's ODE samples) by digits FD", fd["gdd_i"], fd["instance"], a_name="gdd_i", b_name="instance",
               higher=False, metric=metric),
        better("Freezing most convolutional layers during GAN distillation helps (GDD-I beats GDD)",
               fd["gdd_i"], fd["gdd"], a_name="gdd_i", b_name="gdd", higher=False, metric=metric),
    ]
    for claim in claims:
        claim.figures.update({f"{name} FD": mean_std(v) for name, v in fd.items()})
        claim.figures.update(teacher_fd)
        claim.figures["gdd_i frozen fraction of parameters"] = frozen_fraction
        claim.figures.update(s)
    return claims


REPRODUCTION = register(
    Reproduction(
        name="gdd",
        paper="Zheng & Yang 2024, arXiv:2405.20750",
        method="GDD / GDD-I: one-step generator from the diffusion teacher, GAN loss only, most convolutions frozen",
        family="generative",
        summary="digits flow teacher -> one-step students: GAN-only with frozen convs vs all layers vs instance regression, by digits FD",
        run=run,
        recipe="gdd",
    )
)
