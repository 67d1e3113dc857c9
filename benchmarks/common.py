"""Helpers shared by the benchmarks: timing, device description, JSON output."""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from runtime import resolve_device


WARMUP_STEPS = 5  # first steps carry allocator and thread-pool warm-up; left out of the medians


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one fn() call, synchronised on GPUs (a compiled function's first call: its compile time)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs, synchronised on GPUs."""
    for _ in range(warmup):
        fn()
    return statistics.median(seconds_of(fn, device) for _ in range(repeats))


def device_info(device: torch.device) -> dict:
    """What the numbers were measured on: device name, torch and CUDA versions, CPU threads."""
    info = {"device": device_name(str(device)), "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def device_name(device: str) -> str:
    use_cuda = torch.cuda.is_available() and device != "cpu"
    return torch.cuda.get_device_name() if use_cuda else "cpu"


def write_results(path: str | Path, payload: dict) -> None:
    """Write the JSON; overrides of output directories are left out (they are local paths, not settings)."""
    if "set" in payload:
        payload = {**payload, "set": [s for s in payload["set"] if not s.split("=")[0].endswith("_dir")]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**payload, "torch": torch.__version__}, indent=2))
    print(f"wrote {path}")


def default_out(name: str, device: torch.device) -> str:
    return f"benchmarks/results/{name}_{'cuda' if device.type == 'cuda' else 'cpu'}.json"


def print_targets(goals: list[dict]) -> None:
    """One line per target: met or not, and the measured value."""
    for g in goals:
        print(f"  {'met    ' if g['met'] else 'not met'}  {g['target']}: {g['value']:,.3f}")


def device_arg(name: str) -> str:
    """--device, checked when parsed: one that this machine lacks ends the command with exit 2."""
    try:
        resolve_device(name)
    except (ValueError, RuntimeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def benchmark_parser(name: str, description: str, steps: bool = False) -> argparse.ArgumentParser:
    """The options every speed benchmark shares: --device, --quick, [--steps], --out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="auto", type=device_arg, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU smoke run)")
    if steps:
        parser.add_argument("--steps", type=int, default=None, help="optimizer steps per case")
    parser.add_argument("--out", default=None, help=f"JSON path (default benchmarks/results/{name}_<cuda|cpu>.json)")
    return parser


def benchmark_cli(name: str, run: Callable[..., dict], description: str, argv=None, steps: bool = False) -> None:
    """Parse the shared options, run, write the JSON."""
    args = benchmark_parser(name, description, steps).parse_args(argv)
    payload = run(args.device, args.quick, args.steps) if steps else run(args.device, args.quick)
    write_results(args.out or default_out(name, resolve_device(args.device)), payload)
