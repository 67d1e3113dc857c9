"""Our checkpoints to and from other formats: Hugging Face (GPT-2, Llama), Meta Llama, safetensors.

    python -m models.convert --ckpt checkpoints/baseline-quickstart/best.pt --to hf --out hf_model/  # + tokenizer
    python -m models.convert --ckpt PATH --to meta --out meta_model/      # consolidated.00.pth + params.json
    python -m models.convert --ckpt PATH --to safetensors --out weights.safetensors
    python -m models.convert --from hf hf_model/ --out checkpoints/imported/last.pt [--tokenizer PATH]
    python -m models.convert --from meta meta_model/ --context 2048 --tokenizer tokenizer.model --out ...
    python -m models.convert --from safetensors weights.safetensors --out checkpoints/imported/last.pt

An existing --out (a file, or a folder holding files) is replaced only with --overwrite, and a write
into a run's checkpoints/<run>/ folder holds that run's lock (never beside a training of the run).

What each format can express (anything else is refused with a ConversionError naming what it lacks):
  hf, GPT-2   learned positions, LayerNorm, GELU (erf, or tanh as GPT-2's "gelu_new"), biases:
              `baseline`, `condor` with standard attention
  hf, Llama   rotary, RMSNorm, SwiGLU, no biases: `gpt2_125m`, `llama`
  meta        the Llama layout only, always with a separate output matrix
  safetensors every family: our parameter names, the model config in the metadata
Neither HF nor Meta has a mixture-of-experts FFN (`falcon`), a per-head Linear+SiLU after attention
(`condor`, head_linear_silu) or a second score projection (`condor`, self_score).

Imports read the sizes from the files and give preset `baseline` (GPT-2) or `llama` (HF Llama,
Meta); a round trip ours -> format -> ours gives back the same tensors under the same names, so
the same logits. Our rotary embedding uses HF Llama's rotate-half layout, so q and k pass to HF
unchanged; Meta's reference rotates interleaved pairs, so the rows of wq and wk are permuted on the
way out and back on the way in. GPT-2's Conv1D stores weights (in, out): transposed both ways.
"""

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

import torch

from fileio import LockedError, exclusive_lock

from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, model_config, save_checkpoint
from .config import ModelConfig
from .family import family_of


class ConversionError(ValueError):
    """The model has no equivalent in the requested format, or the files are not what we read."""


_GPT2_LAYOUT = ("learned", "layernorm", ("gelu", "gelu_tanh"), True)
_LLAMA_LAYOUT = ("rotary", "rmsnorm", ("swiglu",), False)


def hf_architecture(cfg: ModelConfig, fmt: str = "Hugging Face") -> str:
    """"gpt2" or "llama": the HF family whose computation equals this model's, or ConversionError."""
    missing = family_of(cfg.preset).missing_in_hf(cfg)
    if missing:
        raise ConversionError(f"{fmt} has no {missing}: no Hugging Face or Meta model computes it "
                              "(export to safetensors instead)")
    for arch, (position, norm, mlps, bias) in (("gpt2", _GPT2_LAYOUT), ("llama", _LLAMA_LAYOUT)):
        if (cfg.position, cfg.norm, cfg.bias) == (position, norm, bias) and cfg.mlp in mlps:
            return arch
    raise ConversionError(f"{fmt} has no model with position={cfg.position}, norm={cfg.norm}, mlp={cfg.mlp}, "
                          f"bias={cfg.bias}: no Hugging Face model computes it; GPT-2 needs learned/layernorm/gelu "
                          "with biases, Llama rotary/rmsnorm/swiglu without")


# ---------------------------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------------------------

def hf_config(cfg: ModelConfig, bos_id: int | None, eos_id: int | None, pad_id: int | None = None):
    """The transformers config object of the equivalent HF model."""
    from transformers import GPT2Config, LlamaConfig

    if hf_architecture(cfg) == "gpt2":
        return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context, n_embd=cfg.d_model,
                          n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
                          # exact erf GELU as F.gelu, or GPT-2's tanh approximation
                          activation_function="gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
                          layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          tie_word_embeddings=cfg.tie_embeddings, bos_token_id=bos_id, eos_token_id=eos_id,
                          pad_token_id=pad_id)
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_heads, max_position_embeddings=cfg.context,
                       rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, hidden_act="silu",
                       tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
                       bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)


