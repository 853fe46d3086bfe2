"""#21 Large-VLM -> small OOD: zero-shot text heads, the frozen teacher's text bank given to the
student, and the recipe's feature + alignment terms against hand-written formulas."""

from __future__ import annotations

import math

import pytest
import torch

from distillery import Distiller, FrozenTeacher
from distillery.errors import ConfigError, ShapeError
from distillery.models import build_model
from distillery.models.zero_shot import PrototypeHead, one_hot_prompts, zero_shot_logits
from distillery.recipes.vlm_ood import vlm_ood_distiller, vlm_ood_terms

WIDTH = 6 + 5  # rows [image 6 | caption 5]


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def test_zero_shot_logits_are_scaled_cosines():
    g = torch.Generator().manual_seed(0)
    z, p = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    got = zero_shot_logits(z, p, scale=7.0)
    for i in range(3):
        for c in range(2):
            assert float(got[i, c]) == pytest.approx(7.0 * _cos(z[i].tolist(), p[c].tolist()), rel=1e-12)
    with pytest.raises(ShapeError, match="same E"):
        zero_shot_logits(z, torch.randn(2, 5, dtype=torch.float64), 1.0)


def test_prototype_head_refuses_to_predict_before_it_has_prototypes():
    head = PrototypeHead(2, 3, scale=2.0)
    with pytest.raises(ConfigError, match="no class prototypes"):
        head(torch.randn(1, 3))
    head.set_prototypes(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]), scale=10.0)
    assert head.prototypes.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]   # stored normalised
    assert head(torch.tensor([[1.0, 0.0, 1.0]]))[0].tolist() == pytest.approx([10 / math.sqrt(2), 10 / math.sqrt(2)])
    with pytest.raises(ShapeError, match="prototypes"):
        head.set_prototypes(torch.randn(3, 3))


def test_zero_shot_dual_encoder_is_a_dual_encoder_with_a_text_bank():
    torch.manual_seed(0)
    dual = build_model("dual_encoder", (WIDTH,), 10, image_dim=6, text_dim=5, hidden=[7], embed_dim=4)
    teacher = build_model("zero_shot_dual_encoder", (WIDTH,), 10, image_dim=6, text_dim=5, hidden=[7], embed_dim=4,
                          prompt_classes=[3, 1], temperature=0.5)
    teacher.load_state_dict(dual.state_dict())                       # the very same weights (strict)
    assert one_hot_prompts([3, 1], 5).tolist() == [[0, 0, 0, 1, 0], [0, 1, 0, 0, 0]]
    x = torch.randn(4, WIDTH)
    with torch.no_grad():
        out, ref = teacher(x), dual(x)
    assert torch.equal(out["image"], ref["image"]) and torch.equal(out["text"], ref["text"])
    with torch.no_grad():
        bank = dual.encode_text(torch.eye(5)[[3, 1]])
        assert torch.allclose(teacher.text_bank(), bank)
    for i in range(4):
        for c in range(2):
            assert float(out["logits"][i, c]) == pytest.approx(2.0 * _cos(ref["image"][i].tolist(), bank[c].tolist()), rel=1e-5)
    with pytest.raises(ConfigError, match="prompt classes"):
        build_model("zero_shot_dual_encoder", (WIDTH,), 10, image_dim=6, text_dim=5, prompt_classes=[7])


def test_the_student_reads_only_the_image_and_gets_the_teachers_text_bank():
    torch.manual_seed(1)
    teacher = build_model("zero_shot_dual_encoder", (WIDTH,), 10, image_dim=6, text_dim=5, hidden=[7], embed_dim=4,
                          prompt_classes=[0, 1, 2], temperature=0.25)
    student = build_model("zero_shot_student", (WIDTH,), 10, image_dim=6, hidden=[5], embed_dim=4, num_prototypes=3)
    assert not student.head.ready
    Distiller(student, FrozenTeacher(teacher), vlm_ood_terms())          # binding copies the bank
    assert torch.allclose(student.head.prototypes, torch.nn.functional.normalize(teacher.text_bank(), dim=1))
    assert student.head.scale == pytest.approx(4.0)
    x = torch.randn(2, WIDTH)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 5)                                         # another caption
    assert torch.equal(student(x)["logits"], student(y)["logits"])
    wrong = build_model("zero_shot_student", (WIDTH,), 10, image_dim=6, hidden=[5], embed_dim=4, num_prototypes=2)
    with pytest.raises(ShapeError, match="prototypes"):
        Distiller(wrong, FrozenTeacher(teacher), vlm_ood_terms())
    with pytest.raises(ConfigError, match="cannot freeze"):
        build_model("zero_shot_student", (WIDTH,), 10, image_dim=6, embed_dim=None, freeze=["proj"])


