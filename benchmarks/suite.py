"""The benchmark suite behind ``distillery bench [--quick] [--out DIR]``.

Every row is a ratio of two things measured side by side in the same process or run
(medians of repeats after warm-up), never an absolute time, so rows can be compared across
machines. Rows: ``engine_overhead``, ``cached_vs_student_only`` (+ ``online_vs_cached``),
``chunked_vs_dense_memory`` and ``chunked_vs_dense_time``, ``ddp2_vs_1_throughput``, and the
generative engine's ``onestep_vs_teacher_sampling`` (+ ``onestep_vs_teacher_sampling_images``
outside ``--quick``), ``dmd_step_overhead`` and ``dmd_peak_memory`` (benchmarks/generative.py), and the sequence engine's
``kv_cache_sampling``, ``topk_cache_bytes_per_token`` and ``onpolicy_step_breakdown``
(benchmarks/sequence.py), and the streaming engine's ``rolling_kv_per_frame_cost`` and
``streaming_student_vs_teacher`` (benchmarks/streaming.py). When a
CUDA device is present the rows that make sense on it run there too, named ``cuda/<row>``.
Results go to ``DIR/bench.json`` as ``{"rows": [{"name", "ratio", "goal", "unit", "detail"}]}``
and, as a markdown table, to ``DIR/bench.md``; ``--docs FILE`` also puts that table into the
generated block of ``FILE`` (BENCHMARKS.md).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _chunked(quick: bool, device: str) -> list[dict[str, Any]]:
    from benchmarks.chunked_kd import benchmark

    tokens = 1024 if quick else 4096
    report = benchmark(tokens=tokens, vocab=32000, hidden=512, device=device, repeats=3 if quick else 5, warmup=1,
                       variants=("dense", "chunked"))
    ratios = report["ratios"]["chunked"]
    detail = {"device": device, "config": report["config"], "results": report["results"]}
    return [
        {"name": "chunked_vs_dense_memory", "ratio": ratios["peak_memory"], "goal": 0.25,
         "unit": f"peak working memory of chunked / dense KD, forward + backward, {tokens} tokens x 32,000 vocab, hidden 512",
         "detail": detail},
        {"name": "chunked_vs_dense_time", "ratio": ratios["time"], "goal": 1.2,
         "unit": f"time of chunked / dense KD, forward + backward, {tokens} tokens x 32,000 vocab, hidden 512",
         "detail": detail},
    ]


def rows(quick: bool, device: str) -> list[tuple[str, Callable[[], Any]]]:
    from benchmarks import cache_epoch, ddp_throughput, engine_overhead, generative

    out: list[tuple[str, Callable[[], Any]]] = [
        ("engine_overhead", lambda: engine_overhead.benchmark(quick=quick, device=device)),
        ("cached_vs_student_only", lambda: cache_epoch.benchmark(quick=quick, device=device)),
        ("chunked_vs_dense", lambda: _chunked(quick, device)),
        ("onestep_vs_teacher_sampling", lambda: generative.sampling_rows(quick, device)),
        ("dmd_step_overhead", lambda: generative.dmd_step_overhead(device, quick=quick)),
        ("dmd_peak_memory", lambda: generative.dmd_peak_memory(device, n=128 if quick else 256)),
    ]
    if device == "cpu":
        out.append(("ddp2_vs_1_throughput", lambda: ddp_throughput.benchmark(quick=quick)))
    # -- the sequence engine's rows (benchmarks/sequence.py)
    from benchmarks import sequence

    out += [
        ("kv_cache_sampling", lambda: sequence.kv_cache_row(quick, device)),
        ("topk_cache_bytes_per_token", lambda: sequence.topk_cache_row(quick, device)),
        ("onpolicy_step_breakdown", lambda: sequence.onpolicy_row(quick, device)),
    ]
    # -- the streaming engine's rows (benchmarks/streaming.py)
    from benchmarks import streaming

    out += [
        ("rolling_kv_per_frame_cost", lambda: streaming.rolling_kv_per_frame_cost(device, quick)),
        ("streaming_student_vs_teacher", lambda: streaming.streaming_student_vs_teacher(device, quick)),
    ]
    return out


BLOCK_BEGIN = "<!-- bench:begin (written by `distillery bench --docs`; do not edit by hand) -->"
BLOCK_END = "<!-- bench:end -->"


def run_suite(out: Path, quick: bool = False, log=print) -> dict[str, Any]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for device in devices:
        for name, fn in rows(quick, device):
            log(f"bench {name} on {device} ...")
            start = time.perf_counter()
            got = fn()
            for row in got if isinstance(got, list) else [got]:
                if device != "cpu":
                    row["name"] = f"{device}/{row['name']}"
                row.setdefault("detail", {})["bench_s"] = time.perf_counter() - start
                results.append(row)
                log(f"  {format_row(row)}")
    report = {
        "rows": results,
        "quick": quick,
        "machine": {"platform": platform.platform(), "cpu_cores": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "wall_s": time.perf_counter() - t0,
        "date": datetime.date.today().isoformat(),
        "command": "distillery bench" + (" --quick" if quick else ""),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "bench.md").write_text(format_markdown(report) + "\n")
    log("")
    log(format_table(results))
    return report


def format_row(row: dict[str, Any]) -> str:
    goal = row.get("goal")
    verdict = "" if goal is None else ("meets goal" if _meets(row) else "MISSES goal")
    return f"{row['name']:<34} {row['ratio']:>8.3f}  goal {'-' if goal is None else f'<= {goal:g}':<8} {verdict}"


def _meets(row: dict[str, Any]) -> bool:
    return row.get("goal") is None or row["ratio"] <= row["goal"]


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'row':<34} {'ratio':>8}  {'goal':<13} result", "-" * 70]
    lines += [format_row(r) for r in results]
    return "\n".join(lines)


def _detail_text(row: dict[str, Any]) -> str:
    """The few side-by-side figures behind a row's ratio, for the markdown table."""
    d = row.get("detail", {})
    name = row["name"].split("/")[-1]
    if name == "engine_overhead":
        per_process = d.get("process_ratios")
        spread = f" (processes: {', '.join(f'{r:.3f}' for r in per_process)})" if per_process else ""
        return (f"step {d['distillery_step_ms']:.2f} ms vs hand-written {d['hand_step_ms']:.2f} ms{spread}; "
                f"whole Trainer epoch / hand epoch {d['trainer_epoch_vs_hand_epoch']:.3f}")
    if name in ("cached_vs_student_only", "online_vs_cached"):
        e = d["epoch_s"]
        return f"epoch: student only {e['student_only']:.3f} s, cached {e['cached']:.3f} s, online {e['online']:.3f} s"
    if name.startswith("chunked_vs_dense"):
        r = d["results"]
        return (f"peak {r['chunked']['peak_bytes'] / 2**20:.0f} MiB vs {r['dense']['peak_bytes'] / 2**20:.0f} MiB; "
                f"{r['chunked']['time_s']:.2f} s vs {r['dense']['time_s']:.2f} s")
    if name.startswith("onestep_vs_teacher_sampling"):
        return (f"{d['samples']} samples ({d['net']}): 1-step student {d['student_nfe']} NFE {d['student_s'] * 1e3:.1f} ms "
                f"vs {d['teacher_steps']}-step Heun teacher {d['teacher_nfe']} NFE {d['teacher_s'] * 1e3:.1f} ms")
    if name == "dmd_step_overhead":
        return "; ".join(f"{r['net']} batch {r['batch']}: method {r['method_step_ms']:.1f} ms vs hand {r['hand_step_ms']:.1f} ms "
                         f"(ratio {r['ratio']:.3f})" for r in d["runs"]) + "; same losses checked"
    if name == "dmd_peak_memory":
        dmd, den = d["dmd"], d["denoising"]
        return (f"{d['net']} batch {d['batch']}: DMD step {dmd['peak_bytes'] / 2**20:.1f} MiB (state {dmd['state_bytes'] / 2**20:.1f}) "
                f"vs denoising step {den['peak_bytes'] / 2**20:.1f} MiB (state {den['state_bytes'] / 2**20:.1f}); "
                f"working memory alone {d['step_ratio']:.3f}")
    if name == "ddp2_vs_1_throughput":
        return f"global batch {d.get('global_batch')}, {d.get('cpu_cores')} CPU cores shared by both processes"
    # -- the sequence engine's rows (benchmarks/sequence.py)
    if name == "kv_cache_sampling":
        return (f"{d['new_tokens']} tokens x batch {d['batch']}: KV cache {d['cache_tokens_per_s']:.0f} tokens/s vs "
                f"recomputing the prefix {d['no_cache_tokens_per_s']:.0f} tokens/s ({d['speedup']:.1f}x)")
    if name == "topk_cache_bytes_per_token":
        lo, hi = d["distillkit_bytes_per_token"]
        return (f"k = {d['k']}, vocab {d['vocab']} ({d['index_dtype']} ids, uint8 log-prob codes): {d['bytes_per_token']} "
                f"bytes/token ({d['on_disk_bytes_per_token']:.1f} on disk for {d['tokens']} tokens); KL(exact top-k || cached) "
                f"{d['kl_quantisation']:.1e}, KL(dense || cached) {d['kl_dense_vs_cached']:.3f} nats/token (teacher entropy "
                f"{d['teacher_entropy']:.2f}, tail {d['tail_mass']:.3f}); DistillKit {lo}-{hi} bytes/token")
    if name == "onpolicy_step_breakdown":
        ms, sh = d["ms"], d["shares"]
        return (f"step {d['step_ms']:.1f} ms: sampling {d['new_tokens']} tokens {ms['sampling']:.1f} ms ({sh['sampling']:.0%}), "
                f"teacher scoring {ms['teacher_scoring']:.1f} ms ({sh['teacher_scoring']:.0%}), student update "
                f"{ms['student_update']:.1f} ms ({sh['student_update']:.0%})")
    return ""


