"""#53 Selftok (Selftok Team 2025, arXiv:2505.07538): the token schedule and when each token
reaches the decoder, the quantizers (FSQ, VQ) against their formulas, patch tokens, the
tokenizer's denoising loss, prefix decoding, the AR prior, the method's checks and the config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distillery.errors import ConfigError, ShapeError
from distillery.generative.denoisers import Denoiser
from distillery.generative.diffusion_tokenizer import (
    FSQ,
    PatchEncoder,
    TokenDecoderNet,
    VectorQuantizer,
    patches,
    reconstruction_curve,
    token_condition,
    token_perplexity,
    visible_tokens,
)
from distillery.generative.method import METHODS
from distillery.generative.processes import build_process
from distillery.recipes.selftok import (
    Selftok,
    decoder_student,
    injection_times,
    prefix_gain,
    sample_token_prior,
    selftok_config,
    spearman,
    token_prior_nll,
    train_token_prior,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _decoder(tokens: int = 4, token_dim: int = 2, seed: int = 0, prediction: str = "velocity") -> Denoiser:
    torch.manual_seed(seed)
    net = TokenDecoderNet(64, tokens, token_dim, embed_dim=4, hidden=(16, 16), time_dim=8)
    with torch.no_grad():  # a non-zero output layer, so that the output depends on the tokens
        net.body[-1].weight.normal_(0, 0.3)
    return Denoiser(net, build_process({"kind": "flow"}), prediction, (1, 8, 8))


def _method(layout: str = "selftok", tokens: int = 4, **kw) -> Selftok:
    params = {"encoder_hidden": (8,), **kw}
    if layout == "spatial":
        params.setdefault("patch", 4)
    return Selftok(_decoder(tokens), layout=layout, **params)


# -- the token schedule --------------------------------------------------------------------------
def test_injection_times_are_the_uniform_schedule_from_one_to_t_last():
    assert injection_times(4).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert injection_times(16)[-1].item() == pytest.approx(1 / 16)
    assert injection_times(3, 0.4).tolist() == pytest.approx([1.0, 0.7, 0.4])
    assert injection_times(1).tolist() == [1.0]
    with pytest.raises(ConfigError, match="t_last must lie in \\(0, 1\\]"):
        injection_times(4, 0.0)
    with pytest.raises(ConfigError, match="tokens must be a positive integer"):
        injection_times(0)


def test_visible_tokens_is_kept_and_not_before_its_injection_time():
    tau = injection_times(4)
    t = torch.tensor([1.0, 0.8, 0.5, 0.1])
    keep = torch.ones(4, 4)
    keep[3, 2:] = 0  # the last sample keeps a prefix of 2
    expected = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(visible_tokens(t, tau, keep), expected)


def test_a_token_reaches_the_decoder_only_at_times_at_or_below_its_injection_time():
    dec = _decoder(tokens=4)
    dec.net.set_injection_times(injection_times(4))
    x = torch.randn(3, 1, 8, 8)
    values = torch.rand(3, 4, 2) * 2 - 1
    other = values.clone()
    other[:, 2] = -values[:, 2] + 0.5  # change token 3 (injected at t = 0.5) only
    for t, affected in ((0.9, False), (0.6, False), (0.5, True), (0.2, True)):
        a = dec(x, torch.full((3,), t), token_condition(values))
        b = dec(x, torch.full((3,), t), token_condition(other))
        assert (not torch.allclose(a, b)) == affected, t
    # a masked token has no effect at any time; a kept one is not its mask vector
    a = dec(x, torch.full((3,), 0.1), token_condition(values, 2))
    b = dec(x, torch.full((3,), 0.1), token_condition(other, 2))
    assert torch.equal(a, b)
    # cond=None is every token masked
    assert torch.allclose(dec(x, torch.full((3,), 0.1), None), dec(x, torch.full((3,), 0.1), token_condition(values, 0)))


def test_token_condition_forms_and_refusals():
    v = torch.ones(2, 3, 2)
    assert token_condition(v)[..., -1].tolist() == [[1, 1, 1], [1, 1, 1]]
    c = token_condition(v, torch.tensor([1, 3]))
    assert c[..., -1].tolist() == [[1, 0, 0], [1, 1, 1]] and c[0, 1:, :2].abs().sum() == 0
    assert token_condition(v, torch.tensor([[True, False, True], [False, False, False]]))[..., -1].tolist() == [[1, 0, 1], [0, 0, 0]]
    with pytest.raises(ShapeError, match="prefix length"):
        token_condition(v, 4)
    with pytest.raises(ShapeError, match="cond must be"):
        _decoder(tokens=4)(torch.randn(2, 1, 8, 8), torch.rand(2), torch.zeros(2, 3, 3))
    with pytest.raises(ConfigError, match="injection times must be 4 values"):
        _decoder(tokens=4).net.set_injection_times(torch.ones(3))


# -- quantizers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [[5, 3], [4, 4], [2, 7, 3]])
def test_fsq_against_its_formula(levels):
    q = FSQ(levels)
    assert q.codebook_size == math.prod(levels) and q.dim == len(levels)
    z = torch.randn(5, 6, len(levels), dtype=torch.float64) * 3
    out = q(z)
    digits, ids = [], torch.zeros(5, 6, dtype=torch.long)
    mult = 1
    for i, L in enumerate(levels):
        u = (L - 1) / (1 + torch.exp(-z[..., i]))
        d = torch.round(u)
        digits.append(2 * d / (L - 1) - 1)
        ids += d.long() * mult
        mult *= L
    assert torch.allclose(out.values, torch.stack(digits, -1))
    assert torch.equal(out.ids, ids) and out.loss.item() == 0.0
    assert torch.allclose(q.embed(out.ids).double(), out.values)
    # every code has a pre-image and ids enumerate the codebook
    all_ids = torch.arange(q.codebook_size)[None]
    vals = q.embed(all_ids).double()
    pre = torch.logit(((vals + 1) / 2).clamp(1e-3, 1 - 1e-3))  # digit/(L-1) = sigmoid(z)
    assert torch.equal(q(pre).ids, all_ids)
    with pytest.raises(ConfigError, match="levels must be"):
        FSQ([1, 4])


def test_fsq_gradient_is_straight_through_the_rounding():
    q = FSQ([4, 5])
    z = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 2, dtype=torch.float64)
    (q(z).values * w).sum().backward()
    s = torch.sigmoid(z.detach())
    assert torch.allclose(z.grad, w * 2 * s * (1 - s))  # d(2 u/(L-1) - 1)/dz with u = (L-1) sigmoid(z)


def test_vector_quantizer_nearest_code_loss_and_gradients():
    torch.manual_seed(0)
    q = VectorQuantizer(6, 3, beta=0.5).double()
    z = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    out = q(z)
    d2 = ((z.detach()[..., None, :] - q.codebook.detach()[None, None]) ** 2).sum(-1)
    ids = d2.argmin(-1)
    e = q.codebook.detach()[ids]
    assert torch.equal(out.ids, ids) and torch.allclose(out.values, e)
    assert out.loss.item() == pytest.approx(1.5 * ((e - z.detach()) ** 2).mean().item())
    w = torch.randn_like(e)
    ((out.values * w).sum() + out.loss).backward()
    n = z.numel()
    assert torch.allclose(z.grad, w + 0.5 * 2 * (z.detach() - e) / n)  # straight-through + commitment
    grad_code = torch.zeros_like(q.codebook)
    grad_code.index_add_(0, ids.reshape(-1), (2 * (e - z.detach()) / n).reshape(-1, 3))
    assert torch.allclose(q.codebook.grad, grad_code)  # the codebook term only


def test_token_perplexity():
    assert token_perplexity(torch.tensor([3, 3, 3]), 8) == pytest.approx(1.0)
    assert token_perplexity(torch.arange(8), 8) == pytest.approx(8.0)


# -- encoders ----------------------------------------------------------------------------------------
def test_patches_are_row_major_and_a_patch_token_sees_only_its_patch():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    p = patches(x, 2)
    assert p.shape == (2, 4, 4)
    assert p[0, 1].tolist() == [2, 3, 6, 7] and p[1, 2].tolist() == [24, 25, 28, 29]
    enc = PatchEncoder(1, 2, 3, (8,))
    y = x.clone()
    y[:, :, 2:, 2:] += 1.0  # the last patch only
    a, b = enc(x), enc(y)
    assert torch.equal(a[:, :3], b[:, :3]) and not torch.allclose(a[:, 3], b[:, 3])
    with pytest.raises(ShapeError, match="does not split"):
        patches(torch.zeros(1, 1, 5, 5), 2)


# -- the tokenizer and the method -------------------------------------------------------------------
def test_the_tokenizer_loss_is_the_denoising_regression_on_the_quantized_tokens():
    m = _method()
    tok = m.tokenizer
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    eps, t = torch.randn_like(x0), torch.rand(6)
    prefix = torch.tensor([4, 0, 2, 4, 1, 3])
    loss, figures, ids = tok.loss(x0, eps, t, prefix)
    values = tok.quantizer.embed(ids)
    keep = (torch.arange(4)[None] < prefix[:, None]).float()
    cond = torch.cat([values * keep[..., None], keep[..., None]], -1)
    x_t = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
    expected = ((tok.decoder.net(x_t, t, cond) - (eps - x0)) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and figures["quantizer"] == 0.0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tok.encoder.parameters() if p.dim() > 1)


def test_the_method_draws_prefixes_counts_codes_and_samples():
    m = _method(prefix_dropout=1.0)
    torch.manual_seed(0)
    lengths = m.prefix_lengths(4000)
    counts = torch.bincount(lengths, minlength=5).float() / 4000
    assert torch.allclose(counts, torch.full((5,), 0.2), atol=0.03)
    assert torch.equal(_method(prefix_dropout=0.0).prefix_lengths(50), torch.full((50,), 4))
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    loss, _ = m.loss("tokenizer", {"x": x}, 0)
    counts = m.tokenizer.code_counts.clone()
    assert math.isfinite(loss.item()) and torch.equal(counts.sum(1), torch.full((4,), 8.0))
    ids = m.tokenizer.encode(x).ids
    assert torch.equal(counts, torch.nn.functional.one_hot(ids, 16).sum(0).float())
    m.tokenizer.count_codes(ids)
    assert torch.allclose(m.tokenizer.code_counts, 1.99 * counts)
    s = m.sample(5, 2, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 1, 8, 8) and torch.isfinite(s).all()
    d = m.describe()
    assert d["layout"] == "selftok" and d["injection_times"] == [1.0, 0.75, 0.5, 0.25] and d["codebook_size"] == 16
    assert m.exported().keys() == {"tokenizer"}
    sp = _method("spatial")
    assert sp.tokenizer.decoder.net.injection_times.tolist() == [1.0] * 4 and isinstance(sp.tokenizer.encoder, PatchEncoder)


def test_the_method_refuses_bad_params():
    assert METHODS.get("selftok") is Selftok
    with pytest.raises(ConfigError, match="layout must be one of selftok, spatial"):
        _method("grid")
    with pytest.raises(ConfigError, match="gives 16 tokens but student.denoiser.params.tokens is 4"):
        _method("spatial", patch=2)
    with pytest.raises(ConfigError, match="t_last is a parameter of layout 'selftok'"):
        _method("spatial", t_last=0.5)
    with pytest.raises(ConfigError, match="prefix_dropout must lie in \\[0, 1\\]"):
        _method(prefix_dropout=1.5)
    with pytest.raises(ConfigError, match="set student.denoiser.params.token_dim to 3"):
        _method(levels=(3, 3, 3))
    with pytest.raises(ConfigError, match="quantizer must be 'fsq' or 'vq'"):
        _method(quantizer="rq")
    with pytest.raises(ConfigError, match="takes no teacher"):
        Selftok(_decoder(), teacher=_decoder())


def test_prefix_decoding_uses_the_same_noise_and_ignores_masked_tokens():
    m = _method()
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    curve = reconstruction_curve(m.tokenizer, x, steps=2, seed=3)
    assert curve["prefix"] == [0, 1, 2, 3, 4] and len(curve["mse"]) == 5 and curve["ids"].shape == (5, 4)
    noise = m.process.prior((5, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    other_ids = (curve["ids"] + 1) % 16
    assert torch.allclose(m.tokenizer.decode(other_ids, noise, keep=0, steps=2), curve["reconstructions"][0], atol=1e-6)
    assert torch.allclose(m.tokenizer.decode(curve["ids"], noise, keep=4, steps=2), curve["reconstructions"][4], atol=1e-6)
    assert curve["mse"][2] == pytest.approx(((curve["reconstructions"][2] - x) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ConfigError, match="prefixes must lie in \\[0, 4\\]"):
        reconstruction_curve(m.tokenizer, x, prefixes=[5])


# -- the AR prior and the measures --------------------------------------------------------------------
def test_the_token_prior_learns_a_sequence_and_never_samples_the_start_token():
    ids = torch.tensor([[3, 1, 4, 1, 5]] * 16 + [[2, 7, 1, 8, 2]] * 16)
    lm = train_token_prior(ids, 9, steps=200, batch_size=32, lr=1e-2, dim=16, depth=1, heads=2)
    assert token_prior_nll(lm, ids, 9) < 0.2 * math.log(2) + 0.03  # the optimum: log 2 at the first token, 0 after
    s = sample_token_prior(lm, 64, 5, 9, generator=torch.Generator().manual_seed(0))
    assert s.shape == (64, 5) and int(s.max()) < 9
    assert ((s == ids[0]).all(1) | (s == ids[-1]).all(1)).float().mean() > 0.9
    # the NLL is the mean next-token cross-entropy after the start token
    seq = torch.cat([torch.full((32, 1), 9), ids], 1)
    with torch.no_grad():
        logp = torch.log_softmax(lm(seq[:, :-1]).logits, -1)
    manual = -logp.gather(-1, seq[:, 1:, None]).mean().item()
    assert token_prior_nll(lm, ids, 9) == pytest.approx(manual, rel=1e-5)
    with pytest.raises(ConfigError, match="token ids must lie in"):
        train_token_prior(ids, 5, steps=1)


def test_spearman_and_prefix_gain_against_their_formulas():
    x = [1, 2, 3, 4, 5, 6]
    y = [0.9, 0.7, 0.75, 0.4, 0.3, 0.1]
    ranks = [6, 4, 5, 3, 2, 1]
    d2 = sum((a - b) ** 2 for a, b in zip(x, ranks))
    assert spearman(x, y) == pytest.approx(1 - 6 * d2 / (6 * 35))
    assert spearman([1, 2, 3, 4], [5, 5, 1, 0]) == pytest.approx(-0.9486832980505138)  # ties: scipy.stats.spearmanr's value
    assert prefix_gain([1.0, 0.6, 0.4, 0.2], 1) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="m_0 != m_K"):
        prefix_gain([1.0, 1.0], 1)


def test_config_fragments_and_the_shipped_config(tmp_path, capsys):
    assert selftok_config("spatial")["method"]["params"] == {"layout": "spatial", "quantizer": "fsq", "levels": [4, 4],
                                                             "prefix_dropout": 0.5, "patch": 2}
    assert selftok_config(t_last=0.1)["method"]["params"]["t_last"] == 0.1
    assert decoder_student(16, 2)["student"]["denoiser"]["name"] == "token_mlp"
    from distillery.cli import main

    small = ["train.steps=2", "train.progress=false", "train.tensorboard=false", "eval.num_samples=8", "eval.steps=[1]",
             "eval.metrics=[]", "student.denoiser.params.hidden=[16]", "method.params.encoder_hidden=[8]"]
    sets = [a for s in small for a in ("--set", s)]
    assert main(["validate", str(CONFIGS / "selftok_digits.yaml"), *sets]) == 0
    assert "player tokenizer" in capsys.readouterr().out
    assert main(["run", str(CONFIGS / "selftok_digits.yaml"), "--out", str(tmp_path / "run"), *sets,
                 "--set", "method.params.layout=spatial", "--set", "method.params.patch=2"]) == 0
    assert (tmp_path / "run" / "tokenizer.safetensors").is_file()


def test_the_reproductions_configs_are_valid_generative_configs():
    from distillery.config import parse_config
    from distillery.reproduce.selftok import tokenizer_config

    for layout in ("selftok", "spatial"):
        cfg = parse_config({"seed": 0, **tokenizer_config(layout, 10)}, layout)
        assert cfg.method.kind == "selftok" and cfg.method.params["layout"] == layout
        assert cfg.student.prediction == "x0" and cfg.eval.steps == []
