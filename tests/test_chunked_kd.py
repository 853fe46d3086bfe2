"""Chunked (fused linear + divergence) KD loss against the dense computation.

The reference is :func:`dense_kd_loss` (full logits, then the dense divergence functions,
autograd for the gradients), itself checked here against explicit float64 formulas.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distillery.objectives.chunked as chunked_module
from distillery.engine.distiller import Distiller, Term
from distillery.errors import ConfigError, DataError, ShapeError
from distillery.objectives import ChunkedKD, SoftTargetKD, chunked_kd_loss, dense_kd_loss
from distillery.registry import OBJECTIVES
from distillery.teachers import FrozenTeacher

# (divergence, beta): every divergence, JSD at inner points and at the GKD endpoints
DIVERGENCES = [
    ("forward_kl", 0.5),
    ("reverse_kl", 0.5),
    ("jsd", 0.1),
    ("jsd", 0.5),
    ("jsd", 0.9),
    ("jsd", 0.0),
    ("jsd", 1.0),
]
V = 23  # vocabulary


def make(n=30, h_s=6, h_t=5, dtype=torch.float32, seed=0, bias=True, pad_every=4):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    student = {
        "student_hidden": rand(n, h_s).requires_grad_(),
        "student_weight": rand(V, h_s).requires_grad_(),
    }
    teacher = {"teacher_hidden": rand(n, h_t, scale=1.5), "teacher_weight": rand(V, h_t)}
    if bias:
        student["student_bias"] = rand(V).requires_grad_()
        teacher["teacher_bias"] = rand(V)
    labels = torch.randint(0, V, (n,), generator=g)
    if pad_every:
        labels[::pad_every] = -100
        labels[-3:] = -100  # a padded tail
    return student, teacher, labels


def value_and_grads(fn, student, teacher, **kw):
    loss = fn(**student, **teacher, **kw)
    grads = torch.autograd.grad(loss.sum(), list(student.values()))
    return loss, grads


def assert_close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# --------------------------------------------------------------------- against the dense path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_value_and_gradients_equal_dense(dtype, divergence, beta, temperature, grad_in_forward):
    student, teacher, labels = make(dtype=dtype, seed=hash((divergence, beta)) % 1000)
    kw = {"divergence": divergence, "beta": beta, "temperature": temperature, "labels": labels}
    dense, dense_grads = value_and_grads(dense_kd_loss, student, teacher, **kw)
    for chunk_size in (7, 4):  # neither divides the 30 positions (22 counted)
        loss, grads = value_and_grads(
            chunked_kd_loss, student, teacher, chunk_size=chunk_size,
            grad_in_forward=grad_in_forward, **kw,
        )
        assert loss.dtype == dtype and loss.shape == ()
        assert_close(loss, dense)
        for g, ref in zip(grads, dense_grads):
            assert g.dtype == dtype
            assert_close(g, ref)
    assert float(dense.detach()) > 0.01


@pytest.mark.parametrize("divergence,beta", DIVERGENCES[:3])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_sum_and_per_token_reductions_equal_dense(divergence, beta, reduction):
    student, teacher, labels = make(dtype=torch.float64)
    kw = {"divergence": divergence, "beta": beta, "temperature": 2.0, "labels": labels, "reduction": reduction}
    dense, dense_grads = value_and_grads(dense_kd_loss, student, teacher, **kw)
    loss, grads = value_and_grads(chunked_kd_loss, student, teacher, chunk_size=8, **kw)
    assert_close(loss, dense)
    for g, ref in zip(grads, dense_grads):
        assert_close(g, ref)
    if reduction == "none":
        assert loss.shape == (30,)
        assert bool((loss[labels == -100] == 0).all())
        assert bool((loss[labels != -100] > 0).all())
        # a per-token upstream gradient (not all ones) reaches the right rows
        w = torch.linspace(0.5, 2.0, 30, dtype=torch.float64)
        g1 = torch.autograd.grad((chunked_kd_loss(**student, **teacher, chunk_size=8, **kw) * w).sum(),
                                 list(student.values()))
        g2 = torch.autograd.grad((dense_kd_loss(**student, **teacher, **kw) * w).sum(),
                                 list(student.values()))
        for a, b in zip(g1, g2):
            assert_close(a, b)


def test_batched_inputs_labels_and_mask():
    """[B, T, H] inputs are flattened; labels and a boolean mask combine; 'none' is [B, T]."""
    student, teacher, labels = make(n=24, dtype=torch.float64, bias=False)
    shaped = {k: v.detach().reshape(4, 6, -1).requires_grad_() if "hidden" in k else v
              for k, v in {**student, **teacher}.items()}
    labels = labels.reshape(4, 6)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, :2] = False
    kw = {"divergence": "jsd", "beta": 0.3, "labels": labels, "mask": mask, "temperature": 1.5}
    per_token = chunked_kd_loss(**shaped, chunk_size=5, reduction="none", **kw)
    assert per_token.shape == (4, 6)
    counted = (labels != -100) & mask
    assert bool((per_token[~counted] == 0).all()) and bool((per_token[counted] > 0).all())
    assert_close(per_token, dense_kd_loss(**shaped, reduction="none", **kw))
    mean = chunked_kd_loss(**shaped, chunk_size=5, **kw)
    assert_close(mean, per_token.sum() / counted.sum())
    assert_close(mean, dense_kd_loss(**shaped, **kw))


@pytest.mark.parametrize("divergence,beta", DIVERGENCES[:3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_positions_ignored(divergence, beta, reduction):
    student, teacher, labels = make()
    labels = torch.full_like(labels, -100)
    kw = {"divergence": divergence, "beta": beta, "labels": labels, "reduction": reduction}
    loss, grads = value_and_grads(chunked_kd_loss, student, teacher, chunk_size=7, **kw)
    dense, _ = value_and_grads(dense_kd_loss, student, teacher, **kw)
    assert bool((loss == 0).all()) and loss.shape == dense.shape
    assert all(bool((g == 0).all()) for g in grads)


def test_ignored_positions_are_never_computed():
    """Non-finite hidden states at ignored positions do not reach the value or gradients."""
    student, teacher, labels = make(dtype=torch.float64)
    with torch.no_grad():
        student["student_hidden"][labels == -100] = float("nan")
    loss, grads = value_and_grads(chunked_kd_loss, student, teacher, chunk_size=6, labels=labels)
    assert math.isfinite(float(loss.detach()))
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert bool((grads[0][labels == -100] == 0).all())


@pytest.mark.parametrize("divergence,beta", DIVERGENCES[:4])
def test_chunk_at_least_n_is_one_chunk(divergence, beta):
    student, teacher, labels = make(pad_every=0)
    kw = {"divergence": divergence, "beta": beta, "temperature": 3.0, "labels": labels}
    one, one_grads = value_and_grads(chunked_kd_loss, student, teacher, chunk_size=30, **kw)
    big, big_grads = value_and_grads(chunked_kd_loss, student, teacher, chunk_size=10_000, **kw)
    assert torch.equal(one, big)
    assert all(torch.equal(a, b) for a, b in zip(one_grads, big_grads))


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
@pytest.mark.parametrize("reduction,grad_in_forward", [("mean", False), ("mean", True), ("none", False)])
def test_gradcheck_float64(divergence, beta, reduction, grad_in_forward):
    student, teacher, labels = make(n=7, h_s=3, h_t=2, dtype=torch.float64, pad_every=3)

    def f(h, w, b):
        return chunked_kd_loss(
            h, w, **teacher, student_bias=b, divergence=divergence, beta=beta, temperature=1.7,
            labels=labels, chunk_size=3, reduction=reduction, grad_in_forward=grad_in_forward,
        )

    assert torch.autograd.gradcheck(f, tuple(student.values()), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------- the reference itself


def explicit(s_logits, t_logits, divergence, beta, T):
    """Per-token T^2 * divergence from explicit float64 softmax formulas."""
    ps = torch.softmax(s_logits.double() / T, -1)
    pt = torch.softmax(t_logits.double() / T, -1)

    def kl(p, q):
        return (p * (p.log() - q.log())).sum(-1)

    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0):
        d = kl(pt, ps)
    elif divergence == "reverse_kl" or beta == 1:
        d = kl(ps, pt)
    else:
        m = beta * pt + (1 - beta) * ps
        d = beta * kl(pt, m) + (1 - beta) * kl(ps, m)
    return T * T * d


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
def test_dense_reference_matches_explicit_formula(divergence, beta):
    student, teacher, labels = make(dtype=torch.float64)
    s = F.linear(student["student_hidden"], student["student_weight"], student["student_bias"])
    t = F.linear(teacher["teacher_hidden"], teacher["teacher_weight"], teacher["teacher_bias"])
    ref = explicit(s, t, divergence, beta, 2.0)
    ref = torch.where(labels != -100, ref, torch.zeros_like(ref))
    got = chunked_kd_loss(**student, **teacher, divergence=divergence, beta=beta, temperature=2.0,
                          labels=labels, chunk_size=5, reduction="none")
    assert_close(got, ref, 1e-10)
    assert_close(dense_kd_loss(**student, **teacher, divergence=divergence, beta=beta,
                               temperature=2.0, labels=labels, reduction="none"), ref, 1e-10)


# --------------------------------------------------------------------- teacher, dtypes, errors


def test_teacher_is_constant():
    student, teacher, _ = make()
    teacher = {k: v.detach().requires_grad_() for k, v in teacher.items()}
    chunked_kd_loss(**student, **teacher, chunk_size=4, divergence="jsd").backward()
    assert all(t.grad is None for t in teacher.values())
    assert all(s.grad is not None for s in student.values())


def test_bfloat16_computes_in_float32():
    student, teacher, labels = make()
    s16 = {k: v.detach().bfloat16().requires_grad_() for k, v in student.items()}
    t16 = {k: v.bfloat16() for k, v in teacher.items()}
    loss, grads = value_and_grads(chunked_kd_loss, s16, t16, chunk_size=7, labels=labels,
                                  divergence="reverse_kl")
    dense, dense_grads = value_and_grads(dense_kd_loss, s16, t16, labels=labels,
                                         divergence="reverse_kl")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, dense, atol=1e-4, rtol=1e-4)
    for g, ref, x in zip(grads, dense_grads, s16.values()):
        assert g.dtype == x.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_errors_name_the_problem():
    student, teacher, labels = make()
    with pytest.raises(ShapeError, match="vocabulary"):
        chunked_kd_loss(**student, teacher_hidden=teacher["teacher_hidden"],
                        teacher_weight=torch.randn(V + 1, 5))
    with pytest.raises(ShapeError, match="do not fit"):
        chunked_kd_loss(student["student_hidden"], torch.randn(V, 4), **teacher)
    with pytest.raises(ShapeError, match="labels"):
        chunked_kd_loss(**student, **teacher, labels=labels[:-1])
    with pytest.raises(DataError, match="boolean"):
        chunked_kd_loss(**student, **teacher, mask=torch.ones(30))
    with pytest.raises(ConfigError, match="divergence"):
        chunked_kd_loss(**student, **teacher, divergence="kl")
    with pytest.raises(ConfigError, match="beta"):
        chunked_kd_loss(**student, **teacher, divergence="jsd", beta=1.5)
    with pytest.raises(ConfigError, match="chunk_size"):
        chunked_kd_loss(**student, **teacher, chunk_size=0)
    with pytest.raises(ValueError, match="reduction"):
        chunked_kd_loss(**student, **teacher, reduction="batchmean")


# --------------------------------------------------------------------- memory (structural)


def test_no_tokens_by_vocabulary_tensor_is_created_or_saved():
    """Every tensor the chunked loss creates (forward and backward) or saves for backward is
    at most chunk_size x V; the dense path creates N x V ones. A structural check: it counts
    tensor sizes, not bytes of a process (the benchmark measures those)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    n, chunk, vocab = 64, 8, 100
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, 4, generator=g, requires_grad=True)
    w = torch.randn(vocab, 4, generator=g, requires_grad=True)
    ht, wt = torch.randn(n, 3, generator=g), torch.randn(vocab, 3, generator=g)
    saved: list[int] = []

    def run(fn, **kw):
        mode = Largest()
        with mode, torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel()) or t, lambda t: t
        ):
            fn(h, w, ht, wt, divergence="jsd", **kw).backward()
        return mode.largest

    assert run(dense_kd_loss) >= n * vocab  # the check sees the dense path's logits
    saved.clear()
    assert run(chunked_kd_loss, chunk_size=chunk) <= chunk * vocab
    assert max(saved) <= max(n * 4, vocab * 4)  # only the inputs are kept for backward


