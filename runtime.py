"""Where and in what precision work runs: device, dtype, autocast, the host-to-device copy, the
processes of a data-parallel run, and timing that does not stall the GPU. Shared by the trainer,
generators, perplexity scoring, eval and benchmarks."""

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}  # dense bf16


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


def free_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device`: free GPU memory, or the host's available memory
    (Linux /proc/meminfo); None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def require_memory(need: int, device: torch.device, what: str, fix: str) -> None:
    """A ValueError naming the sizes, before anything is allocated, when `need` bytes (of `what`) are more
    than `device` has free: such a request would swap, hang or be killed instead of failing."""
    free = free_memory(device)
    if free is not None and need > free:
        raise ValueError(f"{what} needs {size(need)}, more than the {size(free)} free on {device}: {fix}")


def size(n_bytes: int) -> str:
    """Bytes for a message: "7,629.39 GiB", "3.00 MiB"."""
    return f"{n_bytes / 2**30:,.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:,.2f} MiB"


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


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 FLOP/s of a known GPU (for MFU), else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


# ----------------------------------------------------------------------------- processes

@dataclass
class Env:
    """Where this process runs: rank, world size, device, precision."""
    rank: int
    local_rank: int
    world: int
    device: torch.device
    dtype: torch.dtype                # autocast dtype; float32 = no autocast

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def log(self, *args) -> None:
        """Print on rank 0 only (through tqdm so bars stay intact)."""
        if self.is_main:
            tqdm.write(" ".join(str(a) for a in args))

    def autocast(self):
        return autocast(self.device, self.dtype)


def setup_env(device: str, precision: str) -> Env:
    """Read torchrun's environment, join the process group, pick device and precision, enable TF32.
    A device or precision this machine cannot give raises ValueError naming the fix."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    resolved = resolve_device(device)
    if resolved.type == "cuda" and (device == "auto" or world > 1):
        resolved = torch.device(f"cuda:{local_rank}")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if precision == "fp16" and resolved.type != "cuda":
        raise ValueError("train.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
    dtype = resolve_dtype(precision, resolved, training=True)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Env(rank, local_rank, world, resolved, dtype)


@contextlib.contextmanager
def stop_on_signals(flag: dict):
    """While inside, SIGINT and SIGTERM only record themselves in flag["signum"]; the loop stops at
    the next step boundary. (Only the main thread can install handlers; elsewhere nothing changes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        flag["signum"] = signum
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def agree_on_signal(flag: dict, env: Env, check: bool) -> int:
    """The signal `stop_on_signals` recorded, or 0. Under DDP every rank must stop at the same step:
    the ranks agree (an all-reduce) on steps where `check` is True and report 0 on the others."""
    signum = flag.get("signum", 0)
    if env.world == 1:
        return signum
    if not check:
        return 0
    agreed = torch.tensor([signum], device=env.device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return int(agreed.item())


# ----------------------------------------------------------------------------- timing

class Stopwatch:
    """Times a region without stalling the host: CUDA events on GPUs (read when the numbers are
    fetched), perf_counter elsewhere. Stopwatches add up: `a + b` reads as the sum of both."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.parts = [self]

    def __enter__(self) -> "Stopwatch":
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.elapsed = time.perf_counter() - self.t0

    def __add__(self, other: "Stopwatch") -> "Stopwatch":
        total = Stopwatch.__new__(Stopwatch)
        total.parts = self.parts + other.parts
        return total

    def seconds(self) -> float:
        """Elapsed seconds (waits for the region's end on the GPU)."""
        if self.parts != [self]:
            return sum(p.seconds() for p in self.parts)
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3
        return self.elapsed


def fetch(values: list) -> list:
    """Numbers from a mix of floats, device tensors and Stopwatches, with one device-to-host copy."""
    tensors = [v.detach().float().reshape(()) for v in values if isinstance(v, torch.Tensor)]
    fetched = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else [])
    return [next(fetched) if isinstance(v, torch.Tensor) else v.seconds() if isinstance(v, Stopwatch) else v
            for v in values]
