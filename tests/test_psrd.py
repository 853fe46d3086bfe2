"""PSRD (Zhang et al. 2026, arXiv:2604.17982): captions task, reward head, phase-guided decoding,
self-evaluation; each checked against values or formulas written here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distillery.errors import ConfigError, DataError, ShapeError
from distillery.recipes import psrd
from distillery.sequence.tasks.captions import CaptionTask, hallucination_rate
from distillery.sequence.guided import Candidates, head_scorer, likelihood_scorer, phase_features, phase_guided_decode
from distillery.sequence.models import TinyGPT
from distillery.sequence.reward_head import RewardHead, fit_reward_head, reward_head_loss
from distillery.sequence.sampler import generate
from distillery.sequence.tokenizers import CharTokenizer

TASK = CaptionTask()
TOK = CharTokenizer(TASK.alphabet)


def _lm(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    lm = TinyGPT(vocab=TOK.vocab_size, dim=16, depth=1, heads=2, max_len=32).eval()
    with torch.no_grad():  # larger logits than GPT-2's init, so that samples differ between tokens
        lm.wte.weight.mul_(20.0)
    return lm.requires_grad_(False)


# -- the captions task ---------------------------------------------------------------------------
def test_captions_task_ground_truth_by_hand():
    assert TASK.objects == "ABCDEFGH" and TASK.colors == "rgby"
    assert TASK.parse_scene("Ar Bg Db=") == {"A": "r", "B": "g", "D": "b"}
    assert TASK.parse_scene("=") is None
    assert TASK.answer("Ar Bg Db=") == "Ar,Bg,Db"
    # hallucinated: an absent object (C), a wrong colour (Ab), malformed (A, Xr)
    assert TASK.clause_verdicts("Ar Bg Db=", "Bg,Cr,Ab,Db") == [False, True, True, False]
    assert TASK.clause_verdicts("Ar Bg Db=", "A,Db") == [True, False]
    assert TASK.clause_verdicts("Ar Bg Db=", "") == []
    assert TASK.clause_verdicts("=", "Cy,Hb") == [False, False]
    assert TASK.verify("Ar Bg Db=", "Db,Ar,Bg") == (1.0, "correct")
    assert TASK.verify("Ar Bg Db=", "Db,Ar")[0] == 0.0
    assert TASK.verify("Ar Bg Db=", "Db,Ar,Ar")[0] == 0.0
    assert TASK.verify("Ar Bg Db=", "Db,Ag,Bg") == (0.0, "hallucinated clause 'Ag'")
    # 5 absent objects x 4 colours + 3 scene objects x 3 wrong colours
    assert len(TASK.contradicting({"A": "r", "B": "g", "D": "b"})) == 29
    with pytest.raises(DataError):
        TASK.parse_scene("Ar Ag=")
    with pytest.raises(ConfigError, match="noise"):
        CaptionTask(noise=1.5)


def test_hallucination_rate_by_hand():
    out = hallucination_rate(TASK, ["Ar Bg Db=", "Ar Bg Db="], ["Bg,Cr,Db", "Ar"])
    assert out["rate"] == pytest.approx(1 / 4)
    assert out["clauses_per_caption"] == pytest.approx(2.0)
    assert out["object_recall"] == pytest.approx(3 / 6)


def test_training_captions_have_the_stated_noise_and_blank_shares():
    task = CaptionTask(noise=0.3, blank=0.2)
    ex = task.sample(3000, torch.Generator().manual_seed(0))
    blank = [e for e in ex if e.prompt == "="]
    assert abs(len(blank) / 3000 - 0.2) < 0.03
    flags = [f for e in ex if e.prompt != "=" for f in task.clause_verdicts(e.prompt, e.answer)]
    assert abs(sum(flags) / len(flags) - 0.3) < 0.02
    assert all(len(e.answer.split(",")) == 3 for e in ex)
    assert all(not any(task.clause_verdicts(e.prompt, e.answer)) for e in task.scenes(200, torch.Generator().manual_seed(1)))


def test_config_names_the_task_and_validates():
    from distillery.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "psrd_captions.yaml")
    assert cfg.data.task.name == psrd.TASK and cfg.divergence.kind == "ce"


# -- the reward head -------------------------------------------------------------------------------
def test_reward_head_loss_is_bce_written_out():
    r = torch.tensor([2.0, -1.0, 0.3, -4.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.25, 1.0], dtype=torch.float64)
    p = [1 / (1 + math.exp(-v)) for v in r.tolist()]
    ref = -sum(t * math.log(q) + (1 - t) * math.log(1 - q) for t, q in zip(y.tolist(), p)) / 4
    assert float(reward_head_loss(r, y)) == pytest.approx(ref, rel=1e-12)
    assert torch.autograd.gradcheck(lambda z: reward_head_loss(z, y), (r.clone().requires_grad_(True),))
    with pytest.raises(ShapeError):
        reward_head_loss(r, y[:3])
    with pytest.raises(ShapeError):
        reward_head_loss(r, y * 2)


def test_reward_head_fits_a_separable_labelling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, 0] - 0.5 * x[:, 3] > 0).float()
    head = fit_reward_head(x, y, hidden=16, steps=300, lr=1e-2, seed=0)
    assert isinstance(head, RewardHead)
    assert float(((head(x) > 0).float() == y).float().mean()) > 0.95
    again = fit_reward_head(x, y, hidden=16, steps=300, lr=1e-2, seed=0)
    torch.testing.assert_close(head(x), again(x))  # seeded


# -- phase-guided decoding --------------------------------------------------------------------------
def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    return [TOK.encode(e.prompt, add_bos=True) for e in TASK.scenes(n, torch.Generator().manual_seed(seed))]


def test_one_candidate_is_the_ancestral_sampler():
    lm, comma = _lm(), TOK.encode(",")
    prompt = _prompts(1)[0]
    for seed in range(3):
        res = phase_guided_decode(lm, [prompt], phase_end_ids=comma, eos_id=TOK.eos_id, pad_id=TOK.pad_id,
                                  max_phase_tokens=12, max_phases=12, max_new_tokens=12,
                                  generator=torch.Generator().manual_seed(seed))
        ref = generate(lm, torch.tensor([prompt]), max_new_tokens=12, eos_id=TOK.eos_id, pad_id=TOK.pad_id,
                       generator=torch.Generator().manual_seed(seed))
        want = [t for t, m in zip(ref.completion[0].tolist(), ref.completion_mask[0].tolist()) if m]
        assert res.completions[0] == want
        assert res.lm_steps == len(want)
        # phases end at the commas / EOS
        assert res.phases[0] == sum(1 for t in want if t in (*comma, TOK.eos_id)) + (0 if want[-1] in (*comma, TOK.eos_id) else 1)


def test_candidates_carry_the_lms_hidden_state_and_log_probability():
    lm, seen = _lm(1), []

    def spy(c: Candidates) -> torch.Tensor:
        seen.append(c)
        return torch.zeros(len(c.phase))

    phase_guided_decode(lm, _prompts(3), phase_end_ids=TOK.encode(","), eos_id=TOK.eos_id, pad_id=TOK.pad_id,
                        scorer=spy, num_candidates=2, max_phase_tokens=3, max_phases=2,
                        generator=torch.Generator().manual_seed(0))
    c = seen[-1]
    for i in range(len(c.phase)):
        seq = c.prompt[i] + c.prefix[i] + c.phase[i]
        out = lm(torch.tensor([seq]))
        start = len(c.prompt[i]) + len(c.prefix[i])
        logp = out.logits[0].double().log_softmax(-1)
        per_token = [float(logp[start - 1 + k, t]) for k, t in enumerate(c.phase[i])]
        assert float(c.logprob[i]) == pytest.approx(sum(per_token), abs=1e-4)
        assert float(c.min_logprob[i]) == pytest.approx(min(per_token), abs=1e-4)
        torch.testing.assert_close(c.hidden[i], out.hidden[0, -1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c.hidden_mean[i], out.hidden[0, start:].mean(0), atol=1e-5, rtol=1e-4)
    feats = phase_features(c)
    assert feats.shape == (len(c.phase), 2 * 16 + 2)
    torch.testing.assert_close(feats[:, -2], c.logprob.float())
    assert c.row.tolist() == [0, 0, 1, 1, 2, 2]


def test_best_of_keeps_the_top_candidate_and_reject_the_first_accepted():
    lm = _lm(2)
    prompts = _prompts(4, seed=3)
    kept: dict[str, list] = {"best_of": [], "reject": []}
    cost: dict[str, int] = {}
    for strategy in ("best_of", "reject"):
        log = []

        def score(c: Candidates) -> torch.Tensor:  # a fixed, known preference: the first token's id
            s = torch.tensor([float(p[0]) if p else -1.0 for p in c.phase])
            log.append((c, s))
            return s

        res = phase_guided_decode(lm, prompts, phase_end_ids=TOK.encode(","), eos_id=TOK.eos_id, pad_id=TOK.pad_id,
                                  scorer=score, num_candidates=3, strategy=strategy, threshold=10.0,
                                  max_phase_tokens=3, max_phases=1, generator=torch.Generator().manual_seed(0))
        c, s = log[0]
        s = s.reshape(4, 3)
        expected_steps = 0
        for b in range(4):
            if strategy == "best_of":
                j = int(s[b].argmax())
                expected_steps += sum(len(c.phase[b * 3 + k]) for k in range(3))
            else:
                ok = (s[b] >= 10.0).nonzero()
                j = int(ok[0, 0]) if ok.numel() else int(s[b].argmax())
                upto = j + 1 if ok.numel() else 3
                expected_steps += sum(len(c.phase[b * 3 + k]) for k in range(upto))
            assert res.completions[b] == c.phase[b * 3 + j]
            assert res.scores[b] == [float(s[b, j])]
        assert res.lm_steps == expected_steps
        kept[strategy], cost[strategy] = res.completions, res.lm_steps
    assert cost["reject"] <= cost["best_of"]


def test_guided_decoding_rejects_bad_arguments():
    lm, p = _lm(), _prompts(1)
    kw = dict(phase_end_ids=[], eos_id=TOK.eos_id, pad_id=TOK.pad_id)
    with pytest.raises(ConfigError, match="scorer"):
        phase_guided_decode(lm, p, num_candidates=2, **kw)
    with pytest.raises(ConfigError, match="strategy"):
        phase_guided_decode(lm, p, scorer=likelihood_scorer, num_candidates=2, strategy="beam", **kw)
    with pytest.raises(ConfigError, match="context"):
        phase_guided_decode(lm, p, max_new_tokens=40, **kw)


# -- self-evaluation and distillation ---------------------------------------------------------------
def test_self_evaluation_is_the_pointwise_mutual_information():
    lm = _lm(4)
    ref_prompt = TOK.encode("=", add_bos=True)
    judge = psrd.SelfEvaluation(lm, ref_prompt, TOK.pad_id, record=True)
    phase_guided_decode(lm, _prompts(3, seed=5), phase_end_ids=TOK.encode(","), eos_id=TOK.eos_id, pad_id=TOK.pad_id,
                        scorer=judge, num_candidates=2, max_phase_tokens=3, max_phases=2,
                        generator=torch.Generator().manual_seed(1))

    def logp(context: list[int], phase: list[int]) -> float:
        out = lm(torch.tensor([context + phase])).logits[0].double().log_softmax(-1)
        return sum(float(out[len(context) - 1 + k, t]) for k, t in enumerate(phase))

    assert len(judge.records) >= 6  # 3 rows x 2 candidates in the first phase, more in the second
    for r in judge.records:
        want = logp(r["prompt"] + r["prefix"], r["phase"]) - logp(ref_prompt + r["prefix"], r["phase"])
        assert r["score"] == pytest.approx(want, abs=1e-4)
    assert judge.lm_steps == sum(len(r["phase"]) for r in judge.records)


def test_self_reward_labels():
    s = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    assert psrd.self_reward_labels(s).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert psrd.self_reward_labels(s, tau=1.0).tolist() == [0.0, 0.0, 0.0, 1.0]
    soft = psrd.self_reward_labels(s, tau=0.5, soft=True)
    torch.testing.assert_close(soft, torch.sigmoid(s - 0.5))


def test_reward_head_scorer_steers_decoding_toward_what_it_rewards():
    """A head that rewards one hidden direction: best-of-4 raises the mean kept score above plain sampling."""
    lm = _lm(6)
    torch.manual_seed(0)
    head = RewardHead(2 * 16 + 2, 8)  # phase_features: last + mean hidden, summed + lowest log-prob
    prompts = _prompts(16, seed=7)
    kw = dict(phase_end_ids=TOK.encode(","), eos_id=TOK.eos_id, pad_id=TOK.pad_id, max_phase_tokens=3, max_phases=3)
    plain = phase_guided_decode(lm, prompts, scorer=head_scorer(head), generator=torch.Generator().manual_seed(0), **kw)
    best = phase_guided_decode(lm, prompts, scorer=head_scorer(head), num_candidates=4,
                               generator=torch.Generator().manual_seed(0), **kw)
    mean = lambda r: sum(sum(s) / len(s) for s in r.scores) / len(r.scores)  # noqa: E731
    assert mean(best) > mean(plain)
    assert best.lm_steps > plain.lm_steps
