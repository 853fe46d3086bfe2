"""Bench rows of the generative engine (issue 11, section 3): one-step sampling against the
teacher's ODE, the DMD training step against the same passes written by hand, and the peak
memory of a DMD step against the student's own denoising step.

All three use the flow-matching process (``x_t = (1 - t) x0 + t eps``, Lipman et al. 2023,
arXiv:2210.02747) and the engine's own networks with random weights (the figures depend on the
network sizes, not on what the weights learned): ``mlp2d`` (hidden 128-128-128, 2-D points) and
``unet`` (channels 32/64, one block per resolution, 1x8x8 images). Their zero-initialised output
layers are re-drawn (normal, std 0.02) so that every prediction and loss is non-trivial.

* ``onestep_vs_teacher_sampling``: wall time of :meth:`DMD.sample` with one step (one generator
  evaluation; DMD, Yin et al. 2024, arXiv:2311.18828) against :func:`samplers.sample` of a
  teacher of the same size with 50 Heun steps (Karras et al. 2022, arXiv:2206.00364; 99
  evaluations, :func:`samplers.nfe`), for the same number of samples (4096 2-D points; also 256
  8x8 images with the unet, row ``onestep_vs_teacher_sampling_images``, outside ``--quick``).
  Both under ``torch.no_grad``, interleaved, medians after warm-up.
* ``dmd_step_overhead``: one DMD step (``fake_updates=1``: a fake-score update, then a generator
  update) through the :class:`~distillery.generative.objectives.dmd.DMD` method and the loop
  the generative trainer runs (:meth:`Trainer._train_step`: per player ``zero_grad``,
  ``method.loss``, finite check, ``backward``, optimizer step; no data loading, no scheduler),
  against :func:`hand_dmd_step`, the same forward/backward passes written out in plain PyTorch
  on the very same networks (each side with its own Adam). Before timing, both sides are run
  once from identical copies with the same random draws and their losses must agree
  (:func:`check_same_losses`), so both do the same work. Steps alternate one by one; each
  repeat takes the median step time of each side; the row is the median over repeats of
  method / hand. Sizes: the unet on 8x8 images, batch 64 (the digits miniature), and, in the
  detail, the mlp2d on 2-D points, batch 256 (there the networks are so small that Python
  overhead per call is a visible share).
* ``dmd_peak_memory`` (a report, no goal): peak memory of one DMD step (fake update +
  generator update, the teacher in bfloat16 and called under ``no_grad``, generator and fake
  score in float32 with Adam) against one denoising step of the student alone (same network,
  float32, Adam), unet on 8x8 images, batch 256 (128 with ``--quick``): what training holds at the step's peak
  (weights, optimizer states, activations). On CUDA: ``torch.cuda.max_memory_allocated`` (after
  ``reset_peak_memory_stats``) minus ``memory_allocated`` before the models were built. On CPU
  (no allocator statistics in a default build) each side runs in a fresh subprocess, as
  ``benchmarks/chunked_kd.py`` does: the exact bytes of the state held between steps
  (parameters, buffers, optimizer states) plus the step's working memory, the resident-set
  high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` after two warm-up steps)
  minus the resident set (``VmRSS``) just before the step; with ``MALLOC_MMAP_THRESHOLD_=65536``
  so that glibc maps every buffer above 64 KiB on its own and returns it on free (the resident
  set then follows tensor lifetimes). The resident set as a whole is not compared: it also
  holds library code and Python objects that the first steps page in (about 100 MiB here,
  against ~2 MiB of weights). The working memory alone is ``step_ratio`` in the detail.

On CPU all rows run with one intra-op thread (as ``engine_overhead``; the caller's count is
restored), so other load on a shared machine delays both sides alike.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script too

from benchmarks._timing import one_thread, timed  # noqa: E402

NETS = {"mlp2d": (2,), "unet": (1, 8, 8)}
ADAM = {"lr": 1e-4, "betas": (0.0, 0.99)}  # DMD2's generator settings (configs/dmd_mixture2d.yaml)


# -- networks ------------------------------------------------------------------------------------
def make_denoiser(net: str, prediction: str, seed: int = 0, device: str = "cpu") -> Any:
    """A :class:`~distillery.generative.denoisers.Denoiser` around the registered network ``net``
    (``mlp2d``: ``(B, 2)`` points; ``unet``: ``(B, 1, 8, 8)`` images) on the flow process,
    predicting ``prediction``, random weights from ``seed`` (output layer re-drawn)."""
    from distillery.generative.denoisers import Denoiser, build_denoiser_net
    from distillery.generative.processes import FlowProcess

    shape = NETS[net]
    torch.manual_seed(seed)
    body = build_denoiser_net({"name": net, "params": {}}, shape)
    last = body.out if net == "unet" else body.body[-1]
    nn.init.normal_(last.weight, std=0.02)
    nn.init.zeros_(last.bias)
    return Denoiser(body, FlowProcess(), prediction, sample_shape=shape).to(device)


class BFloat16Net(nn.Module):
    """``net`` with bfloat16 weights, called on bfloat16 inputs, its output cast back to the
    input's dtype: a teacher held in half the memory. ``(B, ...) -> (B, ...)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.to(torch.bfloat16)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x.to(torch.bfloat16), t, cond).to(x.dtype)


