"""Our checkpoints in other formats: Hugging Face, Meta Llama, safetensors; and Llama HF folders in.

    python -m models.convert --ckpt checkpoints/baseline-quickstart/best.pt --to hf --out hf_model/
    python -m models.convert --ckpt PATH --to meta --out meta_model/      # consolidated.00.pth + params.json
    python -m models.convert --ckpt PATH --to safetensors --out weights.safetensors
    python -m models.convert --from hf downloaded_llama/ --out checkpoints/imported/last.pt

`baseline`-style models (learned positions, LayerNorm, GELU) become `GPT2LMHeadModel`; rotary,
RMSNorm, SwiGLU, bias-free models (`gpt2_125m`, `llama`) become `LlamaForCausalLM`. Our rotary
embedding already uses the rotate-half layout of HF Llama, so q and k need no permutation there;
Meta's reference rotates interleaved pairs, so `--to meta` permutes the rows of wq and wk.
Falcon (mixture of experts) and Condor (attention variants) have no HF equivalent and are refused.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, model_config, save_checkpoint
from .config import ModelConfig


class ConversionError(ValueError):
    """The model has no equivalent in the requested format."""


def hf_architecture(cfg: ModelConfig) -> str:
    """"gpt2" or "llama": the HF family whose computation equals this model's, or ConversionError."""
    if cfg.preset in ("falcon", "condor"):
        raise ConversionError(f"{cfg.preset} models have no Hugging Face equivalent (only GPT-2- and "
                              "Llama-style presets convert)")
    if (cfg.position, cfg.norm, cfg.mlp) == ("learned", "layernorm", "gelu") and cfg.bias:
        return "gpt2"
    if (cfg.position, cfg.norm, cfg.mlp) == ("rotary", "rmsnorm", "swiglu") and not cfg.bias:
        return "llama"
    raise ConversionError(f"no Hugging Face model computes position={cfg.position}, norm={cfg.norm}, "
                          f"mlp={cfg.mlp}, bias={cfg.bias}; GPT-2 needs learned/layernorm/gelu with biases, "
                          "Llama rotary/rmsnorm/swiglu without")


def hf_config(cfg: ModelConfig, bos_id: int | None, eos_id: int):
    """The transformers config object of the equivalent HF model."""
    from transformers import GPT2Config, LlamaConfig

    if hf_architecture(cfg) == "gpt2":
        return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context, n_embd=cfg.d_model,
                          n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
                          activation_function="gelu",  # exact erf GELU, as F.gelu (not GPT-2's tanh "gelu_new")
                          layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          tie_word_embeddings=cfg.tie_embeddings, bos_token_id=bos_id, eos_token_id=eos_id)
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_heads, max_position_embeddings=cfg.context,
                       rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, hidden_act="silu",
                       tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
                       bos_token_id=bos_id, eos_token_id=eos_id)


def to_hf_state_dict(cfg: ModelConfig, sd: dict) -> dict:
    """Rename (and, for GPT-2's Conv1D, transpose; for Llama, split) our weights into the HF layout."""
    d, out = cfg.d_model, {}
    if hf_architecture(cfg) == "gpt2":
        out["transformer.wte.weight"] = sd["tok_emb.weight"]
        out["transformer.wpe.weight"] = sd["pos_emb.weight"]
        for i in range(cfg.n_layers):
            ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
            for a, b, transpose in (("norm1", "ln_1", False), ("norm2", "ln_2", False),
                                    ("attn.wqkv", "attn.c_attn", True), ("attn.wo", "attn.c_proj", True),
                                    ("mlp.up", "mlp.c_fc", True), ("mlp.down", "mlp.c_proj", True)):
                weight = sd[ours + a + ".weight"]
                out[theirs + b + ".weight"] = weight.t().contiguous() if transpose else weight  # Conv1D: (in, out)
                out[theirs + b + ".bias"] = sd[ours + a + ".bias"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["norm_f.weight"], sd["norm_f.bias"]
    else:
        out["model.embed_tokens.weight"] = sd["tok_emb.weight"]
        for i in range(cfg.n_layers):
            ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
            q, k, v = sd[ours + "attn.wqkv.weight"].split(d, dim=0)
            gate, up = sd[ours + "mlp.up.weight"].split(cfg.d_ff, dim=0)  # SwiGLU: gate first, as `activate`
            out.update({
                theirs + "input_layernorm.weight": sd[ours + "norm1.weight"],
                theirs + "self_attn.q_proj.weight": q, theirs + "self_attn.k_proj.weight": k,
                theirs + "self_attn.v_proj.weight": v, theirs + "self_attn.o_proj.weight": sd[ours + "attn.wo.weight"],
                theirs + "post_attention_layernorm.weight": sd[ours + "norm2.weight"],
                theirs + "mlp.gate_proj.weight": gate, theirs + "mlp.up_proj.weight": up,
                theirs + "mlp.down_proj.weight": sd[ours + "mlp.down.weight"],
            })
        out["model.norm.weight"] = sd["norm_f.weight"]
    out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.clone().contiguous() for k, v in out.items()}  # own copies: the HF model stands alone


