"""The on-disk format of a teacher-output cache: sharded ``.npy`` files plus a manifest.

Layout of a cache directory::

    DIR/
      manifest.json                 written last: a directory without it is not a cache
      teacher.safetensors           the weights the outputs were computed with (when known)
      teacher/                      the teacher's own training run, when the build fitted it
      shards/
        00000/logits.npy            samples [0, S) of signal "logits": [n, V, *shape]
        00000/blocks.1.npy          a tapped feature, same rows
        00001/logits.npy            samples [S, 2S)
        ...

Every signal of shard ``j`` holds samples ``j*S .. min((j+1)*S, N) - 1`` (``S`` =
``shard_size``), in dataset index order, for each of the ``V`` augmentation views: entry
``[i - j*S, v]`` is the teacher's output for sample ``i`` under view ``v``. Files are plain
NumPy ``.npy`` arrays (readable by ``np.load(path, mmap_mode="r")``). A dense cache stores
``logits`` in float16 (or float32); a top-k cache stores instead ``logits@topk_values``
(float16, the k largest logits, largest first), ``logits@topk_index`` (int16, or int32 for
more than 32,767 classes) and ``logits@tail_mass`` (float32, the teacher's probability mass
outside the kept classes at the cache temperature).

``manifest.json`` records the format version, the number of samples, views and shards,
each signal's dtype and per-entry shape, the top-k ``k`` and temperature, the teacher
fingerprint (sha256 of its state_dict bytes and model config), what trained the teacher when
the build fitted it (``teacher.fit``, see :func:`fit_description`), the sha256 of the stored
teacher weights, the dataset fingerprint
(:meth:`~distillery.data.ArrayDataset.fingerprint` of the exact training set), the teacher's
input (view transforms, seed) and, per shard and file, its byte size and sha256. Its
structure and types are checked on read (:func:`check_manifest`): a missing key or a value
of the wrong type is one :class:`CacheCorruptError` naming the key.

Sharding by contiguous index range does not depend on the number of processes that read
the cache. Under DDP every rank memory-maps all shards (pages are loaded on demand and
shared through the operating system's page cache, so N ranks on a node cost one copy); a
sampler that gives rank ``r`` whole index ranges could instead read only the shards
covering them (shard ``j`` covers ``[j*S, (j+1)*S)``).

Opening a cache (:class:`CacheReader`) checks that every file exists, has the recorded size
and a header with the recorded shape and dtype, and (``verify="full"``, the default) that its
sha256 matches. Any failure is a :class:`CacheError` naming the file and the command that
rebuilds the cache; nothing is recomputed or skipped silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.checkpoint import sha256_file
from ..errors import DistilleryError

FORMAT = "distillery-teacher-cache"
VERSION = 1
MANIFEST = "manifest.json"
TEACHER_WEIGHTS = "teacher.safetensors"
DTYPES = ("float16", "float32", "int16", "int32", "int64")

__all__ = [
    "FIT_BOOKKEEPING",
    "CacheCorruptError",
    "CacheError",
    "CacheIndexError",
    "CacheMismatchError",
    "CacheNotFoundError",
    "CacheReader",
    "CacheWriter",
    "check_manifest",
    "fit_description",
    "rebuild_hint",
    "sha256_file",
]


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


class CacheError(DistilleryError):
    """A teacher-output cache cannot be used as it is (shown without a traceback, exit 2)."""


class CacheNotFoundError(CacheError):
    """No cache at the path, or a build that did not finish (no manifest)."""


class CacheCorruptError(CacheError):
    """A shard is missing, truncated, has a wrong header or a wrong checksum."""


class CacheMismatchError(CacheError):
    """The cache was built for another dataset, teacher, view or temperature than the run's."""


class CacheIndexError(CacheError):
    """A batch asks for a sample index the cache does not hold."""


