"""MomentumQueue, InfoNCE, SoftContrastive and DINO against hand-built references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillery.errors import ShapeError
from distillery.objectives import (
    DINOLoss,
    InfoNCE,
    MomentumQueue,
    SoftContrastive,
    dino_loss,
    dino_target_statistics,
    dino_teacher_temperature,
    infonce_loss,
    soft_contrastive_loss,
)


def randn(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def assert_matches(actual: torch.Tensor, expected, dtype: torch.dtype) -> None:
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(
        actual.detach().double(), torch.as_tensor(expected, dtype=torch.float64), rtol=tol, atol=tol
    )


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float(v @ v))


# ---------------------------------------------------------------- MomentumQueue


def test_queue_fifo_with_wraparound():
    q = MomentumQueue(dim=2, size=5)
    rows = lambda *vals: torch.tensor([[v, -v] for v in vals])  # noqa: E731
    assert q.keys().shape == (0, 2) and len(q) == 0

    q.enqueue(rows(1, 2, 3))
    expected = [1, 2, 3, 0, 0]
    assert q.queue[:, 0].tolist() == expected and int(q.ptr) == 3 and len(q) == 3
    assert q.keys()[:, 0].tolist() == [1, 2, 3]
    assert q.keys()[:, 1].tolist() == [-1, -2, -3]

    q.enqueue(rows(4, 5, 6))  # wraps: 4, 5 fill slots 3, 4; 6 overwrites the oldest (slot 0)
    assert q.queue[:, 0].tolist() == [6, 2, 3, 4, 5] and int(q.ptr) == 1 and len(q) == 5

    q.enqueue(rows(7))
    assert q.queue[:, 0].tolist() == [6, 7, 3, 4, 5] and int(q.ptr) == 2

    # more keys than slots: only the last 5 survive, written as if one at a time
    q.enqueue(rows(10, 11, 12, 13, 14, 15, 16))  # 7 keys starting at slot 2
    # slots written in order 2,3,4,0,1,2,3 -> final: [13, 14, 15, 16, 12]
    assert q.queue[:, 0].tolist() == [13, 14, 15, 16, 12] and int(q.ptr) == (2 + 7) % 5
    assert len(q) == 5 and q.keys().shape == (5, 2)

    with pytest.raises(ShapeError, match=r"\[3, 4\]"):
        q.enqueue(torch.zeros(3, 4))


def test_queue_state_dict_and_dtype_follow():
    q = MomentumQueue(dim=3, size=4)
    q.enqueue(torch.arange(6.0).reshape(2, 3).double())
    assert q.queue.dtype == torch.float64  # follows the keys
    r = MomentumQueue(dim=3, size=4).double()
    r.load_state_dict(q.state_dict())
    assert int(r.ptr) == 2 and len(r) == 2 and torch.equal(r.keys(), q.keys())


# ---------------------------------------------------------------- InfoNCE


def ref_infonce(s: np.ndarray, t: np.ndarray, queue: np.ndarray | None, tau: float) -> np.ndarray:
    B = s.shape[0]
    keys = [unit(t[j]) for j in range(B)] + ([unit(k) for k in queue] if queue is not None else [])
    out = []
    for i in range(B):
        q = unit(s[i])
        logits = [float(q @ k) / tau for k in keys]
        out.append(-(logits[i] - math.log(sum(math.exp(v) for v in logits))))
    return np.array(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,D,Q", [(4, 3, 0), (5, 6, 3), (3, 2, 7)])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_infonce_values(dtype, B, D, Q, tau):
    s, t = randn(B, D, dtype=dtype, seed=1), randn(B, D, dtype=dtype, seed=2)
    queue = randn(Q, D, dtype=dtype, seed=3) if Q else None
    exp = ref_infonce(s.double().numpy(), t.double().numpy(),
                      queue.double().numpy() if Q else None, tau)
    assert_matches(infonce_loss(s, t, queue, tau, "none"), exp, dtype)


def test_infonce_update_adds_keys_and_uses_them():
    s1, t1 = randn(3, 4, seed=4), randn(3, 4, seed=5)
    s2, t2 = randn(3, 4, seed=6), randn(3, 4, seed=7)
    loss = InfoNCE(temperature=0.2, queue_size=5)  # dim inferred on first update
    assert loss.queue is None
    # before any update: only in-batch negatives
    exp = ref_infonce(s1.numpy(), t1.numpy(), None, 0.2)
    assert_matches(loss(s1, t1), exp.mean(), torch.float64)
    loss.update(student=s1, teacher=t1)
    assert len(loss.queue) == 3
    torch.testing.assert_close(loss.queue.keys(), torch.nn.functional.normalize(t1, dim=1))
    # the next step's negatives include the queued teacher keys of the previous step
    exp = ref_infonce(s2.numpy(), t2.numpy(), t1.numpy(), 0.2)
    assert_matches(InfoNCE(0.2, queue_size=5, reduction="none").eval()(s2, t2),
                   ref_infonce(s2.numpy(), t2.numpy(), None, 0.2), torch.float64)
    assert_matches(loss(s2, t2), exp.mean(), torch.float64)
    loss.update(student=s2, teacher=t2)
    assert len(loss.queue) == 5  # 6 keys into 5 slots
    # slots: t1 -> 0,1,2; t2 -> 3,4,0  => [t2[2], t1[1], t1[2], t2[0], t2[1]]
    expected_slots = torch.nn.functional.normalize(
        torch.stack([t2[2], t1[1], t1[2], t2[0], t2[1]]), dim=1
    )
    torch.testing.assert_close(loss.queue.queue, expected_slots)
    # no queue: update is a no-op
    plain = InfoNCE()
    plain.update(student=s1, teacher=t1)
    assert plain.queue is None and len(plain.state_dict()) == 0


def test_infonce_queue_survives_state_dict_roundtrip():
    loss = InfoNCE(queue_size=4)
    loss.update(teacher=randn(3, 5, seed=8))
    fresh = InfoNCE(queue_size=4)
    fresh.load_state_dict(loss.state_dict())
    assert fresh.queue is not None and len(fresh.queue) == 3
    torch.testing.assert_close(fresh.queue.keys(), loss.queue.keys())
    sized = InfoNCE(queue_size=4, dim=5)
    assert sized.queue is not None and sized.queue.queue.shape == (4, 5)


def test_infonce_gradcheck_and_errors():
    s = randn(4, 3, seed=9).requires_grad_()
    t = randn(4, 3, seed=10).requires_grad_()
    queue = randn(5, 3, seed=11)
    assert torch.autograd.gradcheck(lambda a, b: infonce_loss(a, b, queue, 0.3), (s, t))
    with pytest.raises(ShapeError, match=r"\[4, 3\].*\[4, 6\].*projection"):
        InfoNCE()(s, randn(4, 6))


# ---------------------------------------------------------------- SoftContrastive


def ref_soft(s, t, k, queue, tau, alpha):
    B = s.shape[0]
    keys = [unit(k[j]) for j in range(B)] + ([unit(x) for x in queue] if queue is not None else [])
    out = []
    for i in range(B):
        ls = [float(unit(s[i]) @ key) / tau for key in keys]
        lt = [float(unit(t[i]) @ key) / tau for key in keys]
        zt = sum(math.exp(v) for v in lt)
        log_zs = math.log(sum(math.exp(v) for v in ls))
        total = 0.0
        for j in range(len(keys)):
            target = alpha * math.exp(lt[j]) / zt + (1 - alpha) * (1.0 if j == i else 0.0)
            total -= target * (ls[j] - log_zs)
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("Q", [0, 4])
def test_soft_contrastive_values(dtype, alpha, Q):
    B, D, tau = 4, 5, 0.1
    s, t, k = (randn(B, D, dtype=dtype, seed=i) for i in (12, 13, 14))
    queue = randn(Q, D, dtype=dtype, seed=15) if Q else None
    exp = ref_soft(*(x.double().numpy() for x in (s, t, k)),
                   queue.double().numpy() if Q else None, tau, alpha)
    assert_matches(soft_contrastive_loss(s, t, k, queue, tau, alpha, "none"), exp, dtype)
    if alpha == 0.0:  # hard targets: InfoNCE of the student against the keys
        torch.testing.assert_close(
            soft_contrastive_loss(s, t, k, queue, tau, 0.0), infonce_loss(s, k, queue, tau)
        )


def test_soft_contrastive_update_gradcheck_and_errors():
    obj = SoftContrastive(temperature=0.2, alpha=0.4, queue_size=6)
    s, t, k = randn(3, 4, seed=16), randn(3, 4, seed=17), randn(3, 4, seed=18)
    obj.update(student=s, teacher=t, keys=k)
    assert len(obj.queue) == 3
    torch.testing.assert_close(obj.queue.keys(), torch.nn.functional.normalize(k, dim=1))
    s2, t2, k2 = randn(3, 4, seed=19), randn(3, 4, seed=20), randn(3, 4, seed=21)
    exp = ref_soft(s2.numpy(), t2.numpy(), k2.numpy(), k.numpy(), 0.2, 0.4)
    assert_matches(obj(s2, t2, k2), exp.mean(), torch.float64)
    args = tuple(x.clone().requires_grad_() for x in (s2, t2, k2))
    assert torch.autograd.gradcheck(
        lambda a, b, c: soft_contrastive_loss(a, b, c, k, 0.2, 0.4), args
    )
    with pytest.raises(ShapeError, match=r"student \[3, 4\].*keys \[3, 5\]"):
        obj(s2, t2, randn(3, 5))


# ---------------------------------------------------------------- DINO


def ref_dino(s, t, center, tau_s, tau_t):
    """s: [Vs, B, K], t: [Vt, B, K]; explicit loops over view pairs and samples."""
    Vs, B, _ = s.shape
    Vt = t.shape[0]
    pairs = [(j, i) for j in range(Vt) for i in range(Vs) if i != j] or [(0, 0)]
    out = []
    for b in range(B):
        vals = []
        for j, i in pairs:
            zt = (t[j, b] - center) / tau_t
            pt = np.exp(zt - zt.max())
            pt /= pt.sum()
            zs = s[i, b] / tau_s
            log_ps = zs - (zs.max() + math.log(np.exp(zs - zs.max()).sum()))
            vals.append(-float(pt @ log_ps))
        out.append(np.mean(vals))
    return np.array(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("Vs,Vt", [(1, 1), (2, 2), (4, 2), (3, 1)])
def test_dino_values(dtype, Vs, Vt):
    B, K = 3, 6
    s, t = randn(Vs, B, K, dtype=dtype, seed=22), randn(Vt, B, K, dtype=dtype, seed=23)
    center = randn(K, dtype=dtype, seed=24) * 0.1
    exp = ref_dino(s.double().numpy(), t.double().numpy(), center.double().numpy(), 0.1, 0.07)
    assert_matches(dino_loss(s, t, center, 0.1, 0.07, "none"), exp, dtype)
    assert_matches(dino_loss(s, t, center, 0.1, 0.07), exp.mean(), dtype)
    if Vs == Vt == 1:  # [B, K] inputs are one view
        assert_matches(dino_loss(s[0], t[0], center, 0.1, 0.07), exp.mean(), dtype)


def test_dino_teacher_temperature_warmup():
    assert dino_teacher_temperature(0, 0.07, 0.04, 10) == pytest.approx(0.04)
    assert dino_teacher_temperature(5, 0.07, 0.04, 10) == pytest.approx(0.055)
    assert dino_teacher_temperature(10, 0.07, 0.04, 10) == pytest.approx(0.07)
    assert dino_teacher_temperature(99, 0.07, 0.04, 10) == pytest.approx(0.07)
    assert dino_teacher_temperature(0, 0.07, 0.04, 0) == pytest.approx(0.07)

    loss = DINOLoss(out_dim=5, student_temperature=0.2, teacher_temperature=0.07,
                    warmup_teacher_temperature=0.03, warmup_steps=8).double()
    loss.center.copy_(randn(1, 5, seed=25) * 0.3)
    s, t = randn(3, 4, 5, seed=26), randn(2, 4, 5, seed=27)
    c = loss.center[0].numpy()
    for step, tau_t in ((0, 0.03), (2, 0.04), (6, 0.06), (8, 0.07), (20, 0.07)):
        loss.set_step(step)
        assert loss.current_teacher_temperature() == pytest.approx(tau_t)
        exp = ref_dino(s.numpy(), t.numpy(), c, 0.2, tau_t).mean()
        assert_matches(loss(s, t), exp, torch.float64)


def test_dino_center_update_by_hand():
    loss = DINOLoss(out_dim=3, center_momentum=0.9)
    t1 = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]],
                       [[0.0, 0.0, 6.0], [4.0, 0.0, 2.0]]])  # [V=2, B=2, K=3]
    loss.update(student=torch.zeros(2, 2, 3), teacher=t1)
    # mean over views and batch: [2, 1, 3]; c = 0.9 * 0 + 0.1 * mean
    torch.testing.assert_close(loss.center, torch.tensor([[0.2, 0.1, 0.3]]))
    loss.update(teacher=torch.tensor([[10.0, 0.0, -10.0]]))  # a [B, K] teacher
    torch.testing.assert_close(loss.center, torch.tensor([[0.9 * 0.2 + 1.0, 0.09, 0.27 - 1.0]]))
    # the center enters the teacher softmax of the next forward
    s, t = randn(2, 3, seed=28).float(), randn(2, 3, seed=29).float()
    exp = ref_dino(s[None].double().numpy(), t[None].double().numpy(),
                   loss.center[0].double().numpy(), 0.1, 0.04)
    assert_matches(loss(s, t), exp.mean(), torch.float32)


def test_dino_center_update_with_process_group(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available() or dist.is_initialized():
        pytest.skip("gloo process group not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loss = DINOLoss(out_dim=2, center_momentum=0.5)
        loss.update(teacher=torch.tensor([[1.0, 3.0], [3.0, 5.0]]))
        torch.testing.assert_close(loss.center, torch.tensor([[1.0, 2.0]]))
    finally:
        dist.destroy_process_group()


def test_dino_gradcheck_and_errors():
    s = randn(3, 2, 4, seed=30).requires_grad_()
    t = randn(2, 2, 4, seed=31).requires_grad_()
    center = randn(4, seed=32) * 0.1
    assert torch.autograd.gradcheck(lambda a, b: dino_loss(a, b, center, 0.1, 0.05), (s, t))
    loss = DINOLoss(out_dim=4)
    with pytest.raises(ShapeError, match=r"\[2, 5\]"):
        loss(randn(2, 5), randn(2, 5))
    with pytest.raises(ShapeError, match=r"\[3, 2, 4\].*\[2, 3, 4\]"):
        loss(s.detach(), randn(2, 3, 4))


def test_dino_target_statistics_against_numpy_and_at_both_collapses():
    K = 5
    t, c = randn(7, K, seed=40).numpy(), randn(K, seed=41).numpy() * 0.2
    z = (t - c) / 0.05
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ent = float(np.mean([-sum(q * math.log(q) for q in row if q > 0) for row in p]))
    pbar = p.mean(0)
    marg = float(-sum(q * math.log(q) for q in pbar if q > 0))
    kl = float(np.mean([sum(q * math.log(q / m) for q, m in zip(row, pbar) if q > 0) for row in p]))
    got = dino_target_statistics(torch.from_numpy(t).float(), torch.from_numpy(c).float()[None], 0.05)
    assert got["entropy"] == pytest.approx(ent, abs=1e-5)
    assert got["marginal_entropy"] == pytest.approx(marg, abs=1e-5)
    assert got["mutual_information"] == pytest.approx(kl, abs=1e-5)  # H(mean P) - mean H(P) = mean KL(P_i || mean P)
    # every sample's output equals the center: uniform targets
    same = torch.randn(1, K).expand(6, K)
    u = dino_target_statistics(same, same[0], 0.04)
    assert u["entropy"] == pytest.approx(math.log(K)) and u["mutual_information"] == pytest.approx(0.0, abs=1e-12)
    # one dimension dominates every sample and there is no center: one-hot targets
    one = torch.zeros(6, K)
    one[:, 2] = 1.0
    o = dino_target_statistics(one + 0.01 * torch.randn(6, K), None, 0.001)
    assert o["marginal_entropy"] < 1e-6 and o["entropy"] < 1e-6
    with pytest.raises(ShapeError, match="center"):
        dino_target_statistics(torch.zeros(3, K), torch.zeros(K + 1), 0.1)


def test_dino_centering_alone_collapses_to_uniform_and_sharpening_alone_to_one_dimension():
    """Caron et al. 2021, Fig. 7, in miniature: an MLP with a DINO head on noisy, masked views
    of digits, an EMA teacher; the final targets' entropies show each collapse, and both
    operations together keep the targets informative about the sample."""
    from sklearn.datasets import load_digits

    from distillery import Distiller, EMATeacher, Term
    from distillery.models.multicrop import DINOHead

    x = torch.tensor(load_digits().data, dtype=torch.float32) / 16  # [1797, 64]
    K = 64

    def two_views(batch, g=torch.Generator().manual_seed(0)):
        v = batch["x"].expand(2, *batch["x"].shape)
        return v * (torch.rand(v.shape, generator=g) > 0.3) + 0.1 * torch.randn(v.shape, generator=g)

    def train(teacher_temperature: float, center_momentum: float) -> dict[str, float]:
        torch.manual_seed(0)
        student = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64),
                                      DINOHead(64, K, hidden=64, bottleneck=16))
        dino = DINOLoss(K, 0.1, teacher_temperature, teacher_temperature, center_momentum=center_momentum)
        d = Distiller(student, EMATeacher(student, momentum=0.99, final_momentum=None), [Term("dino", dino)],
                      student_view=two_views)
        opt = torch.optim.AdamW(d.trainable_parameters(), lr=1e-3, weight_decay=0.04)
        for _ in range(30):
            for i in range(0, len(x) - 127, 128):
                d.step({"x": x[i : i + 128]})["loss"].backward()
                opt.step()
                opt.zero_grad()
                d.update()
        with torch.no_grad():
            return dino_target_statistics(d.teacher.model(x), dino.center, teacher_temperature)

    centering = train(0.1, 0.9)
    sharpening = train(0.04, 1.0)  # momentum 1: the center stays 0
    both = train(0.04, 0.9)
    assert centering["entropy"] > 0.98 * math.log(K) and centering["mutual_information"] < 0.02
    assert sharpening["marginal_entropy"] < 0.05 * math.log(K) and sharpening["mutual_information"] < 0.02
    assert both["mutual_information"] > 0.1
