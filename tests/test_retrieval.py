"""Retrieval and dual-encoder evaluation metrics, against explicit loops."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ConfigError, ShapeError
from distillery.evaluation.retrieval import (
    few_shot_probe,
    hard_negative_accuracy,
    recall_at_k,
    retrieval_metrics,
    zero_shot_accuracy,
)


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _loop_recall(image, text, k, direction):
    """Rank with plain Python: a query hits if its own pair is among the k best gallery items."""
    queries, gallery = (image, text) if direction == "i2t" else (text, image)
    hits = 0
    for i, q in enumerate(queries):
        scores = [(_cos(q, g), j) for j, g in enumerate(gallery)]
        ranked = [j for _, j in sorted(scores, key=lambda s: -s[0])]
        hits += i in ranked[:k]
    return hits / len(queries)


def test_retrieval_metrics_match_an_explicit_ranking_loop():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(12, 5, generator=g)
    text = image + 0.9 * torch.randn(12, 5, generator=g)   # noisy pairs: some hits, some misses
    m = retrieval_metrics(image, text, ks=(1, 3))
    il, tl = image.tolist(), text.tolist()
    for k in (1, 3):
        assert m[f"i2t_r{k}"] == pytest.approx(_loop_recall(il, tl, k, "i2t"))
        assert m[f"t2i_r{k}"] == pytest.approx(_loop_recall(il, tl, k, "t2i"))
        assert m[f"r{k}"] == pytest.approx((m[f"i2t_r{k}"] + m[f"t2i_r{k}"]) / 2)
    assert 0.0 < m["i2t_r1"] < 1.0


def test_class_level_recall_counts_any_item_of_the_query_class():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    text = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.05]])
    labels = torch.tensor([0, 0, 1])
    m = retrieval_metrics(image, text, ks=(1,), labels=labels)
    # image 0 -> text 1, image 1 -> text 0 (same class 0: class hits, instance misses); image 2 -> text 2
    assert m["class_i2t_r1"] == pytest.approx(1.0)
    assert m["i2t_r1"] == pytest.approx(1 / 3)
    # text 0 -> image 1 (class 0: hit), text 1 -> image 0 (hit), text 2 -> image 0 (cos 0.9988 > 0.9982; class 0 != 1)
    assert m["class_t2i_r1"] == pytest.approx(2 / 3)
    assert m["t2i_r1"] == pytest.approx(0.0)


def test_recall_at_k_with_explicit_positives_and_errors():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])
    pos = torch.tensor([[True, False, False], [False, False, True]])
    assert recall_at_k(scores, 1, pos) == 0.0
    assert recall_at_k(scores, 2, pos) == 0.5
    assert recall_at_k(scores, 3, pos) == 1.0
    with pytest.raises(ShapeError):
        recall_at_k(scores, 1)            # diagonal positives need a square matrix
    with pytest.raises(ConfigError):
        recall_at_k(scores, 0, pos)


def test_zero_shot_and_hard_negative_accuracy_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.1]])
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert zero_shot_accuracy(image, prompts, torch.tensor([0, 1, 0])) == pytest.approx(2 / 3)
    positive = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0]])
    negatives = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    # comparisons: (0) 0.995>0 yes, 0.995>1 no; (1) yes, no; (2) cos(i,[1,1])~0.999 > cos(i,e1), cos(i,e2): yes, yes
    assert hard_negative_accuracy(image, positive, negatives) == pytest.approx(4 / 6)
    with pytest.raises(ShapeError):
        hard_negative_accuracy(image, positive, negatives[:, :, :1])


def test_few_shot_probe_separates_separable_classes_and_checks_shots():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    y = torch.arange(60) % 3
    x = centers[y] + 0.3 * torch.randn(60, 2, generator=g)
    assert few_shot_probe(x[:30], y[:30], x[30:], y[30:], shots=3, seed=0) == 1.0
    with pytest.raises(ConfigError, match="fewer than shots"):
        few_shot_probe(x[:30], y[:30], x[30:], y[30:], shots=20)
