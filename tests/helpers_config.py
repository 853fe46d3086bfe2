"""A small run config and the message of its refusal, shared by the config tests."""

from __future__ import annotations

import pytest

from distillery.config import apply_overrides, parse_config
from distillery.errors import ConfigError

BASE = {
    "data": {"dataset": "digits"},
    "student": {"name": "mlp"},
    "teacher": {"kind": "ema", "momentum": 0.99},
    "objectives": [{"kind": "ce"}, {"kind": "kd", "params": {"temperature": 2.0}, "weight": 0.5}],
    "train": {"epochs": 2},
}


def parse(overrides: list[str]):
    """:data:`BASE` with ``--set``-style overrides, validated."""
    return parse_config(apply_overrides(BASE, overrides))


def refusal(overrides: list[str]) -> str:
    """The ConfigError message for :data:`BASE` with ``overrides`` (which must be refused)."""
    with pytest.raises(ConfigError) as info:
        parse(overrides)
    return str(info.value)
