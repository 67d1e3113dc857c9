"""Inference copies of every model family: the same modules and parameter names, plus a KV cache.

    model = modelskv.build(cfg, max_batch=8, max_seq_len=256)    # any preset
    model.load_state_dict(checkpoint["model"])                    # strict: the training names
    logits = model(prompt_tokens, start_pos=0)                    # prefill, (B, T, V)
    logits = model(next_tokens, start_pos=T)                      # one-token decode step

Each class is its family's training class (models/family.py) with `KVCacheMixin` in front, made
on first use: the blocks, embeddings and head come from `models/` unchanged; the mixin hangs a
`KVCache` on every attention layer and replaces `forward` with Meta Llama's `forward(tokens, start_pos)`.
"""

import functools

import torch

from models import ModelConfig, family_of
from modelskv.cache import KVCache


class KVCacheMixin:
    """Adds caches and the incremental forward to a model class of `models/`."""

    def setup_caches(self, max_batch: int, max_seq_len: int, dtype: torch.dtype | None = None) -> None:
        """(Re)allocate one KVCache per layer for `max_batch` sequences of up to `max_seq_len` positions."""
        if max_seq_len > self.cfg.context:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's context {self.cfg.context}")
        weight = self.tok_emb.weight
        for block in self.blocks:
            attn = block.attn
            block.kv_cache = KVCache(max_batch, attn.n_heads, max_seq_len, attn.key_dim, attn.head_dim,
                                     dtype or weight.dtype, weight.device)

    @property
    def max_batch(self) -> int:
        return self.blocks[0].kv_cache.k.size(0)

    @property
    def max_seq_len(self) -> int:
        return self.blocks[0].kv_cache.max_seq_len

    def forward(self, tokens: torch.Tensor, start_pos=0) -> torch.Tensor:
        """Logits (B, T, V) of tokens (B, T) placed at positions start_pos.. after the cached prefix."""
        x, rope = self.embed(tokens, start_pos=start_pos)
        for block in self.blocks:
            x, _, _ = block(x, rope, block.kv_cache, start_pos)
        return self.head(x)

    def forward_full(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of the whole sequence without the cache (the training forward): the no-cache baseline."""
        return super().forward(tokens).logits

    def reorder_caches(self, index: torch.Tensor) -> None:
        """Keep cache rows `index` (beam search)."""
        for block in self.blocks:
            block.kv_cache.reorder(index)


@functools.cache
def cached_class(model_class: type) -> type:
    """`model_class` of models/ with a KV cache: KVCacheMixin in front of it."""
    return type(f"KV{model_class.__name__}", (KVCacheMixin, model_class),
                {"__doc__": f"{model_class.__name__} with a KV cache.", "__module__": __name__})


def build(cfg: ModelConfig, max_batch: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None):
    """The inference model of cfg.preset's family with caches for (max_batch, max_seq_len), in eval mode.

    The family may adjust the config for inference (`Family.for_inference`: mixture-of-experts
    layers get an eval capacity that drops nothing, so decoding one token at a time equals a full
    forward).
    """
    family = family_of(cfg.preset)
    model = cached_class(family.model)(family.for_inference(cfg))
    model.setup_caches(max_batch, max_seq_len or cfg.context, dtype)
    return model.eval()
