"""``distillery sample RUN_DIR --steps N --num K``: samples of a trained generative run.

Loads the run (its ``config.yaml``; the exported weights, or the newest checkpoint of a run that
has not finished), samples ``K`` points in ``N`` steps from a seeded prior draw and writes
``samples.safetensors`` (``{"samples": (K, *shape)}``) and ``samples.png``: a grid of images for
image data, a scatter over the test data with the mixture's modes marked for 2-D data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..engine import checkpoint as ckpt
from ..errors import ConfigError, RunDirError


def run_engine(run_dir: Path) -> str | None:
    """The ``engine`` named in a run directory's ``config.yaml`` (``None`` if unreadable)."""
    import yaml

    try:
        raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return raw.get("engine") if isinstance(raw, dict) else None


def load_generative_run(run_dir: Path) -> tuple[Any, Any]:
    """``(config, build)`` of a generative run directory, its method holding the trained weights."""
    from ..config.schema import parse_config
    from ..engine.rundir import read_run_config
    from .build import build_generative

    run_dir = Path(run_dir)
    engine = run_engine(run_dir)
    cfg = read_run_config(run_dir, engine if engine == "streaming" else "generative", parse_config,
                          "; 'distillery sample' samples generative and streaming runs")
    built = build_generative(cfg, probe=False)
    method = built.method
    exported = method.exported()
    files = {name: run_dir / f"{name}.safetensors" for name in exported}
    if files and all(f.is_file() for f in files.values()):
        for name, module in exported.items():
            ckpt.load_weights(module, files[name], what=f"{name} of {run_dir}")
    else:
        path = ckpt.latest_checkpoint(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None
        if path is None:
            raise RunDirError(f"{run_dir} holds neither exported weights nor a checkpoint; nothing was trained yet.")
        from safetensors.torch import load_file

        ckpt.verify_checkpoint(path)
        missing, unexpected = method.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
        missing = [k for k in missing if not k.startswith(method.frozen_prefixes())]
        if missing or unexpected:
            raise RunDirError(f"The checkpoint {path} does not match the run's method (missing {missing[:5]}, unexpected {unexpected[:5]}).")
    return cfg, built


def sample_run(run_dir: Path, *, steps: int, num: int = 1000, seed: int = 0, out: Path | None = None,
               guidance: float | None = None, device: str = "cpu") -> dict[str, Any]:
    """Sample ``num`` points of the run in ``steps`` steps; write ``samples.safetensors`` and
    ``samples.png`` into ``out`` (default ``<run_dir>/sample_steps<steps>``). Returns their paths,
    the samples and the measured NFE."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be a positive number of sampling steps, got {steps!r}.")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ConfigError(f"--num must be a positive number of samples, got {num!r}.")
    run_dir = Path(run_dir)
    cfg, built = load_generative_run(run_dir)
    method = built.method.to(device).eval()
    if guidance is not None:
        if not built.num_classes:
            raise ConfigError("--guidance needs a class-conditional run (data.conditional: true); this run is unconditional.")
        if not hasattr(method, "guidance"):
            raise ConfigError(f"--guidance: method {cfg.method.kind!r} takes no sampling guidance.")
        method.guidance = guidance
    calls = [0]
    hooks = [m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for m in method.exported().values()]
    try:
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            cond = torch.arange(num) % built.num_classes if built.num_classes else None
            x = method.sample(num, steps, cond=cond, generator=g, device=device).detach().float().cpu()
    finally:
        for h in hooks:
            h.remove()
    out = Path(out) if out is not None else run_dir / f"sample_steps{steps}"
    out.mkdir(parents=True, exist_ok=True)
    ckpt.save_state({"samples": x.contiguous()}, out / "samples.safetensors")
    png = out / "samples.png"
    title = f"{cfg.name or run_dir.name}: {num} samples, {steps} step(s), NFE {calls[0]}"
    if method.picture(x, png, title) is None:  # the method's own picture (SR triplets, ...) or the generic one
        save_picture(x, png, reference=built.splits.test.x, mixture=built.mixture, title=title)
    return {"samples": out / "samples.safetensors", "png": png, "x": x, "nfe": calls[0]}


def save_picture(x: torch.Tensor, path: Path, *, reference: torch.Tensor | None = None, mixture: Any = None,
                 title: str = "", max_images: int = 64) -> Path:
    """Images ``(N, C, H, W)`` as a grid (values in [-1, 1]); 2-D points ``(N, 2)`` as a scatter
    over ``reference`` (grey) with ``mixture``'s modes marked (red crosses); other shapes: a
    histogram of every coordinate."""
    from ..evaluation.report import _plt

    plt = _plt()
    x = x.detach().float().cpu()
    if x.dim() == 4:
        n = min(len(x), max_images)
        cols = int(n**0.5 + 0.999)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.4), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < n:
                img = ((x[i].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
    elif x.dim() == 2 and x.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        if reference is not None:
            ref = torch.as_tensor(reference).float()
            ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.75", label="data (test)")
        ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:blue", alpha=0.6, label="samples")
        if mixture is not None:
            means = torch.as_tensor(mixture.means).float()
            ax.scatter(means[:, 0], means[:, 1], marker="x", s=30, c="tab:red", label="modes")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7, markerscale=3)
    else:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(x.reshape(-1).numpy(), bins=60, color="tab:blue", alpha=0.7, density=True, label="samples")
        if reference is not None:
            ax.hist(torch.as_tensor(reference).float().reshape(-1).numpy(), bins=60, color="0.6", alpha=0.5, density=True, label="data")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
