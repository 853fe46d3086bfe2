"""DependencyViT (Ding et al. 2023, arXiv:2304.03282): reversed attention, the dependency tree,
leaf pruning (Lite), multiply-adds, and the recipe's Lite recovery by distillation."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from distillery.errors import ConfigError, ShapeError
from distillery.models import build_model
from distillery.models.miniature.dependency import (
    DependencyViT,
    dependency_parents,
    keep_counts,
    leaf_scores,
    multiply_adds,
    reversed_attention,
)
from distillery.recipes.dependency_vit import (
    cost,
    dependency_vit_model,
    lite_config,
    lite_distiller,
    lite_objectives,
    pruning_trace,
)

VIT = {"patch_size": 2, "dim": 16, "depth": 3, "heads": 2, "mlp_ratio": 2.0}


def _loop_reference(a_f, send, v):
    """out[b,h,i] = sum_j a_f[b,h,j,i] send[b,h,j] v[b,h,j]; mask[b,i,j] = sum_h a_f[b,h,j,i] send[b,h,j]."""
    b_, h_, n, _ = v.shape
    out = torch.zeros_like(v)
    mask = torch.zeros(b_, n, n, dtype=v.dtype)
    for b in range(b_):
        for h in range(h_):
            for i in range(n):
                for j in range(n):
                    w = a_f[b, h, j, i] * send[b, h, j]
                    out[b, h, i] += w * v[b, h, j]
                    mask[b, i, j] += w
    return out, mask


def _inputs(b=2, h=3, n=5, d=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a_f = torch.softmax(torch.randn(b, h, n, n, generator=g, dtype=dtype) * 3, dim=-1)
    send = torch.rand(b, h, n, generator=g, dtype=dtype)
    v = torch.randn(b, h, n, d, generator=g, dtype=dtype)
    return a_f, send, v


def test_reversed_attention_matches_the_sum_over_children():
    a_f, send, v = _inputs(b=2, h=2, n=4, d=3)
    out, mask = reversed_attention(a_f, send, v)
    ref_out, ref_mask = _loop_reference(a_f, send, v)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(mask, ref_mask)
    # each child sends its whole share: column j of the mask sums to sum_h send[h, j]
    torch.testing.assert_close(mask.sum(1), send.sum(1))


def test_reversed_attention_is_the_transpose_of_ordinary_attention():
    a_f, _, v = _inputs(h=1)
    out, _ = reversed_attention(a_f, torch.ones(a_f.shape[:3], dtype=a_f.dtype), v)
    torch.testing.assert_close(out, a_f.transpose(-2, -1) @ v)
    # ordinary attention gathers (rows of A_F sum to 1); the reverse does not in general
    assert not torch.allclose(a_f.transpose(-2, -1).sum(-1), torch.ones(2, 1, 5, dtype=a_f.dtype))


def test_reversed_attention_gradcheck():
    a_f, send, v = _inputs(b=1, h=2, n=4, d=3)
    for t in (a_f, send, v):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, s, x: reversed_attention(a, s, x)[0], (a_f, send, v))
    assert torch.autograd.gradcheck(lambda a, s, x: reversed_attention(a, s, x)[1], (a_f, send, v))


def test_reversed_attention_bad_shapes():
    a_f, send, v = _inputs()
    with pytest.raises(ShapeError, match="forward_attn"):
        reversed_attention(a_f[..., :-1], send, v)
    with pytest.raises(ShapeError, match="send"):
        reversed_attention(a_f, send[:, :1], v)


def test_module_dependency_columns_sum_to_the_message_controller():
    torch.manual_seed(0)
    net = build_model("dependency_vit", (1, 8, 8), 10, **VIT)
    attn = net.blocks[0].attn
    x = torch.randn(3, 16, 16)
    out, mask = attn(x)
    assert out.shape == (3, 16, 16) and mask.shape == (3, 16, 16)
    m = torch.sigmoid(attn.message_controller(x)).squeeze(-1)  # [B, N]
    torch.testing.assert_close(mask.sum(1), m)
    # written out once more from the module's weights
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    split = lambda t: t.reshape(3, 16, 2, 8).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    a_f = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
    w = torch.softmax(attn.head_selector(x) / 0.1, dim=-1).transpose(1, 2)  # [B, H, N]
    expected = torch.einsum("bhji,bhj,bhjd->bhid", a_f, w * m[:, None], v).transpose(1, 2).reshape(3, 16, 16)
    torch.testing.assert_close(out, attn.proj(expected), rtol=1e-5, atol=1e-6)


def test_leaf_scores_and_parents_on_a_hand_built_tree():
    # tree: 0 is the root; 1 -> 0, 2 -> 0, 3 -> 1 (child -> parent); column j = child j's parent distribution
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 0] = 1.0  # the root sends to itself
    mask[0, 0, 1] = mask[0, 0, 2] = 1.0
    mask[0, 1, 3] = 0.9
    mask[0, 3, 3] = 0.1  # self-loop left out of the scores
    torch.testing.assert_close(leaf_scores(mask), torch.tensor([[2.0, 0.9, 0.0, 0.0]]))
    assert dependency_parents(mask)[0, 1:].tolist() == [0, 0, 1]
    with pytest.raises(ShapeError):
        leaf_scores(torch.zeros(4, 4))


def test_keep_counts():
    assert keep_counts(None, 3, 16) == [16, 16, 16]
    assert keep_counts([1.0, 0.75, 0.5], 3, 16) == [16, 12, 8]
    assert keep_counts([1.0, 0.01, 0.01], 3, 16) == [16, 1, 1]
    for bad, match in (([1.0, 0.5], "one fraction per block"), ([0.5, 0.5, 0.5], "starting with 1.0"),
                       ([1.0, 0.5, 0.75], "must not increase"), ([1.0, 0.0, 0.0], r"\(0, 1\]"), ("1,1,1", "list")):
        with pytest.raises(ConfigError, match=match):
            keep_counts(bad, 3, 16)


@pytest.mark.parametrize("bad, key", [({"patch_size": 3}, "patch_size"), ({"dim": 15}, "divisible"), ({"select": "root"}, "select"),
                                      ({"keep_ratios": [1.0, 2.0, 1.0]}, "keep_ratios"), ({"temperature": 0.0}, "temperature"),
                                      ({"depth": 0}, "depth")])
def test_factory_rejects_bad_params(bad, key):
    with pytest.raises(ConfigError, match=key):
        build_model("dependency_vit", (1, 8, 8), 10, **dict(VIT, **bad))


def test_forward_shapes_and_bad_input():
    net = build_model("dependency_vit", (1, 8, 8), 10, **VIT, keep_ratios=[1.0, 0.5, 0.25])
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    with pytest.raises(ShapeError, match="dependency_vit"):
        net(torch.randn(5, 8, 8))


def test_lite_keeps_the_tokens_most_depended_on():
    torch.manual_seed(1)
    net = build_model("dependency_vit", (1, 8, 8), 10, **VIT, keep_ratios=[1.0, 0.5, 0.25]).eval()
    with torch.no_grad():
        tr = net.trace(torch.randn(4, 1, 8, 8))
    assert [k.shape[1] for k in tr["kept"]] == [16, 8, 4]
    for b in (1, 2):
        prev, cur = tr["kept"][b - 1], tr["kept"][b]
        scores = leaf_scores(tr["dependency"][b - 1])  # over the previous block's tokens
        for s in range(4):
            chosen = [prev[s].tolist().index(p) for p in cur[s].tolist()]
            top = torch.topk(scores[s], cur.shape[1]).indices.sort().values.tolist()
            assert sorted(chosen) == top
            assert cur[s].tolist() == sorted(cur[s].tolist())  # kept in patch order


def test_random_select_keeps_the_same_number():
    net = build_model("dependency_vit", (1, 8, 8), 10, **VIT, keep_ratios=[1.0, 0.5, 0.5], select="random").eval()
    with torch.no_grad():
        tr = net.trace(torch.randn(2, 1, 8, 8))
    assert [k.shape[1] for k in tr["kept"]] == [16, 8, 8]


def _closed_form_macs(tokens, d=16, heads=2, f=32, n_patches=16, patch=4, classes=10):
    total = n_patches * patch * d + d * classes
    for n in tokens:
        total += 3 * n * d * d + n * d * heads + n * d * (d // 2) + n * (d // 2) + 2 * n * n * d + n * d * d + 2 * n * d * f
    return total


@pytest.mark.parametrize("keep", [None, [1.0, 0.5, 0.25]])
def test_multiply_adds_match_the_flop_counter_and_the_closed_form(keep):
    net = build_model("dependency_vit", (1, 8, 8), 10, **VIT, keep_ratios=keep)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 1, 8, 8))
    assert counter.get_total_flops() == 2 * multiply_adds(net)
    assert multiply_adds(net) == _closed_form_macs(net.keep)
    with pytest.raises(ConfigError):
        multiply_adds(torch.nn.Linear(2, 2))


def test_init_from_teacher():
    torch.manual_seed(0)
    full = build_model("dependency_vit", (1, 8, 8), 10, **VIT)
    lite = build_model("dependency_vit", (1, 8, 8), 10, **VIT, keep_ratios=[1.0, 1.0, 0.5], inherit_teacher_weights=True)
    lite.init_from_teacher(full)
    for (k, a), b in zip(full.state_dict().items(), lite.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="dependency_vit teacher"):
        lite.init_from_teacher(build_model("vit", (1, 8, 8), 10, patch_size=2, dim=16, depth=3, heads=2))
    wide = build_model("dependency_vit", (1, 8, 8), 10, **dict(VIT, dim=32))
    with pytest.raises(ConfigError, match="do not fit"):
        lite.init_from_teacher(wide)


def test_recipe_fragments_and_cost():
    cfg = lite_config(VIT, [1.0, 1.0, 0.5])
    assert cfg["student"] == {"name": "dependency_vit", "params": dict(VIT, keep_ratios=[1.0, 1.0, 0.5], inherit_teacher_weights=True)}
    assert cfg["objectives"] == [{"kind": "kd", "params": {"temperature": 2.0}, "weight": 1.0}]
    assert lite_objectives(kd=0.0, ce=1.0) == [{"kind": "ce", "weight": 1.0}]
    with pytest.raises(ConfigError, match="both 0"):
        lite_objectives(kd=0.0, ce=0.0)
    with pytest.raises(ConfigError, match="unknown keys"):
        dependency_vit_model({"width": 3})
    c = cost(VIT, [1.0, 1.0, 0.5])
    assert c["tokens_lite"] == [16, 16, 8]
    assert c["full_macs"] == _closed_form_macs([16, 16, 16]) and c["lite_macs"] == _closed_form_macs([16, 16, 8])
    assert c["reduction"] == pytest.approx(1 - c["lite_macs"] / c["full_macs"])
    # the fragments, composed as the reproduction composes them, are a valid run config
    from distillery.config import parse_config
    from distillery.recipes._fragments import frozen_teacher
    from distillery.reproduce._common import compose

    teacher = {"teacher": frozen_teacher(dict(dependency_vit_model(VIT), checkpoint="t.safetensors"))}
    run = parse_config(compose({"data": {"dataset": "digits"}}, teacher, cfg), "dependency_vit")
    assert run.student.params["keep_ratios"] == [1.0, 1.0, 0.5]


def test_lite_distiller_trains_a_pruned_copy():
    torch.manual_seed(0)
    full = build_model("dependency_vit", (1, 8, 8), 10, **VIT)
    distiller = lite_distiller(full, [1.0, 0.5, 0.5], ce=1.0)
    assert isinstance(distiller.student, DependencyViT) and distiller.student.keep == [16, 8, 8]
    assert full.keep == [16, 16, 16]
    trace = pruning_trace(distiller.student, torch.randn(3, 1, 8, 8))
    assert trace["kept"].shape == (3, 3, 4, 4) and trace["kept"][:, 2].sum().item() == 3 * 8
    assert trace["parents"].shape == (3, 16)


def test_config_and_reproduction_are_registered():
    from distillery.config import load_config
    from distillery.config.bundled import CONFIG_DIR
    from distillery.reproduce import REPRODUCTIONS, load_all

    cfg = load_config(CONFIG_DIR / "dependency_vit_digits.yaml")
    assert cfg.student.name == "dependency_vit"
    load_all()
    rep = REPRODUCTIONS.get("dependency_vit")
    assert rep.family == "generative" and rep.recipe == "dependency_vit"
