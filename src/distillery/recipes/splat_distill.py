"""Splat and Distill: teacher features lifted to 3-D, splatted to novel views, supervise the student.

Shavin & Benaim 2026, "Splat and Distill: Augmenting Teachers with Feed-Forward 3D Reconstruction
For 3D-Aware Distillation" (ICLR 2026), arXiv:2602.06032. "Given 2D features produced by a
teacher model, our method first lifts these features into an explicit 3D Gaussian
representation, in a feedforward manner. These 3D features are then 'splatted' onto novel
viewpoints, producing a set of novel 2D feature maps used to supervise the student model ...
creating a dynamic learning process where the teacher's consistency improves alongside that of
the student." In the authors' code the student and the teacher start as the same pretrained
VFM (DINOv2), the teacher is an EMA of the student, and the loss is a DINO-head cross-entropy
between the rendered teacher features and the student's features of the target view.

The step (one target view ``b`` and context views ``A`` of a scene with known depth and poses):

    t_a      = teacher(x_a)                        a in A, [C, H, W] each (no gradient)
    t_hat    = splat({t_a}, index_{A -> b})        lift with depth, project, z-buffer, gather
    loss     = D_M(student(x_b), t_hat)            on the pixels M the splat covers
    teacher <- m teacher + (1 - m) student         after each optimizer step (EMA)

with ``D`` the per-map standardised MSE of :func:`distillery.objectives.splat.splat_feature_loss`
(in place of the paper's DINO-head cross-entropy [inferred substitute]) and ``index`` from
:func:`distillery.generative.multiview.splat_index`. The lifting is exact (the renderer's depth;
the paper predicts depth and Gaussians feed-forward with MVSplat), one point per pixel.

The same loop runs the 2-D baselines by changing only where the index comes from:
``same_view`` (the identity: 2-D feature self-distillation on the target view itself) and
``shift_2d`` (the student sees the view translated by up to ``max_shift`` pixels, the teacher
the original, and the teacher's features are translated with it: a 2-D augmentation in place of
a novel 3-D view).

Parts: :class:`~distillery.teachers.EMATeacher` (the co-evolving teacher),
:mod:`distillery.generative.multiview` (scenes, ray caster, splat, correspondences),
:mod:`distillery.objectives.splat` (``splat_kd``), :class:`~distillery.models.miniature.splat_featnet.SplatFeatureNet`
(the "VFM": a CNN with a learned absolute position embedding). ``configs/splat_distill_scenes.yaml``
runs the objective through ``distillery run`` on the two-view pairs of ``splat_views``; the
claim check is ``distillery reproduce splat_distill``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..generative.multiview import correspondence_accuracy, correspondences
from ..objectives.splat import DISTANCES, splat_feature_loss
from ..teachers import EMATeacher
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("splat_distill", "Shavin & Benaim 2026, Splat and Distill, arXiv:2602.06032", "splat_distill_scenes.yaml",
           "Teacher features lifted to 3-D with known depth and splatted to a novel view supervise the student there; EMA teacher")
)

MODES = ("splat", "same_view", "shift_2d")

__all__ = [
    "MODES",
    "correspondence_score",
    "dense_features",
    "distill",
    "pretrain_vfm",
    "segmentation_probe",
    "splat_distill_config",
    "translation_index",
]


def translation_index(size: int, dy: int, dx: int) -> torch.Tensor:
    """The index map ``[size*size]`` of a translation by ``(dy, dx)`` pixels: target pixel
    ``(r, c)`` takes source pixel ``(r - dy, c - dx)``, ``-1`` where that lies outside."""
    r, c = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    sr, sc = r - dy, c - dx
    inside = (sr >= 0) & (sr < size) & (sc >= 0) & (sc < size)
    return torch.where(inside, sr * size + sc, torch.full_like(sr, -1)).reshape(-1)


def _translate(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``images [B, 3, S, S]`` moved by per-sample index maps ``[B, S*S]`` (zeros where empty)."""
    B, C, S, _ = images.shape
    flat = images.reshape(B, C, S * S)
    out = torch.gather(flat, 2, index.clamp_min(0).unsqueeze(1).expand(B, C, S * S))
    return out.masked_fill((index < 0).unsqueeze(1), 0.0).reshape(B, C, S, S)


