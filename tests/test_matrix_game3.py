"""Matrix-Game 3.0 (arXiv:2604.08995): re-injection of generated frames into the teacher-forced
context, the camera track and camera-aware memory retrieval, and the config fragments."""

from __future__ import annotations

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.method import BatchDraws
from distillery.generative.processes import FlowProcess
from distillery.recipes.matrix_game3 import (
    MatrixGame3Base,
    base_config,
    camera_memory_rollout,
    camera_track,
    dmd_config,
    reinjection_mask,
    retrieve,
)
from distillery.streaming.models import VideoTransformer
from distillery.streaming.rollout import rollout

SHAPE = (8, 1, 16, 16)  # 4 chunks of 2 frames


def _student(seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    net = VideoTransformer(frames=8, in_channels=1, image_size=16, patch=8, dim=16, depth=2, heads=2, chunk=2,
                           attention="block_causal", max_frames=32, num_actions=5)
    for p in net.parameters():  # the zero-initialised heads would make every output 0
        torch.nn.init.normal_(p, std=0.05)
    return Denoiser(net, FlowProcess(), prediction="x0", sample_shape=SHAPE)


def _batch(n: int = 3, frames: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"x": torch.rand(n, frames, 1, 16, 16, generator=g) * 2 - 1,
            "actions": torch.randint(0, 5, (n, frames), generator=g)}


def test_reinjection_mask_hand_written():
    class Fixed:
        def rand(self, n: int) -> torch.Tensor:
            return torch.tensor([0.1, 0.9, 0.2, 0.6, 0.05, 0.3])[:n]

    m = reinjection_mask(Fixed(), 2, 3, 2, 0.5, 1)
    expected = torch.tensor([[0, 0, 0, 0, 1, 1],    # chunk 0 is the prefix: never re-injected
                             [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)
    assert not reinjection_mask(Fixed(), 2, 3, 2, 0.0, 0).any()
    assert reinjection_mask(Fixed(), 2, 3, 2, 1.0, 0).all()


def test_context_is_own_rollout_where_reinjected_and_real_elsewhere():
    student = _student()
    method = MatrixGame3Base(student, reinject=0.5, reinject_steps=2, prefix_chunks=1, seed=3)
    batch = _batch()
    cond = {"actions": batch["actions"]}
    ctx = method.context_for(batch["x"], cond, step=5)
    # replay the draws the method makes at step 5: the rollout first, then the mask
    draw = BatchDraws((3 * 1_000_003 + 5 + 104_729) % (2**63), 0, 1)
    own = rollout(student, 3, 4, [2] * 4, cond=cond, real=batch["x"], prefix_chunks=1, context="self", draw=draw).video
    m = reinjection_mask(draw, 3, 4, 2, 0.5, 1)
    assert m.any() and (~m).any()
    assert torch.equal(ctx[m], own[m])
    assert torch.equal(ctx[~m], batch["x"][~m])
    assert torch.equal(ctx[:, :2], batch["x"][:, :2])  # the prefix chunk stays real
    assert not torch.allclose(own[:, 2:], batch["x"][:, 2:])  # generated frames are imperfect
    # reinject 0: plain teacher forcing, the context is the real video
    plain = MatrixGame3Base(student, reinject=0.0, seed=3)
    assert plain.context_for(batch["x"], cond, 5) is batch["x"]


def test_loss_gradient_reaches_the_model_not_the_context():
    method = MatrixGame3Base(_student(), reinject=1.0, seed=0)
    loss, logs = method.loss("model", _batch(), 0)
    loss.backward()
    grads = [p.grad for p in method.model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert logs["reinjected"] == pytest.approx(0.75)  # p = 1: all but the prefix chunk (3 of 4)


def test_camera_track_hand_written():
    # stay, down, right, right, up, left  (rows, cols)
    a = torch.tensor([[0, 2, 4, 4, 1, 3]])
    expected = torch.tensor([[[0, 0], [1, 0], [1, 1], [1, 2], [0, 2], [0, 1]]])
    assert torch.equal(camera_track(a), expected)
    with pytest.raises(ConfigError, match="actions"):
        camera_track(torch.tensor([[0, 9]]))


def test_retrieve_nearest_camera_chunk():
    # chunk 2 returns to where chunk 0 was; chunk 1 is away
    track = torch.tensor([[[0, 0], [0, 0], [3, 3], [3, 3], [0, 0], [0, 1]]], dtype=torch.float)
    assert retrieve(track, 2, 2, 2, 1).tolist() == [[0]]
    assert retrieve(track, 2, 2, 2, 2).tolist() == [[0, 1]]
    # ties go to the most recent chunk
    tied = torch.zeros(1, 8, 2)
    assert retrieve(tied, 2, 3, 3, 1).tolist() == [[2]]
    with pytest.raises(ConfigError, match="memory"):
        retrieve(track, 2, 2, 2, 3)


def test_memory_rollout_with_full_window_equals_engine_rollout():
    student = _student(2).eval()
    batch = _batch(2, 8)
    cond = {"actions": batch["actions"]}
    torch.manual_seed(7)
    ref = rollout(student, 2, 4, [2] * 4, cond=cond, real=batch["x"], prefix_chunks=1, context="self").video
    torch.manual_seed(7)
    got = camera_memory_rollout(student, 2, 4, [2] * 4, cond=cond, real=batch["x"], prefix_chunks=1, window=4, memory=0)
    assert torch.allclose(got, ref, atol=1e-5)
    # a bounded context (1 recent + 1 retrieved chunk) streams too, and differs from the full one
    torch.manual_seed(7)
    bounded = camera_memory_rollout(student, 2, 4, [2] * 4, cond=cond, real=batch["x"], prefix_chunks=1, window=1,
                                    memory=1)
    assert bounded.shape == ref.shape and torch.isfinite(bounded).all()
    assert torch.equal(bounded[:, :2], batch["x"][:, :2])


def test_bad_input_names_the_key():
    student = _student()
    with pytest.raises(ConfigError, match="reinject"):
        MatrixGame3Base(student, reinject=1.5)
    with pytest.raises(ConfigError, match="reinject_steps"):
        MatrixGame3Base(student, reinject_steps=0)
    with pytest.raises(ConfigError, match="prefix_chunks"):
        MatrixGame3Base(student, prefix_chunks=4)
    with pytest.raises(ConfigError, match="context"):
        MatrixGame3Base(student, context="none")
    with pytest.raises(ConfigError, match="actions"):
        camera_memory_rollout(student, 1, 4, [1] * 4, cond={}, real=torch.zeros(1, 8, 1, 16, 16))


def test_fragments():
    assert base_config(reinject=0.0)["method"] == {"kind": "matrix_game3_base", "params": {
        "reinject": 0.0, "reinject_steps": 2, "prefix_chunks": 1, "noise": "chunk"}}
    m = dmd_config(steps=1)["method"]
    assert m["kind"] == "self_forcing" and m["params"]["steps"] == 1 and m["params"]["context"] == "self"


def test_reproduction_configs_parse():
    from distillery.config import parse_config
    from distillery.reproduce import matrix_game3 as R

    s = R.SETTINGS(True)
    parse_config({"seed": 0, **R.teacher_config(s)}, "teacher")
    for name, cfg in R.base_configs(s, "runs/t").items():
        assert parse_config({"name": name, "seed": 0, **cfg}, name).method.kind == "matrix_game3_base"
    dmd = parse_config({"name": "d", "seed": 0, **R.dmd_student_config(s, "runs/t", "runs/b")}, "dmd")
    assert dmd.method.kind == "self_forcing" and dmd.student.init_run == "runs/b"
