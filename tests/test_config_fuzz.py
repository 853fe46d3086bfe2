"""Fuzzing the config: a mutated bundled config either builds or is refused with a named
error (a :class:`~distillery.errors.DistilleryError`), never another exception (issue 10,
"Configs that should be refused").

Each mutation sets one or two keys of ``kd_mnist1d.yaml`` or ``mean_teacher_mnist1d.yaml``
(sections, leaves, list items, component parameters, or a new key) to a value of a wrong
type or range: mappings, lists, strings, booleans, ``null``, zero, negative, huge, NaN and
infinite numbers. The run is then built as ``distillery run`` builds it (data, student,
teacher, objectives, views, optimizer, LR schedule, device) without training; a teacher
that would be fitted first is built but not fitted.

Run as a script to count the outcomes of more mutations (also against another checkout,
with ``PYTHONPATH=OTHER/src``)::

    python tests/test_config_fuzz.py --count 2000 [--configs DIR]
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import traceback
from pathlib import Path
from typing import Any

import pytest

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = ("kd_mnist1d.yaml", "mean_teacher_mnist1d.yaml")
SHRINK = {"mean_teacher_mnist1d.yaml": ["data.params.unlabeled=200"]}
"""Overrides applied before mutating, so that every build stays small and fast."""

MUTATIONS = 300
SEED = 0

WRONG_TYPES: list[Any] = [
    {"value": 2}, {}, [], [1, 2], ["noise"], [{"name": 0.3}], [{"name": ["noise"]}], [{"name": None}],
    "#6", "1e-3", "bogus", "", "true", "meta", "cuda:99", "torch:zeros", True, False, None,
]
"""Values of the wrong type for most keys (and the odd right one)."""

NUMBERS: list[Any] = [
    0, 1, -1, 0.0, 0.5, -0.5, 1.0, 2, 3.5, -3, 1e8, 1e30, -1e30, 10**11, [10**11], 2**63,
    math.nan, math.inf, -math.inf, [1, 1], [1.0, 1.0], [0.5, -0.5], [0.0],
]
"""Zero, negative, huge and non-finite numbers. Huge integers are far beyond any memory (a
model of 10**11 units must be refused before it is allocated, not half-built)."""

SAFE_DATA_VALUES: list[Any] = [v for v in WRONG_TYPES if not isinstance(v, bool)] + [-1, 0.5, math.nan]
"""For the dataset's own parameters: never a large count or a new seed, which would generate
(and cache) a new dataset instead of testing the config."""


# -- mutations -------------------------------------------------------------------------------
def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a raw config: sections, leaves and list items."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        path = (*prefix, key)
        found.append(path)
        found.extend(_paths(child, path))
    return found


def _set(raw: dict[str, Any], path: tuple, value: Any) -> None:
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = copy.deepcopy(value)


def mutate(raw: dict[str, Any], rng: random.Random) -> tuple[dict[str, Any], str]:
    """A copy of ``raw`` with one or two keys set to a bad value; and what was set."""
    raw = copy.deepcopy(raw)
    done = []
    for _ in range(1 if rng.random() < 0.7 else 2):
        paths = _paths(raw)
        if rng.random() < 0.1:  # a key that no section has
            sections = [p for p in paths if isinstance(_get(raw, p), dict)] + [()]
            path = (*rng.choice(sections), "bogus_key")
        else:
            path = rng.choice(paths)
        is_data_param = path[:2] == ("data", "params")
        pool = SAFE_DATA_VALUES if is_data_param else WRONG_TYPES + NUMBERS
        value = rng.choice(pool)
        _set(raw, path, value)
        done.append(f"{'.'.join(map(str, path)) or '<top>'}={value!r}")
    return raw, ", ".join(done)


def _get(raw: Any, path: tuple) -> Any:
    for key in path:
        raw = raw[key]
    return raw


def cases(count: int, seed: int = SEED, config_dir: Path = CONFIG_DIR) -> list[tuple[str, dict[str, Any]]]:
    """``count`` mutated configs, alternating between the two bundled ones."""
    from distillery.config import apply_overrides, load_yaml

    bases = [(name, apply_overrides(load_yaml(config_dir / name), SHRINK.get(name, []))) for name in CONFIGS]
    rng = random.Random(seed)
    out = []
    for i in range(count):
        name, base = bases[i % len(bases)]
        raw, what = mutate(base, rng)
        out.append((f"{name}: {what}", raw))
    return out


# -- building a run without training ---------------------------------------------------------
_DATA: dict[str, Any] = {}


def build(raw: dict[str, Any]) -> None:
    """Validate ``raw`` and build everything ``distillery run`` builds before its first step."""
    from distillery.config import parse_config
    from distillery.engine.build import (
        build_distiller,
        build_model,
        build_teacher,
        build_terms,
        build_view,
        trainer_kwargs,
    )
    from distillery.engine.trainer import (
        build_optimizer,
        build_scheduler,
        resolve_device,
        seed_everything,
    )
    from distillery.errors import ConfigError
    from distillery.runner import load_data

    cfg = parse_config(raw, "fuzzed config")
    key = repr((cfg.data.dataset, sorted(cfg.data.params.items())))
    if key not in _DATA:
        _DATA[key] = load_data(cfg)
    splits = _DATA[key]
    seed_everything(cfg.seed)
    student = build_model(cfg.student, splits.input_shape, splits.num_classes, "student")
    if cfg.data.unlabeled and splits.unlabeled is None:
        raise ConfigError("data.unlabeled is true, but the dataset has no unlabeled samples")

    def optimizer(params: list, train: Any, steps: int) -> None:
        kw = trainer_kwargs(train)
        resolve_device(kw["device"])
        build_scheduler(build_optimizer(params, kw["optimizer"]), kw["scheduler"], steps)

    def fit(model: Any, fit_cfg: Any, where: str) -> Any:  # what fitting a teacher builds first
        if fit_cfg.objectives:
            build_terms(fit_cfg.objectives, where=f"{where}.fit.objectives")
        build_view(fit_cfg.view, f"{where}.fit.view")
        optimizer([p for p in model.parameters() if p.requires_grad], fit_cfg, 100)
        return model

    terms = build_terms(cfg.objectives)
    teacher = None
    if cfg.teacher is not None:
        teacher = build_teacher(cfg.teacher, student, splits.input_shape, splits.num_classes, fit)
    distiller = build_distiller(cfg, student, teacher, terms)
    build_view(cfg.data.eval_view, "data.eval_view")
    optimizer(distiller.trainable_parameters(), cfg.train, 100)


def outcome(raw: dict[str, Any]) -> tuple[str, str]:
    """``("accepted" | "named" | "traceback", detail)`` of building ``raw``."""
    from distillery.errors import DistilleryError

    try:
        build(raw)
    except DistilleryError as exc:
        return "named", str(exc)
    except Exception:  # noqa: BLE001 - anything else is what the fuzzing looks for
        return "traceback", traceback.format_exc(limit=-3)
    return "accepted", ""


# -- the test --------------------------------------------------------------------------------
def test_no_mutated_config_gives_a_traceback():
    results = [(what, *outcome(raw)) for what, raw in cases(MUTATIONS)]
    tracebacks = [f"{what}\n{detail}" for what, kind, detail in results if kind == "traceback"]
    assert not tracebacks, f"{len(tracebacks)} of {len(results)} mutated configs gave a traceback:\n\n" + "\n\n".join(tracebacks[:5])
    kinds = [kind for _, kind, _ in results]
    # the mutations are mostly bad values: most must be refused, and the good ones still build
    assert kinds.count("named") > len(kinds) / 2 and kinds.count("accepted") > 0


@pytest.mark.parametrize("name", CONFIGS)
def test_the_unmutated_configs_build(name):
    from distillery.config import apply_overrides, load_yaml

    raw = apply_overrides(load_yaml(CONFIG_DIR / name), SHRINK.get(name, []))
    assert outcome(raw) == ("accepted", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--configs", type=Path, default=CONFIG_DIR)
    parser.add_argument("--show", type=int, default=20, help="tracebacks and acceptances to print")
    args = parser.parse_args()
    counts = {"named": 0, "traceback": 0, "accepted": 0}
    shown = {"traceback": 0, "accepted": 0}
    for what, raw in cases(args.count, args.seed, args.configs):
        kind, detail = outcome(raw)
        counts[kind] += 1
        if kind in shown and shown[kind] < args.show:
            shown[kind] += 1
            last = detail.strip().splitlines()[-1] if detail else ""
            print(f"[{kind}] {what}  {last}")
    print(counts)


if __name__ == "__main__":
    main()
