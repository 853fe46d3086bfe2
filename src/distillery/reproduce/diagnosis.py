"""Why a claim does not hold: premise, power and scale of a miniature (``distillery reproduce NAME --diagnose``).

A claim that does not hold in miniature is one of four things, and a reproduction with a
``diagnose`` function measures three of them (the fourth, a bug, is a code review and a
mechanism test in ``tests/``, whose findings the diagnosis states in ``checks``):

1. **premise**: the teacher must be clearly better than the student trained without it on the
   measured task, with room between them; otherwise there is nothing to distil. Judged at every
   size: the gap ``teacher - alone`` (in the better direction) must exceed ``min_room`` and its
   standard error.
2. **power**: how large a difference the claim's rule could detect at its seed count (the
   ``minimum_detectable_difference`` of each claim in ``claims.json``, see
   :func:`distillery.reproduce.detectable_difference`), set beside the paper's own effect
   (:class:`PaperEffect`).
3. **scale**: the claim's difference ``a - b`` at two or three larger sizes (data, epochs or
   width: what the paper's claim depends on), with its spread over seeds; does its sign change?

``diagnose(ctx)`` trains what it needs and returns a :class:`Diagnosis` holding only measured
values per seed (:class:`ScalePoint`); everything derived (gaps, standard errors, signs, the
plot) is computed here, so every method's diagnosis is judged the same way. Written to
``DIR/diagnosis.json`` and ``DIR/scale.png``; ``--docs`` puts the tables and the plot into the
method's page between ``<!-- diagnosis:begin -->`` and ``<!-- diagnosis:end -->``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import mean_std

DIAGNOSIS_BEGIN = "<!-- diagnosis:begin (written by `distillery reproduce NAME --diagnose --docs`; do not edit by hand) -->"
DIAGNOSIS_END = "<!-- diagnosis:end -->"


@dataclass
class ScalePoint:
    """One size of the scale study: every arm's measure per seed (seed ``k`` at index ``k`` in
    every arm, so differences can be paired). An arm trained once (a teacher) has one value."""

    label: str
    size: float
    arms: dict[str, list[float]]


@dataclass
class PaperEffect:
    """The paper's figure for one claim (``claim``: its 1-based index in the reproduction), in
    words; ``value``: the same effect in the miniature's metric units when the two compare
    (``None`` when they do not, e.g. KITTI mAP against a classifier's accuracy: ``note`` says why)."""

    claim: int
    effect: str
    value: float | None = None
    note: str = ""


@dataclass
class Diagnosis:
    """What ``diagnose(ctx)`` measured (see the module docstring).

    ``comparisons``: ``(a, b)`` arm pairs whose difference ``a - b`` (in the better direction of
    ``metric``) is the claim's; ``premise``: ``(teacher arm, student-alone arm)``; ``min_room``:
    how large the premise gap must be to leave room for the claim (in metric units);
    ``checks``: what the line-by-line review against the paper and the mechanism tests found
    (name the tests); ``redesigned``: what changed in the miniature and why (empty if nothing)."""

    metric: str
    higher: bool
    size_name: str
    points: list[ScalePoint]
    comparisons: list[tuple[str, str]]
    premise: tuple[str, str]
    min_room: float = 0.0
    paper_effects: list[PaperEffect] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    redesigned: str = ""

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a diagnosis needs at least one size")
        for p in self.points:
            for arm in (*self.premise, *(x for c in self.comparisons for x in c)):
                if arm not in p.arms:
                    raise ValueError(f"size {p.label!r} has no arm {arm!r} (arms: {sorted(p.arms)})")

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "higher": self.higher, "size_name": self.size_name,
            "points": [{"label": p.label, "size": p.size, "arms": {k: [float(v) for v in vs] for k, vs in p.arms.items()}}
                       for p in self.points],
            "comparisons": [list(c) for c in self.comparisons], "premise": list(self.premise), "min_room": self.min_room,
            "paper_effects": [vars(e) for e in self.paper_effects], "checks": list(self.checks), "redesigned": self.redesigned,
            "derived": derive(self),
        }


