"""Condor's head_linear_silu attention under an explicit mask (the KV cache's compiled decode step
passes one) against attention, the shared per-head Linear and SiLU written out in float64; decoding
with a KV cache (keys [k | s] for self_score) against the full forward of the training model."""

import math

import pytest
import torch

import models
import modelskv
from models import ModelConfig
from models.condor import HeadLinearSiLUAttention


def test_head_linear_silu_attend_uses_the_given_mask():
    """y_h = silu(W (softmax(q_h k_hᵀ/√hd, masked) v_h) + b) per head, heads side by side; the mask
    given (here not causal: past keys hidden, a later one shown) is the one applied."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("condor", vocab_size=31, context=8, d_model=12, n_heads=3, d_ff=16,
                                  attention="head_linear_silu")
    attn = HeadLinearSiLUAttention(cfg).eval()
    with torch.no_grad():
        attn.head_mlp.weight.normal_(0.0, 0.5)
        attn.head_mlp.bias.normal_(0.0, 0.5)
    B, H, T, hd = 2, 3, 6, 4
    g = torch.Generator().manual_seed(1)
    q, k, v = (2 * torch.randn(B, H, T, hd, generator=g) for _ in range(3))
    allowed = (torch.rand(T, T, generator=g) > 0.5) | torch.eye(T, dtype=torch.bool)
    assert (allowed & ~torch.ones(T, T, dtype=torch.bool).tril()).any()        # not causal

    scores = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(hd)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    heads = (probs @ v.double()).transpose(1, 2)                                # (B, T, H, hd)
    h = heads @ attn.head_mlp.weight.double().T + attn.head_mlp.bias.double()
    ref = (h * torch.sigmoid(h)).reshape(B, T, H * hd)
    with torch.no_grad():
        got = attn.attend(q, k, v, allowed)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["self_score", "head_linear_silu"])
def test_cached_decoding_equals_the_full_forward(attention):
    """The inference copy, a prefix then one token at a time (eager int positions and the compiled
    step's 0-d tensor positions, which attend over the whole cache under a mask), gives the training
    model's logits."""
    cfg = ModelConfig.from_preset("condor", vocab_size=31, context=12, d_model=12, n_layers=2, n_heads=3,
                                  d_ff=16, attention=attention, position="rotary")
    torch.manual_seed(0)
    train = models.build(cfg).eval()
    with torch.no_grad():
        for p in train.parameters():
            p.add_(0.2 * torch.randn_like(p))
    kv = modelskv.build(cfg, max_batch=2)
    kv.load_state_dict(train.state_dict(), strict=True)
    x = torch.randint(0, 31, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = train(x).logits
        eager = torch.cat([kv(x[:, :5], 0)] + [kv(x[:, t:t + 1], t) for t in range(5, 12)], dim=1)
        static = torch.cat([kv(x[:, :5], 0)] + [kv(x[:, t:t + 1], torch.tensor(t)) for t in range(5, 12)], dim=1)
    torch.testing.assert_close(eager, ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(static, ref, atol=2e-5, rtol=1e-5)