# --------------------------------------------------------------------- objective and distiller


class TinyLM(nn.Module):
    """Embedding -> MLP -> lm_head: a stand-in for a causal LM."""

    def __init__(self, seed, width, vocab=V):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, width)
        self.body = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.lm_head = nn.Linear(width, vocab)

    def forward(self, tokens):
        return self.lm_head(self.body(self.embed(tokens)))


def test_objective_registered_and_per_sample_reduction():
    assert OBJECTIVES.get("chunked_kd") is ChunkedKD
    head_s, head_t = nn.Linear(6, V), nn.Linear(5, V)
    h_s, h_t = torch.randn(3, 4, 6), torch.randn(3, 4, 5)
    labels = torch.tensor([[1, 2, -100, -100], [3, 4, 5, 6], [-100] * 4])
    per_sample = ChunkedKD(head_s, head_t, chunk_size=5, reduction="none")(h_s, h_t, labels=labels)
    per_token = chunked_kd_loss(h_s, head_s.weight, h_t, head_t.weight, student_bias=head_s.bias,
                                teacher_bias=head_t.bias, labels=labels, reduction="none")
    assert per_sample.shape == (3,)
    assert_close(per_sample, torch.stack([per_token[0, :2].mean(), per_token[1].mean(),
                                          torch.zeros(())]))
    kd = ChunkedKD(head_s, head_t)
    assert not list(kd.parameters())  # heads are not registered (they belong to the models)
    with pytest.raises(ConfigError):
        ChunkedKD(head_s, head_t, divergence="tvd")


