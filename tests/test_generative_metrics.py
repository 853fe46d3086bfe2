"""Sample-set metrics of the generative engine (distillery.generative.metrics), checked against
closed forms and formulas written here.

Closed forms: W_2 between 1-D Gaussians, sqrt((m1 - m2)^2 + (s1 - s2)^2); the sliced W_2 of a set
and its translate by v in D dimensions, |v| / sqrt(D) (E cos^2 = 1/D over the sphere); the RBF
MMD^2 between 1-D Gaussians, from E exp(-z^2 / 2h^2) = h / sqrt(h^2 + t^2) exp(-mu^2 / 2(h^2 + t^2))
for z ~ N(mu, t^2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillery.errors import ConfigError, ShapeError
from distillery.generative import metrics
from distillery.generative.metrics import (
    DigitFeatureNet,
    digit_feature_net,
    digits_fd,
    digits_reference,
    mmd,
    mode_coverage,
    sliced_wasserstein,
    timed_sampling,
)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------- sliced Wasserstein
def test_sliced_wasserstein_zero_on_itself_and_closed_form_on_a_translate():
    a = rng(0).standard_normal((2000, 2))
    assert sliced_wasserstein(a, a) == pytest.approx(0.0, abs=1e-12)
    shift = np.array([3.0, 4.0])  # |v| = 5: SW_2 = 5 / sqrt(2), up to the Monte-Carlo error of 256 directions
    assert sliced_wasserstein(a, a + shift) == pytest.approx(5 / math.sqrt(2), rel=0.05)
    assert sliced_wasserstein(torch.as_tensor(a), torch.as_tensor(a + shift)) == sliced_wasserstein(a, a + shift)


def test_sliced_wasserstein_of_1d_gaussians_matches_closed_form_w2():
    a = 0.0 + 1.0 * rng(1).standard_normal((20000, 1))
    b = 2.0 + 1.5 * rng(2).standard_normal((20000, 1))
    # in 1-D every direction is +-1, so a few directions give the exact W_2 of the samples
    assert sliced_wasserstein(a, b, projections=4) == pytest.approx(math.sqrt(4.0 + 0.25), rel=0.03)


def test_sliced_wasserstein_matches_formula_written_here():
    a, b = rng(3).standard_normal((100, 3)), rng(4).standard_normal((100, 3)) * 2 + 1
    theta = np.random.default_rng(7).standard_normal((3, 16))
    theta /= np.linalg.norm(theta, axis=0)
    pa, pb = np.sort(a @ theta, axis=0), np.sort(b @ theta, axis=0)
    by_hand = math.sqrt(np.mean((pa - pb) ** 2))
    assert sliced_wasserstein(a, b, projections=16, seed=7) == pytest.approx(by_hand, rel=1e-10)


# ------------------------------------------------------------------------------------------ MMD
def mmd2_by_hand(a: np.ndarray, b: np.ndarray, h: float) -> float:
    def k(u, v):
        return math.exp(-float(np.sum((u - v) ** 2)) / (2 * h * h))

    n, m = len(a), len(b)
    kaa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kbb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kab = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return kaa + kbb - 2 * kab


def test_mmd_matches_the_unbiased_estimator_written_here():
    a, b = rng(5).standard_normal((12, 2)), rng(6).standard_normal((9, 2)) + 0.5
    assert mmd(a, b, bandwidths=0.7) == pytest.approx(mmd2_by_hand(a, b, 0.7), rel=1e-10)
    multi = mmd(a, b, bandwidths=[0.5, 2.0])
    assert multi == pytest.approx((mmd2_by_hand(a, b, 0.5) + mmd2_by_hand(a, b, 2.0)) / 2, rel=1e-10)


def test_mmd_of_1d_gaussians_matches_closed_form():
    m1, s1, m2, s2, h = 0.0, 1.0, 1.0, 1.5, 1.0

    def e_k(mu, t2):
        return h / math.sqrt(h * h + t2) * math.exp(-mu * mu / (2 * (h * h + t2)))

    closed = e_k(0, 2 * s1**2) + e_k(0, 2 * s2**2) - 2 * e_k(m1 - m2, s1**2 + s2**2)
    a = m1 + s1 * rng(7).standard_normal((3000, 1))
    b = m2 + s2 * rng(8).standard_normal((3000, 1))
    assert mmd(a, b, bandwidths=h) == pytest.approx(closed, abs=0.01)  # closed = 0.128


def test_mmd_near_zero_on_itself_and_same_law_large_when_shifted():
    a, a2 = rng(9).standard_normal((1000, 2)), rng(10).standard_normal((1000, 2))
    assert abs(mmd(a, a)) < 2e-3  # unbiased: exactly 2/N (mean off-diagonal k - 1) on identical sets
    assert abs(mmd(a, a2)) < 5e-3
    assert mmd(a, a2 + 3.0) > 0.3


# -------------------------------------------------------------------------------- mode coverage
MEANS = np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], axis=1) * 4.0
STD = 0.1


def mixture_samples(modes: list[int], per_mode: int, seed: int) -> np.ndarray:
    g = rng(seed)
    return np.concatenate([MEANS[k] + STD * g.standard_normal((per_mode, 2)) for k in modes])


def test_mode_coverage_all_modes():
    out = mode_coverage(mixture_samples(list(range(8)), 200, 0), MEANS, STD)
    assert out["modes_covered"] == 8 and out["coverage"] == 1.0
    inside = 1 - math.exp(-9 / 2)  # P(chi^2_2 <= 9): the mass of a 2-D Gaussian within 3 std
    assert out["high_quality"] == pytest.approx(inside, abs=0.01)
    assert all(r == pytest.approx(1.0, abs=0.03) for r in out["per_mode_recall"])
    assert all(p == pytest.approx(inside, abs=0.03) for p in out["per_mode_precision"])
    assert out["kl_mode_histogram"] == pytest.approx(0.0, abs=2e-3)


def test_mode_coverage_half_the_modes():
    out = mode_coverage(mixture_samples([0, 2, 4, 6], 400, 1), MEANS, STD)
    assert out["modes_covered"] == 4 and out["coverage"] == 0.5
    assert out["kl_mode_histogram"] == pytest.approx(math.log(2), abs=2e-3)  # uniform on 4 of 8
    assert out["per_mode_recall"][1] == 0.0 and out["per_mode_recall"][0] == pytest.approx(1.0, abs=0.02)
    assert math.isnan(out["per_mode_precision"][1])  # no sample assigned to mode 1


def test_mode_coverage_off_mode_noise():
    noise = rng(2).uniform(-1.0, 1.0, size=(500, 2))  # the centre: >= 3 from every mode
    out = mode_coverage(noise, MEANS, STD)
    assert out["modes_covered"] == 0 and out["high_quality"] == 0.0
    assert out["kl_mode_histogram"] == math.inf
    assert all(p == 0.0 or math.isnan(p) for p in out["per_mode_precision"])


def test_mode_coverage_counts_by_hand():
    # mode 0: 3 on (at the mean) + 1 off (4 std away, still nearest); mode 1: 1 on; 8 samples expected per mode
    pts = np.array([MEANS[0]] * 3 + [MEANS[0] * (1 + 0.4 / 4)] + [MEANS[1]])
    out = mode_coverage(pts, MEANS[:2], STD, min_count=1)
    assert out["counts"] == [3, 1]
    assert out["per_mode_precision"] == pytest.approx([0.75, 1.0])
    inside = 1 - math.exp(-9 / 2)
    assert out["per_mode_recall"] == pytest.approx([min(1, 3 / (2.5 * inside)), 1 / (2.5 * inside)])
    assert out["high_quality"] == pytest.approx(4 / 5)
    assert out["kl_mode_histogram"] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    # default min_count: max(1, 5% of 2.5) = 1 -> both covered; a high bar covers only mode 0
    assert mode_coverage(pts, MEANS[:2], STD)["modes_covered"] == 2
    assert mode_coverage(pts, MEANS[:2], STD, min_count=2)["modes_covered"] == 1


def test_mode_coverage_bad_input():
    with pytest.raises(ShapeError, match="coordinates"):
        mode_coverage(np.zeros((4, 3)), MEANS, STD)
    with pytest.raises(ConfigError, match="std"):
        mode_coverage(np.zeros((4, 2)), MEANS, 0.0)
    with pytest.raises(ConfigError, match="std"):
        mode_coverage(np.zeros((4, 2)), MEANS, [0.1, 0.2])
    with pytest.raises(ConfigError, match="weights"):
        mode_coverage(np.zeros((4, 2)), MEANS, STD, weights=[1.0, 2.0])
    with pytest.raises(ShapeError, match="NaN"):
        mmd(np.full((4, 2), np.nan), np.zeros((4, 2)))


# ------------------------------------------------------------------------------------- digits FD
@pytest.fixture(scope="module")
def digit_net():
    return digit_feature_net()


def test_digit_classifier_is_accurate_and_cached(digit_net, tmp_path):
    net, record = digit_net
    assert record["test_accuracy"] >= 0.9
    print(f"digits feature net: test accuracy {record['test_accuracy']:.4f}, trained in {record['train_seconds']:.1f} s")
    assert digit_feature_net()[0] is net  # in-memory cache
    from distillery.data.datasets import cache_dir

    assert (cache_dir() / f"digits_fd_{metrics._digits_fd_key()}.safetensors").is_file()
    saved = dict(metrics._DIGIT_NET)
    metrics._DIGIT_NET.clear()
    try:
        loaded, rec = digit_feature_net()  # from disk this time
        assert rec["cached"] and rec["test_accuracy"] == pytest.approx(record["test_accuracy"])
        x = digits_reference("test")[:16]
        assert torch.equal(loaded(x), net(x))
    finally:
        metrics._DIGIT_NET.clear()
        metrics._DIGIT_NET.update(saved)


def test_the_digit_net_trains_when_first_asked_for_under_no_grad(monkeypatch):
    """Training the feature net turns gradients on itself: a first call from inside
    ``torch.no_grad`` (an evaluation) trains it rather than failing on ``backward``."""
    monkeypatch.setitem(metrics._DIGITS_TRAIN, "epochs", 1)  # a short fit: only the grad mode matters
    with torch.no_grad():
        net, record = metrics._train_digit_net()
    assert record["test_accuracy"] > 0.5


def test_digits_fd_small_between_real_splits_large_against_noise(digit_net):
    train, test = digits_reference("train"), digits_reference("test")
    assert train.shape == (1438, 1, 8, 8) and test.shape == (359, 1, 8, 8) and float(train.min()) >= -1 and float(train.max()) <= 1
    same = digits_fd(train, train)
    real = digits_fd(test, train)
    noise = digits_fd(torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, train)
    print(f"digits FD: train/train {same:.3g}, test/train {real:.3g}, noise/train {noise:.3g}")
    assert abs(same) < 1e-3
    assert noise > 10 * real > 0


def test_digits_fd_accepts_16x16_by_average_pooling(digit_net):
    x = digits_reference("test")
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # (N, 1, 16, 16), pools back to x
    net, _ = digit_net
    assert torch.allclose(net(up), net(x)) and torch.allclose(net(x.reshape(-1, 64)), net(x))
    with pytest.raises(ShapeError, match="8x8 or 16x16"):
        digits_fd(torch.zeros(10, 3, 8, 8), x)
    with pytest.raises(ShapeError, match="8x8 or 16x16"):
        DigitFeatureNet.to_images(torch.zeros(4, 1, 28, 28))


# -------------------------------------------------------------------------------- timing, NFE
def test_timed_sampling_counts_network_calls():
    net = torch.nn.Linear(2, 2)

    def sample(n: int, steps: int = 4) -> torch.Tensor:
        x = torch.randn(n, 2)
        with torch.no_grad():
            for _ in range(steps):
                x = x + 0.1 * net(x)
        return x

    out = timed_sampling(sample, 64, repeats=3, count=net)
    assert out["nfe"] == 4 and out["n"] == 64 and len(out["seconds"]) == 3
    assert out["seconds_per_sample"] == pytest.approx(out["seconds_median"] / 64)
    assert out["seconds_median"] == sorted(out["seconds"])[1] > 0
    assert timed_sampling(sample, 8, repeats=1, nfe=4)["nfe"] == 4
    assert timed_sampling(sample, 8, repeats=1)["nfe"] is None
    with pytest.raises(ConfigError, match="repeats"):
        timed_sampling(sample, 8, repeats=0)
