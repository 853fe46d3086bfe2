"""Where the time of a distillation step goes: the figures behind BENCHMARKS.md's notes on the
``engine_overhead`` and ``cached_vs_student_only`` rows.

Run ``python benchmarks/step_breakdown.py`` (about a minute on 2 CPU cores). Every figure is a
median over interleaved repeats of two things timed side by side in this process:

* ``fixed_overhead_us``: a whole step (``Distiller.step`` + backward + AdamW + ``update``)
  against the hand-written KD step on tiny MLPs (4 units, batch 2), where the arithmetic costs
  nothing: the engine's fixed cost per step;
* ``losses_forward_ms``: CE + KD forward on the benchmark's logits ([256, 10]) through the
  distillery objectives against ``F.cross_entropy`` + ``F.kl_div`` by hand;
* ``cache``: reading a batch of 256 cached logits (``CachedTeacher.signals``), and a training
  step with CE alone against CE + KD from the cache, on the MNIST-1D student of
  ``cached_vs_student_only``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_overhead import _hand_step, _models  # noqa: E402


def _interleaved(a, b, items, rounds: int) -> tuple[float, float]:
    """Median seconds of ``a(item)`` and ``b(item)``, alternating which goes first."""
    ta, tb = [], []
    for r in range(rounds):
        for i, item in enumerate(items):
            for fn, out in ((a, ta), (b, tb)) if (i + r) % 2 else ((b, tb), (a, ta)):
                t0 = time.perf_counter()
                fn(item)
                out.append(time.perf_counter() - t0)
    skip = len(items)  # the first round is warm-up
    return statistics.median(ta[skip:]), statistics.median(tb[skip:])


def _train_step(d, opt):
    """One distillery training step on a batch, as a function of the batch."""
    def step(b) -> None:
        d.step(b)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        d.update()

    return step


def fixed_overhead() -> dict[str, float]:
    from distillery import Distiller, FrozenTeacher, Term
    from distillery.objectives import CrossEntropy, SoftTargetKD

    g = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(2, 4, generator=g), "y": torch.randint(0, 10, (2,), generator=g)} for _ in range(50)]
    hs, ht = _models(4, 4, 10)
    ht.eval().requires_grad_(False)
    h_opt = torch.optim.AdamW(hs.parameters(), lr=1e-3)
    ds, dt = _models(4, 4, 10)
    d = Distiller(ds, FrozenTeacher(dt), [Term("ce", CrossEntropy(), weight=0.5), Term("kd", SoftTargetKD(4.0), weight=0.5)])
    d.prepare(batches[0])
    dist = _train_step(d, torch.optim.AdamW(d.trainable_parameters(), lr=1e-3))
    hand, eng = _interleaved(lambda b: _hand_step(hs, ht, h_opt, b["x"], b["y"]), dist, batches, rounds=11)
    return {"hand_step_us": 1e6 * hand, "distillery_step_us": 1e6 * eng, "fixed_overhead_us": 1e6 * (eng - hand)}


def losses_forward() -> dict[str, float]:
    from distillery.objectives import CrossEntropy, SoftTargetKD

    g = torch.Generator().manual_seed(0)
    items = [(torch.randn(256, 10, generator=g, requires_grad=True), torch.randn(256, 10, generator=g),
              torch.randint(0, 10, (256,), generator=g)) for _ in range(50)]
    ce, kd = CrossEntropy(), SoftTargetKD(4.0)

    def hand(item):
        s, t, y = item
        return 0.5 * F.cross_entropy(s, y) + 0.5 * F.kl_div(F.log_softmax(s / 4, -1), F.log_softmax(t / 4, -1),
                                                              log_target=True, reduction="batchmean") * 16

    def ours(item):
        s, t, y = item
        return 0.5 * ce(s, y) + 0.5 * kd(s, t)

    h, o = _interleaved(hand, ours, items, rounds=11)
    return {"hand_ms": 1e3 * h, "distillery_ms": 1e3 * o}


def cache() -> dict[str, float]:
    from distillery import Distiller, Term
    from distillery.cache import build_cache
    from distillery.data import mnist1d
    from distillery.models import build_model
    from distillery.objectives import CrossEntropy, SoftTargetKD
    from distillery.teachers import CachedTeacher

    splits = mnist1d(unlabeled=40000)
    data = splits.train_with_unlabeled()
    torch.manual_seed(0)
    teacher = build_model("cnn1d", input_shape=splits.input_shape, num_classes=10, channels=(32, 64, 64)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        build_cache(teacher, data, Path(tmp) / "cache")
        g = torch.Generator().manual_seed(0)
        batches = [data.__getitems__(torch.randperm(len(data), generator=g)[:256].tolist()) for _ in range(40)]
        reader = CachedTeacher(Path(tmp) / "cache")
        read, _ = _interleaved(lambda b: reader.signals(b["x"], b, ["logits"]), lambda b: None, batches, rounds=11)

        def trainer(kd: bool):
            torch.manual_seed(1)
            student = build_model("mlp", input_shape=splits.input_shape, num_classes=10, hidden=(512, 512))
            terms = [Term("ce", CrossEntropy(), weight=0.1)] + ([Term("kd", SoftTargetKD(2.0), weight=0.9)] if kd else [])
            d = Distiller(student, CachedTeacher(Path(tmp) / "cache") if kd else None, terms)
            return _train_step(d, torch.optim.AdamW(d.trainable_parameters(), lr=3e-3))

        ce_only, ce_kd = _interleaved(trainer(False), trainer(True), batches, rounds=9)
    return {"read_batch_ms": 1e3 * read, "step_ce_only_ms": 1e3 * ce_only, "step_ce_cached_kd_ms": 1e3 * ce_kd}


def main() -> dict[str, Any]:
    report = {"fixed_overhead": fixed_overhead(), "losses_forward": losses_forward(), "cache": cache(),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
