"""A cached LM teacher (``teacher: {cache: DIR}``) in the sequence loop, and how it is built and refused."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from distillery.cli import main
from distillery.errors import ConfigError
from distillery.sequence.config import parse_sequence_config
from distillery.sequence.run import build_sequence, build_sequence_cache, make_trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 1, "heads": 2, "max_len": 16}}
TEACHER = {"kind": "tiny_gpt", "params": {"dim": 24, "depth": 1, "heads": 2, "max_len": 16}}
STEPS = 4


def _raw(**over):
    raw = {
        "engine": "sequence", "seed": 5,
        "data": {"task": {"name": "addition", "params": {"digits": 1}}, "num_train": 32},
        "student": TINY,
        "teacher": {"model": TEACHER},
        "mode": "supervised",
        "divergence": {"kind": "forward_kl"},
        "train": {"steps": STEPS, "batch_size": 8, "max_new_tokens": 3, "progress": False, "tensorboard": False,
                  "optimizer": {"name": "adamw", "lr": 1e-2}},
        "eval": {"num_examples": 4},
    }
    raw.update(over)
    return raw


def _losses(cfg, steps=STEPS):
    trainer = make_trainer(cfg, None)
    trainer._set_up(False)
    return [trainer.train_step(i)["loss"] for i in range(steps)]


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory):
    """A cache of the dense teacher at k = V (the whole vocabulary kept)."""
    out = tmp_path_factory.mktemp("lmcache") / "full"
    cfg = parse_sequence_config(_raw())
    V = build_sequence(cfg).tokenizer.vocab_size
    cache = build_sequence_cache(cfg, out, k=V)
    assert cache.k == cache.vocab_size == V
    return out


def test_cached_teacher_at_k_equal_v_gives_the_dense_run(full_cache):
    dense = _losses(parse_sequence_config(_raw()))
    cached = _losses(parse_sequence_config(_raw(teacher={"cache": str(full_cache)})))
    # with the source model given as well, its weights are checked against the cache
    checked = _losses(parse_sequence_config(_raw(teacher={"cache": str(full_cache), "model": TEACHER})), steps=1)
    diff = max(abs(a - b) for a, b in zip(dense, cached))
    # only the cache's uint8 gap codes separate the two (measured ~1e-6 here)
    assert diff < 1e-5, (dense, cached)
    assert checked[0] == pytest.approx(cached[0], abs=1e-7)
    assert all(torch.isfinite(torch.tensor(dense)))


def test_cached_loss_is_the_topk_divergence_of_the_steps_examples(full_cache, tmp_path):
    from distillery.sequence.cache import LMCache
    from distillery.sequence.divergences import topk_token_divergence
    from distillery.sequence.teachers import completion_logits

    cfg = parse_sequence_config(_raw(teacher={"cache": str(full_cache)}))
    trainer = make_trainer(cfg, None)
    trainer._set_up(False)
    idx = [3, 0, 7, 1]
    r, extra = trainer.batch_for(idx, 0, False)
    total, _ = trainer.loss_of(r, extra, False)
    # independently: read the same examples from the cache, one at a time
    cache = LMCache(full_cache)
    p = r.tokens.shape[1] - r.completion.shape[1]
    s = completion_logits(trainer.student, r.tokens[:, :p], r.attention_mask[:, :p], r.completion, r.completion_mask)
    want = 0.0
    for b, i in enumerate(idx):
        ids, lp, tail = cache.example(i)
        n = ids.shape[0]
        assert n == int(r.completion_mask[b].sum())
        want = want + topk_token_divergence(s[b:b + 1, :n], ids[None], lp[None], tail[None], reduction="sum")
    torch.testing.assert_close(total, want, atol=1e-6, rtol=1e-6)


def test_cli_cache_build_then_run_with_a_small_k(tmp_path, capsys):
    raw = _raw(teacher={"model": TEACHER, "cache": str(tmp_path / "c4")}, train={**_raw()["train"], "steps": 2})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["cache", "build", str(path), "--topk", "4"]) == 0
    out = capsys.readouterr().out
    assert "cache built" in out and "top-4 of 15" in out
    assert main(["cache", "build", str(path)]) == 2  # --topk is required for a sequence config
    assert "--topk" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "summary.json").is_file()


def test_refusals_name_the_key(full_cache, tmp_path):
    cache = str(full_cache)
    with pytest.raises(ConfigError, match="mode must be 'supervised'"):
        parse_sequence_config(_raw(teacher={"cache": cache}, mode="on_policy", divergence={"kind": "reverse_kl"}))
    with pytest.raises(ConfigError, match="mode must be 'supervised'"):
        parse_sequence_config(_raw(teacher={"cache": cache}, mode="sequence_kd"))
    with pytest.raises(ConfigError, match="divergence.kind must be 'forward_kl'"):
        parse_sequence_config(_raw(teacher={"cache": cache}, divergence={"kind": "jsd"}))
    with pytest.raises(ConfigError, match="teacher.cache .*sync"):
        parse_sequence_config(_raw(teacher={"cache": cache, "sync": "ema"}))
    # another dataset (another seed draws other examples): the fingerprint differs
    with pytest.raises(ConfigError, match=r"teacher\.cache: .*fingerprint"):
        build_sequence(parse_sequence_config(_raw(teacher={"cache": cache}, seed=6)))
    # another tokenizer: BPE ids differ from the character ids
    bpe = {"kind": "bpe", "vocab_size": 15}
    with pytest.raises(ConfigError, match=r"teacher\.cache: "):
        build_sequence(parse_sequence_config(_raw(teacher={"cache": cache}, tokenizer=bpe)))
    # a character tokenizer with an extra symbol: same ids, another vocabulary size
    with pytest.raises(ConfigError, match="vocabulary of 15 tokens and the student 16"):
        build_sequence(parse_sequence_config(_raw(teacher={"cache": cache}, tokenizer={"kind": "char", "extra": "x"})))
    with pytest.raises(ConfigError, match="temperature"):
        build_sequence(parse_sequence_config(_raw(teacher={"cache": cache}, divergence={"kind": "forward_kl",
                                                                                        "temperature": 2.0})))
    other = {"kind": "tiny_gpt", "params": {"dim": 8, "depth": 1, "heads": 2, "max_len": 16}}
    with pytest.raises(ConfigError, match=r"teacher\.cache: .*teacher weights"):
        build_sequence(parse_sequence_config(_raw(teacher={"cache": cache, "model": other})))
    with pytest.raises(ConfigError, match=r"teacher\.cache: .*No LM teacher cache"):
        build_sequence(parse_sequence_config(_raw(teacher={"cache": str(tmp_path / "none")})))
    with pytest.raises(ConfigError, match="teacher.model or teacher.run"):
        build_sequence_cache(parse_sequence_config(_raw(teacher={"cache": cache})), tmp_path / "x", k=2)
