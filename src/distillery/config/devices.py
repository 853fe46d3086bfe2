"""The devices a config may name (``train.device``), checked without importing torch.

Allowed: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` (the current CUDA
device), ``cuda:N`` (GPU number ``N``) and ``mps`` (Apple silicon). ``meta`` (tensors without
data) and every other torch device type are refused: no training runs on them. Whether the
named device exists on this machine is checked when a run starts
(:func:`distillery.engine.trainer.resolve_device`), not here: a config may be written and
validated on another machine than the one that runs it.
"""

from __future__ import annotations

import re

FORMS = "auto, cpu, cuda, cuda:N (N a GPU number, e.g. cuda:0) or mps"
"""The allowed forms, as error messages list them."""

_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def device_problem(device: object) -> str | None:
    """``None`` when ``device`` is an allowed device name, else what is wrong with it."""
    if not isinstance(device, str):
        return f"a device is named by a string ({FORMS}), got {device!r}"
    if _PATTERN.fullmatch(device):
        return None
    if device == "meta":
        return f"'meta' holds no data, so nothing can be trained on it; use {FORMS}"
    return f"unknown device {device!r}; use {FORMS}"


__all__ = ["FORMS", "device_problem"]
