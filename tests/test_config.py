"""Config validation and overrides: every bad value is named with what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distillery.config import RunConfig, apply_overrides, dump_config, load_config, load_yaml, parse_config
from distillery.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
from helpers_config import BASE  # noqa: E402
from helpers_config import refusal as _error  # noqa: E402


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates_and_round_trips(path):
    cfg = load_config(path)
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_defaults_are_filled_in():
    cfg = parse_config(BASE)
    assert cfg.train.optimizer.name == "adamw" and cfg.train.optimizer.lr == 1e-3
    assert cfg.data.batch_size == 128 and cfg.seed == 0
    assert cfg.teacher.final_momentum is None and cfg.teacher.buffers == "copy"  # a constant momentum (190a618)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epoch=3", "train.epoch: unknown key; allowed keys: checkpoint_every, clip_grad_norm, device, distributed, epochs"),
        ("train.epochs=-3", "train.epochs: Input should be greater than 0 (got -3)"),
        ("train.optimizer.lr=abc", "train.optimizer.lr: Input should be a valid number"),
        ("teacher.momentum=1.5", "teacher.momentum: Input should be less than or equal to 1 (got 1.5)"),
        ("teacher.momentumm=0.9", "teacher.momentumm: unknown key; allowed keys: buffers, final_momentum, kind, momentum, view"),
        ("objectives.1.kind=kdd", "objectives.1.kind: Unknown objective 'kdd'. Did you mean 'kd'"),
        ("train.precision=fp16", "train.precision: Input should be 'fp32' or 'bf16' (got 'fp16')"),
        ("data.batch_size=0", "data.batch_size: Input should be greater than 0 (got 0)"),
        ("objectives.1.weight={kind: linear_warmup, warmup_steps: -1}", "objectives.1.weight.warmup_steps: Input should be greater than or equal to 0"),
        ("teacher.kind=frozenn", "does not match any of the expected tags: 'frozen', 'ema'"),
        ("objectives.0.name=kd", "objective names must be unique, but ['kd'] appear more than once"),
        ("train.optimizer.betas=[0.9, 2]", "train.optimizer.betas.1: Input should be less than 1 (got 2)"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, expected):
    assert expected in _error([override])


def test_union_errors_do_not_repeat_the_number_branch():
    msg = _error(["objectives.1.weight={kind: linear_warmup, warmup_steps: -1}"])
    assert "Input should be a valid number" not in msg


def test_frozen_teacher_needs_weights_or_fit():
    msg = _error(["teacher={kind: frozen, model: {name: cnn2d}}"])
    assert "a frozen teacher needs trained weights" in msg


def test_overrides_parse_yaml_values_and_index_lists():
    raw = apply_overrides(BASE, ["train.epochs=7", "objectives.1.weight=0.25", "data.params={unlabeled: 10}", "teacher=null"])
    assert raw["train"]["epochs"] == 7 and isinstance(raw["train"]["epochs"], int)
    assert raw["objectives"][1]["weight"] == 0.25
    assert raw["data"]["params"] == {"unlabeled": 10}
    assert raw["teacher"] is None
    assert BASE["train"]["epochs"] == 2  # the input is not modified


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs", "--set expects key=value"),
        ("objectives.5.weight=1", "'5' is not an index of a list of 2 items"),
        ("train.epochs.x=1", "train.epochs is a value, not a section"),
    ],
)
def test_bad_overrides(override, expected):
    with pytest.raises(ConfigError, match=pytest.importorskip("re").escape(expected)):
        apply_overrides(BASE, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(scalar)


def test_the_run_config_is_strict_about_top_level_keys():
    raw = dict(BASE, trian={"epochs": 3})
    with pytest.raises(ConfigError, match=r"trian: unknown key; allowed keys: data, name, objectives, seed, student, teacher, train, weighting"):
        parse_config(raw)
    assert isinstance(parse_config(BASE), RunConfig)


def test_every_registered_teacher_section_is_a_teacher_kind_and_names_its_keys():
    """The ``teacher`` union and the tags left out of error paths come from the registry."""
    from distillery.registry import TEACHERS

    kinds = [name for name, _ in TEACHERS.sections()]
    assert kinds[:2] == ["frozen", "ema"] and {"cached", "tta_dense", "bank", "anchored"} <= set(kinds)
    for kind in kinds:
        msg = _error([f"teacher={{kind: {kind}, bogus_key: 1}}"])
        assert "teacher.bogus_key: unknown key; allowed keys: " in msg and f".{kind}." not in msg, msg


def test_a_parsed_config_pickles_and_its_sections_are_named_where_they_are_defined():
    import pickle

    from distillery.config import FrozenTeacherCfg

    cfg = parse_config(apply_overrides(BASE, [
        "teacher={kind: bank, members: [{kind: frozen, model: {name: mlp, checkpoint: t.safetensors}}, {kind: ema}]}",
        "objectives.1.weight={kind: linear_warmup, warmup_steps: 3}",
        "weighting={gam: {task: ce, term: kd, params: layers.0}}",
    ]))
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert f"{FrozenTeacherCfg.__module__}.{FrozenTeacherCfg.__qualname__}" == "distillery.teachers.frozen.FrozenTeacherCfg"


def _shorten(path: Path) -> list[str]:
    """Overrides that make a shipped config run one epoch (teachers fitted for one epoch)."""
    raw = load_yaml(path)
    sets = ["train.epochs=1", "train.tensorboard=false"]
    teacher = raw.get("teacher") or {}
    if "fit" in teacher:
        sets.append("teacher.fit.epochs=1")
    if "fit" in (teacher.get("source") or {}):
        sets.append("teacher.source.fit.epochs=1")
    for key in ("anchor", "current"):  # an anchored teacher's members
        if "fit" in (teacher.get(key) or {}):
            sets.append(f"teacher.{key}.fit.epochs=1")
    for i, member in enumerate(teacher.get("members", [])):
        if "fit" in member:
            sets.append(f"teacher.members.{i}.fit.epochs=1")
    if "unlabeled" in raw.get("data", {}).get("params", {}):
        sets.append("data.params.unlabeled=2000")
    return sets


@pytest.mark.parametrize("path", [p for p in CONFIGS if load_yaml(p).get("engine") not in ("generative", "sequence", "streaming")],
                         ids=lambda p: p.name)
def test_every_shipped_config_runs(path, tmp_path):  # generative, sequence and streaming configs: their own test files
    """Each recipe in configs/ runs as written (shortened to one epoch here)."""
    from distillery.runner import run

    sets = _shorten(path)
    if (load_yaml(path).get("teacher") or {}).get("kind") == "cached":
        # a cached teacher reads a cache that 'distillery cache build CONFIG' makes first
        from distillery.cache import build_cache_from_config

        sets.append(f"teacher.path={tmp_path / 'cache'}")
        build_cache_from_config(load_config(path, sets))
    cfg = load_config(path, sets)
    summary = run(cfg, tmp_path / "run", report=False)
    assert summary["complete"] and summary["steps"] > 0
    final = summary["final"]
    assert 0.0 <= final["accuracy" if "accuracy" in final else "r1"] <= 1.0   # a dual encoder: retrieval R@1
    assert (tmp_path / "run" / "student.safetensors").is_file()
