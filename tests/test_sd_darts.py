"""SD-DARTS (#42): voting snapshot teacher, DARTS supernet, bilevel step, Hessian sharpness."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillery.config import parse_config
from distillery.engine.bilevel import BilevelSearch, search_batches
from distillery.engine.build import build_teacher
from distillery.errors import ConfigError
from distillery.models import build_model
from distillery.recipes.sd_darts import darts_distiller, discretized, sd_darts_distiller
from distillery.evaluation.sharpness import hessian_vector_product, top_hessian_eigenvalue
from distillery.teachers import VotingSnapshotTeacher
from distillery.teachers.voting import vote_probs


# -- voting --------------------------------------------------------------------------------
def test_vote_probs_soft_and_majority_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[0.0, 3.0, 0.0]]])  # K=3, B=1, C=3
    soft = sum(F.softmax(logits[k, 0], -1) for k in range(3)) / 3
    torch.testing.assert_close(vote_probs(logits, "soft")[0], soft)
    torch.testing.assert_close(vote_probs(logits, "majority")[0], torch.tensor([1 / 3, 2 / 3, 0.0]))
    with pytest.raises(ConfigError, match="vote"):
        vote_probs(logits, "median")


def test_voting_teacher_keeps_the_most_recent_snapshots_and_votes_over_filled_slots():
    torch.manual_seed(0)
    student = nn.Linear(4, 3)
    teacher = VotingSnapshotTeacher(student, size=3, every=2)
    states = {0: copy.deepcopy(student.state_dict())}
    x = torch.randn(6, 4)

    def expected(steps):
        probs = []
        for s in steps:
            net = nn.Linear(4, 3)
            net.load_state_dict(states[s])
            probs.append(F.softmax(net(x), -1))
        return torch.log(torch.stack(probs).mean(0))

    torch.testing.assert_close(teacher.signals(x, {}, ["logits"])["logits"], expected([0]))
    for step in range(1, 9):
        with torch.no_grad():
            student.weight.add_(0.3 * torch.randn(3, 4))
        teacher.update(student, step)
        if step % 2 == 0:
            states[step] = copy.deepcopy(student.state_dict())
    # snapshots at 0, 2, 4, 6, 8 -> the last three: 4, 6, 8 (slot order 6, 8, 4)
    assert teacher.taken_at.tolist() == [6, 8, 4] and int(teacher.count) == 5 and teacher.filled == 3
    out = teacher.signals(x, {}, ["logits", "1/logits"])
    torch.testing.assert_close(out["logits"], expected([4, 6, 8]))
    net = nn.Linear(4, 3)
    net.load_state_dict(states[8])
    torch.testing.assert_close(out["1/logits"], net(x).detach())
    majority = VotingSnapshotTeacher(student, size=2, every=None, vote="majority")
    torch.testing.assert_close(majority.signals(x, {}, ["logits"])["logits"].exp(), F.one_hot(student(x).argmax(-1), 3).float())


def test_voting_teacher_state_has_a_fixed_shape_and_resumes():
    torch.manual_seed(1)
    student = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    a = VotingSnapshotTeacher(student, size=3, every=1)
    keys = {k: v.shape for k, v in a.state_dict().items()}
    with torch.no_grad():
        student[0].weight.mul_(2)
    a.update(student, 1)
    assert {k: v.shape for k, v in a.state_dict().items()} == keys
    b = VotingSnapshotTeacher(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)), size=3, every=1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(7, 4)
    assert b.filled == 2
    torch.testing.assert_close(b.signals(x, {}, ["logits"])["logits"], a.signals(x, {}, ["logits"])["logits"])
    assert not any(m.training for m in b.train().members)
    with pytest.raises(ConfigError, match="size"):
        VotingSnapshotTeacher(student, size=0)


def test_the_config_names_the_voting_teacher():
    cfg = parse_config({"data": {"dataset": "digits"}, "student": {"name": "darts"},
                        "teacher": {"kind": "voting_snapshots", "size": 2, "every": 5, "vote": "majority"},
                        "objectives": [{"kind": "ce"}, {"kind": "kd"}]})
    net = build_model("darts", (1, 8, 8), 10, channels=4, cells=1, nodes=2)
    teacher = build_teacher(cfg.teacher, net, (1, 8, 8), 10, fit_teacher=None)
    assert isinstance(teacher, VotingSnapshotTeacher) and (teacher.size, teacher.every, teacher.vote) == (2, 5, "majority")


# -- the supernet ---------------------------------------------------------------------------
def small_supernet(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("darts", (1, 8, 8), 10, **{"channels": 4, "cells": 1, "nodes": 2, **kw}).double()


def test_cell_is_the_softmax_weighted_sum_of_ops_written_out():
    net = small_supernet()
    with torch.no_grad():
        net.alpha.copy_(torch.randn(3, 3, dtype=torch.float64))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cell = net.cells[0]
    w = F.softmax(net.alpha, -1)
    s0 = cell.preprocess(net.stem(x))
    mixed = [lambda h, e=e: sum(w[e, o] * cell.edges[e].ops[o](h) for o in range(3)) for e in range(3)]
    n0 = mixed[0](s0)                      # edge 0: input -> node 0
    n1 = mixed[1](s0) + mixed[2](n0)       # edges 1, 2: input -> node 1, node 0 -> node 1
    h = cell.project(torch.cat([n0, n1], 1))
    torch.testing.assert_close(net(x), net.head(h.mean((2, 3))))


def test_genotype_and_the_discretised_network():
    net = small_supernet(nodes=3, ops=("none", "skip_connect", "conv_3x3", "max_pool_3x3"))
    # edges: (0,0) | (0,1) (1,1) | (0,2) (1,2) (2,2); ops: none, skip, conv, pool
    alpha = torch.tensor([
        [5.0, 1.0, 2.0, 0.0],   # none is largest but never chosen -> conv
        [0.0, 3.0, 0.0, 0.0],   # skip, strong
        [0.0, 0.0, 0.0, 1.0],   # pool, weak
        [0.0, 0.0, 0.5, 0.0],   # conv, weakest of node 2
        [0.0, 0.0, 0.0, 4.0],   # pool, strongest
        [0.0, 2.0, 0.0, 0.0],   # skip, second
    ], dtype=torch.float64)
    with torch.no_grad():
        net.alpha.copy_(alpha)
    expected = [(0, 0, "conv_3x3"), (0, 1, "skip_connect"), (1, 1, "max_pool_3x3"), (1, 2, "max_pool_3x3"), (2, 2, "skip_connect")]
    assert net.genotype() == expected
    w = net.discrete_weights()
    assert w.sum().item() == 5 and w[3].sum().item() == 0 and w[4, 3].item() == 1
    derived = discretized(net)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cell = derived.cells[0]
    s0 = cell.preprocess(derived.stem(x))
    n0 = cell.edges[0].ops[2](s0)
    n1 = cell.edges[1].ops[1](s0) + cell.edges[2].ops[3](n0)
    n2 = cell.edges[4].ops[3](n0) + cell.edges[5].ops[1](n1)
    h = cell.project(torch.cat([n0, n1, n2], 1))
    torch.testing.assert_close(derived(x), derived.head(h.mean((2, 3))))
    assert net.fixed_weights is None  # the original keeps its softmax(alpha)


# -- the bilevel step ----------------------------------------------------------------------
def test_bilevel_step_moves_alpha_by_the_validation_gradient_and_weights_by_the_training_loss():
    net = small_supernet(seed=3)
    ref = copy.deepcopy(net)
    d = darts_distiller(net)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.1)
    a_opt = torch.optim.SGD(net.arch_parameters(), lr=0.5)
    search = BilevelSearch(d, net.arch_parameters(), w_opt, a_opt, clip_grad_norm=None)
    g = torch.Generator().manual_seed(0)
    train = {"x": torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), "y": torch.arange(6)}
    val = {"x": torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), "y": torch.arange(6) + 3}
    d.prepare(train)
    ref.load_state_dict(net.state_dict())  # the same BatchNorm statistics after prepare()
    search.step(train, val)
    # independent reference: alpha' = alpha - 0.5 grad_alpha CE(val); then w' = w - 0.1 grad_w CE(train) at alpha'
    ref.train()
    g_alpha = torch.autograd.grad(F.cross_entropy(ref(val["x"]), val["y"]), ref.alpha)[0]
    with torch.no_grad():
        ref.alpha -= 0.5 * g_alpha
    torch.testing.assert_close(net.alpha, ref.alpha)
    grads = torch.autograd.grad(F.cross_entropy(ref(train["x"]), train["y"]), ref.weight_parameters(), allow_unused=True)
    for p, q, gq in zip(net.weight_parameters(), ref.weight_parameters(), grads):
        torch.testing.assert_close(p, q - 0.1 * (gq if gq is not None else 0))
    with pytest.raises(ConfigError, match="must not update the architecture"):
        BilevelSearch(d, net.arch_parameters(), torch.optim.SGD(net.parameters(), lr=0.1), a_opt)
    pairs = list(search_batches([1, 2, 3, 4, 5], [10, 20]))
    assert pairs == [(1, 10), (2, 20), (3, 10), (4, 20), (5, 10)]


def test_sd_darts_weight_loss_is_ce_plus_kd_to_the_voted_snapshots():
    net = small_supernet(seed=4).float()
    d = sd_darts_distiller(net, size=2, every=1, temperature=2.0, weight=0.5)
    batch = {"x": torch.randn(5, 1, 8, 8), "y": torch.tensor([0, 1, 2, 3, 4])}
    d.prepare(batch)
    with torch.no_grad():
        net.alpha.add_(1.0)
    d.teacher.snapshot(net, 1)
    losses = d.step(batch)
    with torch.no_grad():
        members = [d.teacher.members[i](batch["x"]) for i in range(2)]
    p_vote = (F.softmax(members[0], -1) + F.softmax(members[1], -1)) / 2
    p_t = F.softmax(torch.log(p_vote) / 2.0, -1)  # the vote, then the temperature
    logits = net.train()(batch["x"])
    kd = 4.0 * (p_t * (p_t.log() - F.log_softmax(logits / 2.0, -1))).sum(-1).mean()
    torch.testing.assert_close(losses["sd"], kd, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss"], F.cross_entropy(logits, batch["y"]) + 0.5 * kd, rtol=1e-4, atol=1e-6)


# -- sharpness -----------------------------------------------------------------------------
def test_hvp_and_top_eigenvalue_on_a_quadratic_match_the_closed_form():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.1 * torch.eye(6, dtype=torch.float64)  # SPD Hessian
    b = torch.randn(6, generator=g, dtype=torch.float64)
    theta = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)

    def loss():
        return 0.5 * theta @ a @ theta + b @ theta

    v = torch.randn(6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(hessian_vector_product(loss, [theta], [v])[0], a @ v)
    lam, vec = top_hessian_eigenvalue(loss, [theta], iters=500, tol=1e-12, generator=g)
    evals, evecs = torch.linalg.eigh(a)
    assert lam == pytest.approx(float(evals[-1]), rel=1e-8)
    assert abs(float(vec[0] @ evecs[:, -1])) == pytest.approx(1.0, abs=1e-6)
    # split over two parameter tensors: the same Hessian
    t1 = theta.detach()[:2].clone().requires_grad_()
    t2 = theta.detach()[2:].clone().requires_grad_()

    def loss2():
        t = torch.cat([t1, t2])
        return 0.5 * t @ a @ t

    lam2, _ = top_hessian_eigenvalue(loss2, [t1, t2], iters=500, tol=1e-12, generator=g)
    assert lam2 == pytest.approx(float(evals[-1]), rel=1e-8)


def test_top_eigenvalue_of_a_non_quadratic_loss_matches_the_explicit_hessian():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    theta = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)

    def f(t):
        return torch.logsumexp(t @ w, 0) + 0.5 * (t**2).sum() + torch.cos(t).sum() * 0.1

    h = torch.autograd.functional.hessian(f, theta.detach())
    evals = torch.linalg.eigvalsh(h)
    dominant = float(evals[evals.abs().argmax()])
    lam, _ = top_hessian_eigenvalue(lambda: f(theta), [theta], iters=1000, tol=1e-14, generator=g)
    assert lam == pytest.approx(dominant, rel=1e-6)
    assert top_hessian_eigenvalue(lambda: (theta * 3).sum(), [theta])[0] == 0.0  # linear: zero Hessian
    with pytest.raises(ConfigError, match="iters"):
        top_hessian_eigenvalue(lambda: f(theta), [theta], iters=0)
    assert not math.isnan(lam)
