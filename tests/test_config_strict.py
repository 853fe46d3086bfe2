"""Configs that must be refused with a named error, never a traceback or a silent coercion
(issue 10, "Configs that should be refused")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytest

from distillery.config.signatures import check_params, type_problem
from distillery.errors import ConfigError


# -- component parameters are checked against their annotations ------------------------------
@pytest.mark.parametrize(
    "value, ann",
    [(2, float), (2.5, float), (3, int), (True, bool), ("a", str), (None, float | None), ([1, 2], list[int]),
     ([1, 2], Sequence[int]), ((1, 2), tuple[int, int]), ([1.0, 2], tuple[float, ...]), ({"a": 1.0}, dict[str, float]),
     ("sum", Literal["sum", "mean"]), (3, int | Sequence[int]), ([3, 4], int | Sequence[int])],
)
def test_values_that_fit_their_annotation_pass(value, ann):
    assert type_problem(value, ann) is None


@pytest.mark.parametrize(
    "value, ann, words",
    [({"value": 2}, float, "expects a number"), ("1e-3", float, "expects a number"), (True, float, "expects a number"),
     (True, int, "expects an integer"), (2.0, int, "expects an integer"), ("#6", Sequence[int], "expects a list"),
     ("#6", int | Sequence[int], "expects"), ([1, "x"], list[int], "item 1"), ([1, 2, 3], tuple[int, int], "2 items"),
     ("max", Literal["sum", "mean"], "one of"), (1, str, "expects a string"), ([1], dict[str, float], "mapping")],
)
def test_values_that_do_not_fit_are_named(value, ann, words):
    problem = type_problem(value, ann)
    assert problem is not None and words in problem


def test_check_params_names_the_parameter_and_the_component():
    def factory(hidden: Sequence[int] = (64,), temperature: float = 1.0, name: str | None = None):
        return None

    check_params(factory, {"hidden": [8, 8], "temperature": 2, "name": None}, "model 'm'")
    with pytest.raises(ConfigError, match=r"Parameter 'hidden' of model 'm': expects a list, got '#6'"):
        check_params(factory, {"hidden": "#6"}, "model 'm'")
    with pytest.raises(ConfigError, match=r"Parameter 'temperature' of model 'm': expects a number, got \{'value': 2\}"):
        check_params(factory, {"temperature": {"value": 2}}, "model 'm'")


def test_string_annotations_of_postponed_evaluation_are_understood():
    from distillery.objectives import SoftTargetKD

    with pytest.raises(ConfigError, match="temperature"):
        check_params(SoftTargetKD, {"temperature": {"value": 2}}, "objective 'kd'")
    with pytest.raises(ConfigError, match="temperature"):
        check_params(SoftTargetKD, {"temperature": "2"}, "objective 'kd'")


@pytest.mark.parametrize("spec", [[{"name": 0.3}], [{"name": ["noise"]}], [{"name": None}]])
def test_a_view_named_by_something_other_than_a_string_is_refused(spec):
    from distillery.data.views import build_view

    with pytest.raises(ConfigError, match="is named by a string"):
        build_view(spec)


# -- the schema: nothing coerced, bounds that say why (brief H8) ----------------------------
from helpers_config import BASE  # noqa: E402
from helpers_config import parse as _parse  # noqa: E402
from helpers_config import refusal as _refused  # noqa: E402


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.optimizer.lr='1e-3'", "train.optimizer.lr: Input should be a valid number (got '1e-3'); a number in quotes is a string"),
        ("train.optimizer.lr=true", "train.optimizer.lr: Input should be a valid number (got True)"),
        ("train.epochs=true", "train.epochs: Input should be a valid integer (got True)"),
        ("train.epochs=2.0", "train.epochs: Input should be a valid integer (got 2.0)"),
        ("train.epochs='3'", "train.epochs: Input should be a valid integer (got '3')"),
        ("data.batch_size=1e8", "data.batch_size: Input should be a valid integer (got 100000000.0)"),
        ("train.tensorboard=1", "train.tensorboard: Input should be a valid boolean (got 1)"),
        ("train.progress='false'", "train.progress: Input should be a valid boolean (got 'false')"),
        ("student.name=3", "student.name: Input should be a valid string (got 3)"),
        ("teacher.momentum='0.9'", "teacher.momentum: Input should be a valid number"),
        ("objectives.1.weight='0.5'", "objectives.1.weight: Input should be a valid number (got '0.5')"),
        ("train.optimizer.betas=['0.9', 0.99]", "train.optimizer.betas.0: Input should be a valid number"),
        ("train.scheduler.milestones=[1.5]", "train.scheduler.milestones.0: Input should be a valid integer (got 1.5)"),
    ],
)
def test_no_value_is_coerced_across_types(override, words):
    assert words in _refused([override])


def test_lists_still_fill_tuples_and_ints_fill_floats():
    from distillery.config import parse_config

    cfg = _parse(["train.optimizer.betas=[0.5, 0.9]", "train.optimizer.lr=1", "objectives.1.weight=2", "train.clip_grad_norm=5"])
    assert cfg.train.optimizer.betas == (0.5, 0.9) and cfg.train.optimizer.lr == 1.0 and isinstance(cfg.train.optimizer.lr, float)
    assert cfg.objectives[1].weight == 2.0 and cfg.train.clip_grad_norm == 5.0
    tta = {"kind": "tta_dense", "model": {"name": "vit", "checkpoint": "t.safetensors"}, "patch": [4, 2]}
    assert parse_config(dict(BASE, teacher=tta)).teacher.patch == (4, 2)


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("5E+4", 5e4), ("2.5e3", 2500.0), ("-1e-2", -0.01), (".5e1", 5.0), ("'1e-3'", "1e-3"), ("1.5", 1.5), ("3", 3)])
def test_yaml_reads_exponent_numbers_as_numbers(text, value):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1); configs read it as YAML 1.2 does."""
    from distillery.config import apply_overrides
    from distillery.config.schema import read_yaml

    assert read_yaml(text) == value and type(read_yaml(text)) is type(value)
    assert apply_overrides(BASE, [f"train.optimizer.lr={text}"])["train"]["optimizer"]["lr"] == value
    assert _parse(["train.optimizer.lr=1e-3"]).train.optimizer.lr == 1e-3


