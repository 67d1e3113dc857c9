"""Checkpoint files: written by the trainer, read by everything downstream with only `--ckpt PATH`.

A checkpoint is a dict: "format", "model" (state dict), "config" (the resolved run config as
plain dicts), "tokenizer" (spec), "step", plus the trainer's resume state (optimizer, scaler,
rng, sampler, ...). It loads with `torch.load(weights_only=True)`: no code runs on load.
"""

import os
from pathlib import Path

import torch
import torch.nn as nn

from .config import ModelConfig

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, not ours, or does not fit the model; the message says which."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint written by the trainer."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found (checkpoints live in checkpoints/<run>/last.pt or best.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-torch files
        raise CheckpointError(f"{path} is not a readable checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no format {CHECKPOINT_FORMAT} marker)")
    return ckpt


def model_config(ckpt: dict) -> ModelConfig:
    """The ModelConfig a checkpoint was trained with."""
    return ModelConfig(**ckpt["config"]["model"])


def load_weights(model: nn.Module, ckpt: dict) -> None:
    """Strict load; a checkpoint of another architecture gets one line naming the mismatch."""
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:  # missing / unexpected keys and shape mismatches, one per line
        problems = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise CheckpointError(f"checkpoint weights do not fit a {ckpt['config']['model']['preset']} model "
                              f"({len(problems)} problems; first: {problems[0] if problems else e})") from None
