"""Distiller: losses against independent computations, signal routing, adapters, updates, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillery.engine.distiller import Distiller, Term
from distillery.errors import ConfigError, NonFiniteLossError, ShapeError, TapError
from distillery.objectives import CrossEntropy, FeatureMSE, InfoNCE, SoftTargetKD
from distillery.teachers import (
    EMATeacher,
    FrozenTeacher,
    PrivilegedTeacher,
    TeacherBank,
)
from distillery.weighting import GradNormBalancer, GroundTruthMix, LinearWarmup


class Net(nn.Module):
    def __init__(self, seed: int, width: int, d_in: int = 4, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(d_in, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def make_batch(seed: int = 0, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, 4, generator=g),
        "y": torch.tensor([0, 2, -1, 1, -1, 2])[:n],
        "index": torch.arange(n),
    }


def hand_kd(s_logits, t_logits, T):
    """T^2 * mean_i KL(softmax(t_i/T) || softmax(s_i/T)) with torch.nn.functional."""
    return T * T * F.kl_div(F.log_softmax(s_logits / T, -1), F.softmax(t_logits / T, -1), reduction="batchmean")


def hand_ce(s_logits, y):
    keep = y >= 0
    return F.cross_entropy(s_logits[keep], y[keep])


@pytest.fixture
def nets():
    return Net(0, 6), Net(1, 8)


def test_total_is_weighted_sum_of_independent_terms(nets):
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("ce", CrossEntropy(), weight=0.3),
        Term("kd", SoftTargetKD(temperature=2.0), weight=0.7),
    ])
    batch = make_batch()
    d.prepare(batch)
    out = d.step(batch)
    assert set(out) == {"loss", "ce", "kd"}

    s = student(batch["x"])
    with torch.no_grad():
        t = teacher(batch["x"])
    ce, kd = hand_ce(s, batch["y"]), hand_kd(s, t, 2.0)
    total = 0.3 * ce + 0.7 * kd
    torch.testing.assert_close(out["ce"], ce.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["kd"], kd.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["loss"].detach(), total.detach(), rtol=1e-6, atol=1e-6)
    assert out["loss"].requires_grad
    assert not out["ce"].requires_grad and not out["kd"].requires_grad
    assert d.last_weights == {"ce": 0.3, "kd": 0.7}

    # same gradient as the hand-built loss; nothing reaches the teacher
    g_hand = torch.autograd.grad(total, list(student.parameters()))
    out["loss"].backward()
    for p, g in zip(student.parameters(), g_hand):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in teacher.parameters())


def test_weight_schedule_uses_global_step(nets):
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("ce", CrossEntropy()),
        Term("kd", SoftTargetKD(), weight=LinearWarmup(value=1.0, warmup_steps=4)),
    ])
    batch = make_batch()
    seen = []
    for _ in range(5):
        out = d.step(batch)
        seen.append(d.last_weights["kd"])
        torch.testing.assert_close(out["loss"].detach(), out["ce"] + d.last_weights["kd"] * out["kd"])
        d.update()
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert int(d.global_step) == 5


class DictNet(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = self.body(x)
        return {"logits": self.head(torch.tanh(h)), "embedding": h}


def test_signal_references_route_taps_inputs_outputs_and_batch_fields(nets):
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("hid", FeatureMSE(), inputs={"student": "student.head:input", "teacher": "student.body"}),
        Term("tk", SoftTargetKD(temperature=1.0), inputs={"student": "teacher.logits", "teacher": "student.logits"}),
        Term("ce", CrossEntropy(), inputs={"target": "batch.y_alt"}),
    ])
    batch = make_batch()
    batch["y_alt"] = torch.tensor([1, 1, 1, 0, 0, 0])
    out = d.step(batch)
    x = batch["x"]
    with torch.no_grad():
        hid = F.mse_loss(torch.relu(student.body(x)), student.body(x))
        tk = hand_kd(teacher(x), student(x), 1.0)
        ce = F.cross_entropy(student(x), batch["y_alt"])
    torch.testing.assert_close(out["hid"], hid, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["tk"], tk, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["ce"], ce, rtol=1e-6, atol=1e-7)
    # the student-side signals carry the graph; the teacher side never does
    assert out["loss"].requires_grad


def test_input_taps_on_student_and_teacher():
    student, teacher = Net(0, 6), Net(1, 4)  # the teacher's head input is 4 wide, like x
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("tin", FeatureMSE(), inputs={"student": "student.body:input", "teacher": "teacher.head:input"}),
        Term("tb", FeatureMSE(), inputs={"student": "student.body:input", "teacher": "teacher.body"}),
    ])
    batch = make_batch()
    out = d.step(batch)
    x = batch["x"]
    with torch.no_grad():
        torch.testing.assert_close(out["tin"], F.mse_loss(x, torch.relu(teacher.body(x))), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(out["tb"], F.mse_loss(x, teacher.body(x)), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(out["tin"], out["tb"])


def test_dict_output_keys_are_signals():
    student, teacher = DictNet(0), DictNet(1)
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("emb", FeatureMSE(), inputs={"student": "student.embedding", "teacher": "teacher.embedding"}),
    ])
    batch = make_batch()
    out = d.step(batch)
    with torch.no_grad():
        expected = F.mse_loss(student.body(batch["x"]), teacher.body(batch["x"]))
    torch.testing.assert_close(out["emb"], expected)
    bad = Distiller(DictNet(0), FrozenTeacher(DictNet(1)), [
        Term("emb", FeatureMSE(), inputs={"student": "student.embeding", "teacher": "teacher.embedding"}),
    ])
    with pytest.raises(TapError, match="embedding"):
        bad.prepare(batch)


def test_adapter_built_from_first_batch_and_trained(nets):
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("feat", FeatureMSE(), inputs={"student": "student.body", "teacher": "teacher.body"}, adapter="linear"),
        Term("ce", CrossEntropy()),
    ])
    assert len(d.adapters) == 0
    batch = make_batch()
    d.prepare(batch)
    adapter = d.adapters["feat"]
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (6, 8)
    ids = {id(p) for p in d.trainable_parameters()}
    assert {id(p) for p in adapter.parameters()} <= ids
    assert {id(p) for p in student.parameters()} <= ids
    assert not ids & {id(p) for p in teacher.parameters()}
    assert len(ids) == len(d.trainable_parameters())  # no duplicates
    out = d.step(batch)
    with torch.no_grad():
        expected = F.mse_loss(adapter(student.body(batch["x"])), teacher.body(batch["x"]))
    torch.testing.assert_close(out["feat"], expected, rtol=1e-6, atol=1e-7)
    out["loss"].backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    # a second prepare does not rebuild the adapter
    d.prepare(batch)
    assert d.adapters["feat"] is adapter


def test_step_before_prepare_with_adapters_raises(nets):
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("feat", FeatureMSE(), inputs={"student": "student.body", "teacher": "teacher.body"}, adapter="mlp"),
    ])
    with pytest.raises(ConfigError, match="prepare"):
        d.step(make_batch())
    # without adapters the first step prepares by itself
    plain = Distiller(Net(0, 6), FrozenTeacher(Net(1, 8)), [Term("kd", SoftTargetKD())])
    assert "kd" in plain.step(make_batch())


def test_adapter_needs_both_inputs():
    with pytest.raises(ConfigError, match="adapter"):
        Distiller(Net(0, 6), None, [Term("ce", CrossEntropy(), adapter="linear")])


def test_ground_truth_mix_equals_explicitly_mixed_target(nets):
    student, teacher = nets
    T, alpha = 2.0, 0.4
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("kd", SoftTargetKD(temperature=T), mix=GroundTruthMix(alpha)),
    ])
    batch = make_batch()
    out = d.step(batch)
    x, y = batch["x"], batch["y"]
    with torch.no_grad():
        s, t = student(x), teacher(x)
    p_t = F.softmax(t / T, -1)
    target = p_t.clone()
    for i, label in enumerate(y.tolist()):
        if label >= 0:
            target[i] = (1 - alpha) * p_t[i]
            target[i, label] += alpha
    expected = T * T * F.kl_div(F.log_softmax(s / T, -1), target, reduction="batchmean")
    torch.testing.assert_close(out["kd"], expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(out["kd"], hand_kd(s, t, T))  # the mix changed the loss


def test_mix_on_values_and_custom_label_reference(nets):
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("reg", FeatureMSE(), mix=GroundTruthMix(0.25), mix_labels="batch.target"),
    ])
    batch = make_batch()
    batch["target"] = torch.randn(6, 3)
    out = d.step(batch)
    with torch.no_grad():
        target = 0.25 * batch["target"] + 0.75 * teacher(batch["x"])
        expected = F.mse_loss(student(batch["x"]), target)
    torch.testing.assert_close(out["reg"], expected, rtol=1e-6, atol=1e-7)


def test_mix_rejected_for_objectives_without_target_space():
    with pytest.raises(ConfigError, match="mixing"):
        Distiller(Net(0, 3), FrozenTeacher(Net(1, 3)), [Term("nce", InfoNCE(), mix=GroundTruthMix(0.5))])


def test_update_moves_ema_teacher_and_fills_queue():
    student = Net(0, 6)
    teacher = EMATeacher(student, momentum=0.5, final_momentum=None)
    d = Distiller(student, teacher, [
        Term("kd", SoftTargetKD()),
        Term("nce", InfoNCE(temperature=0.5, queue_size=16)),
    ])
    batch = make_batch()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.5)
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in d.trainable_parameters()}
    t_before = [p.detach().clone() for p in teacher.model.parameters()]
    with torch.no_grad():
        keys = F.normalize(teacher.model(batch["x"]), dim=1)
    out = d.step(batch)
    out["loss"].backward()
    opt.step()
    opt.zero_grad()
    s_after = [p.detach().clone() for p in student.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(s_after, t_before))
    queue = d.objectives["nce"].queue
    assert queue is None or len(queue) == 0  # filled only by update()
    d.update()
    assert int(d.global_step) == 1
    for t_new, t_old, s in zip(teacher.model.parameters(), t_before, s_after):
        torch.testing.assert_close(t_new, 0.5 * t_old + 0.5 * s, rtol=1e-6, atol=1e-7)
    queue = d.objectives["nce"].queue
    assert len(queue) == 6
    torch.testing.assert_close(queue.keys(), keys, rtol=1e-6, atol=1e-6)
    # a second step sees the queued keys as extra negatives
    out2 = d.step(batch)
    with torch.no_grad():
        q = F.normalize(student(batch["x"]), dim=1)
        k = F.normalize(teacher.model(batch["x"]), dim=1)
        logits = q @ torch.cat([k, keys]).T / 0.5
        expected = -F.log_softmax(logits, 1).diagonal().mean()
    torch.testing.assert_close(out2["nce"], expected, rtol=1e-5, atol=1e-6)


def test_ema_momentum_schedule_is_driven_by_total_steps():
    student = Net(0, 6)
    teacher = EMATeacher(student, momentum=0.5, final_momentum=1.0)
    d = Distiller(student, teacher, [Term("kd", SoftTargetKD())])
    d.set_total_steps(2)
    assert teacher.total_steps == 2
    before = [p.detach().clone() for p in teacher.model.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    d.update()  # step 1 of 2: m = 1 - 0.5 * (1 + cos(pi/2)) / 2 = 0.75
    for t_new, t_old, s in zip(teacher.model.parameters(), before, student.parameters()):
        torch.testing.assert_close(t_new, 0.75 * t_old + 0.25 * s, rtol=1e-6, atol=1e-7)


def test_non_finite_loss_names_term_and_step(nets):
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("ce", CrossEntropy()),
        Term("reg", FeatureMSE(), inputs={"teacher": "batch.target"}),
    ])
    batch = make_batch()
    batch["target"] = torch.zeros(6, 3)
    d.step(batch)
    d.update()
    d.update()
    batch["target"][1, 2] = float("nan")
    with pytest.raises(NonFiniteLossError) as info:
        d.step(batch)
    msg = str(info.value)
    assert "'reg'" in msg and "step 2" in msg and "nan" in msg.lower()
    assert "'ce'" not in msg.split("non-finite terms")[1]


def test_non_finite_term_with_zero_weight_is_still_caught(nets):
    """The step checks the weighted total; 0 * nan is nan, so a silenced term cannot hide one."""
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("ce", CrossEntropy()),
        Term("reg", FeatureMSE(), inputs={"teacher": "batch.target"}, weight=0.0),
    ])
    batch = make_batch()
    batch["target"] = torch.full((6, 3), float("inf"))
    with pytest.raises(NonFiniteLossError) as info:
        d.step(batch)
    assert "'reg'" in str(info.value) and "step 0" in str(info.value)
    assert d.step(batch, check_finite=False)["reg"].isinf()


def test_non_finite_weight_is_named(nets):
    from distillery.weighting import Constant, Schedule

    class Broken(Schedule):  # a user's schedule that misbehaves
        def __call__(self, step: int) -> float:
            return float("nan")

    with pytest.raises(ConfigError, match="finite"):
        Constant(float("inf"))
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher), [Term("ce", CrossEntropy(), weight=Broken())])
    with pytest.raises(NonFiniteLossError) as info:
        d.step(make_batch())
    msg = str(info.value)
    assert "although every term is finite" in msg and "'ce': nan" in msg


def test_shape_mismatch_without_adapter(nets):
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("feat", FeatureMSE(), inputs={"student": "student.body", "teacher": "teacher.body"}),
    ])
    with pytest.raises(ShapeError) as info:
        d.prepare(make_batch())
    msg = str(info.value)
    assert "[6, 6]" in msg and "[6, 8]" in msg and "adapter" in msg


def test_config_errors_at_construction(nets):
    student, teacher = nets
    with pytest.raises(ConfigError, match="no teacher"):
        Distiller(student, None, [Term("ce", CrossEntropy()), Term("kd", SoftTargetKD())])
    with pytest.raises(ConfigError, match="techer"):
        Distiller(student, FrozenTeacher(teacher), [Term("kd", SoftTargetKD(), inputs={"techer": "teacher.logits"})])
    with pytest.raises(ConfigError, match="unique"):
        Distiller(student, FrozenTeacher(teacher), [Term("kd", SoftTargetKD()), Term("kd", CrossEntropy())])
    with pytest.raises(ConfigError):
        Distiller(student, None, [Term("loss", CrossEntropy())])
    with pytest.raises(ConfigError, match="foo.logits"):
        Distiller(student, FrozenTeacher(teacher), [Term("kd", SoftTargetKD(), inputs={"student": "foo.logits"})])
    with pytest.raises(ConfigError):
        Distiller(student, FrozenTeacher(teacher), [Term("kd", SoftTargetKD(), inputs={"teacher": "teacher."})])
    with pytest.raises(ConfigError):
        Distiller(student, None, [])
    with pytest.raises(ConfigError, match="gradnorm"):
        Distiller(student, FrozenTeacher(teacher), [Term("ce", CrossEntropy()), Term("kd", SoftTargetKD())],
                  balancer=GradNormBalancer("ce", {"kl": 1.0}))


def test_batch_field_missing_is_a_config_error(nets):
    student, _ = nets
    d = Distiller(student, None, [Term("ce", CrossEntropy(), inputs={"target": "batch.labels"})])
    with pytest.raises(ConfigError, match="labels"):
        d.prepare(make_batch())


def test_wrong_dotted_path_is_a_tap_error_at_construction(nets):
    student, teacher = nets
    with pytest.raises(TapError) as info:
        Distiller(student, FrozenTeacher(teacher), [
            Term("feat", FeatureMSE(), inputs={"student": "student.hed.0", "teacher": "teacher.head"}),
        ])
    msg = str(info.value)
    assert "'hed.0'" in msg and "student" in msg
    assert "head" in msg.split("Nearest valid paths:")[1]
    with pytest.raises(TapError) as info:
        Distiller(student, FrozenTeacher(teacher), [
            Term("feat", FeatureMSE(), inputs={"student": "student.body", "teacher": "teacher.haed:input"}),
        ])
    assert "teacher" in str(info.value) and "head" in str(info.value).split("Nearest valid paths:")[1]
    with pytest.raises(TapError) as info:
        Distiller(Net(0, 3), FrozenTeacher(nn.Sequential(Net(1, 3))), [
            Term("feat", FeatureMSE(), inputs={"teacher": "teacher.0.hed"}),
        ])
    assert "0.head" in str(info.value).split("Nearest valid paths:")[1]
    # a plain name may be an output dict key: it is checked on the first batch instead
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("feat", FeatureMSE(), inputs={"student": "student.bdy", "teacher": "teacher.head"}),
    ])
    with pytest.raises(TapError, match="'student.bdy'"):
        d.prepare(make_batch())


def test_truncated_teacher_has_no_logits(nets):
    student, teacher = nets
    d = Distiller(student, FrozenTeacher(teacher, until="body"), [Term("kd", SoftTargetKD())])
    with pytest.raises(TapError, match="stops after 'body'"):
        d.prepare(make_batch())


def test_privileged_teacher_view_and_teacher_view(nets):
    student, _ = nets
    batch = make_batch()
    batch["x_full"] = torch.randn(6, 4)
    d = Distiller(student, PrivilegedTeacher(view="x_full"), [Term("kd", SoftTargetKD(temperature=1.0))])
    assert d.trainable_parameters() == list(student.parameters())
    student.train()
    out = d.step(batch)
    assert student.training
    s = student(batch["x"])
    with torch.no_grad():
        t = student(batch["x_full"])
    torch.testing.assert_close(out["kd"], hand_kd(s, t, 1.0).detach(), rtol=1e-5, atol=1e-7)
    # a separate teacher with no view of its own reads the distiller's teacher_view
    other = Net(3, 5)
    d2 = Distiller(student, FrozenTeacher(other), [Term("kd", SoftTargetKD(temperature=1.0))],
                   student_view="x_full", teacher_view="x")
    out2 = d2.step(batch)
    with torch.no_grad():
        torch.testing.assert_close(out2["kd"], hand_kd(student(batch["x_full"]), other(batch["x"]), 1.0), rtol=1e-5, atol=1e-7)


def test_bank_member_signal_reference():
    student, a, b = Net(0, 6), Net(1, 5), Net(2, 7)
    bank = TeacherBank([FrozenTeacher(a), FrozenTeacher(b)], weights=[1.0, 1.0])
    d = Distiller(student, bank, [
        Term("kd0", SoftTargetKD(temperature=1.0), inputs={"teacher": "teacher.0/logits"}),
        Term("kd", SoftTargetKD(temperature=1.0)),
    ])
    batch = make_batch()
    out = d.step(batch)
    x = batch["x"]
    with torch.no_grad():
        s = student(x)
        la, lb = a(x), b(x)
        mean_probs = 0.5 * F.softmax(la, -1) + 0.5 * F.softmax(lb, -1)
        kd = F.kl_div(F.log_softmax(s, -1), mean_probs, reduction="batchmean")
    torch.testing.assert_close(out["kd0"], hand_kd(s, la, 1.0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["kd"], kd, rtol=1e-5, atol=1e-7)


def test_bank_member_taps_with_different_shapes():
    """Members of different widths: each member's own tap is addressable through an adapter."""
    student, a, b = Net(0, 6), Net(1, 5), Net(2, 7)
    bank = TeacherBank([FrozenTeacher(a), FrozenTeacher(b)])
    d = Distiller(student, bank, [
        Term("f0", FeatureMSE(), inputs={"student": "student.body", "teacher": "teacher.0/body"}, adapter="linear"),
        Term("f1", FeatureMSE(), inputs={"student": "student.body", "teacher": "teacher.1/body"}, adapter="linear"),
    ])
    batch = make_batch()
    d.prepare(batch)
    assert d.adapters["f0"].out_features == 5 and d.adapters["f1"].out_features == 7
    out = d.step(batch)
    x = batch["x"]
    with torch.no_grad():
        h = student.body(x)
        torch.testing.assert_close(out["f1"], F.mse_loss(d.adapters["f1"](h), b.body(x)), rtol=1e-6, atol=1e-7)
    with pytest.raises(TapError, match="member 1"):
        Distiller(student, TeacherBank([FrozenTeacher(Net(1, 5)), FrozenTeacher(Net(2, 7))]), [
            Term("f", FeatureMSE(), inputs={"student": "student.body", "teacher": "teacher.1/bdy.x"}),
        ])


