"""#15 GeoDistill, in miniature: FoV self-distillation on a digit-tile localization toy.

Paper: Tong et al. 2025, arXiv:2507.10935 (abstract: the teacher localizes a panorama, the
student a limited field of view of it; aligning the student's predictions with the teacher's
gives "more accurate predictions and reduced uncertainty, regardless of whether the query
images are panoramas or limited FoV images").

Miniature (dataset ``tile_localization``: a 6x6 torus of digit tiles, a query that is the
ring of the 8 neighbouring tiles seen as other images of the same digits; training labels
are weak: half of them are moved to a random neighbouring cell, like a noisy GPS position):
  * stage 1 (``base``): cross-entropy on the weak labels, full panoramas;
  * stage 2, from ``base``, the same number of steps for each variant:
    - ``continued``: stage 1's training continued (no self-distillation);
    - ``fov_augment``: the same with FoV masking as plain data augmentation (the paper's
      README says this alone hurts; reported as figures, not judged);
    - ``geodistill``: an EMA teacher (0.9 per epoch, as in the authors' code) on the full
      panorama teaches the student on a random 180-240 degree field of view, by the KL
      between the location heatmaps (equal temperatures 1); no label term.
Evaluation on held-out maps built from held-out digit images, exact cells: full panoramas
and fields of view drawn once with a fixed generator from the training range.

Rules, fixed here before any run (means over seeds; lower is better for both metrics):
  1. geodistill's localization error (cells, torus distance of the arg-max) is lower than
     continued's on full panoramas (difference larger than its standard error);
  2. the same on limited-FoV queries;
  3. geodistill's mean prediction entropy is lower than continued's on full panoramas;
  4. the same on limited-FoV queries.
"""

from __future__ import annotations

import torch

from . import Claim, Context, Reproduction, better, mean_std, register
from ._common import Settings, compose, load_student, run_grid, train_section

DATA = {"grid": 6, "n_train": 3000, "n_test": 1000, "label_noise": 0.5, "seed": 0}
BATCH = 64
MODEL = {"name": "ring_localizer", "params": {"hidden": 128, "embed": 32, "descriptor": 64}}
FOV = {"min_degrees": 180, "max_degrees": 240, "ring": 8}
EMA_PER_EPOCH = 0.9
EVAL_FOV_SEED = 1234
SETTINGS = Settings(quick={"base_epochs": 15, "epochs": 8}, full={"base_epochs": 40, "epochs": 20})


def run(ctx: Context) -> list[Claim]:
    from ..data import load_dataset
    from ..recipes.geodistill import (
        ema_momentum_per_step,
        fov_spec,
        geodistill_config,
        localization_metrics,
        ring_fov,
    )

    s = SETTINGS(ctx.quick)
    splits = load_dataset("tile_localization", **DATA)
    steps_per_epoch = -(-DATA["n_train"] // BATCH)
    momentum = ema_momentum_per_step(EMA_PER_EPOCH, steps_per_epoch)
    data = {"dataset": "tile_localization", "params": DATA, "batch_size": BATCH}
    fov = fov_spec(**FOV)

    def train(epochs: int, lr: float) -> dict:
        return train_section(epochs, lr, checkpoint_every=10**6)

    base_train, stage2_train = train(s["base_epochs"], 0.003), train(s["epochs"], 0.001)

    x_test, cells = splits.test.x, splits.test.y
    gen = torch.Generator().manual_seed(EVAL_FOV_SEED)
    x_fov = ring_fov(FOV["min_degrees"], FOV["max_degrees"], FOV["ring"])(x_test, gen)
    grid = DATA["grid"]

    def evaluate(run_dir) -> dict[str, dict[str, float]]:
        model = load_student(run_dir, MODEL, splits.input_shape, splits.num_classes)
        with torch.no_grad():
            return {"full": localization_metrics(model(x_test), cells, grid),
                    "fov": localization_metrics(model(x_fov), cells, grid)}

    def stage2(objectives: dict, fov_view: bool):
        def variant(seed: int) -> dict:
            base_weights = str((ctx.out / "base" / f"seed{seed}" / "student.safetensors").resolve())
            fragment = compose({"data": data}, {"data": {"student_view": [fov]}} if fov_view else None, objectives)
            return {"student": dict(MODEL, checkpoint=base_weights), "train": stage2_train, **fragment}
        return variant

    variants = {
        "base": {"data": data, "student": MODEL, "objectives": [{"kind": "ce"}], "train": base_train},
        "continued": stage2({"objectives": [{"kind": "ce"}]}, False),
        "fov_augment": stage2({"objectives": [{"kind": "ce"}]}, True),
        "geodistill": stage2(geodistill_config(momentum, fov, temperature=1.0), False),  # the recipe brings the FoV view
    }

    def measure(run) -> dict[str, dict[str, float]]:
        m = evaluate(run.dir)
        ctx.log(f"    {run.variant}: error full {m['full']['error']:.3f} / fov {m['fov']['error']:.3f}, "
                f"entropy full {m['full']['entropy']:.3f} / fov {m['fov']['entropy']:.3f}")
        return m

    names = tuple(variants)
    runs = run_grid(ctx, variants, measure)
    res = {n: {q: {k: [m[q][k] for m in runs[n]] for k in ("error", "entropy", "accuracy")} for q in ("full", "fov")}
           for n in names}
    table = {n: {q: {k: mean_std(v) for k, v in res[n][q].items()} for q in res[n]} for n in names}
    claims = []
    for metric, what in (("error", "localization error"), ("entropy", "prediction entropy")):
        for q, query in (("full", "panorama"), ("fov", "limited-FoV")):
            c = better(f"GeoDistill lowers the {what} on {query} queries (vs. training continued without it)",
                       res["geodistill"][q][metric], res["continued"][q][metric], a_name="geodistill",
                       b_name="continued", higher=False, metric=f"{what} ({q} queries)")
            claims.append(c)
    claims[0].figures["all_variants"] = table
    claims[0].figures["ema_momentum_per_step"] = momentum
    return claims


REPRODUCTION = register(
    Reproduction(
        name="geodistill",
        paper="Tong et al. 2025, arXiv:2507.10935",
        method="GeoDistill: EMA teacher on the panorama, student on a limited field of view",
        family="self_distillation",
        summary="digit-tile localization: FoV self-distillation vs continued weak supervision, error and entropy",
        run=run,
        recipe="geodistill",
    )
)
