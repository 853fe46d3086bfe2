"""LinFusion (#29): the linear attention against an explicit loop, the swap, the cost probes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillery import Distiller, FrozenTeacher, Term
from distillery.models import surgery
from distillery.errors import ConfigError
from distillery.models import build_model
from distillery.models.linear_attention import LinearAttention, linear_attention, linearize_attention
from distillery.models.transformer import Attention
from distillery.objectives import CrossEntropy
from distillery.recipes.linfusion import activation_bytes, linfusion_distiller, linfusion_terms


def _loop(q, k, v, eps):
    """out_i = sum_j (q_i . k_j) v_j / (sum_j q_i . k_j + N eps), one query at a time."""
    n = k.shape[0]
    rows = []
    for i in range(q.shape[0]):
        a = torch.stack([q[i] @ k[j] for j in range(n)])
        rows.append((a[:, None] * v).sum(0) / (a.sum() + n * eps))
    return torch.stack(rows)


def test_linear_attention_matches_the_explicit_normalised_sum():
    g = torch.Generator().manual_seed(0)
    q, k = torch.rand(6, 3, generator=g, dtype=torch.float64), torch.rand(6, 3, generator=g, dtype=torch.float64)
    v = torch.randn(6, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(linear_attention(q, k, v, eps=1e-4), _loop(q, k, v, 1e-4))
    # normalised: constant values come back (up to the eps term); non-causal: the first query sees the last key
    const = torch.full((6, 2), 3.0, dtype=torch.float64)
    torch.testing.assert_close(linear_attention(q, k, const, eps=0.0), const)
    k2 = k.clone().requires_grad_(True)
    linear_attention(q, k2, v)[0].sum().backward()
    assert k2.grad[-1].abs().sum() > 0
    assert torch.autograd.gradcheck(lambda a, b, c: linear_attention(a, b, c), (
        q.clone().requires_grad_(True), k.clone().requires_grad_(True), v.clone().requires_grad_(True)))


def test_swapped_module_starts_from_the_softmax_projections():
    torch.manual_seed(0)
    soft = Attention(8, 2).double()
    lin = LinearAttention.from_attention(soft).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    q, k, v = (x @ soft.qkv.weight.T + soft.qkv.bias).chunk(3, dim=-1)  # zero-initialised maps: q = W_q x
    heads = lambda t: t.reshape(3, 5, 2, 4).transpose(1, 2)  # noqa: E731
    out = torch.zeros(3, 2, 5, 4, dtype=torch.float64)
    for b in range(3):
        for h in range(2):
            out[b, h] = _loop(F.elu(heads(q))[b, h] + 1, F.elu(heads(k))[b, h] + 1, heads(v)[b, h], 1e-4)
    expected = out.transpose(1, 2).reshape(3, 5, 8) @ soft.proj.weight.T + soft.proj.bias
    torch.testing.assert_close(lin(x), expected)
    # the non-linear maps then change the queries: a non-zero last layer moves the output
    nn.init.normal_(lin.q_map[-1].weight)
    assert not torch.allclose(lin(x), expected)


def test_linearize_swaps_every_attention_and_linear_vit_inherits_the_teacher():
    torch.manual_seed(0)
    teacher = build_model("vit", (1, 8, 8), 10, patch_size=2, dim=16, depth=2, heads=2)
    copy_ = build_model("vit", (1, 8, 8), 10, patch_size=2, dim=16, depth=2, heads=2)
    assert linearize_attention(copy_) == ["blocks.0.attn", "blocks.1.attn"]
    assert not any(isinstance(m, Attention) for m in copy_.modules())
    student = build_model("linear_vit", (1, 8, 8), 10, patch_size=2, dim=16, depth=2, heads=2, inherit_teacher_weights=True)
    Distiller(student, FrozenTeacher(teacher), [Term("ce", CrossEntropy())])
    torch.testing.assert_close(student.blocks[1].attn.qkv.weight, teacher.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(student.blocks[0].mlp.fc1.weight, teacher.blocks[0].mlp.fc1.weight)
    with pytest.raises(ConfigError, match="vit teacher"):
        Distiller(build_model("linear_vit", (1, 8, 8), 10, patch_size=2, dim=16, depth=2, heads=2, inherit_teacher_weights=True),
                  FrozenTeacher(build_model("mlp", (1, 8, 8), 10)), [Term("ce", CrossEntropy())])


def test_swap_modules_by_predicate_replaces_outermost_matches():
    net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 2))
    paths = surgery.swap_modules(net, lambda path, m: isinstance(m, nn.Sequential), lambda m: nn.Identity())
    assert paths == ["0"] and isinstance(net[0], nn.Identity)


def test_feature_terms_compare_each_attention_output():
    torch.manual_seed(0)
    teacher = build_model("vit", (1, 8, 8), 10, patch_size=2, dim=16, depth=2, heads=2)
    d = linfusion_distiller(teacher, depth=2)
    assert [t.name for t in d.terms] == ["ce", "kd", "feat_0", "feat_1"]
    batch = {"x": torch.randn(4, 1, 8, 8), "y": torch.tensor([0, 1, 2, 3])}
    d.prepare(batch)
    losses = d.step(batch)
    # at the start only the attention differs, so block 0's input is the teacher's: compare by hand
    tok = teacher.patch_embed(batch["x"])
    tok = torch.cat([teacher.cls_token.expand(4, -1, -1), tok], 1) + teacher.pos_embed
    a_t = teacher.blocks[0].attn(teacher.blocks[0].norm1(tok))
    a_s = d.student.blocks[0].attn(d.student.blocks[0].norm1(tok))
    torch.testing.assert_close(losses["feat_0"], ((a_s - a_t) ** 2).mean())
    with pytest.raises(ConfigError):
        linfusion_terms(2, ce=0, kd=0, feature=0)


class _Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


class _SinCos(nn.Module):
    def forward(self, x):
        return torch.sin(x) * torch.cos(x)


def test_activation_bytes_counts_saved_tensors_and_the_output():
    x = torch.randn(10, 3, requires_grad=True)
    assert activation_bytes(_Exp(), x) == 10 * 3 * 4          # exp saves its result: the output itself
    assert activation_bytes(_SinCos(), x) == 3 * 10 * 3 * 4   # x (excluded); sin(x), cos(x) for mul; the output
    n1, n2 = 64, 256
    soft = Attention(8, 2)
    b1, b2 = activation_bytes(soft, torch.randn(1, n1, 8, requires_grad=True)), activation_bytes(soft, torch.randn(1, n2, 8, requires_grad=True))
    assert b2 / b1 > 12  # the [N, N] probabilities dominate (16 for pure N^2)
    lin = LinearAttention.from_attention(soft)
    l1, l2 = activation_bytes(lin, torch.randn(1, n1, 8, requires_grad=True)), activation_bytes(lin, torch.randn(1, n2, 8, requires_grad=True))
    assert 3.5 < l2 / l1 <= 4.0  # linear in N (constant [d, d] terms make it a little under 4)
