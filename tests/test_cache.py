"""The teacher-output cache: round trip, runs equal to the online teacher, refusals, top-k KD.

A cache must give back what the teacher computed (within float16 precision), a run on it
must train like the run with the online frozen teacher, and a cache that does not match the
run (dataset, teacher), is damaged (a flipped byte, a truncated or missing shard) or lacks a
sample index must be refused with a message that names the problem and the rebuild command.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distillery.cache import (
    CacheCorruptError,
    CacheIndexError,
    CacheMismatchError,
    CacheNotFoundError,
    build_cache,
    build_cache_from_config,
)
from distillery.cache.checks import CacheCheckWarning
from distillery.cli import main
from distillery.config import parse_config
from distillery.data import load_dataset
from distillery.engine import checkpoint as ckpt
from distillery.errors import ConfigError
from distillery.models import build_model
from distillery.objectives import kd_loss
from distillery.objectives.topk import TopKKD, kd_topk_loss, topk_targets
from distillery.runner import run
from distillery.teachers import CachedTeacher

TEACHER = {"name": "mlp", "params": {"hidden": [32]}}


def _teacher_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32,))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    ckpt.save_weights(_teacher_net(0), root / "teacher.safetensors")
    return root


def _raw(workdir: Path, **changes) -> dict:
    """A digits run: MLP student, frozen MLP teacher from a checkpoint, CE + KD(T=2)."""
    raw = {
        "seed": 0,
        "data": {"dataset": "digits", "batch_size": 128},
        "student": {"name": "mlp", "params": {"hidden": [16]}},
        "teacher": {"kind": "frozen", "model": dict(TEACHER, checkpoint=str(workdir / "teacher.safetensors"))},
        "objectives": [{"kind": "ce"}, {"kind": "kd", "params": {"temperature": 2.0}}],
        "train": {"epochs": 1, "tensorboard": False, "progress": False, "log_every": 1},
    }
    raw.update(changes)
    return raw


def _cached_raw(workdir: Path, path: Path, objectives=None, **teacher) -> dict:
    frozen = _raw(workdir)["teacher"]
    raw = _raw(workdir, teacher={"kind": "cached", "path": str(path), "source": frozen, **teacher})
    if objectives is not None:
        raw["objectives"] = objectives
    return raw


@pytest.fixture(scope="module")
def dense_cache(workdir) -> Path:
    out = workdir / "dense"
    build_cache_from_config(parse_config(_raw(workdir)), out, shard_size=500)  # 1,347 samples: 3 shards
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _train_records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


# ----------------------------------------------------------------------------- round trip


def test_round_trip_logits_and_features_across_shards(tmp_path):
    ds = load_dataset("digits").train
    net = _teacher_net(1)
    manifest = build_cache(net, ds, tmp_path / "c", names=["logits", "layers.0"], shard_size=400, batch_size=300,
                           describe={"name": "mlp", "params": {"hidden": [32]}})
    assert manifest["num_shards"] == 4 and manifest["signals"]["logits"]["dtype"] == "float16"
    assert sorted(p.name for p in (tmp_path / "c" / "shards" / "00003").iterdir()) == ["layers.0.npy", "logits.npy"]
    teacher = CachedTeacher(tmp_path / "c")
    torch.testing.assert_close(teacher.eval_teacher().signals(ds.x[:3], {}, ["logits"])["logits"], net.eval()(ds.x[:3]))
    index = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:300]  # rows from every shard
    got = teacher.signals(torch.zeros(1), {"index": index}, ["logits", "layers.0"])
    from distillery.taps import run_tapped

    with torch.no_grad():
        want = run_tapped(net.eval(), ds.x[index], ["layers.0"])
    for name in ("logits", "layers.0"):
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-3)  # float16 storage
    # the shards are plain .npy files, readable without distillery
    raw = np.load(tmp_path / "c" / "shards" / "00001" / "logits.npy", mmap_mode="r")
    assert raw.shape == (400, 1, 10) and raw.dtype == np.float16


def test_the_eval_teacher_is_rebuilt_from_the_cache(dense_cache):
    teacher = CachedTeacher(dense_cache)
    ds = load_dataset("digits").test
    evaluated = teacher.eval_teacher().signals(ds.x[:5], {}, ["logits"])["logits"]
    torch.testing.assert_close(evaluated, _teacher_net(0).eval()(ds.x[:5]))


def test_a_cached_run_trains_like_the_online_frozen_teacher(workdir, dense_cache, tmp_path):
    online = run(parse_config(_raw(workdir)), tmp_path / "online", report=False)
    cached = run(parse_config(_cached_raw(workdir, dense_cache)), tmp_path / "cached", report=False)
    a, b = _train_records(tmp_path / "online"), _train_records(tmp_path / "cached")
    assert len(a) == len(b) == online["steps"] == cached["steps"] > 5
    for ra, rb in zip(a, b):
        assert ra["kd"] == pytest.approx(rb["kd"], rel=2e-3, abs=1e-5)  # float16 teacher logits
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-3)
    assert cached["final"]["accuracy"] == pytest.approx(online["final"]["accuracy"], abs=0.01)
    assert cached["final"]["teacher_accuracy"] == online["final"]["teacher_accuracy"]


# ----------------------------------------------------------------------------- refusals


def test_a_changed_dataset_is_refused(workdir, dense_cache, tmp_path):
    raw = _cached_raw(workdir, dense_cache)
    raw["data"]["params"] = {"test_fraction": 0.3}
    with pytest.raises(CacheMismatchError, match=r"does not match this run's dataset.*1347 samples.*distillery cache build"):
        run(parse_config(raw), tmp_path / "r", report=False)


def test_changed_teacher_weights_are_refused(workdir, dense_cache, tmp_path):
    other = tmp_path / "other.safetensors"
    ckpt.save_weights(_teacher_net(7), other)
    raw = _cached_raw(workdir, dense_cache)
    raw["teacher"]["source"]["model"]["checkpoint"] = str(other)
    with pytest.raises(CacheMismatchError, match=r"fingerprint .*the teacher changed since the cache was built.*--overwrite"):
        run(parse_config(raw), tmp_path / "r", report=False)
    raw["teacher"]["source"]["model"] = {"name": "mlp", "params": {"hidden": [64]}, "checkpoint": str(other)}
    with pytest.raises(CacheMismatchError, match=r"but teacher.source names"):
        run(parse_config(raw), tmp_path / "r2", report=False)


def _fitted_raw(workdir: Path, cache: Path, **fit) -> dict:
    """A cached run whose source teacher has no checkpoint: it is fitted as ``fit`` says."""
    fit = {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.01}, "progress": False, "tensorboard": False, **fit}
    raw = _cached_raw(workdir, cache)
    raw["teacher"]["source"] = {"kind": "frozen", "model": dict(TEACHER), "fit": fit}
    return raw


def test_a_teacher_fitted_with_another_fit_section_is_refused(workdir, dense_cache, tmp_path):
    # issue 10: a teacher of the same architecture trained with a different source.fit (no
    # checkpoint) was not detected as stale
    cache = tmp_path / "fitted"
    build_cache_from_config(parse_config(_fitted_raw(workdir, cache)))
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["teacher"]["fitted"] and manifest["teacher"]["fit"]["epochs"] == 1
    assert "progress" not in manifest["teacher"]["fit"]  # bookkeeping is not what trained it
    with pytest.raises(CacheMismatchError, match=r"another teacher.source.fit .*epochs: 1 in the cache, 3 in the config; "
                                                 r"optimizer.lr: 0.01 in the cache, 0.02 in the config.*--overwrite"):
        run(parse_config(_fitted_raw(workdir, cache, epochs=3, optimizer={"name": "adamw", "lr": 0.02})), tmp_path / "r1", report=False)
    # the same fit (logging differs, and another seed): accepted
    raw = _fitted_raw(workdir, cache, log_every=5)
    raw["seed"] = 1
    assert run(parse_config(raw), tmp_path / "r2", report=False)["complete"]
    # a cache computed from a checkpoint, for a source that would train its teacher: refused
    with pytest.raises(CacheMismatchError, match=r"loaded from .*teacher.safetensors, but teacher.source has no model.checkpoint"):
        run(parse_config(_fitted_raw(workdir, dense_cache)), tmp_path / "r3", report=False)
    # a cache that records no fit (older build): a warning says it was not compared
    _edit_manifest(cache, lambda m: m["teacher"].pop("fit"))
    with pytest.warns(CacheCheckWarning, match="does not record what trained its teacher"):
        run(parse_config(_fitted_raw(workdir, cache)), tmp_path / "r4", report=False)


def test_without_a_source_only_the_dataset_is_checked_and_a_warning_says_so(workdir, dense_cache, tmp_path):
    raw = _raw(workdir, teacher={"kind": "cached", "path": str(dense_cache)})
    with pytest.warns(CacheCheckWarning, match="cannot be checked against a teacher"):
        summary = run(parse_config(raw), tmp_path / "r", report=False)
    assert summary["complete"]


def test_a_flipped_byte_is_refused_and_named(dense_cache, tmp_path):
    cache = _copy(dense_cache, tmp_path / "c")
    shard = cache / "shards" / "00001" / "logits.npy"
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match=r"shards/00001/logits.npy has sha256 .*rebuild it with: distillery cache build"):
        CachedTeacher(cache)
    CachedTeacher(cache, verify="size", eval_model=None)  # sizes only: documented not to see flipped bytes


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_truncated_or_missing_files_are_refused(dense_cache, tmp_path, damage):
    cache = _copy(dense_cache, tmp_path / "c")
    shard = cache / "shards" / "00002" / "logits.npy"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
        error, pattern = CacheCorruptError, r"00002/logits.npy is \d+ bytes but was written with \d+ \(truncated\)"
    elif damage == "delete":
        shard.unlink()
        error, pattern = CacheCorruptError, r"shard file shards/00002/logits.npy is missing"
    else:
        (cache / "manifest.json").unlink()
        error, pattern = CacheNotFoundError, r"no manifest.json.*build did not finish.*distillery cache build CONFIG --out"
    for verify in ("full", "size"):
        with pytest.raises(error, match=pattern):
            CachedTeacher(cache, verify=verify)


def _edit_manifest(cache: Path, edit) -> None:
    manifest = json.loads((cache / "manifest.json").read_text())
    edit(manifest)
    (cache / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit,pattern", [
    (lambda m: m.pop("signals"), r"the key 'signals' is missing"),
    (lambda m: m.update(shards="x"), r"the key 'shards' is the str \"x\", expected a list of shards"),
    (lambda m: m.update(num_samples="1347"), r"the key 'num_samples' is the str \"1347\", expected a positive integer"),
    (lambda m: m["shards"][1]["files"]["logits"].update(bytes=None), r"the key 'shards\[1\].files.logits.bytes' is null"),
    (lambda m: m["shards"][0]["files"]["logits"].update(path="../../elsewhere.npy"), r"the key 'shards\[0\].files.logits.path' is the str.*relative path inside"),
    (lambda m: m["signals"]["logits"].update(dtype="object"), r"the key 'signals.logits.dtype' is the str \"object\", expected one of float16"),
    (lambda m: m["shards"].pop(), r"the key 'shards' lists 2 shards, but num_shards is 3"),
    (lambda m: m.update(teacher=[]), r"the key 'teacher' is a list, expected an object"),
    (lambda m: m.update(topk={"k": 3}), r"the key 'topk.temperature' is missing"),
])
def test_a_malformed_manifest_is_one_message_naming_the_key(dense_cache, tmp_path, capsys, edit, pattern):
    # issue 10: a manifest without 'signals', or with shards: "x", gave a raw traceback
    cache = _copy(dense_cache, tmp_path / "c")
    _edit_manifest(cache, edit)
    with pytest.raises(CacheCorruptError, match=r"manifest.json is malformed: " + pattern + r".*rebuild it with: distillery cache build"):
        CachedTeacher(cache)
    assert main(["cache", "verify", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "malformed" in err


def test_the_rebuild_hint_names_where_the_cache_is_now(dense_cache, tmp_path):
    # issue 10: the hint named the path the cache was built at, not where it is now
    built_at = tmp_path / "built-here"
    moved = _copy(dense_cache, tmp_path / "moved")
    _edit_manifest(moved, lambda m: m["build"].update(argv=["cache", "build", "cfg.yaml", "--out", str(built_at), "--views", "1"]))
    shard = moved / "shards" / "00000" / "logits.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CacheCorruptError) as info:
        CachedTeacher(moved)
    msg = str(info.value)
    assert f"distillery cache build cfg.yaml --out {moved} --views 1 --overwrite" in msg
    assert str(built_at) not in msg
    from distillery.cache.store import rebuild_hint

    assert rebuild_hint("new dir", {"build": {"argv": ["cache", "build", "c.yaml", "--out=old"]}}) == (
        "distillery cache build c.yaml '--out=new dir' --overwrite")
    assert rebuild_hint("d", {"build": {"argv": ["cache", "build", "c.yaml"]}}) == "distillery cache build c.yaml --out d --overwrite"


def test_a_missing_sample_index_is_refused(dense_cache):
    teacher = CachedTeacher(dense_cache, eval_model=None)
    with pytest.raises(CacheIndexError, match=r"sample index 1347, but it holds samples 0..1346 only.*rebuild"):
        teacher.signals(torch.zeros(1), {"index": torch.tensor([3, 1347])}, ["logits"])
    with pytest.raises(CacheIndexError, match=r"index -1"):
        teacher.signals(torch.zeros(1), {"index": torch.tensor([-1])}, ["logits"])
    with pytest.raises(CacheIndexError, match=r"batch\['index'\]"):
        teacher.signals(torch.zeros(1), {"x": torch.zeros(1)}, ["logits"])


def test_signals_the_cache_lacks_are_refused_before_training(workdir, dense_cache, tmp_path):
    objectives = [{"kind": "mse", "inputs": {"student": "student.layers.0", "teacher": "teacher.layers.0"}, "adapter": "linear"}]
    with pytest.raises(CacheMismatchError, match=r"also read \['teacher.layers.0'\]"):
        run(parse_config(_cached_raw(workdir, dense_cache, objectives)), tmp_path / "r", report=False)


def test_an_existing_cache_is_kept_unless_overwrite(workdir, dense_cache):
    before = (dense_cache / "manifest.json").read_text()
    with pytest.raises(Exception, match="already exists and is not empty. Nothing was changed"):
        build_cache_from_config(parse_config(_raw(workdir)), dense_cache)
    assert (dense_cache / "manifest.json").read_text() == before
    assert not list(dense_cache.parent.glob(".dense.building-*"))


# ----------------------------------------------------------------------------- augmentation views


NOISE = [{"name": "noise", "std": 0.5}]


@pytest.fixture(scope="module")
def views_cache(workdir) -> Path:
    """3 fixed noise views per sample of the student's (and so the teacher's) input."""
    raw = _raw(workdir)
    raw["data"]["student_view"] = NOISE
    out = workdir / "views"
    _, manifest = build_cache_from_config(parse_config(raw), out, views=3)
    assert manifest["views"] == 3 and manifest["input"]["tied_to_student"]
    return out


def test_random_views_are_cached_per_seed_and_replayed_for_the_student(workdir, views_cache, tmp_path):
    teacher = CachedTeacher(views_cache)
    replay = teacher.student_view()
    batch = load_dataset("digits").train.__getitems__(list(range(40, 60)))
    net = _teacher_net(0).eval()
    seen = []
    for step in range(3):
        teacher.update(None, step)
        x = replay(batch)
        logits = teacher.signals(x, batch, ["logits"])["logits"]
        torch.testing.assert_close(logits, net(x), rtol=1e-3, atol=1e-3)  # the student sees the teacher's input
        torch.testing.assert_close(replay(batch), x)  # deterministic
        seen.append(x)
    assert not torch.allclose(seen[0], seen[1])  # the entry (and its view) changes with the step
    # the cached run replays the views for the student and trains
    cached = _cached_raw(workdir, views_cache)
    cached["data"]["student_view"] = NOISE
    assert run(parse_config(cached), tmp_path / "r", report=False)["complete"]
    # the same cache with another (or no) student view is refused
    with pytest.raises(CacheMismatchError, match=r"holds the teacher's outputs on the student's augmented input"):
        run(parse_config(_cached_raw(workdir, views_cache)), tmp_path / "r2", report=False)


def test_a_resumed_run_reads_the_same_entries(views_cache, tmp_path):
    from distillery import Distiller, Term, Trainer
    from distillery.objectives import SoftTargetKD

    ds = load_dataset("digits").train

    def trainer(out: Path, stop: int | None = None) -> Trainer:
        torch.manual_seed(0)
        student = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(16,))
        teacher = CachedTeacher(views_cache, eval_model=None)
        distiller = Distiller(student, teacher, [Term("kd", SoftTargetKD(2.0))], student_view=teacher.student_view())
        return Trainer(distiller, ds, out_dir=out, epochs=2, batch_size=256, stop_after_steps=stop, progress=False,
                       tensorboard=False, device="cpu")

    whole = trainer(tmp_path / "whole")
    whole.fit()
    trainer(tmp_path / "part", stop=8).fit()  # stopped mid-epoch 2
    resumed = trainer(tmp_path / "part")
    resumed.fit(resume=True)
    assert int(resumed.distiller.teacher.steps_done) == int(whole.distiller.teacher.steps_done) == 12
    for (name, a), b in zip(whole.distiller.student.state_dict().items(), resumed.distiller.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_views_are_refused_for_a_deterministic_input(workdir, tmp_path):
    with pytest.raises(ConfigError, match="not random"):
        build_cache_from_config(parse_config(_raw(workdir)), tmp_path / "c", views=2)
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- top-k


def _kd_gap(s, t, T, k):
    values, index, tail = topk_targets(t, k, T)
    return kd_loss(s, t, T, reduction="none") - kd_topk_loss(s, values, index, tail, T, reduction="none"), tail


def test_topk_equals_dense_kd_when_nothing_or_one_class_is_dropped():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 10, generator=g) * 3, torch.randn(64, 10, generator=g) * 3
    for k in (10, 9):
        gap, _ = _kd_gap(s.double(), t.double(), 2.0, k)
        assert gap.abs().max() < 1e-12


def test_topk_is_a_lower_bound_that_tightens_with_k_and_matches_the_chain_rule():
    g = torch.Generator().manual_seed(1)
    s, t = (torch.randn(256, 12, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    T = 1.5
    previous = None
    for k in range(1, 13):
        gap, tail = _kd_gap(s, t, T, k)
        assert (gap >= -1e-12).all()  # never above dense KD
        if previous is not None:
            assert (gap <= previous + 1e-12).all()  # never looser with more classes kept
        previous = gap
        # exact gap: T^2 * p_tail * KL(p(.|tail) || q(.|tail)), bounded by T^2 p_tail max log(q_tail / q_j)
        _, index, _ = topk_targets(t, k, T)
        dropped = torch.ones_like(t, dtype=torch.bool).scatter(-1, index, False)
        p, q = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
        if k < 12:
            p_cond = torch.where(dropped, p, 0) / tail[:, None]
            q_tail = torch.where(dropped, q, 0).sum(-1)
            q_cond = torch.where(dropped, q, 0) / q_tail[:, None]
            kl = torch.where(dropped, p_cond * (p_cond.clamp_min(1e-300).log() - q_cond.clamp_min(1e-300).log()), 0).sum(-1)
            torch.testing.assert_close(gap, T * T * tail * kl, rtol=1e-9, atol=1e-12)
            bound = T * T * tail * torch.where(dropped, (q_tail[:, None] / q).log(), -math.inf).amax(-1)
            assert (gap <= bound + 1e-12).all()
    # small tail mass, small gap: a confident teacher
    confident = t.clone()
    confident[:, 0] += 40
    gap, tail = _kd_gap(s, confident, T, 3)
    assert tail.max() < 1e-8 and gap.max() < 1e-6


def test_topk_gradients_gradcheck_in_float64():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    values, index, tail = topk_targets(torch.randn(5, 7, generator=g, dtype=torch.float64), 3, 2.0)
    assert torch.autograd.gradcheck(lambda x: kd_topk_loss(x, values, index, tail, 2.0, reduction="none"), (s,))
    values, index, tail = topk_targets(torch.randn(5, 7, generator=g, dtype=torch.float64), 7, 2.0)  # k = C
    assert torch.autograd.gradcheck(lambda x: kd_topk_loss(x, values, index, tail, 2.0), (s,))


def test_topk_cache_run_and_its_refusals(workdir, tmp_path):
    out = tmp_path / "topk"
    objectives = [{"kind": "ce"}, {"kind": "kd_topk"}]
    raw = _cached_raw(workdir, out, objectives)
    with pytest.raises(ConfigError, match="give --topk K"):
        build_cache_from_config(parse_config(raw), out)
    _, manifest = build_cache_from_config(parse_config(raw), out, topk=9, temperature=2.0)
    assert manifest["topk"] == {"k": 9, "temperature": 2.0, "num_classes": 10}
    assert manifest["signals"]["logits@topk_index"]["dtype"] == "int16"
    # k = C - 1 loses nothing: the same losses as dense KD with the online teacher
    run(parse_config(raw), tmp_path / "topk_run", report=False)
    run(parse_config(_raw(workdir)), tmp_path / "online", report=False)
    for ra, rb in zip(_train_records(tmp_path / "online"), _train_records(tmp_path / "topk_run")):
        assert ra["kd"] == pytest.approx(rb["kd_topk"], rel=2e-3, abs=1e-5)
    # dense kd on a top-k cache, and another temperature, are refused
    with pytest.raises(CacheMismatchError, match="holds top-k logits only.*Use the kd_topk objective"):
        run(parse_config(_cached_raw(workdir, out)), tmp_path / "r1", report=False)
    hot = [{"kind": "kd_topk", "params": {"temperature": 4.0}}]
    with pytest.raises(CacheMismatchError, match="temperature 4.0, but the top-k cache .* at temperature 2.0"):
        run(parse_config(_cached_raw(workdir, out, hot)), tmp_path / "r2", report=False)
    objective = TopKKD(temperature=4.0)
    v, i, tail = topk_targets(torch.randn(2, 10), 3, 2.0)
    with pytest.raises(ConfigError, match="cannot be converted"):
        objective(torch.randn(2, 10), v, i, tail, torch.full((2,), 2.0))


# ----------------------------------------------------------------------------- command line


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _user_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    return " ".join(err.split())


def test_cli_cache_build_verify_and_run(workdir, tmp_path, capsys):
    cache = tmp_path / "cache"
    config = _write(tmp_path / "cached.yaml", _cached_raw(workdir, cache))
    assert main(["cache", "build", str(config), "--shard-size", "600"]) == 0
    printed = capsys.readouterr().out
    assert f"cache built: {cache}" in printed and "3 shard(s) of 600" in printed
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["build"]["argv"] == ["cache", "build", str(config), "--out", str(cache), "--shard-size", "600"]
    assert main(["cache", "verify", str(cache)]) == 0
    assert "cache ok" in capsys.readouterr().out
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    assert "run finished" in capsys.readouterr().out
    # a frozen-teacher config builds too (into --out), and a top-k cache of it
    frozen = _write(tmp_path / "frozen.yaml", _raw(workdir))
    assert main(["cache", "build", str(frozen), "--out", str(tmp_path / "c2"), "--topk", "3"]) == 0
    assert "top-3 of 10 classes, tail mass at T=2.0" in capsys.readouterr().out


def test_cli_cache_errors_exit_2_without_traceback(workdir, tmp_path, capsys):
    cache = tmp_path / "cache"
    config = _write(tmp_path / "cached.yaml", _cached_raw(workdir, cache))
    err = _user_error(capsys, ["run", str(config), "--out", str(tmp_path / "run")])
    assert "No teacher-output cache at" in err and "distillery cache build CONFIG --out" in err
    assert not (tmp_path / "run").exists()  # refused before the run directory is made
    assert main(["cache", "build", str(config)]) == 0
    capsys.readouterr()
    err = _user_error(capsys, ["cache", "build", str(config)])
    assert "already exists and is not empty" in err and "--overwrite" in err
    shard = cache / "shards" / "00000" / "logits.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    err = _user_error(capsys, ["run", str(config), "--out", str(tmp_path / "run")])
    rebuild = f"distillery cache build {config} --out {cache} --overwrite"
    assert "truncated" in err and rebuild.replace(" ", "") in err.replace(" ", "")  # (the message is wrapped)
    err = _user_error(capsys, ["cache", "verify", str(cache)])
    assert "truncated" in err
    assert main(["cache", "build", str(config), "--overwrite"]) == 0  # rebuilt in place
    capsys.readouterr()
    ema = _write(tmp_path / "ema.yaml", _raw(workdir, teacher={"kind": "ema"}))
    err = _user_error(capsys, ["cache", "build", str(ema), "--out", str(tmp_path / "c3")])
    assert "needs a config whose teacher is frozen" in err
    no_source = _write(tmp_path / "nosource.yaml", _raw(workdir, teacher={"kind": "cached", "path": str(cache)}))
    err = _user_error(capsys, ["cache", "build", str(no_source), "--out", str(tmp_path / "c4")])
    assert "without teacher.source" in err
