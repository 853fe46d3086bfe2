"""The reproduction contract: judging rules, claims.json, the CLI, and the docs writer."""

from __future__ import annotations

import json
import math

import pytest

from distillery.cli import main
from distillery.reproduce import (
    REPRODUCTIONS,
    Claim,
    Reproduction,
    better,
    load_all,
    not_worse,
    register,
    within,
)
from distillery.reproduce.runner import RESULTS_BEGIN, RESULTS_END, run_one, write_docs


def test_better_uses_the_standard_error_of_the_difference():
    a, b = [0.80, 0.82, 0.84], [0.70, 0.71, 0.72]
    c = better("a beats b", a, b, a_name="a", b_name="b")
    se = math.sqrt(0.02**2 / 3 + 0.01**2 / 3)  # sample stds 0.02 and 0.01
    assert c.held and c.figures["difference"] == pytest.approx(0.11)
    assert c.figures["standard_error"] == pytest.approx(se)
    # a difference smaller than its standard error does not hold
    noisy = better("a beats b", [0.5, 0.9, 0.7], [0.6, 0.62, 0.64], a_name="a", b_name="b")
    assert not noisy.held and noisy.figures["difference"] == pytest.approx(0.08)
    # lower is better
    assert better("lower", [1.0, 1.1], [2.0, 2.1], a_name="a", b_name="b", higher=False).held
    # one seed cannot establish anything
    assert not better("one seed", [0.9], [0.1], a_name="a", b_name="b").held


def test_not_worse_and_within():
    assert not_worse("x", [0.695, 0.705], [0.71, 0.71], a_name="a", b_name="b", tolerance=0.011).held
    assert not not_worse("x", [0.69, 0.69], [0.71, 0.71], a_name="a", b_name="b", tolerance=0.01).held
    c = within("closed form", 1.0 + 1e-10, 1.0, tolerance=1e-8)
    assert c.held and c.figures["abs_error"] == pytest.approx(1e-10, rel=1e-3)
    assert not within("closed form", 1.1, 1.0, tolerance=1e-8).held


def test_minimum_detectable_difference_of_the_seed_rules():
    """The threshold is max(margin, se); a true difference of threshold + 0.84 se is detected
    80% of the time, which a simulation of the rule (its se held at the true value) confirms."""
    import random

    a, b = [0.80, 0.82, 0.84], [0.70, 0.71, 0.72]
    se = math.sqrt(0.02**2 / 3 + 0.01**2 / 3)
    d = better("a beats b", a, b, a_name="a", b_name="b", margin=0.001).detectable
    assert d["threshold"] == pytest.approx(se) and d["at_80_percent"] == pytest.approx(se * (1 + 0.8416))
    assert d["seeds"] == [3, 3]
    assert better("m", a, b, a_name="a", b_name="b", margin=0.5).detectable["threshold"] == 0.5
    rng, true = random.Random(0), d["at_80_percent"]
    hits = sum(rng.gauss(true, se) > d["threshold"] for _ in range(20000)) / 20000
    assert hits == pytest.approx(0.80, abs=0.01)
    nw = not_worse("x", [0.70, 0.72], [0.71, 0.71], a_name="a", b_name="b", tolerance=0.01).detectable
    assert nw["threshold"] == 0.01 and nw["at_80_percent"] == pytest.approx(0.01 + 0.8416 * math.sqrt(0.0002 / 2))
    assert better("one seed", [0.9], [0.1], a_name="a", b_name="b").detectable["at_80_percent"] is None
    saved = better("a beats b", a, b, a_name="a", b_name="b").to_json()
    assert saved["minimum_detectable_difference"]["at_80_percent"] == pytest.approx(se * 1.8416)
    assert "not computed" in Claim("c", "r", True).to_json()["minimum_detectable_difference"]["note"]


def test_run_all_refuses_a_bad_job_count(tmp_path):
    from distillery.errors import ConfigError
    from distillery.reproduce.runner import run_all

    with pytest.raises(ConfigError, match="--jobs"):
        run_all(tmp_path, family="streaming", jobs=0)


def _fake(ctx):
    ctx.log("fake running")
    return [Claim("seeds are counted", "len(seeds) == 2", len(ctx.seeds) == 2, {"seeds": ctx.seeds, "quick": ctx.quick})]


