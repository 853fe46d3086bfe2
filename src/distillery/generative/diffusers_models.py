"""diffusers models and schedulers in the generative engine, both ways.

* :class:`DiffusersNet` wraps a diffusers ``UNet2DModel`` or ``DiTTransformer2DModel`` so that it
  obeys the denoiser contract ``net(x_t, t, cond) -> (B, C, H, W)``. Registered in
  :data:`~.denoisers.DENOISERS` as ``diffusers_unet2d`` and ``diffusers_dit``; their params are
  the diffusers config (random weights; nothing is downloaded) plus ``from_pretrained: PATH``
  (a local directory) and the wrapper's keys ``num_train_timesteps``, ``timestep_offset``,
  ``time_shift``.
* :func:`process_from_scheduler` turns a diffusers ``DDPMScheduler`` / ``DDIMScheduler``
  (-> :class:`~.processes.DiscreteVPProcess`) or ``FlowMatchEulerDiscreteScheduler``
  (-> :class:`~.processes.FlowProcess` with its shift) into a process;
  :func:`prediction_from_scheduler` its ``prediction_type`` into a prediction kind.
* :func:`save_pretrained` writes a denoiser built on a diffusers model in diffusers' layout
  (``unet/`` or ``transformer/``, ``scheduler/``, ``model_index.json`` for a ``DDIMPipeline``)
  with a few-step scheduler config, so that diffusers samples it as distillery does;
  :func:`load_pretrained` reads it back as a :class:`~.denoisers.Denoiser`.

Time convention. diffusers' DDPM/DDIM models take the 0-based index ``k - 1`` of DDPM's step
``k = 1..N`` (Ho et al. 2020, arXiv:2006.11239); distillery's time is ``t = k / N`` (see
:class:`~.processes.DiscreteVPProcess`), so the wrapper feeds ``N * t + timestep_offset`` with
``timestep_offset = -1`` (the default). Flow-matching models (``FlowMatchEulerDiscreteScheduler``,
Esser et al. 2024) take ``N * sigma`` with ``sigma = shift t / (1 + (shift - 1) t)``: use
``timestep_offset: 0`` and ``time_shift: shift``. Uniform distillery steps then coincide with
DDIM's ``timestep_spacing="trailing"`` grid ending at ``alpha_bar = 1``.

diffusers is an optional dependency (``pip install distillery[diffusers]``): it is imported
inside the functions here, never at module level.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .denoisers import DENOISERS, Denoiser
from .processes import DiscreteVPProcess, FlowProcess, Process, VPProcess, build_process

__all__ = [
    "DiffusersNet",
    "diffusers_dit",
    "diffusers_unet2d",
    "load_pretrained",
    "prediction_from_scheduler",
    "process_from_scheduler",
    "save_pretrained",
]

_PREDICTION_TO_DIFFUSERS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
_WRAPPER_KEYS = ("from_pretrained", "num_train_timesteps", "timestep_offset", "time_shift")


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("diffusers models need the optional dependency: pip install 'distillery[diffusers]'.") from exc
    return diffusers


class DiffusersNet(nn.Module):
    """A diffusers ``UNet2DModel`` / ``DiTTransformer2DModel`` as ``net(x_t, t, cond)``.

    ``x_t`` ``(B, C, H, W)``, ``t`` ``(B,)`` in [0, 1], ``cond`` ``(B,)`` int labels or ``None``
    -> ``model(x_t, timestep, class_labels).sample`` ``(B, C, H, W)``, with ``timestep =
    num_train_timesteps * shift(t) + timestep_offset`` (module docstring: the time
    convention). Labels: ``None`` is the null class (UNet2DModel: the last row of its
    ``num_class_embeds`` table; DiT: row ``num_embeds_ada_norm``, its classifier-free row);
    an unconditional UNet2DModel ignores ``cond``. DiT's built-in random label dropout (in
    train mode) is switched off: label dropout is the method's choice (``cond=None``)."""

    def __init__(self, model: nn.Module, *, num_train_timesteps: int = 1000, timestep_offset: float = -1.0,
                 time_shift: float = 1.0) -> None:
        super().__init__()
        if not (time_shift > 0 and math.isfinite(time_shift)):
            raise ConfigError(f"diffusers model: time_shift must be a positive number, got {time_shift}.")
        self.model = model
        self.num_train_timesteps = int(num_train_timesteps)
        self.timestep_offset = float(timestep_offset)
        self.time_shift = float(time_shift)
        self.kind = "dit" if type(model).__name__.startswith("DiT") else "unet2d"
        cfg = model.config
        for module in model.modules():  # DiT's own label dropout (train mode) off: cond=None is distillery's
            if type(module).__name__ == "LabelEmbedding":
                module.dropout_prob = 0.0
        if self.kind == "dit":
            self.null_class: int | None = int(cfg.num_embeds_ada_norm)
        else:
            self.null_class = int(cfg.num_class_embeds) - 1 if getattr(model, "class_embedding", None) is not None else None

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The model's timestep ``(B,)`` for distillery times ``t`` ``(B,)``."""
        s = self.time_shift
        shifted = t if s == 1.0 else s * t / (1 + (s - 1) * t)
        return self.num_train_timesteps * shifted + self.timestep_offset

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        labels = None
        if self.null_class is not None:
            labels = (torch.full((x.shape[0],), self.null_class, device=x.device, dtype=torch.long) if cond is None
                      else cond.to(device=x.device, dtype=torch.long))
        return self.model(x, self.timestep(t), class_labels=labels).sample

    def describe(self) -> dict[str, Any]:
        return {"num_train_timesteps": self.num_train_timesteps, "timestep_offset": self.timestep_offset,
                "time_shift": self.time_shift}


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _check_sizes(label: str, config: dict[str, Any], in_channels: int, image_size: int) -> None:
    """Refuse a model whose ``sample_size`` / ``in_channels`` differs from the data's."""
    if _size(config["sample_size"]) != (image_size, image_size):
        h, w = _size(config["sample_size"])
        raise ConfigError(f"{label}: the model's sample_size is {h}x{w} but the data's images are {image_size}x{image_size}; "
                          f"set sample_size: {image_size} (or use data of size {h}x{w}).")
    if int(config["in_channels"]) != in_channels:
        raise ConfigError(f"{label}: the model's in_channels is {config['in_channels']} but the data's images have "
                          f"{in_channels} channels.")


