"""Where a run executes: the device choice shared by the trainer, generators, eval and benchmarks."""

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; any other name as given (cpu, cuda, cuda:N, mps)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
