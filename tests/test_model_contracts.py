"""The shared blocks and the GPT forward against references written out here in float64: the closed forms
of rotary and sinusoidal positions, GELU (exact and tanh), ReLU, SwiGLU, LayerNorm / RMSNorm, causal
attention (with keys outnumbering queries, explicit masks, dropout), a whole pre-norm transformer read off
the state dict; the config's refusals at their boundaries; the FLOPs count and the description."""

import math
import os
import warnings

import pytest
import torch

from models import ModelConfig, build, describe, flops_per_token
from models.blocks import CausalSelfAttention, activate, apply_rotary, rotary_table, sinusoidal_table

TINY = dict(vocab_size=37, context=9, d_model=12, n_layers=2, n_heads=3, d_ff=20)


# ---------------------------------------------------------------------------------------------
# References, float64, written from the papers' formulas (nothing from models/)


def _rope_ref(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE (GPT-NeoX / HF Llama): dimension i pairs with i + hd/2 and turns by the angle
    pos * theta^(-2i/hd), written as a complex product. x (..., T, hd)."""
    x = x.double()
    hd = x.size(-1)
    half = hd // 2
    freq = torch.tensor([theta ** (-2.0 * i / hd) for i in range(half)], dtype=torch.float64)
    angle = positions.double()[:, None] * freq[None, :]                       # (T, hd/2)
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1)


def _sinusoid_ref(context: int, dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), one entry at a time."""
    table = torch.zeros(context, dim, dtype=torch.float64)
    for pos in range(context):
        for j in range(dim):
            i = j // 2
            angle = pos / 10000.0 ** (2 * i / dim)
            table[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table


def _gelu_erf(h):
    return 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))


def _gelu_tanh(h):
    return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h ** 3)))


