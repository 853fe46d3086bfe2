"""Streaming runs end to end: the shipped configs (teacher -> ODE init -> Self-Forcing) run
shortened, the objectives' losses and gradients, ``distillery sample`` writes film strips and a
GIF, and bad input exits 2 with a message naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from distillery.cli import main
from distillery.config import load_config
from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import build_process
from distillery.streaming.models import VideoTransformer
from distillery.streaming.objectives.ode_init import StreamingODEInit
from distillery.streaming.objectives.self_forcing import SelfForcing
from distillery.streaming.objectives.video_denoising import VideoDenoising
from distillery.streaming.run import run_streaming

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "distillery" / "configs"
TINY = ["student.denoiser.params.dim=16", "student.denoiser.params.depth=1", "student.denoiser.params.heads=2",
        "data.params.n_train=32", "data.params.n_test=8", "data.params.frames=8", "student.denoiser.params.chunk=2",
        "data.batch_size=4", "train.steps=2", "train.log_every=1", "train.progress=false", "train.tensorboard=false",
        "eval.num_videos=4"]


def _net(attention, **kw):
    return VideoTransformer(8, chunk=2, attention=attention, dim=16, depth=1, heads=2, **kw)


def _pair():
    torch.manual_seed(0)
    flow = build_process({"kind": "flow"})
    teacher = Denoiser(_net("bidirectional"), flow, "velocity", sample_shape=(8, 1, 16, 16))
    with torch.no_grad():  # the zero-initialised output layers would make every prediction 0
        for p in teacher.parameters():
            p.normal_(0.0, 0.1)
    student = Denoiser(_net("block_causal"), flow, "velocity", sample_shape=(8, 1, 16, 16))
    student.net.load_state_dict(teacher.net.state_dict())
    return teacher, student


def test_video_denoising_noise_levels_per_chunk():
    teacher, student = _pair()
    m = VideoDenoising(student, noise="chunk")
    t = m._video_times(3, 8, 0, "cpu", torch.float32)
    assert t.shape == (3, 8)
    assert torch.equal(t[:, 0::2], t[:, 1::2])  # one level per chunk of two frames
    assert not torch.equal(t[:, 0], t[:, 2])
    loss, _ = m.loss("model", {"x": torch.randn(3, 8, 1, 16, 16)}, 0)
    loss.backward()
    with pytest.raises(ConfigError, match="causal"):
        VideoDenoising(teacher, context="clean")


def test_ode_init_regresses_the_teacher_trajectory_at_the_student_times():
    teacher, student = _pair()
    m = StreamingODEInit(student, teacher, steps=2, pairs=4, pair_steps=2)
    assert m.trajectory.shape == (3, 4, 8, 1, 16, 16)  # t_0, t_1 and the endpoint
    torch.testing.assert_close(m.times, torch.tensor([1.0, 0.5, 0.0]))
    loss, logs = m.loss("student", {"x": torch.zeros(2, 8, 1, 16, 16)}, 0)
    loss.backward()
    assert logs["regression"] > 0 and any(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_self_forcing_generator_gradient_is_dmd_on_the_rollout():
    teacher, student = _pair()
    m = SelfForcing(student, teacher, steps=1, grad="last", exit="last", fake_updates=1)
    with torch.no_grad():  # make the fake score differ from the teacher so the DMD direction is not zero
        for p in m.fake.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loss, logs = m.loss("generator", {"x": torch.randn(2, 8, 1, 16, 16)}, 0)
    loss.backward()
    assert logs["grad_norm"] > 0
    assert all(p.grad is None for p in m.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert m.describe()["nfe_per_sample"] == 4
    # a diagonal schedule spreads over the generated chunks only: the real prefix takes no steps
    m = SelfForcing(student, teacher, schedule="diagonal", first=3, last=1, prefix_chunks=1, fake_updates=1)
    assert m.schedule == [0, 3, 2, 1] and m.describe()["nfe_per_sample"] == 6
    with pytest.raises(ConfigError, match="causal"):
        SelfForcing(teacher, teacher)
    with pytest.raises(ConfigError, match="prefix_chunks"):
        SelfForcing(student, teacher, prefix_chunks=4)


def test_shipped_configs_run_in_order_and_sample(tmp_path, capsys):
    teacher_run, init_run, sf_run = tmp_path / "teacher", tmp_path / "init", tmp_path / "sf"
    cfg = load_config(CONFIGS / "video_teacher_sprites.yaml", [*TINY, "eval.steps=[2]"])
    assert run_streaming(cfg, teacher_run, report=False)["complete"]
    cfg = load_config(CONFIGS / "streaming_ode_init_sprites.yaml",
                      [*TINY, f"teacher.run={teacher_run}", "method.params.pairs=4", "method.params.pair_steps=1",
                       "eval.chunks=6"])
    assert run_streaming(cfg, init_run, report=False)["complete"]
    cfg = load_config(CONFIGS / "self_forcing_sprites.yaml",
                      [*TINY, f"teacher.run={teacher_run}", f"student.init_run={init_run}", "method.params.fake_updates=1",
                       "eval.chunks=6", "eval.metrics=[position_error,flicker,drift,timing]"])
    summary = run_streaming(cfg, sf_run)
    assert summary["complete"]
    final = summary["final"]["2"]
    assert final["nfe_per_video"] == 10 and {"position_error", "flicker", "drift_first", "drift_last"} <= set(final)
    assert final["stream_fps"] > 0 and 0 < final["first_chunk_latency_s"] < 60
    assert (sf_run / "report.md").is_file() and (sf_run / "samples" / "step2_nfe2.gif").is_file()
    assert main(["sample", str(sf_run), "--steps", "1", "--num", "3", "--chunks", "5", "--out", str(tmp_path / "s")]) == 0
    gif = Image.open(tmp_path / "s" / "samples.gif")
    assert gif.n_frames == 10
    assert Image.open(tmp_path / "s" / "samples.png").size[0] > 0
    assert "position_error" in (tmp_path / "s" / "metrics.json").read_text()


def _write(tmp_path, sets):
    import yaml

    from distillery.config import apply_overrides, load_yaml

    raw = apply_overrides(load_yaml(CONFIGS / "video_teacher_sprites.yaml"), [*TINY, *sets])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("sets, message", [
    (["student.denoiser.params.chunk=3"], "does not divide"),
    (["student.denoiser.params.max_frames=4"], "max_frames"),
    (["student.denoiser.params.audio_dim=1"], "audio"),
    (["eval.prefix_chunks=5", "eval.chunks=4"], "prefix_chunks"),
])
def test_bad_streaming_configs_exit_2_naming_the_problem(tmp_path, capsys, sets, message):
    assert main(["run", _write(tmp_path, sets), "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # a start that fails before training leaves nothing
