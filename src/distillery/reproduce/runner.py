"""Running reproductions, writing ``claims.json``, printing tables, updating the docs."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from ..engine.checkpoint import atomic_write_json, atomic_write_text
from ..errors import ConfigError
from ..evaluation.report import replace_block
from . import FAMILIES, REPRODUCTIONS, Claim, Context, Reproduction, load_all
from ._threads import one_thread

RESULTS_BEGIN = "<!-- results:begin (written by `distillery reproduce --docs`; do not edit by hand) -->"
RESULTS_END = "<!-- results:end -->"


def get(name: str) -> Reproduction:
    load_all()
    return REPRODUCTIONS.get(name)


def _context(rep: Reproduction, out: Path, quick: bool, seeds: int | None, log, *, verb: str, minimum: int) -> Context:
    """The context of one reproduction's run or diagnosis: seeds ``0..n-1`` (``n``: ``seeds`` or
    the reproduction's default, at least ``minimum``), the output folder made, a first log line."""
    n = seeds if seeds is not None else rep.default_seeds
    if n < minimum:
        what = "--seeds" if minimum == 1 else f"--{verb} (a spread)"
        raise ConfigError(f"{what} needs at least {minimum} seed{'s' if minimum > 1 else ''}, got {n}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"{verb} {rep.name}: {rep.method} ({rep.paper}); {n} seed(s){', quick' if quick else ''}")
    return Context(seeds=list(range(n)), quick=quick, out=out, log=log)


def run_one(name: str, out: Path, *, quick: bool = False, seeds: int | None = None, log=print) -> dict[str, Any]:
    """Run reproduction ``name`` into ``out``; returns (and writes) the ``claims.json`` dict."""
    rep = get(name)
    ctx = _context(rep, out, quick, seeds, log, verb="reproduce", minimum=1)
    n, out = len(ctx.seeds), ctx.out
    t0 = time.perf_counter()
    with one_thread():
        claims = rep.run(ctx)
    if not claims or not all(isinstance(c, Claim) for c in claims):
        raise RuntimeError(f"reproduction {name!r} returned no claims")
    result = {
        "name": rep.name,
        "paper": rep.paper,
        "method": rep.method,
        "family": rep.family,
        "claims": [c.to_json() for c in claims],
        "seeds": n,
        "quick": quick,
        "wall_s": time.perf_counter() - t0,
        "command": command_line(rep.name, quick, n),
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
    }
    atomic_write_json(out / "claims.json", result)
    log(format_claims(result))
    return result


def _run_logged(name: str, out: str, quick: bool, seeds: int | None) -> dict[str, Any]:
    """One reproduction in a worker process, its log in ``out/<name>/log.txt``."""
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "log.txt", "w") as f:
        def log(line: str) -> None:
            f.write(line + "\n")
            f.flush()

        return run_one(name, folder, quick=quick, seeds=seeds, log=log)


