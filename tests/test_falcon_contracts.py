"""Falcon's parameter counts against a count by hand from the architecture (bias-free router, experts
with and without biases, embeddings excluded or not, one expert) and the mixture's output dtype in bf16
against the dense top-k reference."""

import pytest
import torch
import torch.nn.functional as F

from models import ModelConfig, build

TINY = dict(vocab_size=41, context=11, d_model=16, n_layers=2, n_heads=2, d_ff=24)


def _by_hand(cfg: ModelConfig) -> dict:
    """Parameter counts of the Falcon architecture written out: embeddings, per layer two norms,
    qkv and output projections, a bias-free router (E x d), E experts of width d_ff / k (up doubled
    for SwiGLU), the final norm; the head shares the token embedding when tied."""
    V, T, d, L, E, k = cfg.vocab_size, cfg.context, cfg.d_model, cfg.n_layers, cfg.n_experts, cfg.top_k
    b = 1 if cfg.bias else 0
    w = cfg.d_ff // k
    w_up = 2 * w if cfg.mlp == "swiglu" else w
    norm = d + (d * b if cfg.norm == "layernorm" else 0)
    expert = (d * w_up + w_up * b) + (w * d + d * b)
    layer = 2 * norm + (3 * d * d + 3 * d * b) + (d * d + d * b) + E * d + E * expert
    tok, pos = V * d, (T * d if cfg.position == "learned" else 0)
    head = 0 if cfg.tie_embeddings else V * d
    total = tok + pos + L * layer + norm + head
    lookup = pos + (0 if cfg.tie_embeddings else tok)                # embeddings that are only a lookup
    idle = L * (E - k) * expert
    return dict(total=total, no_emb=total - lookup, active=total - idle, active_no_emb=total - lookup - idle)


CASES = [
    dict(n_experts=8, top_k=2, bias=True),
    dict(n_experts=4, top_k=1, bias=False, norm="rmsnorm", mlp="swiglu", position="rotary"),
    dict(n_experts=3, top_k=2, bias=False, tie_embeddings=False),
    dict(n_experts=1, top_k=1, bias=True),                            # a single expert: all of it is active
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: f"E{o['n_experts']}k{o['top_k']}b{int(o['bias'])}")
def test_parameter_counts_equal_the_count_by_hand(options):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("falcon", **{**TINY, **options})
    model = build(cfg)
    ref = _by_hand(cfg)
    assert model.num_params() == ref["total"]
    assert model.num_params(exclude_embeddings=True) == ref["no_emb"]
    assert model.num_active_params() == ref["active"]
    assert model.num_active_params(exclude_embeddings=True) == ref["active_no_emb"]
    if cfg.n_experts == cfg.top_k:
        assert model.num_active_params() == model.num_params()


def _dense_reference(moe, x: torch.Tensor) -> torch.Tensor:
    """The top-k mixture without capacity in float64, one token at a time: renormalised top-k softmax
    weights times each chosen expert's MLP."""
    B, T, C = x.shape
    xf = x.reshape(B * T, C).double()
    up_w, down_w = moe.up.weight.double(), moe.down.weight.double()
    y = torch.zeros_like(xf)
    for n in range(B * T):
        probs = (xf[n] @ moe.router.weight.double().T).softmax(-1)
        top_p, top_e = probs.topk(moe.cfg.top_k)
        for p, e in zip(top_p / top_p.sum(), top_e):
            h = F.gelu(xf[n] @ up_w[e] + moe.up.bias[e].double())
            y[n] += p * (h @ down_w[e] + moe.down.bias[e].double())
    return y.view(B, T, C)


def test_mixture_in_bf16_returns_bf16_close_to_the_reference():
    """A bf16 model's MoE layer gives its output in the input's dtype (bf16: the residual stream keeps
    its dtype), with the values of the dense float64 mixture to bf16 precision."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("falcon", **TINY, eval_capacity_factor=8.0)   # no drops
    moe = build(cfg).blocks[0].mlp.eval()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(2, 5, cfg.d_model, generator=torch.Generator().manual_seed(1))
    ref = _dense_reference(moe, x)
    moe16 = moe.to(torch.bfloat16)
    with torch.no_grad():
        y, _, _ = moe16(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert ref.abs().max() > 0.5
    torch.testing.assert_close(y.double(), ref.to(torch.bfloat16).double(), atol=0.05, rtol=0.05)
