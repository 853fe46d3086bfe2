"""Miniature reproductions of the seed papers' claims: ``distillery reproduce NAME``.

Each reproduction is a module in this package that registers a :class:`Reproduction`:
the paper, the method, the family, and a ``run(ctx)`` function that trains what it needs
and returns :class:`Claim` objects. Every claim carries the *rule* that judges it, written in
the module before any run (e.g. "mean over >= 3 seeds higher than the baseline's, and the
difference larger than its standard error"); the figures it was judged on go with it. A
claim that does not hold at small scale is reported as not held, with its figures.

A reproduction states only what it compares: the method itself comes from its recipe (the
recipe module's config fragments, e.g. :func:`distillery.recipes.ssld.ssld_config`), and what
every reproduction needs (quick/full settings, the standard ``train`` section, training a
teacher once, the seed x variant grid, loading runs back and probing them) is in
:mod:`distillery.reproduce._common`.

Results are written to ``DIR/claims.json``::

    {"paper": ..., "method": ..., "name": ..., "claims": [{"claim": ..., "rule": ...,
     "held": true/false, "figures": {...}}], "seeds": N, "quick": bool, "wall_s": ...}
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import Registry

REPRODUCTIONS = Registry("reproduction")

FAMILIES = ("self_distillation", "multi_teacher_feature_contrastive", "generative", "sequence", "streaming")


@dataclass
class Claim:
    """One checkable statement of a paper, the rule that judges it, and the outcome.

    ``detectable``: how large an effect the rule could detect at its seed count
    (:func:`detectable_difference`; filled by :func:`better` and :func:`not_worse`), so that
    "not held" can be told apart from "too small to tell"; ``None`` for a rule written by hand
    that did not state it (``claims.json`` then says so)."""

    claim: str
    rule: str
    held: bool
    figures: dict[str, Any] = field(default_factory=dict)
    detectable: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        detectable = self.detectable if self.detectable is not None else {
            "note": "not computed: a rule written by hand (not better/not_worse over seeds)"}
        return {"claim": self.claim, "rule": self.rule, "held": bool(self.held), "figures": _jsonable(self.figures),
                "minimum_detectable_difference": _jsonable(detectable)}


@dataclass
class Context:
    """What a reproduction gets: seeds to use, quick mode, its output folder, a logger."""

    seeds: list[int]
    quick: bool
    out: Path
    log: Callable[[str], None] = print
    device: str = "cpu"

    def path(self, name: str) -> Path:
        """A sub-folder of the output folder for one training run."""
        p = self.out / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def train(self, name: str, raw_config: dict[str, Any]) -> dict[str, Any]:
        """Run a config (a dict in the ``distillery run`` format) into ``out/name``; returns
        its summary. The run directory is an ordinary one (config.yaml, metrics, weights)."""
        from ..config import parse_config
        from ..runner import run

        cfg = parse_config(raw_config, f"{name} config")
        if getattr(cfg, "engine", None) in ("generative", "streaming"):
            from ..generative.run import run_generative
            from ..streaming.run import run_streaming

            execute = run_streaming if cfg.engine == "streaming" else run_generative
            summary = execute(cfg, self.out / name, overwrite=True, report=False)
            keys = ("sliced_wasserstein", "coverage", "digits_fd", "position_error", "flicker", "sync_error",
                    "revisit_consistency")
            shown = "; ".join(f"{n} step(s): " + ", ".join(f"{k} {scores[k]:.4g}" for k in keys if isinstance(scores.get(k), float))
                              for n, scores in summary.get("final", {}).items())
            self.log(f"  {name}: {shown} ({summary['wall_s']:.1f}s)")
            return summary
        if getattr(cfg, "engine", None) == "sequence":
            from ..sequence.run import run_sequence

            summary = run_sequence(cfg, self.out / name, overwrite=True)
            final = summary.get("final") or {}
            shown = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float))
            self.log(f"  {name}: {shown} ({summary['wall_s']:.1f}s)")
            return summary
        summary = run(cfg, self.out / name, overwrite=True, report=False)
        final = summary["final"]
        metric = "R@1" if "accuracy" not in final and "r1" in final else "accuracy"  # dual encoders: retrieval
        self.log(f"  {name}: {metric} {final.get('accuracy', final.get('r1', float('nan'))):.4f} ({summary['wall_s']:.1f}s)")
        return summary


@dataclass(frozen=True)
class Reproduction:
    """A registered miniature experiment."""

    name: str
    paper: str
    method: str
    family: str
    summary: str
    run: Callable[[Context], list[Claim]]
    recipe: str = ""
    default_seeds: int = 3
    doc: str = ""
    #: ``diagnose(ctx) -> diagnosis.Diagnosis``: premise, power and scale of the claims
    #: (``distillery reproduce NAME --diagnose``); ``None`` for reproductions without one
    diagnose: Callable[[Context], Any] | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")


def register(reproduction: Reproduction) -> Reproduction:
    REPRODUCTIONS.register(reproduction.name, reproduction.summary)(reproduction)
    return reproduction


def load_all() -> None:
    """Import every reproduction module of this package (they register themselves)."""
    from ..registry import import_submodules

    import_submodules(__name__, __path__, skip=("runner",))


# -- judging helpers ---------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
        "values": vals,
    }


Z_80 = 0.8416  # the standard normal's 80% quantile: one-sided power 0.8


def detectable_difference(threshold: float, se: float, n: tuple[int, int], *, reference: bool = False) -> dict[str, Any]:
    """How large a true difference a seed-comparison rule detects, at its seed counts ``n``.

    A rule that holds when the observed difference exceeds ``threshold`` (for :func:`better`
    ``max(margin, se)``; for :func:`not_worse` ``-tolerance``) sees the observed difference
    spread around the true one with the standard error ``se`` of the difference
    (``sqrt(s_a^2/n_a + s_b^2/n_b)``, taken as known). It detects a true difference ``delta``
    with probability ``Phi((delta - threshold) / se)``: half the time at ``delta = threshold``,
    80% of the time at ``threshold + 0.84 se`` (``at_80_percent``). With fewer than 2 seeds
    per side the spread is unknown and nothing can be detected (``None``); ``reference``: the
    second side is one fixed value (a teacher trained once), so only the first needs 2 seeds."""
    if (n[0] if reference else min(n)) < 2:
        return {"threshold": None, "at_80_percent": None, "standard_error": None, "seeds": list(n),
                "note": "fewer than 2 seeds per side: the spread is unknown"}
    return {"threshold": float(threshold), "at_80_percent": float(threshold + Z_80 * se), "standard_error": float(se),
            "seeds": list(n)}


def better(
    claim: str,
    a: Sequence[float],
    b: Sequence[float],
    *,
    a_name: str,
    b_name: str,
    higher: bool = True,
    margin: float = 0.0,
    metric: str = "value",
) -> Claim:
    """``a`` beats ``b``: mean difference (in the better direction) > ``margin`` and larger
    than its standard error ``sqrt(s_a^2/n_a + s_b^2/n_b)`` (needs >= 2 seeds each)."""
    sa, sb = mean_std(a), mean_std(b)
    diff = (sa["mean"] - sb["mean"]) * (1 if higher else -1)
    se = math.sqrt((sa["std"] ** 2) / sa["n"] + (sb["std"] ** 2) / sb["n"])
    held = sa["n"] >= 2 and sb["n"] >= 2 and diff > margin and diff > se
    direction = "higher" if higher else "lower"
    rule = (
        f"mean {metric} of {a_name} is {direction} than {b_name}'s by more than {margin:g} and by more "
        "than the standard error of the difference, over >= 2 seeds each"
    )
    return Claim(claim, rule, held, {a_name: sa, b_name: sb, "difference": diff, "standard_error": se, "metric": metric},
                 detectable=detectable_difference(max(margin, se), se, (sa["n"], sb["n"])))


def not_worse(
    claim: str,
    a: Sequence[float],
    b: Sequence[float],
    *,
    a_name: str,
    b_name: str,
    tolerance: float,
    higher: bool = True,
    metric: str = "value",
) -> Claim:
    """``a`` is within ``tolerance`` of ``b`` or better (mean over seeds)."""
    sa, sb = mean_std(a), mean_std(b)
    diff = (sa["mean"] - sb["mean"]) * (1 if higher else -1)
    held = diff >= -tolerance
    rule = f"mean {metric} of {a_name} is at most {tolerance:g} worse than {b_name}'s"
    se = math.sqrt((sa["std"] ** 2) / max(sa["n"], 1) + (sb["std"] ** 2) / max(sb["n"], 1))
    # the rule fails (detects "worse") when the observed deficit exceeds the tolerance: a true
    # deficit of tolerance + 0.84 se is caught 80% of the time
    return Claim(claim, rule, held, {a_name: sa, b_name: sb, "difference": diff, "tolerance": tolerance, "metric": metric},
                 detectable=detectable_difference(tolerance, se, (sa["n"], sb["n"]), reference=sb["n"] == 1))


def within(claim: str, value: float, reference: float, *, tolerance: float, what: str = "value") -> Claim:
    """``|value - reference| <= tolerance`` (closed forms, exact numerics)."""
    err = abs(float(value) - float(reference))
    return Claim(claim, f"|{what} - reference| <= {tolerance:g}", err <= tolerance, {what: float(value), "reference": float(reference), "abs_error": err},
                 detectable={"note": "a deterministic check against a reference (no seed spread)", "tolerance": float(tolerance)})


def exact(claim: str, rule: str, held: bool, figures: dict[str, Any] | None = None, *,
          what: str = "a measured cost or a closed form") -> Claim:
    """A claim judged by a deterministic check (``what``: a parameter or multiply-add count, a
    cache size, a closed form against numerics, a timing ratio): no seed spread, so no minimum
    detectable difference; ``claims.json`` says so."""
    return Claim(claim, rule, bool(held), dict(figures or {}),
                 detectable={"note": f"a deterministic check ({what}): no seed spread to detect against"})


def combined(claim: str, rule: str, parts: Sequence[Claim], figures: dict[str, Any] | None = None) -> Claim:
    """A claim that holds when every one of ``parts`` holds; its minimum detectable difference
    is each part's (``parts`` in ``claims.json``), since every part must be detected."""
    parts = list(parts)
    return Claim(claim, rule, all(p.held for p in parts), dict(figures or {}),
                 detectable={"note": "every part must hold: each part's minimum detectable difference",
                             "parts": [p.detectable if p.detectable is not None else {"note": "not computed"} for p in parts]})


def threshold_on_mean(values: Sequence[float], threshold: float, *, what: str) -> dict[str, Any]:
    """Power of a rule that compares a mean over seeds with a fixed ``threshold`` (no test
    against the spread): the mean's standard error ``s / sqrt(n)`` is the rule's noise, so a true
    mean ``0.84 s.e.`` beyond the threshold passes 80% of the time (``at_80_percent``, as a
    distance past the threshold)."""
    m = mean_std(values)
    if m["n"] < 2:
        return {"note": f"{what}: one value, the spread is unknown", "seeds": [m["n"]]}
    se = m["std"] / math.sqrt(m["n"])
    return {"threshold": float(threshold), "standard_error": se, "at_80_percent_beyond_threshold": Z_80 * se,
            "seeds": [m["n"]], "note": f"{what}: a threshold on the mean over seeds (no test against the spread)"}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj
