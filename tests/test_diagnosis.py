"""The diagnosis of a reproduction (premise, power, scale): derived figures against hand
computation, the plot and page block written, the CLI's refusals."""

from __future__ import annotations

import json
import math

import pytest

from distillery.errors import ConfigError
from distillery.reproduce import Reproduction, runner
from distillery.reproduce.diagnosis import Diagnosis, PaperEffect, ScalePoint, derive, gap, markdown


def _diagnosis(higher: bool = True) -> Diagnosis:
    return Diagnosis(
        metric="accuracy", higher=higher, size_name="examples per class",
        points=[ScalePoint("50", 50, {"teacher": [0.9], "alone": [0.70, 0.72, 0.74], "kd": [0.69, 0.70, 0.71]}),
                ScalePoint("100", 100, {"teacher": [0.92], "alone": [0.80, 0.80, 0.80], "kd": [0.85, 0.86, 0.87]}),
                ScalePoint("200", 200, {"teacher": [0.93], "alone": [0.91, 0.92, 0.93], "kd": [0.95, 0.95, 0.95]})],
        comparisons=[("kd", "alone")], premise=("teacher", "alone"), min_room=0.05,
        paper_effects=[PaperEffect(1, "+2.0 points on the benchmark", 0.02)], checks=["the loss matches eq. 3 (test_x)"])


def test_gap_matches_hand_computation():
    g = gap([0.85, 0.86, 0.87], [0.80, 0.81, 0.79], higher=True)
    sa, sb = 0.01, 0.01  # sample standard deviations
    assert g["difference"] == pytest.approx(0.06)
    assert g["standard_error"] == pytest.approx(math.sqrt(sa**2 / 3 + sb**2 / 3))
    assert g["per_seed"] == pytest.approx([0.05, 0.05, 0.08])
    lower = gap([1.0, 2.0], [3.0, 3.0], higher=False)
    assert lower["difference"] == pytest.approx(1.5)
    one = gap([0.9], [0.7, 0.8], higher=True)  # a teacher trained once adds no spread
    assert one["standard_error"] == pytest.approx(math.sqrt(0.005 / 2)) and "per_seed" not in one


def test_derive_premise_signs_and_trend():
    d = derive(_diagnosis())
    # premise: 0.9 - 0.72 = 0.18 held; 0.92 - 0.80 = 0.12 held; 0.93 - 0.92 = 0.01 < min_room 0.05
    assert [r["held"] for r in d["premise"]] == [True, True, False]
    assert d["premise_held_at"] == ["50", "100"]
    c = d["comparisons"][0]
    assert [r["difference"] for r in c["per_size"]] == pytest.approx([-0.02, 0.06, 0.03])
    assert c["signs"] == [-1, 1, 1] and c["sign_changes"]
    # least-squares slope per doubling of x = log2(size): x = 0, 1, 2 around their mean
    assert c["trend"] == pytest.approx(((-1) * -0.02 + 1 * 0.03) / 2)


def test_unresolved_sign_is_zero_and_not_a_change():
    d = _diagnosis()
    d.points[0].arms["kd"] = [0.70, 0.74, 0.72]  # equal to alone: unresolved
    c = derive(d)["comparisons"][0]
    assert c["signs"][0] == 0 and not c["sign_changes"]


def test_missing_arm_is_refused():
    with pytest.raises(ValueError, match="no arm 'kd'"):
        Diagnosis(metric="m", higher=True, size_name="n", points=[ScalePoint("1", 1, {"teacher": [1.0], "alone": [0.0, 1.0]})],
                  comparisons=[("kd", "alone")], premise=("teacher", "alone"))


def test_markdown_has_premise_power_scale_and_checks():
    result = {"command": "distillery reproduce x --diagnose", "machine": "m", "date": "d", "wall_s": 1.0, **_diagnosis().to_json()}
    claims = [{"claim": "KD helps", "held": False, "minimum_detectable_difference": {"threshold": 0.01, "at_80_percent": 0.018, "seeds": [3, 3]}}]
    text = markdown(result, claims, "img/x_scale.png")
    assert "| 200 | +0.01 |" in text and "**not held**" in text
    assert "| 1. KD helps | not held | 0.01 | 0.018 (seeds [3, 3]) | +2.0 points on the benchmark (here 0.02) |" in text
    assert "the sign changes with scale" in text and "![difference against size](img/x_scale.png)" in text
    assert "- the loss matches eq. 3 (test_x)" in text


def test_diagnose_one_writes_json_plot_and_page(tmp_path, monkeypatch):
    rep = Reproduction(name="toy", paper="P 2024", method="Toy", family="self_distillation", summary="s",
                       run=lambda ctx: [], diagnose=lambda ctx: _diagnosis())
    monkeypatch.setattr(runner, "get", lambda name: rep)
    result = runner.diagnose_one("toy", tmp_path / "out", seeds=3, log=lambda _: None)
    assert result["command"] == "distillery reproduce toy --seeds 3 --diagnose"
    saved = json.loads((tmp_path / "out" / "diagnosis.json").read_text())
    assert saved["derived"]["comparisons"][0]["signs"] == [-1, 1, 1]
    assert (tmp_path / "out" / "scale.png").stat().st_size > 1000
    docs = tmp_path / "docs"
    (docs / "methods").mkdir(parents=True)
    (docs / "methods" / "toy.md").write_text("# Toy\n\nprose stays\n")
    runner.write_diagnosis_docs(tmp_path / "out", docs)
    page = (docs / "methods" / "toy.md").read_text()
    assert "prose stays" in page and "## Diagnosis" in page and (docs / "methods" / "img" / "toy_scale.png").is_file()
    runner.write_diagnosis_docs(tmp_path / "out", docs)  # a second write replaces the block
    assert (docs / "methods" / "toy.md").read_text().count("diagnosis:begin") == 1
    claims = tmp_path / "claims.json"  # the power table reads the claims file it is given
    claims.write_text(json.dumps({"claims": [{"claim": "KD helps", "held": True, "minimum_detectable_difference":
                                              {"threshold": 0.02, "at_80_percent": 0.031, "seeds": [5, 5]}}]}))
    runner.write_diagnosis_docs(tmp_path / "out", docs, claims=claims)
    assert "| 1. KD helps | held | 0.02 | 0.031 (seeds [5, 5]) |" in (docs / "methods" / "toy.md").read_text()


def test_diagnose_refuses_one_seed_and_methods_without_diagnosis(tmp_path, monkeypatch):
    rep = Reproduction(name="toy", paper="P", method="Toy", family="self_distillation", summary="s", run=lambda ctx: [],
                       diagnose=lambda ctx: _diagnosis())
    monkeypatch.setattr(runner, "get", lambda name: rep)
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        runner.diagnose_one("toy", tmp_path, seeds=1)
    bare = Reproduction(name="bare", paper="P", method="Bare", family="self_distillation", summary="s", run=lambda ctx: [])
    monkeypatch.setattr(runner, "get", lambda name: bare)
    with pytest.raises(ConfigError, match="has no diagnosis"):
        runner.diagnose_one("bare", tmp_path)


def test_cli_refuses_diagnose_with_all(tmp_path, capsys):
    from distillery.cli import main

    assert main(["reproduce", "--all", "--diagnose", "--out", str(tmp_path / "o")]) == 2
    assert "--diagnose takes one reproduction NAME" in capsys.readouterr().err
