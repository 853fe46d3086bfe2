"""Teacher-synthesised data: a class-conditional generator as a data distiller, and its evaluator.

Three parts, shared by the generative dataset-distillation and data-synthesis recipes
(:mod:`distillery.recipes.evlf`, :mod:`distillery.recipes.vivid_vr`):

* :func:`synthetic_set`: ``ipc`` images per class drawn from a class-conditional denoiser (the
  probability-flow ODE from the prior, optionally with classifier-free guidance): the
  distilled dataset of generative dataset distillation (e.g. D4M, Su et al. 2024,
  arXiv:2312.03526; EVLF, Cai et al. 2026, arXiv:2603.07476);
* :func:`resynthesise`: a real image re-drawn by the generator under a class (concept): noised
  to ``t_start`` (``x_t = alpha x + sigma eps``) and carried back to data along the ODE
  conditioned on the class (SDEdit, Meng et al. 2022, arXiv:2108.01073); ``t_start = t_max``
  ignores the image, ``t_start -> 0`` returns it;
* :func:`train_on_synthetic`: the standard evaluator of dataset distillation: a fresh classifier
  trained on the synthetic set alone with a fixed recipe, its accuracy on real test images;
* :func:`save_class_grid`: a PNG of a set, one row per class.

Images are ``(N, C, H, W)`` in the data's range ([-1, 1] for ``digit_images``); labels ``(N,)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .samplers import sample

__all__ = ["resynthesise", "save_class_grid", "synthetic_set", "train_on_synthetic"]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _shape_of(denoiser: Any) -> tuple[int, ...]:
    shape = getattr(denoiser, "sample_shape", None)
    if shape is None:
        raise ConfigError("synthetic data: the denoiser has no sample_shape; build it with one (generative.build).")
    return tuple(shape)


@torch.no_grad()
def synthetic_set(denoiser: Any, ipc: int, num_classes: int, *, steps: int = 25, solver: str = "euler",
                  guidance: float | None = None, generator: torch.Generator | None = None,
                  clamp: tuple[float, float] | None = (-1.0, 1.0), batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` images per class from a class-conditional ``denoiser``: ``(x (ipc * K, *shape), y
    (ipc * K,))``, class-major (``y = [0] * ipc + [1] * ipc + ...``).

    Each image is the ODE sample (``steps`` steps of ``solver``) from one prior draw of
    ``generator`` under its label, with classifier-free guidance ``guidance`` when given;
    ``clamp``: clip to the data range (``None``: leave as sampled)."""
    ipc = _positive_int(ipc, "ipc")
    num_classes = _positive_int(num_classes, "num_classes")
    shape = _shape_of(denoiser)
    y = torch.arange(num_classes).repeat_interleave(ipc)
    x0 = denoiser.process.prior((y.shape[0], *shape), generator=generator)
    out = torch.cat([sample(denoiser, x0[i:i + batch_size], steps=steps, solver=solver, cond=y[i:i + batch_size],
                            guidance=guidance) for i in range(0, y.shape[0], batch_size)])
    if clamp is not None:
        out = out.clamp(*clamp)
    return out, y


@torch.no_grad()
def resynthesise(denoiser: Any, x: torch.Tensor, cond: torch.Tensor, *, t_start: float, steps: int = 25,
                 solver: str = "euler", guidance: float | None = None, generator: torch.Generator | None = None,
                 clamp: tuple[float, float] | None = (-1.0, 1.0)) -> torch.Tensor:
    """Real images ``x`` ``(B, *shape)`` re-drawn by the generator under the labels ``cond``
    ``(B,)``: ``x_t = alpha(t_start) x + sigma(t_start) eps`` (``eps`` from ``generator``), then
    ``steps`` ODE steps of ``solver`` from ``t_start`` to the data end. ``t_start`` in
    ``(t_min, t_max]``."""
    process = denoiser.process
    if not process.t_min < float(t_start) <= process.t_max:
        raise ConfigError(f"t_start must lie in ({process.t_min}, {process.t_max}], got {t_start!r}.")
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    t = torch.full((x.shape[0],), float(t_start), dtype=x.dtype)
    x_t = process.add_noise(x, eps, t)
    out = sample(denoiser, x_t, steps=steps, solver=solver, t_start=float(t_start), cond=cond, guidance=guidance)
    return out.clamp(*clamp) if clamp is not None else out


def train_on_synthetic(x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                       num_classes: int | None = None, model: str = "cnn2d", params: dict[str, Any] | None = None,
                       steps: int = 300, lr: float = 3e-3, weight_decay: float = 5e-4, batch_size: int = 256,
                       seed: int = 0) -> float:
    """Test accuracy of a classifier trained on ``(x, y)`` alone (the train-on-synthetic evaluator).

    A fresh ``model`` (a :data:`distillery.registry.MODELS` name; default ``cnn2d`` with
    channels (32, 64, 64) and group norm) trained for ``steps`` Adam steps (``lr``,
    ``weight_decay``, cosine decay to 0) on minibatches of ``batch_size`` (the whole set when
    smaller), seeded by ``seed``; its accuracy on ``(test_x, test_y)``. ``x`` ``(N, C, H, W)``,
    ``y`` ``(N,)`` int."""
    from ..models import build_model

    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ConfigError(f"train_on_synthetic: x ({tuple(x.shape)}) and y ({tuple(y.shape)}) must hold the same non-zero count.")
    steps = _positive_int(steps, "steps")
    k = int(num_classes or int(max(int(y.max()), int(test_y.max())) + 1))
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    net: nn.Module = build_model(model, tuple(x.shape[1:]), k, **(params if params is not None else {"norm": "group"}))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    n = x.shape[0]
    net.train()
    for _ in range(steps):
        idx = torch.randperm(n, generator=gen)[:batch_size] if n > batch_size else torch.arange(n)
        loss = nn.functional.cross_entropy(net(x[idx].float()), y[idx].long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(test_x[i:i + 1024].float()).argmax(-1) for i in range(0, test_x.shape[0], 1024)])
    return float((pred == test_y.long()).float().mean())


def save_class_grid(x: torch.Tensor, y: torch.Tensor, path: Path | str, *, title: str = "",
                    value_range: tuple[float, float] = (-1.0, 1.0), per_class: int | None = None) -> Path:
    """Write a PNG of ``x`` ``(N, 1, H, W)`` grouped by label: one row per class (in label
    order), up to ``per_class`` images each (default: the largest class count). Matplotlib with
    the Agg backend; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(int(c) for c in torch.unique(y))
    cols = per_class or max(int((y == c).sum()) for c in classes)
    fig, axes = plt.subplots(len(classes), cols, figsize=(0.7 * cols + 0.6, 0.7 * len(classes) + 0.5), squeeze=False)
    for r, c in enumerate(classes):
        imgs = x[y == c][:cols]
        for j in range(cols):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < imgs.shape[0]:
                ax.imshow(imgs[j, 0].detach().cpu().numpy(), cmap="gray", vmin=value_range[0], vmax=value_range[1])
            else:
                ax.axis("off")
            if j == 0:
                ax.set_ylabel(str(c), rotation=0, labelpad=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
