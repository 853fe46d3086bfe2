"""PH-Reg (#36): register injection, partial unfreezing, the TTA dense teacher, the recipe's loss."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.models import build_model, vit
from distillery.models.surgery import add_registers, freeze_except
from distillery.teachers import DenseTTATeacher
from distillery.teachers.tta import GridWarp, grid_warps


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _net(seed=0):
    torch.manual_seed(seed)
    return vit((1, 8, 8), 3, patch_size=4, dim=8, depth=2, heads=2)


def _manual_tokens(net, registers, x):
    """A register ViT's forward written out: registers appended after the positions, dropped before ``norm``."""
    t = net.patch_embed(x)
    t = torch.cat([net.cls_token.expand(len(x), -1, -1), t], 1) + net.pos_embed
    t = torch.cat([t, registers.expand(len(x), -1, -1)], 1)
    for block in net.blocks:
        t = block(t)
    return net.norm(t[:, : t.shape[1] - registers.shape[1]])


def test_registers_join_attention_and_are_stripped():
    net = _net()
    plain = copy.deepcopy(net)
    regs = add_registers(net, 3)
    x = torch.randn(4, 1, 8, 8, generator=_g(0))
    out = net.tokens(x)
    assert out.shape == plain.tokens(x).shape == (4, 5, 8)
    torch.testing.assert_close(out, _manual_tokens(plain, regs.tokens.detach(), x))
    assert not torch.allclose(out, plain.tokens(x))          # the registers take part in attention
    assert "registers.tokens" in net.state_dict()
    copied = copy.deepcopy(net)                                # hooks follow the copy's own registers
    with torch.no_grad():
        copied.registers.tokens.add_(1.0)
    torch.testing.assert_close(net.tokens(x), out)
    with pytest.raises(ConfigError, match="already has"):
        add_registers(net, 1)


def test_freeze_except_by_patterns():
    net = _net()
    add_registers(net, 2)
    names = freeze_except(net, ["registers.*", "pos_embed", "blocks.1.*"])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert set(names) == trainable
    assert trainable == {"registers.tokens", "pos_embed"} | {n for n, _ in net.named_parameters() if n.startswith("blocks.1.")}
    with pytest.raises(ConfigError, match=r"\['head2\.\*'\] match no parameter"):
        freeze_except(net, ["head2.*"])


def test_grid_warp_moves_whole_patches_and_undoes_them():
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    w = GridWarp(dy=1, dx=-1, flip=True, grid=(4, 4), patch=(2, 2))
    img = w.image(x)
    flipped = x.flip(-1)
    for r in range(8):
        for c in range(8):
            sr, sc = r - 2, c + 2          # a shift by (+1, -1) patches of 2 pixels
            want = flipped[0, 0, sr, sc] if 0 <= sr < 8 and 0 <= sc < 8 else 0.0
            assert float(img[0, 0, r, c]) == float(want)
    # token (i, j) of the warped image shows original patch (i - 1, 3 - (j + 1)); unwarp reads it back
    warped_tokens = torch.arange(16.0).reshape(1, 16, 1)     # "feature" = warped grid index
    back, valid = w.unwarp_grid(warped_tokens)
    for a in range(4):
        for b in range(4):
            i, j = a + 1, (3 - b) - 1
            if 0 <= i < 4 and 0 <= j < 4:
                assert bool(valid[a * 4 + b]) and float(back[0, a * 4 + b, 0]) == i * 4 + j
            else:
                assert not bool(valid[a * 4 + b])


class _PatchSums(nn.Module):
    """A "model" whose tokens are per-patch pixel sums (class token: the image sum) at ``norm``."""

    def __init__(self):
        super().__init__()
        self.norm = nn.Identity()

    def forward(self, x):
        p = x.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2)).flatten(1).unsqueeze(-1)   # [B, 16, 1]
        return self.norm(torch.cat([x.sum((1, 2, 3)).view(-1, 1, 1), p], 1))


def test_tta_teacher_recovers_equivariant_features_exactly():
    # per-patch sums are unchanged by a whole-patch shift (for patches still on the grid) and a flip,
    # so the TTA average over every copy that shows a patch equals the single pass
    x = torch.zeros(2, 1, 8, 8)
    x[:, :, 2:6, 2:6] = torch.rand(2, 1, 4, 4, generator=_g(1))     # content away from the border
    model = _PatchSums()
    tta = DenseTTATeacher(model, grid=(4, 4), patch=(2, 2), shifts=1, flip=True)
    assert len(tta.warps) == 18 and tta.warps[0].dy == tta.warps[0].dx == 0 and not tta.warps[0].flip
    torch.testing.assert_close(tta.signals(x, {}, ["norm"])["norm"], model(x))


def test_tta_teacher_averages_over_the_copies_showing_each_patch():
    class Positions(nn.Module):   # tokens = the warped grid's own positions, class token = 1
        def __init__(self):
            super().__init__()
            self.norm = nn.Identity()

        def forward(self, x):
            return self.norm(torch.cat([torch.ones(len(x), 1, 1), torch.arange(4.0).view(1, 4, 1).expand(len(x), 4, 1)], 1))

    tta = DenseTTATeacher(Positions(), grid=(2, 2), patch=(1, 1), shifts=1, flip=False)
    got = tta.signals(torch.zeros(1, 1, 2, 2), {}, ["norm"])["norm"][0, :, 0]
    want = [1.0]
    for a in range(2):
        for b in range(2):
            seen = [(a + dy) * 2 + (b + dx) for dy, dx in [(o // 3 - 1, o % 3 - 1) for o in range(9)]
                    if 0 <= a + dy < 2 and 0 <= b + dx < 2]
            want.append(sum(seen) / len(seen))
    torch.testing.assert_close(got, torch.tensor(want))
    assert len(grid_warps((2, 2), (1, 1), shifts=1, flip=False)) == 9


def test_register_vit_loads_pretrained_weights_and_unfreezes_a_subset(tmp_path):
    from safetensors.torch import save_file

    plain = build_model("vit", (1, 8, 8), 3, patch_size=4, dim=8, depth=2, heads=2)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(path))
    student = build_model("register_vit", (1, 8, 8), 3, patch_size=4, dim=8, depth=2, heads=2, registers=2, pretrained=str(path))
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(student.state_dict()[k], v)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert "registers.tokens" in trainable and "pos_embed" in trainable and "blocks.0.attn.qkv.weight" not in trainable
    assert "blocks.1.attn.qkv.weight" in trainable and "head.weight" not in trainable


def test_ph_reg_step_is_cosine_plus_mse_to_the_targets():
    from distillery.recipes.ph_reg import outlier_rate, ph_reg_distiller, ph_reg_student
    from distillery.teachers import PrecomputedTeacher

    net = _net(1)
    student = ph_reg_student(net, registers=2)
    x = torch.randn(3, 1, 8, 8, generator=_g(2))
    targets = torch.randn(3, 5, 8, generator=_g(3))
    d = ph_reg_distiller(student, PrecomputedTeacher({"norm": targets}))
    batch = {"x": x, "y": torch.zeros(3, dtype=torch.long), "index": torch.arange(3)}
    d.prepare(batch)
    losses = d.step(batch)
    tokens = student.tokens(x)
    cos = 1 - torch.nn.functional.cosine_similarity(tokens, targets, dim=-1).mean()
    mse = (tokens - targets).pow(2).mean()
    torch.testing.assert_close(losses["loss"], cos + mse)
    assert outlier_rate(torch.tensor([1.0, 1.1, 0.9, 5.0])) == 0.25   # torch median (lower middle) 1.0: only 5.0 > 2.0
