"""LinguDistill (#40): routed token KD, the grammar/caption data, the tiny LM, the recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillery import FrozenTeacher
from distillery.data import load_dataset
from distillery.data.miniature.language import (
    _INTRANS,
    _NOUN,
    _VERB,
    ANSWER_POSITION,
    DIGIT_WORDS,
    TOKEN,
    VOCAB,
    pack_multimodal,
    sample_sentence,
    unpack_multimodal,
)
from distillery.errors import ShapeError
from distillery.models import build_model
from distillery.objectives.routed import RoutedTokenKD, routed_token_kd_loss
from distillery.recipes.lingudistill import (
    caption_accuracy,
    language_perplexity,
    lingudistill_distiller,
    recovered_fraction,
)


def test_routed_kd_against_an_explicit_loop():
    torch.manual_seed(0)
    s = torch.randn(3, 4, 5, dtype=torch.float64)
    t = torch.randn(3, 4, 5, dtype=torch.float64)
    route = torch.tensor([True, False, True])
    targets = torch.tensor([[1, 2, -1, 0], [1, 1, 1, 1], [-1, -1, 3, 4]])
    T = 2.0
    per_pos = {}
    for b in range(3):
        for i in range(4):
            if route[b] and targets[b, i] >= 0:
                p = torch.softmax(t[b, i] / T, 0)
                q = torch.softmax(s[b, i] / T, 0)
                per_pos[(b, i)] = T * T * float((p * (p / q).log()).sum())
    got = routed_token_kd_loss(s, t, route, targets, T)
    assert got.item() == pytest.approx(sum(per_pos.values()) / len(per_pos), rel=1e-12)
    none = routed_token_kd_loss(s, t, route, targets, T, reduction="none")
    assert none[1].item() == 0.0
    assert none[0].item() == pytest.approx((per_pos[(0, 0)] + per_pos[(0, 1)] + per_pos[(0, 3)]) / 3, rel=1e-12)
    # nothing routed: zero, still attached to the graph
    s_req = s.clone().requires_grad_(True)
    zero = routed_token_kd_loss(s_req, t, torch.zeros(3, dtype=torch.bool), targets)
    zero.backward()
    assert zero.item() == 0.0 and torch.count_nonzero(s_req.grad) == 0


def test_routed_kd_gradcheck_and_shape_errors():
    torch.manual_seed(1)
    s = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, dtype=torch.float64)
    route = torch.tensor([1, 1])
    targets = torch.tensor([[0, -1, 2], [1, 1, -1]])
    assert torch.autograd.gradcheck(lambda z: RoutedTokenKD(1.5)(z, t, route, targets), (s,))
    with pytest.raises(ShapeError, match="route must have shape"):
        routed_token_kd_loss(s, t, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"\[B, L, V\]"):
        routed_token_kd_loss(s[:, 0], t[:, 0], route)


def test_grammar_agreement_and_caption_layout():
    rng = np.random.default_rng(0)
    for _ in range(200):
        words = sample_sentence(rng)
        # the subject is the first noun; its verb is the first verb form after the subject NP
        first_noun = next(w for w in words if w in _NOUN["sg"] + _NOUN["pl"])
        num = "sg" if first_noun in _NOUN["sg"] else "pl"
        verbs = [w for w in words if w in _VERB["sg"] + _VERB["pl"] + _INTRANS["sg"] + _INTRANS["pl"]]
        assert verbs[0] in _VERB[num] + _INTRANS[num]
        assert words[-1] == "."
    splits = load_dataset("grammar_vlm", mode="mixture", n_train=40, n_test=10, seq_len=12, seed=3)
    has_image, feats, tokens = unpack_multimodal(splits.train.x)
    torch.testing.assert_close(pack_multimodal(has_image, feats, tokens), splits.train.x)
    assert int(has_image.sum()) == 20
    caps = tokens[has_image]
    assert all(VOCAB[int(t)] in DIGIT_WORDS for t in caps[:, ANSWER_POSITION])
    assert (splits.train.y[has_image] == -1).all() and (splits.train.y[~has_image] >= 0).all()
    assert (feats[~has_image] == 0).all() and (caps[:, 0] == TOKEN["<bos>"]).all()


def _tiny(seed=0):
    torch.manual_seed(seed)
    return build_model("tiny_lm", (1 + 64 + 8,), len(VOCAB), dim=16, layers=1, heads=2, prefix_tokens=2).double()


def test_tiny_lm_is_causal_and_text_only_samples_ignore_the_image_slot():
    model = _tiny().eval()
    tokens = torch.randint(3, len(VOCAB), (2, 8))
    feats = torch.randn(2, 64, dtype=torch.float64)
    x = pack_multimodal(torch.tensor([False, True]), feats, tokens).double()
    out = model(x)
    x2 = x.clone()
    x2[:, 1 + 64 + 5] = 3.0  # change token 5
    out2 = model(x2)
    torch.testing.assert_close(out["tokens"][:, :5], out2["tokens"][:, :5])  # positions < 5 unaffected
    x3 = x.clone()
    x3[0, 1:65] = 7.0  # features of the text-only sample are not read
    torch.testing.assert_close(model(x3)["tokens"][0], out["tokens"][0])
    assert out["targets"][:, :-1].tolist() == tokens[:, 1:].tolist() and (out["targets"][:, -1] == -1).all()
    assert out["language"].tolist() == [True, False]
    torch.testing.assert_close(out["logits"], out["tokens"][:, -1])


def test_distiller_step_is_ce_plus_kd_on_language_samples_only():
    student, teacher = _tiny(1), _tiny(2)
    splits = load_dataset("grammar_vlm", mode="mixture", n_train=6, n_test=2, seq_len=8, seed=4)
    x = splits.train.x.double()
    d = lingudistill_distiller(student, teacher, temperature=1.0, kd_weight=0.5)
    batch = {"x": x, "y": splits.train.y}
    d.prepare(batch)
    d.train()
    losses = d.step(batch)
    so, to = student(x), teacher.eval()(x)
    ce = F.cross_entropy(so["tokens"][so["targets"] >= 0], so["targets"][so["targets"] >= 0])
    counted = so["language"][:, None] & (so["targets"] >= 0)
    p, log_q = F.softmax(to["tokens"], -1), F.log_softmax(so["tokens"], -1)
    kl = (p * (p.log() - log_q)).sum(-1)[counted].mean()
    torch.testing.assert_close(losses["loss"], ce + 0.5 * kl)
    assert isinstance(d.teacher, FrozenTeacher)


def test_metrics_and_recovered_fraction():
    model = _tiny(3)
    splits = load_dataset("grammar_vlm", mode="mixture", n_train=8, n_test=2, seq_len=8, seed=5)
    x = splits.train.x.double()
    out = model.eval()(x)
    keep = out["targets"] >= 0
    nll = -F.log_softmax(out["tokens"], -1)[keep].gather(-1, out["targets"][keep][:, None]).mean()
    assert language_perplexity(model, x, batch_size=3) == pytest.approx(math.exp(float(nll.detach())), rel=1e-9)
    caps = x[x[:, 0] > 0.5]
    pred = model(caps)["tokens"][:, ANSWER_POSITION - 1].argmax(-1)
    want = float((pred == caps[:, 1 + 64 + ANSWER_POSITION].long()).float().mean())
    assert caption_accuracy(model, caps) == want
    assert recovered_fraction(10.0, 20.0, 19.0) == pytest.approx(0.1)
    assert recovered_fraction(10.0, 20.0, 21.0) == pytest.approx(-0.1)


# --- on the sequence engine: the router as a token mask, the LM contract for the language head ---


def test_routed_kd_is_the_sequence_engines_token_divergence_under_the_router_mask():
    from distillery.sequence.divergences import token_divergence
    from distillery.sequence.vlm import router_mask, routed_token_divergence

    torch.manual_seed(2)
    s = torch.randn(3, 5, 7, dtype=torch.float64)
    t = torch.randn(3, 5, 7, dtype=torch.float64)
    route = torch.tensor([1, 0, 1])
    targets = torch.tensor([[1, -1, 2, 0, -1], [3, 3, 3, 3, 3], [-1, -1, -1, -1, -1]])
    mask = router_mask(route, targets)
    assert mask.tolist() == [[True, False, True, True, False], [False] * 5, [False] * 5]
    assert router_mask(route.bool(), None, 2).tolist() == [[True, True], [False, False], [True, True]]
    # forward KL at T = 3 written out, mean over the three counted tokens
    T = 3.0
    want = []
    for b, i in mask.nonzero().tolist():
        log_p, log_q = torch.log_softmax(t[b, i] / T, 0), torch.log_softmax(s[b, i] / T, 0)
        want.append(T * T * float((log_p.exp() * (log_p - log_q)).sum()))
    got = routed_token_divergence(s, t, route, targets, temperature=T)
    assert got.item() == pytest.approx(sum(want) / 3, rel=1e-12)
    assert routed_token_kd_loss(s, t, route, targets, T).item() == pytest.approx(got.item(), rel=1e-12)
    # every kind of the engine is available to the router
    for kind in ("reverse_kl", "jsd", "tvd"):
        torch.testing.assert_close(routed_token_divergence(s, t, route, targets, kind, reduction="none"),
                                   token_divergence(s, t, mask, kind, reduction="none"))
    # routed_kd's "none": each sample's mean over its counted tokens
    none = routed_token_kd_loss(s, t, route, targets, T, reduction="none")
    assert none.tolist()[1:] == [0.0, 0.0] and none[0].item() == pytest.approx(sum(want) / 3, rel=1e-12)
    with pytest.raises(ShapeError, match="route must have shape"):
        routed_token_divergence(s, t, route[:2], targets)


def _packed_language_batch(n=4, seq_len=8, seed=6):
    splits = load_dataset("grammar_vlm", mode="mixture", n_train=n, n_test=2, seq_len=seq_len, seed=seed)
    return splits.train.x.double()


def test_tiny_lm_language_head_follows_the_lm_contract():
    from distillery.errors import ConfigError
    from distillery.sequence.models import LMOutput
    from distillery.sequence.vlm import TinyLMLanguageHead, language_lm

    model = _tiny(4).eval()
    x = _packed_language_batch()
    has_image, _, tokens = unpack_multimodal(x)
    lm = language_lm(model)
    assert isinstance(lm, TinyLMLanguageHead) and language_lm(lm) is lm and (lm.vocab_size, lm.max_len) == (len(VOCAB), 8)
    out = lm(tokens)
    assert isinstance(out, LMOutput) and out.past is None
    # text-only samples: the packed forward's logits; hidden is what the head multiplies
    torch.testing.assert_close(out.logits[~has_image], model(x)["tokens"][~has_image])
    torch.testing.assert_close(model.head(out.hidden), out.logits)
    # fewer tokens, and right padding, leave the earlier positions as they were (causal)
    torch.testing.assert_close(lm(tokens[:, :5]).logits, out.logits[:, :5])
    pad = torch.ones_like(tokens)
    pad[:, 6:] = 0
    torch.testing.assert_close(lm(tokens, pad).logits[:, :6], out.logits[:, :6])
    with pytest.raises(ConfigError, match="only pad on the right"):
        lm(tokens, pad.flip(1))
    with pytest.raises(ConfigError, match="no key/value cache"):
        lm(tokens, use_cache=True)
    with pytest.raises(ConfigError, match="exceeds the context"):
        lm(torch.zeros(1, 9, dtype=torch.long))


def test_language_kd_on_the_lm_contract_equals_the_routed_kd_objective():
    from distillery.sequence.vlm import language_kd_loss

    student, teacher = _tiny(5), _tiny(6).eval()
    x = _packed_language_batch(n=6, seed=7)
    out = student(x)
    with torch.no_grad():
        t_out = teacher(x)
    objective = RoutedTokenKD(2.0)(out["tokens"], t_out["tokens"], out["language"], out["targets"])
    (g_obj,) = torch.autograd.grad(objective, student.embed.weight)
    # the same KD through the contract: the language-only rows, their next-token targets as the mask
    lang = out["language"]
    tokens = unpack_multimodal(x)[2][lang]
    kd = language_kd_loss(student, teacher, tokens, out["targets"][lang] >= 0, temperature=2.0)
    (g_kd,) = torch.autograd.grad(kd, student.embed.weight)
    torch.testing.assert_close(kd, objective)
    torch.testing.assert_close(g_kd, g_obj)


def test_language_kd_runs_unchanged_on_hugging_face_language_models():
    pytest.importorskip("transformers")
    from distillery.sequence.divergences import token_divergence
    from distillery.sequence.models import TinyGPT, copy_into_gpt2
    from distillery.sequence.vlm import language_kd_loss

    torch.manual_seed(8)
    tiny_student = TinyGPT(vocab=len(VOCAB), dim=16, depth=1, heads=2, max_len=16).double()
    tiny_teacher = TinyGPT(vocab=len(VOCAB), dim=16, depth=1, heads=2, max_len=16).double()
    hf_student, hf_teacher = copy_into_gpt2(tiny_student), copy_into_gpt2(tiny_teacher)
    ids = torch.randint(3, len(VOCAB), (3, 10))
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False
    ours = language_kd_loss(tiny_student, tiny_teacher, ids, mask, kind="jsd", beta=0.3)
    hf = language_kd_loss(hf_student, hf_teacher, ids, mask, kind="jsd", beta=0.3)
    want = token_divergence(hf_student(ids).logits, hf_teacher(ids).logits, mask, "jsd", beta=0.3)
    torch.testing.assert_close(hf, want)
    torch.testing.assert_close(hf, ours)
    hf.backward()
    assert hf_student.transformer.wte.weight.grad is not None
    assert all(p.grad is None for p in hf_teacher.parameters())
