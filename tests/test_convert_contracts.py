"""models.convert against references written here: HF GPT-2 / HF Llama / Meta Llama forwards computed by hand
from the exported tensors, the rotary row permutation by explicit index arithmetic, exact key sets, config
fields read off by name, and every refusal with its message. Tiny random models on CPU."""

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import models
import models.convert as convert
from models import ModelConfig
from models.convert import ConversionError

SIZES = dict(vocab_size=23, context=8, d_model=16, n_layers=2, n_heads=4, d_ff=24)
SPEC = {"kind": "stub", "path": "tok.json", "vocab_size": 23, "sha256": "0" * 8}


def _model(preset="llama", **extra):
    """A tiny model of the preset with every parameter moved off its init (norm weights off 1, biases off 0)."""
    cfg = ModelConfig.from_preset(preset, **{**SIZES, **extra})
    torch.manual_seed(0)
    model = models.build(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _ckpt(model, spec=SPEC):
    return {"model": model.state_dict(), "config": {"model": dict(model.cfg.__dict__)}, "tokenizer": dict(spec)}


def _tokens(T=8, seed=1):
    return torch.randint(0, SIZES["vocab_size"], (2, T), generator=torch.Generator().manual_seed(seed))


def _logits(model, x):
    with torch.no_grad():
        return model(x)[0]


def _transformers():
    return pytest.importorskip("transformers")


# ---------------------------------------------------------------------------------------------
# Reference forwards written from the published architectures, reading the exported tensors
# ---------------------------------------------------------------------------------------------

def _attend(q, k, v):
    """Causal softmax attention of (B, H, T, hd) tensors, 1/sqrt(hd) scaling."""
    T, hd = q.shape[2], q.shape[3]
    mask = torch.full((T, T), float("-inf")).triu(1)
    return ((q @ k.transpose(2, 3)) / math.sqrt(hd) + mask).softmax(-1) @ v


def _gpt2_reference(w, n_heads, eps, tanh, tokens):
    """HF GPT-2 (modeling_gpt2): Conv1D y = x @ W + b with W stored (in, out), LayerNorm, GELU."""
    B, T = tokens.shape
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], w[p + ".weight"], w[p + ".bias"], eps)
    conv = lambda x, p: x @ w[p + ".weight"] + w[p + ".bias"]
    h = w["transformer.wte.weight"][tokens] + w["transformer.wpe.weight"][:T]
    d = h.shape[-1]
    hd = d // n_heads
    i = 0
    while f"transformer.h.{i}.ln_1.weight" in w:
        p = f"transformer.h.{i}."
        qkv = conv(ln(h, p + "ln_1"), p + "attn.c_attn").split(d, -1)
        q, k, v = (t.view(B, T, n_heads, hd).transpose(1, 2) for t in qkv)                  # (B, H, T, hd)
        h = h + conv(_attend(q, k, v).transpose(1, 2).reshape(B, T, d), p + "attn.c_proj")
        m = F.gelu(conv(ln(h, p + "ln_2"), p + "mlp.c_fc"), approximate="tanh" if tanh else "none")
        h = h + conv(m, p + "mlp.c_proj")
        i += 1
    return ln(h, "transformer.ln_f") @ w["lm_head.weight"].T


def _llama_reference(layer, top, n_layers, n_heads, eps, theta, interleaved, tokens):
    """Llama: RMSNorm, rotary on q/k, causal attention, SwiGLU down(silu(gate x) * up x).

    interleaved=False is HF's rotate-half (dims i and i + hd/2 share angle i); True is Meta's reference,
    which rotates the complex pairs (2i, 2i + 1). layer(i, name) / top(name) give weights by role:
    q k v o gate up down attn_norm ffn_norm / emb norm head."""
    B, T = tokens.shape
    rms = lambda x, g: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g
    h = top("emb")[tokens]
    d = h.shape[-1]
    hd = d // n_heads
    angles = torch.outer(torch.arange(T).float(), theta ** (-torch.arange(0, hd, 2).float() / hd))  # (T, hd/2)

    def rotate(x):                                                      # (B, T, H, hd)
        cos, sin = angles.cos()[None, :, None], angles.sin()[None, :, None]
        if interleaved:
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(x.shape)
        a, b = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)

    for i in range(n_layers):
        x = rms(h, layer(i, "attn_norm"))
        q, k, v = ((x @ layer(i, n).T).view(B, T, n_heads, hd) for n in "qkv")
        out = _attend(rotate(q).transpose(1, 2), rotate(k).transpose(1, 2), v.transpose(1, 2))
        h = h + out.transpose(1, 2).reshape(B, T, d) @ layer(i, "o").T
        x = rms(h, layer(i, "ffn_norm"))
        h = h + (F.silu(x @ layer(i, "gate").T) * (x @ layer(i, "up").T)) @ layer(i, "down").T
    return rms(h, top("norm")) @ top("head").T


HF_LLAMA_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                  "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
                  "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
