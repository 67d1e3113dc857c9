"""A static, preallocated key/value cache for one attention layer."""

import torch
import torch.nn as nn


class KVCache(nn.Module):
    """Keys and values of every position seen so far, in buffers of (max_batch, H, max_seq_len, d).

    `update(start_pos, k, v)` writes the new positions and returns what attention should read:
    - start_pos an int (eager decoding): the filled prefix [0, start_pos + T) and no mask; attention
      is causal bottom-right, so a one-token step reads the whole prefix (as Meta's Llama does);
    - start_pos a 0-d tensor (a compiled / CUDA-graph decode step): the whole buffer, same shape
      every step, with a boolean mask hiding the slots not yet written (as gpt-fast does).
    The buffers are not persistent, so a model's state_dict is the same with or without caches.
    """

    def __init__(self, max_batch: int, n_heads: int, max_seq_len: int, key_dim: int, value_dim: int,
                 dtype: torch.dtype, device=None):
        super().__init__()
        self.register_buffer("k", torch.zeros(max_batch, n_heads, max_seq_len, key_dim, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("v", torch.zeros(max_batch, n_heads, max_seq_len, value_dim, dtype=dtype,
                                              device=device), persistent=False)
        self.register_buffer("slots", torch.arange(max_seq_len, device=device), persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.k.size(2)

    def update(self, start_pos, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, T, d) at positions start_pos..start_pos+T-1; return (keys, values, mask)."""
        B, _, T, _ = k.shape
        if isinstance(start_pos, int):
            end = start_pos + T
            if end > self.max_seq_len:
                raise ValueError(f"KV cache holds {self.max_seq_len} positions; position {end} asked "
                                 "(build the generator with a larger max_seq_len)")
            self.k[:B, :, start_pos:end] = k
            self.v[:B, :, start_pos:end] = v
            return self.k[:B, :, :end], self.v[:B, :, :end], None
        positions = start_pos + torch.arange(T, device=k.device)                      # (T,)
        self.k[:B].index_copy_(2, positions, k.to(self.k.dtype))
        self.v[:B].index_copy_(2, positions, v.to(self.v.dtype))
        mask = self.slots[None, :] <= positions[:, None]                              # (T, S) True = may attend
        return self.k[:B], self.v[:B], mask

    def reorder(self, index: torch.Tensor) -> None:
        """Rows i of the cache become rows index[i] (beam search keeps the surviving beams' prefixes)."""
        n = index.numel()
        self.k[:n] = self.k.index_select(0, index)
        self.v[:n] = self.v.index_select(0, index)
