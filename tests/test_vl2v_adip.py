"""#28 VL2V-ADiP: the align/distill stages train what they should, the loss is the paper's
cosine mix, a black-box teacher gives the same losses, and the OOD digit domains are what
they claim to be."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillery import BlackBoxTeacher, FrozenTeacher
from distillery.data import load_dataset
from distillery.data.miniature.ood_digits import corrupt_digits, rotate_images
from distillery.errors import ConfigError
from distillery.models import build_model
from distillery.recipes.vl2v_adip import (
    adip_distiller,
    adip_terms,
    align_student,
    distill_student,
    naive_kd_terms,
    set_text_head,
)

WIDTH = 64 + 10


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _teacher(seed=0):
    torch.manual_seed(seed)
    return build_model("zero_shot_dual_encoder", (WIDTH,), 10, image_dim=64, text_dim=10, hidden=[16], embed_dim=8)


def _pretrained(seed=1):
    torch.manual_seed(seed)
    return build_model("zero_shot_student", (WIDTH,), 10, image_dim=64, hidden=[12], embed_dim=None, head="linear")


def _batch(n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return {"x": torch.cat([torch.randn(n, 64, generator=g), torch.eye(10)[y]], dim=1), "y": y}


def test_adip_loss_is_the_cosine_mix_toward_the_teachers_image_and_label_text_embeddings():
    teacher, student = _teacher(), align_student(_pretrained(), 8)
    d = adip_distiller(student, FrozenTeacher(teacher), lmd=0.3)
    b = _batch()
    d.prepare(b)
    out = d.step(b)
    with torch.no_grad():
        z, t = student(b["x"])["image"], teacher(b["x"])
        bank = teacher.text_bank()
    assert torch.allclose(t["text"], bank[b["y"]], atol=1e-6)       # exact prompts: text = text bank row of y
    expected = sum(0.3 * (1 - _cos(zi, ti)) + 0.7 * (1 - _cos(zi, bi))
                   for zi, ti, bi in zip(z.tolist(), t["image"].tolist(), bank[b["y"]].tolist())) / 6
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="lmd"):
        adip_terms(1.5)


def test_align_trains_only_the_projector_and_distill_only_the_backbone():
    teacher, pre = _teacher(), _pretrained()
    student = align_student(pre, 8)
    assert torch.equal(student.backbone[0].fc.weight, pre.backbone[0].fc.weight)
    d = adip_distiller(student, FrozenTeacher(teacher))
    b = _batch()
    d.prepare(b)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.5)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    d.step(b)["loss"].backward(); opt.step()
    after = student.state_dict()
    assert torch.equal(after["backbone.0.fc.weight"], before["backbone.0.fc.weight"])
    assert not torch.equal(after["proj.weight"], before["proj.weight"])
    assert torch.equal(after["head.prototypes"], before["head.prototypes"])  # the text head never trains

    distill_student(student)
    d = adip_distiller(student, FrozenTeacher(teacher))
    d.prepare(b)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.5)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    d.step(b)["loss"].backward(); opt.step()
    after = student.state_dict()
    assert not torch.equal(after["backbone.0.fc.weight"], before["backbone.0.fc.weight"])
    assert torch.equal(after["proj.weight"], before["proj.weight"])


def test_a_black_box_teacher_gives_the_same_losses_as_the_frozen_one():
    teacher = _teacher()
    a, b_ = align_student(_pretrained(), 8), align_student(_pretrained(), 8)
    b_.load_state_dict(a.state_dict())
    b = _batch()
    d_frozen = adip_distiller(a, FrozenTeacher(teacher))

    @torch.no_grad()
    def api(x):   # outputs only: image and text embeddings
        out = teacher(x)
        return {"image": out["image"], "text": out["text"]}

    d_box = adip_distiller(b_, BlackBoxTeacher(api))
    with torch.no_grad():
        set_text_head(b_, teacher.text_bank(), teacher.scale)
    for d in (d_frozen, d_box):
        d.prepare(b)
    one, two = d_frozen.step(b), d_box.step(b)
    assert all(float(one[k].detach()) == pytest.approx(float(two[k].detach()), rel=1e-6) for k in ("loss", "distill_image", "distill_text"))
    assert torch.equal(a.head.prototypes, b_.head.prototypes)
    assert [t.name for t in naive_kd_terms()] == ["ce", "kd"]


def test_rotation_moves_pixels_where_the_rotation_matrix_says():
    img = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    img[0, 0, 1, 4] = 1.0                                            # (x, y) = (4, 1): offset (0.5, -2.5) from the centre
    out = rotate_images(img, torch.tensor([90.0]))[0, 0]
    r, c = divmod(int(out.argmax()), 8)
    # a positive angle turns the image clockwise on screen (rows downward): (dx, dy) -> (-dy, dx)
    assert (c - 3.5, r - 3.5) == (2.5, 0.5) and float(out.max()) == pytest.approx(1.0)
    assert torch.allclose(rotate_images(img, torch.tensor([0.0])), img)


def test_ood_digit_domains():
    clean = load_dataset("ood_digits", test_domain="clean")
    noisy = load_dataset("ood_digits", test_domain="noise", noise_std=0.5)
    base = load_dataset("digits")
    assert torch.equal(clean.test.x[:, :64], base.test.x.reshape(-1, 64))
    assert torch.equal(clean.test.x[:, 64:], torch.eye(10)[clean.test.y])          # exact class prompts
    diff = (noisy.test.x[:, :64] - clean.test.x[:, :64]).numpy()
    assert abs(diff.std() - 0.5) < 0.01 and abs(diff.mean()) < 0.01
    again = load_dataset("ood_digits", test_domain="rotate")
    assert torch.equal(again.test.x, load_dataset("ood_digits", test_domain="rotate").test.x)   # deterministic
    three = load_dataset("ood_digits", train_domains=["clean", "rotate", "noise"])
    assert len(three.train) == 3 * len(clean.train) and torch.equal(three.train.x[: len(clean.train)], clean.train.x)
    with pytest.raises(ConfigError, match="domain"):
        corrupt_digits(base.test.x, "blur", np.random.default_rng(0), 0.0, 1.0)
    with pytest.raises(ConfigError, match="domains"):
        load_dataset("ood_digits", train_domains=["sepia"])