def model_config_from_hf(hf_cfg) -> ModelConfig:
    """Our ModelConfig computing what a transformers GPT-2 or Llama config computes, or ConversionError."""
    get = lambda key, default=None: getattr(hf_cfg, key, default)  # noqa: E731 (older configs lack keys)
    if hf_cfg.model_type == "gpt2":
        act = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}.get(hf_cfg.activation_function)
        if act is None:
            raise ConversionError(f"GPT-2 activation {hf_cfg.activation_function!r} is not one we compute (gelu, gelu_new)")
        if get("scale_attn_by_inverse_layer_idx") or not get("scale_attn_weights", True):
            raise ConversionError("GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported")
        return ModelConfig.from_preset(
            "baseline", vocab_size=hf_cfg.vocab_size, context=hf_cfg.n_positions, d_model=hf_cfg.n_embd,
            n_layers=hf_cfg.n_layer, n_heads=hf_cfg.n_head, d_ff=hf_cfg.n_inner or 4 * hf_cfg.n_embd, mlp=act,
            norm_eps=hf_cfg.layer_norm_epsilon, tie_embeddings=bool(hf_cfg.tie_word_embeddings))
    if hf_cfg.model_type != "llama":
        raise ConversionError(f"a {hf_cfg.model_type} model: only GPT-2 and Llama architectures import")
    if (get("num_key_value_heads") or hf_cfg.num_attention_heads) != hf_cfg.num_attention_heads:
        raise ConversionError("grouped-query attention (num_key_value_heads < num_attention_heads) is not supported")
    if get("attention_bias") or get("mlp_bias") or get("hidden_act", "silu") != "silu":
        raise ConversionError("Llama with biases or an activation other than silu is not supported")
    if (get("head_dim") or hf_cfg.hidden_size // hf_cfg.num_attention_heads) * hf_cfg.num_attention_heads != hf_cfg.hidden_size:
        raise ConversionError("Llama with head_dim * num_attention_heads != hidden_size is not supported")
    # transformers >= 5 keeps rope_theta inside rope_parameters (alias rope_scaling), older ones beside it
    rope = get("rope_parameters") or get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConversionError(f"rope scaling {rope} is not supported (plain rotary only)")
    return ModelConfig.from_preset(
        "llama", vocab_size=hf_cfg.vocab_size, context=hf_cfg.max_position_embeddings, d_model=hf_cfg.hidden_size,
        n_layers=hf_cfg.num_hidden_layers, n_heads=hf_cfg.num_attention_heads, d_ff=hf_cfg.intermediate_size,
        norm_eps=hf_cfg.rms_norm_eps, rope_theta=float(rope.get("rope_theta") or get("rope_theta") or 10000.0),
        tie_embeddings=bool(hf_cfg.tie_word_embeddings))


# (ours, GPT-2's, Conv1D weight stored transposed) per block; every one has a weight and a bias
_GPT2_BLOCK = (("norm1", "ln_1", False), ("norm2", "ln_2", False), ("attn.wqkv", "attn.c_attn", True),
               ("attn.wo", "attn.c_proj", True), ("mlp.up", "mlp.c_fc", True), ("mlp.down", "mlp.c_proj", True))
# ours -> HF Llama per block; wqkv and mlp.up are split / concatenated apart
_LLAMA_BLOCK = (("norm1.weight", "input_layernorm.weight"), ("attn.wo.weight", "self_attn.o_proj.weight"),
                ("norm2.weight", "post_attention_layernorm.weight"), ("mlp.down.weight", "mlp.down_proj.weight"))


def to_hf_state_dict(cfg: ModelConfig, sd: dict) -> dict:
    """Rename (and, for GPT-2's Conv1D, transpose; for Llama, split) our weights into the HF layout."""
    out = {}
    if hf_architecture(cfg) == "gpt2":
        out["transformer.wte.weight"], out["transformer.wpe.weight"] = sd["tok_emb.weight"], sd["pos_emb.weight"]
        for i in range(cfg.n_layers):
            for a, b, transposed in _GPT2_BLOCK:
                weight = sd[f"blocks.{i}.{a}.weight"]
                out[f"transformer.h.{i}.{b}.weight"] = weight.t() if transposed else weight  # Conv1D: (in, out)
                out[f"transformer.h.{i}.{b}.bias"] = sd[f"blocks.{i}.{a}.bias"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["norm_f.weight"], sd["norm_f.bias"]
    else:
        out["model.embed_tokens.weight"], out["model.norm.weight"] = sd["tok_emb.weight"], sd["norm_f.weight"]
        for i in range(cfg.n_layers):
            ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
            q, k, v = sd[ours + "attn.wqkv.weight"].split(cfg.d_model, dim=0)
            gate, up = sd[ours + "mlp.up.weight"].split(cfg.d_ff, dim=0)  # SwiGLU: gate first, as `activate`
            out.update({theirs + "self_attn.q_proj.weight": q, theirs + "self_attn.k_proj.weight": k,
                        theirs + "self_attn.v_proj.weight": v,
                        theirs + "mlp.gate_proj.weight": gate, theirs + "mlp.up_proj.weight": up})
            out.update({theirs + b: sd[ours + a] for a, b in _LLAMA_BLOCK})
    out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.clone().contiguous() for k, v in out.items()}  # own copies: the HF model stands alone


def from_hf_state_dict(cfg: ModelConfig, hf: dict) -> dict:
    """Our state dict from an HF GPT-2 / Llama state dict (the inverse of `to_hf_state_dict`)."""
    if hf_architecture(cfg) == "gpt2":
        sd = {"tok_emb.weight": hf["transformer.wte.weight"], "pos_emb.weight": hf["transformer.wpe.weight"],
              "norm_f.weight": hf["transformer.ln_f.weight"], "norm_f.bias": hf["transformer.ln_f.bias"]}
        for i in range(cfg.n_layers):
            for a, b, transposed in _GPT2_BLOCK:
                weight = hf[f"transformer.h.{i}.{b}.weight"]
                sd[f"blocks.{i}.{a}.weight"] = weight.t() if transposed else weight
                sd[f"blocks.{i}.{a}.bias"] = hf[f"transformer.h.{i}.{b}.bias"]
    else:
        sd = {"tok_emb.weight": hf["model.embed_tokens.weight"], "norm_f.weight": hf["model.norm.weight"]}
        for i in range(cfg.n_layers):
            ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
            sd[ours + "attn.wqkv.weight"] = torch.cat([hf[theirs + f"self_attn.{n}_proj.weight"] for n in "qkv"])
            sd[ours + "mlp.up.weight"] = torch.cat([hf[theirs + "mlp.gate_proj.weight"], hf[theirs + "mlp.up_proj.weight"]])
            sd.update({ours + a: hf[theirs + b] for a, b in _LLAMA_BLOCK})
    # a tied head is the embedding (HF may not list it at all)
    sd["lm_head.weight"] = sd["tok_emb.weight"] if cfg.tie_embeddings else hf["lm_head.weight"]
    return {k: v.clone().contiguous() for k, v in sd.items()}


def to_hf_model(ckpt: dict, special_ids: tuple[int | None, int | None, int | None] | None = None):
    """A transformers model (eval mode, fp32) computing the same logits as the checkpoint's model.

    special_ids: (bos, eos, pad) for the HF config; default: read off the checkpoint's tokenizer.
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


def from_hf(folder: str | Path) -> tuple[ModelConfig, dict]:
    """(our ModelConfig, our state dict) from a Hugging Face GPT-2 or Llama folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = model_config_from_hf(AutoConfig.from_pretrained(folder))
    except ConversionError as e:
        raise ConversionError(f"{folder}: {e}") from None
    except (OSError, ValueError) as e:
        raise ConversionError(f"{folder} is not a Hugging Face model folder: {str(e).splitlines()[0]}") from None
    pickled = sorted(Path(folder).glob("*.bin"))
    if pickled and not any(Path(folder).glob("*.safetensors")):
        raise ConversionError(f"{pickled[0]} is in PyTorch's pickle format, which can run code when loaded: "
                              "convert it to safetensors where you trust the file (AutoModelForCausalLM.from_pretrained"
                              "(folder).save_pretrained(folder, safe_serialization=True)), then import the folder")
    hf = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).float().state_dict()
    return cfg, from_hf_state_dict(cfg, hf)


