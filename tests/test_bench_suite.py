"""The benchmark suite's report writing (the figures themselves are not tested: the bench is
not a test). A made-up report checks that BENCHMARKS.md's generated block is replaced in
place, that the prose around it survives, and that a missed goal is marked as missed."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.suite import BLOCK_BEGIN, BLOCK_END, format_markdown, write_docs


def _report(ratio: float) -> dict:
    return {
        "rows": [
            {"name": "engine_overhead", "ratio": ratio, "goal": 1.03, "unit": "x",
             "detail": {"distillery_step_ms": 9.0, "hand_step_ms": 8.0, "trainer_epoch_vs_hand_epoch": 1.1}},
            {"name": "ddp2_vs_1_throughput", "ratio": 0.5, "goal": None, "unit": "x",
             "detail": {"global_batch": 256, "cpu_cores": 2}},
        ],
        "machine": {"platform": "Linux", "cpu_cores": 2, "torch": "2.13.0", "cuda": None},
        "wall_s": 12.0, "date": "2026-01-01", "command": "distillery bench",
    }


def test_markdown_marks_missed_and_met_goals():
    md = format_markdown(_report(1.125))
    assert "| `engine_overhead` | 1.125 | <= 1.03 | **misses goal** | step 9.00 ms vs hand-written 8.00 ms" in md
    assert "| `ddp2_vs_1_throughput` | 0.500 | - | - |" in md
    assert "meets goal" in format_markdown(_report(1.01))
    assert "no GPU" in md and "`distillery bench`" in md


def test_write_docs_replaces_only_the_generated_block(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\nintro prose\n\n{BLOCK_BEGIN}\nold table\n{BLOCK_END}\n\nclosing prose\n")
    write_docs(_report(1.125), path)
    text = path.read_text()
    assert "old table" not in text and "1.125" in text
    assert text.startswith("# Benchmarks\n\nintro prose") and text.endswith("closing prose\n")
    write_docs(_report(1.01), path)
    text = path.read_text()
    assert text.count(BLOCK_BEGIN) == 1 and "1.125" not in text and "1.010" in text


# -- the generative rows (benchmarks/generative.py) on tiny sizes: the row functions run, the
# hand-written DMD step does the method's work, and the memory accounting is exact where it can be


def test_onestep_sampling_row_counts_evaluations():
    from benchmarks.generative import onestep_vs_teacher_sampling

    row = onestep_vs_teacher_sampling("mlp2d", 32, repeats=1, teacher_steps=3)
    d = row["detail"]
    assert row["name"] == "onestep_vs_teacher_sampling" and row["goal"] == 0.03
    assert d["student_nfe"] == 1 and d["teacher_nfe"] == 5  # Heun: 2 * 3 - 1 (no correction at sigma = 0)
    assert row["ratio"] == d["student_s"] / d["teacher_s"] > 0
    assert "NFE" in format_markdown({**_report(1.0), "rows": [row]})


def test_hand_dmd_step_computes_the_methods_losses():
    import copy

    import torch

    from benchmarks.generative import ADAM, check_same_losses, hand_dmd_step, make_dmd

    for net, n in (("mlp2d", 16), ("unet", 2)):
        method = make_dmd(net)
        fresh = copy.deepcopy(method)
        losses = check_same_losses(method, n)  # raises when they differ
        assert losses["method_fake"] == pytest.approx(losses["hand_fake"], rel=1e-4) and losses["hand_fake"] > 0
        # the check has teeth: other draws give other losses
        opts = [torch.optim.Adam(m.parameters(), **ADAM) for m in (fresh.generator, fresh.fake)]
        torch.manual_seed(99)
        f_loss, _ = hand_dmd_step(fresh.generator.net, fresh.fake.net, fresh.teacher.net, *opts, n,
                                  tuple(fresh.generator.sample_shape), "cpu", fresh.t_range)
        assert abs(float(f_loss) - losses["hand_fake"]) > 1e-6


def test_dmd_step_overhead_row_runs():
    from benchmarks.generative import dmd_step_overhead

    row = dmd_step_overhead(sizes=(("mlp2d", 8),), steps=1, repeats=1, warmup=0)
    run = row["detail"]["runs"][0]
    assert row["goal"] == 1.05 and row["ratio"] == run["ratio"] > 0
    assert run["losses_checked"]["method_generator"] == pytest.approx(run["losses_checked"]["hand_generator"], rel=1e-4)
    assert "same losses checked" in format_markdown({**_report(1.0), "rows": [row]})


def test_bf16_teacher_and_exact_state_bytes():
    import torch

    from benchmarks.generative import _training, make_dmd, method_step, state_bytes

    method = make_dmd("mlp2d", teacher_bf16=True)
    assert {p.dtype for p in method.teacher.parameters()} == {torch.bfloat16}
    x = torch.randn(4, 2)
    assert method.teacher.predict(x, torch.full((4,), 0.5), None, "x0").dtype == torch.float32

    method, opts, batch = _training("denoising", "mlp2d", 8, "cpu")
    method_step(method, opts, batch)
    params = list(method.parameters())
    # Adam: the weights, exp_avg and exp_avg_sq in float32, and a 0-d float32 step per tensor
    assert state_bytes(method, opts) == sum(3 * 4 * p.numel() + 4 for p in params)


def test_peak_memory_probe_in_process():
    # (the CPU row runs this in a fresh subprocess, whose start alone takes ~10 s on a loaded
    # machine: `python benchmarks/generative.py` exercises that path, not this test)
    from benchmarks.generative import peak_memory_here

    here = peak_memory_here("dmd", "mlp2d", 8)
    assert here["peak_bytes"] >= here["state_bytes"] > here["parameter_bytes"] > 0
    assert here["peak_bytes"] == here["state_bytes"] + here["step_bytes"]


# -- the sequence rows (benchmarks/sequence.py) on tiny sizes: the row functions run, their
# ratios are what the rows say, and the markdown shows the side-by-side figures


def test_sequence_rows_run_on_tiny_sizes():
    from benchmarks.sequence import kv_cache_sampling, onpolicy_step_breakdown, topk_cache_bytes_per_token

    kv = kv_cache_sampling(new_tokens=6, batch=2, dim=32, depth=1, vocab=64, prompt_len=3, repeats=1)
    d = kv["detail"]
    assert kv["goal"] == pytest.approx(1 / 3, abs=1e-3) and d["same_greedy_tokens"]
    assert kv["ratio"] == pytest.approx(d["cache_s"] / d["no_cache_s"])
    assert d["cache_tokens_per_s"] == pytest.approx(12 / d["cache_s"])

    top = topk_cache_bytes_per_token(ks=(4,), vocab=300, examples=2, prompt_len=2, completion_len=5)
    d = top["detail"]
    assert top["goal"] == 1.0 and d["bytes_per_token"] == 3 * 4 + 3 and top["ratio"] == pytest.approx(0.15)
    assert d["on_disk_bytes_per_token"] > d["bytes_per_token"] and 0.0 <= d["kl_quantisation"] < 1e-3

    step = onpolicy_step_breakdown(steps=1, warmup=0, batch=2, prompt_len=2, new_tokens=3, vocab=32)
    shares = step["detail"]["shares"]
    assert step["goal"] is None and sum(shares.values()) == pytest.approx(1.0) and step["ratio"] == shares["sampling"]

    md = format_markdown({**_report(1.0), "rows": [kv, top, step]})
    assert "tokens/s" in md and "DistillKit 114-300 bytes/token" in md and "teacher scoring" in md
