"""#14 V-Reflection: the digit-grid task, the box-guided teacher and the cross-attention probe
against their formulas, the probe's training-only life, export and inference cost."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distillery import capture
from distillery.data import load_dataset
from distillery.data.miniature.digit_grid import box_mask
from distillery.engine import checkpoint as ckpt
from distillery.errors import ConfigError, ShapeError
from distillery.models import build_model
from distillery.models.miniature.grid_vqa import (
    BoxGuidedCompression,
    CrossAttentionProbe,
    patchify,
)
from distillery.recipes.v_reflection import export, v_reflection_distiller
from distillery.taps.training_only import (
    export_state_dict,
    inference_cost,
    mark_training_only,
    strip_training_only,
    training_only_paths,
)

SHAPE = (276,)


def test_grid_rows_hold_the_four_digits_the_question_and_the_box():
    grids = load_dataset("digit_grid", n_train=20, n_test=5)
    digits = load_dataset("digits")
    x, y = grids.train.x, grids.train.y
    image, question, box = x[:, :256].reshape(-1, 16, 16), x[:, 256:260], x[:, 260:]
    for n in range(20):
        k = int(question[n].argmax())
        assert question[n].sum() == 1 and torch.equal(box[n], torch.as_tensor(box_mask(np.array([k]))[0]))
        r, c = 8 * (k // 2), 8 * (k % 2)
        cell = image[n, r : r + 8, c : c + 8]
        match = [(cell == d[0]).all().item() for d in digits.train.x]      # the cell is a training digit ...
        assert any(match) and int(y[n]) in {int(digits.train.y[i]) for i, m in enumerate(match) if m}  # ... with the answer's label
    assert box_mask(np.array([0, 3])).reshape(2, 4, 4).tolist()[1] == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    with pytest.raises(ConfigError, match="cells"):
        box_mask(np.array([4]))


def test_patchify_is_row_major_over_the_patch_grid():
    img = torch.arange(256.0).reshape(1, 256)
    p = patchify(img)
    for pr in range(4):
        for pc in range(4):
            expected = [16 * (4 * pr + r) + 4 * pc + c for r in range(4) for c in range(4)]
            assert p[0, 4 * pr + pc].tolist() == expected


def test_box_guided_compression_attends_only_inside_the_box():
    torch.manual_seed(0)
    bcm = BoxGuidedCompression(4, 3)
    visual, box = torch.randn(2, 6, 4), torch.tensor([[0, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 1.0]])
    latent, a = bcm(visual, box)
    assert (a[box == 0] == 0).all() and torch.allclose(a.sum(1), torch.ones(2))
    with torch.no_grad():
        for n in range(2):
            inside = [p for p in range(6) if box[n, p] > 0]
            logits = [float(bcm.key(visual[n, p]) @ bcm.query) / 2.0 for p in inside]
            z = [math.exp(v) for v in logits]
            weights = [v / sum(z) for v in z]
            pooled = sum(w * bcm.value(visual[n, p]) for w, p in zip(weights, inside))
            assert torch.allclose(latent[n], bcm.out(pooled), atol=1e-6)
    with pytest.raises(ShapeError, match="patch inside"):
        bcm(visual, torch.zeros(2, 6))


def test_cross_attention_probe_matches_its_formula():
    torch.manual_seed(1)
    probe = CrossAttentionProbe(4, 3)
    h, visual = torch.randn(2, 4), torch.randn(2, 5, 4)
    latent, a = probe(h, visual)
    with torch.no_grad():
        for n in range(2):
            q = probe.query(h[n])
            logits = torch.stack([q @ probe.key(visual[n, p]) / 2.0 for p in range(5)])
            w = torch.softmax(logits, 0)
            assert torch.allclose(a[n], w, atol=1e-6)
            assert torch.allclose(latent[n], probe.out(sum(w[p] * probe.value(visual[n, p]) for p in range(5))), atol=1e-6)


def test_the_probe_runs_only_in_training_and_the_student_never_reads_the_box():
    torch.manual_seed(2)
    m = build_model("grid_vqa_transformer", SHAPE, 10, dim=8, depth=1, heads=2, latent_dim=4, probe=True)
    x = torch.randn(3, 276)
    x[:, 260:] = torch.as_tensor(box_mask(np.array([0, 1, 2])))
    with capture(m, ["probe"]) as sig:
        m.train()(x)
    assert sig["probe"].shape == (3, 4)
    with capture(m, ["probe"]) as sig:
        m.eval()(x)
    assert "probe" not in sig
    other = x.clone()
    other[:, 260:] = torch.as_tensor(box_mask(np.array([3, 3, 3])))
    assert torch.equal(m(x), m(other))
    with pytest.raises(ConfigError, match="belongs to the student"):
        build_model("grid_vqa_transformer", SHAPE, 10, mode="box_teacher", probe=True)


def test_training_only_modules_are_dropped_at_export(tmp_path):
    net = nn.Module()
    net.body = nn.Linear(3, 3)
    net.aux = mark_training_only(nn.Sequential(nn.Linear(3, 2), mark_training_only(nn.Linear(2, 2))))
    assert training_only_paths(net) == ["aux"]
    assert sorted(export_state_dict(net)) == ["body.bias", "body.weight"]
    stripped = strip_training_only(net)
    assert stripped.aux is None and net.aux is not None and torch.equal(stripped.body.weight, net.body.weight)

    torch.manual_seed(3)
    student = build_model("grid_vqa_transformer", SHAPE, 10, dim=8, depth=1, heads=2, latent_dim=4, probe=True)
    removed = export(student, tmp_path / "s.safetensors")
    probe_params = sum(p.numel() for p in student.probe.parameters())
    assert removed["removed_modules"] == ["probe"] and removed["removed_parameters"] == probe_params
    plain = build_model("grid_vqa_transformer", SHAPE, 10, dim=8, depth=1, heads=2, latent_dim=4)
    ckpt.load_weights(plain, tmp_path / "s.safetensors")          # strict: no missing or extra keys
    x = torch.randn(4, 276)
    x[:, 260:] = torch.as_tensor(box_mask(np.array([0, 1, 2, 3])))
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), student.eval()(x))
    assert inference_cost(plain, x[:1]) == inference_cost(strip_training_only(student), x[:1])
    full = inference_cost(student, x[:1])   # not exported: the probe's weights are still there, but never run
    assert full["flops"] == inference_cost(plain, x[:1])["flops"] and full["parameters"] == removed["kept_parameters"] + probe_params


def test_inference_cost_counts_two_flops_per_multiply_add():
    cost = inference_cost(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2)), torch.randn(3, 5))
    assert cost == {"parameters": 5 * 7 + 7 + 7 * 2 + 2, "flops": 2 * 3 * (5 * 7 + 7 * 2), "batch": 3}


def test_the_reflect_term_is_the_cosine_distance_between_probe_and_box_latent():
    torch.manual_seed(4)
    student = build_model("grid_vqa_transformer", SHAPE, 10, dim=8, depth=1, heads=2, latent_dim=4, probe=True)
    teacher = build_model("grid_vqa_transformer", SHAPE, 10, dim=8, latent_dim=4, mode="box_teacher")
    d = v_reflection_distiller(student, teacher)
    x = torch.randn(5, 276)
    x[:, 260:] = torch.as_tensor(box_mask(np.array([0, 1, 2, 3, 0])))
    batch = {"x": x, "y": torch.arange(5)}
    d.train()
    d.prepare(batch)
    out = d.step(batch)
    with torch.no_grad(), capture(student, ["probe"]) as s, capture(teacher, ["bcm"]) as t:
        student.train()(x), teacher(x)
    expected = sum(1 - float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in zip(s["probe"], t["bcm"])) / 5
    assert float(out["reflect"]) == pytest.approx(expected, rel=1e-5)
