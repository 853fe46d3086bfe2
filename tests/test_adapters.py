"""Adapters: each kind maps the student shape onto the teacher shape, or says why it cannot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillery.taps.adapters import ADAPTER_KINDS, make_adapter
from distillery.errors import DistilleryError, ShapeError


@pytest.mark.parametrize(
    "student, teacher",
    [((4, 6), (4, 10)), ((2, 5, 6), (2, 5, 3)), ((3, 2, 2, 7), (3, 2, 2, 7))],
)
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_last_dim_adapters_map_shapes(kind, student, teacher):
    torch.manual_seed(0)
    adapter = make_adapter(kind, torch.Size(student), teacher)
    out = adapter(torch.randn(*student))
    assert out.shape == torch.Size(teacher)


def test_linear_adapter_is_one_linear_layer():
    torch.manual_seed(0)
    adapter = make_adapter("linear", (4, 6), (4, 10))
    assert isinstance(adapter, nn.Linear)
    assert (adapter.in_features, adapter.out_features) == (6, 10)
    x = torch.randn(4, 6)
    torch.testing.assert_close(adapter(x), x @ adapter.weight.T + adapter.bias)


def test_mlp_adapter_hidden_width_is_max_of_dims():
    torch.manual_seed(0)
    for ds, dt in [(6, 10), (10, 6)]:
        adapter = make_adapter("mlp", (2, ds), (2, dt))
        linears = [m for m in adapter.modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(ds, max(ds, dt)), (max(ds, dt), dt)]
        assert any(isinstance(m, nn.GELU) for m in adapter.modules())
        x = torch.randn(2, ds)
        expected = linears[1](torch.nn.functional.gelu(linears[0](x)))
        torch.testing.assert_close(adapter(x), expected)


@pytest.mark.parametrize(
    "student, teacher, conv",
    [((2, 3, 5), (2, 8, 5), nn.Conv1d), ((2, 3, 4, 5), (2, 6, 4, 5), nn.Conv2d)],
)
def test_conv1x1_maps_channels(student, teacher, conv):
    torch.manual_seed(0)
    adapter = make_adapter("conv1x1", student, teacher)
    assert isinstance(adapter, conv)
    assert adapter.kernel_size in ((1,), (1, 1))
    x = torch.randn(*student)
    out = adapter(x)
    assert out.shape == torch.Size(teacher)
    # a 1x1 conv is a per-position linear map over channels
    w = adapter.weight.reshape(teacher[1], student[1])
    expected = torch.einsum("oc,bc...->bo...", w, x) + adapter.bias.reshape(1, -1, *[1] * (len(student) - 2))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("student, teacher", [((4, 6), (5, 6)), ((2, 3, 6), (2, 4, 6)), ((6,), (6,)), ((2, 3, 4), (2, 12))])
def test_last_dim_adapters_reject_other_dim_mismatch(kind, student, teacher):
    with pytest.raises(ShapeError) as info:
        make_adapter(kind, student, teacher, where="term 'feat'")
    msg = str(info.value)
    assert str(list(student)) in msg and str(list(teacher)) in msg
    assert "term 'feat'" in msg
    assert kind in msg


@pytest.mark.parametrize(
    "student, teacher",
    [
        ((2, 3, 4, 5), (2, 6, 4, 4)),  # spatial sizes differ
        ((2, 3, 5), (2, 6, 4)),  # length differs
        ((2, 3), (2, 6)),  # not a map
        ((2, 3, 4, 5), (2, 6, 20)),  # rank differs
        ((2, 3, 4, 5), (3, 6, 4, 5)),  # batch differs
        ((2, 3, 4, 5, 6), (2, 6, 4, 5, 6)),  # 3-d maps unsupported
    ],
)
def test_conv1x1_rejects_impossible_mappings(student, teacher):
    with pytest.raises(ShapeError) as info:
        make_adapter("conv1x1", student, teacher)
    msg = str(info.value)
    assert str(list(student)) in msg and str(list(teacher)) in msg


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(DistilleryError) as info:
        make_adapter("attention", (2, 3), (2, 4))
    for kind in ADAPTER_KINDS:
        assert kind in str(info.value)
