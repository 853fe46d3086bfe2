"""The sequence engine's loop, config, run directory, resume, CLI and bad input (tiny GPTs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distillery.cli import main
from distillery.errors import ConfigError
from distillery.sequence.config import parse_sequence_config
from distillery.sequence.data import collate
from distillery.sequence.divergences import token_divergence
from distillery.sequence.run import build_sequence, make_trainer, run_sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 1, "heads": 2, "max_len": 16}}


def _raw(**over):
    raw = {
        "engine": "sequence", "seed": 3,
        "data": {"task": {"name": "addition", "params": {"digits": 1}}, "num_train": 64},
        "student": TINY,
        "teacher": {"model": {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 1, "heads": 2, "max_len": 16}}},
        "mode": "supervised",
        "divergence": {"kind": "forward_kl"},
        "train": {"steps": 4, "batch_size": 8, "max_new_tokens": 3, "log_every": 2, "progress": False, "tensorboard": False,
                  "optimizer": {"name": "adamw", "lr": 3e-3}},
        "eval": {"num_examples": 8},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    return raw


def _cfg(**over):
    return parse_sequence_config(_raw(**over))


def _write(tmp_path, raw, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.stepz: unknown key; allowed keys: .*steps"):
        parse_sequence_config(_raw(train={"steps": 2, "stepz": 3}))
    with pytest.raises(ConfigError, match="add a teacher section"):
        parse_sequence_config(_raw(teacher=None))
    with pytest.raises(ConfigError, match="teacher.sync must be 'frozen'"):
        parse_sequence_config(_raw(mode="sequence_kd", teacher={"sync": "ema", "model": None}))
    with pytest.raises(ConfigError, match="needs sampled rollouts"):
        parse_sequence_config(_raw(divergence={"kind": "reverse_kl", "estimator": "pg"}))
    with pytest.raises(ConfigError, match="exactly one of data.path"):
        parse_sequence_config(_raw(data={"path": "x.jsonl", "task": {"name": "addition"}}))


def test_supervised_loss_is_the_token_divergence_on_completion_tokens():
    cfg = _cfg()
    trainer = make_trainer(cfg, None)
    trainer._set_up(resume=False)
    idx = [0, 1, 2, 3]
    r, extra = trainer.batch_for(idx, 0, on_policy=False)
    total, _ = trainer.loss_of(r, extra, on_policy=False)
    # independent: right-padded collate of the same examples, labels shifted by one
    b = trainer.built
    batch = collate([(b.prompts[i], b.completions[i]) for i in idx], pad_id=0)
    with torch.no_grad():
        s = trainer.student(batch.input_ids, batch.attention_mask).logits[:, :-1]
        t = trainer.teacher.lm(batch.input_ids, batch.attention_mask).logits[:, :-1]
    ref = token_divergence(s, t, batch.labels[:, 1:] != -100, "forward_kl", reduction="sum")
    torch.testing.assert_close(total.detach(), ref, atol=1e-5, rtol=1e-4)
    assert int(r.completion_mask.sum()) == int((batch.labels != -100).sum())


def test_gkd_coin_and_modes_run(tmp_path):
    cfg = _cfg(mode="gkd", lmbda=0.5, divergence={"kind": "jsd", "beta": 0.3})
    trainer = make_trainer(cfg, None)
    coins = [trainer.is_on_policy(s) for s in range(40)]
    assert 8 < sum(coins) < 32 and coins == [trainer.is_on_policy(s) for s in range(40)]
    for over in ({"mode": "on_policy", "divergence": {"kind": "reverse_kl", "estimator": "pg"}},
                 {"mode": "on_policy", "divergence": {"kind": "reverse_kl", "estimator": "iw"}},
                 {"mode": "on_policy", "teacher": {"model": None, "sync": "live", "privileged": {"prompt": "reference_answer"}}},
                 {"mode": "supervised", "teacher": None, "divergence": {"kind": "ce"}}):
        summary = make_trainer(_cfg(**over, train={"steps": 2}), None).fit()
        assert summary["steps"] == 2 and 0.0 <= summary["final"]["accuracy"] <= 1.0


def test_sequence_kd_learns_on_the_teachers_greedy_completions():
    trainer = make_trainer(_cfg(mode="sequence_kd", divergence={"kind": "ce"}), None)
    trainer._set_up(resume=False)
    from distillery.sequence.sampler import generate

    ids = torch.tensor([trainer.built.prompts[5]])
    out = generate(trainer.teacher.lm, ids, max_new_tokens=3, temperature=0.0, eos_id=2, pad_id=0)
    assert trainer.completions[5] == out.completion[0][out.completion_mask[0]].tolist()


def test_resume_continues_identically_and_outputs(tmp_path):
    raw = _raw(mode="gkd", teacher={"sync": "ema", "decay": 0.8}, divergence={"kind": "jsd"},
               train={"steps": 6, "checkpoint_every": 3})
    raw["teacher"].pop("model")
    cfg = parse_sequence_config(raw)
    full = run_sequence(cfg, tmp_path / "full")
    part = run_sequence(cfg, tmp_path / "part", stop_after_steps=3)
    assert not part["complete"]
    rest = run_sequence(cfg, tmp_path / "part", resume=True)
    assert rest["steps"] == 6 and rest["final"] == full["final"]
    a, b = load_file(str(tmp_path / "full" / "student.safetensors")), load_file(str(tmp_path / "part" / "student.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "tokenizer.json", "student/tiny_gpt.json"):
        assert (tmp_path / "full" / f).is_file(), f
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["final"].keys() >= {"accuracy", "reward"}


def test_cli_run_validate_generate(tmp_path, capsys):
    path = _write(tmp_path, _raw(train={"steps": 2}))
    assert main(["validate", str(path)]) == 0
    assert "OK (sequence)" in capsys.readouterr().out
    assert main(["run", str(path), "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "r"), "--prompt", "1+2=", "--max-new-tokens", "2"]) == 0
    text = capsys.readouterr().out.strip()
    assert len(text) <= 2 and set(text) <= set("0123456789+=")
    assert main(["generate", str(tmp_path / "r"), "--prompt", "1+2=" * 5]) == 2
    assert "context" in capsys.readouterr().err


def test_cli_bad_input_exits_2(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    raw = _raw(data={"path": str(data)})
    raw["data"].pop("task")
    assert main(["run", str(_write(tmp_path, raw)), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "completion" in err

    data.write_text('{"prompt": "a", "completion": ""}\n')
    assert main(["validate", str(_write(tmp_path, raw))]) == 2
    assert "empty completion" in capsys.readouterr().err

    data.write_text('{"prompt": "' + "a" * 20 + '", "completion": "b"}\n')
    assert main(["validate", str(_write(tmp_path, raw))]) == 2
    assert "context" in " ".join(capsys.readouterr().err.split())

    other = _raw(teacher={"model": {"kind": "tiny_gpt", "params": {"vocab": 40, "dim": 16, "depth": 1, "heads": 2, "max_len": 16}}})
    assert main(["validate", str(_write(tmp_path, other))]) == 2
    assert "divergence.alignment" in " ".join(capsys.readouterr().err.split())
    other["divergence"]["alignment"] = "uld"
    assert main(["validate", str(_write(tmp_path, other))]) == 0
    assert not (tmp_path / "x").exists()


def test_build_fills_the_vocabulary_from_the_tokenizer():
    built = build_sequence(_cfg())
    assert built.student.vocab_size == built.tokenizer.vocab_size == 3 + len("0123456789+=")


def _one_and_two_processes(tmp_path, raw) -> tuple[dict, dict]:
    """Run ``raw`` with ``distillery run`` in one process (``n1``) and under torchrun with two
    gloo processes (``n2``); returns the two students' weights (after checking the keys match)."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    path = _write(tmp_path, raw)
    env = dict(os.environ, PYTHONPATH=str(root / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for n in (1, 2):
        cli = ["-m", "distillery.cli", "run", str(path), "--out", str(tmp_path / f"n{n}")]
        if n == 2:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cli = ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "--master_addr=127.0.0.1", *cli]
        proc = subprocess.run([sys.executable, *cli], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(tmp_path / "n1" / "student.safetensors")), load_file(str(tmp_path / "n2" / "student.safetensors"))
    assert a.keys() == b.keys() and a
    return a, b


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_match_one_process_in_supervised_mode(tmp_path):
    """Each rank takes its slice of the global batch, the loss is normalised by the global token
    count and gradients are averaged: two processes end with one process's weights (1e-5)."""
    a, b = _one_and_two_processes(tmp_path, _raw(train={"steps": 5, "batch_size": 8, "device": "cpu"}))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


SHARDED_RUNS = {
    "supervised": {},
    # greedy rollouts (temperature 0): sampled ones are seeded per rank, so only greedy ones are
    # the same for one and two processes; the sharded teacher scores each rank's own rollouts
    "on_policy": {"mode": "on_policy", "divergence": {"kind": "reverse_kl"}},
}


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("mode", sorted(SHARDED_RUNS))
def test_fsdp_sharded_teacher_on_two_gloo_processes_matches_one_process(tmp_path, mode):
    """``teacher.shard: true``: the frozen teacher (two blocks, each its own FSDP2 group) is
    sharded over the two gloo ranks and all-gathered per forward; the students end with one
    unsharded process's weights (1e-5). One process ignores ``teacher.shard``."""
    teacher = {"model": {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 2, "heads": 2, "max_len": 16}}, "shard": True}
    raw = _raw(teacher=teacher, **SHARDED_RUNS[mode])
    raw["train"].update(steps=4, batch_size=8, device="cpu", temperature=0.0)
    a, b = _one_and_two_processes(tmp_path, raw)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)
    one, two = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("n1", "n2"))
    assert (one["teacher_sharded"], two["teacher_sharded"], two["world_size"]) == (False, True, 2)


