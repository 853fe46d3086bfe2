"""The ``distillery`` command line.

::

    distillery run CONFIG|NAME [--set key=value ...] [--out DIR] [--resume | --overwrite]
    distillery validate CONFIG|NAME [--set key=value ...]
    distillery demo [--quick] [--out DIR] [--overwrite]
    distillery list [--params [NAME]]
    distillery report RUN_DIR
    distillery sample RUN_DIR --steps N [--num K] [--seed S] [--out DIR] [--guidance W]
    distillery generate RUN_DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--seed S]
    distillery cache build CONFIG [--out DIR] [--set k=v] [--topk K] [--views V] [--overwrite]
    distillery cache verify DIR
    distillery reproduce NAME [--quick] [--seeds N] [--out DIR] [--docs DIR]
    distillery reproduce --all [--family F] [--quick] [--out DIR] [--docs DIR]
    distillery reproduce NAME --diagnose [--quick] [--seeds N] [--out DIR] [--docs DIR]
    distillery reproduce --list
    distillery bench [--quick] [--out DIR] [--docs BENCHMARKS.md]

``run`` takes a YAML file or the name of a config bundled with the package (``distillery run
kd_mnist1d``; an existing path wins, see :mod:`distillery.config.bundled`).

User errors (bad config, missing data, wrong module path, unmatched shapes, a non-finite
loss, an existing run directory) print one paragraph and exit with status 2, without a
traceback. Other exceptions are bugs and keep theirs.
"""

from __future__ import annotations

import argparse
import errno
import sys
import textwrap
from pathlib import Path

from .errors import ConfigError, DistilleryError


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import bundled, load_config
    from .runner import run

    path = bundled.resolve(args.config)
    cfg = load_config(path, args.set)
    out = Path(args.out) if args.out else Path("runs") / (cfg.name or path.stem)
    if getattr(cfg, "engine", None) in ("generative", "streaming"):
        from .generative.run import run_generative
        from .streaming.run import run_streaming

        execute = run_streaming if cfg.engine == "streaming" else run_generative
        summary = execute(cfg, out, resume=args.resume, overwrite=args.overwrite)
        for n, scores in summary.get("final", {}).items():
            shown = "  ".join(f"{k}={v:.4f}" for k, v in scores.items() if isinstance(v, float))
            print(f"  {n} step(s): {shown}")
        print(f"run finished: {out}  ({summary['steps']} steps, {summary['wall_s']:.1f}s)")
        print(f"report: {out / 'report.md'}")
        return 0
    if getattr(cfg, "engine", None) == "sequence":
        from .sequence.run import run_sequence

        summary = run_sequence(cfg, out, resume=args.resume, overwrite=args.overwrite)
        shown = "  ".join(f"{k}={v:.4f}" for k, v in summary.get("final", {}).items() if isinstance(v, float))
        print(f"run finished: {out}  ({summary['steps']} steps, {summary['wall_s']:.1f}s)  {shown}")
        return 0
    summary = run(cfg, out, resume=args.resume, overwrite=args.overwrite)
    final = summary.get("final", {})
    parts = [f"{k}={v:.4f}" for k, v in final.items() if isinstance(v, float)]
    print(f"run finished: {out}  ({summary['steps']} steps, {summary['wall_s']:.1f}s)  " + "  ".join(parts))
    print(f"report: {out / 'report.md'}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .config import bundled, load_config
    from .validate import validate

    path = bundled.resolve(args.config)
    cfg = load_config(path, args.set)
    if getattr(cfg, "engine", None) in ("generative", "streaming"):
        from .generative.run import validate_generative

        print("\n".join(validate_generative(cfg, name=f"{cfg.name or path.stem} ({path})").lines()))
        return 0
    if getattr(cfg, "engine", None) == "sequence":
        from .sequence.run import validate_sequence

        print("\n".join(validate_sequence(cfg, name=f"{cfg.name or path.stem} ({path})").lines()))
        return 0
    print("\n".join(validate(cfg, name=f"{cfg.name or path.stem} ({path})").lines()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), quick=args.quick, overwrite=args.overwrite, seeds=args.seeds)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from . import data, models, objectives, recipes, registry, teachers, weighting  # noqa: F401  (importing fills the registries)

    if args.params is not None:
        return _list_params(args.params or None)
    sections = [
        ("teachers", registry.TEACHERS),
        ("objectives", registry.OBJECTIVES),
        ("weightings", registry.WEIGHTINGS),
        ("datasets", registry.DATASETS),
        ("views", registry.VIEWS),
        ("models", registry.MODELS),
        ("recipes", registry.RECIPES),
    ]
    for title, reg in sections:
        print(f"{title}:")
        width = max((len(n) for n in reg.names()), default=0)
        for name, summary in reg.items():
            print(f"  {name:<{width}}  {summary}")
        print()
    _list_configs()
    print("'distillery list --params [NAME]' shows the parameters of the datasets, views and models.")
    return 0


def _list_params(name: str | None) -> int:
    """The parameters of every dataset, view and model (or of those named ``name``): type,
    default and meaning, from the signature and the docstring's ``Args:`` section."""
    import difflib

    from . import registry
    from .config.describe import describe
    from .config.signatures import accepts

    sections = [("datasets", registry.DATASETS), ("views", registry.VIEWS), ("models", registry.MODELS)]
    if name is not None and not any(name in reg for _, reg in sections):
        known = sorted({n for _, reg in sections for n in reg.names()})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"'distillery list --params {name}': no dataset, view or model is called {name!r}.{hint} "
            "'distillery list' shows every name."
        )
    for title, reg in sections:
        names = [n for n in reg.names() if name is None or n == name]
        if not names:
            continue
        print(f"{title}:" if name is None else f"{title[:-1]}:")
        for n in names:
            fn = reg.get(n)
            supplied = [s for s in ("input_shape", "num_classes") if reg is registry.MODELS and accepts(fn, s)]
            print("\n".join(describe(title[:-1], n, fn, reg.summary(n), supplied)))
        print()
    return 0