def test_a_config_file_with_exponent_numbers_loads(tmp_path):
    from distillery.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("student: {name: mlp}\nobjectives: [{kind: ce}]\ntrain: {optimizer: {lr: 3e-4, weight_decay: 1e-2}}\n")
    cfg = load_config(path)
    assert cfg.train.optimizer.lr == 3e-4 and cfg.train.optimizer.weight_decay == 1e-2


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.optimizer.lr=1e30", "train.optimizer.lr: must be in (0, 10], got 1e+30: a step that large diverges"),
        ("train.optimizer.lr=11", "must be in (0, 10]"),
        ("train.optimizer.lr=.inf", "train.optimizer.lr: Input should be a finite number (got inf)"),
        ("train.optimizer.lr=.nan", "train.optimizer.lr: Input should be a finite number (got nan)"),
        ("train.optimizer.lr=0", "train.optimizer.lr: Input should be greater than 0 (got 0)"),
        ("train.optimizer.weight_decay=-0.1", "train.optimizer.weight_decay: Input should be greater than or equal to 0"),
        ("train.optimizer.weight_decay=.inf", "train.optimizer.weight_decay: Input should be a finite number"),
        ("train.optimizer.betas=[1, 1]", "train.optimizer.betas.0: Input should be less than 1 (got 1)"),
        ("train.optimizer.betas=[0.9, -0.1]", "train.optimizer.betas.1: Input should be greater than or equal to 0"),
        ("train.optimizer.momentum=1", "train.optimizer.momentum: Input should be less than 1 (got 1)"),
        ("train.scheduler.min_lr_ratio=1", "train.scheduler.min_lr_ratio: Input should be less than 1 (got 1)"),
        ("train.scheduler.gamma=.nan", "train.scheduler.gamma: Input should be a finite number"),
        ("data.batch_size=100000000", "data.batch_size: at most 1048576 (2**20) samples per batch, got 100000000"),
        ("data.eval_batch_size=1048577", "data.eval_batch_size: at most 1048576 (2**20) samples per batch"),
        ("teacher={kind: frozen, model: {name: mlp}, fit: {batch_size: 2000000}}", "teacher.fit.batch_size: at most 1048576"),
        ("train.epochs=1000001", "train.epochs: Input should be less than or equal to 1000000"),
        ("train.clip_grad_norm=.inf", "train.clip_grad_norm: Input should be a finite number"),
        ("teacher.momentum=.nan", "teacher.momentum: Input should be a finite number"),
        ("data.num_workers=100000", "data.num_workers: Input should be less than or equal to 1024"),
        ("seed=18446744073709551616", "seed: Input should be less than 18446744073709551616"),
        ("data.student_view={key: ''}", "data.student_view.key: String should have at least 1 character"),
        ("weighting={gradnorm: {task: ce, ratios: {kd: 1}, min_weight: 5, max_weight: 1}}", "min_weight (5) is larger than max_weight (1)"),
    ],
)
def test_values_out_of_range_are_refused(override, words):
    assert words in _refused([override])


