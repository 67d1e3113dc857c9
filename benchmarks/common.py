"""Helpers shared by the training benchmarks: train one variant, write results as JSON."""

import json
import statistics
from pathlib import Path

import torch

from experiment_config import load_config
from generic_runner import train
from train_logs import load_losses, load_times

WARMUP_STEPS = 5  # first steps carry allocator and thread-pool warm-up; left out of the medians


def train_variant(configs: list[str], sets: list[str], run_name: str) -> dict:
    """Train one variant from scratch (overwriting an earlier benchmark run of that name).

    Returns the trainer's summary plus the run's logs ("losses", "times") and the median step time.
    """
    cfg = load_config(configs, sets)
    cfg.run_name = run_name
    summary = train(cfg, force=True)
    times = load_times(run_name, cfg.log_dir)
    return {**summary, "cfg": cfg, "losses": load_losses(run_name, cfg.log_dir), "times": times,
            "step_s": statistics.median(times["step_time"][WARMUP_STEPS:] or times["step_time"])}


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
