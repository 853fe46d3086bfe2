"""Timing helpers shared by the benchmark rows: one intra-op thread, device sync, one timed call."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


@contextlib.contextmanager
def one_thread(device: str) -> Iterator[None]:
    """One intra-op thread on CPU inside the block: on a small shared CPU a second thread's
    hand-offs cost more than tiny matrix products gain, and move timings between runs."""
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0