def test_the_largest_allowed_values_pass():
    cfg = _parse(["train.optimizer.lr=10", "data.batch_size=1048576", "train.epochs=1000000", "train.scheduler.min_lr_ratio=0.99",
                  "train.optimizer.betas=[0, 0.999]", "seed=-1"])
    assert cfg.data.batch_size == 2**20 and cfg.train.optimizer.lr == 10.0


@pytest.mark.parametrize(
    "override, words",
    [
        ("objectives.1.weight=-1", "objectives.1.weight: a term's weight must be >= 0, got -1.0: a negative weight would maximise the term"),
        ("objectives.1.weight={kind: constant, value: -0.5}", "objectives.1.weight.value: a term's weight must be >= 0"),
        ("objectives.1.weight={kind: linear_warmup, start: -1, value: 1, warmup_steps: 10}", "objectives.1.weight.start: a term's weight must be >= 0"),
        ("objectives.1.weight={kind: cosine, start: 1, end: -1, total_steps: 10}", "objectives.1.weight.end: a term's weight must be >= 0"),
        ("objectives.1.weight={kind: step, milestones: [5], gamma: -1}", "objectives.1.weight.gamma: Input should be greater than or equal to 0"),
        ("objectives.1.weight={kind: step, milestones: [1, 2, 3], gamma: 1e200}", "objectives.1.weight: value * gamma ** 3 (after the last milestone) is not a finite number"),
        ("objectives.1.weight=.nan", "objectives.1.weight: Input should be a finite number"),
        ("objectives.1.mix={alpha: {kind: linear_warmup, start: 0, value: 2, warmup_steps: 5}}", "the schedule of a mixing coefficient must stay in [0, 1], but it spans [0, 2]"),
        ("teacher={kind: bank, members: [{kind: ema}, {kind: snapshot}], weights: [0, 0]}", "at least one must be positive"),
    ],
)
def test_negative_or_non_finite_weights_are_refused(override, words):
    msg = _refused([override])
    assert words in msg
    assert "valid dictionary" not in msg  # the mapping branch of "number | schedule" is not repeated


@pytest.mark.parametrize(
    "overrides",
    [
        ["objectives.0.weight=0", "objectives.1.weight=0"],
        ["objectives.0.weight=0.0", "objectives.1.weight={kind: constant, value: 0}"],
        ["objectives.0.weight={kind: linear_warmup, start: 0, value: 0, warmup_steps: 9}", "objectives.1.weight={kind: cosine, start: 0, end: 0, total_steps: 5}"],
        ["objectives.0.weight={kind: step, value: 1, milestones: [0], gamma: 0}", "objectives.1.weight=0"],
    ],
)
def test_terms_that_are_all_zero_at_every_step_are_refused(overrides):
    assert "objectives: every term's weight is 0 at every step (ce, kd), so nothing would be trained" in _refused(overrides)


