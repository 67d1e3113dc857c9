"""GPT family: the presets `baseline`, `gpt2_125m` and `llama` (one class, options from ModelConfig).

GPT is also the interface every family keeps (other families subclass it and override `make_block`):
    forward(tokens, targets, drop_mask, keep_position, loss_chunk) -> ModelOutput
    embed_tokens(tokens)                     the token embeddings alone, (B, T, C)
    forward_from_embeddings(emb, targets)    forward with given token embeddings (TID gradient scores)
    attention_probs(tokens, layer)           run to block `layer`, its attention probabilities (TID)
    embed / head                             first-block input and logits (the KV-cache forward)
"""

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from run_stats import Stat, combine

from .blocks import Block, make_norm, rotary_table, sinusoidal_table
from .config import ModelConfig
from .family import Family, register
from .loss import linear_cross_entropy


class ModelOutput(NamedTuple):
    """What the training forward returns."""
    logits: torch.Tensor | None     # (B, T, V); None when the fused head computed the loss
    loss: torch.Tensor | None       # mean cross-entropy over targets != -100; None without targets
    aux_loss: torch.Tensor | None   # the family's weighted auxiliary loss (MoE balance + z-loss), or None
    stats: dict[str, Stat]          # detached diagnostics, each declaring how it combines

    @property
    def objective(self) -> torch.Tensor | None:
        """What training minimises: the cross-entropy plus the auxiliary loss (None without targets)."""
        return self.loss if self.loss is None or self.aux_loss is None else self.loss + self.aux_loss

    def loss_stats(self, training: bool) -> dict[str, Stat]:
        """A family with an auxiliary loss logs it ("aux_loss") and in training the cross-entropy apart
        ("ce_loss"; their sum is the train loss); nothing for the others."""
        if self.aux_loss is None:
            return {}
        return {"aux_loss": Stat.mean(self.aux_loss.detach()),
                **({"ce_loss": Stat.mean(self.loss.detach())} if training else {})}