def test_teacher_shard_is_refused_where_the_teacher_changes_or_is_cached():
    with pytest.raises(ConfigError, match=r"teacher: .*teacher.shard: only a frozen teacher can be sharded; sync 'ema'"):
        parse_sequence_config(_raw(teacher={"model": None, "sync": "ema", "shard": True}))
    with pytest.raises(ConfigError, match=r"teacher.shard: a teacher.cache is read from disk"):
        parse_sequence_config(_raw(teacher={"cache": "c", "shard": True}))
    assert parse_sequence_config(_raw(teacher={"shard": True})).teacher.shard


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_sharded_teacher_scores_like_the_unsharded_one_and_frees_its_gathered_weights(tmp_path):
    """One gloo process (FSDP2 runs at world size 1): the sharded teacher's scores and greedy
    completions equal the unsharded teacher's bit for bit, and after a forward under no_grad its
    parameters are DTensor shards again (the root too: not left gathered)."""
    import copy

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from distillery.sequence.sampler import generate
    from distillery.sequence.teachers import dataset_rollout

    built = build_sequence(_cfg(teacher={"model": {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 2, "heads": 2,
                                                                                    "max_len": 16}}, "shard": True}))
    teacher, tok = built.teacher, built.tokenizer
    plain = copy.deepcopy(teacher.lm)
    r = dataset_rollout(built.prompts[:5], built.completions[:5], tok.pad_id)
    ids = torch.tensor([built.prompts[0], built.prompts[1]])
    ref_scores = teacher.score(r)
    ref_greedy = generate(plain, ids, max_new_tokens=3, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id).completion
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sharded = teacher.shard()
        assert all(isinstance(p, DTensor) for p in sharded.parameters())
        assert torch.equal(teacher.score(r), ref_scores)
        with torch.no_grad():
            greedy = generate(teacher.lm, ids, max_new_tokens=3, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id)
        assert torch.equal(greedy.completion, ref_greedy)
        assert all(isinstance(p, DTensor) for p in sharded.parameters())  # resharded after each forward
    finally:
        dist.destroy_process_group()


