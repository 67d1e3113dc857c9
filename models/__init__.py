"""The model families: `build(cfg)`, the family records and the FLOPs count used for MFU.

Importing the package registers every family (each file ends with its `register(Family(...))`);
models/family.py says what a record holds and what adding a family takes.
"""

import torch.nn as nn

from .condor import Condor  # each family file registers its records on import
from .config import ModelConfig
from .falcon import Falcon
from .family import FAMILIES, Family, family_of
from .gpt import GPT, ModelOutput


def build(cfg: ModelConfig) -> nn.Module:
    """The training model of cfg.preset's family, freshly initialised."""
    return family_of(cfg.preset).model(cfg)


def describe(cfg: ModelConfig) -> str:
    """The architecture in words: preset and the choices that tell the families apart."""
    parts = [f"{cfg.position} positions", cfg.norm, cfg.mlp, *family_of(cfg.preset).describe(cfg)]
    return f"{cfg.preset} ({', '.join(parts)})"


def flops_per_token(cfg: ModelConfig, n_params: int) -> int:
    """Training FLOPs per token as nanoGPT's estimate_mfu counts them: 6N + 12 * L * H * hd * T.

    6N: forward + backward of every matmul weight; the second term: the QK^T and AV products at
    full context T. Pass N = model.num_params(exclude_embeddings=True).
    """
    return 6 * n_params + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * cfg.context


__all__ = ["FAMILIES", "GPT", "Condor", "Falcon", "Family", "ModelConfig", "ModelOutput", "build", "describe", "family_of",
           "flops_per_token"]
