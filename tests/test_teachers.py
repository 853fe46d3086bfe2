"""Teachers: frozen, EMA, snapshot, self-ensemble, privileged view, bank, precomputed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from distillery.errors import ConfigError, TapError
from distillery.teachers import (
    EMATeacher,
    FrozenTeacher,
    PrecomputedTeacher,
    PrivilegedTeacher,
    SelfEnsembleTeacher,
    SnapshotTeacher,
    TeacherBank,
)


class Counter(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim_in, dim_out)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


def mlp(seed: int, dims=(4, 6, 3), dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dims[0], dims[1]), nn.Dropout(dropout), nn.ReLU(), nn.Linear(dims[1], dims[2]))


def set_linear(layer: nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))


# ---------------------------------------------------------------------------------- frozen


def test_frozen_teacher_stays_in_eval_mode_and_has_no_grads():
    model = mlp(0, dropout=0.5)
    model.train()
    teacher = FrozenTeacher(model)
    teacher.train()
    assert teacher.training  # the wrapper follows train()...
    assert not any(m.training for m in teacher.model.modules())  # ...the model does not
    assert not any(p.requires_grad for p in teacher.parameters())
    # wrapped in a parent put in train mode, still eval
    parent = nn.ModuleDict({"t": teacher})
    parent.train()
    assert not any(m.training for m in teacher.model.modules())
    x = torch.randn(5, 4, requires_grad=True)
    out = teacher.signals(x, {}, ["logits"])
    assert not out["logits"].requires_grad
    # eval mode: dropout off, so two calls agree and equal the eval-mode model
    torch.testing.assert_close(out["logits"], teacher.signals(x, {}, ["logits"])["logits"], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], model(x), rtol=0, atol=0)


def test_frozen_teacher_until_truncates_the_forward():
    torch.manual_seed(0)
    tail = Counter(6, 3)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), tail)
    teacher = FrozenTeacher(model, until="1")
    x = torch.randn(2, 4)
    out = teacher.signals(x, {}, ["logits", "0", "1"])
    assert tail.calls == 0
    assert "logits" not in out
    torch.testing.assert_close(out["1"], torch.relu(model[0](x)))
    torch.testing.assert_close(out["0"], model[0](x))
    # without until the tail runs
    FrozenTeacher(model).signals(x, {}, ["logits"])
    assert tail.calls == 1


def test_frozen_teacher_until_must_exist():
    with pytest.raises(TapError, match="Nearest valid paths"):
        FrozenTeacher(mlp(0), until="9")


# ------------------------------------------------------------------------------------- EMA


def test_ema_matches_hand_computed_recursion_with_constant_momentum():
    student = nn.Linear(2, 1)
    set_linear(student, [[1.0, -2.0]], [0.5])
    teacher = EMATeacher(student, momentum=0.75, final_momentum=None)
    teacher.bind(student)
    t_w, t_b = [1.0, -2.0], 0.5  # the teacher starts as a copy
    student_weights = [([[3.0, 0.0]], [-1.0]), ([[0.0, 4.0]], [2.0]), ([[-1.0, 1.0]], [0.0])]
    m = 0.75
    for k, (w, b) in enumerate(student_weights, start=1):
        set_linear(student, w, b)
        teacher.update(student, step=k)
        t_w = [m * tw + (1 - m) * sw for tw, sw in zip(t_w, w[0])]
        t_b = m * t_b + (1 - m) * b[0]
        assert teacher.model.weight[0].tolist() == pytest.approx(t_w, abs=1e-6)
        assert teacher.model.bias.item() == pytest.approx(t_b, abs=1e-6)
    # explicit values after 3 steps: w0 = 0.75^3*1 + 0.25*(0.75^2*3 + 0.75*0 + (-1))
    assert t_w[0] == pytest.approx(0.421875 + 0.25 * (1.6875 - 1.0))
    # the student is untouched and the teacher is not sharing storage with it
    assert student.weight.tolist() == [[-1.0, 1.0]]
    assert teacher.model.weight.data_ptr() != student.weight.data_ptr()
    assert not any(p.requires_grad for p in teacher.model.parameters())


def cosine_momentum(k: int, K: int, m0: float, m1: float) -> float:
    return m1 - (m1 - m0) * (1 + math.cos(math.pi * k / K)) / 2


def test_ema_momentum_schedule_follows_cosine_formula():
    teacher = EMATeacher(nn.Linear(2, 2), momentum=0.9, final_momentum=0.99)
    assert teacher.momentum_at(5) == 0.9  # unknown K: stays at m0
    teacher.set_total_steps(10)
    for k in [0, 1, 3, 5, 7, 10]:
        assert teacher.momentum_at(k) == pytest.approx(cosine_momentum(k, 10, 0.9, 0.99), abs=1e-12)
    assert teacher.momentum_at(0) == pytest.approx(0.9)
    assert teacher.momentum_at(5) == pytest.approx(0.945)
    assert teacher.momentum_at(10) == pytest.approx(0.99)
    fixed = EMATeacher(nn.Linear(2, 2), momentum=0.9, final_momentum=None)
    fixed.set_total_steps(10)
    assert fixed.momentum_at(7) == 0.9


def test_ema_update_uses_scheduled_momentum():
    K = 4
    student = nn.Linear(1, 1)
    set_linear(student, [[0.0]], [0.0])
    teacher = EMATeacher(student, momentum=0.5, final_momentum=1.0)
    teacher.set_total_steps(K)
    t = 0.0
    for k, s in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        set_linear(student, [[s]], [0.0])
        teacher.update(student, step=k)
        m = cosine_momentum(k, K, 0.5, 1.0)
        t = m * t + (1 - m) * s
        assert teacher.model.weight.item() == pytest.approx(t, abs=1e-6)
    # the last step has momentum 1: the teacher did not move at step 4
    assert cosine_momentum(4, K, 0.5, 1.0) == pytest.approx(1.0)


def bn_student() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


@pytest.mark.parametrize("mode", ["copy", "average"])
def test_ema_buffers(mode):
    student = bn_student()
    teacher = EMATeacher(student, momentum=0.8, final_momentum=None, buffers=mode)
    t_mean0 = teacher.model[1].running_mean.clone()
    t_var0 = teacher.model[1].running_var.clone()
    student.train()
    for _ in range(3):
        student(torch.randn(8, 3) * 3 + 1)
    s_bn = student[1]
    assert not torch.allclose(s_bn.running_mean, t_mean0)
    teacher.update(student, step=1)
    t_bn = teacher.model[1]
    if mode == "copy":
        torch.testing.assert_close(t_bn.running_mean, s_bn.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(t_bn.running_var, s_bn.running_var, rtol=0, atol=0)
    else:
        torch.testing.assert_close(t_bn.running_mean, 0.8 * t_mean0 + 0.2 * s_bn.running_mean)
        torch.testing.assert_close(t_bn.running_var, 0.8 * t_var0 + 0.2 * s_bn.running_var)
    assert int(t_bn.num_batches_tracked) == int(s_bn.num_batches_tracked) == 3
    assert t_bn.num_batches_tracked.dtype == torch.long


def test_ema_teacher_stays_eval_and_rejects_bad_settings():
    teacher = EMATeacher(bn_student(), momentum=0.9)
    teacher.train()
    assert not teacher.model.training and not teacher.model[1].training
    with pytest.raises(ConfigError):
        EMATeacher(nn.Linear(1, 1), momentum=1.5)
    with pytest.raises(ConfigError):
        EMATeacher(nn.Linear(1, 1), buffers="mean")


# -------------------------------------------------------------------------------- snapshot


def test_snapshot_refreshes_exactly_every_k_steps():
    student = nn.Linear(1, 1)
    set_linear(student, [[0.0]], [0.0])
    teacher = SnapshotTeacher(student, every=3)
    seen = []
    for step in range(1, 9):
        set_linear(student, [[float(step)]], [0.0])
        teacher.update(student, step)
        seen.append(teacher.model.weight.item())
    assert seen == [0.0, 0.0, 3.0, 3.0, 3.0, 6.0, 6.0, 6.0]
    assert int(teacher.taken_at) == 6
    teacher.train()
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_snapshot_without_every_refreshes_only_by_hand():
    student = nn.Linear(1, 1)
    set_linear(student, [[1.0]], [0.0])
    teacher = SnapshotTeacher(student)
    for step in range(1, 5):
        set_linear(student, [[10.0 + step]], [0.0])
        teacher.update(student, step)
    assert teacher.model.weight.item() == 1.0
    teacher.snapshot(student, step=4)
    assert teacher.model.weight.item() == 14.0 and int(teacher.taken_at) == 4
    with pytest.raises(ConfigError):
        SnapshotTeacher(student, every=0)


# --------------------------------------------------------------------------- self-ensemble

TRANSFORMS = [lambda x: x, lambda x: x.flip(-1), lambda x: 2.0 * x]


def test_self_ensemble_probs_is_log_mean_softmax():
    model = mlp(1)
    teacher = SelfEnsembleTeacher(TRANSFORMS, model=model, average="probs")
    x = torch.randn(5, 4)
    out = teacher.signals(x, {}, ["logits"])["logits"]
    with torch.no_grad():
        probs = [F.softmax(model(t(x)), dim=-1) for t in TRANSFORMS]
    expected = torch.log((probs[0] + probs[1] + probs[2]) / 3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(5))


def test_self_ensemble_logits_is_mean_logits_and_taps_are_averaged():
    model = mlp(2)
    teacher = SelfEnsembleTeacher(TRANSFORMS, model=model, average="logits")
    x = torch.randn(3, 4)
    out = teacher.signals(x, {}, ["logits", "0"])
    with torch.no_grad():
        expected = sum(model(t(x)) for t in TRANSFORMS) / 3
        hidden = sum(model[0](t(x)) for t in TRANSFORMS) / 3
    torch.testing.assert_close(out["logits"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["0"], hidden, rtol=1e-5, atol=1e-6)


def test_self_ensemble_uses_current_student_weights_in_eval_mode_and_restores_train():
    student = mlp(3, dropout=0.9)
    student.train()
    teacher = SelfEnsembleTeacher(TRANSFORMS[:2], average="logits")
    teacher.bind(student)
    assert list(teacher.parameters()) == []  # the student is not registered
    x = torch.randn(4, 4)
    out1 = teacher.signals(x, {}, ["logits"])["logits"]
    assert student.training and all(m.training for m in student.modules())
    assert not out1.requires_grad
    student.eval()
    with torch.no_grad():
        expected = (student(x) + student(x.flip(-1))) / 2  # dropout off: eval mode was used
    student.train()
    torch.testing.assert_close(out1, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        student[3].bias.add_(1.0)  # the teacher follows the student's current weights
    out2 = teacher.signals(x, {}, ["logits"])["logits"]
    torch.testing.assert_close(out2, out1 + 1.0, rtol=1e-5, atol=1e-5)


def test_self_ensemble_rejects_bad_settings():
    with pytest.raises(ConfigError):
        SelfEnsembleTeacher([])
    with pytest.raises(ConfigError):
        SelfEnsembleTeacher(TRANSFORMS, average="median")


# ------------------------------------------------------------------------------ privileged


def test_privileged_teacher_reads_its_own_view_and_shares_weights():
    student = mlp(4, dropout=0.5)
    student.train()
    teacher = PrivilegedTeacher(view="x_full")
    teacher.bind(student)
    assert list(teacher.parameters()) == []
    batch = {"x": torch.zeros(3, 4), "x_full": torch.randn(3, 4)}
    x_t = teacher.view(batch)
    assert x_t is batch["x_full"]
    out = teacher.signals(x_t, batch, ["logits", "0"])
    assert student.training  # restored
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], student(batch["x_full"]), rtol=0, atol=0)
        torch.testing.assert_close(out["0"], student[0](batch["x_full"]), rtol=0, atol=0)
        student[3].bias.add_(2.0)
    out2 = teacher.signals(x_t, batch, ["logits"])
    torch.testing.assert_close(out2["logits"], out["logits"] + 2.0, rtol=1e-6, atol=1e-5)
    with pytest.raises(ConfigError):
        PrivilegedTeacher(view=None)


def test_privileged_teacher_with_separate_model():
    other = mlp(5)
    teacher = PrivilegedTeacher(view="x_full", model=other)
    teacher.bind(mlp(6))
    x = torch.randn(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(teacher.signals(x, {}, ["logits"])["logits"], other(x))


# ------------------------------------------------------------------------------------ bank


def two_members():
    a, b = mlp(7), mlp(8)
    return a, b, [FrozenTeacher(a), FrozenTeacher(b)]


def test_bank_fixed_weights_combine_probabilities():
    a, b, members = two_members()
    bank = TeacherBank(members, weights=[1.0, 3.0], combine="probs")
    x = torch.randn(4, 4)
    out = bank.signals(x, {}, ["logits", "0/logits", "1/logits", "0"])
    with torch.no_grad():
        la, lb = a(x), b(x)
        expected = torch.log(0.25 * F.softmax(la, -1) + 0.75 * F.softmax(lb, -1))
        hidden = 0.25 * a[0](x) + 0.75 * b[0](x)
    torch.testing.assert_close(out["logits"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["0"], hidden, rtol=1e-5, atol=1e-6)  # other signals: mean
    torch.testing.assert_close(out["0/logits"], la)
    torch.testing.assert_close(out["1/logits"], lb)
    torch.testing.assert_close(bank.last_weights, torch.tensor([0.25, 0.75]))


def test_bank_logits_combine_and_equal_weights():
    a, b, members = two_members()
    bank = TeacherBank(members, combine="logits")
    x = torch.randn(4, 4)
    with torch.no_grad():
        expected = 0.5 * a(x) + 0.5 * b(x)
    torch.testing.assert_close(bank.signals(x, {}, ["logits"])["logits"], expected, rtol=1e-5, atol=1e-6)


def test_bank_per_sample_weights():
    a, b, members = two_members()
    raw = torch.tensor([[1.0, 1.0], [3.0, 1.0], [0.0, 2.0], [1.0, 4.0]])
    seen = {}

    def weight_fn(batch, outputs):
        seen["n"] = len(outputs)
        seen["keys"] = sorted(outputs[0])
        return raw

    bank = TeacherBank(members, weights=weight_fn, combine="probs")
    x = torch.randn(4, 4)
    out = bank.signals(x, {"x": x}, ["logits"])
    assert seen == {"n": 2, "keys": ["logits"]}
    w = raw / raw.sum(1, keepdim=True)
    with torch.no_grad():
        expected = torch.log(w[:, :1] * F.softmax(a(x), -1) + w[:, 1:] * F.softmax(b(x), -1))
    torch.testing.assert_close(out["logits"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bank.last_weights, w)
    # row 2 puts all weight on member 1
    with torch.no_grad():
        torch.testing.assert_close(out["logits"][2], F.log_softmax(b(x[2:3]), -1)[0], rtol=1e-5, atol=1e-6)
    logits_bank = TeacherBank(two_members()[2], weights=weight_fn, combine="logits")
    a2, b2 = logits_bank.members[0].model, logits_bank.members[1].model
    with torch.no_grad():
        expected = w[:, :1] * a2(x) + w[:, 1:] * b2(x)
    torch.testing.assert_close(logits_bank.signals(x, {}, ["logits"])["logits"], expected, rtol=1e-5, atol=1e-6)


def test_bank_members_read_their_own_views():
    a, b = mlp(9), mlp(10)
    bank = TeacherBank([FrozenTeacher(a, view="x_a"), FrozenTeacher(b)], combine="logits", weights=[1, 1])
    batch = {"x_a": torch.randn(2, 4)}
    x = torch.randn(2, 4)
    out = bank.signals(x, batch, ["0/logits", "1/logits"])
    with torch.no_grad():
        torch.testing.assert_close(out["0/logits"], a(batch["x_a"]))
        torch.testing.assert_close(out["1/logits"], b(x))


def test_bank_rejects_bad_weights():
    with pytest.raises(ConfigError):
        TeacherBank([])
    with pytest.raises(ConfigError):
        TeacherBank(two_members()[2], weights=[1.0, -1.0])
    with pytest.raises(ConfigError):
        TeacherBank(two_members()[2], weights=[1.0, 1.0, 1.0])
    with pytest.raises(ConfigError):
        TeacherBank(two_members()[2], combine="max")


# ----------------------------------------------------------------------------- precomputed


def test_precomputed_from_model_equals_running_the_model():
    model = mlp(11, dropout=0.5)
    model.train()
    x = torch.randn(7, 4)
    ds = TensorDataset(x, torch.arange(7))
    teacher = PrecomputedTeacher.from_model(model, ds, names=["logits", "0"], batch_size=3)
    # the model is kept, frozen, as the eval teacher (documented)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        full_logits, full_hidden = model(x), model[0](x)
    assert teacher.size == 7
    index = torch.tensor([4, 0, 6, 4])
    out = teacher.signals(torch.zeros(4, 4), {"index": index}, ["logits", "0"])
    torch.testing.assert_close(out["logits"], full_logits[index], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["0"], full_hidden[index], rtol=1e-6, atol=1e-6)
    only = teacher.signals(torch.zeros(4, 4), {"index": index}, ["logits"])
    assert set(only) == {"logits"}
    # the eval teacher runs the model itself
    ev = teacher.eval_teacher()
    assert ev is not None
    torch.testing.assert_close(ev.signals(x, {}, ["logits"])["logits"], full_logits)


def test_precomputed_lookup_and_index_errors():
    table = torch.arange(12.0).reshape(4, 3)
    teacher = PrecomputedTeacher({"logits": table})
    out = teacher.signals(torch.zeros(2, 1), {"index": torch.tensor([3, 1])}, ["logits"])
    assert out["logits"].tolist() == [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0]]
    assert teacher.eval_teacher() is None
    with pytest.raises(ConfigError, match="holds 4 samples"):
        teacher.signals(torch.zeros(2, 1), {"index": torch.tensor([1, 4])}, ["logits"])
    with pytest.raises(ConfigError):
        teacher.signals(torch.zeros(1, 1), {"index": torch.tensor([-1])}, ["logits"])
    with pytest.raises(ConfigError, match="index"):
        teacher.signals(torch.zeros(1, 1), {"x": torch.zeros(1, 1)}, ["logits"])
    with pytest.raises(ConfigError):
        PrecomputedTeacher({"a": torch.zeros(3), "b": torch.zeros(4)})
    with pytest.raises(ConfigError, match="no signal"):
        PrecomputedTeacher.from_model(mlp(0), TensorDataset(torch.randn(2, 4)), names=["embedding"])


def test_ema_momentum_is_constant_unless_a_final_momentum_is_given():
    """Issue 10: users of Mean Teacher expect a constant momentum; the ramp is an explicit choice."""
    student = nn.Linear(1, 1)
    teacher = EMATeacher(student, momentum=0.99)
    teacher.bind(student)
    teacher.set_total_steps(100)
    set_linear(student, [[0.0]], [0.0])
    set_linear(teacher.model, [[1.0]], [0.0])
    teacher.update(student, step=99)  # late in training: still 0.99, not ~1.0
    assert float(teacher.model.weight) == pytest.approx(0.99)
    ramped = EMATeacher(student, momentum=0.99, final_momentum=1.0)
    ramped.bind(student)
    ramped.set_total_steps(100)
    set_linear(ramped.model, [[1.0]], [0.0])
    ramped.update(student, step=99)
    assert float(ramped.model.weight) > 0.9999
