"""The run directory shared by the three engines (distillery.engine.rundir) and the config
error messages shared through distillery.config.schema."""

from __future__ import annotations

import json

import pytest
import yaml

from distillery.engine.rundir import (
    RESUMABLE_LOGGING,
    RunStart,
    check_resumed,
    differences,
    read_run_config,
    run_in_dir,
)
from distillery.errors import ConfigError, RunDirError


def _write_config(out, cfg):
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_differences_lists_every_changed_leaf():
    a = {"train": {"steps": 3, "lr": [1, 2]}, "name": "x"}
    b = {"train": {"steps": 4, "lr": [1, 5]}, "seed": 1, "name": "x"}
    assert differences(a, b) == [("train.steps", 3, 4), ("train.lr.1", 2, 5), ("seed", "(absent)", 1)]


def test_check_resumed_allows_listed_keys_and_sections(tmp_path):
    _write_config(tmp_path, {"train": {"steps": 3, "log_every": 1}, "eval": {"steps": [1]}, "seed": 0})
    now = yaml.safe_dump({"train": {"steps": 5, "log_every": 2}, "eval": {"steps": [1, 2]}, "seed": 0})
    changes = check_resumed(tmp_path, now, ("train.steps", *RESUMABLE_LOGGING, "eval"))
    assert sorted(changes) == ["eval.steps: [1] -> [1, 2]", "train.log_every: 1 -> 2", "train.steps: 3 -> 5"]


def test_check_resumed_refuses_other_keys_naming_them(tmp_path):
    _write_config(tmp_path, {"train": {"steps": 3}, "seed": 0})
    with pytest.raises(RunDirError, match=r"seed: 0 in the run, 1 now.*Keys a resume may change: train\.steps"):
        check_resumed(tmp_path, yaml.safe_dump({"train": {"steps": 3}, "seed": 1}), ("train.steps",))


class _Trainer:
    step = 7
    last_checkpoint = "ckpt/step-7"


def test_run_in_dir_removes_a_failed_start(tmp_path):
    out = tmp_path / "run"

    def train(start: RunStart):
        assert (start.out / "config.yaml").read_text() == "a: 1\n"
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_in_dir(out, train, config_text="a: 1\n", resumable=(), failed_json=True)
    assert not out.exists()


def test_run_in_dir_writes_failed_json_next_to_checkpoints(tmp_path):
    out = tmp_path / "run"

    def train(start: RunStart):
        start.trainer = _Trainer()
        (start.out / "checkpoints" / "step-00000007").mkdir(parents=True)
        raise ValueError("late")

    with pytest.raises(ValueError):
        run_in_dir(out, train, config_text="a: 1\n", resumable=(), failed_json=True)
    failed = json.loads((out / "failed.json").read_text())
    assert failed["error"] == "ValueError" and failed["step"] == 7 and failed["last_checkpoint"] == "ckpt/step-7"
    # a resume that succeeds removes the record and returns what the training returns
    assert run_in_dir(out, lambda start: {"ok": True}, config_text="a: 1\n", resumable=(), resume=True,
                      failed_json=True) == {"ok": True}
    assert not (out / "failed.json").exists()


def test_run_in_dir_keeps_an_empty_folder_the_user_made(tmp_path):
    with pytest.raises(RuntimeError):
        run_in_dir(tmp_path, lambda start: (_ for _ in ()).throw(RuntimeError("x")), config_text="a: 1\n", resumable=())
    assert tmp_path.is_dir() and not any(tmp_path.iterdir())


def test_read_run_config_names_the_engine(tmp_path):
    with pytest.raises(RunDirError, match="no config.yaml"):
        read_run_config(tmp_path, "sequence", lambda raw, src: raw)
    _write_config(tmp_path, {"engine": "generative"})
    with pytest.raises(ConfigError, match=r"not a sequence run .*'engine: sequence'\)\.$"):
        read_run_config(tmp_path, "sequence", lambda raw, src: raw)
    assert read_run_config(tmp_path, "generative", lambda raw, src: (raw, src.endswith("config.yaml"))) == (
        {"engine": "generative"}, True)


def test_engine_config_errors_keep_key_names_that_are_teacher_kinds():
    """'privileged' is a classifier teacher kind (a union tag there) and a sequence key: the
    sequence config's messages must keep it in the path and list its section's keys."""
    from distillery.sequence.config import parse_sequence_config

    raw = {"engine": "sequence", "data": {"task": {"name": "addition"}}, "student": {"kind": "tiny_gpt"},
           "teacher": {"privileged": {"prompt": "x", "bogus": 1}}, "train": {"steps": 1}}
    with pytest.raises(ConfigError, match=r"teacher\.privileged\.bogus: unknown key; allowed keys: .*prompt"):
        parse_sequence_config(raw)


def test_engine_config_errors_gain_the_quoted_number_hint():
    from distillery.generative.config import parse_generative_config

    raw = {"engine": "generative", "data": {"dataset": "mixture2d"}, "student": {"denoiser": {"name": "mlp2d"}},
           "method": {"kind": "denoising"}, "train": {"steps": "5"}}
    with pytest.raises(ConfigError, match=r"train\.steps: .*\(got '5'\); a number in quotes is a string"):
        parse_generative_config(raw)
