"""Our checkpoints as Hugging Face models: GPT-2 layout for the baseline, Llama layout for RoPE presets.

    python -m models.convert --ckpt checkpoints/baseline-quickstart/best.pt --to hf --out hf_model/
    python -m models.convert --ckpt PATH --to safetensors --out weights.safetensors

`baseline`-style models (learned positions, LayerNorm, GELU) become `GPT2LMHeadModel`; rotary,
RMSNorm, SwiGLU, bias-free models (`gpt2_125m`, `llama`) become `LlamaForCausalLM`. Our rotary
embedding already uses the rotate-half layout of HF Llama, so q and k need no permutation.
Falcon (mixture of experts) and Condor (attention variants) have no HF equivalent and are refused.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint, model_config
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


def to_hf_model(ckpt: dict):
    """A transformers model (eval mode, fp32) computing the same logits as the checkpoint's model."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    cfg = model_config(ckpt)
    tok = ckpt["tokenizer"]
    spec_ids = _special_ids(tok)
    config = hf_config(cfg, *spec_ids)
    cls = GPT2LMHeadModel if hf_architecture(cfg) == "gpt2" else LlamaForCausalLM
    model = cls(config)
    missing, unexpected = model.load_state_dict(to_hf_state_dict(cfg, ckpt["model"]), strict=False)
    # HF registers fixed buffers (e.g. attention bias masks) that are not weights
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))]
    if missing or unexpected:
        raise ConversionError(f"HF model did not take the weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def _special_ids(tokenizer_spec: dict) -> tuple[int | None, int]:
    from dataset_definitions.tokenization import load_tokenizer
    tok = load_tokenizer(tokenizer_spec)
    return tok.bos_id, tok.eos_id


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Export a checkpoint to Hugging Face or safetensors.")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--to", choices=("hf", "safetensors"), required=True)
    parser.add_argument("--out", required=True, help="a folder for hf, a .safetensors file otherwise")
    args = parser.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.ckpt)
        if args.to == "safetensors":
            from safetensors.torch import save_file
            weights = {k: v.contiguous() for k, v in ckpt["model"].items() if k != "lm_head.weight"
                       or not model_config(ckpt).tie_embeddings}  # a tied head is the embedding: stored once
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            save_file(weights, args.out, metadata={"config": json.dumps(ckpt["config"]["model"])})
        else:
            model = to_hf_model(ckpt)
            model.save_pretrained(args.out)
    except (CheckpointError, ConversionError, ImportError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
