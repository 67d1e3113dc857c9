"""Inference copies of the models with a static KV cache (Meta Llama's `forward(tokens, start_pos)`)."""

from modelskv.cache import KVCache
from modelskv.model import FAMILIES, KVCacheMixin, build

__all__ = ["FAMILIES", "KVCache", "KVCacheMixin", "build"]
