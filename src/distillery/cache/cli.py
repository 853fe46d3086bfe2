"""``distillery cache build`` and ``distillery cache verify`` (sub-commands of the CLI).

Only :mod:`argparse` is imported at module level, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _cmd_build(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .from_config import build_cache_from_config

    cfg = load_config(args.config, args.set)
    if getattr(cfg, "engine", None) == "sequence":
        return _cmd_build_sequence(cfg, args)
    out = args.out
    if out is None and getattr(cfg.teacher, "kind", None) != "cached":
        out = str(Path("caches") / (cfg.name or Path(args.config).stem))
    argv = ["cache", "build", args.config]
    for item in args.set:
        argv += ["--set", item]
    argv += ["--out", str(out if out is not None else cfg.teacher.path)]
    for flag, value in (("--topk", args.topk), ("--temperature", args.temperature), ("--views", args.views),
                        ("--dtype", args.dtype), ("--shard-size", args.shard_size)):
        if value is not None:
            argv += [flag, str(value)]
    t0 = time.perf_counter()
    path, manifest = build_cache_from_config(
        cfg, out, topk=args.topk, temperature=args.temperature, views=args.views, dtype=args.dtype,
        shard_size=args.shard_size, overwrite=args.overwrite, argv=argv,
    )
    print(f"cache built: {path}  ({time.perf_counter() - t0:.1f}s)")
    print(_summary(manifest))
    return 0


def _cmd_build_sequence(cfg, args: argparse.Namespace) -> int:
    """A sequence config: its teacher's top-k log-probs per completion token
    (:func:`distillery.sequence.run.build_sequence_cache`; ``--topk`` required)."""
    from ..errors import ConfigError
    from ..sequence.run import build_sequence_cache

    if args.topk is None:
        raise ConfigError("cache build: a sequence config needs --topk K (the number of teacher log-probs kept per token).")
    t0 = time.perf_counter()
    cache = build_sequence_cache(cfg, args.out, k=args.topk, temperature=args.temperature,
                                 shard_size=args.shard_size or 4096, overwrite=args.overwrite)
    print(f"cache built: {cache.path}  ({time.perf_counter() - t0:.1f}s)")
    print(f"  {cache.num_examples} examples, {cache.num_tokens} completion tokens; top-{cache.k} of {cache.vocab_size} "
          f"tokens at T={cache.temperature}; {cache.bytes_per_token:.1f} bytes per token on disk")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .store import CacheReader

    t0 = time.perf_counter()
    reader = CacheReader(args.dir, verify="full")
    seconds = time.perf_counter() - t0
    print(f"cache ok: {args.dir}  ({reader.verified_bytes / 1e6:.1f} MB checked in {seconds:.2f}s)")
    print(_summary(reader.manifest))
    return 0


def _summary(m: dict) -> str:
    signals = ", ".join(f"{name} {s['dtype']}{s['shape']}" for name, s in m["signals"].items())
    topk = m.get("topk")
    kind = f"top-{topk['k']} of {topk['num_classes']} classes, tail mass at T={topk['temperature']}" if topk else "dense"
    teacher = m.get("teacher") or {}
    data = m.get("dataset") or {}
    lines = [
        f"  samples {m['num_samples']} x views {m['views']}, {m['num_shards']} shard(s) of {m['shard_size']}; {kind}",
        f"  signals: {signals}",
        (f"  teacher {(teacher.get('model') or {}).get('name')} fingerprint {teacher.get('fingerprint')}; "
         f"dataset {data.get('name', '')} fingerprint {data.get('fingerprint')}"),
    ]
    return "\n".join(lines)


def add_cache_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``cache build`` and ``cache verify`` to the ``distillery`` sub-commands."""
    p = sub.add_parser("cache", help="teacher-output caches: build one from a config, or verify one")
    csub = p.add_subparsers(dest="cache_command", required=True)

    b = csub.add_parser(
        "build",
        help="run a config's frozen teacher once over its training set and store its outputs",
        description=(
            "Run the config's teacher (frozen, or cached with teacher.source) once over the training set "
            "(and over V fixed augmentations when its input is random) and store its outputs: logits in float16, "
            "or top-k logits with their indices and tail mass, plus the features the objectives tap."
        ),
    )
    b.add_argument("config", help="a YAML config whose teacher is frozen, or cached with a teacher.source")
    b.add_argument("--out", help="cache directory (default: teacher.path of a cached config, else caches/<config name>)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    b.add_argument("--topk", type=_positive_int, help="keep the K largest logits, their indices and the tail mass")
    b.add_argument("--temperature", type=_positive_float,
                   help="temperature of the top-k tail mass (default: the config's kd_topk or kd temperature, else 1)")
    b.add_argument("--views", type=_positive_int,
                   help="fixed augmentations per sample when the teacher's input is random (default 4; 1 otherwise)")
    b.add_argument("--dtype", choices=("float16", "float32"), help="storage dtype of logits and features (default float16)")
    b.add_argument("--shard-size", dest="shard_size", type=_positive_int, help="samples per shard (default 16384)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing cache (swapped in once the new one is complete)")
    b.set_defaults(func=_cmd_build)

    v = csub.add_parser("verify", help="check a cache's files against its manifest (sizes, headers, sha256)")
    v.add_argument("dir", help="cache directory")
    v.set_defaults(func=_cmd_verify)