def test_hf_student_is_saved_the_transformers_way(tmp_path, capsys):
    gpt2 = {"kind": "hf", "config": "gpt2", "params": {"n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 16,
                                                        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}
    raw = _raw(student=gpt2, teacher={"model": None, "sync": "frozen"}, mode="on_policy", divergence={"kind": "reverse_kl"},
               train={"steps": 2})
    assert main(["run", str(_write(tmp_path, raw)), "--out", str(tmp_path / "hf")]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf" / "student"), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf" / "student"), local_files_only=True)
    assert model.config.vocab_size == tok.vocab_size == 15
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "hf"), "--prompt", "3+4="]) == 0


def test_teacher_from_a_run_directory(tmp_path, capsys):
    teacher_raw = _raw(teacher=None, divergence={"kind": "ce"}, train={"steps": 2})
    assert main(["run", str(_write(tmp_path, teacher_raw, "t.yaml")), "--out", str(tmp_path / "t")]) == 0
    raw = _raw(teacher={"model": None, "run": str(tmp_path / "t")}, mode="on_policy", divergence={"kind": "reverse_kl"})
    built = build_sequence(parse_sequence_config(raw))
    ref = load_file(str(tmp_path / "t" / "student.safetensors"))
    torch.testing.assert_close(built.teacher.lm.wte.weight, ref["wte.weight"])
    raw["tokenizer"] = {"kind": "char", "extra": "x"}
    capsys.readouterr()
    assert main(["validate", str(_write(tmp_path, raw))]) == 2
    assert "same tokenizer" in " ".join(capsys.readouterr().err.split())


SEQUENCE_CONFIGS = [p for p in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
                    if yaml.safe_load(p.read_text()).get("engine") == "sequence"]


def _shortened(path: Path, tmp_path: Path) -> dict:
    """Run a shipped sequence config for 2 steps; a teacher given as a run directory is first
    made by running the shipped config of that name, shortened too."""
    from distillery.config import load_config
    from distillery.sequence.run import run_sequence

    raw = yaml.safe_load(path.read_text())
    sets = ["train.steps=2", "train.batch_size=8", "eval.num_examples=8", "data.num_train=64"]
    teacher = raw.get("teacher") or {}
    if teacher.get("run"):
        source = path.parent / f"{Path(teacher['run']).name}.yaml"
        assert source.is_file(), f"{path.name}: its teacher run {teacher['run']} has no shipped config {source.name}"
        _shortened(source, tmp_path / "teacher_run")
        sets.append(f"teacher.run={tmp_path / 'teacher_run' / 'run'}")
    student_path = (raw.get("student") or {}).get("path")
    if student_path and Path(student_path).name == "student" and Path(student_path).parent.parent.name == "runs":
        source = path.parent / f"{Path(student_path).parent.name}.yaml"  # a student started from an earlier run's
        assert source.is_file(), f"{path.name}: its student run {student_path} has no shipped config {source.name}"
        _shortened(source, tmp_path / "student_run")
        sets.append(f"student.path={tmp_path / 'student_run' / 'run' / 'student'}")
    return run_sequence(load_config(path, sets), tmp_path / "run")


@pytest.mark.parametrize("path", SEQUENCE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_sequence_config_runs_shortened(path, tmp_path):
    summary = _shortened(path, tmp_path)
    assert summary["steps"] == 2
