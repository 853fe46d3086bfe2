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