def gap(a: Sequence[float], b: Sequence[float], higher: bool) -> dict[str, Any]:
    """``mean(a) - mean(b)`` in the better direction, its standard error
    ``sqrt(s_a^2/n_a + s_b^2/n_b)`` (a side with one value adds no spread), and the paired
    per-seed differences when both sides have the same number of values (> 1)."""
    sa, sb = mean_std(a), mean_std(b)
    sign = 1.0 if higher else -1.0
    se = math.sqrt(sa["std"] ** 2 / sa["n"] + sb["std"] ** 2 / sb["n"])
    out: dict[str, Any] = {"difference": sign * (sa["mean"] - sb["mean"]), "standard_error": se, "n": [sa["n"], sb["n"]]}
    if sa["n"] == sb["n"] > 1:
        out["per_seed"] = [sign * (x - y) for x, y in zip(sa["values"], sb["values"])]
    return out


def derive(d: Diagnosis) -> dict[str, Any]:
    """Premise per size, each comparison's difference per size, and its sign over sizes."""
    premise = []
    for p in d.points:
        g = gap(p.arms[d.premise[0]], p.arms[d.premise[1]], d.higher)
        g["held"] = g["difference"] > d.min_room and g["difference"] > g["standard_error"]
        g["size"] = p.label
        premise.append(g)
    comparisons = []
    for a, b in d.comparisons:
        rows = []
        for p in d.points:
            g = gap(p.arms[a], p.arms[b], d.higher)
            g["size"] = p.label
            g["sign"] = _sign(g["difference"], g["standard_error"])
            rows.append(g)
        signs = [r["sign"] for r in rows]
        resolved = [s for s in signs if s != 0]
        comparisons.append({
            "a": a, "b": b, "per_size": rows, "signs": signs,
            "sign_changes": len(set(resolved)) > 1,
            "trend": _trend([p.size for p in d.points], [r["difference"] for r in rows]),
        })
    return {"premise": premise, "premise_held_at": [r["size"] for r in premise if r["held"]], "comparisons": comparisons}


def _sign(diff: float, se: float) -> int:
    """+1 / -1 when the difference is beyond one standard error of zero, else 0 (unresolved)."""
    if diff > se and diff > 0:
        return 1
    if diff < -se and diff < 0:
        return -1
    return 0


def _trend(sizes: Sequence[float], diffs: Sequence[float]) -> float | None:
    """Least-squares slope of the difference per doubling of size (None with < 2 sizes)."""
    if len(sizes) < 2:
        return None
    xs = [math.log2(max(s, 1e-12)) for s in sizes]
    mx, my = sum(xs) / len(xs), sum(diffs) / len(diffs)
    sxx = sum((x - mx) ** 2 for x in xs)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, diffs)) / sxx