def _act_ref(h: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "swiglu":
        gate, up = h[..., : h.size(-1) // 2], h[..., h.size(-1) // 2:]
        return gate / (1.0 + torch.exp(-gate)) * up
    if kind == "relu":
        return torch.where(h > 0, h, torch.zeros_like(h))
    return _gelu_tanh(h) if kind == "gelu_tanh" else _gelu_erf(h)


def _attn_ref(q, k, v, scale: float, allowed: torch.Tensor):
    """softmax(q kᵀ * scale, masked) v with its probabilities; allowed (Tq, Tk) True = may attend."""
    scores = (q.double() @ k.double().transpose(-2, -1)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.exp() / scores.exp().sum(-1, keepdim=True)
    return probs @ v.double(), probs


def _bottom_right_causal(t_q: int, t_k: int) -> torch.Tensor:
    """Query i (the (t_k - t_q + i)-th position) may see keys 0..t_k - t_q + i."""
    return torch.tensor([[j <= t_k - t_q + i for j in range(t_k)] for i in range(t_q)])


def _norm_ref(x, sd, prefix, cfg):
    w = sd[f"{prefix}.weight"]
    if cfg.norm == "rmsnorm":
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + cfg.norm_eps) * w
    return y + sd[f"{prefix}.bias"] if f"{prefix}.bias" in sd else y


def _linear_ref(x, sd, prefix):
    y = x @ sd[f"{prefix}.weight"].T
    return y + sd[f"{prefix}.bias"] if f"{prefix}.bias" in sd else y


def _gpt_ref(model, tokens: torch.Tensor):
    """Logits and each layer's attention probabilities of a pre-norm GPT, from its state dict in float64."""
    cfg = model.cfg
    sd = {k: v.double() for k, v in model.state_dict().items()}
    B, T = tokens.shape
    H, hd = cfg.n_heads, cfg.d_model // cfg.n_heads
    x = sd["tok_emb.weight"][tokens]
    if cfg.position == "learned":
        x = x + sd["pos_emb.weight"][:T]
    elif cfg.position == "sinusoidal":
        x = x + _sinusoid_ref(T, cfg.d_model)
    probs_per_layer = []
    for i in range(cfg.n_layers):
        p = f"blocks.{i}"
        h = _norm_ref(x, sd, f"{p}.norm1", cfg)
        q, k, v = _linear_ref(h, sd, f"{p}.attn.wqkv").split(cfg.d_model, dim=-1)
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
        if cfg.position == "rotary":
            q, k = _rope_ref(q, torch.arange(T), cfg.rope_theta), _rope_ref(k, torch.arange(T), cfg.rope_theta)
        y, probs = _attn_ref(q, k, v, 1 / math.sqrt(hd), _bottom_right_causal(T, T))
        probs_per_layer.append(probs)
        x = x + _linear_ref(y.transpose(1, 2).reshape(B, T, cfg.d_model), sd, f"{p}.attn.wo")
        h = _norm_ref(x, sd, f"{p}.norm2", cfg)
        x = x + _linear_ref(_act_ref(_linear_ref(h, sd, f"{p}.mlp.up"), cfg.mlp), sd, f"{p}.mlp.down")
    logits = _norm_ref(x, sd, "norm_f", cfg) @ sd["tok_emb.weight" if cfg.tie_embeddings else "lm_head.weight"].T
    return logits, probs_per_layer


def _tiny_gpt(seed=0, **overrides):
    """A tiny GPT with weights far from init (std 0.3, norm gains around 1, non-zero biases), so a wrong
    sign, scale or position shows in the logits."""
    torch.manual_seed(seed)
    model = build(ModelConfig.from_preset("baseline", **{**TINY, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    return model


def _tokens(B=2, T=9, seed=1):
    return torch.randint(0, TINY["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Tables and activations


@pytest.mark.parametrize("head_dim,theta", [(8, 10000.0), (6, 500.0)])
def test_rotary_table_is_the_rope_angle_table(head_dim, theta):
    """cos/sin (T, hd) of the angles pos * theta^(-2i/hd), the angle of pair i repeated in both halves."""
    T = 11
    cos, sin = rotary_table(head_dim, T, theta)
    half = head_dim // 2
    angle = torch.tensor([[pos * theta ** (-2.0 * i / head_dim) for i in range(half)] for pos in range(T)],
                         dtype=torch.float64)
    angle = torch.cat([angle, angle], dim=-1)
    torch.testing.assert_close(cos.double(), angle.cos(), atol=2e-6, rtol=0)
    torch.testing.assert_close(sin.double(), angle.sin(), atol=2e-6, rtol=0)


def test_rotary_table_default_theta_is_10000():
    """RoPE's base (Su et al.; Llama's rope_theta) when none is given."""
    cos, sin = rotary_table(8, 7)
    ref_cos, ref_sin = rotary_table(8, 7, 10000.0)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    assert not torch.allclose(sin, rotary_table(8, 7, 5000.0)[1])        # the base shows in the table


def test_apply_rotary_turns_each_pair_by_its_angle():
    """x rotated with the table equals the complex-product RoPE, for positions not starting at 0."""
    x = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(4, 9)
    cos, sin = rotary_table(8, 16, 10000.0)
    got = apply_rotary(x, cos[positions], sin[positions])
    torch.testing.assert_close(got.double(), _rope_ref(x, positions, 10000.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dim", [8, 7])                                      # odd dim: the last column is sin
def test_sinusoidal_table_is_attention_is_all_you_need(dim):
    torch.testing.assert_close(sinusoidal_table(13, dim).double(), _sinusoid_ref(13, dim), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gelu", "gelu_tanh", "relu", "swiglu"])
def test_activations_equal_their_formulas(kind):
    """GELU with erf; GPT-2's tanh approximation; ReLU; SwiGLU = silu(first half) * second half.
    Inputs in [-4, 4], where erf and tanh GELU differ by up to ~1e-3."""
    h = torch.linspace(-4, 4, 96).view(2, 3, 16)
    torch.testing.assert_close(activate(h, kind).double(), _act_ref(h.double(), kind), atol=2e-6, rtol=1e-5)
    assert (_gelu_erf(h.double()) - _gelu_tanh(h.double())).abs().max() > 1e-4  # the two GELUs differ here


# ---------------------------------------------------------------------------------------------
# Attention


def _attn_module(**overrides):
    torch.manual_seed(0)
    return CausalSelfAttention(ModelConfig.from_preset("baseline", **{**TINY, **overrides}))


def _qkv(t_q, t_k, H=3, hd=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    q = 2 * torch.randn(2, H, t_q, hd, generator=g)
    k = 2 * torch.randn(2, H, t_k, hd, generator=g)
    v = torch.randn(2, H, t_k, hd, generator=g)
    return q, k, v


def _merged(y):  # (B, H, T, hd) -> (B, T, H * hd)
    return y.transpose(1, 2).reshape(y.size(0), y.size(2), -1)


@pytest.mark.parametrize("t_q,t_k", [(6, 6), (3, 7), (1, 5)])            # t_q = 3 = n_heads with a longer prefix
def test_attention_weights_and_attend_equal_masked_softmax(t_q, t_k):
    """Scores q kᵀ/√hd, causal with the queries as the last t_q positions, softmax over the keys; attend
    merges the heads of probs @ v."""
    attn = _attn_module().eval()
    q, k, v = _qkv(t_q, t_k)
    ref_y, ref_p = _attn_ref(q, k, v, 1 / math.sqrt(4), _bottom_right_causal(t_q, t_k))
    torch.testing.assert_close(attn.attention_weights(q, k).double(), ref_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.attend(q, k, v).double(), _merged(ref_y), atol=1e-5, rtol=1e-5)


def test_attend_obeys_an_explicit_mask_of_square_shape():
    """A given mask (here not causal: some past keys hidden, a future one shown) is what attention uses,
    also when queries and keys are equally many."""
    attn = _attn_module().eval()
    q, k, v = _qkv(5, 5)
    allowed = torch.rand(5, 5, generator=torch.Generator().manual_seed(7)) > 0.4
    allowed |= torch.eye(5, dtype=torch.bool)
    assert not torch.equal(allowed, _bottom_right_causal(5, 5))
    ref_y, ref_p = _attn_ref(q, k, v, 0.5, allowed)
    torch.testing.assert_close(attn.attend(q, k, v, allowed).double(), _merged(ref_y), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.attention_weights(q, k, allowed).double(), ref_p, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("explicit_mask", [False, True])
def test_attention_dropout_only_in_training(explicit_mask):
    """model.dropout drops attention probabilities in training (outputs change from the dropout-free
    ones); in eval the output is the plain attention, whichever path (is_causal or a mask) runs."""
    attn = _attn_module(dropout=0.5)
    q, k, v = _qkv(6, 6)
    mask = _bottom_right_causal(6, 6) if explicit_mask else None
    ref = _merged(_attn_ref(q, k, v, 0.5, _bottom_right_causal(6, 6))[0])
    torch.manual_seed(0)
    trained = attn.train().attend(q, k, v, mask)
    assert (trained.double() - ref).abs().max() > 0.1
    torch.testing.assert_close(attn.eval().attend(q, k, v, mask).double(), ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The whole model


OPTIONS = [
    dict(position="learned", norm="layernorm", mlp="gelu", bias=True),
    dict(position="rotary", norm="rmsnorm", mlp="swiglu", bias=False, rope_theta=100.0),
    dict(position="sinusoidal", norm="layernorm", mlp="gelu_tanh", bias=True),
    dict(position="rotary", norm="layernorm", mlp="relu", bias=True, tie_embeddings=False),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"{o['position']}-{o['norm']}-{o['mlp']}")
def test_gpt_logits_and_attention_equal_the_written_out_transformer(options):
    """Pre-norm residual blocks x + attn(norm1(x)), x + mlp(norm2(x)), each position's encoding, the final
    norm and the head: logits and every layer's attention probabilities against the float64 reference."""
    model = _tiny_gpt(**options)
    tokens = _tokens()
    ref_logits, ref_probs = _gpt_ref(model, tokens)
    with torch.no_grad():
        logits = model(tokens).logits
        probs = [model.attention_probs(tokens, layer) for layer in range(model.cfg.n_layers)]
    assert ref_logits.std() > 0.5                                       # far from uniform
    torch.testing.assert_close(logits.double(), ref_logits, atol=2e-4, rtol=1e-4)
    for got, ref in zip(probs, ref_probs):
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-4)


def _nll_ref(logits, targets):
    logits = logits.double()
    valid = targets != -100
    lse = logits.exp().sum(-1).log()
    return torch.where(valid, lse - logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0], 0.0)


@pytest.mark.parametrize("loss_chunk", [0, 5])
def test_per_token_loss_is_the_nll_of_each_target(loss_chunk):
    """reduction="none": each target's NLL (B, T), 0 where the target is -100, plain or fused in chunks."""
    model = _tiny_gpt(position="rotary", norm="rmsnorm", mlp="swiglu", bias=False)
    tokens, targets = _tokens(), _tokens(seed=5)
    targets[0, 2:6] = -100
    ref_logits, _ = _gpt_ref(model, tokens)
    with torch.no_grad():
        per_token = model(tokens, targets, loss_chunk=loss_chunk, reduction="none").loss
        mean = model(tokens, targets, loss_chunk=loss_chunk).loss
    nll = _nll_ref(ref_logits, targets)
    torch.testing.assert_close(per_token.double(), nll, atol=2e-4, rtol=1e-4)
    assert mean.item() == pytest.approx(nll[targets != -100].mean().item(), rel=1e-4)


def test_forward_from_embeddings_equals_forward():
    """Given the token embeddings, the forward gives the same logits and mean loss as from the tokens."""
    model = _tiny_gpt(position="rotary")
    tokens, targets = _tokens(), _tokens(seed=5)
    with torch.no_grad():
        out = model(tokens, targets)
        got = model.forward_from_embeddings(model.embed_tokens(tokens), targets)
    assert got.logits is not None
    torch.testing.assert_close(got.logits, out.logits)
    assert got.loss.shape == () and got.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_loss_stats_log_the_aux_loss_and_in_training_the_cross_entropy():
    """A family with an auxiliary loss logs aux_loss, and ce_loss in training only (their sum is the
    objective); a family without one logs nothing."""
    from run_stats import values
    torch.manual_seed(0)
    falcon = build(ModelConfig.from_preset("falcon", **TINY))
    tokens, targets = _tokens(), _tokens(seed=5)
    out = falcon(tokens, targets)
    train = values(out.loss_stats(training=True))
    assert set(train) == {"aux_loss", "ce_loss"}
    assert float(train["aux_loss"]) == pytest.approx(out.aux_loss.item())
    assert float(train["ce_loss"]) == pytest.approx(out.loss.item())
    assert float(train["aux_loss"]) + float(train["ce_loss"]) == pytest.approx(out.objective.item())
    assert set(values(out.loss_stats(training=False))) == {"aux_loss"}
    assert _tiny_gpt()(tokens, targets).loss_stats(training=True) == {}


# ---------------------------------------------------------------------------------------------
# Word vectors


def _vectors(found_rows, scale=5.0):
    V, d = TINY["vocab_size"], TINY["d_model"]
    vectors = scale * torch.randn(V, d, generator=torch.Generator().manual_seed(3))
    found = torch.zeros(V, dtype=torch.bool)
    found[list(found_rows)] = True
    return vectors, found


@pytest.mark.parametrize("n_found", [0, 1, 2, 20])                  # one word: the std of its values
def test_word_vectors_fill_found_rows_and_draw_the_rest_on_their_scale(n_found):
    """Found rows are the vectors; missing rows N(0, sigma^2), sigma the std of the found vectors (0.02
    when there are none to measure); the embedding stays trainable unless frozen."""
    torch.manual_seed(0)
    model = build(ModelConfig.from_preset("baseline", **TINY))
    vectors, found = _vectors(range(n_found))
    model.init_token_embeddings(vectors, found)
    w = model.tok_emb.weight.detach()
    assert model.tok_emb.weight.requires_grad                            # not frozen by default
    torch.testing.assert_close(w[found], vectors[found])
    sigma = vectors[found].std().item() if n_found else 0.02
    assert w[~found].std().item() == pytest.approx(sigma, rel=0.15)
    assert torch.isfinite(w).all()


def test_word_vectors_found_may_be_given_as_zeros_and_ones():
    """`found` as 0/1 integers is a mask like a bool tensor."""
    torch.manual_seed(0)
    model = build(ModelConfig.from_preset("baseline", **TINY))
    vectors, found = _vectors(range(5, 30))
    model.init_token_embeddings(vectors, found.long().tolist())
    torch.testing.assert_close(model.tok_emb.weight.detach()[found], vectors[found])


# ---------------------------------------------------------------------------------------------
# Config refusals, FLOPs, description


def _cfg(preset="baseline", **overrides):
    return ModelConfig.from_preset(preset, **{**TINY, **overrides})


@pytest.mark.parametrize("key", ["context", "d_model", "n_layers", "n_heads", "d_ff", "vocab_size"])
def test_sizes_must_be_positive(key):
    with pytest.raises(ValueError, match=f"model.{key}"):
        _cfg(**{key: 0})


@pytest.mark.parametrize("top_k,n_experts,ok", [(1, 4, True), (4, 4, True), (2, 8, True), (0, 4, False),
                                                (5, 4, False)])
def test_top_k_between_one_and_the_number_of_experts(top_k, n_experts, ok):
    """Switch routing (top-1) and every expert active (top_k = n_experts) are valid mixtures."""
    if ok:
        assert _cfg("falcon", top_k=top_k, n_experts=n_experts).top_k == top_k
    else:
        with pytest.raises(ValueError, match="top_k"):
            _cfg("falcon", top_k=top_k, n_experts=n_experts)


@pytest.mark.parametrize("train,eval_,ok", [(1.0, None, True), (0.5, 0.5, True), (1.25, 1.0, True),
                                            (0.0, None, False), (1.0, 0.0, False), (-1.0, 2.0, False)])
def test_capacity_factors_must_be_positive(train, eval_, ok):
    """Any positive factor, below 1 too (it drops tokens on purpose); zero or negative is refused."""
    if ok:
        _cfg("falcon", capacity_factor=train, eval_capacity_factor=eval_)
    else:
        with pytest.raises(ValueError, match="capacity_factor"):
            _cfg("falcon", capacity_factor=train, eval_capacity_factor=eval_)


@pytest.mark.parametrize("dropout,ok", [(0.0, True), (0.9, True), (1.0, False), (1.5, False), (-0.1, False)])
def test_dropout_in_zero_one(dropout, ok):
    if ok:
        assert _cfg(dropout=dropout).dropout == dropout
    else:
        with pytest.raises(ValueError, match="dropout"):
            _cfg(dropout=dropout)


def test_odd_head_dim_is_refused_for_rotary_only():
    """Rotary turns pairs of dimensions; learned and sinusoidal positions take any head width."""
    for position in ("learned", "sinusoidal"):
        assert _cfg(position=position, d_model=9, n_heads=3).head_dim == 3
    with pytest.raises(ValueError, match="rotary"):
        _cfg(position="rotary", d_model=9, n_heads=3)


def test_old_attention_name_loads_with_a_deprecation_warning():
    """attention=head_mlp (before the rename) becomes head_linear_silu, with a DeprecationWarning that
    names both."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = ModelConfig(preset="condor", attention="head_mlp", n_layers=1, n_heads=2, d_ff=128)
    assert cfg.attention == "head_linear_silu"
    [w] = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert "head_mlp" in str(w.message) and "head_linear_silu" in str(w.message)
    if "MUTANT_UNDER_TEST" not in os.environ:  # a mutation run's trampoline adds frames between the two
        assert w.filename == __file__  # points at the line that made the config, not at dataclass internals


def test_flops_per_token_is_nanogpt_estimate():
    """nanoGPT's estimate_mfu: 6N for the weights' forward and backward, plus per layer and head the
    QKᵀ and AV products over the context, 2 * 2 * T * hd FLOPs forward, times 3 with the backward."""
    cfg = _cfg(n_layers=3, n_heads=2, d_model=10, context=7)           # L, H, hd, T all different
    n = 12345
    L, H, hd, T = 3, 2, 5, 7
    assert flops_per_token(cfg, n) == 6 * n + L * H * 3 * (2 * 2 * T * hd)


def test_describe_lists_the_choices_and_the_family_s():
    cfg = _cfg("falcon", top_k=1, n_experts=4, position="rotary", norm="rmsnorm", mlp="swiglu")
    assert describe(cfg) == "falcon (rotary positions, rmsnorm, swiglu, top-1 of 4 experts)"
    assert describe(_cfg()) == "baseline (learned positions, layernorm, gelu)"
