"""Building blocks shared by every model family and by the KV-cache copies in `modelskv/`.

Parameter names defined here (`wqkv`, `wo`, `up`, `down`, `norm1`, `norm2`, ...) are the
checkpoint format: `modelskv` reuses these classes so training checkpoints load with strict=True.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from run_stats import combine

from .config import ModelConfig


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """LayerNorm (bias per cfg.bias) or RMSNorm, as cfg.norm says."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


# ---------------------------------------------------------------------------------------------
# Positions


def rotary_table(head_dim: int, context: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (context, head_dim), for rotary embeddings in the rotate-half layout."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(context, dtype=torch.float32), inv_freq)       # (T, hd/2)
    # rotate-half (GPT-NeoX / HF Llama) pairs dimension i with i + hd/2, so both halves share angles
    angles = torch.cat([angles, angles], dim=-1)                                     # (T, hd)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, hd) by the angles of its positions; cos/sin (T, hd) are already sliced."""
    # in fp32: bf16 angles lose the low bits that tell neighbouring positions apart
    xf = x.float()
    return (xf * cos.float() + _rotate_half(xf) * sin.float()).type_as(x)


def sinusoidal_table(context: int, dim: int) -> torch.Tensor:
    """Fixed absolute positions (context, dim) of "Attention is all you need": sin on even, cos on odd."""
    pos = torch.arange(context, dtype=torch.float32)[:, None]                        # (T, 1)
    div = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = pos * div                                                               # (T, ceil(dim/2))
    table = torch.zeros(context, dim)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles[:, : dim // 2].cos()
    return table


# ---------------------------------------------------------------------------------------------
# Attention


def causal_mask(t_q: int, t_k: int, device=None) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True = may attend; the queries are the last t_q of the t_k keys."""
    ones = torch.ones(t_q, t_k, dtype=torch.bool, device=device)
    return ones.tril(diagonal=t_k - t_q)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, split into project / attend so a KV cache fits between."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        self.wqkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.key_dim = cfg.head_dim  # width of the keys `project` returns (what a KV cache stores)

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """q, k, v, each (B, H, T, hd), from x (B, T, C); rotary applied when rope=(cos, sin)."""
        B, T, C = x.shape
        q, k, v = self.wqkv(x).split(C, dim=-1)                                      # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None):
        """Attention probabilities (B, H, Tq, Tk); mask is boolean, True = may attend."""
        if mask is None:
            mask = causal_mask(q.size(-2), k.size(-2), device=q.device)
        scores = (q @ k.transpose(-2, -1)) * self.scale                               # (B, H, Tq, Tk)
        scores = scores.float().masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1).type_as(q)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
        """Heads merged back to (B, Tq, C), before the output projection.

        mask: boolean, broadcastable to (B, H, Tq, Tk), True = may attend. None means causal, with
        the queries taken as the last Tq positions of the keys (a cache holding an earlier prefix).
        """
        B, H, Tq, _ = q.shape
        p = self.dropout if self.training else 0.0
        if mask is None and Tq == k.size(-2):
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=self.scale)
        else:
            # is_causal aligns the mask top-left, wrong once keys outnumber queries
            if mask is None:
                mask = causal_mask(Tq, k.size(-2), device=q.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scale)
        return y.transpose(1, 2).reshape(B, Tq, H * v.size(-1))                      # (B, Tq, C)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache=None, start_pos=0):
        """Self-attention of x (B, T, C); with a KV cache (inference), x sits at start_pos.. after the cached prefix."""
        q, k, v = self.project(x, rope)
        mask = None
        if cache is not None:
            k, v, mask = cache.update(start_pos, k, v)
        return self.wo(self.attend(q, k, v, mask))                                   # (B, T, C)


# ---------------------------------------------------------------------------------------------
# MLP and block


class MLP(nn.Module):
    """Feed-forward: up -> activation -> down; SwiGLU keeps gate and up fused in `up`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        width = 2 * cfg.d_ff if cfg.mlp == "swiglu" else cfg.d_ff
        self.up = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)                                                               # (B, T, d_ff or 2*d_ff)
        return self.down(activate(h, self.kind))                                     # (B, T, C)


def activate(h: torch.Tensor, kind: str) -> torch.Tensor:
    """The MLP nonlinearity of cfg.mlp; SwiGLU's `h` holds gate and up side by side."""
    if kind == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if kind == "relu":
        return F.relu(h)
    return F.gelu(h, approximate="tanh" if kind == "gelu_tanh" else "none")


def _split(out) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    # a sub-module returns a tensor, or (tensor, aux_loss, stats) when it has more to say (MoE routing)
    return out if isinstance(out, tuple) else (out, None, {})


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm1(x)), then x + mlp(norm2(x)); returns (x, aux_loss, stats)."""

    def __init__(self, cfg: ModelConfig, attn: nn.Module | None = None, mlp: nn.Module | None = None):
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.d_model)
        self.attn = attn if attn is not None else CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg, cfg.d_model)
        self.mlp = mlp if mlp is not None else MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)  # residual dropout; identity at p=0 or in eval

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache=None, start_pos=0):
        """x (B, T, C) -> (x, aux_loss or None, stats); `cache` and `start_pos` are the attention's
        KV cache (inference only)."""
        a, attn_aux, attn_stats = _split(self.attn(self.norm1(x), rope, cache, start_pos))
        x = x + self.drop(a)                                                         # (B, T, C)
        m, mlp_aux, mlp_stats = _split(self.mlp(self.norm2(x)))
        x = x + self.drop(m)
        aux = [a for a in (attn_aux, mlp_aux) if a is not None]
        return x, sum(aux) if aux else None, combine(attn_stats, mlp_stats)

    def attention_probs(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """The attention probabilities (B, H, T, T) this block's attention gives the input x (B, T, C)."""
        q, k, _ = self.attn.project(self.norm1(x), rope)
        return self.attn.attention_weights(q, k)
