"""Model registry: preset name -> model class, `build(cfg)`, and the FLOPs count used for MFU."""

import torch.nn as nn

from .condor import Condor
from .config import PRESETS, ModelConfig
from .falcon import Falcon
from .gpt import GPT

# Registering a family: its preset in config.PRESETS and its class here; the trainer only calls build.
FAMILIES: dict[str, type[nn.Module]] = {
    "baseline": GPT,
    "gpt2_125m": GPT,
    "llama": GPT,
    "falcon": Falcon,
    "condor": Condor,
}


def build(cfg: ModelConfig) -> nn.Module:
    """The model of cfg.preset's family, freshly initialised."""
    if cfg.preset not in FAMILIES:
        raise ValueError(f"model.preset: no model registered for {cfg.preset!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[cfg.preset](cfg)


def flops_per_token(cfg: ModelConfig, n_params: int) -> int:
    """Training FLOPs per token as nanoGPT's estimate_mfu counts them: 6N + 12 * L * H * hd * T.

    6N: forward + backward of every matmul weight; the second term: the QK^T and AV products at
    full context T. Pass N = model.num_params(exclude_embeddings=True).
    """
    return 6 * n_params + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * cfg.context


__all__ = ["FAMILIES", "GPT", "ModelConfig", "PRESETS", "build", "flops_per_token"]