def rebuild_hint(path: Path | str, manifest: Mapping[str, Any] | None = None) -> str:
    """``distillery cache build ... --overwrite``: the command that rebuilds the cache at ``path``.

    The command the cache was built with (``build.argv`` of its manifest) when recorded, with
    its ``--out`` set to ``path``, where the cache is now (it may have been moved or copied
    since the build); otherwise a template with ``CONFIG``.
    """
    build = (manifest or {}).get("build") if isinstance(manifest, Mapping) else None
    recorded = build.get("argv") if isinstance(build, Mapping) else None
    if isinstance(recorded, list) and recorded and all(isinstance(a, str) for a in recorded):
        argv = _with_out(list(recorded), str(path))
        if "--overwrite" not in argv:
            argv.append("--overwrite")
        return "distillery " + " ".join(_quote(a) for a in argv)
    return f"distillery cache build CONFIG --out {_quote(str(path))} --overwrite"


def _with_out(argv: list[str], out: str) -> list[str]:
    """``argv`` with its ``--out`` value (``--out DIR`` or ``--out=DIR``) replaced by ``out``,
    or ``--out out`` appended when it has none."""
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return argv[: i + 1] + [out] + argv[i + 2 :]
        if arg.startswith("--out="):
            return argv[:i] + [f"--out={out}"] + argv[i + 1 :]
    return argv + ["--out", out]


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


FIT_BOOKKEEPING = (
    "eval_every", "checkpoint_every", "keep_checkpoints", "log_every", "device", "progress", "tensorboard",
    "distributed", "find_unused_parameters",
)
"""Keys of a ``fit`` section that do not change the trained teacher (logging, checkpointing,
where it runs); :func:`fit_description` leaves them out."""


def fit_description(fit: Any) -> dict[str, Any] | None:
    """What trained a teacher that a cache build fitted: its ``fit`` section as plain JSON
    (epochs, optimizer, scheduler, objectives, data, ...), without :data:`FIT_BOOKKEEPING`.

    Stored as ``teacher.fit`` in the manifest; a run on the cache compares it with its
    ``teacher.source.fit``, since without a checkpoint the weights themselves cannot be
    compared before they are trained. ``None`` for ``fit=None``.
    """
    if fit is None:
        return None
    data = fit.model_dump(mode="json") if hasattr(fit, "model_dump") else dict(fit)
    return {k: v for k, v in data.items() if k not in FIT_BOOKKEEPING}


def file_stem(name: str, taken: set[str]) -> str:
    """A file name for signal ``name`` (``teacher.blocks.1:input`` -> ``blocks.1_input``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "signal"
    base, i = stem, 1
    while stem.lower() in taken:
        i += 1
        stem = f"{base}-{i}"
    taken.add(stem.lower())
    return stem


@dataclass(frozen=True)
class SignalSpec:
    """One stored signal: its file stem, dtype and the shape of one entry."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "dtype": self.dtype, "shape": list(self.shape)}


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