def pretrain_vfm(model: nn.Module, data: dict[str, torch.Tensor], steps: int, batch_size: int = 16, lr: float = 3e-3,
                 seed: int = 0) -> list[float]:
    """Pre-train the stand-in VFM on single views (a 2-D task): per-pixel cross-entropy of the
    classes (sky, ground, sphere, box) plus the MSE of reconstructing each pixel's 3x3 colour
    neighbourhood from its features. ``data``: a :func:`~distillery.generative.multiview.multiview_set`.
    Returns the loss of every step."""
    images = data["rgb"].reshape(-1, *data["rgb"].shape[2:])
    labels = data["classes"].reshape(-1, *data["classes"].shape[2:])
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        b = torch.randint(len(images), (batch_size,), generator=g)
        x = images[b]
        out = model(x)
        patches = F.unfold(x, 3, padding=1).reshape(x.shape[0], 27, *x.shape[-2:])
        loss = F.cross_entropy(out["segmentation"], labels[b]) + F.mse_loss(out["reconstruction"], patches)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def distill(student: nn.Module, data: dict[str, torch.Tensor], mode: str, steps: int, *, batch_size: int = 8,
            lr: float = 3e-3, momentum: float = 0.98, max_shift: int = 3, distance: str = "standardized_mse",
            seed: int = 0) -> dict[str, Any]:
    """Fine-tune ``student`` (in place) by dense feature distillation from an EMA of itself.

    ``data``: a :func:`~distillery.generative.multiview.multiview_set` with ``V >= 2`` views per
    scene. Each step draws ``batch_size`` scenes and a target view of each; ``mode``:

    * ``"splat"``: the teacher sees the other ``V - 1`` views; their features are splatted into
      the target view (``data["splat"]``);
    * ``"same_view"``: the teacher sees the target view itself (index = identity);
    * ``"shift_2d"``: the student sees the target view translated by a random ``(dy, dx)`` in
      ``[-max_shift, max_shift]^2``, the teacher the original, its features translated alike.

    Loss: :func:`~distillery.objectives.splat.splat_feature_loss` with ``distance``; Adam with
    ``lr``; after every step the :class:`~distillery.teachers.EMATeacher` (constant
    ``momentum``) moves toward the student. Returns ``{"teacher", "losses"}``.
    """
    if mode not in MODES:
        raise ConfigError(f"splat_distill: mode must be one of {MODES}, got {mode!r}.")
    if distance not in DISTANCES:
        raise ConfigError(f"splat_distill: distance must be one of {DISTANCES}, got {distance!r}.")
    if not 0.0 <= momentum <= 1.0:
        raise ConfigError(f"splat_distill: momentum must lie in [0, 1], got {momentum!r}.")
    rgb, splat = data["rgb"], data["splat"]
    n, V, _, S, _ = rgb.shape
    if V < 2:
        raise ConfigError(f"splat_distill: at least 2 views per scene needed, got {V}.")
    g = torch.Generator().manual_seed(seed)
    teacher = EMATeacher(student, momentum=momentum)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    identity = torch.arange(S * S).expand(batch_size, -1)
    others = torch.tensor([[w for w in range(V) if w != v] for v in range(V)])  # [V, V-1]
    losses = []
    student.train()
    for step in range(steps):
        b = torch.randint(n, (batch_size,), generator=g)
        v = torch.randint(V, (batch_size,), generator=g)
        target = rgb[b, v]
        if mode == "splat":
            context, index, seen = rgb[b[:, None], others[v]], splat[b, v], target
        elif mode == "same_view":
            context, index, seen = target[:, None], identity, target
        else:
            shift = torch.randint(-max_shift, max_shift + 1, (batch_size, 2), generator=g)
            index = torch.stack([translation_index(S, int(dy), int(dx)) for dy, dx in shift])
            context, seen = target[:, None], _translate(target, index)
        s_feat = student(seen)["features"]
        with torch.no_grad():
            t_feat = teacher.model(context.reshape(-1, *context.shape[2:]))["features"]
        t_feat = t_feat.reshape(batch_size, context.shape[1], *t_feat.shape[1:])
        loss = splat_feature_loss(s_feat, t_feat, index, distance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        teacher.update(student, step + 1)
        losses.append(float(loss.detach()))
    return {"teacher": teacher, "losses": losses}


@torch.no_grad()
def dense_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``model(images)["features"]`` for ``images [N, 3, S, S]`` in eval mode: ``[N, C, S, S]``."""
    was = model.training
    model.eval()
    try:
        return torch.cat([model(images[i:i + batch_size])["features"] for i in range(0, len(images), batch_size)])
    finally:
        model.train(was)


@torch.no_grad()
def correspondence_score(model: nn.Module, data: dict[str, torch.Tensor], radius: int = 1) -> float:
    """Multi-view correspondence accuracy of ``model``'s dense features on ``data`` (a
    :func:`~distillery.generative.multiview.multiview_set`): the mean over scenes and over every
    pair of views ``(a, b)``, ``a < b``, of
    :func:`~distillery.generative.multiview.correspondence_accuracy` (cosine nearest neighbour
    within ``radius`` pixels). Each view's feature map is centred (its mean over pixels
    subtracted) first, so that a component shared by every pixel does not decide the cosine."""
    rgb = data["rgb"]
    n, V = rgb.shape[:2]
    feats = dense_features(model, rgb.reshape(-1, *rgb.shape[2:])).reshape(n, V, -1, *rgb.shape[-2:])
    feats = feats - feats.mean(dim=(-2, -1), keepdim=True)
    scores = []
    for i in range(n):
        for a in range(V):
            for b in range(a + 1, V):
                ia, ib = correspondences(data["depth"][i, a], data["depth"][i, b], data["K"], data["poses"][i, a], data["poses"][i, b])
                if len(ia):
                    scores.append(correspondence_accuracy(feats[i, a], feats[i, b], ia, ib, radius))
    return float(sum(scores) / max(len(scores), 1))


def segmentation_probe(model: nn.Module, train: dict[str, torch.Tensor], test: dict[str, torch.Tensor],
                       steps: int = 150, lr: float = 0.05, seed: int = 0) -> float:
    """Per-pixel class accuracy of a linear probe (a 1x1 convolution, full-batch Adam for
    ``steps`` steps) trained on frozen features of ``train``'s views and scored on ``test``'s."""
    def flat(d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = dense_features(model, d["rgb"].reshape(-1, *d["rgb"].shape[2:]))
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), d["classes"].reshape(-1)

    xtr, ytr = flat(train)
    xte, yte = flat(test)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    torch.manual_seed(seed)
    probe = nn.Linear(xtr.shape[1], int(max(ytr.max(), yte.max())) + 1)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(probe((xtr - mean) / std), ytr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((probe((xte - mean) / std).argmax(1) == yte).float().mean())


def splat_distill_config(momentum: float = 0.98, distance: str = "standardized_mse") -> dict[str, Any]:
    """The config fragment of the method on ``splat_views`` pairs: an EMA teacher that sees the
    context view and the ``splat_kd`` objective on the dense features."""
    if distance not in DISTANCES:
        raise ConfigError(f"splat_distill: distance must be one of {DISTANCES}, got {distance!r}.")
    return {
        "teacher": {"kind": "ema", "view": "x_context", "momentum": momentum, "final_momentum": None},
        "objectives": [{"name": "splat", "kind": "splat_kd", "params": {"distance": distance},
                        "inputs": {"student": "student.features", "teacher": "teacher.features", "index": "batch.splat_index"}}],
    }
