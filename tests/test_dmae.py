"""DMAE (#22): the normalised L1 term, a teacher that follows the student's masks and stops early."""

from __future__ import annotations

import pytest
import torch

from distillery import Distiller, FrozenTeacher, Term
from distillery.errors import ConfigError, ShapeError
from distillery.models import mae_vit
from distillery.objectives import (
    FeatureNormalizedL1,
    MaskedReconstruction,
    feature_normalized_l1_loss,
)
from distillery.recipes.dmae import dmae_distiller, with_encoder


def _by_hand(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per sample: mean over tokens and channels of |s/||s|| - t/||t|||, norms per token, by loops."""
    out = []
    for b in range(s.shape[0]):
        total = 0.0
        for i in range(s.shape[1]):
            sn = s[b, i] / torch.sqrt((s[b, i] ** 2).sum())
            tn = t[b, i] / torch.sqrt((t[b, i] ** 2).sum())
            total = total + (sn - tn).abs().sum()
        out.append(total / (s.shape[1] * s.shape[2]))
    return torch.stack(out)


def test_normalized_l1_matches_a_loop_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(feature_normalized_l1_loss(s, t, reduction="none"), _by_hand(s, t))
    torch.testing.assert_close(FeatureNormalizedL1()(s, 5.0 * s), torch.zeros((), dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a, b: feature_normalized_l1_loss(a, b),
                                    (s.clone().requires_grad_(True), t.clone().requires_grad_(True)))
    with pytest.raises(ShapeError):
        feature_normalized_l1_loss(s, t[:, :2])
    with pytest.raises(ConfigError):
        FeatureNormalizedL1(dim=0)


def _pair(ratio=0.75):
    torch.manual_seed(0)
    student = mae_vit((40,), 10, patch_size=2, dim=16, depth=2, heads=2, mask_ratio=ratio, hidden_in_training=False, share_mask=True)
    teacher = mae_vit((40,), 10, patch_size=2, dim=24, depth=3, heads=2)
    return student, teacher


def test_the_teacher_encodes_the_students_visible_patches_and_stops_after_its_block():
    student, teacher = _pair()
    d = dmae_distiller(student, teacher, "encoder.blocks.1", "encoder.blocks.0")
    calls = []
    teacher.encoder.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    batch = {"x": torch.randn(3, 40), "y": torch.zeros(3, dtype=torch.long)}
    d.prepare(batch)
    losses = d.step(batch)
    mask = student.last_mask
    assert mask.shape == (3, 20) and mask.sum(1).tolist() == [15, 15, 15]
    assert calls == []  # blocks after until= never run
    # the teacher's block-0 tokens, written out: class token + the visible patches in order
    enc = teacher.encoder
    tok = enc.patch_embed(batch["x"][:, None]) + enc.pos_embed[:, 1:]
    rows = [torch.cat([enc.cls_token[0] + enc.pos_embed[0, :1], tok[b][~mask[b]]]) for b in range(3)]
    t0 = torch.stack([enc.blocks[0](r[None])[0] for r in rows])
    sig = d.teacher.signals(batch["x"], batch, ["encoder.blocks.0"])["encoder.blocks.0"]
    torch.testing.assert_close(sig, t0)
    # the distillation term: the student's visible tokens through its MLP head vs those teacher tokens
    s_tokens = {}
    h = student.encoder.blocks[1].register_forward_hook(lambda m, i, o: s_tokens.setdefault("v", o))
    torch.manual_seed(5)
    losses = d.step(batch)
    h.remove()
    t0 = d.teacher.signals(batch["x"], batch, ["encoder.blocks.0"])["encoder.blocks.0"]
    expected = feature_normalized_l1_loss(d.adapters["distill"](s_tokens["v"]), t0)
    torch.testing.assert_close(losses["distill"], expected)
    assert set(losses) == {"loss", "mae", "distill"}


def test_without_a_student_mask_the_teacher_is_the_plain_encoder():
    student, teacher = _pair()
    FrozenTeacher(teacher).bind(student)
    student.eval()
    x = torch.randn(2, 40)
    student(x)  # an eval forward records no mask
    assert student.last_mask is None
    out = teacher(x)
    torch.testing.assert_close(out["hidden"], teacher.encoder.tokens(x))
    assert "logits" in out


def test_bad_wiring_is_refused():
    with pytest.raises(ConfigError, match="hidden_in_training=false"):
        mae_vit((40,), 10, patch_size=2, dim=16, depth=1, heads=2, share_mask=True)
    student, _ = _pair()
    from distillery.models import vit

    with pytest.raises(ConfigError, match="needs a frozen teacher that is an mae_vit"):
        Distiller(student, FrozenTeacher(vit((40,), 10, patch_size=2, dim=16, depth=1, heads=2)), [Term("mae", MaskedReconstruction())])
    other = mae_vit((40,), 10, patch_size=4, dim=16, depth=1, heads=2)
    with pytest.raises(ShapeError, match="same patch_size"):
        Distiller(student, FrozenTeacher(other), [Term("mae", MaskedReconstruction())])
    plain = mae_vit((40,), 10, patch_size=2, dim=16, depth=1, heads=2, hidden_in_training=False)
    with pytest.raises(ConfigError, match="share_mask=True"):
        dmae_distiller(plain, mae_vit((40,), 10, patch_size=2, dim=16, depth=1, heads=2))


def test_with_encoder_swaps_only_the_encoder_weights():
    _, teacher = _pair()
    state = teacher.state_dict()
    vit_state = {k[len("encoder."):]: torch.zeros_like(v) for k, v in state.items() if k.startswith("encoder.")}
    merged = with_encoder(state, vit_state)
    assert set(merged) == set(state)
    assert all(float(merged[k].abs().sum()) == 0 for k in merged if k.startswith("encoder."))
    torch.testing.assert_close(merged["decoder_pred.weight"], state["decoder_pred.weight"])
    with pytest.raises(ConfigError, match="do not match"):
        with_encoder(state, {"x": torch.zeros(1)})


def _full_view(encoder, x: torch.Tensor, block: int) -> torch.Tensor:
    """Tokens after ``encoder.blocks[block]`` with every patch visible (class token first), by hand."""
    t = encoder.patch_tokens(x[:, None])
    seq = torch.cat([(encoder.cls_token + encoder.pos_embed[:, :1]).expand(t.shape[0], -1, -1), t], 1)
    for b in encoder.blocks[: block + 1]:
        seq = b(seq)
    return seq


def test_distillation_pulls_the_student_to_the_teachers_truncated_features():
    """Mechanism (issue 15): trained on masked inputs only, a student with the DMAE term ends with
    tokens (through its projection head) close to the frozen teacher's block-1 tokens, and this
    carries over to held-out inputs with every patch visible; the same student without the term
    (weight 0: plain MAE) stays far from them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 40, generator=g)
    torch.manual_seed(0)
    teacher = mae_vit((40,), 10, patch_size=2, dim=24, depth=2, heads=2, hidden_in_training=False)
    y = torch.zeros(64, dtype=torch.long)
    distance = {}
    for weight in (1.0, 0.0):
        torch.manual_seed(1)
        student = mae_vit((40,), 10, patch_size=2, dim=16, depth=1, heads=2, mask_ratio=0.75, hidden_in_training=False,
                          share_mask=True)
        d = dmae_distiller(student, teacher, "encoder.blocks.0", "encoder.blocks.1", weight=weight)
        d.prepare({"x": x[:64], "y": y})
        opt = torch.optim.AdamW(d.trainable_parameters(), 5e-3)
        for _ in range(60):
            i = torch.randint(0, 256, (64,), generator=g)
            loss = d.step({"x": x[i], "y": y})["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            held_out = x[256:]
            s = d.adapters["distill"](_full_view(student.encoder, held_out, 0))
            distance[weight] = float(feature_normalized_l1_loss(s, _full_view(teacher.encoder, held_out, 1)))
    assert distance[1.0] < 0.3 * distance[0.0], distance


def test_the_reproduction_arms_follow_the_size(tmp_path):
    """``distill_arm`` (shared by ``run`` and ``diagnose``): the size sets the epochs, the arm its
    teacher (truncated after block 1, following the student's masks) or none."""
    from distillery.reproduce import Context
    from distillery.reproduce.dmae import distill_arm

    seen = {}

    class Recorder(Context):
        def train(self, name, raw_config):
            seen[name] = raw_config
            return {}

    ctx = Recorder(seeds=[0], quick=True, out=tmp_path)
    s = {"unlabeled": 10, "teacher_epochs": 1, "epochs": 7, "ft_epochs": 1}
    distill_arm(ctx, s, {"pretrained": "P", "finetuned": "F"}, "e7/finetuned_75", 3, 0.75, "finetuned")
    distill_arm(ctx, s, {}, "mae_only_75", 3, 0.75, None)
    with_teacher, plain = seen["e7/finetuned_75/seed3"], seen["mae_only_75/seed3"]
    assert with_teacher["train"]["epochs"] == 7 and with_teacher["seed"] == 3
    assert with_teacher["teacher"]["model"]["checkpoint"] == "F" and with_teacher["teacher"]["until"] == "encoder.blocks.1"
    assert with_teacher["student"]["params"]["share_mask"] is True
    assert [o["kind"] for o in with_teacher["objectives"]] == ["masked_reconstruction", "normalized_l1"]
    assert "teacher" not in plain and plain["student"]["params"]["share_mask"] is False
