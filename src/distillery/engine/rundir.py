"""The run directory every engine writes, and the start, resume and failure around a run.

The classifier runner (:mod:`distillery.runner`), the generative engine
(:mod:`distillery.generative.run`) and the sequence engine (:mod:`distillery.sequence.run`)
guard their run directory the same way, here:

* :func:`prepare_run_dir`: make ``--out``; refuse a non-empty one unless ``--resume`` or
  ``--overwrite``;
* :func:`check_resumed`: ``--resume`` may change only the keys a run declares resumable (its
  ``RESUMABLE_CHANGES``, built on :data:`RESUMABLE_LOGGING`); any other difference from the
  stored ``config.yaml`` is refused, listing the keys;
* :func:`remove_failed_start`: a start that fails before anything worth keeping was written
  removes what it wrote, so the corrected command can be run as it stands;
* :func:`run_in_dir`: all of that around a run's training: ``config.yaml`` first, then the
  training; on a failure the failed start is cleaned up and (for the step-loop engines) a run
  that had checkpoints gets ``failed.json`` saying why and where.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import RunDirError
from . import checkpoint as ckpt
from . import distributed as D

T = TypeVar("T")

RESUMABLE_LOGGING = (
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.progress",
    "train.tensorboard",
    "train.device",
)
"""Keys every engine lets ``--resume`` change: how a run is evaluated, checkpointed, logged and
placed (none of them changes what is trained)."""


def prepare_run_dir(out: Path, *, resume: bool = False, overwrite: bool = False, resumable: bool = True) -> Path:
    """Create ``out``; refuse to reuse a non-empty one unless ``resume`` or ``overwrite``.

    With ``resume`` nothing is created or written: ``out`` must be a run directory (it holds
    the ``config.yaml`` a run writes first)."""
    out = Path(out)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; give one of them.")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a directory. Nothing was changed; choose another --out.")
    exists = out.exists() and any(out.iterdir())
    if resume:
        if not exists:
            raise RunDirError(f"--resume was given, but the run directory {out} does not exist or is empty.")
        if not (out / "config.yaml").is_file():
            raise RunDirError(
                f"--resume was given, but {out} is not a run directory (it has no config.yaml). Nothing was "
                "written to it. Give the --out of the run to continue."
            )
        return out
    if exists:
        if not overwrite:
            raise RunDirError(
                f"The run directory {out} already exists and is not empty. Nothing was changed. "
                + ("Pass --resume to continue that run, --overwrite to replace it, or choose another --out."
                   if resumable else "Pass --overwrite to replace it, or choose another --out.")
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_resumed(out: Path, config_text: str, resumable: tuple[str, ...]) -> list[str]:
    """Compare ``config_text`` (the resolved config to resume with, as YAML) with the config
    stored in the run directory ``out``; refuse any difference outside ``resumable`` (a key or
    a section: ``eval`` covers ``eval.steps``) with a message listing the changed keys.
    Returns the allowed changes (``key: old -> new``). Writes nothing."""
    import yaml

    stored_file = Path(out) / "config.yaml"
    try:
        stored = yaml.safe_load(stored_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RunDirError(f"Cannot read the stored config {stored_file} of the run to resume: {exc}") from None
    changed = differences(stored, yaml.safe_load(config_text))
    refused = [(k, a, b) for k, a, b in changed if not any(k == r or k.startswith(r + ".") for r in resumable)]
    if refused:
        listed = "; ".join(f"{k}: {short(a)} in the run, {short(b)} now" for k, a, b in refused[:12])
        more = f" (and {len(refused) - 12} more)" if len(refused) > 12 else ""
        raise RunDirError(
            f"--resume: the config differs from the one the run in {out} was started with: {listed}{more}. "
            f"Nothing was changed. Resume with the run's own config ({stored_file}), or start a new run "
            f"(another --out). Keys a resume may change: {', '.join(resumable)}."
        )
    return [f"{k}: {short(a)} -> {short(b)}" for k, a, b in changed]


MISSING = "(absent)"


def differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every leaf where two config trees differ
    (a key only one side has is :data:`MISSING` on the other)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            path = f"{prefix}.{key}" if prefix else str(key)
            out += differences(a.get(key, MISSING), b.get(key, MISSING), path)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{prefix}.{i}")]
    return [] if a == b else [(prefix or "<top>", a, b)]


def short(value: Any) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def remove_failed_start(out: Path, keep_folder: bool = False) -> None:
    """Remove what a failed start wrote into ``out``, unless it holds something worth keeping
    (a checkpoint or trained weights, e.g. a teacher fitted before the failure). An empty
    folder that existed before the start is emptied, not removed."""
    out = Path(out)
    if not out.is_dir() or any(out.rglob("step-*")) or any(out.rglob("*.safetensors")):
        return
    if keep_folder:
        for child in out.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    else:
        shutil.rmtree(out, ignore_errors=True)


@dataclass
class RunStart:
    """What :func:`run_in_dir` hands the run's training: the prepared run directory, and a slot
    for the trainer (set it as soon as it is built: a later failure's ``failed.json`` names its
    ``step`` and ``last_checkpoint``)."""

    out: Path
    trainer: Any = None


def run_in_dir(out: Path, train: Callable[[RunStart], T], *, config_text: str, resumable: tuple[str, ...],
               resume: bool = False, overwrite: bool = False, failed_json: bool = False) -> T:
    """Prepare the run directory ``out`` (rank 0), check a resumed config against the stored one
    (only ``resumable`` keys may change; the allowed changes are printed), write
    ``config.yaml`` (``config_text``) and call ``train(RunStart(out))``; returns what it returns.

    On an exception (not ``KeyboardInterrupt``: an interrupted run stays, to be resumed) a fresh
    start removes what it wrote unless a checkpoint or weights are there
    (:func:`remove_failed_start`; an empty folder the user made is kept); with ``failed_json``
    a run that still holds checkpoints gets ``failed.json`` (error, message, the trainer's step
    and last checkpoint, time), which the next start removes. Under torchrun every process
    calls this; rank 0 alone touches the directory."""
    kept_folder = Path(out).is_dir() and not any(Path(out).iterdir())  # an empty folder the user made
    out = D.on_main(lambda: prepare_run_dir(out, resume=resume, overwrite=overwrite))
    if resume and D.is_main():
        changes = check_resumed(out, config_text, resumable)
        if changes:
            print(f"resuming {out} with changed settings: {'; '.join(changes)}")
    start = RunStart(out)
    try:
        if D.is_main():
            ckpt.atomic_write_text(out / "config.yaml", config_text)
            if failed_json:
                (out / "failed.json").unlink(missing_ok=True)
        return train(start)
    except Exception as exc:  # not KeyboardInterrupt: an interrupted run stays, to be resumed
        if D.is_main():
            if not resume:
                remove_failed_start(out, keep_folder=kept_folder)
            if failed_json and out.is_dir() and any(out.rglob("step-*")):
                ckpt.atomic_write_json(out / "failed.json", {
                    "error": type(exc).__name__, "message": str(exc), "step": getattr(start.trainer, "step", None),
                    "last_checkpoint": str(getattr(start.trainer, "last_checkpoint", None)), "time": time.time()})
        raise


def run_trainer_in_dir(out: Path, make_trainer: Callable[[Path], Any], *, device: str, config_text: str,
                       resumable: tuple[str, ...], resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """A step-loop engine's run (:class:`~distillery.engine.steploop.StepLoop`): check the device
    (a missing GPU fails before anything is written), join torchrun's process group, then
    :func:`run_in_dir` with ``failed_json``: ``make_trainer(out)`` builds the trainer, which
    trains from the run's last checkpoint with ``resume`` (from the start when it was stopped
    before its first). Returns the summary."""
    from .trainer import resolve_device

    resolve_device(device)
    D.init_from_env(device)

    def train(start: RunStart) -> dict[str, Any]:
        start.trainer = make_trainer(start.out)
        return start.trainer.fit(resume=resume and ckpt.latest_checkpoint(start.out / "checkpoints") is not None)

    return run_in_dir(out, train, config_text=config_text, resumable=resumable, resume=resume, overwrite=overwrite,
                      failed_json=True)


def read_run_config(run_dir: Path, engine: str, parse: Callable[[dict[str, Any], str], T], note: str = "") -> T:
    """The config of the run directory ``run_dir`` of ``engine`` (its ``config.yaml``, read
    with ``parse(raw, source)``); a folder without one is a :class:`~distillery.errors.RunDirError`,
    a run of another engine a :class:`~distillery.errors.ConfigError` (``note`` is added to
    that message)."""
    import yaml

    from ..errors import ConfigError

    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (it has no config.yaml). Give the folder 'distillery run' wrote.")
    raw = yaml.safe_load(config.read_text())
    if not (isinstance(raw, dict) and raw.get("engine") == engine):
        raise ConfigError(f"{run_dir} is not a {engine} run (its config.yaml has no 'engine: {engine}'){note}.")
    return parse(raw, str(config))


def dump_yaml(cfg: Any) -> str:
    """A pydantic config as the YAML ``config.yaml`` holds (every default written out)."""
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


__all__ = [
    "MISSING",
    "RESUMABLE_LOGGING",
    "RunStart",
    "check_resumed",
    "differences",
    "dump_yaml",
    "prepare_run_dir",
    "read_run_config",
    "remove_failed_start",
    "run_in_dir",
    "run_trainer_in_dir",
    "short",
]