def run_all(out: Path, *, quick: bool = False, seeds: int | None = None, family: str | None = None, log=print,
            jobs: int = 1) -> list[dict[str, Any]]:
    """Run every reproduction (of one family) into ``out/<name>/``; writes ``out/index.json``.

    ``jobs > 1`` runs that many reproductions at once, each in its own process with one thread
    (a 2-core machine runs a family in about half the time); each one's log goes to
    ``out/<name>/log.txt`` and its claims are printed when it ends. Results are the same as
    one at a time: every reproduction seeds its own runs."""
    load_all()
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"Unknown family {family!r}; choose one of {', '.join(FAMILIES)}.")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a positive number of processes, got {jobs!r}.")
    names = [n for n in REPRODUCTIONS.names() if family is None or REPRODUCTIONS.get(n).family == family]
    results = []
    t0 = time.perf_counter()
    failed: dict[str, str] = {}
    if jobs == 1:
        for name in names:
            try:
                results.append(run_one(name, Path(out) / name, quick=quick, seeds=seeds, log=log))
            except Exception as exc:  # one broken reproduction does not lose the others' results
                failed[name] = f"{type(exc).__name__}: {exc}"
                log(f"reproduce {name} FAILED: {failed[name]}")
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        done: dict[str, dict[str, Any]] = {}
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_logged, name, str(out), quick, seeds): name for name in names}
            for future in as_completed(futures):
                name = futures[future]
                try:
                    done[name] = future.result()
                except Exception as exc:  # one broken reproduction does not lose the others' results
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    log(f"reproduce {name} FAILED: {failed[name]} (its log: {Path(out) / name / 'log.txt'})")
                    continue
                log(format_claims(done[name]))
        results = [done[name] for name in names if name in done]
    atomic_write_json(Path(out) / "index.json", {"results": results, "failed": failed, "wall_s": time.perf_counter() - t0,
                                                  "quick": quick})
    log(format_index(results))
    log(f"total wall time {time.perf_counter() - t0:.0f}s")
    if failed:
        raise ConfigError(f"{len(failed)} reproduction(s) failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items())
                          + f". The others' results are in {Path(out) / 'index.json'}.")
    return results


def command_line(name: str, quick: bool, seeds: int, diagnose: bool = False) -> str:
    return f"distillery reproduce {name} --seeds {seeds}" + (" --diagnose" if diagnose else "") + (" --quick" if quick else "")


def diagnose_one(name: str, out: Path, *, quick: bool = False, seeds: int | None = None, log=print) -> dict[str, Any]:
    """Run reproduction ``name``'s diagnosis (premise, power, scale; :mod:`.diagnosis`) into
    ``out``: writes ``diagnosis.json`` and ``scale.png``; returns the dict written."""
    from .diagnosis import Diagnosis, plot

    rep = get(name)
    if rep.diagnose is None:
        with_one = [n for n in REPRODUCTIONS.names() if REPRODUCTIONS.get(n).diagnose is not None]
        raise ConfigError(f"Reproduction {name!r} has no diagnosis; these have one: {', '.join(with_one) or 'none'}.")
    ctx = _context(rep, out, quick, seeds, log, verb="diagnose", minimum=2)
    n, out = len(ctx.seeds), ctx.out
    t0 = time.perf_counter()
    with one_thread():
        diagnosis = rep.diagnose(ctx)
    if not isinstance(diagnosis, Diagnosis):
        raise RuntimeError(f"diagnosis of {name!r} returned {type(diagnosis).__name__}, not a Diagnosis")
    result = {"name": rep.name, "method": rep.method, "paper": rep.paper, **diagnosis.to_json(), "seeds": n, "quick": quick,
              "wall_s": time.perf_counter() - t0, "command": command_line(rep.name, quick, n, diagnose=True),
              "machine": machine(), "date": datetime.date.today().isoformat()}
    atomic_write_json(out / "diagnosis.json", result)
    plot(result, out / "scale.png", f"{rep.name}: {result['metric']}")
    log(format_diagnosis(result))
    return result


def format_diagnosis(result: dict[str, Any]) -> str:
    """The diagnosis in a few lines: premise per size, each comparison per size."""
    d = result["derived"]
    lines = [f"{result['method']}: diagnosis ({result['metric']}, {'higher' if result['higher'] else 'lower'} is better)"]
    for r in d["premise"]:
        lines.append(f"  premise at {r['size']}: {result['premise'][0]} - {result['premise'][1]} = "
                     f"{r['difference']:+.4g} +- {r['standard_error']:.3g} ({'held' if r['held'] else 'NOT held'})")
    for c in d["comparisons"]:
        for r in c["per_size"]:
            lines.append(f"  {c['a']} - {c['b']} at {r['size']}: {r['difference']:+.4g} +- {r['standard_error']:.3g} (sign {r['sign']:+d})")
        lines.append(f"  {c['a']} - {c['b']}: {'sign changes with scale' if c['sign_changes'] else 'no change of sign'}")
    lines.append(f"wall time: {result['wall_s']:.1f}s")
    return "\n".join(lines)


