"""Tests for models/condor.py: every attention variant against known answers and the GPT contract."""

import math

import pytest
import torch
import torch.nn.functional as F

import tid
from conftest import assert_causal, assert_initial_loss_is_uniform, random_tokens, written_out_sdpa
from models import FAMILIES, ModelConfig, build
from models.blocks import CausalSelfAttention, apply_rotary, causal_mask, rotary_table
from models.condor import Condor, HeadLinearSiLUAttention, SelfScoreAttention

VARIANTS = ["standard", "head_linear_silu", "self_score"]
TINY = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, vocab_size=97, context=16)


def tiny_model(attention: str, seed: int = 0, **overrides) -> Condor:
    torch.manual_seed(seed)
    return build(ModelConfig.from_preset("condor", **{**TINY, "attention": attention, **overrides})).eval()


@pytest.mark.parametrize("attention", VARIANTS)
def test_shapes_and_contract(attention):
    model = tiny_model(attention)
    tokens = random_tokens(model.cfg, B=3, T=10)
    logits, loss, aux_loss, stats = model(tokens, targets=tokens)
    assert logits.shape == (3, 10, model.cfg.vocab_size)
    assert loss.shape == () and torch.isfinite(loss) and aux_loss is None and stats == {}


@pytest.mark.parametrize("attention", VARIANTS)
def test_causality(attention):
    model = tiny_model(attention)
    assert_causal(model, random_tokens(model.cfg))


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("attention", VARIANTS)
def test_sdpa_matches_explicit_attention(attention, position, monkeypatch):
    model = tiny_model(attention, position=position)
    tokens = random_tokens(model.cfg)
    with torch.no_grad():
        fast = model(tokens).logits
        monkeypatch.setattr(F, "scaled_dot_product_attention", written_out_sdpa)
        slow = model(tokens).logits
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("attention", VARIANTS)
def test_attend_with_cached_prefix_matches_full(attention, explicit, monkeypatch):
    # the KV-cache path: queries of the last positions against the keys (and s) of the whole prefix
    model = tiny_model(attention, position="rotary")
    attn = model.blocks[0].attn
    if explicit:
        monkeypatch.setattr(F, "scaled_dot_product_attention", written_out_sdpa)
    x = torch.randn(2, 9, model.cfg.d_model, generator=torch.Generator().manual_seed(4))
    cos, sin = rotary_table(model.cfg.head_dim, model.cfg.context, model.cfg.rope_theta)
    with torch.no_grad():
        full = attn(x, (cos[:9], sin[:9]))
        q, k, v = attn.project(x, (cos[:9], sin[:9]))
        tail = attn.wo(attn.attend(q[:, :, 6:], k, v))                       # no mask: bottom-right causal
    torch.testing.assert_close(tail, full[:, 6:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", VARIANTS)
def test_initial_loss_near_uniform(attention):
    model = tiny_model(attention, vocab_size=512)
    assert_initial_loss_is_uniform(model)


def test_head_linear_silu_is_one_linear_silu_shared_by_heads():
    model = tiny_model("head_linear_silu")
    attn = model.blocks[0].attn
    assert isinstance(attn, HeadLinearSiLUAttention)
    H, hd = model.cfg.n_heads, model.cfg.head_dim
    assert attn.head_mlp.weight.shape == (hd, hd)
    x = torch.randn(2, 9, model.cfg.d_model, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        q, k, v = attn.project(x)
        heads = F.scaled_dot_product_attention(q, k, v, is_causal=True)      # (B, H, T, hd)
        W, b = attn.head_mlp.weight, attn.head_mlp.bias
        # the same W and b for every head, applied to each head's output vector
        mixed = torch.stack([F.silu(heads[:, h] @ W.T + b) for h in range(H)], dim=1)
        expected = attn.wo(mixed.transpose(1, 2).reshape(2, 9, H * hd))
        torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=0)


def _manual_self_score_weights(attn: SelfScoreAttention, x: torch.Tensor, rope=None) -> torch.Tensor:
    # softmax(q kᵀ/√hd + s sᵀ/√d_x + causal mask), every tensor rebuilt from the module's weights;
    # under rotary s is rotated like q and k
    B, T, C = x.shape
    H, hd = attn.n_heads, attn.head_dim
    q, k, _ = (x @ attn.wqkv.weight.T + attn.wqkv.bias).split(C, dim=-1)
    s = x @ attn.wx.weight.T + attn.wx.bias
    q, k, s = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, s))       # (B, H, T, hd)
    if rope is not None:
        q, k, s = (apply_rotary(t, *rope) for t in (q, k, s))
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd) + s @ s.transpose(-2, -1) / math.sqrt(hd)
    scores = scores.masked_fill(~causal_mask(T, T), float("-inf"))
    return scores.softmax(dim=-1)                                             # (B, H, T, T)


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_self_score_scores_match_manual(position):
    model = tiny_model("self_score", position=position)
    attn = model.blocks[0].attn
    assert isinstance(attn, SelfScoreAttention)
    x = torch.randn(2, 9, model.cfg.d_model, generator=torch.Generator().manual_seed(4))
    rope = None
    if position == "rotary":
        cos, sin = rotary_table(model.cfg.head_dim, model.cfg.context, model.cfg.rope_theta)
        rope = (cos[:9], sin[:9])
    with torch.no_grad():
        expected = _manual_self_score_weights(attn, x, rope)
        q, k, v = attn.project(x, rope)
        torch.testing.assert_close(attn.attention_weights(q, k), expected, atol=1e-6, rtol=0)
        # the SDPA path uses those same weights
        heads = expected @ v                                                  # (B, H, T, hd)
        out = attn.wo(heads.transpose(1, 2).reshape(2, 9, model.cfg.d_model))
        torch.testing.assert_close(attn(x, rope), out, atol=1e-6, rtol=0)
        # and they differ from the plain q kᵀ/√hd attention
        plain = F.scaled_dot_product_attention(*(t[..., : attn.head_dim] for t in (q, k)), v, is_causal=True)
        assert not torch.allclose(heads, plain, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_counts(bias):
    counts = {a: tiny_model(a, bias=bias).num_params() for a in VARIANTS}
    L, d, hd = TINY["n_layers"], TINY["d_model"], TINY["d_model"] // TINY["n_heads"]
    assert counts["head_linear_silu"] - counts["standard"] == L * (hd * hd + hd * bias)
    assert counts["self_score"] - counts["standard"] == L * (d * d + d * bias)    # wx: per head, d_x = hd


@pytest.mark.parametrize("attention", VARIANTS)
def test_attention_mass_scores(attention):
    model = tiny_model(attention)
    tokens = random_tokens(model.cfg, B=3)
    scores = tid.attention_mass_scores(model, tokens, layer=0)
    T = tokens.size(1)
    assert scores.shape == (3, T)
    torch.testing.assert_close(scores.sum(dim=1), torch.full((3,), float(model.cfg.n_heads * T)))


@pytest.mark.parametrize("attention", VARIANTS)
def test_overfits_one_batch(attention):
    model = tiny_model(attention, vocab_size=32, context=16).train()
    tokens = random_tokens(model.cfg, B=4)
    targets = random_tokens(model.cfg, B=4, seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        loss = model(tokens, targets=targets).objective
        first = first if first is not None else loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first, f"loss {first:.3f} -> {loss.item():.3f}"


def test_condor_preset_and_registry():
    # the TinyStories Condor at its last version: the baseline at 1 layer / 2 heads / ff 128, standard attention
    cfg = ModelConfig.from_preset("condor")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.attention) == (256, 1, 2, 128, "standard")
    with torch.device("meta"):
        model = build(cfg)
    assert FAMILIES["condor"].model is Condor and isinstance(model, Condor)
    assert len(model.blocks) == 1 and type(model.blocks[0].attn) is CausalSelfAttention


def test_old_head_mlp_name_still_loads_as_head_linear_silu():
    with pytest.warns(DeprecationWarning, match="head_linear_silu"):
        cfg = ModelConfig.from_preset("condor", **{**TINY, "attention": "head_mlp"})
    assert cfg.attention == "head_linear_silu"
    # a checkpoint saved under the old name loads strictly into the renamed variant
    old = build(cfg).state_dict()
    tiny_model("head_linear_silu").load_state_dict(old, strict=True)


def test_bad_attention_refused():
    with pytest.raises(ValueError, match="attention"):
        ModelConfig.from_preset("condor", attention="linear")
    with pytest.raises(ValueError, match="preset=condor"):
        ModelConfig.from_preset("baseline", attention="head_linear_silu")