def make_dmd(net: str, device: str = "cpu", *, teacher_bf16: bool = False, seed: int = 0) -> Any:
    """The DMD method (``variant="dmd"``, one generator step, ``fake_updates=1``) with a generator
    predicting ``x0``, a teacher predicting the flow velocity (bfloat16 weights with
    ``teacher_bf16``) and a float32 fake score initialised from the teacher."""
    from distillery.generative.denoisers import Denoiser
    from distillery.generative.objectives.dmd import DMD

    generator = make_denoiser(net, "x0", seed, device)
    teacher = make_denoiser(net, "velocity", seed + 1, device)
    fake = copy.deepcopy(teacher)
    if teacher_bf16:
        teacher = Denoiser(BFloat16Net(teacher.net), teacher.process, teacher.prediction, sample_shape=teacher.sample_shape)
    return DMD(generator, teacher, variant="dmd", generator_steps=1, fake_updates=1, fake_init=fake).to(device)


def optimizers_of(method: Any) -> dict[str, torch.optim.Optimizer]:
    """One Adam per player of ``method``."""
    return {p: torch.optim.Adam(method.parameters_of(p), **ADAM) for p in method.players}


# -- the steps -----------------------------------------------------------------------------------
def method_step(method: Any, opts: dict[str, torch.optim.Optimizer], batch: dict[str, torch.Tensor],
                step: int = 0) -> dict[str, float]:
    """One training step of ``method`` as the generative trainer runs it
    (:meth:`~distillery.generative.trainer.Trainer._train_step` without data loading, scheduler
    and gradient clipping): every player's updates in order, then ``after_step``. Returns each
    player's last loss value."""
    out = {}
    for player in method.players:
        for _ in range(method.updates(player)):
            method.zero_grad(set_to_none=True)
            loss, _figs = method.loss(player, batch, step)
            if not bool(torch.isfinite(loss.detach()).all()):
                raise FloatingPointError(f"{player} loss is not finite")
            loss.backward()
            opts[player].step()
            out[player] = loss.detach()
    method.zero_grad(set_to_none=True)
    method.after_step(step)
    return out