def write_diagnosis_docs(out: Path, docs_dir: Path, claims: Path | None = None) -> list[Path]:
    """Put ``out/diagnosis.json`` (tables) and ``out/scale.png`` (as
    ``docs/methods/img/<name>_scale.png``) into the method's page, between the diagnosis markers;
    the claims' minimum detectable differences come from the ``claims`` file (a reproduction's
    ``claims.json``) when given, else ``out/claims.json``, else ``docs/results.json``."""
    import shutil

    from .diagnosis import DIAGNOSIS_BEGIN, DIAGNOSIS_END, markdown

    out, docs_dir = Path(out), Path(docs_dir)
    result = json.loads((out / "diagnosis.json").read_text())
    name = result["name"]
    store = docs_dir / "results.json"
    rows = None
    if claims is not None:
        rows = json.loads(Path(claims).read_text())["claims"]
    elif (out / "claims.json").is_file():
        rows = json.loads((out / "claims.json").read_text())["claims"]
    elif store.is_file():
        rows = (json.loads(store.read_text()).get(name) or {}).get("claims")
    image = docs_dir / "methods" / "img" / f"{name}_scale.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "scale.png", image)
    page = docs_dir / "methods" / f"{name}.md"
    text = page.read_text() if page.is_file() else f"# {result['method']}\n\n{result['paper']}\n\n"
    block = markdown(result, rows, f"img/{name}_scale.png")
    text = replace_block(text, DIAGNOSIS_BEGIN, DIAGNOSIS_END, block, heading="## Diagnosis\n\n")
    atomic_write_text(page, text)
    return [page, image]


def machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, torch {_torch_version()}"


def _torch_version() -> str:
    import torch

    return torch.__version__


# -- formatting ------------------------------------------------------------------------------
def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and "mean" in value:
        return f"{value['mean']:.4g} +- {value.get('std', 0.0):.2g} (n={value.get('n')})"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value[:6]) + (", ..." if len(value) > 6 else "") + "]"
    return str(value)