# ---------------------------------------------------------------------------------------------
# Meta Llama (consolidated.00.pth + params.json)
# ---------------------------------------------------------------------------------------------

def to_meta(cfg: ModelConfig, sd: dict) -> tuple[dict, dict]:
    """(params.json, consolidated state dict) of Meta's Llama reference for a Llama-layout model.

    params.json leaves out max_seq_len: Meta's loader passes it itself (ModelArgs(max_seq_len=...,
    **params)), so the key would collide; importing needs the context given again.
    """
    if hf_architecture(cfg, "Meta's Llama format") != "llama":
        raise ConversionError("Meta's Llama format has no learned positions, LayerNorm, GELU or biases: "
                              "it holds rotary / RMSNorm / SwiGLU bias-free models only")
    hf = to_hf_state_dict(cfg, sd)
    out = {meta: hf[theirs] for meta, theirs in _META_TOP}
    for i in range(cfg.n_layers):
        for meta, theirs in _META_BLOCK:
            w = hf[f"model.layers.{i}.{theirs}"]
            out[f"layers.{i}.{meta}"] = _interleave_rotary(w, cfg.n_heads) if meta in _ROTATED else w
    # Meta derives the FFN width from dim: round_up(int(multiplier * int(8 * dim / 3)), multiple_of);
    # multiple_of = d_ff and multiplier * int(8 * dim / 3) = d_ff + 0.5 (truncated to d_ff) give exactly
    # d_ff; d_ff - 0.5 would truncate d_ff = 1 to a width of 0
    base = int(2 * 4 * cfg.d_model / 3)
    params = {"dim": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "vocab_size": cfg.vocab_size,
              "norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
              "multiple_of": cfg.d_ff, "ffn_dim_multiplier": (cfg.d_ff + 0.5) / base}
    return params, out


