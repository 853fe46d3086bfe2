"""Per-sample randomness of the generative methods (``distillery.generative.method``):
draws for the global batch, sliced by rank, keyed by (seed, step, player, update).

The 2-process equivalence itself is tested end to end in test_generative_distributed.py; here
the pieces, in one process: R ranks' slices put together are one process's draws, the keys are
stable and distinct, and a loss announced by the loop does not depend on the global RNG.
"""

from __future__ import annotations

import pytest
import torch

from distillery.generative.method import BatchDraws, GlobalDraws, update_seed
from distillery.generative.objectives.consistency import ConsistencyDistillation
from distillery.generative.objectives.dmd import DMD
from distillery.generative.processes import FlowProcess


def _calls(d, n):
    p = FlowProcess()
    return [d.randn(n, (3, 2)), d.rand(n, dtype=torch.float64), d.randint(0, 7, n), d.times(p, n, low=0.2, high=0.9),
            d.prior(p, n, (2,)), d.randn_like(torch.zeros(n, 4, dtype=torch.float64))]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_slices_put_together_are_one_process_draws(world):
    n, seed = 5, update_seed(3, 7, "generator", 1)
    whole = _calls(BatchDraws(seed), n * world)
    parts = [_calls(BatchDraws(seed, rank, world), n) for rank in range(world)]
    for i, ref in enumerate(whole):
        got = torch.cat([p[i] for p in parts])
        assert got.shape == ref.shape and got.dtype == ref.dtype
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_draws_respect_dtype_range_and_interval():
    d = BatchDraws(0)
    assert d.randn(4, (2,), dtype=torch.bfloat16).dtype == torch.bfloat16
    t = d.times(FlowProcess(), 1000, low=0.25, high=0.5, dtype=torch.float64)
    assert t.dtype == torch.float64 and float(t.min()) >= 0.25 and float(t.max()) <= 0.5
    k = d.randint(2, 5, 1000)
    assert set(k.tolist()) == {2, 3, 4}
    with pytest.raises(ValueError, match="rank 2"):
        BatchDraws(0, 2, 2)


def test_update_seeds_are_stable_and_distinct():
    assert update_seed(0, 0, "generator", 0) == update_seed(0, 0, "generator", 0)
    keys = {update_seed(s, st, p, u) for s in (0, 1) for st in (0, 1, 10) for p in ("fake_score", "generator") for u in (0, 1)}
    assert len(keys) == 24 and all(0 <= k < 2**63 for k in keys)


def _mlp(process, prediction, seed):
    from distillery.generative.denoisers import Denoiser, build_denoiser_net

    torch.manual_seed(seed)
    net = build_denoiser_net({"name": "mlp2d", "params": {"hidden": [8], "time_dim": 4}}, (2,), None)
    return Denoiser(net, process, prediction, (2,), None)


def test_announced_update_draws_from_its_key_not_the_global_rng():
    process = FlowProcess()
    m = ConsistencyDistillation(_mlp(process, "velocity", 0), _mlp(process, "velocity", 0), num_scales=4, solver="euler")
    m.seed = 5
    x = torch.randn(8, 2)
    losses = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        m.begin_update("student", 3, 0)
        losses.append(float(m.loss("student", {"x": x}, 3)[0].detach()))
    assert losses[0] == losses[1]
    m.begin_update("student", 3, 1)  # another update of the same step: other draws
    assert float(m.loss("student", {"x": x}, 3)[0].detach()) != losses[0]
    # unannounced (a second call, or by hand): the global RNG, as before
    torch.manual_seed(1)
    a = float(m.loss("student", {"x": x}, 3)[0].detach())
    torch.manual_seed(1)
    assert a == float(m.loss("student", {"x": x}, 3)[0].detach())
    assert isinstance(m.draw, GlobalDraws)


def test_dmd_two_ranks_draw_one_process_batch():
    """DMD's fake-score loss on rank r's half of the batch uses the draws of rows [r n, (r+1) n)
    of the one-process batch: the per-sample losses of the halves average to the whole's."""
    process = FlowProcess()
    m = DMD(_mlp(process, "x0", 0), _mlp(process, "x0", 1), generator_steps=2, fake_updates=1, fake_init="student")
    x = torch.randn(8, 2)
    from distillery.engine import distributed as Dist

    m.begin_update("fake_score", 0, 0)
    whole = float(m.loss("fake_score", {"x": x}, 0)[0])
    halves = []
    for rank in (0, 1):
        orig = Dist.rank, Dist.world_size
        Dist.rank, Dist.world_size = (lambda r=rank: r), (lambda: 2)
        try:
            m.begin_update("fake_score", 0, 0)
            halves.append(float(m.loss("fake_score", {"x": x[rank * 4:(rank + 1) * 4]}, 0)[0]))
        finally:
            Dist.rank, Dist.world_size = orig
    assert sum(halves) / 2 == pytest.approx(whole, abs=1e-6)


def test_denoising_subclasses_draw_through_self_draw():
    """The denoising method's own noise draws do not shadow the base class's draws (a method named
    ``_draws`` once did): inside an announced update a subclass's ``self.draw`` is a BatchDraws."""
    from distillery.generative.denoisers import Denoiser, MLPDenoiser
    from distillery.generative.method import GLOBAL_DRAWS
    from distillery.generative.objectives.denoising import Denoising

    m = Denoising(Denoiser(MLPDenoiser(dim=2, hidden=[8]), FlowProcess(), "velocity", sample_shape=(2,)))
    assert m.draw is GLOBAL_DRAWS
    m.begin_update("model", 3, 0)
    with m.drawing("model", 3) as draw:
        assert isinstance(draw, BatchDraws) and m.draw is draw
    loss, _ = m.loss("model", {"x": torch.randn(4, 2)}, 3)
    assert torch.isfinite(loss)
