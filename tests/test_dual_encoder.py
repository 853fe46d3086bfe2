"""The dual-encoder reference model and the Trainer's retrieval evaluation of two-tower students."""

from __future__ import annotations

import pytest
import torch

from distillery import Distiller, Trainer
from distillery.data import ArrayDataset
from distillery.data.paired import pack_views
from distillery.engine.distiller import Term
from distillery.errors import ConfigError
from distillery.models import build_model
from distillery.objectives import InfoNCE
from distillery.evaluation.retrieval import retrieval_metrics


def test_towers_see_their_own_slice_of_the_row():
    torch.manual_seed(0)
    m = build_model("dual_encoder", (6 + 3 * 4,), 10, image_dim=6, text_dim=4, hidden=[5], embed_dim=3)
    image, texts = torch.randn(2, 6), torch.randn(2, 3, 4)
    out = m(pack_views(image, texts))
    # each tower by hand: relu(W1 x + b1) -> W2 h + b2
    def tower(t, x):
        h = torch.relu(x @ t.layers[0].fc.weight.T + t.layers[0].fc.bias)
        return h @ t.proj.weight.T + t.proj.bias
    torch.testing.assert_close(out["image"], tower(m.image_encoder, image))
    torch.testing.assert_close(out["text"], tower(m.text_encoder, texts[:, 0]))
    torch.testing.assert_close(out["text_negatives"], tower(m.text_encoder, texts[:, 1:]))
    assert "image_encoder.layers.0.fc" in dict(m.named_modules()) and "text_encoder.proj" in dict(m.named_modules())


def test_default_split_is_two_halves_and_bad_splits_are_config_errors():
    m = build_model("dual_encoder", (64,), 10)
    assert (m.image_dim, m.text_dim) == (32, 32) and set(m(torch.randn(3, 64))) == {"image", "text"}
    with pytest.raises(ConfigError, match="do not split"):
        build_model("dual_encoder", (20,), 10, image_dim=8, text_dim=5)
    with pytest.raises(ConfigError, match="odd width"):
        build_model("dual_encoder", (21,), 10)


def test_trainer_evaluates_a_two_tower_student_by_retrieval():
    torch.manual_seed(0)
    y = torch.arange(40) % 4
    x = torch.randn(40, 8)
    data = ArrayDataset(x, y)
    model = build_model("dual_encoder", (8,), 4, hidden=[], embed_dim=4)
    distiller = Distiller(model, None, [Term("itc", InfoNCE(0.1), inputs={"student": "student.image", "teacher": "student.text"})])
    trainer = Trainer(distiller, data, eval_data=data, epochs=1, batch_size=40, progress=False, tensorboard=False, device="cpu")
    result = trainer.evaluate()
    with torch.no_grad():
        out = model(x)
    expected = retrieval_metrics(out["image"], out["text"], ks=(1, 5), labels=y)
    assert result == pytest.approx(expected)
    assert "accuracy" not in result and {"i2t_r1", "t2i_r1", "r1", "class_r1"} <= set(result)


def test_a_dual_encoder_run_writes_retrieval_predictions_and_a_report(tmp_path):
    from safetensors.torch import load_file

    from distillery.config import parse_config
    from distillery.runner import run

    cfg = parse_config({
        "data": {"dataset": "paired_digits", "params": {"views": "halves"}, "batch_size": 256},
        "student": {"name": "dual_encoder", "params": {"hidden": [], "embed_dim": 8}},
        "objectives": [{"kind": "infonce", "inputs": {"student": "student.image", "teacher": "student.text"}}],
        "train": {"epochs": 1, "progress": False, "tensorboard": False, "device": "cpu"},
    })
    summary = run(cfg, tmp_path / "run", report=False)
    preds = load_file(str(tmp_path / "run" / "predictions.safetensors"))
    assert set(preds) == {"student_image", "student_text", "y"} and preds["student_image"].shape == (450, 8)
    assert summary["final"] == pytest.approx(retrieval_metrics(preds["student_image"], preds["student_text"], ks=(1, 5), labels=preds["y"]))
    # the report lists retrieval figures and draws no reliability diagram (there are no logits)
    from distillery.evaluation.report import write_report

    (tmp_path / "run" / "metrics.jsonl").write_text("")      # no curves to plot here
    report = write_report(tmp_path / "run").read_text()
    assert f"| r1 | {summary['final']['r1']:.4f} |" in report and "Calibration" not in report