def from_meta(params: dict, weights: dict, context: int | None) -> tuple[ModelConfig, dict]:
    """(our ModelConfig, our state dict) from Meta's params.json and consolidated weights.

    context: the model's maximum sequence length (params.json does not hold it; a max_seq_len
    there is used when context is None). The FFN width and the vocabulary come from the weights;
    the head is tied when the output matrix equals the embedding.
    """
    if params.get("n_kv_heads", params["n_heads"]) != params["n_heads"]:
        raise ConversionError("grouped-query attention (n_kv_heads < n_heads) is not supported")
    if params.get("use_scaled_rope"):
        raise ConversionError("scaled rotary (use_scaled_rope) is not supported (plain rotary only)")
    context = context or params.get("max_seq_len")
    if not context:
        raise ConversionError("params.json has no max_seq_len: give the context (--context N)")
    emb, head = weights["tok_embeddings.weight"], weights["output.weight"]
    cfg = ModelConfig.from_preset(
        "llama", vocab_size=emb.shape[0], context=int(context), d_model=params["dim"], n_layers=params["n_layers"],
        n_heads=params["n_heads"], d_ff=weights["layers.0.feed_forward.w1.weight"].shape[0],
        norm_eps=params.get("norm_eps", 1e-5), rope_theta=float(params.get("rope_theta", 10000.0)),
        tie_embeddings=torch.equal(emb, head))
    hf = {theirs: weights[meta] for meta, theirs in _META_TOP}
    for i in range(cfg.n_layers):
        for meta, theirs in _META_BLOCK:
            w = weights[f"layers.{i}.{meta}"]
            hf[f"model.layers.{i}.{theirs}"] = _deinterleave_rotary(w, cfg.n_heads) if meta in _ROTATED else w
    return cfg, from_hf_state_dict(cfg, hf)


_META_TOP = (("tok_embeddings.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight"),
             ("output.weight", "lm_head.weight"))
_META_BLOCK = (("attention.wq.weight", "self_attn.q_proj.weight"), ("attention.wk.weight", "self_attn.k_proj.weight"),
               ("attention.wv.weight", "self_attn.v_proj.weight"), ("attention.wo.weight", "self_attn.o_proj.weight"),
               ("feed_forward.w1.weight", "mlp.gate_proj.weight"), ("feed_forward.w2.weight", "mlp.down_proj.weight"),
               ("feed_forward.w3.weight", "mlp.up_proj.weight"), ("attention_norm.weight", "input_layernorm.weight"),
               ("ffn_norm.weight", "post_attention_layernorm.weight"))
_ROTATED = ("attention.wq.weight", "attention.wk.weight")