# -- plot and markdown -------------------------------------------------------------------------
def plot(d: dict[str, Any], path: Path, title: str) -> Path:
    """Difference against size, mean +- standard error with the per-seed differences as dots,
    one panel per comparison and one for the premise gap; zero drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    derived = d["derived"]
    sizes = [p["size"] for p in d["points"]]
    labels = [p["label"] for p in d["points"]]
    panels = [(f"{c['a']} - {c['b']}", c["per_size"]) for c in derived["comparisons"]]
    panels.append((f"premise: {d['premise'][0]} - {d['premise'][1]}", derived["premise"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels):
        means = [r["difference"] for r in rows]
        ses = [r["standard_error"] for r in rows]
        ax.errorbar(sizes, means, yerr=ses, marker="o", capsize=4, color="C0", label="mean +- s.e.")
        for s, r in zip(sizes, rows):
            if "per_seed" in r:
                ax.scatter([s] * len(r["per_seed"]), r["per_seed"], s=12, color="C1", alpha=0.7, zorder=3)
        ax.axhline(0.0, color="k", lw=0.8)
        if name.startswith("premise") and d["min_room"] > 0:
            ax.axhline(d["min_room"], color="C2", lw=0.8, ls="--", label="room needed")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_xlabel(d["size_name"], fontsize=8)
        ax.set_ylabel(f"difference in {d['metric']}" + ("" if d["higher"] else " (lower is better)"), fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4g}"


def markdown(d: dict[str, Any], claims: list[dict[str, Any]] | None, image: str | None) -> str:
    """The generated diagnosis block of a method page: premise per size, power per claim, the
    scale table and plot, the review's checks. ``claims``: the reproduction's claims (from its
    ``claims.json``) for the minimum detectable differences; ``None`` when not available."""
    derived = d["derived"]
    better = "higher" if d["higher"] else "lower"
    lines = [DIAGNOSIS_BEGIN, "", f"Figures from `{d.get('command', '')}` ({d.get('machine', '')}, {d.get('date', '')}, "
             f"{d.get('wall_s', 0.0):.0f} s); {d['metric']}, {better} is better. Re-run the command to get them again.", ""]
    if d.get("redesigned"):
        lines += [f"**Redesigned miniature.** {d['redesigned']}", ""]
    lines += ["**Premise** (is there something to distil?): the gap "
              f"`{d['premise'][0]} - {d['premise'][1]}` must exceed {d['min_room']:g} and its standard error.", "",
              "| size | gap | s.e. | premise |", "|---|---|---|---|"]
    for r in derived["premise"]:
        lines.append(f"| {r['size']} | {_f(r['difference'])} | {r['standard_error']:.3g} | {'held' if r['held'] else '**not held**'} |")
    lines += ["", "**Power** (how large a difference each rule can detect at its seed count, beside the paper's effect):", "",
              "| claim | held | observed difference needed | true difference found 80% of the time | paper's effect |",
              "|---|---|---|---|---|"]
    effects = {e["claim"]: e for e in d.get("paper_effects", [])}
    for i, c in enumerate(claims or [], start=1):
        m = c.get("minimum_detectable_difference") or {}
        e = effects.get(i)
        paper = "not stated" if e is None else e["effect"] + (f" (here {e['value']:.3g})" if e.get("value") is not None else "") \
            + (f"; {e['note']}" if e.get("note") else "")
        need = "n/a" if m.get("threshold") is None else f"{m['threshold']:.3g}"
        at80 = m.get("note", "n/a") if m.get("at_80_percent") is None else f"{m['at_80_percent']:.3g} (seeds {m.get('seeds')})"
        lines.append(f"| {i}. {c['claim']} | {'held' if c['held'] else 'not held'} | {need} | {at80} | {paper.replace('|', '/')} |")
    if not claims:
        lines.append("| (no claims.json found: run `distillery reproduce NAME --docs` first) | | | | |")
    lines += ["", f"**Scale** ({d['size_name']}): the claim's difference at each size, mean +- standard error over seeds; "
              "sign +1 / -1 when beyond one standard error of zero, 0 when unresolved.", ""]
    header = "| size | " + " | ".join(f"{c['a']} - {c['b']}" for c in derived["comparisons"]) + " |"
    lines += [header, "|---|" + "---|" * len(derived["comparisons"])]
    for k, p in enumerate(d["points"]):
        cells = []
        for c in derived["comparisons"]:
            r = c["per_size"][k]
            cells.append(f"{_f(r['difference'])} +- {r['standard_error']:.3g} (sign {r['sign']:+d})")
        lines.append(f"| {p['label']} | " + " | ".join(cells) + " |")
    for c in derived["comparisons"]:
        slope = "n/a" if c["trend"] is None else f"{c['trend']:+.3g} per doubling"
        lines.append("")
        lines.append(f"`{c['a']} - {c['b']}`: signs over sizes {c['signs']}; "
                     f"{'the sign changes with scale' if c['sign_changes'] else 'no change of sign'}; trend {slope}.")
    if image:
        lines += ["", f"![difference against size]({image})"]
    if d.get("checks"):
        lines += ["", "**Checks against the paper** (code review and mechanism tests):", ""]
        lines += [f"- {c}" for c in d["checks"]]
    lines += ["", DIAGNOSIS_END]
    return "\n".join(lines)
