"""LoRA: low-rank adapters on chosen linear layers, trained while everything else stays frozen.

    lora_cfg = LoRAConfig(rank=8, alpha=16, targets="wqkv,wo")
    n_trainable = apply_lora(model, lora_cfg)      # in place; only lora_a / lora_b train
    state = merged_state_dict(model)               # plain parameter names, adapters folded into the weights

y = base(x) + (alpha / rank) * dropout(x) A^T B^T, with B = 0 at the start (the model is unchanged
until training moves B). Checkpoints store the merged weights, so every downstream tool reads them
as an ordinary model.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class LoRAConfig:
    rank: int = 0                   # adapter rank; 0 = no LoRA (full fine-tuning or training)
    alpha: float = 16.0             # scale = alpha / rank
    dropout: float = 0.0            # dropout on the adapter's input
    targets: str = "wqkv,wo"        # comma-separated names of the nn.Linear modules to adapt

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0, got {self.rank}")
        if self.rank and not self.target_names:
            raise ValueError("lora.targets names no module (e.g. 'wqkv,wo' or 'wqkv,wo,up,down')")

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.targets.split(",") if t.strip())


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear; B = 0 keeps the start exact
        self.scale = alpha / rank
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) + (alpha / rank) * dropout(x) A^T B^T; dropout on the adapter's input only."""
        return self.base(x) + (self.drop(x) @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / rank) B A: the plain weight that computes what this layer does without dropout."""
        return self.base.weight + self.scale * (self.lora_b @ self.lora_a)


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> int:
    """Wrap the target linear layers, freeze every other parameter; returns the trainable parameter count."""
    wrapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name in cfg.target_names:
                setattr(module, name, LoRALinear(child, cfg.rank, cfg.alpha, cfg.dropout))
                wrapped += 1
    if not wrapped:
        raise ValueError(f"lora.targets={cfg.targets!r} matches no linear layer of this model")
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[-1] in ("lora_a", "lora_b"))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict:
    """The model's state dict with every LoRALinear folded into a plain weight under the original names."""
    state = {}
    for name, tensor in model.state_dict().items():
        path, leaf = name.rsplit(".", 1)
        if leaf in ("lora_a", "lora_b"):
            continue
        if path.endswith(".base"):  # blocks.0.attn.wqkv.base.weight -> blocks.0.attn.wqkv.weight
            owner = model.get_submodule(path[: -len(".base")])
            tensor = owner.merged_weight() if leaf == "weight" else tensor
            name = f"{path[: -len('.base')]}.{leaf}"
        state[name] = tensor.detach().clone()
    return state