def _interleave_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection from rotate-half order (i, i + hd/2) to interleaved pairs (2i, 2i + 1)."""
    d_out, d_in = w.shape
    return w.view(n_heads, 2, d_out // n_heads // 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def _deinterleave_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `_interleave_rotary`: interleaved pairs back to rotate-half order."""
    d_out, d_in = w.shape
    return w.view(n_heads, d_out // n_heads // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)


# ---------------------------------------------------------------------------------------------
# safetensors (every family; our names)
# ---------------------------------------------------------------------------------------------

def to_safetensors(ckpt: dict) -> tuple[dict, dict]:
    """(tensors, metadata) for a .safetensors file: a tied head is stored once, as the embedding."""
    cfg = model_config(ckpt)
    tensors = {k: v.contiguous() for k, v in ckpt["model"].items() if k != "lm_head.weight" or not cfg.tie_embeddings}
    return tensors, {"config": json.dumps(cfg.__dict__), "tokenizer": json.dumps(ckpt["tokenizer"])}


def from_safetensors(path: str | Path) -> tuple[ModelConfig, dict, dict | None]:
    """(our ModelConfig, our state dict, tokenizer spec or None) from a file written by `to_safetensors`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # missing file, not safetensors
        raise ConversionError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    if "config" not in meta:
        raise ConversionError(f"{path} has no model config in its metadata (not written by models.convert)")
    try:
        cfg = ModelConfig(**json.loads(meta["config"]))
        spec = json.loads(meta["tokenizer"]) if "tokenizer" in meta else None
    except (TypeError, ValueError) as e:  # not JSON, not a mapping, keys or values not ours
        raise ConversionError(f"{path}: its metadata is not a model config of ours ({str(e).splitlines()[0]}); "
                              "import a file written by models.convert --to safetensors") from None
    if spec is not None and not isinstance(spec, dict):
        raise ConversionError(f"{path}: its metadata 'tokenizer' is not a tokenizer spec of ours; "
                              "pass --tokenizer PATH")
    if cfg.tie_embeddings and "tok_emb.weight" in sd:  # without it the strict load names what is missing
        sd["lm_head.weight"] = sd["tok_emb.weight"]
    return cfg, sd, spec


# ---------------------------------------------------------------------------------------------
# Checkpoints and the CLI
# ---------------------------------------------------------------------------------------------

def imported_checkpoint(name: str, cfg: ModelConfig, sd: dict, tokenizer_spec: dict) -> dict:
    """A checkpoint of ours (step 0) holding imported weights; the model must load them strictly."""
    from . import build
    from .checkpoint import load_weights

    missing = {"kind", "path", "vocab_size"} - tokenizer_spec.keys()
    if missing:
        raise ConversionError(f"the tokenizer spec lacks {sorted(missing)}: pass --tokenizer PATH")
    ckpt = {"format": CHECKPOINT_FORMAT, "model": sd, "tokenizer": tokenizer_spec, "step": 0,
            "config": {"run_name": name, "model": dict(cfg.__dict__),
                       "tokenizer": {k: tokenizer_spec[k] for k in ("kind", "path", "vocab_size")}}}
    with torch.device("meta"), warnings.catch_warnings():  # names and shapes only: nothing is allocated
        warnings.simplefilter("ignore", UserWarning)          # (copying into a meta tensor is a no-op)
        load_weights(build(cfg), ckpt)
    return ckpt


def import_tokenizer(folder: Path, path: str | None) -> dict:
    """The spec of the tokenizer at `path`, or else of the one in `folder`: tokenizer.model, our
    source_tokenizer.json (written by `--to hf`), or encoder.json + vocab.bpe (GPT-2's files)."""
    from dataset_definitions.tokenization import GPT2_FILES, tokenizer_from_file

    if path:
        return tokenizer_from_file(path).spec()
    for name in ("tokenizer.model", "source_tokenizer.json"):
        if (folder / name).is_file():
            return tokenizer_from_file(folder / name).spec()
    if all((folder / name).is_file() for name in GPT2_FILES):
        return tokenizer_from_file(folder).spec()
    raise ConversionError(f"no tokenizer found in {folder}: pass --tokenizer PATH (a tokenizer.model, a tokenizer "
                          ".json of ours, or a folder with encoder.json + vocab.bpe)")


def _special_ids(tokenizer_spec: dict) -> tuple[int | None, int | None, int | None]:
    from dataset_definitions.tokenization import load_tokenizer
    tok = load_tokenizer(tokenizer_spec)
    return tok.bos_id, tok.eos_id, tok.pad_id


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Convert checkpoints to and from other formats.")
    parser.add_argument("--ckpt", help="our checkpoint to export")
    parser.add_argument("--to", choices=("hf", "meta", "safetensors"), help="export format")
    parser.add_argument("--from", dest="source", nargs=2, metavar=("FORMAT", "PATH"),
                        help="import: hf FOLDER, meta FOLDER or safetensors FILE")
    parser.add_argument("--tokenizer", help="import: the tokenizer (tokenizer.model, our .json, or a GPT-2 folder); "
                                            "default: the one in the folder")
    parser.add_argument("--context", type=int, help="--from meta: the model's context (params.json does not hold it)")
    parser.add_argument("--out", required=True, help="folder (hf, meta), .safetensors file, or .pt checkpoint (--from)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused without it)")
    args = parser.parse_args(argv)
    if bool(args.source) == bool(args.ckpt and args.to):
        parser.error("give either --ckpt PATH --to FORMAT, or --from FORMAT PATH")
    out = Path(args.out)
    try:
        _refuse_existing(out, args.overwrite)
        with _run_lock_of(out.parent if args.source or args.to == "safetensors" else out):
            if args.source:
                save_checkpoint(out, _import(*args.source, tokenizer=args.tokenizer, context=args.context))
            else:
                _export(load_checkpoint(args.ckpt), args.to, out)
    except LockedError as e:
        sys.exit(f"error: --out {out} is in the folder of a run being trained ({e}): wait for it to finish, "
                 "or choose another --out")
    except (CheckpointError, ConversionError, ImportError, OSError, ValueError) as e:
        sys.exit(f"error: {str(e).splitlines()[0]}")
    print(f"wrote {args.out}")


def _refuse_existing(out: Path, overwrite: bool) -> None:
    """An existing --out (a checkpoint, a run's file, a folder holding files) is replaced only with --overwrite."""
    if not overwrite and (out.is_file() or (out.is_dir() and any(out.iterdir()))):
        raise ConversionError(f"--out {out} already exists: pass --overwrite to replace it, or choose another --out")


def _run_lock_of(folder: Path):
    """The run's lock (run_files.py) when `folder` is a run's checkpoints/<run>/ folder (its parent holds the
    .locks of a checkpoint_dir); else nothing to hold."""
    from run_files import lock_path  # the run's lock path is the trainer's convention

    folder = folder.resolve()
    if (folder.parent / ".locks").is_dir():
        return exclusive_lock(lock_path(folder.parent, folder.name))
    return contextlib.nullcontext()


def _import(fmt: str, path: str, tokenizer: str | None, context: int | None) -> dict:
    path = Path(path)
    if fmt == "safetensors":
        cfg, sd, spec = from_safetensors(path)
        spec = import_tokenizer(path.parent, tokenizer) if tokenizer or spec is None else spec
    elif fmt == "meta":
        for name in ("params.json", "consolidated.00.pth"):
            if not (path / name).is_file():
                raise ConversionError(f"{path / name} not found (a Meta Llama folder holds params.json + consolidated.00.pth)")
        weights = torch.load(path / "consolidated.00.pth", map_location="cpu", weights_only=True)
        cfg, sd = from_meta(json.loads((path / "params.json").read_text()), weights, context)
        spec = import_tokenizer(path, tokenizer)
    elif fmt == "hf":
        cfg, sd = from_hf(path)
        spec = import_tokenizer(path, tokenizer)
    else:
        raise ConversionError(f"--from {fmt}: formats are hf, meta, safetensors")
    return imported_checkpoint(path.stem, cfg, sd, spec)


def _export(ckpt: dict, fmt: str, out: Path) -> None:
    cfg = model_config(ckpt)
    if fmt == "safetensors":
        from safetensors.torch import save_file
        tensors, metadata = to_safetensors(ckpt)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, out, metadata=metadata)
    elif fmt == "meta":
        params, weights = to_meta(cfg, ckpt["model"])
        out.mkdir(parents=True, exist_ok=True)
        torch.save(weights, out / "consolidated.00.pth")
        (out / "params.json").write_text(json.dumps(params, indent=2))
    else:
        from dataset_definitions.hf_tokenizer import save_hf_tokenizer
        from dataset_definitions.tokenization import load_tokenizer
        model = to_hf_model(ckpt)
        tokenizer = load_tokenizer(ckpt["tokenizer"])  # before writing: a missing tokenizer file writes nothing
        model.save_pretrained(out)
        save_hf_tokenizer(tokenizer, out)


if __name__ == "__main__":
    main()