register(Reproduction(name="_fake_for_tests", paper="Nobody 2026", method="Fake", family="self_distillation",
                      summary="a reproduction used by the tests", run=_fake))


def test_claims_json_has_the_documented_shape(tmp_path):
    result = run_one("_fake_for_tests", tmp_path, quick=True, seeds=2, log=lambda s: None)
    saved = json.loads((tmp_path / "claims.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert {"paper", "method", "claims", "seeds", "wall_s"} <= set(saved)
    assert saved["seeds"] == 2 and saved["quick"] is True
    assert saved["claims"] == [{"claim": "seeds are counted", "rule": "len(seeds) == 2", "held": True,
                                "figures": {"seeds": [0, 1], "quick": True},
                                "minimum_detectable_difference": {
                                    "note": "not computed: a rule written by hand (not better/not_worse over seeds)"}}]
    assert saved["command"] == "distillery reproduce _fake_for_tests --seeds 2 --quick"


def test_docs_block_is_replaced_and_the_index_lists_results(tmp_path):
    run_one("_fake_for_tests", tmp_path / "runs" / "_fake_for_tests", seeds=1, log=lambda s: None)
    docs = tmp_path / "docs"
    (docs / "methods").mkdir(parents=True)
    page = docs / "methods" / "_fake_for_tests.md"
    page.write_text(f"# Fake\n\nmechanism text\n\n{RESULTS_BEGIN}\nold\n{RESULTS_END}\n\nafter\n")
    write_docs(tmp_path / "runs", docs)
    text = page.read_text()
    assert "mechanism text" in text and "after" in text and "\nold\n" not in text
    assert "**not held**" in text  # one seed: the claim above needs two
    assert "distillery reproduce _fake_for_tests --seeds 1" in text
    index = (docs / "index.md").read_text()
    assert "[Fake](methods/_fake_for_tests.md)" in index and "NOT held: seeds are counted" in index


def test_cli_reproduce_list_and_errors(tmp_path, capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    load_all()
    for name in REPRODUCTIONS.names():
        assert name in out
    assert main(["reproduce"]) == 2
    assert "Give a reproduction NAME" in capsys.readouterr().err
    assert main(["reproduce", "no_such_thing", "--out", str(tmp_path / "x")]) == 2
    assert "Unknown reproduction 'no_such_thing'" in capsys.readouterr().err
    assert main(["reproduce", "_fake_for_tests", "--seeds", "2", "--out", str(tmp_path / "f")]) == 0
    assert "HELD" in capsys.readouterr().out
    assert main(["reproduce", "_fake_for_tests", "--out", str(tmp_path / "f")]) == 2  # exists: never overwritten
    assert "already exists" in " ".join(capsys.readouterr().err.split())


# -- the shared parts of the reproductions (reproduce/_common.py) -------------------------------
def test_settings_pick_the_mode_and_need_the_same_keys():
    from distillery.reproduce._common import Settings

    s = Settings(quick={"epochs": 2, "n": 10}, full={"epochs": 20, "n": 100})
    assert s(True) == {"epochs": 2, "n": 10} and s(False) == {"epochs": 20, "n": 100}
    s(True)["epochs"] = 99  # a copy each time
    assert s(True)["epochs"] == 2
    with pytest.raises(ValueError, match="different figures"):
        Settings(quick={"epochs": 2}, full={"epochs": 20, "n": 100})


def test_train_section_is_the_standard_literal():
    from distillery.reproduce._common import ONE_CHECKPOINT, train_section

    assert train_section(12) == {"epochs": 12, "optimizer": {"name": "adamw", "lr": 0.003}, "scheduler": {"name": "cosine"},
                                 "eval_every": 12, "progress": False, "tensorboard": False}
    got = train_section(5, 1e-3, weight_decay=0.05, warmup=20, eval_every=1, grad_accum=4, **ONE_CHECKPOINT)
    assert got == {"epochs": 5, "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                   "scheduler": {"name": "cosine", "warmup_steps": 20}, "eval_every": 1, "progress": False,
                   "tensorboard": False, "grad_accum": 4, "checkpoint_every": 10**9, "keep_checkpoints": 1}
    assert "scheduler" not in train_section(3, scheduler=None)


def test_compose_merges_nested_sections_and_never_shares_them():
    from distillery.reproduce._common import compose

    base = {"data": {"dataset": "digits", "params": {"a": 1}}, "objectives": [{"kind": "ce"}]}
    got = compose(base, {"data": {"params": {"b": 2}, "batch_size": 8}}, None, {"objectives": [{"kind": "kd"}]})
    assert got == {"data": {"dataset": "digits", "params": {"a": 1, "b": 2}, "batch_size": 8}, "objectives": [{"kind": "kd"}]}
    got["data"]["params"]["a"] = 5
    assert base["data"]["params"] == {"a": 1}  # the fragments are left as they were


def test_run_grid_trains_every_variant_for_every_seed_in_seed_major_order(tmp_path):
    from distillery.reproduce import Context
    from distillery.reproduce._common import by_metric, final, run_grid

    calls = []

    class Recording(Context):
        def train(self, name, raw):
            calls.append((name, raw))
            return {"final": {"accuracy": raw["seed"] + len(name) / 100}, "wall_s": 0.0}

    ctx = Recording(seeds=[0, 1], quick=True, out=tmp_path, log=lambda s: None)
    variants = {"a": {"objectives": [{"kind": "ce"}]}, "b": lambda seed: {"student": {"name": f"m{seed}"}}, "ref": None}
    measured = []
    got = run_grid(ctx, variants, lambda run: measured.append(run) or (final()(run) if run.summary else -1.0))
    assert [name for name, _ in calls] == ["a/seed0", "b/seed0", "a/seed1", "b/seed1"]
    assert calls[3][1] == {"seed": 1, "student": {"name": "m1"}}
    assert got == {"a": [0.07, 1.07], "b": [0.07, 1.07], "ref": [-1.0, -1.0]}
    assert [(r.variant, r.seed, r.dir) for r in measured[:3]] == [("a", 0, tmp_path / "a/seed0"), ("b", 0, tmp_path / "b/seed0"),
                                                                  ("ref", 0, tmp_path / "ref/seed0")]
    assert by_metric({"a": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}) == {"a": {"x": [1, 3], "y": [2, 4]}}


def test_train_teacher_returns_the_frozen_teacher_section(tmp_path):
    from distillery.reproduce import Context
    from distillery.reproduce._common import train_section, train_teacher

    seen = {}

    class Recording(Context):
        def train(self, name, raw):
            seen[name] = raw
            return {"final": {"accuracy": 0.9}, "wall_s": 0.0}

    ctx = Recording(seeds=[0], quick=True, out=tmp_path, log=lambda s: None)
    model = {"name": "cnn1d", "params": {"channels": [8]}}
    t = train_teacher(ctx, model, {"dataset": "mnist1d"}, train_section(3), precompute=True)
    weights = str((tmp_path / "teacher" / "student.safetensors").resolve())
    assert seen["teacher"]["seed"] == 0 and seen["teacher"]["objectives"] == [{"kind": "ce"}]
    assert t.section == {"kind": "frozen", "model": {"name": "cnn1d", "params": {"channels": [8]}, "checkpoint": weights},
                         "precompute": True}
    assert (t.weights, t.accuracy, t.run_dir) == (weights, 0.9, tmp_path / "teacher")


def test_the_recipes_config_fragments_are_valid_run_configs():
    """Each recipe's fragments, composed as the reproductions compose them, pass the config schema,
    and the Python builders make the same terms from them."""
    from distillery.config import parse_config
    from distillery.recipes import (
        albef,
        cmd,
        cotap,
        dcd,
        degla,
        deo,
        dmae,
        geodistill,
        linfusion,
        lingudistill,
        msd,
        pointdistiller,
        sd_darts,
        sd_further_pretraining,
        sla,
        ssld,
        unidistill,
        v_reflection,
        vl2v_adip,
        vlm_ood,
    )
    from distillery.recipes._fragments import frozen_teacher, terms_from
    from distillery.reproduce._common import compose

    frozen = {"teacher": frozen_teacher({"name": "mlp", "checkpoint": "t.safetensors"})}
    fragments = {
        "ssld": compose(frozen, ssld.ssld_config()),
        "albef": albef.albef_config(),
        "msd": msd.msd_config(),
        "degla": degla.degla_config(),
        "dcd": compose(frozen, dcd.dcd_config()),
        "cmd": cmd.cmd_config(view=cmd.multicrop_spec(2, 4)),
        "cotap": compose(frozen, cotap.cotap_config(32)),
        "deo": deo.deo_config(64, {"name": "mlp", "checkpoint": "t.safetensors"}, [{"name": "noise", "std": 0.1}]),
        "dmae": dmae.dmae_config("encoder.blocks.1", "encoder.blocks.1", teacher_model={"name": "mae_vit", "checkpoint": "t"}),
        "geodistill": geodistill.geodistill_config(0.99),
        "linfusion": compose(frozen, linfusion.linfusion_config(3, {"dim": 32})),
        "lingudistill": compose(frozen, lingudistill.lingudistill_config()),
        "pointdistiller": compose(frozen, pointdistiller.pointdistiller_config(64, 128)),
        "sd_darts": sd_darts.sd_darts_config(),
        "sd_further_pretraining": sd_further_pretraining.self_distillation_config(teacher_model={"name": "mae_vit", "checkpoint": "t"}),
        "sla": sla.sla_config(4, {"name": "cnn2d"}),
        "unidistill": compose(frozen, unidistill.unidistill_config()),
        "v_reflection": compose(frozen, v_reflection.v_reflection_config()),
        "vl2v_adip": compose(frozen, vl2v_adip.adip_config()),
        "vlm_ood": compose(frozen, vlm_ood.vlm_ood_config()),
    }
    for name, fragment in fragments.items():
        cfg = parse_config(compose({"data": {"dataset": "digits"}, "student": {"name": "mlp"}}, fragment), name)
        terms = terms_from(fragment["objectives"])
        assert [t.name for t in terms] == [t.name or t.kind for t in cfg.objectives], name
    from torch import nn

    from distillery import FrozenTeacher

    assert [t.name for t in ssld.ssld_distiller(nn.Linear(2, 2), FrozenTeacher(nn.Linear(2, 2)), 2.0).terms] == ["kd"]
    assert [t.name for t in unidistill.detection_terms()] == ["focal", "count"]  # the Python builder keeps its names


def test_hand_built_claims_state_their_power():
    """exact / combined / threshold_on_mean: every hand-judged rule says in claims.json what it
    could detect, and the page's column puts it in words."""
    import statistics

    from distillery.reproduce import Z_80, better, combined, exact, threshold_on_mean
    from distillery.reproduce.runner import format_detectable

    e = exact("costs 1%", "macs ratio <= 1.01", True, {"ratio": 1.005}, what="a multiply-add count")
    assert "deterministic" in e.to_json()["minimum_detectable_difference"]["note"]
    a = better("a", [1.0, 1.2, 1.1], [0.9, 0.8, 1.0], a_name="x", b_name="y")
    b = better("b", [1.0, 1.0], [1.5, 1.6], a_name="x", b_name="y")
    c = combined("both", "a AND b", [a, b])
    assert not c.held  # b fails
    parts = c.to_json()["minimum_detectable_difference"]["parts"]
    assert parts == [a.detectable, b.detectable]
    assert format_detectable(c.to_json()).startswith("every part: ")
    t = threshold_on_mean([0.80, 0.84, 0.82], 0.75, what="mean accuracy")
    se = statistics.stdev([0.80, 0.84, 0.82]) / 3 ** 0.5
    assert t["standard_error"] == pytest.approx(se) and t["at_80_percent_beyond_threshold"] == pytest.approx(Z_80 * se)
    assert "s.e. of the mean" in format_detectable({"minimum_detectable_difference": t})
    assert "one value" in threshold_on_mean([0.8], 0.5, what="m")["note"]


def test_detectable_difference_against_a_fixed_reference():
    from distillery.reproduce import detectable_difference

    assert detectable_difference(0.1, 0.1, (3, 1))["threshold"] is None  # two-sided rule: 1 seed is not enough
    ref = detectable_difference(0.1, 0.1, (3, 1), reference=True)
    assert ref["threshold"] == 0.1 and ref["at_80_percent"] == pytest.approx(0.1 + 0.8416 * 0.1)


def test_not_worse_than_one_teacher_value_states_its_power():
    """A student's mean against a teacher trained once: the spread is the student's."""
    from distillery.reproduce import not_worse

    c = not_worse("reaches the teacher", [0.80, 0.82, 0.84], [0.85], a_name="s", b_name="t", tolerance=0.01)
    se = 0.02 / 3 ** 0.5
    assert c.detectable["standard_error"] == pytest.approx(se) and c.detectable["seeds"] == [3, 1]