def test_a_zero_weight_beside_a_positive_or_rising_one_trains():
    _parse(["objectives.0.weight=0"])
    _parse(["objectives.0.weight=0", "objectives.1.weight={kind: linear_warmup, start: 0, value: 1, warmup_steps: 10}"])
    _parse(["objectives.0.weight=0", "objectives.1.weight={kind: step, value: 0.5, milestones: [3], gamma: 0}"])


def test_a_fitted_teacher_whose_terms_are_all_zero_is_refused():
    msg = _refused(["teacher={kind: frozen, model: {name: mlp}, fit: {objectives: [{kind: ce, weight: 0}]}}"])
    assert "teacher.fit.objectives: every term's weight is 0 at every step (ce)" in msg


# -- devices ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_the_allowed_device_forms_validate(device):
    assert _parse([f"train.device={device}"]).train.device == device


@pytest.mark.parametrize("device, words", [("bogus", "unknown device 'bogus'"), ("meta", "'meta' holds no data"), ("cuda:x", "unknown device"),
                                           ("CPU", "unknown device"), ("3", "Input should be a valid string")])
def test_other_devices_are_refused_with_the_allowed_forms(device, words):
    msg = _refused([f"train.device={device}"])
    assert f"train.device: {words}" in msg
    if words != "Input should be a valid string":
        assert "auto, cpu, cuda, cuda:N (N a GPU number, e.g. cuda:0) or mps" in msg


def test_resolve_device_names_a_device_this_machine_lacks():
    import torch

    from distillery.engine.trainer import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device: unknown device 'bogus'"):
        resolve_device("bogus")
    with pytest.raises(ConfigError, match="'meta' holds no data"):
        resolve_device("meta")
    with pytest.raises(ConfigError, match=r"train.device is 'cuda:99' but (CUDA is not available|this machine has \d+ CUDA device)"):
        resolve_device("cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available here"):
            resolve_device("cuda")
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        with pytest.raises(ConfigError, match="MPS"):
            resolve_device("mps")


# -- models too large to build ---------------------------------------------------------------
def _model(name: str, **params):
    from distillery.config import ModelCfg
    from distillery.engine.build import build_model

    return build_model(ModelCfg(name=name, params=params), (40,), 10, "student")


def test_a_model_too_large_for_memory_is_refused_before_it_is_allocated():
    with pytest.raises(ConfigError, match=r"student: model 'mlp' with params \{'hidden': \[100000000000\]\} would have 5,100,000,000,010 parameters"):
        _model("mlp", hidden=[100_000_000_000])


def test_impossible_sizes_are_named():
    with pytest.raises(ConfigError, match="params.hidden.0 is 9223372036854775808, which does not fit a 64-bit integer"):
        _model("mlp", hidden=[2**63])
    with pytest.raises(ConfigError, match="student: .*channels"):
        _model("cnn1d", channels=[-3])


def test_an_import_path_model_that_cannot_be_allocated_is_a_config_error():
    """User code is not built twice to count its parameters; the failed allocation is named."""
    with pytest.raises(ConfigError, match=r"student: model 'torch.nn:Linear' .* cannot be built: RuntimeError: .*allocate"):
        _model("torch.nn:Linear", in_features=10**6, out_features=10**8)


@pytest.mark.parametrize("name, params", [("mlp", {"hidden": [32, 16]}), ("cnn1d", {"channels": [8, 16]})])
def test_counting_parameters_first_leaves_the_seeded_weights_and_generators_unchanged(name, params):
    import random

    import numpy as np
    import torch

    from distillery.engine.trainer import seed_everything
    from distillery.models import build_model as plain_build

    seed_everything(3)
    expected = plain_build(name, (40,), 10, **params).state_dict()
    after = (random.random(), np.random.rand(), torch.rand(1))
    seed_everything(3)
    got = _model(name, **params).state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert (random.random(), np.random.rand(), torch.rand(1)) == after
