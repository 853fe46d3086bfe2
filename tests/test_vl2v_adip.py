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


# -- issue 15: a mechanism test with a known answer, and the reproduction's stages on a tiny size -------------
def test_adip_transfers_a_robust_teachers_predictions_where_its_distillation_data_cover_the_shift():
    """A black-box VLM that ignores a nuisance direction ``u`` (it classifies with ``u`` projected
    out) and a student pre-trained on clean points, whose classes are also spread along ``u``, so it
    relies on ``u``. Shifted points move by 6 along ``u`` (two class spacings). With distillation data
    that cover the shift (clean + shifted, as DomainBed's several source domains), Align then Distill
    must carry the teacher's answers to fresh shifted points; the pre-trained student fails on them."""
    import torch.nn.functional as F

    classes, dim, embed = 3, 8, 6
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(dim, generator=g), dim=0)
    perp = torch.eye(dim) - torch.outer(u, u)
    mu = torch.randn(classes, dim, generator=g) @ perp + torch.tensor([-3.0, 0.0, 3.0])[:, None] * u
    bank = torch.randn(classes, embed, generator=g)             # the teacher's text embeddings of the class prompts

    def draw(n, shift, seed):
        gg = torch.Generator().manual_seed(seed)
        y = torch.randint(0, classes, (n,), generator=gg)
        x = mu[y] + 0.5 * torch.randn(n, dim, generator=gg) + shift * 6.0 * u
        return torch.cat([x, torch.eye(classes)[y]], 1), y

    @torch.no_grad()
    def api(rows):                                              # outputs only, as a vendor's API
        x, caption = rows[:, :dim], rows[:, dim:]
        d = ((x @ perp)[:, None, :] - (mu @ perp)[None]).pow(2).sum(-1)
        return {"image": bank[d.argmin(1)], "text": caption @ bank}

    def fit(params, data, loss_fn, steps=120):
        torch.manual_seed(0)
        opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=0.01)
        for _ in range(steps):
            idx = torch.randint(0, len(data[0]), (64,))
            loss = loss_fn(data[0][idx], data[1][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    torch.manual_seed(1)
    pre = build_model("zero_shot_student", (dim + classes,), classes, image_dim=dim, hidden=[32], embed_dim=None, head="linear")
    fit(pre.parameters(), draw(400, 0, 1), lambda x, y: F.cross_entropy(pre(x)["logits"], y))
    x_test, y_test = draw(400, 1, 2)

    def acc(model):
        with torch.no_grad():
            return float((model(x_test)["logits"].argmax(1) == y_test).float().mean())

    clean, shifted = draw(300, 0, 3), draw(300, 1, 4)
    data = (torch.cat([clean[0], shifted[0]]), torch.cat([clean[1], shifted[1]]))
    student = align_student(pre, embed, num_prototypes=classes)
    set_text_head(student, bank)
    backbone = {k: v.clone() for k, v in student.backbone.state_dict().items()}
    d = adip_distiller(student, BlackBoxTeacher(api))
    fit(d.trainable_parameters(), data, lambda x, y: d.step({"x": x, "y": y})["loss"])
    assert all(torch.equal(v, student.backbone.state_dict()[k]) for k, v in backbone.items())   # Align: features kept
    distill_student(student)
    d = adip_distiller(student, BlackBoxTeacher(api))
    fit(d.trainable_parameters(), data, lambda x, y: d.step({"x": x, "y": y})["loss"])
    assert acc(pre) < 0.7          # the pre-trained student relies on u
    assert acc(student) > 0.95     # the teacher is exact on the shifted points; ADiP's student follows it


def test_train_arms_freezes_what_each_stage_should_and_predicts_with_the_teachers_text_head(tmp_path):
    """The reproduction's own stages (run configs through the engine), one epoch each: Align leaves
    the pre-trained backbone as it was, Distill leaves the aligned projector, both predict with the
    teacher's text embeddings of the exact prompts; every arm is scored on every domain."""
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from distillery.engine.checkpoint import load_weights
    from distillery.reproduce import Context
    from distillery.reproduce import vl2v_adip as rep
    from distillery.reproduce._common import load_student

    ctx = Context(seeds=[0], quick=True, out=tmp_path, log=lambda _: None)
    s = {"teacher_epochs": 1, "pretrain_epochs": 1, "align_epochs": 1, "distill_epochs": 1}
    tests = rep._tests()
    teacher_w, teacher_scores = rep.train_vlm(ctx, s, tests)
    out = rep.train_arms(ctx, 0, teacher_w, s, tests)
    assert set(out) == set(rep.ARMS) and all(set(v) == {"clean", "rotate", "noise", "ood"} for v in out.values())
    assert all(v["ood"] == v["rotate"] for v in out.values()) and teacher_scores["ood"] == teacher_scores["rotate"]
    w = {k: load_file(tmp_path / k / "seed0" / "student.safetensors") for k in ("pretrained", "adip_align", "adip")}
    backbone = [k for k in w["pretrained"] if k.startswith("backbone.")]
    assert backbone and all(torch.equal(w["pretrained"][k], w["adip_align"][k]) for k in backbone)
    assert not all(torch.equal(w["adip_align"][k], w["adip"][k]) for k in backbone)
    assert torch.equal(w["adip_align"]["proj.weight"], w["adip"]["proj.weight"])
    teacher = build_model("zero_shot_dual_encoder", (WIDTH,), 10, **rep.TEACHER)
    load_weights(teacher, teacher_w)
    with torch.no_grad():
        bank = F.normalize(teacher.text_bank(), dim=-1)
    assert torch.allclose(w["adip"]["head.prototypes"], bank, atol=1e-6)
    student = load_student(tmp_path / "adip/seed0", {"name": "zero_shot_student", "params": rep.ADIP}, (WIDTH,), 10)
    assert torch.allclose(student.head.prototypes, bank, atol=1e-6)