def test_feature_and_alignment_terms_match_their_formulas():
    torch.manual_seed(2)
    teacher = build_model("zero_shot_dual_encoder", (WIDTH,), 10, image_dim=6, text_dim=5, hidden=[7], embed_dim=4,
                          prompt_classes=[0, 1, 2], temperature=0.5)
    student = build_model("zero_shot_student", (WIDTH,), 10, image_dim=6, hidden=[5], embed_dim=4, num_prototypes=3, temperature=0.5)
    d = vlm_ood_distiller(student, teacher)
    batch = {"x": torch.randn(5, WIDTH), "y": torch.zeros(5, dtype=torch.long)}
    d.prepare(batch)
    out = d.step(batch)
    with torch.no_grad():
        s, t = student(batch["x"]), teacher(batch["x"])
    feature = sum(1 - _cos(a, b) for a, b in zip(s["image"].tolist(), t["image"].tolist())) / 5
    align = 0.0
    for ls, lt in zip(s["logits"].tolist(), t["logits"].tolist()):   # KL(softmax(t) || softmax(s)), temperature 1
        zs, zt = sum(math.exp(v) for v in ls), sum(math.exp(v) for v in lt)
        align += sum(math.exp(b) / zt * ((b - math.log(zt)) - (a - math.log(zs))) for a, b in zip(ls, lt))
    assert float(out["feature"]) == pytest.approx(feature, rel=1e-5)
    assert float(out["align"]) == pytest.approx(align / 5, rel=1e-4)
    assert [t.name for t in vlm_ood_terms(align_weight=0.0)] == ["feature"]   # plain feature KD


