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
