"""Condor family: the baseline GPT with a selectable attention variant (design page, section 3).

model.attention picks the attention module of every block; each value names the mechanism, and
reproduces one system:
  standard          the baseline's CausalSelfAttention: the TinyStories Condor at its last version
                    (preset `condor`: d256, 1 layer, 2 heads, d_ff 128)
  head_linear_silu  each head's output through one Linear(hd, hd) + SiLU, shared by the layer's
                    heads, before the output projection: the compression study's "novel" model
                    ("richer blocks, fewer layers"); called `head_mlp` before, which still loads
  self_score        scores q kᵀ/√hd + s sᵀ/√hd with s = wx(x), a third per-head projection
                    (d_x = hd): the x·xᵀ score variant the design page lists for Condor

All three keep the project / attend split, so a KV cache slots between them (`modelskv/`):
  standard, head_linear_silu  cache k and v, each (B, H, T, hd); head_linear_silu acts per query
                              after attending
  self_score          keys come out of `project` as [k | s], (B, H, T, 2*hd): caching them caches
                      s beside k (rotated at its own position under rotary), v stays (B, H, T, hd)
"""


import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import Block, CausalSelfAttention, apply_rotary, causal_mask
from .config import ModelConfig
from .family import Family, register
from .gpt import GPT


class HeadLinearSiLUAttention(CausalSelfAttention):
    """Causal attention whose per-head outputs pass through one Linear(hd, hd) + SiLU per layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        # one module for all heads of the layer: hd*hd (+ hd) parameters, not H times that;
        # its parameter name predates the rename, so older checkpoints load strictly
        self.head_mlp = nn.Linear(cfg.head_dim, cfg.head_dim, bias=cfg.bias)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
        """Heads through head_mlp, then merged to (B, Tq, C) before the output projection."""
        y = super().attend(q, k, v, mask)                                            # (B, Tq, C)
        B, Tq, C = y.shape
        # merged heads sit side by side in C, so a view gives each head's vector without a transpose
        y = y.view(B, Tq, self.n_heads, self.head_dim)                               # (B, Tq, H, hd)
        return F.silu(self.head_mlp(y)).view(B, Tq, C)                               # (B, Tq, C)


class SelfScoreAttention(CausalSelfAttention):
    """Causal attention with an extra symmetric score s sᵀ/√hd, s = wx(x) per head, added to q kᵀ/√hd.

    s is the issue's "x x-transpose" projection. `project` returns q and k widened to [q | s] and
    [k | s], (B, H, T, 2*hd): one dot product then gives q·k + s·s, SDPA needs no (T, T) float
    mask (scale 1/√hd, is_causal), and callers that read attention from (q, k) alone, like
    tid.attention_mass_scores, see both terms. On GPUs the flash kernel wants q, k and v equally
    wide, so SDPA picks the memory-efficient kernel here. The base class's `attend` serves as is:
    it passes the scale 1/√hd and merges heads at v's width.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        # d_x = hd per head, so both terms share the 1/√hd scale and start at the same magnitude
        self.wx = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.key_dim = 2 * cfg.head_dim  # keys are [k | s]; the base scale 1/√hd stays (not 1/√(2hd))

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """[q | s], [k | s], each (B, H, T, 2*hd), and v (B, H, T, hd), from x (B, T, C)."""
        B, T, C = x.shape
        q, k, v = super().project(x, rope)                                           # 3 x (B, H, T, hd)
        s = self.wx(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)       # (B, H, T, hd)
        if rope is not None:
            # rotated like k, so under rotary s·s also depends on relative position only
            s = apply_rotary(s, *rope)
        return torch.cat([q, s], dim=-1), torch.cat([k, s], dim=-1), v

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None):
        """Attention probabilities (B, H, Tq, Tk) from [q | s] and [k | s]; mask True = may attend."""
        if mask is None:
            mask = causal_mask(q.size(-2), k.size(-2), device=q.device)
        (q, s_q), (k, s_k) = q.split(self.head_dim, dim=-1), k.split(self.head_dim, dim=-1)
        scores = (q @ k.transpose(-2, -1) + s_q @ s_k.transpose(-2, -1)) * self.scale  # (B, H, Tq, Tk)
        scores = scores.float().masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1).type_as(q)


ATTENTION: dict[str, type[CausalSelfAttention]] = {
    "standard": CausalSelfAttention,
    "head_linear_silu": HeadLinearSiLUAttention,
    "self_score": SelfScoreAttention,
}


class Condor(GPT):
    """GPT whose blocks use the attention module named by cfg.attention."""

    def make_block(self, cfg: ModelConfig, layer: int) -> nn.Module:
        return Block(cfg, attn=ATTENTION[cfg.attention](cfg))


_NOT_IN_HF = {"head_linear_silu": "per-head Linear+SiLU after attention (condor head_linear_silu)",
              "self_score": "second attention-score projection (condor self_score)"}

register(Family(
    "condor", Condor,
    # the TinyStories Condor at its last version: the baseline cut to one layer, two heads and a
    # narrow MLP, standard attention (model.attention picks the other variants)
    defaults=dict(n_layers=1, n_heads=2, d_ff=128, attention="standard"),
    missing_in_hf=lambda cfg: _NOT_IN_HF.get(cfg.attention),
    describe=lambda cfg: [f"{cfg.attention} attention"],
    own_keys=("attention",),
))