def _list_configs() -> None:
    """The bundled configs, each with the recipes that point to it (two have none)."""
    from . import registry
    from .config import bundled

    users: dict[str, list[str]] = {}
    for name in registry.RECIPES.names():
        users.setdefault(Path(registry.RECIPES.get(name).config).stem, []).append(name)
    names = bundled.names()
    width = max((len(n) for n in names), default=0)
    print("configs (bundled; 'distillery run NAME' runs one, configs/ in the repository holds the same files):")
    for name in names:
        recipes = users.get(name)
        print(f"  {name:<{width}}  {'recipe ' + ', '.join(recipes) if recipes else '(no recipe)'}")
    print()


def _cmd_report(args: argparse.Namespace) -> int:
    from .evaluation.report import write_report
    from .generative.report import is_generative_run, write_generative_report

    path = (write_generative_report if is_generative_run(Path(args.run_dir)) else write_report)(Path(args.run_dir))
    print(f"report: {path}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .generative.sample import run_engine, sample_run

    if run_engine(Path(args.run_dir)) == "streaming":
        from .streaming.sample import sample_stream_run

        result = sample_stream_run(Path(args.run_dir), steps=args.steps, num=args.num if args.num != 1000 else 8, seed=args.seed,
                                   out=Path(args.out) if args.out else None, chunks=args.chunks)
        print(f"samples: {result['samples']}")
        print(f"film strip: {result['png']}")
        print(f"animation: {result['gif']}")
        print("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items()))
        return 0
    result = sample_run(Path(args.run_dir), steps=args.steps, num=args.num, seed=args.seed,
                        out=Path(args.out) if args.out else None, guidance=args.guidance)
    print(f"samples: {result['samples']}")
    print(f"picture: {result['png']}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .sequence.generate import generate_text

    print(generate_text(Path(args.run_dir), args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        seed=args.seed))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import REPRODUCTIONS, load_all
    from .reproduce.runner import diagnose_one, run_all, run_one, write_diagnosis_docs, write_docs
    from .runner import prepare_run_dir

    load_all()
    if args.list:
        width = max((len(n) for n in REPRODUCTIONS.names()), default=0)
        for name in REPRODUCTIONS.names():
            rep = REPRODUCTIONS.get(name)
            diagnosis = "; has --diagnose" if rep.diagnose is not None else ""
            print(f"{name:<{width}}  [{rep.family}] {rep.summary} ({rep.paper}{diagnosis})")
        return 0
    if args.all == bool(args.name):
        raise ConfigError("Give a reproduction NAME, or --all, or --list (see 'distillery reproduce --list').")
    if args.diagnose and args.all:
        raise ConfigError("--diagnose takes one reproduction NAME, not --all.")
    default = (args.name or "all") + ("_diagnosis" if args.diagnose else "")
    out = Path(args.out) if args.out else Path("runs") / "reproduce" / default
    if args.diagnose:
        from .reproduce.runner import get

        get(args.name)  # an unknown name is refused before the output folder is made
        prepare_run_dir(out, overwrite=args.overwrite, resumable=False)
        diagnose_one(args.name, out, quick=args.quick, seeds=args.seeds)
        if args.docs:
            for path in write_diagnosis_docs(out, Path(args.docs)):
                print(f"docs: {path}")
        return 0
    prepare_run_dir(out, overwrite=args.overwrite, resumable=False)
    if args.all:
        run_all(out, quick=args.quick, seeds=args.seeds, family=args.family, jobs=args.jobs)
    else:
        run_one(args.name, out, quick=args.quick, seeds=args.seeds)
    if args.docs:
        for path in write_docs(out, Path(args.docs)):
            print(f"docs: {path}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .runner import prepare_run_dir

    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "suite.py").is_file():
        raise ConfigError(
            f"The benchmark suite lives in the source tree's benchmarks/ folder, which is not next to this "
            f"installation ({root}). Run 'distillery bench' from a clone installed with 'pip install -e .'."
        )
    sys.path.insert(0, str(root))
    from benchmarks.suite import run_suite, write_docs

    out = prepare_run_dir(Path(args.out), overwrite=args.overwrite, resumable=False)
    report = run_suite(out, quick=args.quick)
    print(f"bench: {out / 'bench.json'}")
    if args.docs:
        write_docs(report, Path(args.docs))
        print(f"docs: {args.docs}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description="Knowledge distillation and self-distillation for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train from a YAML config")
    p.add_argument("config", help="a YAML config file, or the name of a bundled config such as kd_mnist1d (see 'distillery list')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=3 (repeatable)")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("validate", help="check a config without training: build data and models, run one batch, print shapes")
    p.add_argument("config", help="a YAML config file, or the name of a bundled config such as kd_mnist1d (see 'distillery list')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. data.batch_size=8 (repeatable)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("demo", help="MNIST-1D: teacher, then CE / KD / KD+unlabeled students over 3 seeds")
    p.add_argument("--quick", action="store_true", help="a short version (about a minute) for a smoke check")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per student (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo directory")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("list", help="list teachers, objectives, weightings, datasets, views, models, recipes and bundled configs")
    p.add_argument("--params", nargs="?", const="", metavar="NAME",
                   help="show the parameters (type, default, meaning) of every dataset, view and model, or of NAME only")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("reproduce", help="run a paper's miniature reproduction and judge its claims")
    p.add_argument("name", nargs="?", help="reproduction name (see --list)")
    p.add_argument("--list", action="store_true", help="list the reproductions")
    p.add_argument("--all", action="store_true", help="run every reproduction (of --family)")
    p.add_argument("--family", help="with --all: self_distillation, multi_teacher_feature_contrastive, generative, sequence or streaming")
    p.add_argument("--quick", action="store_true", help="smaller, faster version of each experiment")
    p.add_argument("--jobs", type=int, default=1, help="with --all: reproductions run at once, one process each "
                                                       "(default 1; 2 on a 2-core machine halves the time)")
    p.add_argument("--seeds", type=int, help="seeds per compared setting (default: the reproduction's, usually 3)")
    p.add_argument("--diagnose", action="store_true",
                   help="instead of the claims, measure why they hold or not: premise (teacher vs student alone), "
                        "power, and the claim's difference at larger sizes (writes diagnosis.json and scale.png)")
    p.add_argument("--out", help="output directory (default: runs/reproduce/<name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--docs", help="after running, update the results of the method pages and the index in this docs folder")
    p.set_defaults(func=_cmd_reproduce)

    from .cache.cli import add_cache_parser

    add_cache_parser(sub)

    p = sub.add_parser("bench", help="speed and memory ratios measured side by side (benchmarks/)")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    p.add_argument("--out", default="runs/bench", help="output directory for bench.json (default: runs/bench)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--docs", metavar="FILE", help="also write the table into FILE's generated block (BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("sample", help="sample a trained generative run (samples.safetensors, samples.png) or stream "
                                     "a streaming run (film strip PNG and GIF)")
    p.add_argument("run_dir", help="the run directory of a generative or streaming run")
    p.add_argument("--steps", type=int, required=True, help="sampling steps (network evaluations per sample for one-step solvers)")
    p.add_argument("--num", type=int, default=1000, help="number of samples (default 1000; streaming runs: 8 videos)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0)")
    p.add_argument("--out", help="output folder (default: <run_dir>/sample_steps<N>)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (class-conditional runs)")
    p.add_argument("--chunks", type=int, help="streaming runs: chunks to stream (default: the run's eval.chunks)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("generate", help="complete a prompt with the student of a trained sequence run")
    p.add_argument("run_dir", help="the run directory of a sequence run")
    p.add_argument("--prompt", required=True, help="the prompt text (<bos> is added as in training)")
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate at most (default: the run's eval/train setting)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("report", help="write report.md with plots for a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_report)
    return parser


_ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT}


def _os_error_message(exc: OSError) -> str:
    """One paragraph for a file-system error met while running a command (a full disk, a
    read-only or forbidden folder, a file where a folder belongs)."""
    where = f" ({exc.filename})" if exc.filename else ""
    advice = {
        errno.ENOSPC: "The disk is full. Free some space; a run can be continued with --resume from its last checkpoint, which is kept.",
        errno.EDQUOT: "The disk quota is exhausted. Free some space; a run can be continued with --resume from its last checkpoint, which is kept.",
        errno.ENOTDIR: "A path that must be a folder is a file: check --out and the paths in the config.",
        errno.EISDIR: "A path that must be a file is a folder: check the paths given.",
    }.get(exc.errno, "Check the path and its permissions.")
    return f"{exc.strerror or exc}{where}. {advice}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ok = False
    try:
        code = int(args.func(args) or 0)
        ok = True
        return code
    except DistilleryError as exc:
        message = " ".join(str(exc).split())
        print(textwrap.fill(f"error: {message}", width=100), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRORS:
            raise
        print(textwrap.fill(f"error: {_os_error_message(exc)}", width=100), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a run can be continued with --resume from its last checkpoint", file=sys.stderr)
        return 130
    finally:
        from .engine import distributed as D

        D.shutdown(synchronize=ok)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
