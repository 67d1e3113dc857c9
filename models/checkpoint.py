"""Checkpoint files: written by the trainer, read by everything downstream with only `--ckpt PATH`.

A checkpoint is a dict: "format", "model" (state dict), "config" (the resolved run config as
plain dicts), "tokenizer" (spec), "step", plus the trainer's resume state (optimizer, scaler,
rng, sampler, ...), and "state_sha256": a hash of every other entry (tensors and plain values
alike), checked on every load, so a file whose bits changed anywhere fails loudly instead of
producing garbage or a resume that is silently different. It loads with
`torch.load(weights_only=True)`: no code runs on load.

Checkpoints written before "state_sha256" carry "tensor_sha256", a hash of the weights only; they
are still accepted with that check: it covers everything inference reads, their resume state cannot
be checked after the fact, and refusing them would strand every run in progress (its next save
writes the full hash).
"""

import hashlib
import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn

from fileio import atomic_write

from .config import ModelConfig

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, not ours, or does not fit the model; the message says which."""


HASHED = ("model", "lora_model")  # the state dicts whose tensors the weights-only hash covers
HASH_KEYS = ("state_sha256", "tensor_sha256")  # what state_sha256 leaves out: the hashes themselves


def state_sha256(ckpt: dict) -> str:
    """SHA-256 over every entry of a checkpoint but its hashes: keys, plain values and tensors (name,
    dtype, shape, bytes), in sorted key order."""
    h = hashlib.sha256()
    _hash_value(h, {k: v for k, v in ckpt.items() if k not in HASH_KEYS})
    return h.hexdigest()


def _hash_value(h, value) -> None:
    if isinstance(value, torch.Tensor):
        h.update(f"T{value.dtype}:{tuple(value.shape)}\0".encode())
        h.update(_tensor_bytes(value))
    elif isinstance(value, dict):
        h.update(f"D{len(value)}\0".encode())
        for k, v in sorted(value.items(), key=lambda kv: repr(kv[0])):
            h.update(f"{k!r}\0".encode())
            _hash_value(h, v)
    elif isinstance(value, (list, tuple)):  # one tag: a tuple may come back from a file as a list
        h.update(f"L{len(value)}\0".encode())
        for v in value:
            _hash_value(h, v)
    else:  # str, int, float (repr keeps every bit, nan and inf included), bool, None
        h.update(f"V{type(value).__name__}:{value!r}\0".encode())


def tensor_sha256(ckpt: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the weight tensors of a checkpoint."""
    h = hashlib.sha256()
    for part in HASHED:
        for name, t in sorted(ckpt.get(part, {}).items()):
            h.update(f"{part}.{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
            h.update(_tensor_bytes(t))
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's raw bytes in row-major order, as both hashes read them."""
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to a uniquely named temporary file, then rename: a crash never leaves a
    half-written checkpoint. Refuses non-finite weights; stores the hash of everything written."""
    path = Path(path)
    bad = non_finite_tensors(state["model"])
    if bad:
        raise CheckpointError(f"not writing {path}: {len(bad)} weight tensors are not finite (first: {bad[0]})")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in state.items() if k not in HASH_KEYS}
    state["state_sha256"] = state_sha256(state)
    atomic_write(path, lambda tmp: _torch_save(state, tmp))


def _torch_save(state: dict, path: Path) -> None:
    """torch.save through a Python file, so that a failed write (a full disk) raises its OSError:
    torch then raises a RuntimeError about zip positions while that OSError propagates."""
    with open(path, "wb", buffering=0) as f:
        try:
            torch.save(state, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [n for n, t in state_dict.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint written by the trainer."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found (checkpoints live in checkpoints/<run>/last.pt or best.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # a class or function torch's safe loader does not admit, or not a pickle
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        if not named:
            raise CheckpointError(f"{path} is not a readable checkpoint (torch's weights-only loader cannot "
                                  "read it: damaged, or not written by torch.save)") from None
        raise CheckpointError(f"{path} holds more than tensors and plain data (it names {named[1]}); "
                              "refusing to load it (checkpoints load without running code)") from None
    except Exception as e:  # truncated files, non-torch files
        raise CheckpointError(f"{path} is not a readable checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no format {CHECKPOINT_FORMAT} marker)")
    problem = _layout_problem(ckpt)
    if problem:
        raise CheckpointError(f"{path} is not a checkpoint of this project ({problem}): "
                              "give a checkpoint the trainer or models.convert wrote")
    if "state_sha256" in ckpt:
        corrupted = state_sha256(ckpt) != ckpt["state_sha256"]
    else:  # written before the full hash: the weights only (see the module docstring)
        corrupted = "tensor_sha256" in ckpt and tensor_sha256(ckpt) != ckpt["tensor_sha256"]
    if corrupted:
        raise CheckpointError(f"{path} is corrupted: its contents do not match the hash stored with them "
                              "(restore the file or use another checkpoint of the run)")
    return ckpt


def _layout_problem(ckpt: dict) -> str | None:
    """What a loaded checkpoint lacks that every reader needs: weights, a model config, a tokenizer spec."""
    weights = ckpt.get("model")
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        return "'model' is not a dict of tensors"
    if not isinstance(ckpt.get("tokenizer"), dict):
        return "no 'tokenizer' spec"
    try:
        model_config(ckpt)
    except CheckpointError as e:
        return str(e)
    return None


def model_config(ckpt: dict) -> ModelConfig:
    """The ModelConfig a checkpoint was trained with; CheckpointError if it holds none."""
    d = ckpt.get("config", {}).get("model") if isinstance(ckpt.get("config"), dict) else None
    if not isinstance(d, dict):
        raise CheckpointError("no model config under 'config'")
    try:
        return ModelConfig(**d)
    except (TypeError, ValueError) as e:  # unknown keys, wrong types or values
        raise CheckpointError(f"its model config is not one of ours: {str(e).splitlines()[0]}") from None


def load_weights(model: nn.Module, ckpt: dict) -> None:
    """Strict load; a checkpoint of another architecture gets one line naming the mismatch."""
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:  # missing / unexpected keys and shape mismatches, one per line
        problems = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise CheckpointError(f"checkpoint weights do not fit a {ckpt['config']['model']['preset']} model "
                              f"({len(problems)} problems; first: {problems[0] if problems else e})") from None
