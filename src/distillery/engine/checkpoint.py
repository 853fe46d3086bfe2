"""Checkpoints: weights in safetensors, the rest of the training state in small JSON files.

Layout inside a run directory::

    checkpoints/
      step-00000120/
        model.safetensors       distiller state: student, adapters, teacher, objective buffers
        optimizer.safetensors   optimizer tensors (moments), keyed "<param index>.<name>"
        state.json              optimizer param groups and scalar state, LR scheduler, RNG
                                states, epoch / batch position, balancer weights
      latest.json               {"dir": "step-00000120", "step": 120, ...}

Every file is written to a temporary name and moved into place with ``os.replace``; the
``latest.json`` pointer is replaced last, so a crash at any moment leaves the previous
checkpoint intact and pointed to. Older step directories beyond ``keep`` are removed only
after the pointer moved. ``state.json`` records the sha256 of every other file of its step
directory, checked before a resume; a damaged newest checkpoint is refused with the name of
the newest intact one. Resume finds checkpoints by scanning the ``step-*`` folders (the
pointer is a convenience for readers, not needed to resume), and temporary folders left by a
killed write (``.step-*``) are removed at the next write.

Files and folders get the permissions the process's umask gives (as ``open`` and ``mkdir``
would), not the private 0600 / 0700 of :mod:`tempfile`.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ..errors import CheckpointError

LATEST = "latest.json"
STATE = "state.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def umask() -> int:
    """The process's current umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_by_umask(path: Path, directory: bool = False) -> None:
    """Give ``path`` the mode ``open``/``mkdir`` would have given it under the current umask
    (``tempfile`` creates 0600 files and 0700 folders whatever the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        chmod_by_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes (checkpoints, cache shards, cached teachers' weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a module's state (parameters and buffers) as safetensors, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_model(model, str(tmp), metadata=metadata)
    chmod_by_umask(tmp)
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path, *, strict: bool = True, what: str = "model") -> None:
    """Load safetensors weights into ``model``; mismatches become a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Weights file {path} for the {what} does not exist.")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:  # safetensors raises several types for corrupt files / shape mismatch
        raise CheckpointError(f"Could not load {what} weights from {path}: {exc}") from None
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"Weights in {path} do not match the {what}: missing keys {sorted(missing)[:8]}, "
            f"unexpected keys {sorted(unexpected)[:8]}. Check that the model config matches the "
            "one the weights were trained with."
        )


# -- RNG state -------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state = {
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state()),
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["cuda"]]
        )


# -- optimizer state -------------------------------------------------------------------------
SEP = "::"


