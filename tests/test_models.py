"""Tests for models/: shapes, causality, SDPA vs explicit attention, init, TID drop mask, options."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_causal, assert_initial_loss_is_uniform, random_tokens, written_out_sdpa
from models import FAMILIES, GPT, ModelConfig, build, flops_per_token
from models.blocks import CausalSelfAttention, apply_rotary, rotary_table
from models.loss import linear_cross_entropy

PRESET_NAMES = ["baseline", "gpt2_125m", "llama"]
TINY = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, vocab_size=97, context=16)


def tiny(name: str, **overrides) -> ModelConfig:
    return ModelConfig.from_preset(name, **{**TINY, **overrides})


def tiny_model(name: str, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return build(tiny(name, **overrides)).eval()


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_shapes_and_contract(name):
    model = tiny_model(name)
    tokens = random_tokens(model.cfg, B=3, T=10)
    logits, loss, aux_loss, stats = model(tokens)
    assert logits.shape == (3, 10, model.cfg.vocab_size)
    assert loss is None and aux_loss is None and stats == {}
    loss = model(tokens, targets=tokens).objective
    assert loss.shape == () and torch.isfinite(loss)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_causality(name):
    model = tiny_model(name)
    assert_causal(model, random_tokens(model.cfg))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_sdpa_matches_explicit_attention(name, monkeypatch):
    model = tiny_model(name)
    tokens = random_tokens(model.cfg)
    with torch.no_grad():
        fast = model(tokens).logits
        monkeypatch.setattr(F, "scaled_dot_product_attention", written_out_sdpa)
        slow = model(tokens).logits
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_attend_with_cached_prefix_matches_full(monkeypatch):
    # the KV-cache path: queries for the last positions against keys of the whole prefix
    torch.manual_seed(0)
    cfg = tiny("llama")
    attn = CausalSelfAttention(cfg).eval()
    x = torch.randn(2, 9, cfg.d_model)
    cos, sin = rotary_table(cfg.head_dim, cfg.context, cfg.rope_theta)
    with torch.no_grad():
        full = attn(x, (cos[:9], sin[:9]))
        q, k, v = attn.project(x, (cos[:9], sin[:9]))
        tail = attn.wo(attn.attend(q[:, :, 6:], k, v))          # no mask: bottom-right causal
        monkeypatch.setattr(F, "scaled_dot_product_attention", written_out_sdpa)
        tail_explicit = attn.wo(attn.attend(q[:, :, 6:], k, v))
    torch.testing.assert_close(tail, full[:, 6:], atol=1e-6, rtol=0)
    torch.testing.assert_close(tail_explicit, full[:, 6:], atol=1e-5, rtol=0)


def test_rotary_is_relative():
    # rotate-half RoPE: <rot(q, m), rot(k, n)> depends only on m - n
    torch.manual_seed(0)
    hd = 8
    cos, sin = rotary_table(hd, 32)
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)

    def dot(m, n):
        return (apply_rotary(q, cos[m:m + 1], sin[m:m + 1]) * apply_rotary(k, cos[n:n + 1], sin[n:n + 1])).sum()

    torch.testing.assert_close(dot(5, 2), dot(20, 17))
    torch.testing.assert_close(apply_rotary(q, cos[:1], sin[:1]), q)        # position 0: identity


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_initial_loss_near_uniform(name):
    model = tiny_model(name, vocab_size=512)
    assert_initial_loss_is_uniform(model)


def test_tied_and_untied_weights():
    tied = tiny_model("baseline")
    assert tied.cfg.tie_embeddings
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert tied.lm_head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    untied = tiny_model("llama")
    assert not untied.cfg.tie_embeddings
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    # tied: the table counts once
    V, d = TINY["vocab_size"], TINY["d_model"]
    assert untied.num_params() - untied.num_params(exclude_embeddings=True) == V * d
    assert tied.num_params() - tied.num_params(exclude_embeddings=True) == TINY["context"] * d


def test_gpt2_125m_parameter_count():
    cfg = ModelConfig.from_preset("gpt2_125m")
    with torch.device("meta"):
        model = build(cfg)
    V, d, L, ff = 50257, 768, 12, 2048
    attn = 4 * d * d                       # wqkv + wo, no biases
    mlp = d * 2 * ff + ff * d              # SwiGLU: fused gate/up, then down
    norms = 2 * d                          # two RMSNorm weights per block
    expected = V * d + L * (attn + mlp + norms) + d   # tied embedding/head, final norm
    assert model.num_params() == expected == 123_551_232
    assert 6 * expected < flops_per_token(cfg, expected)


def test_residual_projection_init():
    model = tiny_model("baseline", d_model=64, n_layers=8, d_ff=256)
    wo, up = model.blocks[0].attn.wo.weight, model.blocks[0].mlp.up.weight
    assert abs(wo.std().item() - 0.02 / math.sqrt(16)) < 1e-3
    assert abs(up.std().item() - 0.02) < 1e-3
    assert torch.count_nonzero(model.blocks[0].mlp.up.bias) == 0


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_drop_mask_with_keep_position_zeroes_token_embeddings_only(name):
    model = tiny_model(name)
    cfg = model.cfg
    zero_id = cfg.vocab_size - 1
    tokens = random_tokens(cfg) % zero_id               # zero_id does not occur in the input
    drop_mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(3)) < 0.3
    # reference: same weights, but the dropped positions read an all-zero embedding row
    reference = build(cfg).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.tok_emb.weight[zero_id] = 0.0
        # tid.keep_position=true: the token embedding is zeroed, an added position embedding stays
        out = model(tokens, targets=tokens, drop_mask=drop_mask, keep_position=True)
        logits, loss = out.logits, out.objective
        expected = reference(tokens.masked_fill(drop_mask, zero_id)).logits
        plain = model(tokens).logits
    # a tied head also zeroes logit zero_id in the reference; compare the other columns
    torch.testing.assert_close(logits[..., :zero_id], expected[..., :zero_id], atol=1e-6, rtol=0)
    assert not torch.allclose(logits, plain)
    # the loss still averages over every target, dropped positions included
    full_ce = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), tokens.reshape(-1))
    torch.testing.assert_close(loss, full_ce)


def test_ignore_index_targets():
    model = tiny_model("baseline")
    tokens = random_tokens(model.cfg)
    targets = tokens.clone()
    targets[:, :5] = -100
    out = model(tokens, targets=targets)
    logits, loss = out.logits, out.objective
    kept = F.cross_entropy(logits[:, 5:].reshape(-1, model.cfg.vocab_size), targets[:, 5:].reshape(-1))
    torch.testing.assert_close(loss, kept)


@pytest.mark.parametrize("position,norm,mlp", list(itertools.product(
    ["learned", "rotary", "sinusoidal"], ["layernorm", "rmsnorm"], ["gelu", "relu", "swiglu"])))
def test_all_options_run(position, norm, mlp):
    model = tiny_model("baseline", position=position, norm=norm, mlp=mlp, dropout=0.1).train()
    tokens = random_tokens(model.cfg)
    logits, loss, aux_loss, stats = model(tokens, targets=tokens)
    loss.backward()
    assert torch.isfinite(loss) and aux_loss is None and stats == {}
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    state = model.state_dict()
    assert ("pos_emb.weight" in state) == (position == "learned")
    assert not any("rope" in key or "pos_table" in key for key in state)   # fixed tables not saved


def test_too_long_sequence_raises():
    model = tiny_model("baseline")
    with pytest.raises(ValueError, match="context"):
        model(random_tokens(model.cfg, T=model.cfg.context + 1))


@pytest.mark.parametrize("name", ["baseline", "llama"])
def test_overfits_one_batch(name):
    model = tiny_model(name, vocab_size=32, context=16).train()
    tokens = random_tokens(model.cfg, B=4)
    targets = random_tokens(model.cfg, B=4, seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        loss = model(tokens, targets=targets).objective
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1, f"loss {loss.item():.3f} after {step + 1} steps"


def test_word_vector_init_and_freeze():
    model = tiny_model("llama")
    V, d = TINY["vocab_size"], TINY["d_model"]
    vectors = 3.0 * torch.randn(V, d)
    found = torch.arange(V) % 3 != 0                           # every third word is not in the file
    vectors[~found] = 0.0                                      # as load_word_vectors leaves them
    torch.manual_seed(0)
    model.init_token_embeddings(vectors, found, freeze=True, pad_id=0)
    emb = model.tok_emb.weight.detach()
    torch.testing.assert_close(emb[found], vectors[found])
    missing = emb[~found][1:]                                  # row 0 is the padding row
    assert (missing != 0).all()                                # random normal, not zero
    assert 2.0 < missing.std().item() < 4.0                    # on the pretrained vectors' scale (std 3)
    assert (emb[0] == 0).all()                                 # padding row zero
    tokens = random_tokens(model.cfg)
    loss = model(tokens, targets=tokens).objective
    loss.backward()
    assert model.tok_emb.weight.grad is None
    assert model.lm_head.weight.grad is not None               # untied head still trains

    model.init_token_embeddings(vectors.double(), found, freeze=False)  # dtype follows the model
    loss = model(tokens, targets=tokens).objective
    loss.backward()
    assert model.tok_emb.weight.grad is not None
    with pytest.raises(ValueError, match="vocab_size, d_model"):
        model.init_token_embeddings(torch.zeros(V, d + 1), found, freeze=False)
    tied = tiny_model("baseline")
    with pytest.raises(ValueError, match="tie_embeddings=false"):
        tied.init_token_embeddings(vectors, found, freeze=True)
    with pytest.raises(ValueError, match="tie_embeddings=false"):
        ModelConfig.from_preset("baseline", freeze_embeddings=True, word_vectors="v.txt")
    with pytest.raises(ValueError, match="model.word_vectors"):
        ModelConfig.from_preset("baseline", freeze_embeddings=True, tie_embeddings=False)


def test_registry():
    assert set(FAMILIES) >= set(PRESET_NAMES)
    for name in PRESET_NAMES:
        assert isinstance(build(tiny(name)), FAMILIES[name].model)


def test_linear_cross_entropy_equals_the_plain_loss_and_gradients():
    torch.manual_seed(0)
    x, w = torch.randn(37, 16, requires_grad=True), torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[[3, 10]] = -100
    plain = F.cross_entropy(x @ w.T, targets)
    fused = linear_cross_entropy(x, w, targets, chunk_rows=8)                # 37 rows: a ragged last chunk
    assert torch.allclose(fused, plain, rtol=1e-6)
    for a, b in zip(torch.autograd.grad(2 * fused, (x, w)), torch.autograd.grad(2 * plain, (x, w))):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", ["baseline", "llama", "falcon"])
def test_model_with_chunked_loss_equals_plain(name):
    torch.manual_seed(0)
    model = build(tiny(name, tie_embeddings=name == "baseline")).train()
    tokens, targets = random_tokens(model.cfg, B=2, T=16), random_tokens(model.cfg, B=2, T=16, seed=2)
    plain = model(tokens, targets).objective
    grads = torch.autograd.grad(plain, list(model.parameters()))
    out = model(tokens, targets, loss_chunk=5)
    logits, fused = out.logits, out.objective
    assert logits is None and torch.allclose(fused, plain, rtol=1e-6)
    for a, b in zip(torch.autograd.grad(fused, list(model.parameters())), grads):
        assert torch.allclose(a, b, atol=1e-6)
