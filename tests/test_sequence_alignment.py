"""Cross-tokenizer alignment: ULD against a formula, span grouping on hand-built cases,
span-merged divergence against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ConfigError, DataError, ShapeError
from distillery.sequence.alignment import align_spans, span_merged_divergence, uld_loss
from distillery.sequence.divergences import token_divergence
from distillery.sequence.estimators import token_logprobs

# --------------------------------------------------------------------------------------
# ULD
# --------------------------------------------------------------------------------------


def uld_reference(s, t, ms, mt, T=1.0):
    """Per aligned position, in plain Python: k-th counted student row with k-th counted
    teacher row, probabilities sorted decreasingly, zero-padded, L1 distance."""
    out = []
    for b in range(s.shape[0]):
        rows_s = [i for i in range(s.shape[1]) if ms[b, i]]
        rows_t = [i for i in range(t.shape[1]) if mt[b, i]]
        values = []
        for i, j in zip(rows_s, rows_t):
            ps = sorted(torch.softmax(s[b, i].double() / T, -1).tolist(), reverse=True)
            pt = sorted(torch.softmax(t[b, j].double() / T, -1).tolist(), reverse=True)
            n = max(len(ps), len(pt))
            ps += [0.0] * (n - len(ps))
            pt += [0.0] * (n - len(pt))
            values.append(sum(abs(a - c) for a, c in zip(ps, pt)))
        out.append(values)
    return out


def _uld_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(3, 6, 7, generator=g, dtype=torch.float64) * 2
    t = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 2
    ms = torch.rand(3, 6, generator=g) > 0.3
    mt = torch.rand(3, 5, generator=g) > 0.2
    ms[0] = False  # a sequence with no student position counts: nothing aligned
    return s, t, ms, mt


def test_uld_matches_the_formula_with_positions_aligned_by_order():
    s, t, ms, mt = _uld_data()
    ref = uld_reference(s, t, ms, mt, T=1.3)
    got = uld_loss(s, t, ms, mt, temperature=1.3, reduction="none")
    assert got.shape[1] == max(len(r) for r in ref)
    for b, values in enumerate(ref):
        torch.testing.assert_close(got[b, : len(values)], torch.tensor(values, dtype=torch.float64))
        assert (got[b, len(values):] == 0).all()
    flat = [v for values in ref for v in values]
    torch.testing.assert_close(uld_loss(s, t, ms, mt, temperature=1.3), torch.tensor(sum(flat) / len(flat), dtype=torch.float64))
    torch.testing.assert_close(uld_loss(s, t, ms, mt, temperature=1.3, reduction="sum"), torch.tensor(sum(flat), dtype=torch.float64))


def test_uld_sees_only_the_shape_of_the_distributions():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(2, 4, 9, generator=g, dtype=torch.float64)
    perm = torch.randperm(9, generator=g)
    assert uld_loss(t[..., perm], t).abs().max() < 1e-12  # a relabelled vocabulary costs nothing
    wide = torch.cat([t, torch.full((2, 4, 3), -math.inf, dtype=torch.float64)], -1)
    assert uld_loss(wide, t).abs().max() < 1e-12  # extra words of probability 0 cost nothing
    one_hot_s = torch.tensor([[[50.0, 0, 0]]], dtype=torch.float64)
    uniform_t = torch.zeros(1, 1, 5, dtype=torch.float64)
    torch.testing.assert_close(uld_loss(one_hot_s, uniform_t), torch.tensor(2 * (1 - 0.2), dtype=torch.float64))


def test_uld_gradcheck_and_empty_alignment():
    s, t, ms, mt = _uld_data(seed=2)
    s = s[:, :3, :4].clone().requires_grad_(True)
    t = t[:, :3, :6]
    assert torch.autograd.gradcheck(lambda x: uld_loss(x, t, ms[:, :3], mt[:, :3]), (s,))
    none = uld_loss(s, t, torch.zeros(3, 3, dtype=torch.bool), None)
    assert none.item() == 0.0


def test_uld_bad_input():
    s, t, ms, mt = _uld_data()
    with pytest.raises(ShapeError, match="mask"):
        uld_loss(s, t, ms[:, :2], mt)
    with pytest.raises(ShapeError, match="same B"):
        uld_loss(s, t[:2], ms, mt[:2])
    with pytest.raises(ConfigError, match="reduction"):
        uld_loss(s, t, ms, mt, reduction="seq_mean")


# --------------------------------------------------------------------------------------
# span alignment
# --------------------------------------------------------------------------------------


def test_digits_against_two_digit_chunks():
    """"1234" as "1","2","3","4" (student) and "12","34" (teacher)."""
    groups = align_spans([(0, 1), (1, 2), (2, 3), (3, 4)], [(0, 2), (2, 4)])
    assert groups == [((0, 1), (0,)), ((2, 3), (1,))]


def test_hand_built_alignments():
    # identical tokenizations: one group per token
    assert align_spans([(0, 2), (2, 5)], [(0, 2), (2, 5)]) == [((0,), (0,)), ((1,), (1,))]
    # crossing boundaries merge until both sides end together: "abcd" as ab|cd vs a|bc|d
    assert align_spans([(0, 2), (2, 4)], [(0, 1), (1, 3), (3, 4)]) == [((0, 1), (0, 1, 2))]
    # a special token with an empty span (BOS) belongs to no group; skipped whitespace is
    # absorbed: "ab cd" as [BOS] ab | cd  vs  a | b | cd
    assert align_spans([(0, 0), (0, 2), (3, 5)], [(0, 1), (1, 2), (3, 5)]) == [((1,), (0, 1)), ((2,), (2,))]
    # "ab cd" as "ab", " cd" against "ab ", "cd": the ends 2 / 3 differ, then meet at 5
    assert align_spans([(0, 2), (2, 5)], [(0, 3), (3, 5)]) == [((0, 1), (0, 1))]
    assert align_spans([], []) == []


def test_spans_that_cannot_be_aligned_are_refused():
    with pytest.raises(DataError, match="same text"):
        align_spans([(0, 1), (1, 2)], [(0, 3)])
    with pytest.raises(DataError, match="overlap"):
        align_spans([(0, 2), (1, 3)], [(0, 3)])
    with pytest.raises(DataError, match="start <= end"):
        align_spans([(2, 1)], [(0, 1)])
    with pytest.raises(DataError, match="none"):
        align_spans([(0, 1)], [(0, 0)])


# --------------------------------------------------------------------------------------
# span-merged divergence
# --------------------------------------------------------------------------------------


def _bern_kl(a, b):
    return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))


def test_span_merged_divergence_by_hand_on_the_digit_case():
    groups = [align_spans([(0, 1), (1, 2), (2, 3), (3, 4)], [(0, 2), (2, 4)])]
    student = torch.tensor([[0.5, 0.4, 0.9, 0.2]], dtype=torch.float64).log()  # P_s: .2, .18
    teacher = torch.tensor([[0.3, 0.1]], dtype=torch.float64).log()  # P_t: .3, .1
    fwd = span_merged_divergence(student, teacher, groups, reduction="none")[0]
    torch.testing.assert_close(fwd, torch.tensor([_bern_kl(0.3, 0.2), _bern_kl(0.1, 0.18)], dtype=torch.float64))
    rev = span_merged_divergence(student, teacher, groups, kind="reverse_kl", reduction="sum")
    torch.testing.assert_close(rev, torch.tensor(_bern_kl(0.2, 0.3) + _bern_kl(0.18, 0.1), dtype=torch.float64))
    torch.testing.assert_close(span_merged_divergence(student, teacher, groups), fwd.mean())


def test_span_merged_divergence_is_zero_when_the_pieces_agree_and_has_finite_gradients():
    groups = [[((0, 1), (0,)), ((2, 3), (1,))]]
    student = torch.tensor([[0.5, 0.4, 1.0, 1.0]], dtype=torch.float64).log().requires_grad_(True)
    teacher = torch.tensor([[0.2, 1.0]], dtype=torch.float64).log()  # a piece of probability 1
    out = span_merged_divergence(student, teacher, groups)
    assert abs(out.item()) < 1e-12
    out.backward()
    assert torch.isfinite(student.grad).all()
    s = (-torch.rand(1, 4, dtype=torch.float64) * 2 - 0.1).requires_grad_(True)
    t = -torch.rand(1, 2, dtype=torch.float64) * 2 - 0.1
    for kind in ("forward_kl", "reverse_kl"):
        assert torch.autograd.gradcheck(lambda x, kind=kind: span_merged_divergence(x, t, groups, kind=kind), (s,))


def test_end_to_end_digit_tokenizer_against_two_digit_chunks():
    """A character-level student and a two-digit-chunk teacher on the text "1234": the student's
    log-probabilities of its own tokens come from its logits, grouped by the span alignment."""
    g = torch.Generator().manual_seed(5)
    student_vocab = list("0123456789")
    teacher_vocab = [f"{a}{b}" for a in "0123456789" for b in "0123456789"]
    text = "1234"
    s_tokens = torch.tensor([[student_vocab.index(c) for c in text]])
    t_tokens = torch.tensor([[teacher_vocab.index(text[i : i + 2]) for i in (0, 2)]])
    s_logits = torch.randn(1, 4, 10, generator=g, dtype=torch.float64, requires_grad=True)
    t_logits = torch.randn(1, 2, 100, generator=g, dtype=torch.float64)
    groups = [align_spans([(i, i + 1) for i in range(4)], [(0, 2), (2, 4)])]
    loss = span_merged_divergence(token_logprobs(s_logits, s_tokens), token_logprobs(t_logits, t_tokens), groups)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(s_logits.grad).all()
    # without an alignment the vocabularies cannot be compared token by token
    with pytest.raises(ConfigError, match="align_spans") as info:
        token_divergence(s_logits[:, :2], t_logits, None, "forward_kl")
    assert "uld_loss" in str(info.value) and "10" in str(info.value) and "100" in str(info.value)


def test_span_merged_bad_input():
    lp = torch.zeros(1, 4)
    with pytest.raises(ConfigError, match="kind"):
        span_merged_divergence(lp, lp, [[]], kind="tvd")
    with pytest.raises(ShapeError, match="group lists"):
        span_merged_divergence(lp, lp, [[], []])
    with pytest.raises(ShapeError, match="position 7"):
        span_merged_divergence(lp, lp, [[((7,), (0,))]])