def test_gradnorm_balancer_through_distiller(nets):
    student, teacher = nets
    bal = GradNormBalancer("ce", {"kd": 0.5}, params="head")
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("ce", CrossEntropy(), weight=2.0),
        Term("kd", SoftTargetKD(temperature=2.0), weight=123.0),  # replaced by the balancer
    ], balancer=bal)
    batch = make_batch()
    out = d.step(batch)
    s = student(batch["x"])
    with torch.no_grad():
        t = teacher(batch["x"])
    head = list(student.head.parameters())
    g_ce = torch.autograd.grad(hand_ce(s, batch["y"]), head, retain_graph=True)
    g_kd = torch.autograd.grad(hand_kd(s, t, 2.0), head)
    n_ce = math.sqrt(sum(float(g.pow(2).sum()) for g in g_ce))
    n_kd = math.sqrt(sum(float(g.pow(2).sum()) for g in g_kd))
    expected_w = 0.5 * 2.0 * n_ce / n_kd
    assert d.last_weights["ce"] == 2.0
    assert d.last_weights["kd"] == pytest.approx(expected_w, rel=1e-4)
    torch.testing.assert_close(out["loss"].detach(), 2.0 * out["ce"] + d.last_weights["kd"] * out["kd"])
    assert all(p.grad is None for p in student.parameters())  # balancing used autograd.grad only
    with pytest.raises(ConfigError, match="gradnorm"):
        Distiller(Net(0, 6), FrozenTeacher(Net(1, 8)), [Term("ce", CrossEntropy()), Term("kd", SoftTargetKD())],
                  balancer=GradNormBalancer("ce", {"kd": 1.0}, params="neck")).step(batch)


def test_separate_teacher_network_is_not_trainable(nets):
    student, _ = nets
    other = Net(5, 6)  # not frozen by the user
    assert all(p.requires_grad for p in other.parameters())
    d = Distiller(student, PrivilegedTeacher(view="x_full", model=other), [Term("kd", SoftTargetKD())])
    ids = [id(p) for p in d.trainable_parameters()]
    assert ids == [id(p) for p in student.parameters()]
    # a teacher that registers the student itself keeps the student trainable
    d2 = Distiller(student, PrivilegedTeacher(view="x_full", model=student), [Term("kd", SoftTargetKD())])
    assert [id(p) for p in d2.trainable_parameters()] == [id(p) for p in student.parameters()]
