"""Falcon family: the baseline GPT with every FFN a top-k mixture of experts (preset `falcon`).

Routing (Switch / GShard style, written out in `route`): a bias-free fp32 router scores E experts,
each token keeps its top-k, their softmax weights renormalised to sum to 1. Each expert takes at
most `capacity` assignments per forward; the rest are dropped and add nothing (the token then rides
on the residual).

Overflow rule: an expert that overflows keeps earlier positions first, then lower batch rows, and
a token's k choices together (token-major). The TinyStories Falcon kept earlier batch rows first
(row-major: all of row 0, then row 1, ...). We rank positions before rows because then whether
position t is kept depends only on positions <= t of the batch: the model stays causal with drops,
and decoding one position at a time with a KV cache routes as the full forward does. Row-major
would let a later token of row 0 push out an early token of row 1.

Load-balance loss (Switch Transformer): E * sum_e importance_e * load_e / k. `model.balance_count`
says when load is counted: `after_capacity` (default, as the TinyStories Falcon did) counts only
the assignments an expert kept, so an overflowing expert's excess adds nothing; `before_capacity`
counts every top-k choice, so routing that overflows an expert is penalised in full. The logged
`moe_load_l{i}_e{j}` is the routing itself, before capacity, either way.
"""

import math
from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from run_stats import Stat

from .blocks import Block, activate
from .config import ModelConfig
from .family import Family, register
from .gpt import GPT


class Routing(NamedTuple):
    """The routing of N tokens to E experts with k choices each; see `route`."""
    expert: torch.Tensor    # (N, k) int64, the chosen experts, best first
    weight: torch.Tensor    # (N, k) fp32, renormalised top-k probabilities, 0 where dropped
    slot: torch.Tensor      # (N, k) int64, row expert * capacity + position, or E * capacity if dropped
    keep: torch.Tensor      # (N, k) bool, within the expert's capacity
    balance: torch.Tensor   # () E * sum_e importance_e * load_e; 1 if uniform, E / k if collapsed
    z: torch.Tensor         # () mean over tokens of logsumexp(logits)^2
    load: torch.Tensor      # (E,) fraction of tokens whose top-k holds e (sums to k), before capacity
    dropped: torch.Tensor   # () fraction of the N * k assignments over capacity


def route(logits: torch.Tensor, top_k: int, capacity: int, balance_after_capacity: bool = True) -> Routing:
    """Top-k routing with capacity from router logits (N, E); earlier rows win an overflowing expert.

    balance_after_capacity: the balance loss counts an expert's load after dropping its overflow
    (True, the TinyStories Falcon) or every assignment routed to it (False).
    """
    N, E = logits.shape
    logits = logits.float()
    probs = logits.softmax(dim=-1)                                                   # (N, E)
    top_p, expert = probs.topk(top_k, dim=-1)                                        # (N, k)
    weight = top_p / top_p.sum(dim=-1, keepdim=True)

    # position of each assignment in its expert's queue, in token-major order (n, then choice);
    # a token's k experts are distinct, so only the order between tokens matters
    flat = expert.reshape(-1, 1)                                                     # (N*k, 1)
    onehot = F.one_hot(flat.squeeze(1), E)                                           # (N*k, E)
    position = onehot.cumsum(dim=0).gather(1, flat).view(N, top_k) - 1               # (N, k)
    keep = position < capacity
    slot = torch.where(keep, expert * capacity + position, E * capacity)            # (N, k)

    # Switch Transformer balance loss: importance (mean router prob) and load / k (share of the
    # assignments) each sum to 1 over experts (load after capacity: at most 1), so uniform routing
    # gives 1; the gradient flows through importance only, load is a count
    importance = probs.mean(dim=0)                                                   # (E,)
    load = onehot.sum(dim=0).float() / N                                             # (E,) sums to k
    counted = (onehot * keep.reshape(-1, 1)).sum(dim=0).float() / N if balance_after_capacity else load
    balance = E * (importance * counted / top_k).sum()
    # z-loss (ST-MoE) keeps router logits small, so the fp32 softmax stays well conditioned
    z = torch.logsumexp(logits, dim=-1).square().mean()
    dropped = 1.0 - keep.float().mean()
    return Routing(expert, weight * keep, slot, keep, balance, z, load, dropped)


class _BatchedLinear(nn.Module):
    """E independent linear maps in one (E, in, out) weight, applied with one batched matmul."""

    def __init__(self, n: int, d_in: int, d_out: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out))
        self.bias = nn.Parameter(torch.empty(n, d_out)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.weight, mean=0.0, std=0.02)  # as GPT.init_weights does for nn.Linear
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)                                         # (n, rows, out)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)  # one op: bf16 under autocast


