"""Taps: capture of outputs / inputs by dotted path, hook hygiene, early stop, output naming."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillery import taps
from distillery.errors import DistilleryError, TapError


class Recorder(nn.Module):
    """Identity-like module that counts its calls (to observe what ran)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj(self.inner(x)) + x


class Net(nn.Module):
    """ModuleList + ModuleDict + Sequential + nested custom blocks + a module used twice."""

    def __init__(self, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.heads = nn.ModuleDict({"main": nn.Linear(dim, classes), "aux": nn.Linear(dim, 2)})
        self.shared = nn.Linear(dim, dim)
        self.last = Recorder(dim)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        a = self.shared(h)  # first call
        b = self.shared(a * 2.0)  # second call: this one wins
        h = self.last(b)
        return self.heads["main"](h)


def reference(net: Net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same forward written out by hand, keeping every intermediate."""
    r = {}
    r["stem.0"] = net.stem[0](x)
    r["stem"] = torch.relu(r["stem.0"])
    h = r["stem"]
    for i, block in enumerate(net.blocks):
        r[f"blocks.{i}:input"] = h
        inner = block.inner(h)
        r[f"blocks.{i}.inner"] = inner
        r[f"blocks.{i}.inner.1:input"] = block.inner[0](h)
        r[f"blocks.{i}.proj"] = block.proj(inner)
        h = r[f"blocks.{i}.proj"] + h
        r[f"blocks.{i}"] = h
    a = net.shared(h)
    r["shared:input"] = a * 2.0
    r["shared"] = net.shared(a * 2.0)
    r["last.fc"] = net.last.fc(r["shared"])
    r["heads.main:input"] = r["last.fc"]
    r["heads.main"] = net.heads["main"](r["last.fc"])
    return r


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_capture_outputs_and_inputs_in_nested_containers(net):
    x = torch.randn(5, 4)
    ref = reference(net, x)
    wanted = [
        "stem.0",
        "stem",
        "blocks.0",
        "blocks.1:input",
        "blocks.1.inner",
        "blocks.0.inner.1:input",
        "blocks.1.proj",
        "heads.main",
        "heads.main:input",
        "last.fc",
    ]
    with taps.capture(net, wanted) as signals:
        out = net(x)
    assert set(signals) == set(wanted)
    for address in wanted:
        torch.testing.assert_close(signals[address], ref[address], rtol=0, atol=1e-6)
    torch.testing.assert_close(out, ref["heads.main"], rtol=0, atol=1e-6)
    # the unused ModuleDict head never ran, so it is never captured
    with taps.capture(net, ["heads.aux"]) as signals:
        net(x)
    assert signals == {}


@pytest.mark.filterwarnings("ignore:Tap 'shared'")  # the warning itself is tested below
def test_module_called_twice_last_call_wins(net):
    x = torch.randn(3, 4)
    ref = reference(net, x)
    with taps.capture(net, ["shared", "shared:input"]) as signals:
        net(x)
    torch.testing.assert_close(signals["shared"], ref["shared"], rtol=0, atol=1e-6)
    torch.testing.assert_close(signals["shared:input"], ref["shared:input"], rtol=0, atol=1e-6)
    # and it really differs from the first call's output
    first = net.shared(ref["blocks.1"])
    assert not torch.allclose(signals["shared"], first)


def test_hooks_removed_after_context(net):
    before = all_hooks(net)
    with taps.capture(net, ["stem.0", "blocks.1.inner", "shared:input"], stop_after="last"):
        assert all_hooks(net) == before + 4
    assert all_hooks(net) == before == 0
    for m in net.modules():
        assert len(m._forward_hooks) == 0


def test_hooks_removed_when_forward_raises(net):
    def boom(x):
        raise ValueError("boom")

    net.last.forward = boom  # fails after stem and blocks have run (and been captured)
    with pytest.raises(ValueError, match="boom"), taps.capture(net, ["stem.0", "blocks.0.proj", "heads.main:input"]) as signals:
        net(torch.randn(2, 4))
    assert set(signals) == {"stem.0", "blocks.0.proj"}
    for m in net.modules():
        assert len(m._forward_hooks) == 0


def test_hooks_removed_when_an_address_is_invalid(net):
    with pytest.raises(TapError), taps.capture(net, ["stem.0", "blocks.0.proj", "blocks.7"]):
        pass  # pragma: no cover
    for m in net.modules():
        assert len(m._forward_hooks) == 0


def test_run_tapped_returns_logits_and_taps(net):
    x = torch.randn(4, 4)
    ref = reference(net, x)
    out = taps.run_tapped(net, x, ["blocks.0", "heads.main:input"])
    assert set(out) == {"logits", "blocks.0", "heads.main:input"}
    torch.testing.assert_close(out["logits"], ref["heads.main"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["blocks.0"], ref["blocks.0"], rtol=0, atol=1e-6)
    assert all_hooks(net) == 0


def test_run_tapped_stop_after_skips_later_modules(net):
    x = torch.randn(4, 4)
    ref = reference(net, x)
    out = taps.run_tapped(net, x, ["blocks.1"], stop_after="blocks.1")
    assert net.last.calls == 0  # nothing after blocks.1 ran
    assert "logits" not in out
    assert set(out) == {"blocks.1"}
    torch.testing.assert_close(out["blocks.1"], ref["blocks.1"], rtol=0, atol=1e-6)
    assert all_hooks(net) == 0
    # without stop_after the recorder runs exactly once
    taps.run_tapped(net, x, [])
    assert net.last.calls == 1


def test_run_tapped_stop_after_keeps_taps_before_the_stop(net):
    x = torch.randn(2, 4)
    ref = reference(net, x)
    out = taps.run_tapped(net, x, ["stem", "blocks.0.inner", "last.fc"], stop_after="blocks.0")
    assert set(out) == {"stem", "blocks.0.inner"}  # last.fc never ran
    torch.testing.assert_close(out["blocks.0.inner"], ref["blocks.0.inner"], rtol=0, atol=1e-6)
    assert net.last.calls == 0


class DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.body(x)
        return {"logits": self.head(h), "embedding": h, "meta": "not a tensor"}


class TupleNet(DictNet):
    def forward(self, x):
        h = self.body(x)
        return self.head(h), h


def test_dict_outputs_are_signals_by_key():
    torch.manual_seed(1)
    net = DictNet()
    x = torch.randn(2, 3)
    out = taps.run_tapped(net, x, ["body:input"])
    assert set(out) == {"logits", "embedding", "body:input"}
    torch.testing.assert_close(out["embedding"], net.body(x))
    torch.testing.assert_close(out["logits"], net.head(net.body(x)))
    torch.testing.assert_close(out["body:input"], x)


def test_tuple_output_first_element_is_logits():
    torch.manual_seed(2)
    net = TupleNet()
    x = torch.randn(2, 3)
    out = taps.run_tapped(net, x, ["body"])
    assert set(out) == {"logits", "body"}
    torch.testing.assert_close(out["logits"], net.head(net.body(x)))
    torch.testing.assert_close(out["body"], net.body(x))


def test_output_signals_rejects_other_types():
    with pytest.raises(TypeError, match="tensor of logits"):
        taps.output_signals("text")


def test_tap_error_names_nearest_paths(net):
    with pytest.raises(TapError) as info:
        taps.run_tapped(net, torch.randn(1, 4), ["blocks.0.projj"])
    msg = str(info.value)
    assert "'blocks.0.projj'" in msg
    assert "blocks.0.proj" in msg.split("Nearest valid paths:")[1]
    assert isinstance(info.value, DistilleryError)
    assert all_hooks(net) == 0


def test_tap_error_for_input_address_and_stop_after(net):
    with pytest.raises(TapError) as info:
        taps.validate(net, ["stem.0", "heads.mian:input"], owner="teacher")
    msg = str(info.value)
    assert "heads.main" in msg.split("Nearest valid paths:")[1]
    assert "teacher" in msg
    with pytest.raises(TapError, match="blocks.1"):
        taps.run_tapped(net, torch.randn(1, 4), [], stop_after="blocks.3")
    assert all_hooks(net) == 0


def test_root_is_not_addressable(net):
    assert "" not in taps.module_paths(net)
    with pytest.raises(TapError):
        taps.resolve(net, "")
    assert taps.split_address("a.b:input") == ("a.b", True)
    assert taps.split_address("a.b") == ("a.b", False)
    assert taps.resolve(net, "heads.aux") is net.heads["aux"]


def test_input_tap_of_a_module_called_with_keywords_only():
    import torch
    from torch import nn

    from distillery.taps import run_tapped

    class Inner(nn.Module):
        def forward(self, *, h):
            return h * 2

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(h=x + 1)

    x = torch.randn(3, 4)
    sig = run_tapped(Outer(), x, ["inner:input", "inner"])
    torch.testing.assert_close(sig["inner:input"], x + 1)
    torch.testing.assert_close(sig["inner"], (x + 1) * 2)


# --------------------------------------------------------------------------------------
# issue 10: modules returning dicts or tuples, and modules called several times
# --------------------------------------------------------------------------------------


class FeatHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, h):
        return {"feat": h * 2.0, "logits": self.proj(h)}


class PairHead(nn.Module):
    def forward(self, h):
        return h + 1.0, h - 1.0


class HeadNet(nn.Module):
    """Body, a head returning a dict, a head returning a tuple, and a layer used three times."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.shared = nn.Linear(4, 4)
        self.head = FeatHead()
        self.pair = PairHead()

    def forward(self, x):
        h = self.body(x)
        for _ in range(3):
            h = self.shared(h) * 0.5
        a, _ = self.pair(h)
        return self.head(a)["logits"]


def test_dict_output_needs_a_key_and_the_error_lists_the_keys():
    torch.manual_seed(0)
    net = HeadNet()
    with pytest.raises(TapError, match=r"'head'.*dict with the keys 'feat', 'logits'.*'head\[feat\]'"):
        taps.run_tapped(net, torch.randn(2, 4), ["head"], owner="student")
    assert all_hooks(net) == 0


def test_key_and_index_selectors():
    torch.manual_seed(0)
    net = HeadNet()
    x = torch.randn(2, 4)
    out = taps.run_tapped(net, x, ["head[feat]", "head[logits]", "pair[1]", "pair[-2]", "pair", "head:input"])
    h = net.body(x)
    for _ in range(3):
        h = net.shared(h) * 0.5
    torch.testing.assert_close(out["head[feat]"], (h + 1.0) * 2.0)
    torch.testing.assert_close(out["head[logits]"], out["logits"])
    torch.testing.assert_close(out["pair[1]"], h - 1.0)
    torch.testing.assert_close(out["pair[-2]"], h + 1.0)
    torch.testing.assert_close(out["pair"], h + 1.0)  # a tuple without a key: its first element
    torch.testing.assert_close(out["head:input"], h + 1.0)


def test_bad_selectors_are_tap_errors():
    net = HeadNet()
    x = torch.randn(2, 4)
    with pytest.raises(TapError, match=r"dict without the key 'emb'; its keys: 'feat', 'logits'"):
        taps.run_tapped(net, x, ["head[emb]"])
    with pytest.raises(TapError, match=r"tuple of 2 items; pick one with an index from 0 to 1"):
        taps.run_tapped(net, x, ["pair[2]"])
    with pytest.raises(TapError, match=r"is a Tensor, which has no item \[0\]"):
        taps.run_tapped(net, x, ["body[0]"])
    with pytest.raises(TapError, match="No module 'heda'"):
        taps.run_tapped(net, x, ["heda[feat]"])
    assert all_hooks(net) == 0


def test_module_called_several_times_warns_once_and_calls_can_be_picked(recwarn):
    torch.manual_seed(0)
    net = HeadNet()
    x = torch.randn(2, 4)
    hs = [net.body(x)]
    for _ in range(3):
        hs.append(net.shared(hs[-1]) * 0.5)
    calls = [net.shared(h) for h in hs[:3]]  # the outputs of the three calls of 'shared'

    with pytest.warns(UserWarning, match=r"module 'shared' ran 3 times in one forward.*'shared#0'"):
        out = taps.run_tapped(net, x, ["shared"], owner="teacher")
    torch.testing.assert_close(out["shared"], calls[2])  # the last call, as before
    recwarn.clear()
    taps.run_tapped(net, x, ["shared"], owner="teacher")  # once: no second warning
    assert not [w for w in recwarn if "ran 3 times" in str(w.message)]

    out = taps.run_tapped(net, x, ["shared#0", "shared#1", "shared#2", "shared#-1", "shared#-3", "shared#1:input"])
    assert not [w for w in recwarn if "ran 3 times" in str(w.message)]  # picking a call: no warning
    for i in range(3):
        torch.testing.assert_close(out[f"shared#{i}"], calls[i])
    torch.testing.assert_close(out["shared#-1"], calls[2])
    torch.testing.assert_close(out["shared#-3"], calls[0])
    torch.testing.assert_close(out["shared#1:input"], hs[1])
    # calls are counted per forward: a second forward in the same capture starts again at 0
    with taps.capture(net, ["shared#0"]) as signals:
        net(x)
        net(x * 0)
    torch.testing.assert_close(signals["shared#0"], net.shared(net.body(x * 0)))
    with pytest.raises(TapError, match=r"asks for call 3 of module 'shared', which ran 3 times"):
        taps.run_tapped(net, x, ["shared#3"])
    with pytest.raises(TapError, match=r"asks for call -4"):
        taps.run_tapped(net, x, ["shared#-4"])
    assert all_hooks(net) == 0 and all(len(m._forward_pre_hooks) == 0 for m in net.modules())


def test_parse_address():
    assert taps.parse_address("blocks.0#1:input[feat][0]") == taps.Address("blocks.0", True, 1, ("feat", "0"))
    assert taps.parse_address("head[feat]") == taps.Address("head", False, None, ("feat",))
    assert taps.parse_address("logits@topk_values") == taps.Address("logits@topk_values")
    assert taps.split_address("blocks.0#-1:input") == ("blocks.0", True)
    assert taps.format_address(taps.parse_address("a.b:input[k]"), call=2) == "a.b#2:input[k]"


def test_distiller_reads_a_key_of_a_dict_output_by_reference():
    from distillery.engine.distiller import Distiller, Term
    from distillery.objectives import FeatureMSE
    from distillery.teachers import FrozenTeacher

    torch.manual_seed(0)
    student, teacher = HeadNet(), HeadNet()
    term = Term("hint", FeatureMSE(), inputs={"student": "student.head[feat]", "teacher": "teacher.head[feat]"})
    d = Distiller(student, FrozenTeacher(teacher), [term])
    x = torch.randn(3, 4)
    batch = {"x": x, "y": torch.zeros(3, dtype=torch.long), "index": torch.arange(3)}
    d.prepare(batch)
    got = d.step(batch)["hint"]
    s = taps.run_tapped(student, x, ["head[feat]"])["head[feat]"]
    t = taps.run_tapped(teacher, x, ["head[feat]"])["head[feat]"]
    torch.testing.assert_close(got, ((s - t) ** 2).mean())
    with pytest.raises(TapError, match=r"No module 'heda'"):
        Distiller(student, FrozenTeacher(teacher), [Term("h", FeatureMSE(), inputs={"student": "student.heda[feat]", "teacher": "teacher.head[feat]"})])