class GPT(nn.Module):
    """Decoder-only transformer; other families subclass it and override `make_block`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.position == "learned":
            self.pos_emb = nn.Embedding(cfg.context, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(self.make_block(cfg, i) for i in range(cfg.n_layers))
        self.norm_f = make_norm(cfg, cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # fixed tables are recomputed from the config, so they stay out of the state dict
        if cfg.position == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(cfg.context, cfg.d_model), persistent=False)
        if cfg.position == "rotary":
            cos, sin = rotary_table(cfg.head_dim, cfg.context, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)                  # (context, hd)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()
        if cfg.tie_embeddings:
            # the head reads logits off the input embedding: one matrix, one set of gradients
            self.lm_head.weight = self.tok_emb.weight

    def make_block(self, cfg: ModelConfig, layer: int) -> nn.Module:
        """Block number `layer`; families with their own attention or MLP override this."""
        return Block(cfg)

    def init_weights(self):
        """GPT-2 init: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2 * n_layers)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # each block adds two projections to the residual stream; keep its variance O(1) in depth
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.split(".")[-2:] in (["wo", "weight"], ["down", "weight"]):
                nn.init.normal_(p, mean=0.0, std=residual_std)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights once); optionally without the lookup-only embedding tables.

        Excluded then: the position table, and the token table unless it is tied to the head (its
        matmul costs FLOPs). This is nanoGPT's N for the 6N of `flops_per_token`.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            if self.cfg.position == "learned":
                n -= self.pos_emb.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.tok_emb.weight.numel()
        return n

    @torch.no_grad()
    def init_token_embeddings(self, vectors: torch.Tensor, found: torch.Tensor, freeze: bool = False,
                              pad_id: int | None = None):
        """Pretrained word vectors into the token embedding, as the original word-level model had them.

        Args:
            vectors: (vocab_size, d_model); rows where `found` is False are ignored.
            found: (vocab_size,) bool, the words the vectors file holds.
            freeze: keep the whole token embedding fixed in training (the head must be untied).
            pad_id: this row is zero (the padding token).
        Words missing from the file get N(0, sigma^2), sigma the std of the pretrained values (0.02
        when the file holds none of the words), so they start on the vectors' scale and distinct.
        """
        vectors, found = torch.as_tensor(vectors), torch.as_tensor(found, dtype=torch.bool)
        expected = (self.cfg.vocab_size, self.cfg.d_model)
        if tuple(vectors.shape) != expected:
            raise ValueError(
                f"word vectors have shape {tuple(vectors.shape)}, expected (vocab_size, d_model) = {expected}: "
                f"set model.d_model to the vectors' dimension"
            )
        if freeze and self.lm_head.weight is self.tok_emb.weight:
            raise ValueError("model.freeze_embeddings with tied embeddings would freeze the output head too: "
                             "set model.tie_embeddings=false")
        pretrained = vectors[found].float()
        sigma = pretrained.std().item() if pretrained.numel() > 1 else 0.02
        weight = torch.where(found[:, None], vectors.float(), torch.randn(expected) * sigma)
        if pad_id is not None:
            weight[pad_id] = 0.0
        with torch.no_grad():
            self.tok_emb.weight.copy_(weight.to(self.tok_emb.weight))
        self.tok_emb.weight.requires_grad_(not freeze)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The token embeddings (B, T, C) of tokens (B, T), before positions."""
        return self.tok_emb(tokens)

    def embed(self, tokens: torch.Tensor, drop_mask: torch.Tensor | None = None, start_pos=0,
              keep_position: bool = False):
        """Input of the first block, x (B, T, C), and the rotary (cos, sin) for positions start_pos...

        drop_mask (B, T) bool: True zeroes that position's whole input vector (token-importance
        dropout, as the TID study did); with keep_position=True only the token embedding is zeroed
        and an added position embedding stays (rotary presets: the same either way). start_pos
        (int, or a 0-d tensor for a compiled decode step) is where these tokens sit after a cached
        prefix; training always starts at 0.
        """
        return self.add_positions(self.embed_tokens(tokens), drop_mask, start_pos, keep_position)

    def add_positions(self, x: torch.Tensor, drop_mask: torch.Tensor | None = None, start_pos=0,
                      keep_position: bool = False):
        """`embed` from the token embeddings x (B, T, C) instead of the tokens."""
        T = x.size(1)
        if isinstance(start_pos, int) and start_pos + T > self.cfg.context:
            raise ValueError(f"positions up to {start_pos + T} exceed model.context={self.cfg.context}; "
                             "crop the input or raise model.context")
        if drop_mask is not None and keep_position:
            x = x.masked_fill(drop_mask.unsqueeze(-1), 0.0)
        positions = start_pos + torch.arange(T, device=x.device)                     # (T,)
        rope = None
        if self.cfg.position == "learned":
            x = x + self.pos_emb(positions)                                          # (T, C) broadcast
        elif self.cfg.position == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)
        else:
            rope = (self.rope_cos[positions], self.rope_sin[positions])              # 2 x (T, hd)
        if drop_mask is not None and not keep_position:
            x = x.masked_fill(drop_mask.unsqueeze(-1), 0.0)
        return self.drop(x), rope

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) from the last block's output."""
        return self.lm_head(self.norm_f(x))

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                drop_mask: torch.Tensor | None = None, keep_position: bool = False,
                loss_chunk: int = 0, reduction: str = "mean") -> ModelOutput:
        """Logits, loss, auxiliary loss and stats of tokens (B, T); see the design page, sections 3-4.

        drop_mask (B, T) bool and keep_position: token-importance dropout (see `embed`); the loss
        still covers every target != -100. loss_chunk > 0 (with targets): the head and the loss are
        fused in chunks of that many tokens (models/loss.py) and logits is None. reduction="none":
        loss is each token's NLL (B, T), 0 where the target is -100 (evaluation; no gradient when fused).
        """
        x, rope = self.embed(tokens, drop_mask, keep_position=keep_position)
        return self._run(x, rope, targets, loss_chunk, reduction)

    def forward_from_embeddings(self, token_embeddings: torch.Tensor, targets: torch.Tensor) -> ModelOutput:
        """`forward` with the token embeddings (B, T, C) given, e.g. a tensor to differentiate by."""
        x, rope = self.add_positions(token_embeddings)
        return self._run(x, rope, targets)

    def attention_probs(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Attention probabilities (B, H, T, T) of block `layer` (negative counts from the end); stops there."""
        x, rope = self.embed(tokens)
        layer = layer % len(self.blocks)
        for block in self.blocks[:layer]:
            x, _, _ = block(x, rope)
        return self.blocks[layer].attention_probs(x, rope)

    def _run(self, x: torch.Tensor, rope, targets: torch.Tensor | None, loss_chunk: int = 0,
             reduction: str = "mean") -> ModelOutput:
        """The blocks, the head and the loss from the first block's input x (B, T, C)."""
        B, T, _ = x.shape
        aux_loss, stats = None, {}
        for block in self.blocks:
            x, block_aux, block_stats = block(x, rope)
            stats = combine(stats, block_stats)
            if block_aux is not None:
                aux_loss = block_aux if aux_loss is None else aux_loss + block_aux
        logits, loss = None, None
        if targets is not None and loss_chunk and isinstance(self.lm_head, nn.Linear):
            # head and loss fused in chunks: the (B, T, V) logits are never made (models/loss.py)
            loss = linear_cross_entropy(self.norm_f(x).view(B * T, -1), self.lm_head.weight,
                                        targets.reshape(B * T), loss_chunk, reduction)
        else:
            logits = self.head(x)                                                    # (B, T, V)
            if targets is not None:
                # fp32 log-softmax: under bf16 autocast the large-vocab sum loses precision
                loss = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(B * T), ignore_index=-100,
                                       reduction=reduction)
        if loss is not None and reduction == "none":
            loss = loss.view(B, T)
        return ModelOutput(logits, loss, aux_loss, stats)


register(Family("baseline", GPT))
register(Family("gpt2_125m", GPT, defaults=dict(
    d_model=768, n_layers=12, n_heads=12, d_ff=2048, norm="rmsnorm", position="rotary",
    mlp="swiglu", bias=False, vocab_size=50257)))
register(Family("llama", GPT, defaults=dict(
    d_model=512, n_layers=8, n_heads=8, d_ff=1376, norm="rmsnorm", position="rotary",
    mlp="swiglu", bias=False, vocab_size=32000, context=256, tie_embeddings=False)))
