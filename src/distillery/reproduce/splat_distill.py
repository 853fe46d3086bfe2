"""#43 Splat and Distill, in miniature: does supervising a student with teacher features splatted
from other views give better multi-view correspondence than 2-D feature distillation?

Paper: Shavin & Benaim 2026, "Splat and Distill: Augmenting Teachers with Feed-Forward 3D
Reconstruction For 3D-Aware Distillation" (ICLR 2026), arXiv:2602.06032 (abstract: the teacher's
2-D features are lifted to 3-D and "splatted onto novel viewpoints ... to supervise the student
model"; "the teacher's consistency improves alongside that of the student"; evaluated on depth,
normals, "multi-view correspondence" and semantic segmentation).

Miniature (plain torch loops, :mod:`distillery.recipes.splat_distill`): procedural scenes of 2-4
coloured, world-space-textured spheres and boxes on a ground disc, each rendered at 16x16 from 3
orbit cameras 25-45 degrees of azimuth apart (:func:`~distillery.generative.multiview.multiview_set`;
train and test scenes from different seeds). The stand-in VFM is a stride-1 CNN with a learned
absolute position embedding (``splat_featnet``: width 16, 16 feature channels), pre-trained once
(seed 0) on single views: per-pixel classes (sky/ground/sphere/box) + reconstruction of each
pixel's 3x3 colour neighbourhood. Each variant starts the student from the VFM, with an EMA of
the student as teacher (momentum 0.98), and fine-tunes by the per-map standardised feature MSE
(Adam, lr 3e-3, 8 target views a step):

  * ``splat``: the teacher sees the other two views; their features are lifted with the known
    depth and splatted (z-buffered) into the target view (the method);
  * ``same_view``: the teacher sees the target view itself (2-D feature distillation only, the
    brief's baseline);
  * ``shift_2d``: the student sees the target view translated by up to 3 pixels, the teacher the
    original, its features translated alike (2-D augmentation in place of a novel 3-D view).

Measured on the test scenes: multi-view correspondence accuracy (for every pixel of view ``a``
seen unoccluded in view ``b``, the cosine nearest neighbour of its centred feature among all of
``b``'s pixels must fall within 1 pixel of the true match; mean over scenes and the 3 view
pairs), of the student and of the EMA teacher; and the per-pixel class accuracy of a linear probe
on the frozen student features.

Rules, fixed here before any run (``better``: mean over the seeds higher, by more than the
standard error of the difference):
  1. splat distillation gives better multi-view correspondence than 2-D same-view distillation:
     ``splat`` student higher than ``same_view`` student;
  2. ... and than 2-D augmented distillation: ``splat`` higher than ``shift_2d``;
  3. the teacher improves along with the student: the EMA teacher after ``splat`` training has
     higher correspondence accuracy than the VFM it started from (``better`` against the VFM's
     single value);
  4. the features keep their semantics: the probe accuracy of the ``splat`` student is at most
     0.02 below the ``same_view`` student's (``not_worse``).
"""

from __future__ import annotations

import copy
import json

import torch

from ..generative.multiview import multiview_set, splat_features
from ..models.miniature.splat_featnet import SplatFeatureNet
from ..recipes.splat_distill import (
    correspondence_score,
    dense_features,
    distill,
    pretrain_vfm,
    segmentation_probe,
)
from . import Claim, Context, Reproduction, better, not_worse, register
from ._common import Settings

SIZE = 16
VIEWS = 3
SETTINGS = Settings(
    quick={"train_scenes": 128, "test_scenes": 24, "vfm_steps": 300, "steps": 200},
    full={"train_scenes": 256, "test_scenes": 48, "vfm_steps": 600, "steps": 600},
)
VARIANTS = ("splat", "same_view", "shift_2d")


