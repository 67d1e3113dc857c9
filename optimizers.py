"""The optimizer of `train.optimizer` (AdamW in fp32 state, or torchao's 8-bit / 4-bit AdamW), its
parameter groups and the learning-rate schedule.

    adamw      torch.optim.AdamW (fused on CUDA); state 8 bytes per parameter
    adamw8bit  torchao.optim.AdamW8bit: both moments block-wise quantised to 8 bits (~2 bytes/param)
    adamw4bit  torchao.optim.AdamW4bit: 4 bits each (~1 byte/param)

torchao rather than bitsandbytes: its low-bit optimizers are plain PyTorch (tensor subclasses whose
update torch.compile turns into fused kernels), so the same code runs on CPU and on GPUs, whereas
bitsandbytes' 8-bit optimizers need its CUDA kernels. torchao quantises the state of tensors with at
least 4096 elements (and a multiple of its block size, 256 for 8-bit, 128 for 4-bit); smaller ones,
norms and biases keep fp32 state. Its first steps compile one update per parameter shape.

Checkpoints hold only plain tensors (they load with weights_only=True): `plain_state` stores each
quantised moment as its inner tensors and attributes, `restore_state` rebuilds it for `load_state_dict`.
"""

import math

import torch

OPTIMIZERS = ("adamw", "adamw8bit", "adamw4bit")
_LOWBIT = {"adamw8bit": "AdamW8bit", "adamw4bit": "AdamW4bit"}
_SUBCLASSES = ("OptimState8bit", "OptimState4bit")


def make_optimizer(groups: list[dict], name: str, lr: float, betas: tuple[float, float], device: torch.device):
    """The optimizer `name` over parameter groups (each with its weight_decay)."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device.type == "cuda")
    if name not in _LOWBIT:
        raise ValueError(f"train.optimizer: {name!r} is not one of {list(OPTIMIZERS)}")
    return getattr(_torchao_optim(name), _LOWBIT[name])(groups, lr=lr, betas=betas)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """[decay group (weight_decay), no-decay group (0.0)]: matrices and embeddings (linear, embedding, expert
    and LoRA weights: trainable tensors of 2+ dims not named *bias) decay; norms and biases do not (MoE
    biases are 2-D). Frozen tensors are in neither group; a tied weight is in one, once."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # a tied weight comes once
    decay = [p for n, p in params if p.dim() >= 2 and not n.endswith("bias")]
    no_decay = [p for n, p in params if p.dim() < 2 or n.endswith("bias")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based): lr * (step + 1) / warmup_steps while step <
    warmup_steps, then min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2 with p going from 0 at warmup_steps to
    1 at max_steps (min_lr from then on)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def set_lr(optimizer, lr: float) -> None:
    """Set every group's learning rate; torchao keeps it as a tensor so its compiled step never recompiles."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def state_bytes(optimizer) -> int:
    """Bytes the optimizer state holds, quantised moments counted by their inner tensors."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                inner = value.__tensor_flatten__()[0] if hasattr(value, "__tensor_flatten__") else None
                parts = [getattr(value, n) for n in inner] if inner else [value]
                total += sum(t.numel() * t.element_size() for t in parts)
    return total


def plain_state(state_dict: dict) -> dict:
    """An optimizer state dict with every quantised moment as {"lowbit": class, "tensors", "attrs"}."""
    def plain(value):
        if type(value).__name__ not in _SUBCLASSES:
            return value
        inner, attrs = value.__tensor_flatten__()
        return {"lowbit": type(value).__name__, "tensors": {n: getattr(value, n) for n in inner}, "attrs": list(attrs)}
    return _map_state(state_dict, plain)


def restore_state(state_dict: dict) -> dict:
    """The inverse of `plain_state`: quantised moments rebuilt as torchao tensors."""
    def restored(value):
        if not (isinstance(value, dict) and "lowbit" in value):
            return value
        return _subclass(value["lowbit"]).__tensor_unflatten__(value["tensors"], value["attrs"], None, None)
    return _map_state(state_dict, restored)


def _map_state(state_dict: dict, fn) -> dict:
    """`state_dict` with fn applied to every per-parameter state value (param_groups as they are)."""
    return {**state_dict, "state": {key: {name: fn(value) for name, value in state.items()}
                                    for key, state in state_dict["state"].items()}}


def _torchao_optim(name: str):
    try:
        import torchao.optim
    except ImportError:
        raise ImportError(f"train.optimizer={name} needs torchao: pip install torchao") from None
    return torchao.optim


def _subclass(name: str):
    if name not in _SUBCLASSES:
        raise ValueError(f"optimizer state of unknown kind {name!r}")
    module = {"OptimState8bit": "subclass_8bit", "OptimState4bit": "subclass_4bit"}[name]
    import importlib
    return getattr(importlib.import_module(f"torchao.optim.{module}"), name)
