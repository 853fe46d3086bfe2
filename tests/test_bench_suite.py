"""The benchmark suite's report writing (the figures themselves are not tested: the bench is
not a test). A made-up report checks that BENCHMARKS.md's generated block is replaced in
place, that the prose around it survives, and that a missed goal is marked as missed."""

import sys
from pathlib import Path

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