META_NAMES = {"q": "attention.wq", "k": "attention.wk", "v": "attention.wv", "o": "attention.wo",
              "gate": "feed_forward.w1", "up": "feed_forward.w3", "down": "feed_forward.w2",
              "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}


def _hf_llama_logits(cfg, w, tokens):
    top = {"emb": "model.embed_tokens", "norm": "model.norm", "head": "lm_head"}
    return _llama_reference(lambda i, n: w[f"model.layers.{i}.{HF_LLAMA_NAMES[n]}.weight"],
                            lambda n: w[top[n] + ".weight"],
                            cfg.n_layers, cfg.n_heads, cfg.norm_eps, cfg.rope_theta, False, tokens)


def _meta_logits(params, w, tokens):
    return _llama_reference(lambda i, n: w[f"layers.{i}.{META_NAMES[n]}.weight"],
                            lambda n: w[{"emb": "tok_embeddings", "norm": "norm", "head": "output"}[n] + ".weight"],
                            params["n_layers"], params["n_heads"], params["norm_eps"], params["rope_theta"], True,
                            tokens)


def _interleave_by_index(w, n_heads):
    """Meta's row 2i + j of a head is HF's row j * hd/2 + i of that head (pair (2i, 2i+1) <- (i, i + hd/2))."""
    hd = w.shape[0] // n_heads
    out = torch.empty_like(w)
    for h in range(n_heads):
        for i in range(hd // 2):
            for j in range(2):
                out[h * hd + 2 * i + j] = w[h * hd + j * (hd // 2) + i]
    return out


def _llama_hf_keys(n_layers, head=True):
    keys = {"model.embed_tokens.weight", "model.norm.weight"} | ({"lm_head.weight"} if head else set())
    return keys | {f"model.layers.{i}.{n}.weight" for i in range(n_layers) for n in HF_LLAMA_NAMES.values()}


# ---------------------------------------------------------------------------------------------
# hf_architecture
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,extra,arch", [
    ("baseline", {}, "gpt2"), ("baseline", {"mlp": "gelu_tanh", "tie_embeddings": False}, "gpt2"),
    ("condor", {"attention": "standard"}, "gpt2"), ("llama", {}, "llama"), ("gpt2_125m", {}, "llama"),
    ("llama", {"tie_embeddings": True}, "llama")])
def test_hf_architecture_names_the_family_that_computes_the_layout(preset, extra, arch):
    """hf_architecture: learned/layernorm/gelu(+tanh)/bias -> gpt2, rotary/rmsnorm/swiglu/no bias -> llama
    (reference: the module docstring's table)."""
    assert convert.hf_architecture(ModelConfig.from_preset(preset, **{**SIZES, **extra})) == arch


@pytest.mark.parametrize("preset,extra,says", [
    ("baseline", {"mlp": "swiglu"}, "mlp=swiglu"), ("baseline", {"mlp": "relu"}, "mlp=relu"),
    ("baseline", {"norm": "rmsnorm"}, "norm=rmsnorm"), ("baseline", {"bias": False}, "bias=False"),
    ("baseline", {"position": "rotary"}, "position=rotary"), ("baseline", {"position": "sinusoidal"}, "sinusoidal"),
    ("llama", {"bias": True}, "bias=True"), ("llama", {"mlp": "gelu"}, "mlp=gelu"),
    ("llama", {"norm": "layernorm"}, "norm=layernorm"), ("llama", {"position": "learned"}, "position=learned")])
def test_hf_architecture_refuses_a_mixed_layout_naming_it(preset, extra, says):
    """hf_architecture: any one choice off both HF layouts is refused, the message naming the choice and
    the format asked for (reference: GPT-2 and Llama each fix all four choices)."""
    cfg = ModelConfig.from_preset(preset, **{**SIZES, **extra})
    with pytest.raises(ConversionError, match=says) as e:
        convert.hf_architecture(cfg, "Some format")
    assert str(e.value).startswith("Some format has no model with")
    with pytest.raises(ConversionError, match="^Hugging Face has no"):
        convert.hf_architecture(cfg)


@pytest.mark.parametrize("preset,extra,says", [
    ("falcon", {}, "mixture-of-experts"), ("condor", {"attention": "self_score"}, "second attention-score"),
    ("condor", {"attention": "head_linear_silu"}, "per-head Linear")])
def test_hf_architecture_refuses_what_the_family_record_says_hf_lacks(preset, extra, says):
    """hf_architecture: the family's missing_in_hf is refused first, naming it and pointing to safetensors
    (reference: the family records)."""
    cfg = ModelConfig.from_preset(preset, **{**SIZES, **extra})
    with pytest.raises(ConversionError, match=says) as e:
        convert.hf_architecture(cfg, "Fmt")
    assert str(e.value).startswith("Fmt has no") and "safetensors" in str(e.value)


# ---------------------------------------------------------------------------------------------
# to_hf_state_dict / from_hf_state_dict (no transformers needed)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tie", [True, False])
def test_llama_hf_state_dict_is_the_split_of_ours_and_computes_hf_llamas_logits(tie):
    """to_hf_state_dict (Llama): exact HF key set; q/k/v the row thirds of wqkv, gate/up the halves of
    mlp.up, the rest renamed; a hand-written HF Llama forward (rotate-half rotary, theta and eps not
    default) on those tensors gives our logits."""
    model = _model("llama", tie_embeddings=tie, rope_theta=300.0, norm_eps=0.05)
    cfg, sd = model.cfg, model.state_dict()
    hf = convert.to_hf_state_dict(cfg, sd)
    assert set(hf) == _llama_hf_keys(2)
    d, f = cfg.d_model, cfg.d_ff
    for i in range(2):
        o, t = f"blocks.{i}.", f"model.layers.{i}."
        wqkv, up = sd[o + "attn.wqkv.weight"], sd[o + "mlp.up.weight"]
        expect = {"self_attn.q_proj": wqkv[:d], "self_attn.k_proj": wqkv[d:2 * d], "self_attn.v_proj": wqkv[2 * d:],
                  "mlp.gate_proj": up[:f], "mlp.up_proj": up[f:], "self_attn.o_proj": sd[o + "attn.wo.weight"],
                  "mlp.down_proj": sd[o + "mlp.down.weight"], "input_layernorm": sd[o + "norm1.weight"],
                  "post_attention_layernorm": sd[o + "norm2.weight"]}
        for name, tensor in expect.items():
            assert torch.equal(hf[t + name + ".weight"], tensor), name
    assert torch.equal(hf["model.embed_tokens.weight"], sd["tok_emb.weight"])
    assert torch.equal(hf["model.norm.weight"], sd["norm_f.weight"])
    assert torch.equal(hf["lm_head.weight"], sd["lm_head.weight"])
    x = _tokens()
    torch.testing.assert_close(_hf_llama_logits(cfg, hf, x), _logits(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extra", [{}, {"mlp": "gelu_tanh", "tie_embeddings": False, "norm_eps": 0.05}])
def test_gpt2_hf_state_dict_transposes_conv1d_and_computes_gpt2s_logits(extra):
    """to_hf_state_dict (GPT-2): exact HF key set, Linear weights transposed to Conv1D (in, out), norms and
    biases renamed as they are; a hand-written GPT-2 forward (x @ W + b) on those tensors gives our logits."""
    model = _model("baseline", **extra)
    cfg, sd = model.cfg, model.state_dict()
    hf = convert.to_hf_state_dict(cfg, sd)
    blocks = ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert set(hf) == {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                       "transformer.ln_f.bias", "lm_head.weight"} | {
        f"transformer.h.{i}.{b}.{p}" for i in range(2) for b in blocks for p in ("weight", "bias")}
    assert hf["transformer.h.1.attn.c_attn.weight"].shape == (16, 48)
    assert torch.equal(hf["transformer.h.1.attn.c_attn.weight"], sd["blocks.1.attn.wqkv.weight"].T)
    assert torch.equal(hf["transformer.h.0.mlp.c_fc.weight"], sd["blocks.0.mlp.up.weight"].T)
    assert torch.equal(hf["transformer.h.0.mlp.c_proj.weight"], sd["blocks.0.mlp.down.weight"].T)
    assert torch.equal(hf["transformer.h.0.attn.c_proj.weight"], sd["blocks.0.attn.wo.weight"].T)
    assert torch.equal(hf["transformer.h.1.ln_2.weight"], sd["blocks.1.norm2.weight"])
    assert torch.equal(hf["transformer.h.1.ln_1.bias"], sd["blocks.1.norm1.bias"])
    assert torch.equal(hf["transformer.h.1.mlp.c_fc.bias"], sd["blocks.1.mlp.up.bias"])
    assert torch.equal(hf["transformer.wpe.weight"], sd["pos_emb.weight"])
    assert torch.equal(hf["transformer.ln_f.bias"], sd["norm_f.bias"])
    x = _tokens()
    ref = _gpt2_reference(hf, cfg.n_heads, cfg.norm_eps, cfg.mlp == "gelu_tanh", x)
    torch.testing.assert_close(ref, _logits(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset,extra", [("llama", {}), ("llama", {"tie_embeddings": True}), ("baseline", {}),
                                          ("baseline", {"tie_embeddings": False})])
def test_hf_state_dict_round_trip_is_exact_and_owns_its_tensors(preset, extra):
    """to_hf_state_dict then from_hf_state_dict: the same names and tensors (reference: the original state
    dict); each direction returns contiguous copies, so writing into them leaves the source alone."""
    model = _model(preset, **extra)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    hf = convert.to_hf_state_dict(model.cfg, sd)
    back = convert.from_hf_state_dict(model.cfg, hf)
    assert back.keys() == sd.keys()
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
        assert back[k].is_contiguous()
    for t in list(hf.values()) + list(back.values()):
        assert t.is_contiguous()
        t.add_(1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k
    for k, v in back.items():                                   # both directions copied: hf moved once, back once
        assert torch.equal(v, sd[k] + 1) or (model.cfg.tie_embeddings and k in ("lm_head.weight", "tok_emb.weight")), k


def test_from_hf_state_dict_reads_the_head_only_when_untied():
    """from_hf_state_dict: a tied model's head is the embedding (HF may omit lm_head, or hold anything
    there); an untied model's head is HF's lm_head (reference: tie_word_embeddings semantics)."""
    tied = _model("llama", tie_embeddings=True)
    hf = convert.to_hf_state_dict(tied.cfg, tied.state_dict())
    del hf["lm_head.weight"]
    back = convert.from_hf_state_dict(tied.cfg, hf)
    assert torch.equal(back["lm_head.weight"], hf["model.embed_tokens.weight"])
    untied = _model("llama")
    hf = convert.to_hf_state_dict(untied.cfg, untied.state_dict())
    back = convert.from_hf_state_dict(untied.cfg, hf)
    assert torch.equal(back["lm_head.weight"], untied.state_dict()["lm_head.weight"])
    assert not torch.equal(back["lm_head.weight"], back["tok_emb.weight"])
    gpt = _model("baseline")
    hf = convert.to_hf_state_dict(gpt.cfg, gpt.state_dict())
    hf["lm_head.weight"] = torch.zeros_like(hf["lm_head.weight"])
    assert torch.equal(convert.from_hf_state_dict(gpt.cfg, hf)["lm_head.weight"], hf["transformer.wte.weight"])


def test_hf_state_dict_refuses_a_model_hf_cannot_compute():
    """to_hf_state_dict / from_hf_state_dict: a falcon (MoE) is refused, not renamed (reference: the record)."""
    model = _model("falcon")
    with pytest.raises(ConversionError, match="mixture-of-experts"):
        convert.to_hf_state_dict(model.cfg, model.state_dict())
    with pytest.raises(ConversionError, match="mixture-of-experts"):
        convert.from_hf_state_dict(model.cfg, {})


# ---------------------------------------------------------------------------------------------
# Rotary permutation and Meta Llama
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_heads,hd", [(1, 2), (2, 4), (3, 8)])
def test_rotary_permutation_matches_the_index_arithmetic_and_inverts(n_heads, hd):
    """_interleave_rotary: Meta row h*hd + 2i + j = HF row h*hd + j*hd/2 + i (reference: a loop over the
    indices); _deinterleave_rotary undoes it."""
    w = torch.arange(n_heads * hd * 3, dtype=torch.float32).view(n_heads * hd, 3)
    out = convert._interleave_rotary(w, n_heads)
    assert torch.equal(out, _interleave_by_index(w, n_heads))
    assert torch.equal(convert._deinterleave_rotary(out, n_heads), w)
    assert torch.equal(convert._interleave_rotary(convert._deinterleave_rotary(w, n_heads), n_heads), w)


def _meta_width(params):
    """The FFN width Meta's llama/model.py FeedForward derives from params.json."""
    hidden = int(2 * (4 * params["dim"]) / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    m = params["multiple_of"]
    return m * ((hidden + m - 1) // m)


@pytest.mark.parametrize("tie", [False, True])
def test_meta_export_is_metas_layout_and_computes_metas_logits(tie):
    """to_meta: params.json fields named as Meta's ModelArgs (no max_seq_len, no n_kv_heads), the exact
    consolidated key set, wq/wk rows interleaved per head by index arithmetic, the rest renamed, and Meta's
    reference forward (complex interleaved rotary) on them gives our logits."""
    model = _model("llama", tie_embeddings=tie, rope_theta=300.0, norm_eps=0.05)
    cfg, sd = model.cfg, model.state_dict()
    params, w = convert.to_meta(cfg, sd)
    assert set(params) == {"dim", "n_layers", "n_heads", "vocab_size", "norm_eps", "rope_theta", "multiple_of",
                           "ffn_dim_multiplier"}
    assert (params["dim"], params["n_layers"], params["n_heads"], params["vocab_size"]) == (16, 2, 4, 23)
    assert (params["norm_eps"], params["rope_theta"]) == (0.05, 300.0)
    assert _meta_width(params) == 24
    assert set(w) == {"tok_embeddings.weight", "norm.weight", "output.weight"} | {
        f"layers.{i}.{n}.weight" for i in range(2) for n in META_NAMES.values()}
    d = cfg.d_model
    for i in range(2):
        o = f"blocks.{i}."
        wqkv = sd[o + "attn.wqkv.weight"]
        assert torch.equal(w[f"layers.{i}.attention.wq.weight"], _interleave_by_index(wqkv[:d], 4))
        assert torch.equal(w[f"layers.{i}.attention.wk.weight"], _interleave_by_index(wqkv[d:2 * d], 4))
        assert torch.equal(w[f"layers.{i}.attention.wv.weight"], wqkv[2 * d:])
        assert torch.equal(w[f"layers.{i}.feed_forward.w1.weight"], sd[o + "mlp.up.weight"][:24])
        assert torch.equal(w[f"layers.{i}.feed_forward.w3.weight"], sd[o + "mlp.up.weight"][24:])
        assert torch.equal(w[f"layers.{i}.feed_forward.w2.weight"], sd[o + "mlp.down.weight"])
        assert torch.equal(w[f"layers.{i}.attention.wo.weight"], sd[o + "attn.wo.weight"])
        assert torch.equal(w[f"layers.{i}.attention_norm.weight"], sd[o + "norm1.weight"])
        assert torch.equal(w[f"layers.{i}.ffn_norm.weight"], sd[o + "norm2.weight"])
    assert torch.equal(w["tok_embeddings.weight"], sd["tok_emb.weight"])
    assert torch.equal(w["norm.weight"], sd["norm_f.weight"])
    assert torch.equal(w["output.weight"], sd["lm_head.weight"])   # Meta always has its own output matrix
    x = _tokens()
    torch.testing.assert_close(_meta_logits(params, w, x), _logits(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d_model,d_ff", [(16, 24), (16, 1), (8, 100), (32, 86), (64, 171), (512, 1376)])
def test_meta_params_give_back_the_ffn_width_by_metas_formula(d_model, d_ff):
    """to_meta: multiple_of = d_ff and a multiplier whose product with int(8 dim / 3) truncates to d_ff, so
    Meta's round_up(int(multiplier * int(8 dim / 3)), multiple_of) is d_ff, d_ff = 1 included (reference:
    Meta's FeedForward)."""
    cfg = ModelConfig.from_preset("llama", vocab_size=5, context=4, d_model=d_model, n_layers=1, n_heads=2, d_ff=d_ff)
    with torch.device("meta"):
        sd = models.build(cfg).state_dict()
    params, _ = convert.to_meta(cfg, {k: torch.zeros(v.shape) for k, v in sd.items()})
    assert params["multiple_of"] == d_ff and _meta_width(params) == d_ff
    product = params["ffn_dim_multiplier"] * int(8 * d_model / 3)
    assert int(product) == d_ff and product - d_ff > 1e-3          # d_ff itself, away from a rounding edge


@pytest.mark.parametrize("preset,extra,says", [
    ("baseline", {}, "no learned positions, LayerNorm"), ("falcon", {}, "^Meta's Llama format has no mixture"),
    ("llama", {"bias": True}, "^Meta's Llama format has no model with")])
def test_meta_export_refuses_what_meta_cannot_hold(preset, extra, says):
    """to_meta: GPT-2 layouts, families HF lacks and mixed layouts are refused, the message naming Meta's
    format (reference: Meta's Llama is rotary/RMSNorm/SwiGLU without biases)."""
    model = _model(preset, **extra)
    with pytest.raises(ConversionError, match=says):
        convert.to_meta(model.cfg, model.state_dict())


@pytest.mark.parametrize("tie", [False, True])
def test_meta_import_inverts_the_export_and_reads_sizes_off_the_weights(tie):
    """from_meta(to_meta(...)): our config (vocabulary and FFN width from the weight shapes, head tied
    exactly when output equals the embedding, context as given) and the same tensors (reference: the
    original model)."""
    model = _model("llama", tie_embeddings=tie, rope_theta=300.0, norm_eps=0.05)
    params, w = convert.to_meta(model.cfg, model.state_dict())
    cfg, sd = convert.from_meta({k: v for k, v in params.items() if k not in ("multiple_of", "ffn_dim_multiplier")},
                                w, context=8)
    assert cfg.preset == "llama"
    for key in ("vocab_size", "context", "d_model", "n_layers", "n_heads", "d_ff", "norm_eps", "rope_theta",
                "tie_embeddings", "position", "norm", "mlp", "bias"):
        assert getattr(cfg, key) == getattr(model.cfg, key), key
    assert type(cfg.rope_theta) is float and type(cfg.context) is int and type(cfg.tie_embeddings) is bool
    assert sd.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k


def test_meta_import_reads_interleaved_rows_by_index_arithmetic():
    """from_meta: weights written by hand in Meta's layout (wq/wk rows interleaved per head, built here with
    the index loop, FFN 20 wide, 3 layers, 2 heads) import to a model computing Meta's reference logits."""
    torch.manual_seed(3)
    d, f, L, H, V = 16, 20, 3, 2, 11
    w = {"tok_embeddings.weight": torch.randn(V, d), "norm.weight": 1 + 0.2 * torch.randn(d),
         "output.weight": torch.randn(V, d)}
    for i in range(L):
        shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "gate": (f, d), "up": (f, d), "down": (d, f),
                  "attn_norm": (d,), "ffn_norm": (d,)}
        for role, shape in shapes.items():
            t = 0.3 * torch.randn(shape) + (1 if len(shape) == 1 else 0)
            w[f"layers.{i}.{META_NAMES[role]}.weight"] = t
    params = {"dim": d, "n_layers": L, "n_heads": H, "vocab_size": V, "norm_eps": 0.01, "rope_theta": 50.0,
              "max_seq_len": 6}
    cfg, sd = convert.from_meta(params, w, context=None)
    assert (cfg.vocab_size, cfg.d_ff, cfg.n_layers, cfg.n_heads, cfg.context) == (V, f, L, H, 6)
    assert cfg.tie_embeddings is False
    ours = models.build(cfg).eval()
    ours.load_state_dict(sd, strict=True)
    q = sd["blocks.2.attn.wqkv.weight"][:d]
    hd = d // H
    for h in range(H):
        for i in range(hd // 2):
            for j in range(2):
                assert torch.equal(q[h * hd + j * (hd // 2) + i], w["layers.2.attention.wq.weight"][h * hd + 2 * i + j])
    x = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(ours, x), _meta_logits(params, w, x), atol=1e-5, rtol=1e-5)


def test_meta_import_ties_the_head_only_when_output_equals_the_embedding():
    """from_meta: tie_embeddings = (output == embedding) element for element (reference: torch.equal)."""
    model = _model("llama")
    params, w = convert.to_meta(model.cfg, model.state_dict())
    same = dict(w, **{"output.weight": w["tok_embeddings.weight"].clone()})
    assert convert.from_meta(params, same, context=8)[0].tie_embeddings is True
    near = dict(same)
    near["output.weight"] = same["output.weight"].clone()
    near["output.weight"][3, 2] += 1e-3
    assert convert.from_meta(params, near, context=8)[0].tie_embeddings is False


def test_meta_import_refuses_what_it_cannot_read():
    """from_meta: grouped-query heads, scaled rotary and a missing context are refused naming the cause; an
    n_kv_heads equal to n_heads and use_scaled_rope false are fine (reference: Meta's ModelArgs)."""
    model = _model("llama")
    params, w = convert.to_meta(model.cfg, model.state_dict())
    with pytest.raises(ConversionError, match="grouped-query"):
        convert.from_meta({**params, "n_kv_heads": 2}, w, context=8)
    assert convert.from_meta({**params, "n_kv_heads": 4}, w, context=8)[0].n_heads == 4
    with pytest.raises(ConversionError, match="use_scaled_rope"):
        convert.from_meta({**params, "use_scaled_rope": True}, w, context=8)
    with pytest.raises(ConversionError, match="--context"):
        convert.from_meta(params, w, context=None)
    with pytest.raises(ConversionError, match="--context"):
        convert.from_meta({**params, "max_seq_len": 0}, w, context=None)
    assert convert.from_meta({**params, "max_seq_len": 5}, w, context=None)[0].context == 5
    assert convert.from_meta({**params, "max_seq_len": 5}, w, context=7)[0].context == 7


def test_meta_import_defaults_are_metas():
    """from_meta: absent norm_eps and rope_theta take Meta's defaults 1e-5 and 10000 (reference: the
    Llama 2 ModelArgs)."""
    model = _model("llama", norm_eps=0.05, rope_theta=300.0)
    params, w = convert.to_meta(model.cfg, model.state_dict())
    cfg, _ = convert.from_meta({k: params[k] for k in ("dim", "n_layers", "n_heads")}, w, context=8)
    assert (cfg.norm_eps, cfg.rope_theta) == (1e-5, 10000.0)
    cfg, _ = convert.from_meta({**params, "rope_theta": 500000}, w, context=8)
    assert cfg.rope_theta == 500000.0 and type(cfg.rope_theta) is float


# ---------------------------------------------------------------------------------------------
# HF configs (model_config_from_hf with plain objects; hf_config with transformers)
# ---------------------------------------------------------------------------------------------

def _gpt2_cfg(**over):
    base = dict(model_type="gpt2", vocab_size=31, n_positions=12, n_embd=16, n_layer=3, n_head=2, n_inner=40,
                activation_function="gelu", layer_norm_epsilon=0.02, tie_word_embeddings=False)
    return SimpleNamespace(**{**base, **over})


def _llama_cfg(**over):
    base = dict(model_type="llama", vocab_size=31, max_position_embeddings=12, hidden_size=16, num_hidden_layers=3,
                num_attention_heads=2, intermediate_size=40, rms_norm_eps=0.02, tie_word_embeddings=True)
    return SimpleNamespace(**{**base, **over})


def test_gpt2_config_fields_map_to_ours():
    """model_config_from_hf (GPT-2): each field to its own, gelu/gelu_new/gelu_pytorch_tanh to gelu/gelu_tanh,
    n_inner None to 4 n_embd, an older config without scale_attn_weights accepted (reference: GPT2Config)."""
    cfg = convert.model_config_from_hf(_gpt2_cfg())
    assert (cfg.preset, cfg.vocab_size, cfg.context, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.mlp,
            cfg.norm_eps, cfg.tie_embeddings) == ("baseline", 31, 12, 16, 3, 2, 40, "gelu", 0.02, False)
    assert (cfg.position, cfg.norm, cfg.bias) == ("learned", "layernorm", True)
    assert convert.model_config_from_hf(_gpt2_cfg(activation_function="gelu_new")).mlp == "gelu_tanh"
    assert convert.model_config_from_hf(_gpt2_cfg(activation_function="gelu_pytorch_tanh")).mlp == "gelu_tanh"
    assert convert.model_config_from_hf(_gpt2_cfg(n_inner=None)).d_ff == 64
    assert convert.model_config_from_hf(_gpt2_cfg(tie_word_embeddings=1)).tie_embeddings is True
    ok = convert.model_config_from_hf(_gpt2_cfg(scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False))
    assert ok.d_model == 16


@pytest.mark.parametrize("over,says", [
    ({"activation_function": "relu"}, "GPT-2 activation 'relu'"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scaling"), ({"scale_attn_weights": False}, "scaling"),
    ({"model_type": "mistral"}, "a mistral model")])
def test_gpt2_config_refusals(over, says):
    """model_config_from_hf: what our GPT-2 does not compute (other activations, other attention scaling) and
    other model types are refused naming the cause (reference: GPT2Attention's scaling options)."""
    with pytest.raises(ConversionError, match=says):
        convert.model_config_from_hf(_gpt2_cfg(**over))


def test_llama_config_fields_map_to_ours():
    """model_config_from_hf (Llama): each field to its own; rope_theta from rope_parameters (transformers 5),
    rope_scaling, or beside them (older), else 10000; num_key_value_heads / head_dim absent or consistent are
    accepted (reference: LlamaConfig)."""
    cfg = convert.model_config_from_hf(_llama_cfg())
    assert (cfg.preset, cfg.vocab_size, cfg.context, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff,
            cfg.norm_eps, cfg.tie_embeddings, cfg.rope_theta) == ("llama", 31, 12, 16, 3, 2, 40, 0.02, True, 10000.0)
    assert (cfg.position, cfg.norm, cfg.mlp, cfg.bias) == ("rotary", "rmsnorm", "swiglu", False)
    assert convert.model_config_from_hf(_llama_cfg(tie_word_embeddings=0)).tie_embeddings is False
    theta = lambda **o: convert.model_config_from_hf(_llama_cfg(**o)).rope_theta
    assert theta(rope_parameters={"rope_type": "default", "rope_theta": 500}) == 500.0
    assert type(theta(rope_parameters={"rope_theta": 500})) is float
    assert theta(rope_scaling={"type": "default", "rope_theta": 70.0}) == 70.0
    assert theta(rope_theta=2500.0, rope_scaling=None) == 2500.0
    assert theta(rope_parameters={"rope_type": "default"}, rope_theta=123.0) == 123.0
    ok = convert.model_config_from_hf(_llama_cfg(num_key_value_heads=2, head_dim=8, attention_bias=False,
                                                 mlp_bias=False, hidden_act="silu"))
    assert ok.n_heads == 2
    assert convert.model_config_from_hf(_llama_cfg(num_key_value_heads=None, head_dim=None)).n_heads == 2


@pytest.mark.parametrize("over,says", [
    ({"num_key_value_heads": 1}, "grouped-query"), ({"attention_bias": True}, "biases"),
    ({"mlp_bias": True}, "biases"), ({"hidden_act": "gelu"}, "silu"), ({"head_dim": 4}, "head_dim"),
    ({"hidden_size": 15}, "head_dim"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope scaling"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope scaling"),
    ({"rope_parameters": {"rope_type": "dynamic"}, "rope_scaling": {"rope_type": "default"}}, "rope scaling")])
def test_llama_config_refusals(over, says):
    """model_config_from_hf (Llama): grouped-query attention (n_kv_heads != n_heads), biases, a non-silu
    activation, head_dim * heads != hidden and scaled rotary are refused naming the cause (reference:
    LlamaConfig options our Llama does not compute)."""
    with pytest.raises(ConversionError, match=says):
        convert.model_config_from_hf(_llama_cfg(**over))


@pytest.mark.parametrize("preset,extra", [
    ("baseline", {"mlp": "gelu_tanh", "tie_embeddings": False, "norm_eps": 0.02, "d_ff": 40}),
    ("baseline", {}), ("llama", {"rope_theta": 300.0, "norm_eps": 0.02, "tie_embeddings": True, "d_ff": 40}),
    ("llama", {})])
def test_hf_config_fields_are_transformers_own(preset, extra):
    """hf_config: every size under transformers' own name, dropout off, biases off for Llama, kv heads equal
    to heads, the special ids as given; model_config_from_hf reads it back to the same config (reference:
    GPT2Config / LlamaConfig attribute names)."""
    _transformers()
    cfg = ModelConfig.from_preset(preset, **{**SIZES, **extra})
    c = convert.hf_config(cfg, 5, 6, 7)
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (5, 6, 7)
    assert (c.vocab_size, c.tie_word_embeddings) == (23, cfg.tie_embeddings)
    if preset == "baseline":
        assert (c.model_type, c.n_positions, c.n_embd, c.n_layer, c.n_head, c.n_inner, c.layer_norm_epsilon) == (
            "gpt2", 8, 16, 2, 4, cfg.d_ff, cfg.norm_eps)
        assert c.activation_function == ("gelu_new" if cfg.mlp == "gelu_tanh" else "gelu")
        assert (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) == (0.0, 0.0, 0.0)
    else:
        assert (c.model_type, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                c.num_key_value_heads, c.max_position_embeddings, c.rms_norm_eps, c.hidden_act) == (
            "llama", 16, cfg.d_ff, 2, 4, 4, 8, cfg.norm_eps, "silu")
        assert (c.attention_bias, c.mlp_bias) == (False, False)
        rope = getattr(c, "rope_parameters", None) or {}
        assert rope.get("rope_theta", getattr(c, "rope_theta", None)) == cfg.rope_theta
    back = convert.model_config_from_hf(c)
    for key in ("vocab_size", "context", "d_model", "n_layers", "n_heads", "d_ff", "norm_eps", "rope_theta", "mlp",
                "tie_embeddings", "position", "norm", "bias"):
        assert getattr(back, key) == getattr(cfg, key), key
    n = convert.hf_config(cfg, None, None)
    assert (n.bos_token_id, n.eos_token_id, n.pad_token_id) == (None, None, None)


# ---------------------------------------------------------------------------------------------
# to_hf_model / from_hf (transformers)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,extra", [
    ("llama", {"rope_theta": 300.0, "norm_eps": 0.05}), ("llama", {"tie_embeddings": True}),
    ("baseline", {"mlp": "gelu_tanh", "tie_embeddings": False, "norm_eps": 0.05}), ("baseline", {})])
def test_to_hf_model_is_an_eval_transformers_model_with_our_logits(preset, extra):
    """to_hf_model: a transformers model in eval mode whose logits on random tokens equal ours, with the
    special ids given (reference: transformers' own GPT-2 / Llama forward)."""
    _transformers()
    model = _model(preset, **extra)
    hf = convert.to_hf_model(_ckpt(model), special_ids=(1, 2, 0))
    assert hf.training is False
    assert type(hf).__name__ == ("GPT2LMHeadModel" if preset == "baseline" else "LlamaForCausalLM")
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == (1, 2, 0)
    x = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, _logits(model, x), atol=1e-5, rtol=1e-5)


def test_to_hf_model_reads_special_ids_off_the_tokenizer(monkeypatch):
    """to_hf_model: without special_ids, (bos, eos, pad) come from the checkpoint's tokenizer spec through
    _special_ids (reference: a stub tokenizer's ids)."""
    _transformers()
    import dataset_definitions.tokenization as tokenization
    seen = []
    monkeypatch.setattr(tokenization, "load_tokenizer",
                        lambda spec: seen.append(spec) or SimpleNamespace(bos_id=3, eos_id=4, pad_id=None))
    model = _model("llama")
    hf = convert.to_hf_model(_ckpt(model))
    assert seen == [SPEC]
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == (3, 4, None)
    assert convert._special_ids({"kind": "x"}) == (3, 4, None)


@pytest.mark.parametrize("change", ["drop", "extra"])
def test_to_hf_model_refuses_weights_that_do_not_fill_the_model(change, monkeypatch):
    """to_hf_model: a weight missing or unexpected in the HF layout is an error naming it, not a silently
    random HF weight (reference: load_state_dict's missing/unexpected lists)."""
    _transformers()
    real = convert.to_hf_state_dict

    def altered(cfg, sd):
        out = real(cfg, sd)
        if change == "drop":
            del out["model.layers.1.mlp.up_proj.weight"]
        else:
            out["model.layers.1.extra.weight"] = torch.zeros(2)
        return out

    monkeypatch.setattr(convert, "to_hf_state_dict", altered)
    named = "up_proj" if change == "drop" else "extra"
    with pytest.raises(ConversionError, match="did not take the weights.*" + named):
        convert.to_hf_model(_ckpt(_model("llama")), special_ids=(1, 2, 0))


@pytest.mark.parametrize("preset, buffer", [("baseline", "transformer.h.0.attn.bias"),
                                            ("baseline", "transformer.h.1.attn.masked_bias"),
                                            ("llama", "model.layers.0.self_attn.rotary_emb.inv_freq")])
def test_to_hf_model_takes_fixed_buffers_reported_missing_as_no_weights(preset, buffer, monkeypatch):
    """to_hf_model: the attention masks and rotary frequencies some transformers versions list among the missing
    keys are buffers it fills itself, not weights; next to them, any other missing key is still refused."""
    _transformers()
    real = torch.nn.Module.load_state_dict
    extra = [buffer]

    def reported(self, state_dict, strict=True):
        missing, unexpected = real(self, state_dict, strict=strict)
        return [*missing, *extra], unexpected
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", reported)
    model = _model(preset)
    x = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(convert.to_hf_model(_ckpt(model), special_ids=(1, 2, 0))(x).logits,
                                   _logits(model, x), atol=1e-5, rtol=1e-5)
    extra.append(buffer.replace("bias", "weight").replace("inv_freq", "scale"))
    with pytest.raises(ConversionError, match=re.escape(f"missing ['{extra[1]}']")):
        convert.to_hf_model(_ckpt(model), special_ids=(1, 2, 0))


@pytest.mark.parametrize("preset,extra", [("llama", {"rope_theta": 300.0}), ("baseline", {"tie_embeddings": False})])
def test_from_hf_reads_a_saved_folder_back_in_fp32(preset, extra, tmp_path):
    """from_hf: a folder saved by transformers in bfloat16 imports as float32 tensors equal to the bf16
    weights, with the config mapped (reference: the saved model's own state dict, upcast)."""
    _transformers()
    model = _model(preset, **extra)
    hf = convert.to_hf_model(_ckpt(model), special_ids=(1, 2, 0)).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    cfg, sd = convert.from_hf(tmp_path)
    assert (cfg.preset, cfg.rope_theta, cfg.tie_embeddings) == (
        "llama" if preset == "llama" else "baseline", model.cfg.rope_theta, model.cfg.tie_embeddings)
    assert sd.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert sd[k].dtype == torch.float32, k
        assert torch.equal(sd[k], v.to(torch.bfloat16).float()), k


def test_from_hf_refusals(tmp_path):
    """from_hf: a folder without a config, a config we cannot compute (prefixed with the folder) and pickled
    weights only are refused (reference: the files in the folder)."""
    transformers = _transformers()
    with pytest.raises(ConversionError, match="is not a Hugging Face model folder"):
        convert.from_hf(tmp_path / "nothing")
    gqa = tmp_path / "gqa"
    transformers.LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2).save_pretrained(gqa)
    with pytest.raises(ConversionError, match=f"^{gqa}: grouped-query"):
        convert.from_hf(gqa)
    pickled = tmp_path / "pickled"
    model = _model("llama")
    hf = convert.to_hf_model(_ckpt(model), special_ids=(1, 2, 0))
    hf.config.save_pretrained(pickled)
    torch.save(hf.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="pytorch_model.bin is in PyTorch's pickle format"):
        convert.from_hf(pickled)


# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,extra", [("falcon", {}), ("llama", {}), ("baseline", {})])
def test_safetensors_stores_a_tied_head_once_and_round_trips(preset, extra, tmp_path):
    """to_safetensors / from_safetensors: our names; the tied head left out and put back as the embedding,
    an untied head kept; the config and tokenizer in the metadata as JSON (reference: the checkpoint)."""
    from safetensors.torch import save_file
    model = _model(preset, **extra)
    ckpt = _ckpt(model)
    tensors, meta = convert.to_safetensors(ckpt)
    expect = set(ckpt["model"]) - ({"lm_head.weight"} if model.cfg.tie_embeddings else set())
    assert set(tensors) == expect
    assert json.loads(meta["config"]) == model.cfg.__dict__ and json.loads(meta["tokenizer"]) == SPEC
    save_file(tensors, tmp_path / "w.safetensors", metadata=meta)
    cfg, sd, spec = convert.from_safetensors(tmp_path / "w.safetensors")
    assert cfg == model.cfg and spec == SPEC
    assert sd.keys() == ckpt["model"].keys()
    for k, v in ckpt["model"].items():
        assert torch.equal(sd[k], v), k


def test_safetensors_makes_tensors_contiguous():
    """to_safetensors: a non-contiguous weight (a transposed view) is stored contiguous, same values
    (reference: safetensors refuses non-contiguous tensors)."""
    model = _model("llama")
    ckpt = _ckpt(model)
    w = ckpt["model"]["blocks.0.attn.wo.weight"]
    ckpt["model"]["blocks.0.attn.wo.weight"] = w.T.contiguous().T
    assert not ckpt["model"]["blocks.0.attn.wo.weight"].is_contiguous()
    tensors, _ = convert.to_safetensors(ckpt)
    assert all(t.is_contiguous() for t in tensors.values())
    assert torch.equal(tensors["blocks.0.attn.wo.weight"], w)


def test_safetensors_import_refusals(tmp_path):
    """from_safetensors: an unreadable file, no config, a config not ours and a tokenizer entry not a spec
    are refused naming the file; a missing tokenizer gives None; a tied file without the embedding gets no
    head either (reference: the metadata written here by hand)."""
    from safetensors.torch import save_file
    cfg = ModelConfig.from_preset("llama", **{**SIZES, "tie_embeddings": True})
    path = tmp_path / "w.safetensors"
    with pytest.raises(ConversionError, match="is not a readable safetensors file"):
        convert.from_safetensors(path)
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(ConversionError, match="is not a readable safetensors file"):
        convert.from_safetensors(path)
    t = {"tok_emb.weight": torch.ones(2, 2)}
    for metadata, says in ((None, "has no model config"), ({"other": "1"}, "has no model config"),
                           ({"config": "{not json"}, "is not a model config of ours"),
                           ({"config": json.dumps({"nope": 1})}, "is not a model config of ours"),
                           ({"config": json.dumps(cfg.__dict__), "tokenizer": "[1, 2]"},
                            "'tokenizer' is not a tokenizer spec"),
                           ({"config": json.dumps(cfg.__dict__), "tokenizer": "{bad"}, "is not a model config")):
        save_file(t, path, metadata=metadata)
        with pytest.raises(ConversionError, match=says):
            convert.from_safetensors(path)
    save_file(t, path, metadata={"config": json.dumps(cfg.__dict__)})
    got_cfg, sd, spec = convert.from_safetensors(path)
    assert got_cfg == cfg and spec is None and torch.equal(sd["lm_head.weight"], t["tok_emb.weight"])
    save_file({"norm_f.weight": torch.ones(2)}, path, metadata={"config": json.dumps(cfg.__dict__)})
    assert set(convert.from_safetensors(path)[1]) == {"norm_f.weight"}
    untied = ModelConfig.from_preset("llama", **SIZES)
    save_file(t, path, metadata={"config": json.dumps(untied.__dict__)})
    assert set(convert.from_safetensors(path)[1]) == {"tok_emb.weight"}


# ---------------------------------------------------------------------------------------------
# imported_checkpoint, tokenizers, the CLI
# ---------------------------------------------------------------------------------------------

def test_imported_checkpoint_is_a_step_zero_checkpoint_of_ours():
    """imported_checkpoint: format, step 0, the run name, the model config and the tokenizer's
    kind/path/vocab_size in the run config, the weights as given (reference: the checkpoint layout
    load_checkpoint and model_config read)."""
    from models.checkpoint import CHECKPOINT_FORMAT, model_config
    model = _model("llama")
    sd = model.state_dict()
    ckpt = convert.imported_checkpoint("imp", model.cfg, sd, dict(SPEC))
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["step"] == 0 and ckpt["model"] is sd
    assert ckpt["tokenizer"] == SPEC
    assert ckpt["config"] == {"run_name": "imp", "model": model.cfg.__dict__,
                              "tokenizer": {"kind": "stub", "path": "tok.json", "vocab_size": 23}}
    assert model_config(ckpt) == model.cfg
    assert all(v.device.type == "cpu" for v in ckpt["model"].values())


def test_imported_checkpoint_silences_only_the_meta_copy_user_warning(monkeypatch):
    """imported_checkpoint checks the weights on meta tensors, whose copy warns (UserWarning, silenced);
    any other warning of that check still reaches the user."""
    import warnings

    import models.checkpoint as checkpoint
    model = _model("llama")

    def load_weights(module, ckpt):
        warnings.warn("copying into a meta tensor is a no-op", UserWarning)
        warnings.warn("a layout to migrate", FutureWarning)
    monkeypatch.setattr(checkpoint, "load_weights", load_weights)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert.imported_checkpoint("imp", model.cfg, model.state_dict(), dict(SPEC))
    assert [(w.category, str(w.message)) for w in caught] == [(FutureWarning, "a layout to migrate")]


def test_imported_checkpoint_refuses_weights_that_do_not_fit_and_a_thin_spec():
    """imported_checkpoint: a missing weight or a wrong shape fails the strict load; a tokenizer spec
    without kind/path/vocab_size names what it lacks (reference: the model's own state dict)."""
    from models.checkpoint import CheckpointError
    model = _model("llama")
    sd = dict(model.state_dict())
    with pytest.raises(ConversionError, match=r"lacks \['path', 'vocab_size'\]"):
        convert.imported_checkpoint("x", model.cfg, sd, {"kind": "stub"})
    with pytest.raises(CheckpointError, match="do not fit"):
        convert.imported_checkpoint("x", model.cfg, {k: v for k, v in sd.items() if k != "norm_f.weight"}, SPEC)
    with pytest.raises(CheckpointError, match="do not fit"):
        convert.imported_checkpoint("x", model.cfg, {**sd, "norm_f.weight": torch.ones(3)}, SPEC)


def test_import_tokenizer_picks_the_given_path_then_the_folders_files(tmp_path, monkeypatch):
    """import_tokenizer: a given path wins; else tokenizer.model, then source_tokenizer.json, then GPT-2's
    encoder.json + vocab.bpe (the folder itself); else an error (reference: the files made here)."""
    import dataset_definitions.tokenization as tokenization
    monkeypatch.setattr(tokenization, "tokenizer_from_file",
                        lambda p: SimpleNamespace(spec=lambda: {"from": str(p)}))
    with pytest.raises(ConversionError, match="no tokenizer found in"):
        convert.import_tokenizer(tmp_path, None)
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(ConversionError, match="no tokenizer found"):        # vocab.bpe missing
        convert.import_tokenizer(tmp_path, None)
    (tmp_path / "vocab.bpe").write_text("")
    assert convert.import_tokenizer(tmp_path, None) == {"from": str(tmp_path)}
    (tmp_path / "source_tokenizer.json").write_text("{}")
    assert convert.import_tokenizer(tmp_path, None) == {"from": str(tmp_path / "source_tokenizer.json")}
    (tmp_path / "tokenizer.model").mkdir()                                  # not a file: skipped
    assert convert.import_tokenizer(tmp_path, None) == {"from": str(tmp_path / "source_tokenizer.json")}
    (tmp_path / "tokenizer.model").rmdir()
    (tmp_path / "tokenizer.model").write_text("")
    assert convert.import_tokenizer(tmp_path, None) == {"from": str(tmp_path / "tokenizer.model")}
    assert convert.import_tokenizer(tmp_path, "elsewhere.json") == {"from": "elsewhere.json"}


def _saved_ckpt(tmp_path, preset="llama", **extra):
    from models.checkpoint import save_checkpoint
    model = _model(preset, **extra)
    path = tmp_path / "src" / "last.pt"
    save_checkpoint(path, convert.imported_checkpoint("src", model.cfg, model.state_dict(), dict(SPEC)))
    return model, path


def test_cli_refuses_bad_arguments_and_existing_outputs(tmp_path, capsys):
    """main: neither or both of --ckpt/--to and --from is a usage error (exit 2); an existing --out (a file,
    a folder holding files) is refused without --overwrite; an empty folder is fine (reference: the CLI
    contract in the module docstring)."""
    model, ckpt = _saved_ckpt(tmp_path)
    for argv in (["--out", "x"], ["--ckpt", str(ckpt), "--out", "x"], ["--to", "meta", "--out", "x"],
                 ["--ckpt", str(ckpt), "--to", "meta"], ["--from", "meta", "m", "--out", "x", "--context", "n"],
                 ["--ckpt", str(ckpt), "--to", "onnx", "--out", "x"], ["--from", "meta", "--out", "x"],
                 ["--ckpt", str(ckpt), "--to", "meta", "--from", "meta", "m", "--out", "x"]):
        with pytest.raises(SystemExit) as e:
            convert.main(argv)
        assert e.value.code == 2, argv
    out = tmp_path / "meta"
    out.mkdir()
    convert.main(["--ckpt", str(ckpt), "--to", "meta", "--out", str(out)])       # empty folder: written
    assert f"wrote {out}" in capsys.readouterr().out
    for existing in (out, out / "params.json"):
        with pytest.raises(SystemExit) as e:
            convert.main(["--ckpt", str(ckpt), "--to", "meta", "--out", str(existing)])
        assert str(e.value).startswith(f"error: --out {existing} already exists")
    params = json.loads((out / "params.json").read_text())
    (out / "params.json").write_text("{}")
    convert.main(["--ckpt", str(ckpt), "--to", "meta", "--out", str(out), "--overwrite"])
    assert json.loads((out / "params.json").read_text()) == params
    assert (out / "params.json").read_text().startswith('{\n  "dim": 16')
    weights = torch.load(out / "consolidated.00.pth", weights_only=True)
    assert set(weights) == set(convert.to_meta(model.cfg, model.state_dict())[1])


def test_cli_usage_names_each_option_and_the_either_or(tmp_path, capsys):
    """main: --help shows a description, `--from FORMAT PATH` and a help text under every option; a call
    with neither or both ways says which two ways there are (reference: the module docstring's commands)."""
    with pytest.raises(SystemExit) as e:
        convert.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    usage, rest = text.split("\n\n", 1)
    assert "--from FORMAT PATH" in usage
    description = rest.split("\n\n", 1)[0]
    assert not description.startswith(("options:", "optional arguments:")) and len(description.split()) >= 3
    options = ("--ckpt", "--to", "--from", "--tokenizer", "--context", "--out", "--overwrite")
    entries = {}
    for line in text.split("\n\n", 2)[2].splitlines()[1:]:
        flag = line.split()[0] if line.startswith("  -") else None
        if flag:
            entries[flag] = line
        else:
            entries[list(entries)[-1]] += line
    for option in options:
        words = re.sub(r"\{[^}]*\}", " ", entries[option]).split()          # without the {choices}
        described = [w for w in words if not w.isupper() and w != option]
        assert len(described) >= 2, (option, entries[option])
    for argv in (["--out", "x"], ["--ckpt", "c.pt", "--to", "meta", "--from", "meta", "m", "--out", "x"]):
        with pytest.raises(SystemExit):
            convert.main(argv)
        assert "error: give either --ckpt PATH --to FORMAT, or --from FORMAT PATH" in capsys.readouterr().err


def test_cli_reports_errors_as_one_line(tmp_path):
    """main: a conversion refusal, a missing checkpoint and an unknown --from format exit with "error: "
    and the first line (reference: sys.exit's message)."""
    model, ckpt = _saved_ckpt(tmp_path, "baseline")
    with pytest.raises(SystemExit) as e:
        convert.main(["--ckpt", str(ckpt), "--to", "meta", "--out", str(tmp_path / "m")])
    assert str(e.value).startswith("error: Meta's Llama format has no learned positions")
    assert not (tmp_path / "m").exists()
    with pytest.raises(SystemExit) as e:
        convert.main(["--ckpt", str(tmp_path / "missing.pt"), "--to", "safetensors", "--out", str(tmp_path / "w.st")])
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        convert.main(["--from", "onnx", str(tmp_path), "--out", str(tmp_path / "x.pt")])
    assert str(e.value) == "error: --from onnx: formats are hf, meta, safetensors"
    with pytest.raises(SystemExit) as e:
        convert.main(["--from", "meta", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.pt")])
    assert str(e.value) == f"error: {tmp_path / 'nowhere' / 'params.json'} not found (a Meta Llama folder holds " \
                           "params.json + consolidated.00.pth)"


def test_cli_safetensors_and_meta_round_trips(tmp_path, monkeypatch):
    """main: --to safetensors (parent folders made) and --from safetensors give back the same weights and the
    tokenizer in the file, the run named after the file; --to meta then --from meta with --context and the
    tokenizer found in the folder (reference: the source checkpoint)."""
    from models.checkpoint import load_checkpoint
    calls = []
    monkeypatch.setattr(convert, "import_tokenizer", lambda folder, path: calls.append((folder, path)) or dict(SPEC))
    model, ckpt = _saved_ckpt(tmp_path, "llama", tie_embeddings=True)
    sf = tmp_path / "a" / "b" / "weights.safetensors"
    convert.main(["--ckpt", str(ckpt), "--to", "safetensors", "--out", str(sf)])
    convert.main(["--from", "safetensors", str(sf), "--out", str(tmp_path / "s.pt")])
    back = load_checkpoint(tmp_path / "s.pt")
    assert calls == [] and back["tokenizer"] == SPEC and back["config"]["run_name"] == "weights"
    assert back["step"] == 0 and back["config"]["model"] == model.cfg.__dict__
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v), k
    convert.main(["--from", "safetensors", str(sf), "--tokenizer", "t.json", "--out", str(tmp_path / "t.pt")])
    assert calls == [(sf.parent, "t.json")]
    meta = tmp_path / "x" / "y" / "meta_model"
    convert.main(["--ckpt", str(ckpt), "--to", "meta", "--out", str(meta)])
    convert.main(["--from", "meta", str(meta), "--context", "8", "--out", str(tmp_path / "m.pt")])
    assert calls[-1] == (meta, None)
    convert.main(["--from", "meta", str(meta), "--context", "8", "--tokenizer", "tok.model",
                  "--out", str(tmp_path / "m2.pt")])
    assert calls[-1] == (meta, "tok.model")
    with pytest.raises(SystemExit) as e:                               # 0 is no context: max_seq_len is asked for
        convert.main(["--from", "meta", str(meta), "--context", "0", "--out", str(tmp_path / "m3.pt")])
    assert "--context N" in str(e.value)
    back = load_checkpoint(tmp_path / "m.pt")
    assert back["config"]["model"] == model.cfg.__dict__ and back["config"]["run_name"] == "meta_model"
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v), k


def test_cli_safetensors_import_without_a_tokenizer_looks_beside_the_file(tmp_path, monkeypatch):
    """main/_import: a safetensors file without tokenizer metadata takes the tokenizer found in its folder
    (reference: import_tokenizer's arguments)."""
    from safetensors.torch import save_file
    calls = []
    monkeypatch.setattr(convert, "import_tokenizer", lambda folder, path: calls.append((folder, path)) or dict(SPEC))
    model = _model("baseline")
    tensors, meta = convert.to_safetensors(_ckpt(model))
    sf = tmp_path / "w.safetensors"
    save_file(tensors, sf, metadata={"config": meta["config"]})
    convert.main(["--from", "safetensors", str(sf), "--out", str(tmp_path / "w.pt")])
    assert calls == [(tmp_path, None)]


def test_cli_hf_export_loads_the_tokenizer_before_writing(tmp_path, monkeypatch):
    """_export (hf): a tokenizer that cannot be loaded leaves no folder behind; with one, the model and the
    tokenizer files are written (reference: the folder's contents)."""
    transformers = _transformers()
    import dataset_definitions.hf_tokenizer as hf_tokenizer
    import dataset_definitions.tokenization as tokenization
    model, ckpt = _saved_ckpt(tmp_path, "baseline")
    monkeypatch.setattr(convert, "_special_ids", lambda spec: (1, 2, 0))

    def missing(spec):
        raise OSError("tokenizer file gone")

    monkeypatch.setattr(tokenization, "load_tokenizer", missing)
    out = tmp_path / "hf"
    with pytest.raises(SystemExit, match="error: tokenizer file gone"):
        convert.main(["--ckpt", str(ckpt), "--to", "hf", "--out", str(out)])
    assert not out.exists()
    saved = []
    monkeypatch.setattr(tokenization, "load_tokenizer", lambda spec: ("tok", spec["kind"]))
    monkeypatch.setattr(hf_tokenizer, "save_hf_tokenizer", lambda tok, folder: saved.append((tok, folder)))
    convert.main(["--ckpt", str(ckpt), "--to", "hf", "--out", str(out)])
    assert saved == [(("tok", "stub"), out)]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, _logits(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["safetensors", "meta", "import"])
def test_cli_holds_the_run_lock_of_a_run_folder(fmt, tmp_path):
    """main: writing into checkpoints/<run>/ (a folder whose parent holds .locks) while that run's lock is
    held exits naming the run being trained, and writes nothing; elsewhere no lock is taken (reference:
    run_files.lock_path, flock)."""
    from fileio import exclusive_lock
    from run_files import lock_path
    model, ckpt = _saved_ckpt(tmp_path, "llama")
    sf = tmp_path / "w.safetensors"
    convert.main(["--ckpt", str(ckpt), "--to", "safetensors", "--out", str(sf)])
    root = tmp_path / "checkpoints"
    (root / ".locks").mkdir(parents=True)
    if fmt == "meta":
        out, argv = root / "run", ["--ckpt", str(ckpt), "--to", "meta"]
    elif fmt == "safetensors":
        out, argv = root / "run" / "w.safetensors", ["--ckpt", str(ckpt), "--to", "safetensors"]
    else:
        out, argv = root / "run" / "last.pt", ["--from", "safetensors", str(sf)]
    with exclusive_lock(lock_path(root, "run")):
        with pytest.raises(SystemExit) as e:
            convert.main([*argv, "--out", str(out)])
        assert str(e.value).startswith(f"error: --out {out} is in the folder of a run being trained")
        assert not out.exists()
        with exclusive_lock(lock_path(root, "other")):
            pass
    convert.main([*argv, "--out", str(out)])                   # lock released: written
    assert out.exists()


def test_cli_holds_the_run_lock_of_a_relative_out(tmp_path, monkeypatch):
    """main: --out "." inside checkpoints/<run>/ is that run's folder (resolved before looking for .locks)
    (reference: the lock held here)."""
    from fileio import exclusive_lock
    from run_files import lock_path
    model, ckpt = _saved_ckpt(tmp_path, "llama")
    root = tmp_path / "checkpoints"
    (root / ".locks").mkdir(parents=True)
    (root / "run").mkdir()
    monkeypatch.chdir(root / "run")
    with exclusive_lock(lock_path(root, "run")):
        with pytest.raises(SystemExit, match="is in the folder of a run being trained"):
            convert.main(["--ckpt", str(ckpt), "--to", "meta", "--out", "."])
    assert not (root / "run" / "params.json").exists()


_RAN = []


def _side_effect():
    _RAN.append(1)
    return {}


class _Payload:
    def __reduce__(self):
        return (_side_effect, ())


def test_meta_import_unpickles_weights_only(tmp_path):
    """_import (meta): consolidated.00.pth is read with weights_only, so a pickle that would call a function
    is refused without calling it (reference: a payload that records whether it ran)."""
    import pickle
    folder = tmp_path / "meta"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"dim": 16, "n_layers": 1, "n_heads": 4}))
    torch.save({"tok_embeddings.weight": _Payload()}, folder / "consolidated.00.pth")
    with pytest.raises(pickle.UnpicklingError):
        convert._import("meta", str(folder), tokenizer=None, context=8)
    assert _RAN == []


def test_cli_hf_import_reads_the_safetensors_weights_and_the_folder_tokenizer(tmp_path, monkeypatch):
    """main --from hf: the safetensors weights are imported even beside a pickled copy (which is never
    read: it holds other values), the tokenizer looked up in the folder or taken from --tokenizer; a folder
    without weights is an error line (reference: the exported model's tensors)."""
    _transformers()
    from models.checkpoint import load_checkpoint
    calls = []
    monkeypatch.setattr(convert, "import_tokenizer", lambda folder, path: calls.append((folder, path)) or dict(SPEC))
    model = _model("llama", rope_theta=300.0)
    hf = convert.to_hf_model(_ckpt(model), special_ids=(1, 2, 0))
    folder = tmp_path / "hf_llama"
    hf.save_pretrained(folder)
    torch.save({k: torch.zeros_like(v) for k, v in hf.state_dict().items()}, folder / "pytorch_model.bin")
    convert.main(["--from", "hf", str(folder), "--out", str(tmp_path / "i.pt")])
    convert.main(["--from", "hf", str(folder), "--tokenizer", "t.model", "--out", str(tmp_path / "j.pt")])
    assert calls == [(folder, None), (folder, "t.model")]
    back = load_checkpoint(tmp_path / "i.pt")
    assert back["config"]["run_name"] == "hf_llama" and back["config"]["model"]["rope_theta"] == 300.0
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v), k
    empty = tmp_path / "config_only"
    hf.config.save_pretrained(empty)
    with pytest.raises(SystemExit) as e:
        convert.main(["--from", "hf", str(empty), "--out", str(tmp_path / "k.pt")])
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