def to_hf_model(ckpt: dict, special_ids: tuple[int | None, int] | None = None):
    """A transformers model (eval mode, fp32) computing the same logits as the checkpoint's model.

    special_ids: (bos, eos) for the HF config; default: read off the checkpoint's tokenizer.
    """
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    cfg = model_config(ckpt)
    config = hf_config(cfg, *(special_ids or _special_ids(ckpt["tokenizer"])))
    cls = GPT2LMHeadModel if hf_architecture(cfg) == "gpt2" else LlamaForCausalLM
    model = cls(config)
    missing, unexpected = model.load_state_dict(to_hf_state_dict(cfg, ckpt["model"]), strict=False)
    # HF registers fixed buffers (e.g. attention bias masks) that are not weights
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))]
    if missing or unexpected:
        raise ConversionError(f"HF model did not take the weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def to_meta(cfg: ModelConfig, sd: dict) -> tuple[dict, dict]:
    """(params.json, consolidated state dict) of Meta's Llama reference for a Llama-layout model."""
    if hf_architecture(cfg) != "llama":
        raise ConversionError("Meta's Llama format holds rotary / RMSNorm / SwiGLU models only")
    hf = to_hf_state_dict(cfg, sd)
    out = {"tok_embeddings.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"],
           "output.weight": hf["lm_head.weight"]}
    for i in range(cfg.n_layers):
        h, m = f"model.layers.{i}.", f"layers.{i}."
        out.update({
            m + "attention.wq.weight": _interleave_rotary(hf[h + "self_attn.q_proj.weight"], cfg.n_heads),
            m + "attention.wk.weight": _interleave_rotary(hf[h + "self_attn.k_proj.weight"], cfg.n_heads),
            m + "attention.wv.weight": hf[h + "self_attn.v_proj.weight"],
            m + "attention.wo.weight": hf[h + "self_attn.o_proj.weight"],
            m + "feed_forward.w1.weight": hf[h + "mlp.gate_proj.weight"],
            m + "feed_forward.w2.weight": hf[h + "mlp.down_proj.weight"],
            m + "feed_forward.w3.weight": hf[h + "mlp.up_proj.weight"],
            m + "attention_norm.weight": hf[h + "input_layernorm.weight"],
            m + "ffn_norm.weight": hf[h + "post_attention_layernorm.weight"],
        })
    # Meta derives the FFN width from dim: round_up(multiplier * int(8 * dim / 3), multiple_of);
    # multiple_of = d_ff and a multiplier just under d_ff / int(8 * dim / 3) give exactly d_ff
    base = int(2 * 4 * cfg.d_model / 3)
    params = {"dim": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "vocab_size": cfg.vocab_size,
              "norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "max_seq_len": cfg.context,
              "multiple_of": cfg.d_ff, "ffn_dim_multiplier": (cfg.d_ff - 0.5) / base}
    return params, out


