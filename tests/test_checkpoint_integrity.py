"""Checkpoints that are damaged, half-written or unwritable: refused with a clear message,
never loaded silently, and never at the cost of the last good checkpoint (issue 10, items 3,
4 and 6)."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from distillery import CheckpointError, Distiller, Term, Trainer
from distillery.data import gaussian_mixture
from distillery.engine import checkpoint as ckpt
from distillery.objectives import CrossEntropy


def _trainer(out, epochs=3, **kw) -> Trainer:
    splits = gaussian_mixture(num_classes=3, dim=6, n_train=48, n_test=24, seed=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    args = dict(eval_data=splits.test, out_dir=out, epochs=epochs, batch_size=16, optimizer={"name": "adamw", "lr": 0.01},
                seed=1, progress=False, tensorboard=False, checkpoint_every=1, keep_checkpoints=2)
    args.update(kw)
    return Trainer(Distiller(net, None, [Term("ce", CrossEntropy())]), splits.train, **args)


def _stopped_run(out):
    """A run stopped after 5 steps, checkpoints at steps 4 and 5."""
    summary = _trainer(out, stop_after_steps=5).fit()
    assert summary["steps"] == 5 and not summary["complete"]
    return out / "checkpoints"


def _flip_byte(path, offset=-20):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_state_json_records_the_sha256_of_every_file(tmp_path):
    root = _stopped_run(tmp_path / "r")
    newest = ckpt.latest_checkpoint(root)
    state = json.loads((newest / "state.json").read_text())
    assert set(state["files"]) == {"model.safetensors", "optimizer.safetensors"}
    for name, digest in state["files"].items():
        assert digest == ckpt.sha256_file(newest / name)


def test_a_flipped_byte_in_the_newest_weights_is_refused_and_the_previous_one_offered(tmp_path):
    root = _stopped_run(tmp_path / "r")
    _flip_byte(root / "step-00000005" / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        _trainer(tmp_path / "r").fit(resume=True)
    msg = str(info.value)
    assert "step-00000005" in msg and "model.safetensors is damaged" in msg
    assert "step-00000004 is intact" in msg and "mv " in msg
    # doing what the message says continues from the intact checkpoint, to the end
    os.rename(root / "step-00000005", root / "damaged-step-00000005")
    summary = _trainer(tmp_path / "r").fit(resume=True)
    assert summary["complete"] and summary["steps"] == 9


def test_damaged_optimizer_state_and_truncated_state_json_are_refused(tmp_path):
    root = _stopped_run(tmp_path / "r")
    newest = root / "step-00000005"
    (newest / "optimizer.safetensors").write_bytes((newest / "optimizer.safetensors").read_bytes()[:50])
    with pytest.raises(CheckpointError, match="optimizer.safetensors is damaged"):
        _trainer(tmp_path / "r").fit(resume=True)
    (newest / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="optimizer.safetensors is missing"):
        _trainer(tmp_path / "r").fit(resume=True)
    (newest / "state.json").write_text((newest / "state.json").read_text()[:100])
    with pytest.raises(CheckpointError, match="state.json is truncated or corrupt"):
        _trainer(tmp_path / "r").fit(resume=True)


def test_an_unreadable_optimizer_file_of_an_old_checkpoint_without_digests_is_a_checkpoint_error(tmp_path):
    root = _stopped_run(tmp_path / "r")
    newest = root / "step-00000005"
    state = json.loads((newest / "state.json").read_text())
    del state["files"]  # as written before digests were recorded
    (newest / "state.json").write_text(json.dumps(state))
    (newest / "optimizer.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="Could not read the optimizer state"):
        _trainer(tmp_path / "r").fit(resume=True)


def test_a_corrupt_or_missing_pointer_does_not_stop_a_resume(tmp_path):
    full = _trainer(tmp_path / "full").fit()
    root = _stopped_run(tmp_path / "r")
    (root / "latest.json").write_text("{not json")
    assert ckpt.latest_checkpoint(root).name == "step-00000005"
    (root / "latest.json").unlink()
    resumed = _trainer(tmp_path / "r").fit(resume=True)
    assert resumed["final"] == full["final"]
    a, b = load_file(str(tmp_path / "full" / "student.safetensors")), load_file(str(tmp_path / "r" / "student.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_temporary_folder_left_by_a_killed_write_is_removed_at_the_next_write(tmp_path):
    root = _stopped_run(tmp_path / "r")
    stale = root / ".step-00000006.abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(root).name == "step-00000005"  # never taken for a checkpoint
    _trainer(tmp_path / "r").fit(resume=True)
    assert not stale.exists()
    assert not list(root.glob(".step-*"))


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    root = _stopped_run(tmp_path / "r")
    before = {p.name: ckpt.sha256_file(p / "model.safetensors") for p, _ in ckpt.step_dirs(root)}
    pointer = (root / "latest.json").read_text()
    real = ckpt.save_file

    def full_disk(tensors, filename, *a, **k):
        if "optimizer" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(CheckpointError) as info:
        _trainer(tmp_path / "r").fit(resume=True)
    msg = str(info.value)
    assert "the disk is full" in msg and "step-00000005 is kept" in msg and "--resume" in msg
    assert {p.name: ckpt.sha256_file(p / "model.safetensors") for p, _ in ckpt.step_dirs(root)} == before
    assert (root / "latest.json").read_text() == pointer
    assert not list(root.glob(".step-*"))
    monkeypatch.setattr(ckpt, "save_file", real)
    assert _trainer(tmp_path / "r").fit(resume=True)["complete"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        _trainer(tmp_path / "r", epochs=1).fit()
    finally:
        os.umask(old)
    out = tmp_path / "r"
    files = [out / "summary.json", out / "student.safetensors", *(out / "checkpoints").rglob("*.safetensors"),
             *(out / "checkpoints").rglob("state.json"), out / "checkpoints" / "latest.json"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    for d in (out / "checkpoints").glob("step-*"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~mask, d
