"""Inference copies of the models with a static KV cache (Meta Llama's `forward(tokens, start_pos)`)."""

from modelskv.cache import KVCache
from modelskv.model import KVCacheMixin, build, cached_class

__all__ = ["KVCache", "KVCacheMixin", "build", "cached_class"]