def test_distiller_wiring_equals_dense_kd_on_logits():
    """In a Distiller, reading lm_head inputs: the same value as SoftTargetKD on the logits,
    and gradients reach the student's lm_head."""
    student, teacher_model = TinyLM(0, 8), TinyLM(1, 12)
    tokens = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(2))
    batch = {"x": tokens, "y": torch.randint(0, V, (3, 5))}
    kd = ChunkedKD(student.lm_head, teacher_model.lm_head, temperature=2.0, chunk_size=4)
    distiller = Distiller(student, FrozenTeacher(teacher_model), [
        Term("kd", kd),
        Term("dense", SoftTargetKD(temperature=2.0)),
    ])
    out = distiller.step(batch)
    assert_close(out["kd"], out["dense"])
    out["loss"].backward()
    assert student.lm_head.weight.grad is not None and student.embed.weight.grad is not None
    assert teacher_model.lm_head.weight.grad is None


def test_docstring_examples_run():
    result = doctest.testmod(chunked_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------- hard inputs
#
# Large (std 20 and 50), peaked and one-hot-like logits, and a 32k vocabulary: chunked
# against dense and both against float64 formulas written in log space from the definitions.

HARD_CASES = ["std20", "std50", "peaked", "one_hot_like", "vocab32k"]


def make_hard(case, dtype=torch.float32, n=12, seed=0):
    """Student and teacher (hidden, weight, bias) whose logits are of the given case.

    For the 23-class cases the hidden states are the logits themselves (weight = identity,
    small bias); for ``vocab32k`` the hidden states are [12, 16] and the weights scaled so
    that the logits over 32,000 entries have std 20.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def side():
        if case == "vocab32k":
            h, w = rand(n, 16), 5.0 * rand(32_000, 16)
        else:
            x = rand(n, V)
            hot = F.one_hot(torch.randint(0, V, (n,), generator=g), V).double()
            h = {"std20": 20.0 * x, "std50": 50.0 * x, "peaked": 2.0 * x + 12.0 * hot,
                 "one_hot_like": 0.1 * x + 30.0 * hot}[case]
            w = torch.eye(V, dtype=torch.float64)
        return h.to(dtype), w.to(dtype), (0.1 * rand(w.shape[0])).to(dtype)

    (hs, ws, bs), (ht, wt, bt) = side(), side()
    student = {"student_hidden": hs.requires_grad_(), "student_weight": ws.requires_grad_(),
               "student_bias": bs.requires_grad_()}
    teacher = {"teacher_hidden": ht, "teacher_weight": wt, "teacher_bias": bt}
    return student, teacher


def explicit_log_space(s_logits, t_logits, divergence, beta, T):
    """Per-token T^2 * divergence in float64 from log-softmaxes (no probability underflows)."""
    log_ps = torch.log_softmax(s_logits.double() / T, -1)
    log_pt = torch.log_softmax(t_logits.double() / T, -1)

    def kl(log_p, log_q):
        p = log_p.exp()
        return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)

    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0):
        d = kl(log_pt, log_ps)
    elif divergence == "reverse_kl" or beta == 1:
        d = kl(log_ps, log_pt)
    else:
        log_m = torch.logaddexp(math.log(beta) + log_pt, math.log1p(-beta) + log_ps)
        d = beta * kl(log_pt, log_m) + (1 - beta) * kl(log_ps, log_m)
    return T * T * d


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("case", HARD_CASES)
@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
def test_hard_inputs_match_float64_and_dense(divergence, beta, case, temperature):
    kw = {"divergence": divergence, "beta": beta, "temperature": temperature}
    s64, t64 = make_hard(case, torch.float64)
    s_logits = F.linear(*(s64[k].detach() for k in ("student_hidden", "student_weight", "student_bias")))
    t_logits = F.linear(*(t64[k] for k in ("teacher_hidden", "teacher_weight", "teacher_bias")))
    reference = explicit_log_space(s_logits, t_logits, divergence, beta, temperature)
    dense64, dense64_grads = value_and_grads(dense_kd_loss, s64, t64, reduction="none", **kw)
    torch.testing.assert_close(dense64.detach(), reference, rtol=1e-9, atol=1e-9)
    scales = [max(float(g.abs().max()), 1.0) for g in dense64_grads]
    for dtype in (torch.float64, torch.float32):
        student, teacher = make_hard(case, dtype)
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        per_token, grads = value_and_grads(
            chunked_kd_loss, student, teacher, chunk_size=5, reduction="none", **kw
        )
        torch.testing.assert_close(per_token.detach().double(), reference, rtol=tol, atol=tol)
        dense, dense_grads = value_and_grads(dense_kd_loss, student, teacher, reduction="none", **kw)
        torch.testing.assert_close(per_token, dense, rtol=tol, atol=tol)
        gtol = 1e-9 if dtype == torch.float64 else 1e-3
        for g, d, g64, scale in zip(grads, dense_grads, dense64_grads, scales):
            torch.testing.assert_close(g, d, rtol=gtol, atol=gtol * scale)
            torch.testing.assert_close(g.double(), g64, rtol=gtol, atol=gtol * scale)


def test_reverse_kl_keeps_small_teacher_probabilities():
    """A teacher log-probability of -100 is kept (not clamped at log(float32 tiny))."""
    h = torch.ones(1, 1)
    s_w, t_w = torch.zeros(2, 1, requires_grad=True), torch.tensor([[0.0], [-100.0]])
    expected = 50.0 - math.log(2.0)  # KL((1/2, 1/2) || (1, e^-100))
    for divergence, beta in (("reverse_kl", 0.5), ("jsd", 1.0)):
        for grad_in_forward in (False, True):
            got = chunked_kd_loss(h, s_w, h, t_w, divergence=divergence, beta=beta,
                                  grad_in_forward=grad_in_forward)
            assert abs(got.item() - expected) < 1e-5 * expected


@pytest.mark.parametrize("case", ["std20", "std50", "one_hot_like"])
@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
def test_hard_inputs_gradcheck_float64(divergence, beta, case):
    student, teacher = make_hard(case, torch.float64, n=5)
    student = {k: v.detach()[:, :7].clone() if k == "student_hidden" else v.detach()[:7, :7].clone()
               if k == "student_weight" else v.detach()[:7].clone() for k, v in student.items()}
    teacher = {k: v[:, :7] if k == "teacher_hidden" else v[:7, :7] if k == "teacher_weight" else v[:7]
               for k, v in teacher.items()}

    def f(h, w, b):
        return chunked_kd_loss(h, w, **teacher, student_bias=b, divergence=divergence, beta=beta,
                               temperature=0.7, chunk_size=2)

    inputs = tuple(v.requires_grad_() for v in student.values())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)
