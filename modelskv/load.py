"""One way to turn a checkpoint into a model ready for inference: generation, scoring, eval, figures.

    loaded = load_model("checkpoints/<run>/best.pt", max_batch=4, device="auto", dtype="auto")
    logits = loaded.model(tokens, start_pos=0)          # a modelskv model: KV cache for (4, context)
    loaded.tokenizer, loaded.step, loaded.run_config()  # what the callers need besides the model

The model is built as the trainer builds it (on the host, so position tables are the same to the
bit) with its KV caches for (max_batch, max_seq_len), made once and in the final dtype; it takes the
checkpoint's weights (strict), moves to the device with its caches, is cast, and quantised last.
`training_model=True` gives the training class in eval mode instead (no cache; what
`Trainer.evaluate` runs, for `run_perplexity.py --packed`).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

import models
from dataset_definitions.tokenization import Tokenizer, load_tokenizer
from experiment_config import RunConfig, from_dict
from models import ModelConfig
from models.checkpoint import load_checkpoint, load_weights, model_config
from modelskv.model import build
from modelskv.quantize import quantize_int8
from runtime import require_memory, resolve_device, resolve_dtype, size

QUANTIZE = (None, "int8")


@dataclass
class LoadedModel:
    """A checkpoint's model on its device, with what callers need to use it."""
    model: nn.Module            # modelskv model (caches attached), or the training class in eval mode
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype          # of the weights (int8 layers keep their scales in it)
    step: int                   # training step the checkpoint was saved at
    config: dict                # the run config as saved (plain dicts)

    def run_config(self) -> RunConfig:
        """The saved config as a RunConfig (checked as when it was written)."""
        return from_dict(self.config)


def load_model(ckpt: str | Path, max_batch: int = 1, max_seq_len: int | None = None, device: str = "auto",
               dtype: str = "auto", quantize: str | None = None, training_model: bool = False) -> LoadedModel:
    """Load a checkpoint for inference.

    Args:
        ckpt: path of a checkpoint written by the trainer (or imported by models.convert).
        max_batch: most sequences decoded together; sizes the KV cache.
        max_seq_len: longest prompt + generation (default and maximum: the model's context).
        device: "auto", "cpu", "cuda", ...
        dtype: of the weights and caches: "auto" (bf16 on GPUs, fp32 on CPU), "fp32", "bf16" or "fp16".
        quantize: None, or "int8" for weight-only int8 linear layers (modelskv/quantize.py).
        training_model: the training class in eval mode (no cache) instead of the inference class.
            Its Falcon layers keep their eval capacity, which may drop tokens depending on the batch;
            the inference class's mixture-of-experts layers drop nothing.
    Returns:
        A LoadedModel.
    """
    checkpoint = load_checkpoint(ckpt)
    dev = resolve_device(device)
    model = inference_model(model_config(checkpoint), dev, resolve_dtype(dtype, dev), max_batch, max_seq_len,
                            quantize, training_model, checkpoint)
    return LoadedModel(model, load_tokenizer(checkpoint["tokenizer"]), dev, next(model.parameters()).dtype,
                       int(checkpoint.get("step", 0)), checkpoint["config"])


def check_fits(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, max_batch: int,
               max_seq_len: int | None) -> None:
    """A ValueError saying the size, before anything is allocated, when the weights and the KV caches for
    (max_batch, max_seq_len) need more memory than `device` has free."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = models.build(cfg)
    seq = max_seq_len or cfg.context
    # per layer, as KVCacheMixin.setup_caches makes them: keys and values of (max_batch, heads, seq, dim)
    cache = sum(max_batch * b.attn.n_heads * seq * (b.attn.key_dim + b.attn.head_dim) for b in model.blocks)
    cache *= dtype.itemsize
    weights = sum(p.numel() for p in model.parameters()) * dtype.itemsize
    require_memory(cache + weights, device,
                   f"a KV cache for {max_batch:,} sequences x {seq:,} positions ({size(cache)}, "
                   f"with {size(weights)} of weights)",
                   "decode fewer prompts or beams at once, or a shorter max_seq_len")


def inference_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, max_batch: int = 1,
                    max_seq_len: int | None = None, quantize: str | None = None, training_model: bool = False,
                    checkpoint: dict | None = None) -> nn.Module:
    """cfg's model on `device` in `dtype`, with the checkpoint's weights (else its seeded initialisation),
    quantised if asked, caches for (max_batch, max_seq_len) allocated once; in eval mode."""
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize {quantize!r} is not one of {list(QUANTIZE)}")
    if not training_model:
        check_fits(cfg, device, dtype, max_batch, max_seq_len)
    model = models.build(cfg) if training_model else build(cfg, max_batch, max_seq_len, dtype)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    model.to(device=device, dtype=dtype)  # moves the caches with the weights; they are in dtype already
    if quantize == "int8":
        quantize_int8(model)
    return model.eval()
