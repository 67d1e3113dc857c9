"""Optimizer state memory per parameter: fp32 AdamW against torchao's 8-bit and 4-bit AdamW.

    python -m benchmarks.optimizer_memory --device cpu             # baseline and gpt2_125m presets
    python -m benchmarks.optimizer_memory --device cuda --presets baseline,gpt2_125m,llama

For each preset (at its full size) and `train.optimizer`, one training step on random tokens
allocates the state; the table gives the bytes the state holds (quantised moments counted by
their codes, block scales and code tables), per parameter, and on CUDA also the allocator's growth
over that step. Writes benchmarks/results/optimizer_memory_<cpu|cuda>.json.
"""

import argparse

import torch

import models
import optimizers
from benchmarks.common import default_out, device_arg, device_info, write_results
from models import ModelConfig
from runtime import resolve_device


def measure(preset: str, name: str, device: torch.device) -> dict:
    """State bytes after one step of optimizer `name` on the preset's model."""
    torch.manual_seed(0)
    model = models.build(ModelConfig.from_preset(preset)).to(device)
    n = sum(p.numel() for p in model.parameters())
    opt = optimizers.make_optimizer([{"params": list(model.parameters()), "weight_decay": 0.1}], name, 1e-4,
                                    (0.9, 0.95), device)
    tokens = torch.randint(0, model.cfg.vocab_size, (1, 17), device=device)
    _, loss, _ = model(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    opt.step()
    grown = torch.cuda.memory_allocated(device) - before if device.type == "cuda" else None
    state = optimizers.state_bytes(opt)
    quantised = sum(p.numel() for p, s in opt.state.items() if type(s["exp_avg"]).__name__ != "Tensor")
    return {"preset": preset, "optimizer": name, "params": n, "state_bytes": state, "bytes_per_param": state / n,
            "quantised_share": quantised / n, "allocator_growth_bytes": grown}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", type=device_arg)
    parser.add_argument("--presets", default="baseline,gpt2_125m")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    rows = [measure(p, o, device) for p in args.presets.split(",") for o in optimizers.OPTIMIZERS]
    print(f"optimizer state on {device_info(device)['device']}")
    print(f"{'preset':11s} {'params':>8s} {'optimizer':10s} {'state MB':>9s} {'bytes/param':>11s} {'quantised':>9s}"
          + ("  allocator MB" if device.type == "cuda" else ""))
    for r in rows:
        line = (f"{r['preset']:11s} {r['params'] / 1e6:7.1f}M {r['optimizer']:10s} {r['state_bytes'] / 2**20:9.1f} "
                f"{r['bytes_per_param']:11.2f} {r['quantised_share']:9.1%}")
        if r["allocator_growth_bytes"] is not None:
            line += f"  {r['allocator_growth_bytes'] / 2**20:12.1f}"
        print(line)
    payload = {**device_info(device), "rows": rows}
    write_results(args.out or default_out("optimizer_memory", device), payload)
    return payload


if __name__ == "__main__":
    main()