class CacheWriter:
    """Writes the shards of a cache into a (staging) directory.

    ``signals``: ``name -> (dtype, per-entry shape)``. Rows are written with :meth:`write`
    (``start`` is the dataset index of the first row, ``view`` the augmentation view);
    :meth:`finish` flushes, checksums and writes ``manifest.json`` last.
    """

    def __init__(
        self, root: Path, num_samples: int, views: int, shard_size: int, signals: Mapping[str, tuple[str, tuple[int, ...]]]
    ) -> None:
        from numpy.lib.format import open_memmap

        if num_samples < 1 or views < 1 or shard_size < 1:
            raise ValueError("num_samples, views and shard_size must be positive")
        self.root = Path(root)
        self.num_samples, self.views, self.shard_size = int(num_samples), int(views), int(shard_size)
        taken: set[str] = set()
        self.specs = {
            name: SignalSpec(name, file_stem(name, taken), str(np.dtype(dtype)), tuple(int(s) for s in shape))
            for name, (dtype, shape) in signals.items()
        }
        for spec in self.specs.values():
            if spec.dtype not in DTYPES:
                raise ValueError(f"unsupported cache dtype {spec.dtype}")
        self.num_shards = -(-self.num_samples // self.shard_size)
        self.arrays: list[dict[str, np.memmap]] = []
        for j in range(self.num_shards):
            folder = self.root / "shards" / f"{j:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            rows = min(self.shard_size, self.num_samples - j * self.shard_size)
            self.arrays.append({
                name: open_memmap(folder / f"{spec.file}.npy", mode="w+", dtype=np.dtype(spec.dtype), shape=(rows, self.views, *spec.shape))
                for name, spec in self.specs.items()
            })

    def write(self, start: int, view: int, values: Mapping[str, np.ndarray]) -> None:
        """Rows ``start .. start + len - 1`` of view ``view`` for every signal."""
        for name, array in values.items():
            spec = self.specs[name]
            if tuple(array.shape[1:]) != spec.shape:
                raise ValueError(f"signal {name!r}: rows of shape {tuple(array.shape[1:])}, expected {spec.shape}")
            n = array.shape[0]
            pos = 0
            while pos < n:
                i = start + pos
                j, local = divmod(i, self.shard_size)
                take = min(n - pos, self.shard_size - local)
                self.arrays[j][name][local : local + take, view] = array[pos : pos + take]
                pos += take

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Flush the shards, checksum them and write ``manifest.json`` (returned)."""
        shards = []
        for j, arrays in enumerate(self.arrays):
            files = {}
            for name, array in arrays.items():
                array.flush()
                path = Path(array.filename)
                files[name] = {
                    "path": path.relative_to(self.root).as_posix(),
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            start = j * self.shard_size
            shards.append({"start": start, "stop": min(start + self.shard_size, self.num_samples), "files": files})
        self.arrays = []
        manifest = dict(manifest)
        manifest.update({
            "format": FORMAT,
            "version": VERSION,
            "num_samples": self.num_samples,
            "views": self.views,
            "shard_size": self.shard_size,
            "num_shards": self.num_shards,
            "signals": {name: spec.to_json() for name, spec in self.specs.items()},
            "shards": shards,
        })
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        tmp = self.root / f".{MANIFEST}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / MANIFEST)
        return manifest


def check_target(out: Path, overwrite: bool) -> Path:
    """Refuse to build into an existing, non-empty directory unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CacheError(f"The cache path {out} exists and is not a directory. Nothing was changed; choose another --out.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CacheError(
            f"The cache directory {out} already exists and is not empty. Nothing was changed. "
            "Pass --overwrite to replace it (it is swapped in only once the new cache is complete), or choose another --out."
        )
    return out


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh sibling directory to build into; removed if the build fails."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit(tmp: Path, out: Path) -> None:
    """Move a complete staging directory into place (replacing ``out`` if it exists)."""
    out = Path(out)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


class CacheReader:
    """A cache directory opened for reading: its manifest and memory-mapped shards.

    Args:
        path: the cache directory.
        verify: ``"full"`` (default): check every file's size, header and sha256 on open;
            ``"size"``: sizes and headers only (catches truncation and missing files, not
            flipped bytes; for caches too large to hash at every start).

    :meth:`lookup` returns the entries of one signal for sample indices and view indices.
    """

    def __init__(self, path: Path | str, verify: str = "full") -> None:
        if verify not in ("full", "size"):
            raise ValueError(f"verify must be 'full' or 'size', got {verify!r}")
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        m = self.manifest
        self.hint = rebuild_hint(self.path, m)
        self.num_samples, self.views, self.shard_size = int(m["num_samples"]), int(m["views"]), int(m["shard_size"])
        self.specs = {
            name: SignalSpec(name, s["file"], s["dtype"], tuple(s["shape"])) for name, s in m["signals"].items()
        }
        self.verified_bytes = 0
        self.shards: list[dict[str, np.ndarray]] = []
        expected_start = 0
        for j, shard in enumerate(m["shards"]):
            start, stop = int(shard["start"]), int(shard["stop"])
            if start != expected_start or stop - start != min(self.shard_size, self.num_samples - start):
                raise self._corrupt(f"its manifest lists shard {j} as samples [{start}, {stop}), which does not follow the layout")
            expected_start = stop
            arrays = {}
            for name, spec in self.specs.items():
                entry = shard["files"].get(name)
                if entry is None:
                    raise self._corrupt(f"its manifest lists no file of signal {name!r} for shard {j}")
                arrays[name] = self._open(entry, spec, (stop - start, self.views, *spec.shape), verify)
            self.shards.append(arrays)
        if expected_start != self.num_samples:
            raise self._corrupt(f"its shards cover samples [0, {expected_start}) but it should hold {self.num_samples}")

    # -- opening ---------------------------------------------------------------------------
    def _corrupt(self, what: str) -> CacheCorruptError:
        return CacheCorruptError(
            f"The teacher-output cache {self.path} cannot be used: {what}. Nothing was recomputed; "
            f"rebuild it with: {self.hint}"
        )

    def _open(self, entry: Mapping[str, Any], spec: SignalSpec, shape: tuple[int, ...], verify: str) -> np.ndarray:
        rel = entry["path"]
        path = self.path / rel
        if not path.is_file():
            raise self._corrupt(f"the shard file {rel} is missing")
        size = path.stat().st_size
        if size != int(entry["bytes"]):
            state = "truncated" if size < int(entry["bytes"]) else "longer than written"
            raise self._corrupt(f"the shard file {rel} is {size} bytes but was written with {entry['bytes']} ({state})")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError, SyntaxError) as exc:  # a damaged header
            raise self._corrupt(f"the shard file {rel} is not a readable .npy array ({exc})") from None
        if tuple(array.shape) != shape or str(array.dtype) != spec.dtype:
            raise self._corrupt(
                f"the shard file {rel} holds a {array.dtype} array of shape {list(array.shape)}, "
                f"expected {spec.dtype} {list(shape)}"
            )
        if verify == "full":
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise self._corrupt(
                    f"the shard file {rel} has sha256 {digest[:16]}..., but was written with "
                    f"{entry['sha256'][:16]}... (its bytes changed after the build)"
                )
            self.verified_bytes += size
        return array

    # -- queries ---------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.specs)

    @property
    def topk(self) -> dict[str, Any] | None:
        return self.manifest.get("topk")

    def check_indices(self, index: np.ndarray) -> None:
        if index.size and (int(index.min()) < 0 or int(index.max()) >= self.num_samples):
            bad = int(index.max()) if int(index.max()) >= self.num_samples else int(index.min())
            raise CacheIndexError(
                f"A batch asks the teacher-output cache {self.path} for sample index {bad}, but it holds "
                f"samples 0..{self.num_samples - 1} only: it was built over a different dataset than the "
                f"one being trained on. Nothing was skipped; rebuild it for this run's data with: {self.hint}"
            )

    def lookup(self, name: str, index: np.ndarray, view: np.ndarray | None = None) -> np.ndarray:
        """Entries ``[len(index), *shape]`` of signal ``name`` for samples ``index`` under
        views ``view`` (default view 0); a copy, in the stored dtype."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        view = np.zeros_like(index) if view is None else np.asarray(view, dtype=np.int64).reshape(-1)
        self.check_indices(index)
        spec = self.specs[name]
        out = np.empty((index.shape[0], *spec.shape), dtype=np.dtype(spec.dtype))
        shard = index // self.shard_size
        local = index - shard * self.shard_size
        first = int(shard.min()) if index.size else 0
        if index.size and first == int(shard.max()):
            out[:] = self.shards[first][name][local, view]
            return out
        for j in np.unique(shard):
            rows = shard == j
            out[rows] = self.shards[int(j)][name][local[rows], view[rows]]
        return out


def read_manifest(path: Path) -> dict[str, Any]:
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        what = (
            f"{path} holds no {MANIFEST}: it is not a teacher-output cache, or its build did not finish"
            if path.is_dir() else f"{path} does not exist"
        )
        raise CacheNotFoundError(
            f"No teacher-output cache at {path}: {what}. Build it first with "
            f"'distillery cache build CONFIG --out {_quote(str(path))}' (CONFIG: a config whose "
            "teacher is frozen, or cached with a teacher.source)."
        )
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise CacheCorruptError(
            f"The teacher-output cache {path} cannot be used: its {MANIFEST} is not valid JSON ({exc}). "
            f"Rebuild it with: {rebuild_hint(path)}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheCorruptError(f"{file} is not a distillery teacher-output cache manifest. Rebuild it with: {rebuild_hint(path)}")
    if manifest.get("version") != VERSION:
        raise CacheMismatchError(
            f"The teacher-output cache {path} has format version {manifest.get('version')}, but this "
            f"distillery reads version {VERSION}. Rebuild it with: {rebuild_hint(path, manifest)}"
        )
    check_manifest(manifest, path)
    return manifest


# --------------------------------------------------------------------------------------
# the manifest's structure
# --------------------------------------------------------------------------------------


class _Malformed(Exception):
    def __init__(self, key: str, what: str) -> None:
        super().__init__(key, what)
        self.key, self.what = key, what


def _got(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (str, int, float, bool)):
        text = json.dumps(value)
        return f"the {type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
    return f"a {type(value).__name__}"


def _need(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        missing = value is _MISSING
        raise _Malformed(key, "is missing" if missing else f"is {_got(value)}, expected {expected}")


_MISSING = object()


def _int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _get(m: Mapping[str, Any], key: str) -> Any:
    return m.get(key, _MISSING)


def _mapping(m: Mapping[str, Any], key: str, where: str, required: bool = True) -> Mapping[str, Any]:
    v = _get(m, key)
    if v is _MISSING and not required:
        return {}
    _need(isinstance(v, Mapping), f"{where}{key}", v, "an object")
    return v


def _field(m: Mapping[str, Any], key: str, where: str, ok: Callable[[Any], bool], expected: str, required: bool = True) -> Any:
    v = _get(m, key)
    if v is _MISSING and not required:
        return None
    _need(v is not _MISSING and ok(v), f"{where}{key}", v, expected)
    return v


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _relative_file(v: Any) -> bool:
    if not isinstance(v, str) or not v:
        return False
    parts = Path(v).parts
    return not Path(v).is_absolute() and ".." not in parts


def _check_manifest(m: Mapping[str, Any]) -> None:
    _field(m, "num_samples", "", lambda v: _int(v, 1), "a positive integer")
    _field(m, "views", "", lambda v: _int(v, 1), "a positive integer")
    _field(m, "shard_size", "", lambda v: _int(v, 1), "a positive integer")
    num_shards = _field(m, "num_shards", "", lambda v: _int(v, 1), "a positive integer")
    signals = _mapping(m, "signals", "")
    if not signals:
        raise _Malformed("signals", "is empty, expected at least one signal")
    for name, spec in signals.items():
        where = f"signals.{name}."
        _need(isinstance(spec, Mapping), where[:-1], spec, "an object with file, dtype and shape")
        _field(spec, "file", where, lambda v: isinstance(v, str) and v != "", "a file name")
        _field(spec, "dtype", where, lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}")
        _field(spec, "shape", where, lambda v: isinstance(v, list) and all(_int(s) for s in v), "a list of non-negative integers")
    shards = _field(m, "shards", "", lambda v: isinstance(v, list), "a list of shards (one object per shard)")
    if len(shards) != num_shards:
        raise _Malformed("shards", f"lists {len(shards)} shards, but num_shards is {num_shards}")
    for j, shard in enumerate(shards):
        where = f"shards[{j}]"
        _need(isinstance(shard, Mapping), where, shard, "an object with start, stop and files")
        _field(shard, "start", where + ".", lambda v: _int(v), "a non-negative integer")
        _field(shard, "stop", where + ".", lambda v: _int(v), "a non-negative integer")
        files = _mapping(shard, "files", where + ".")
        for name, entry in files.items():
            at = f"{where}.files.{name}"
            _need(isinstance(entry, Mapping), at, entry, "an object with path, bytes and sha256")
            _field(entry, "path", at + ".", _relative_file, "a relative path inside the cache")
            _field(entry, "bytes", at + ".", lambda v: _int(v), "a non-negative integer")
            _field(entry, "sha256", at + ".", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
                   "64 hexadecimal digits")
    topk = _get(m, "topk")
    if topk is not _MISSING and topk is not None:
        _need(isinstance(topk, Mapping), "topk", topk, "null or an object with k, temperature and num_classes")
        _field(topk, "k", "topk.", lambda v: _int(v, 1), "a positive integer")
        _field(topk, "temperature", "topk.", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
               "a positive number")
        _field(topk, "num_classes", "topk.", lambda v: _int(v), "a non-negative integer", required=False)
    teacher = _mapping(m, "teacher", "")
    _field(teacher, "fingerprint", "teacher.", lambda v: isinstance(v, str), "a string", required=False)
    _field(teacher, "until", "teacher.", _opt_str, "null or a module path", required=False)
    model = _mapping(teacher, "model", "teacher.", required=False)
    _field(model, "name", "teacher.model.", _opt_str, "null or a model name", required=False)
    _mapping(model, "params", "teacher.model.", required=False)
    _field(teacher, "weights", "teacher.", _relative_file, "a relative path inside the cache", required=False)
    _field(teacher, "weights_sha256", "teacher.", lambda v: isinstance(v, str), "a string", required=False)
    _field(teacher, "input_shape", "teacher.", lambda v: isinstance(v, list) and all(_int(s, 1) for s in v),
           "a list of positive integers", required=False)
    _field(teacher, "num_classes", "teacher.", lambda v: _int(v, 1), "a positive integer", required=False)
    _field(teacher, "fitted", "teacher.", lambda v: isinstance(v, bool), "true or false", required=False)
    _field(teacher, "fit", "teacher.", lambda v: v is None or isinstance(v, Mapping), "null or an object", required=False)
    dataset = _mapping(m, "dataset", "", required=False)
    _field(dataset, "fingerprint", "dataset.", lambda v: isinstance(v, str), "a string", required=False)
    _field(dataset, "num_samples", "dataset.", lambda v: _int(v), "a non-negative integer", required=False)
    spec = _mapping(m, "input", "", required=False)
    _field(spec, "key", "input.", lambda v: isinstance(v, str), "a batch field name", required=False)
    _field(spec, "transforms", "input.", lambda v: isinstance(v, list), "a list of view specs", required=False)
    _field(spec, "tied_to_student", "input.", lambda v: isinstance(v, bool), "true or false", required=False)
    _field(spec, "seed", "input.", lambda v: _int(v), "a non-negative integer", required=False)
    build = _mapping(m, "build", "", required=False)
    _field(build, "argv", "build.", lambda v: v is None or (isinstance(v, list) and all(isinstance(a, str) for a in v)),
           "null or a list of strings", required=False)


def check_manifest(manifest: Mapping[str, Any], path: Path | str) -> None:
    """Check the structure and types of a manifest (version :data:`VERSION`), so that a
    hand-edited or damaged one is one :class:`CacheCorruptError` naming the key, not a
    traceback: the counts and sizes are non-negative integers, ``signals`` maps names to
    ``{file, dtype, shape}``, ``shards`` is a list of ``{start, stop, files}`` with, per file,
    a relative ``path``, its ``bytes`` and ``sha256``; ``teacher``, ``dataset``, ``input``,
    ``build`` and ``topk`` have the types a build writes. Whether shards cover the samples in
    order, and the files themselves, are checked by :class:`CacheReader`."""
    try:
        _check_manifest(manifest)
    except _Malformed as bad:
        raise CacheCorruptError(
            f"The teacher-output cache {path} cannot be used: its {MANIFEST} is malformed: the key {bad.key!r} "
            f"{bad.what}. Nothing was read; rebuild it with: {rebuild_hint(path, manifest)}"
        ) from None