def _pca_rgb(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Feature maps ``[C, H, W]`` projected on the top-3 principal components of all their
    pixels together, scaled to [0, 1]: ``[H, W, 3]`` each (black stays black where a map is 0)."""
    flat = torch.cat([m.reshape(m.shape[0], -1).T for m in maps])
    mean = flat.mean(0)
    _, _, v = torch.pca_lowrank(flat - mean, q=3, center=False)
    proj = [((m.reshape(m.shape[0], -1).T - mean) @ v).reshape(*m.shape[1:], 3) for m in maps]
    lo = torch.stack([p.amin((0, 1)) for p in proj]).amin(0)
    hi = torch.stack([p.amax((0, 1)) for p in proj]).amax(0)
    return [((p - lo) / (hi - lo + 1e-8)).clamp(0, 1) for p in proj]


def _figure(path, test, vfm, splat_student, splat_teacher, scenes=(0, 1, 2)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ["context view a", "context view c", "target view b", "VFM features at b", "teacher(a, c)\nsplatted into b",
              "splat student at b", "same-view student\n(= VFM) at b"]
    fig, axes = plt.subplots(len(scenes), len(titles), figsize=(2 * len(titles), 2.1 * len(scenes)))
    for row, i in enumerate(scenes):
        rgb = test["rgb"][i]
        splatted = splat_features(dense_features(splat_teacher, rgb[[0, 2]]), test["splat"][i, 1])
        hole = test["splat"][i, 1].reshape(SIZE, SIZE) < 0
        maps = [dense_features(vfm, rgb[1:2])[0], splatted, dense_features(splat_student, rgb[1:2])[0]]
        maps = [m - m.mean((1, 2), keepdim=True) for m in maps]
        maps[1] = maps[1].masked_fill(hole, 0.0)
        pics = _pca_rgb(maps)
        pics[1][hole] = 0.0
        shown = [rgb[0].permute(1, 2, 0), rgb[2].permute(1, 2, 0), rgb[1].permute(1, 2, 0), pics[0], pics[1], pics[2], pics[0]]
        for col, img in enumerate(shown):
            ax = axes[row, col]
            ax.imshow(img.numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
    fig.suptitle("Splat and Distill miniature: views and dense features (top-3 PCA of the features as RGB; black: splat holes)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    train = multiview_set(s["train_scenes"], VIEWS, SIZE, seed=101)
    test = multiview_set(s["test_scenes"], VIEWS, SIZE, seed=202)
    torch.manual_seed(0)
    vfm = SplatFeatureNet(SIZE, 4, width=16, features=16, depth=2, position_scale=1.0)
    pretrain_vfm(vfm, train, s["vfm_steps"], batch_size=16, lr=3e-3, seed=0)  # trained once, reused by every seed
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in vfm.state_dict().items()}, str(ctx.out / "vfm.safetensors"))
    vfm_corr = correspondence_score(vfm, test)
    vfm_probe = segmentation_probe(vfm, train, test)
    ctx.log(f"  vfm: correspondence {vfm_corr:.4f}, probe {vfm_probe:.4f}")
    res: dict[str, dict[str, list[float]]] = {v: {"student": [], "teacher": [], "probe": []} for v in VARIANTS}
    keep = {}
    for seed in ctx.seeds:
        for variant in VARIANTS:
            student = copy.deepcopy(vfm)
            out = distill(student, train, variant, s["steps"], batch_size=8, lr=3e-3, momentum=0.98, max_shift=3, seed=seed)
            figures = {
                "student": correspondence_score(student, test),
                "teacher": correspondence_score(out["teacher"].model, test),
                "probe": segmentation_probe(student, train, test),
            }
            for k, v in figures.items():
                res[variant][k].append(v)
            ctx.log(f"  {variant}/seed{seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items())
                    + f" (loss {out['losses'][0]:.3f} -> {out['losses'][-1]:.3f})")
            if seed == ctx.seeds[0] and variant == "splat":
                keep = {"student": student, "teacher": out["teacher"].model}
    (ctx.out / "figures.json").write_text(json.dumps({"vfm": {"correspondence": vfm_corr, "probe": vfm_probe}, **res}, indent=1))
    _figure(ctx.out / "views_and_features.png", test, vfm, keep["student"], keep["teacher"])
    metric = "multi-view correspondence accuracy (NN within 1 px)"
    c1 = better("Splat distillation gives better multi-view correspondence than 2-D same-view feature distillation",
                res["splat"]["student"], res["same_view"]["student"], a_name="splat", b_name="same_view", metric=metric)
    c1.figures["vfm"] = vfm_corr
    c2 = better("Splat distillation gives better multi-view correspondence than 2-D distillation with translated views",
                res["splat"]["student"], res["shift_2d"]["student"], a_name="splat", b_name="shift_2d", metric=metric)
    c3 = better("The EMA teacher's correspondence improves along with the student's",
                res["splat"]["teacher"], [vfm_corr] * len(ctx.seeds), a_name="splat_teacher", b_name="vfm", metric=metric)
    c4 = not_worse("Splat distillation keeps the features' semantics (linear segmentation probe)",
                   res["splat"]["probe"], res["same_view"]["probe"], a_name="splat", b_name="same_view", tolerance=0.02,
                   metric="per-pixel probe accuracy")
    c4.figures["vfm"] = vfm_probe
    return [c1, c2, c3, c4]


REPRODUCTION = register(
    Reproduction(
        name="splat_distill",
        paper="Shavin & Benaim 2026, arXiv:2602.06032",
        method="Splat and Distill: teacher features lifted to 3-D and splatted to novel views supervise the student; EMA teacher",
        family="generative",
        summary="procedural 3-D scenes at 16x16: splatted-teacher feature KD vs same-view and 2-D-shift feature KD, multi-view correspondence",
        run=run,
        recipe="splat_distill",
    )
)