class MoE(nn.Module):
    """Top-k mixture of E expert MLPs with capacity; a Block's mlp returning (y, stats)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        E, d = cfg.n_experts, cfg.d_model
        self.width = cfg.expert_d_ff or cfg.d_ff // cfg.top_k
        self.router = nn.Linear(d, E, bias=False)
        # names match the dense MLP's, one leading expert axis: `down.weight` gets the residual init
        self.up = _BatchedLinear(E, d, 2 * self.width if cfg.mlp == "swiglu" else self.width, cfg.bias)
        self.down = _BatchedLinear(E, self.width, d, cfg.bias)

    def capacity(self, n_tokens: int) -> int:
        """Assignments one expert may take: ceil(factor * n_tokens * k / E), factor per train/eval."""
        cfg = self.cfg
        factor = cfg.capacity_factor if self.training else (cfg.eval_capacity_factor or cfg.capacity_factor)
        # a token picks distinct experts, so no expert can receive more than n_tokens
        return min(n_tokens, math.ceil(factor * n_tokens * cfg.top_k / cfg.n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Stat]]:
        """Mix the experts' outputs for each token.

        Args:
            x: (B, T, C) normalised residual stream.
        Returns:
            y (B, T, C), zero for a token every chosen expert dropped; the weighted auxiliary loss
            (balance + z-loss, with gradient); detached diagnostics, per layer and averaged over layers.
        """
        B, T, C = x.shape
        E, k, cap = self.cfg.n_experts, self.cfg.top_k, self.capacity(B * T)
        # position-major order (t, then b): the priority order of `route`, see the module docstring
        xf = x.transpose(0, 1).reshape(T * B, C)                                     # (N, C)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # fp32 router: bf16 logits flip near-tied top-k choices and blur the softmax
            r = route(F.linear(xf.float(), self.router.weight.float()), k, cap,
                      balance_after_capacity=self.cfg.balance_count == "after_capacity")

        # dispatch: which token fills each of the E * cap slots; empty and overflow slots read a zero row
        token = torch.arange(T * B, device=x.device).repeat_interleave(k)            # (N*k,) n, n, ...
        source = torch.full((E * cap + 1,), T * B, dtype=torch.long, device=x.device)
        source = source.scatter(0, r.slot.reshape(-1), token)[:-1]                  # (E*cap,)
        xin = F.pad(xf, (0, 0, 0, 1))[source].view(E, cap, C)                        # (E, cap, C)
        out = self.down(activate(self.up(xin), self.cfg.mlp))                        # (E, cap, C)

        # combine: each assignment reads its slot's output (dropped ones the zero row), weighted
        out = F.pad(out.reshape(E * cap, C), (0, 0, 0, 1))                           # (E*cap + 1, C)
        y = (out[r.slot] * r.weight.unsqueeze(-1)).sum(dim=1)  # (N, C), fp32 weights: summed in fp32
        y = y.view(T, B, C).transpose(0, 1).to(x.dtype)                              # (B, T, C)

        cfg, i = self.cfg, self.layer
        aux_loss = cfg.balance_coef * r.balance + cfg.z_loss_coef * r.z
        stats = {
            f"moe_balance_l{i}": Stat.mean(r.balance.detach()),
            f"moe_z_l{i}": Stat.mean(r.z.detach()),
            f"moe_dropped_l{i}": Stat.mean(r.dropped.detach()),
            "moe_dropped": Stat.mean(r.dropped.detach()),  # every layer reports it: the mean over layers
        }
        stats.update({f"moe_load_l{i}_e{j}": Stat.mean(r.load[j].detach()) for j in range(E)})
        return y, aux_loss, stats


class Falcon(GPT):
    """GPT whose blocks use an `MoE` as their MLP."""

    def make_block(self, cfg: ModelConfig, layer: int) -> nn.Module:
        return Block(cfg, mlp=MoE(cfg, layer))

    def init_weights(self):
        """GPT init, plus N(0, 0.02) for the batched expert weights (then `down` is scaled as residual)."""
        for module in self.modules():
            if isinstance(module, _BatchedLinear):
                module.reset_parameters()
        super().init_weights()

    def num_active_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters one token uses: all but the (E - k) experts it is not routed to, in every layer."""
        idle = self.cfg.n_experts - self.cfg.top_k
        batched = [p for b in self.blocks for p in (*b.mlp.up.parameters(), *b.mlp.down.parameters())]
        per_expert = sum(p[0].numel() for p in batched)  # one expert's slice, summed over layers
        return self.num_params(exclude_embeddings) - idle * per_expert


register(Family(
    "falcon", Falcon,
    # the TinyStories Falcon: the baseline with every FFN an 8-expert top-2 mixture
    defaults=dict(n_experts=8, top_k=2),
    missing_in_hf=lambda cfg: "mixture-of-experts FFN (falcon)",
    describe=lambda cfg: [f"top-{cfg.top_k} of {cfg.n_experts} experts"],
    # inference routes without capacity drops: decoding one token at a time equals a full forward
    for_inference=lambda cfg: replace(cfg, eval_capacity_factor=float(cfg.n_experts)),
))
