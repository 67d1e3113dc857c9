"""Where and in what precision work runs: device, dtype, autocast and the host-to-device copy,
shared by the trainer, generators, perplexity scoring, eval and benchmarks."""

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; any other name as given (cpu, cuda, cuda:N, mps).
    Asking for CUDA where there is none is an error that names the fix."""
    resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available (use device cpu)")
    return resolved


def resolve_dtype(name: str, device: torch.device, training: bool = False) -> torch.dtype:
    """fp32 | bf16 | fp16 as a torch dtype; "auto" is fp32 on CPU and bf16 on a GPU that has it, else
    fp16 for training (with a gradient scaler) and fp32 for inference."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else (torch.float16 if training else torch.float32)
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {['auto', *DTYPES]}")
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision as the trainer runs it (weights stay fp32, matmuls in dtype); fp32 = plain."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to `device`; through pinned memory and without blocking on GPUs."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