def format_markdown(report: dict[str, Any]) -> str:
    """The rows of ``report`` as a markdown table, with the machine and the command."""
    m = report["machine"]
    device = f", {m['cuda']}" if m.get("cuda") else ", no GPU"
    lines = [
        (f"Figures from `{report.get('command', 'distillery bench')}` on {m['platform']}, {m['cpu_cores']} CPU cores, "
         f"torch {m['torch']}{device} ({report.get('date', '')}, {report['wall_s']:.0f} s)."),
        "",
        "| row | ratio | goal | result | measured side by side |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        goal = row.get("goal")
        verdict = "-" if goal is None else ("meets goal" if _meets(row) else "**misses goal**")
        lines.append(f"| `{row['name']}` | {row['ratio']:.3f} | {'-' if goal is None else f'<= {goal:g}'} | {verdict} | "
                     f"{_detail_text(row)} |")
    return "\n".join(lines)


def write_docs(report: dict[str, Any], path: Path) -> None:
    """Replace the generated block of ``path`` (between the bench markers) with the table."""
    block = f"{BLOCK_BEGIN}\n\n{format_markdown(report)}\n\n{BLOCK_END}"
    from distillery.engine.checkpoint import atomic_write_text
    from distillery.evaluation.report import replace_block

    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    atomic_write_text(path, replace_block(text, BLOCK_BEGIN, BLOCK_END, block))