def _interleave_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection from rotate-half order (i, i + hd/2) to interleaved pairs (2i, 2i + 1)."""
    d_out, d_in = w.shape
    return w.view(n_heads, 2, d_out // n_heads // 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def from_hf(folder: str | Path, tokenizer_path: str | None = None) -> dict:
    """A checkpoint of ours (preset llama) from a Hugging Face Llama-architecture folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    hf_cfg = AutoConfig.from_pretrained(folder)
    if hf_cfg.model_type != "llama":
        raise ConversionError(f"{folder} holds a {hf_cfg.model_type} model; only Llama-architecture folders import")
    if (hf_cfg.num_key_value_heads or hf_cfg.num_attention_heads) != hf_cfg.num_attention_heads:
        raise ConversionError("grouped-query attention (num_key_value_heads < num_attention_heads) is not supported")
    # transformers >= 5 keeps rope_theta inside rope_parameters (alias rope_scaling), older ones beside it
    rope = getattr(hf_cfg, "rope_parameters", None) or getattr(hf_cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConversionError(f"rope scaling {rope} is not supported (plain rotary only)")
    rope_theta = float(rope.get("rope_theta") or getattr(hf_cfg, "rope_theta", None) or 10000.0)
    cfg = ModelConfig.from_preset(
        "llama", vocab_size=hf_cfg.vocab_size, context=hf_cfg.max_position_embeddings, d_model=hf_cfg.hidden_size,
        n_layers=hf_cfg.num_hidden_layers, n_heads=hf_cfg.num_attention_heads, d_ff=hf_cfg.intermediate_size,
        norm_eps=hf_cfg.rms_norm_eps, rope_theta=rope_theta,
        tie_embeddings=bool(hf_cfg.tie_word_embeddings))
    hf = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).state_dict()
    sd = {"tok_emb.weight": hf["model.embed_tokens.weight"], "norm_f.weight": hf["model.norm.weight"],
          "lm_head.weight": hf["lm_head.weight"]}
    for i in range(cfg.n_layers):
        h, o = f"model.layers.{i}.", f"blocks.{i}."
        sd.update({
            o + "norm1.weight": hf[h + "input_layernorm.weight"],
            o + "attn.wqkv.weight": torch.cat([hf[h + f"self_attn.{n}_proj.weight"] for n in "qkv"]),
            o + "attn.wo.weight": hf[h + "self_attn.o_proj.weight"],
            o + "norm2.weight": hf[h + "post_attention_layernorm.weight"],
            o + "mlp.up.weight": torch.cat([hf[h + "mlp.gate_proj.weight"], hf[h + "mlp.up_proj.weight"]]),
            o + "mlp.down.weight": hf[h + "mlp.down_proj.weight"],
        })
    tokenizer_path = tokenizer_path or (folder / "tokenizer.model")
    if not Path(tokenizer_path).is_file():
        raise ConversionError(f"no SentencePiece tokenizer at {tokenizer_path}: pass --tokenizer FILE")
    from dataset_definitions.config import TokenizerConfig
    from dataset_definitions.tokenization import build_tokenizer
    # with a path, build_tokenizer loads the file (nothing is trained)
    tokenizer = build_tokenizer(TokenizerConfig(kind="llama", path=str(tokenizer_path)), lambda: iter(()), folder, "llama")
    return {"format": CHECKPOINT_FORMAT, "model": {k: v.clone().contiguous() for k, v in sd.items()},
            "config": {"run_name": folder.name, "model": cfg.__dict__,
                       "tokenizer": {"kind": "llama", "path": str(tokenizer_path), "vocab_size": tokenizer.vocab_size}},
            "tokenizer": tokenizer.spec(), "step": 0}


def _special_ids(tokenizer_spec: dict) -> tuple[int | None, int]:
    from dataset_definitions.tokenization import load_tokenizer
    tok = load_tokenizer(tokenizer_spec)
    return tok.bos_id, tok.eos_id


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Convert checkpoints to and from other formats.")
    parser.add_argument("--ckpt", help="our checkpoint to export")
    parser.add_argument("--to", choices=("hf", "meta", "safetensors"), help="export format")
    parser.add_argument("--from", dest="source", nargs=2, metavar=("hf", "DIR"), help="import a HF Llama folder")
    parser.add_argument("--tokenizer", help="--from hf: the SentencePiece tokenizer.model (default DIR/tokenizer.model)")
    parser.add_argument("--out", required=True, help="folder (hf, meta), .safetensors file, or .pt checkpoint (--from)")
    args = parser.parse_args(argv)
    if bool(args.source) == bool(args.ckpt and args.to):
        parser.error("give either --ckpt PATH --to FORMAT, or --from hf DIR")
    try:
        if args.source:
            if args.source[0] != "hf":
                raise ConversionError(f"--from {args.source[0]}: only hf folders import")
            save_checkpoint(args.out, from_hf(args.source[1], args.tokenizer))
        else:
            _export(load_checkpoint(args.ckpt), args.to, Path(args.out))
    except (CheckpointError, ConversionError, ImportError, OSError, ValueError) as e:
        sys.exit(f"error: {str(e).splitlines()[0]}")
    print(f"wrote {args.out}")


def _export(ckpt: dict, fmt: str, out: Path) -> None:
    cfg = model_config(ckpt)
    if fmt == "safetensors":
        from safetensors.torch import save_file
        weights = {k: v.contiguous() for k, v in ckpt["model"].items()
                   if k != "lm_head.weight" or not cfg.tie_embeddings}  # a tied head is the embedding: stored once
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(weights, out, metadata={"config": json.dumps(ckpt["config"]["model"])})
    elif fmt == "meta":
        params, weights = to_meta(cfg, ckpt["model"])
        out.mkdir(parents=True, exist_ok=True)
        torch.save(weights, out / "consolidated.00.pth")
        (out / "params.json").write_text(json.dumps(params, indent=2))
    else:
        to_hf_model(ckpt).save_pretrained(out)


if __name__ == "__main__":
    main()