def _tb(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def hand_dmd_step(generator: nn.Module, fake: nn.Module, teacher: nn.Module, g_opt: torch.optim.Optimizer,
                  f_opt: torch.optim.Optimizer, n: int, shape: tuple[int, ...], device: str | torch.device = "cpu",
                  t_range: tuple[float, float] = (0.02, 0.98)) -> tuple[torch.Tensor, torch.Tensor]:
    """One DMD step written out in plain PyTorch on the raw networks (``net(x_t, t) -> pred``),
    for the flow process ``x_t = (1 - t) x0 + t eps`` (prior: ``eps``, at ``t = 1``).

    ``generator`` predicts ``x0``; ``teacher`` and ``fake`` predict the velocity ``eps - x0``,
    so their ``x0`` is ``x_t - t v``. Fake update: generator samples (no grad), noised to
    ``t ~ U(t_range)``, ``mean (fake(x_t) - (eps - x))^2``. Generator update: samples with grad,
    noised (stop-grad) to fresh ``t``; teacher and fake ``x0`` under ``no_grad``; DMD's direction
    ``(fake_x0 - real_x0) / mean|x - real_x0|``; loss ``mean 0.5 ((x - sg(x)) + grad)^2``.
    The random draws come in the order the DMD method draws them. Returns ``(fake loss,
    generator loss)``, detached."""
    lo, hi = t_range
    ones = torch.ones(n, device=device)
    # fake-score update
    with torch.no_grad():
        x = generator(torch.randn((n, *shape), device=device), ones)
    t = lo + (hi - lo) * torch.rand(n, device=device)
    eps = torch.randn_like(x)
    x_t = (1 - _tb(t, x)) * x + _tb(t, x) * eps
    f_loss = ((fake(x_t, t) - (eps - x)) ** 2).mean()
    f_opt.zero_grad(set_to_none=True)
    f_loss.backward()
    f_opt.step()
    # generator update
    x = generator(torch.randn((n, *shape), device=device), ones)
    t = lo + (hi - lo) * torch.rand(n, device=device)
    tb = _tb(t, x)
    x_t = (1 - tb) * x.detach() + tb * torch.randn_like(x)
    with torch.no_grad():
        real_x0 = x_t - tb * teacher(x_t, t)
        fake_x0 = x_t - tb * fake(x_t, t)
        w = (x - real_x0).abs().flatten(1).mean(1).clamp_min(1e-8)
        grad = (fake_x0 - real_x0) / _tb(w, x)
    g_loss = (0.5 * ((x - x.detach()) + grad) ** 2).mean()
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    g_opt.step()
    return f_loss.detach(), g_loss.detach()


def check_same_losses(method: Any, n: int, device: str = "cpu", seed: int = 1234) -> dict[str, float]:
    """Run one :func:`method_step` on ``method`` and one :func:`hand_dmd_step` on a copy of it
    (same weights, same seeds, fresh Adams); raise if their losses differ (``rtol 1e-4``).
    Returns the losses. ``method`` takes one step (its weights change)."""
    twin = copy.deepcopy(method)
    shape = tuple(method.generator.sample_shape)
    batch = {"x": torch.zeros((n, *shape), device=device)}
    torch.manual_seed(seed)
    got = method_step(method, optimizers_of(method), batch)
    g_opt = torch.optim.Adam(twin.generator.parameters(), **ADAM)
    f_opt = torch.optim.Adam(twin.fake.parameters(), **ADAM)
    torch.manual_seed(seed)
    f_loss, g_loss = hand_dmd_step(twin.generator.net, twin.fake.net, twin.teacher.net, g_opt, f_opt, n, shape, device,
                                   method.t_range)
    torch.testing.assert_close(got["fake_score"], f_loss, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got["generator"], g_loss, rtol=1e-4, atol=1e-7)
    return {"method_fake": float(got["fake_score"]), "hand_fake": float(f_loss),
            "method_generator": float(got["generator"]), "hand_generator": float(g_loss)}


# -- timing helpers ------------------------------------------------------------------------------
def interleaved(a: Callable[[], Any], b: Callable[[], Any], *, steps: int, repeats: int, warmup: int,
                device: str) -> tuple[list[float], list[float]]:
    """Per repeat, the median seconds of ``a`` and of ``b`` over ``steps`` calls each,
    alternating ``a, b`` and ``b, a`` call by call, after ``warmup`` calls of each."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for r in range(repeats):
        sa, sb = [], []
        for i in range(steps):
            if (i + r) % 2 == 0:
                sa.append(timed(a, device))
                sb.append(timed(b, device))
            else:
                sb.append(timed(b, device))
                sa.append(timed(a, device))
        ta.append(statistics.median(sa))
        tb.append(statistics.median(sb))
    return ta, tb


# -- rows ----------------------------------------------------------------------------------------
def onestep_vs_teacher_sampling(net: str = "mlp2d", n: int = 4096, device: str = "cpu", *, repeats: int = 5,
                                teacher_steps: int = 50, name: str = "onestep_vs_teacher_sampling") -> dict[str, Any]:
    """The row: time of ``n`` one-step DMD samples / time of ``n`` teacher samples with
    ``teacher_steps`` Heun steps, networks of the same size (module docstring)."""
    from distillery.generative.samplers import nfe, sample

    with one_thread(device):
        method = make_dmd(net, device)
        method.eval()
        teacher = method.teacher
        x_T = teacher.process.prior((n, *NETS[net]), generator=torch.Generator().manual_seed(0)).to(device)

        def student() -> None:
            with torch.no_grad():
                method.sample(n, 1, device=device)

        def heun() -> None:
            with torch.no_grad():
                sample(teacher, x_T, steps=teacher_steps, solver="heun")

        s_t, t_t = interleaved(student, heun, steps=1, repeats=repeats, warmup=1, device=device)
    s, t = statistics.median(s_t), statistics.median(t_t)
    return {
        "name": name, "ratio": s / t, "goal": 0.03,
        "unit": (f"wall time of {n} samples: 1-step DMD generator / {teacher_steps}-step Heun teacher, "
                 f"same {net} network, no grad"),
        "detail": {"device": device, "net": net, "samples": n, "student_nfe": 1,
                   "teacher_steps": teacher_steps, "teacher_nfe": nfe("heun", teacher_steps), "student_s": s, "teacher_s": t,
                   "student_times_s": s_t, "teacher_times_s": t_t, "repeats": repeats,
                   "intra_op_threads": 1 if device == "cpu" else torch.get_num_threads()},
    }


def step_overhead(net: str, n: int, device: str = "cpu", *, steps: int = 10, repeats: int = 5,
                  warmup: int = 3) -> dict[str, Any]:
    """Method / hand DMD step times for one network and batch (see :func:`dmd_step_overhead`)."""
    with one_thread(device):
        method = make_dmd(net, device)
        method.train()
        losses = check_same_losses(method, n, device)
        shape = NETS[net]
        opts = optimizers_of(method)
        g_opt = torch.optim.Adam(method.generator.parameters(), **ADAM)
        f_opt = torch.optim.Adam(method.fake.parameters(), **ADAM)
        batch = {"x": torch.zeros((n, *shape), device=device)}
        gen, fake, teacher = method.generator.net, method.fake.net, method.teacher.net

        def by_method() -> None:
            method_step(method, opts, batch)

        def by_hand() -> None:
            hand_dmd_step(gen, fake, teacher, g_opt, f_opt, n, shape, device, method.t_range)

        m_t, h_t = interleaved(by_method, by_hand, steps=steps, repeats=repeats, warmup=warmup, device=device)
    ratios = [m / h for m, h in zip(m_t, h_t, strict=True)]
    return {"net": net, "batch": n, "ratio": statistics.median(ratios), "ratios": ratios,
            "method_step_ms": 1e3 * statistics.median(m_t), "hand_step_ms": 1e3 * statistics.median(h_t),
            "losses_checked": losses}


def dmd_step_overhead(device: str = "cpu", *, quick: bool = False, sizes: tuple[tuple[str, int], ...] | None = None,
                      steps: int | None = None, repeats: int | None = None, warmup: int = 3) -> dict[str, Any]:
    """The row: one DMD step through the method / the same step by hand (module docstring); the
    ratio is the first of ``sizes`` (default the unet at batch 64), the others are detail."""
    sizes = sizes or (("unet", 64), ("mlp2d", 256))
    steps = steps or (6 if quick else 20)
    repeats = repeats or (5 if quick else 9)
    runs = [step_overhead(net, n, device, steps=steps, repeats=repeats, warmup=warmup) for net, n in sizes]
    main = runs[0]
    return {
        "name": "dmd_step_overhead", "ratio": main["ratio"], "goal": 1.05,
        "unit": (f"time of one DMD step (fake update + generator update) through the DMD method / the same passes "
                 f"written by hand, {main['net']} batch {main['batch']}"),
        "detail": {"device": device, "runs": runs, "steps_per_repeat": steps, "repeats": repeats,
                   "intra_op_threads": 1 if device == "cpu" else torch.get_num_threads()},
    }


# -- peak memory -------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _training(variant: str, net: str, n: int, device: str) -> tuple[Any, dict, dict]:
    """``(method, optimizers, batch)`` of ``variant``: ``"dmd"`` (bf16 teacher) or
    ``"denoising"`` (the generator's network trained alone)."""
    batch = {"x": torch.randn((n, *NETS[net]), generator=torch.Generator().manual_seed(0)).to(device)}
    if variant == "dmd":
        method = make_dmd(net, device, teacher_bf16=True)
    elif variant == "denoising":
        from distillery.generative.objectives.denoising import Denoising

        method = Denoising(make_denoiser(net, "x0", 0, device)).to(device)
    else:
        raise ValueError(f"unknown variant {variant!r}; choose 'dmd' or 'denoising'")
    method.train()
    return method, optimizers_of(method), batch


def state_bytes(method: nn.Module, opts: dict[str, torch.optim.Optimizer]) -> int:
    """Bytes of the tensors a training holds between steps: parameters, buffers and optimizer
    states (each storage counted once)."""
    seen: dict[int, int] = {}
    tensors = list(method.parameters()) + list(method.buffers())
    for opt in opts.values():
        for state in opt.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def peak_memory_here(variant: str, net: str = "unet", n: int = 256, device: str = "cpu") -> dict[str, Any]:
    """In this process (a fresh one on CPU): the memory of one training step of ``variant`` at
    its peak (``peak_bytes``): on CUDA the allocator's peak above what was allocated before the
    models were built; on CPU the exact bytes of the state held between steps (parameters,
    buffers, optimizer states: :func:`state_bytes`) plus the step's working memory, the
    resident-set high-water mark during the step above the resident set just before it
    (``step_bytes``; the resident set also holds library code and Python objects, which the
    first steps page in, so it is not compared as a whole). See the module docstring."""
    import distillery.generative.objectives.denoising
    import distillery.generative.objectives.dmd  # noqa: F401

    gc.collect()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
    method, opts, batch = _training(variant, net, n, device)
    method_step(method, opts, batch)  # warm-up: optimizer states, one-time allocations
    method_step(method, opts, batch, step=1)
    gc.collect()
    held = state_bytes(method, opts)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        how = "VmHWM-after-reset" if _reset_hwm() else "VmHWM-whole-process"
        before = _status_kib("VmRSS") * 1024
    method_step(method, opts, batch, step=2)
    if cuda:
        torch.cuda.synchronize()
        peak, how = torch.cuda.max_memory_allocated(), "cuda.max_memory_allocated"
        total = peak - base
    else:
        peak = _status_kib("VmHWM") * 1024
        total = held + peak - before
    weights = sum(p.numel() * p.element_size() for p in method.parameters())
    return {"variant": variant, "peak_bytes": total, "step_bytes": peak - before, "state_bytes": held,
            "parameter_bytes": weights, "method": how}


def peak_memory(variant: str, net: str = "unet", n: int = 256, device: str = "cpu") -> dict[str, Any]:
    """:func:`peak_memory_here` in a fresh subprocess on CPU (in this process on CUDA)."""
    if device.startswith("cuda"):
        return peak_memory_here(variant, net, n, device)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join(p for p in (os.path.join(root, "src"), root, os.environ.get("PYTHONPATH", "")) if p))
    spec = json.dumps({"variant": variant, "net": net, "n": n, "threads": torch.get_num_threads()})
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--probe", spec], capture_output=True, text=True,
                         env=env, check=False, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe for {variant!r} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def dmd_peak_memory(device: str = "cpu", *, net: str = "unet", n: int = 256) -> dict[str, Any]:
    """The row (a report): peak memory of a DMD step (bf16 no-grad teacher) / of the student's
    own denoising step (module docstring)."""
    dmd = peak_memory("dmd", net, n, device)
    den = peak_memory("denoising", net, n, device)
    what = ("cuda.max_memory_allocated" if device.startswith("cuda")
            else "exact state bytes + the step's resident-set peak (VmHWM) above the resident set before it")
    return {
        "name": "dmd_peak_memory", "ratio": dmd["peak_bytes"] / den["peak_bytes"], "goal": None,
        "unit": (f"peak memory of one DMD step (teacher bf16, no grad; generator + fake score fp32, Adam) / one "
                 f"denoising step of the student alone, {net} batch {n}: weights + optimizer states + the step's "
                 f"working memory, by {what}"),
        "detail": {"device": device, "net": net, "batch": n, "dmd": dmd, "denoising": den,
                   "step_ratio": dmd["step_bytes"] / den["step_bytes"]},
    }


def sampling_rows(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    """``onestep_vs_teacher_sampling`` (4096 2-D points) and, outside ``quick``,
    ``onestep_vs_teacher_sampling_images`` (256 8x8 images, unet)."""
    rows = [onestep_vs_teacher_sampling("mlp2d", 4096, device, repeats=3 if quick else 5)]
    if not quick:
        rows.append(onestep_vs_teacher_sampling("unet", 256, device, repeats=3, name="onestep_vs_teacher_sampling_images"))
    return rows


def benchmark(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    """All the generative rows (``--quick``: no image sampling row, fewer repeats and steps)."""
    rows = sampling_rows(quick, device)
    rows.append(dmd_step_overhead(device, quick=quick))
    rows.append(dmd_peak_memory(device, n=128 if quick else 256))
    return rows


def _run_probe(spec: str) -> None:
    probe = json.loads(spec)
    if probe.get("threads"):
        torch.set_num_threads(int(probe["threads"]))
    print(json.dumps(peak_memory_here(probe["variant"], probe["net"], int(probe["n"]))))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        _run_probe(args.probe)
    else:
        print(json.dumps(benchmark(args.quick, args.device), indent=1, default=str))