def format_figures(figures: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {_short(v)}" for k, v in figures.items())


def format_detectable(claim: dict[str, Any]) -> str:
    """The minimum detectable difference of a claim's rule, in words (older claims.json: "n/a")."""
    return _detectable_words(claim.get("minimum_detectable_difference"))


def _detectable_words(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    if d.get("at_80_percent") is not None:
        return f"{d['threshold']:.3g} (observed difference needed), {d['at_80_percent']:.3g} (true difference found 80% of the time), seeds {d['seeds']}"
    if d.get("at_80_percent_beyond_threshold") is not None:
        return (f"mean must pass {d['threshold']:.4g}; s.e. of the mean {d['standard_error']:.3g}, a true mean "
                f"{d['at_80_percent_beyond_threshold']:.3g} beyond it passes 80% of the time, seeds {d['seeds']}")
    if d.get("parts"):
        return "every part: " + "; ".join(_detectable_words(p) for p in d["parts"])
    return str(d.get("note", "n/a"))


def format_claims(result: dict[str, Any]) -> str:
    lines = [f"{result['method']} ({result['paper']})", f"{'held':<9} claim"]
    lines.append("-" * 80)
    for c in result["claims"]:
        lines.append(f"{'HELD' if c['held'] else 'NOT HELD':<9} {c['claim']}")
        lines.append(f"{'':<9}   rule: {c['rule']}")
        lines.append(f"{'':<9}   figures: {format_figures(c['figures'])}")
        lines.append(f"{'':<9}   detectable: {format_detectable(c)}")
    lines.append(f"seeds: {result['seeds']}, wall time: {result['wall_s']:.1f}s")
    return "\n".join(lines)


def format_index(results: list[dict[str, Any]]) -> str:
    lines = [f"{'reproduction':<28} {'held':>6}  wall (s)", "-" * 50]
    for r in results:
        held = sum(c["held"] for c in r["claims"])
        lines.append(f"{r['name']:<28} {held:>2}/{len(r['claims']):<3}  {r['wall_s']:8.1f}")
    return "\n".join(lines)


# -- docs --------------------------------------------------------------------------------------
def results_markdown(result: dict[str, Any]) -> str:
    """The generated block of a method's docs page."""
    lines = [
        RESULTS_BEGIN,
        "",
        f"Figures from `{result['command']}` ({result['machine']}, {result['date']}, "
        f"{result['wall_s']:.0f} s). Re-run the command to get them again.",
        "",
        "| claim | held | rule | figures | detectable difference |",
        "|---|---|---|---|---|",
    ]
    for c in result["claims"]:
        cell = format_figures(c["figures"]).replace("|", "/")
        detect = format_detectable(c).replace("|", "/")
        lines.append(f"| {c['claim']} | {'**held**' if c['held'] else '**not held**'} | {c['rule']} | {cell} | {detect} |")
    lines += ["", RESULTS_END]
    return "\n".join(lines)


def write_docs(results_dir: Path, docs_dir: Path, *, index: bool = True) -> list[Path]:
    """Fill the results block of ``docs/methods/<name>.md`` from ``results_dir/<name>/claims.json``
    and (``index``) rewrite ``docs/index.md``'s table and ``docs/results.json`` from every result found."""
    load_all()
    results_dir, docs_dir = Path(results_dir), Path(docs_dir)
    written = []
    found: dict[str, dict[str, Any]] = {}
    for claims in sorted(results_dir.glob("*/claims.json")) + sorted(results_dir.glob("claims.json")):
        result = json.loads(claims.read_text())
        found[result["name"]] = result
        page = docs_dir / "methods" / f"{result['name']}.md"
        text = page.read_text() if page.is_file() else f"# {result['method']}\n\n{result['paper']}\n\n"
        text = replace_block(text, RESULTS_BEGIN, RESULTS_END, results_markdown(result), heading="## Reproduction\n\n")
        atomic_write_text(page, text)
        written.append(page)
    if index:
        written.append(write_index(docs_dir, found))
    return written


def write_index(docs_dir: Path, new: dict[str, dict[str, Any]]) -> Path:
    """``docs/index.md``: one row per reproduction, claims held / not held, links to pages.

    Rows come from the results passed in and, for methods not re-run now, from the state
    recorded in ``docs/results.json`` (itself written here)."""
    store = docs_dir / "results.json"
    known: dict[str, dict[str, Any]] = json.loads(store.read_text()) if store.is_file() else {}
    known.update(new)
    atomic_write_json(store, known)
    lines = [
        "# distillery methods: miniature reproductions",
        "",
        "Each row is a method from the seed papers with its recipe and a miniature experiment that "
        "checks the paper's claim. Claims are judged by rules fixed in the code before the run; a claim "
        "that does not hold at this small scale is reported as not held. Figures on each page come from "
        "the command shown there.",
        "",
    ]
    for family in FAMILIES:
        rows = [r for r in known.values() if r.get("family") == family]
        if not rows:
            continue
        lines += [f"## {family.replace('_', ' ')}", "", "| method | paper | claims | held | command |", "|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: r["name"]):
            claims = "<br>".join(f"{'held' if c['held'] else 'NOT held'}: {c['claim']}" for c in r["claims"])
            held = sum(c["held"] for c in r["claims"])
            lines.append(
                f"| [{r['method']}](methods/{r['name']}.md) | {r['paper']} | {claims} | {held}/{len(r['claims'])} | `{r['command']}` |"
            )
        lines.append("")
    path = docs_dir / "index.md"
    atomic_write_text(path, "\n".join(lines))
    return path