def split_optimizer_state(state: dict[str, Any], keyed_by: str = "index") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Separate an optimizer ``state_dict`` into tensors (for safetensors) and JSON.

    Entries are keyed by parameter index (``optimizer.state_dict()``) or by parameter name
    (``torch.distributed.checkpoint``'s full state dict, used for sharded students).
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for key, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{key}{SEP}{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(key), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars, "keyed_by": keyed_by}


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    by_index = meta.get("keyed_by", "index") == "index"
    state: dict[Any, dict[str, Any]] = {}
    for full, value in tensors.items():
        key, name = full.split(SEP, 1)
        state.setdefault(int(key) if by_index else key, {})[name] = value
    for key, entry in meta["scalars"].items():
        state.setdefault(int(key) if by_index else key, {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


# -- gathering and restoring -----------------------------------------------------------------
def full_state_dict(module: nn.Module, sharded: bool = False) -> dict[str, torch.Tensor]:
    """A plain CPU state dict of ``module``; with ``sharded`` (an FSDP-sharded part inside) the
    shards are gathered by ``torch.distributed.checkpoint`` (a collective: all ranks call it;
    rank 0 receives the tensors)."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = module.state_dict()
    # clones: tied weights must not share storage in a safetensors file
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def gather_state(model: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model's full state dict and the optimizer's (collective when ``sharded``)."""
    model_state = full_state_dict(model, sharded)
    if sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return model_state, {"state": optim.get("state", {}), "param_groups": optim.get("param_groups", []), "keyed_by": "name"}
    return model_state, dict(optimizer.state_dict(), keyed_by="index")


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write a state dict as safetensors, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    chmod_by_umask(tmp)
    os.replace(tmp, path)


# -- whole checkpoints -----------------------------------------------------------------------
def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``step-XXXXXXXX/`` and point ``latest.json`` at it; prune old ones.

    A failed write (a full disk, a read-only folder) removes its partial folder and raises a
    :class:`CheckpointError` saying what failed; the previous checkpoints are left as they were.
    """
    ckpt_root = Path(ckpt_root)
    name = f"step-{step:08d}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(ckpt_root)
        tmp_dir = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{name}."))
    except OSError as exc:
        raise _write_error(exc, ckpt_root, step) from None
    try:
        save_file(model_state, str(tmp_dir / "model.safetensors"))
        tensors, opt_meta = split_optimizer_state(optim_state, optim_state.get("keyed_by", "index"))
        save_file(tensors, str(tmp_dir / "optimizer.safetensors"))
        files = {f: sha256_file(tmp_dir / f) for f in ("model.safetensors", "optimizer.safetensors")}
        rng = state.get("rng_per_rank", [rng_state()])[0]
        full_state = dict(state, optimizer=opt_meta, rng=rng, step=step, files=files)
        (tmp_dir / STATE).write_text(json.dumps(full_state, indent=1, default=_json_default))
        for f in tmp_dir.iterdir():
            _fsync(f)
            chmod_by_umask(f)
        chmod_by_umask(tmp_dir, directory=True)
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp_dir, final)
        atomic_write_json(ckpt_root / LATEST, {"dir": name, "step": step, "epoch": state.get("epoch")})
    except OSError as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise _write_error(exc, ckpt_root, step) from None
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    old = sorted(p for p, _ in step_dirs(ckpt_root) if p.name != name)
    for path in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_error(exc: OSError, ckpt_root: Path, step: int) -> CheckpointError:
    kept = [p.name for p, _ in step_dirs(ckpt_root)] if Path(ckpt_root).is_dir() else []
    why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return CheckpointError(
        f"Could not write the checkpoint of step {step} in {ckpt_root}: {why} ({exc.filename or ckpt_root}). "
        + (f"The earlier checkpoint {kept[-1]} is kept unchanged; after fixing the cause, continue with --resume."
           if kept else "No earlier checkpoint of this run exists.")
    )


def remove_stale_temporaries(ckpt_root: Path) -> list[Path]:
    """Remove ``.step-*`` folders a killed write left behind (only rank 0 writes checkpoints,
    one at a time, so any such folder seen before a write is stale). Returns what was removed."""
    removed = []
    for p in Path(ckpt_root).glob(".step-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def step_dirs(ckpt_root: Path) -> list[tuple[Path, int]]:
    """The ``step-XXXXXXXX`` folders under ``ckpt_root`` with their steps, oldest first."""
    found = []
    for p in Path(ckpt_root).iterdir() if Path(ckpt_root).is_dir() else []:
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((p, int(m.group(1))))
    return sorted(found, key=lambda item: item[1])


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Read ``path/state.json`` and check every file it lists against its sha256; returns the
    state. A missing, truncated or altered file is a :class:`CheckpointError` naming it."""
    path = Path(path)
    state_file = path / STATE
    if not state_file.is_file():
        raise CheckpointError(f"{state_file} is missing (the checkpoint was not completely written).")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{state_file} is truncated or corrupt ({exc}).") from None
    if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict):
        raise CheckpointError(f"{state_file} does not hold a checkpoint state (no optimizer section).")
    files = state.get("files") or {name: None for name in ("model.safetensors", "optimizer.safetensors")}
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing.")
        if digest is not None and sha256_file(f) != digest:
            raise CheckpointError(f"{f} is damaged: its sha256 differs from the one recorded in {STATE} when it was written.")
    return state


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest checkpoint under ``ckpt_root``, verified; ``None`` when there is none.

    The ``step-*`` folders are scanned (``latest.json`` may be missing, stale or corrupt).
    When the newest one is damaged this raises a :class:`CheckpointError` that names the
    damage and the newest intact checkpoint, with the command that continues from it: a
    damaged checkpoint is never skipped silently.
    """
    ckpt_root = Path(ckpt_root)
    candidates = [p for p, _ in step_dirs(ckpt_root)][::-1]
    if not candidates:
        return None
    try:
        verify_checkpoint(candidates[0])
        return candidates[0]
    except CheckpointError as damage:
        reason = str(damage)
    newest = candidates[0]
    aside = ckpt_root / f"damaged-{newest.name}"
    for earlier in candidates[1:]:
        try:
            verify_checkpoint(earlier)
        except CheckpointError:
            continue
        raise CheckpointError(
            f"The newest checkpoint {newest} cannot be used: {reason} The previous checkpoint {earlier.name} is intact. "
            f"To continue from it, move the damaged one aside (mv {newest} {aside}) and run with --resume again."
        )
    raise CheckpointError(
        f"The newest checkpoint {newest} cannot be used: {reason} No earlier intact checkpoint exists in {ckpt_root}; "
        "start the run again with --overwrite (or from another --out)."
    )


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore the model's weights (and, for an unsharded model, the optimizer) from a step
    directory; returns its JSON state. RNG states are restored by :func:`restore_rng`."""
    path = Path(path)
    state = verify_checkpoint(path)
    try:
        weights = load_file(str(path / "model.safetensors"))
    except Exception as exc:  # safetensors raises several types for truncated or corrupt files
        raise CheckpointError(f"Could not read {path / 'model.safetensors'}: {exc}") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"The checkpoint {path} does not match this run's model: missing keys {sorted(missing)[:8]}, "
            f"unexpected keys {sorted(unexpected)[:8]}. Resume with the config the run was started with."
        )
    if optimizer is not None:
        load_optimizer(path, model, optimizer, state)
    return state


def load_optimizer(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], sharded: bool = False) -> None:
    """Load the optimizer state saved in ``path`` into ``optimizer`` (built for ``model``)."""
    try:
        tensors = load_file(str(Path(path) / "optimizer.safetensors"))
        full = join_optimizer_state(tensors, state["optimizer"])
    except CheckpointError:
        raise
    except Exception as exc:  # missing, truncated or corrupt file
        raise CheckpointError(f"Could not read the optimizer state {Path(path) / 'optimizer.safetensors'}: {exc}") from None
    keyed_by = state["optimizer"].get("keyed_by", "index")
    try:
        if sharded or keyed_by == "name":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(full)
    except (ValueError, KeyError, AssertionError, RuntimeError) as exc:
        raise CheckpointError(f"Optimizer state in {path} does not match this run: {exc}") from None


def restore_rng(state: dict[str, Any], rank: int, world: int, seed: int) -> None:
    """Restore this rank's RNG state; when the number of processes changed, ranks other than
    0 re-seed deterministically from ``(seed, rank, step)``."""
    per_rank = state.get("rng_per_rank")
    if per_rank and len(per_rank) == world:
        set_rng_state(per_rank[rank])
    elif rank == 0:
        set_rng_state(state["rng"])
    else:
        import random as _random

        s = seed * 1_000_003 + rank * 7919 + int(state.get("step", 0))
        _random.seed(s)
        np.random.seed(s % (2**32))
        torch.manual_seed(s)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, list)):
        return [_jsonable(o) for o in obj]
    return obj


def _tuplify(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_tuplify(o) for o in obj)
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