# -- issue 15: mechanism tests of the alignment term (what it transfers, and when it is a label) -----------
class _FixedTeacher(torch.nn.Module):
    """A "VLM" whose image embedding is the input itself and whose text bank is fixed: its
    similarity distribution over the bank is known in closed form."""

    def __init__(self, bank: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("bank", bank)
        self.scale = scale
        self.anchor = torch.nn.Parameter(torch.zeros(1))       # a parameter, to check that it never moves

    def text_bank(self) -> torch.Tensor:
        return self.bank

    def forward(self, x):
        image = x + 0.0 * self.anchor
        return {"image": image, "logits": zero_shot_logits(image, self.bank, self.scale)}


def _fit(terms, teacher, x, y, steps=150, seed=0):
    torch.manual_seed(seed)
    student = build_model("zero_shot_student", (2,), 3, image_dim=None, hidden=[32], embed_dim=2, num_prototypes=3)
    d = Distiller(student, FrozenTeacher(teacher), terms)
    batch = {"x": x, "y": y}
    d.prepare(batch)
    opt = torch.optim.Adam(d.trainable_parameters(), lr=0.05)
    for _ in range(steps):
        d.step(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        return student, student(x)["logits"].softmax(1), teacher(x)["logits"].softmax(1)


def _sector_data(n=128, seed=0):
    """Inputs on the unit circle, three unit prototypes 120 degrees apart; the label is the
    nearest prototype (all the labels hold), the teacher's soft similarity also says how far
    the input is from the other two (what the labels do not hold)."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    x = torch.stack([angle.cos(), angle.sin()], 1)
    k = torch.arange(3) * 2 * math.pi / 3
    bank = torch.stack([k.cos(), k.sin()], 1)
    return x, (x @ bank.T).argmax(1), bank


def test_alignment_transfers_a_soft_teacher_that_labels_do_not_hold():
    from distillery.engine.distiller import Term
    from distillery.objectives import CrossEntropy
    from distillery.recipes.vlm_ood import alignment_terms

    x, y, bank = _sector_data()
    teacher = _FixedTeacher(bank, scale=2.0)            # soft: p(label) well below 1
    _, p_align, p_t = _fit(alignment_terms(), teacher, x, y)
    _, p_cls, _ = _fit([Term("cls", CrossEntropy())], teacher, x, y)
    assert float(p_t.max(1).values.mean()) < 0.8, float(p_t.max(1).values.mean())
    tv_align = float((p_align - p_t).abs().sum(1).mean() / 2)
    tv_cls = float((p_cls - p_t).abs().sum(1).mean() / 2)
    # the alignment student reproduces the teacher's whole similarity distribution; the label-trained one does not
    assert tv_align < 0.02 and tv_cls > 0.1, (tv_align, tv_cls)


def test_alignment_trains_only_the_student():
    from distillery.recipes.vlm_ood import vlm_ood_terms

    x, y, bank = _sector_data(64)
    teacher = _FixedTeacher(bank, scale=3.0)
    student, _, _ = _fit(vlm_ood_terms(), teacher, x, y, steps=5)
    assert float(teacher.anchor.abs().sum()) == 0.0 and not teacher.anchor.requires_grad   # frozen, never stepped
    assert torch.allclose(student.head.prototypes, torch.nn.functional.normalize(bank, dim=1))  # the bank stays fixed
    assert all(not p.requires_grad for p in student.head.parameters())


def test_alignment_to_a_confident_teacher_is_label_cross_entropy():
    """KL(p_t || p_s) = CE(p_t, p_s) - H(p_t): with the miniature's teacher (cosine gap ~0.45 to
    the label's prompt at logit scale 1/0.07, p(label) ~0.98) the alignment term is the label
    cross-entropy up to a constant, and their gradients point the same way."""
    from distillery.recipes.vlm_ood import alignment_terms

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (32,), generator=g)
    cos_t = 0.45 * torch.nn.functional.one_hot(y, 5) + 0.05 * torch.randn(32, 5, generator=g)
    teacher = cos_t / 0.07
    student = (torch.randn(32, 5, generator=g) * 3).requires_grad_(True)
    align = alignment_terms()[0].objective
    kl = align(student, teacher)
    ce = torch.nn.functional.cross_entropy(student, y)
    p_t = teacher.softmax(1)
    assert float(p_t.gather(1, y[:, None]).mean()) > 0.95
    soft_ce = -(p_t * student.log_softmax(1)).sum(1).mean()
    entropy = -(p_t * p_t.log()).sum(1).mean()
    assert float(kl.detach()) == pytest.approx(float((soft_ce - entropy).detach()), rel=1e-5)
    g_kl, = torch.autograd.grad(kl, student)
    g_ce, = torch.autograd.grad(ce, student)
    assert float(torch.nn.functional.cosine_similarity(g_kl.flatten(), g_ce.flatten(), dim=0)) > 0.95


def test_the_arm_functions_run_at_a_tiny_size(tmp_path):
    from distillery.reproduce import Context
    from distillery.reproduce.vlm_ood import ARMS, distil_arms, teacher_stage

    ctx = Context(seeds=[0], quick=True, out=tmp_path, log=lambda _: None)
    stage = teacher_stage(ctx, 1)
    assert 0.0 <= stage["entropy"] <= math.log(5) and set(stage["scores"]) == {
        "zero_shot_unseen", "zero_shot_unseen_10way", "zero_shot_seen", "few_shot_unseen"}
    scores = distil_arms(ctx, stage["trained"], stage["bank"], stage["full"], 1, ["cls_only", "feature_kd_cls_align"], tag="t/")
    assert set(scores) == {"cls_only", "feature_kd_cls_align"}
    assert all(len(v) == 1 and 0.0 <= v[0] <= 1.0 for v in scores["cls_only"].values())
    assert [o.get("name") for o in ARMS["feature_kd_cls_align"]["objectives"]] == ["feature", "cls", "align"]
    assert [o.get("name") for o in ARMS["cls_only"]["objectives"]] == ["cls"]