def _build(cls_name: str, registered: str, in_channels: int, image_size: int, num_classes: int | None,
           params: dict[str, Any]) -> DiffusersNet:
    cls = getattr(_diffusers(), cls_name)
    wrapper = {k: params.pop(k) for k in _WRAPPER_KEYS if k in params}
    path = wrapper.pop("from_pretrained", None)
    if path is not None:
        if params:
            raise ConfigError(f"{registered}: with from_pretrained, the model's config comes from {path}; "
                              f"remove {', '.join(sorted(params))}.")
        model = _load_model(cls, Path(path), registered)
    else:
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"{registered}: unknown {cls_name} config key(s) {', '.join(unknown)}.")
        config = dict(params)
        config.setdefault("sample_size", image_size)
        config.setdefault("in_channels", in_channels)
        config.setdefault("out_channels", config["in_channels"])
        _check_sizes(registered, config, in_channels, image_size)
        if cls_name == "UNet2DModel":
            if num_classes and config.get("class_embed_type") is None:
                config.setdefault("num_class_embeds", num_classes + 1)
                if config["num_class_embeds"] < num_classes + 1:
                    raise ConfigError(f"{registered}: num_class_embeds {config['num_class_embeds']} must be at least "
                                      f"num_classes + 1 = {num_classes + 1} (the last row is the null class).")
        else:
            config.setdefault("num_embeds_ada_norm", num_classes or 1)
            if num_classes and config["num_embeds_ada_norm"] < num_classes:
                raise ConfigError(f"{registered}: num_embeds_ada_norm {config['num_embeds_ada_norm']} is smaller than "
                                  f"the data's {num_classes} classes.")
        try:
            model = cls(**config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{registered}: {exc}") from None
    _check_sizes(registered, dict(model.config), in_channels, image_size)
    return DiffusersNet(model, **wrapper)


def _load_model(cls: Any, path: Path, label: str) -> nn.Module:
    """``cls.from_pretrained`` from ``path`` or its ``unet/`` / ``transformer/`` subfolder (local only)."""
    for folder in (path, path / "unet", path / "transformer"):
        if (folder / "config.json").is_file():
            return cls.from_pretrained(str(folder), local_files_only=True)
    raise ConfigError(f"{label}: from_pretrained {str(path)!r} holds no config.json (nor unet/ or transformer/ with one).")


def diffusers_unet2d(in_channels: int, image_size: int, num_classes: int | None = None, **params: Any) -> DiffusersNet:
    """A diffusers ``UNet2DModel`` built from its config (random weights) or ``from_pretrained``."""
    return _build("UNet2DModel", "diffusers_unet2d", in_channels, image_size, num_classes, params)


def diffusers_dit(in_channels: int, image_size: int, num_classes: int | None = None, **params: Any) -> DiffusersNet:
    """A diffusers ``DiTTransformer2DModel`` built from its config (random weights) or ``from_pretrained``."""
    return _build("DiTTransformer2DModel", "diffusers_dit", in_channels, image_size, num_classes, params)


for _name, _fn in (("diffusers_unet2d", diffusers_unet2d), ("diffusers_dit", diffusers_dit)):
    _fn.shape_kind = "image"  # type: ignore[attr-defined]
    DENOISERS.register(_name)(_fn)


# -- schedulers -------------------------------------------------------------------------------
def _is_flow(scheduler: Any) -> bool:
    return type(scheduler).__name__.startswith("FlowMatch")


def process_from_scheduler(scheduler: Any) -> Process:
    """The process of a diffusers scheduler: ``DDPMScheduler`` / ``DDIMScheduler`` (any scheduler
    with ``alphas_cumprod``) -> :class:`~.processes.DiscreteVPProcess` on its table (built from
    its beta parameters when it has the standard ones, else from the table);
    ``FlowMatchEulerDiscreteScheduler`` -> :class:`~.processes.FlowProcess` with its ``shift``."""
    cfg = scheduler.config
    if _is_flow(scheduler):
        if getattr(cfg, "use_dynamic_shifting", False):
            raise ConfigError(f"{type(scheduler).__name__} with use_dynamic_shifting has no fixed process; set a shift.")
        return FlowProcess(shift=float(cfg.shift))
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is None:
        raise ConfigError(f"Cannot turn a {type(scheduler).__name__} into a process; use a DDPM/DDIM or "
                          f"FlowMatchEulerDiscrete scheduler.")
    standard = (getattr(cfg, "trained_betas", None) is None and not getattr(cfg, "rescale_betas_zero_snr", False)
                and cfg.beta_schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"))
    if standard:
        process = DiscreteVPProcess(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                                    beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule)
        if torch.equal(process.log_table[1:].exp().float(), table.float()):
            return process
    return DiscreteVPProcess(alphas_cumprod=table)


def prediction_from_scheduler(scheduler: Any) -> str:
    """The distillery prediction kind of a scheduler's model: ``epsilon`` -> ``eps``, ``sample`` ->
    ``x0``, ``v_prediction`` -> ``v``; a flow-matching scheduler -> ``velocity``."""
    if _is_flow(scheduler):
        return "velocity"
    kind = scheduler.config.prediction_type
    for ours, theirs in _PREDICTION_TO_DIFFUSERS.items():
        if kind == theirs:
            return ours
    raise ConfigError(f"Unknown diffusers prediction_type {kind!r}.")


def scheduler_for(denoiser: Denoiser) -> Any:
    """A diffusers scheduler that steps ``denoiser`` as distillery's uniform-step sampler does:
    DDIM (``timestep_spacing="trailing"``, ``set_alpha_to_one``, no clipping) for a VP process,
    flow-matching Euler for an unshifted flow process predicting ``velocity``."""
    diffusers = _diffusers()
    net, process = denoiser.net, denoiser.process
    if not isinstance(net, DiffusersNet):
        raise ConfigError("Only a denoiser built on a diffusers model (diffusers_unet2d, diffusers_dit) can be written "
                          f"in the diffusers format; this one is a {type(net).__name__}.")
    n = net.num_train_timesteps
    if isinstance(process, (DiscreteVPProcess, VPProcess)):
        if denoiser.prediction not in _PREDICTION_TO_DIFFUSERS:
            raise ConfigError(f"A VP-process denoiser predicting {denoiser.prediction!r} has no diffusers DDIM form; "
                              f"use eps, x0 or v.")
        if net.timestep_offset != -1.0 or net.time_shift != 1.0:
            raise ConfigError("A DDIM export needs the DDPM time convention (timestep_offset: -1, time_shift: 1); "
                              f"this model has timestep_offset {net.timestep_offset}, time_shift {net.time_shift}.")
        common = {"num_train_timesteps": n, "prediction_type": _PREDICTION_TO_DIFFUSERS[denoiser.prediction],
                  "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "trailing"}
        if isinstance(process, DiscreteVPProcess) and "beta_schedule" in process.params and process.num_train_timesteps == n:
            p = process.params
            return diffusers.DDIMScheduler(beta_start=p["beta_start"], beta_end=p["beta_end"],
                                           beta_schedule=p["beta_schedule"], **common)
        k = torch.arange(n + 1, dtype=torch.float64)
        a, _ = process.alpha_sigma(k / n)
        ab = a.double() ** 2
        betas = (1 - ab[1:] / ab[:-1]).clamp(0.0, 0.999)
        return diffusers.DDIMScheduler(trained_betas=betas.tolist(), **common)
    if isinstance(process, FlowProcess):
        if denoiser.prediction != "velocity" or process.shift != 1.0 or net.timestep_offset != 0.0:
            raise ConfigError("A flow-matching export needs prediction 'velocity', process shift 1 and "
                              "timestep_offset: 0 (diffusers' flow models predict eps - x0 at timestep N * t).")
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=n, shift=1.0)
    raise ConfigError(f"No diffusers scheduler matches a {type(process).__name__}; use a vp, vp_discrete or flow process.")


def save_pretrained(denoiser: Denoiser, path: str | Path, *, steps: int) -> Path:
    """Write ``denoiser`` (built on a diffusers model) in diffusers' layout under ``path``:
    ``unet/`` (UNet2DModel) or ``transformer/`` (DiT) by the model's ``save_pretrained``,
    ``scheduler/`` (:func:`scheduler_for`), ``model_index.json`` for an unconditional
    UNet2DModel with DDIM (loadable by ``diffusers.DDIMPipeline.from_pretrained(path)``, to be
    called with ``num_inference_steps=steps``), and ``distillery.json`` (process, prediction,
    time convention, ``steps``) for :func:`load_pretrained`. Returns ``path``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"The number of sampling steps must be a positive integer, got {steps!r}.")
    diffusers = _diffusers()
    scheduler = scheduler_for(denoiser)
    net: DiffusersNet = denoiser.net  # type: ignore[assignment]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    folder = "transformer" if net.kind == "dit" else "unet"
    if folder == "unet" and net.null_class is None and isinstance(scheduler, diffusers.DDIMScheduler):
        diffusers.DDIMPipeline(unet=net.model, scheduler=scheduler).save_pretrained(str(path))
    else:
        net.model.save_pretrained(str(path / folder))
        scheduler.save_pretrained(str(path / "scheduler"))
    meta = {"model": folder, "model_class": type(net.model).__name__, "process": denoiser.process.describe(),
            "prediction": denoiser.prediction, "sample_shape": list(denoiser.sample_shape or ()),
            "num_classes": denoiser.num_classes, "steps": steps, **net.describe()}
    (path / "distillery.json").write_text(json.dumps(meta, indent=1))
    return path


def load_pretrained(path: str | Path) -> Denoiser:
    """A :class:`~.denoisers.Denoiser` from a directory written by :func:`save_pretrained`."""
    path = Path(path)
    meta_file = path / "distillery.json"
    if not meta_file.is_file():
        raise ConfigError(f"{str(path)!r} has no distillery.json; it was not written by distillery's save_pretrained.")
    meta = json.loads(meta_file.read_text())
    cls = getattr(_diffusers(), meta["model_class"])
    model = cls.from_pretrained(str(path / meta["model"]), local_files_only=True)
    net = DiffusersNet(model, num_train_timesteps=meta["num_train_timesteps"], timestep_offset=meta["timestep_offset"],
                       time_shift=meta["time_shift"])
    return Denoiser(net, build_process(meta["process"]), meta["prediction"],
                    sample_shape=tuple(meta["sample_shape"]) or None, num_classes=meta["num_classes"])
