"""Training throughput of the generic trainer against Hugging Face models, on random tokens.

    python -m benchmarks.train_speed --device cuda          # GPT-2-124M sizes, bf16 (a few minutes)
    python -m benchmarks.train_speed --device cpu --quick   # tiny sizes: a smoke run

Ours is the real step of `generic_runner` (data from host memory, accumulation, clipping, fused
AdamW, logging) timed by the trainer itself; the references are bare loops over Hugging Face
`GPT2LMHeadModel` and tied `LlamaForCausalLM` of the same shapes (fused AdamW, clipping, bf16
autocast, tokens already on the device). Medians after warm-up; the first step (compilation
included) is reported apart. MFU counts FLOPs as nanoGPT's estimate_mfu does, over 989 TFLOP/s.
"""

import importlib.util
import math
import statistics
import tempfile
from dataclasses import dataclass

import torch

import models
from benchmarks.common import (WARMUP_STEPS, benchmark_cli, device_info, median_seconds, peak_memory_gb,
                               print_targets)
from benchmarks.synthetic import RandomTokens
from experiment_config import load_config
from generic_runner import train
from runtime import PEAK_FLOPS, resolve_device
from train_logs import load_times

H100_BF16 = PEAK_FLOPS["H100"]
VOCAB = 50304  # GPT-2's 50257 padded to a multiple of 64, as nanoGPT's reference runs use

# model.* overrides of each architecture; "gpt2_shape" is GPT-2 124M itself (LayerNorm, learned positions, GELU)
ARCHS = {
    "gpt2_125m": {"preset": "gpt2_125m"},
    "gpt2_shape": {"preset": "baseline", "d_model": 768, "n_layers": 12, "n_heads": 12, "d_ff": 3072},
    "tiny": {"preset": "baseline", "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256},
}


@dataclass
class Case:
    arch: str
    context: int
    batch: int
    compile: bool
    loss_chunk: int = 0  # train.loss_chunk: > 0 fuses head and cross-entropy in chunks of this many tokens
    vocab: int = VOCAB


FULL = [Case("gpt2_125m", 1024, 16, True), Case("gpt2_125m", 1024, 16, False),
        Case("gpt2_shape", 1024, 16, True), Case("gpt2_shape", 1024, 16, True, loss_chunk=8192),
        Case("gpt2_shape", 128, 128, True)]
FULL_HF = [("GPT2LMHeadModel", 1024, 16), ("LlamaForCausalLM", 1024, 16), ("GPT2LMHeadModel", 128, 128)]
QUICK = [Case("tiny", 32, 4, False, vocab=512), Case("tiny", 32, 4, False, loss_chunk=64, vocab=512)]
QUICK_HF = [("GPT2LMHeadModel", 32, 4), ("LlamaForCausalLM", 32, 4)]


def model_sets(arch: str, context: int, vocab: int) -> list[str]:
    return [f"model.{k}={v}" for k, v in {**ARCHS[arch], "context": context, "vocab_size": vocab}.items()]


def flops_per_token(sets: list[str]) -> int:
    cfg = load_config([], sets).model
    with torch.device("meta"):
        n = models.build(cfg).num_params(exclude_embeddings=True)
    return models.flops_per_token(cfg, n)


def train_on_random_tokens(device: torch.device, sets: list[str], steps: int, name: str) -> dict:
    """Train `steps` optimizer steps through `generic_runner.train` on random ids; time per step from its logs."""
    cfg = load_config([], sets)
    with tempfile.TemporaryDirectory() as out:
        cfg.run_name, cfg.checkpoint_dir, cfg.log_dir = name, f"{out}/checkpoints", f"{out}/logs"
        cfg.device = str(device)
        cfg.train.max_steps = cfg.train.eval_every = cfg.train.save_every = steps
        cfg.train.eval_batches, cfg.train.checkpoints = 1, False
        block = cfg.model.context + 1
        data = RandomTokens(cfg.model.vocab_size, train_tokens=cfg.train.batch_size * block * 64,
                            val_tokens=cfg.train.batch_size * block)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        train(cfg, data=data)
        step_times = load_times(name, cfg.log_dir)["step_time"]
    step_s = statistics.median(step_times[WARMUP_STEPS:])
    tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.context
    return {"step_s": step_s, "tokens_per_s": tokens / step_s, "first_step_s": step_times[0],
            "peak_gb": peak_memory_gb(device)}


def ours(case: Case, device: torch.device, steps: int) -> dict:
    sets = model_sets(case.arch, case.context, case.vocab)
    precision = "bf16" if device.type == "cuda" else "fp32"
    r = train_on_random_tokens(device, sets + [f"train.batch_size={case.batch}", f"train.compile={case.compile}",
                                               f"train.precision={precision}", f"train.loss_chunk={case.loss_chunk}"],
                               steps, f"speed-{case.arch}-{case.context}")
    label = f"ours {case.arch}" + (f" chunk {case.loss_chunk}" if case.loss_chunk else "")
    return {"model": label, "arch": case.arch, "context": case.context, "batch": case.batch, "compile": case.compile,
            "loss_chunk": case.loss_chunk, "flops_per_token": flops_per_token(sets), **r}


def hf_model(kind: str, context: int, vocab: int, small: bool):
    """A randomly initialised Hugging Face model of GPT-2 124M's shape (tiny when `small`)."""
    import transformers

    d, layers, heads = (64, 2, 4) if small else (768, 12, 12)
    if kind == "GPT2LMHeadModel":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=d, n_layer=layers, n_head=heads,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=0)
        arch = "gpt2_shape" if not small else "tiny"
    else:
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=4 * d if small else 2048,
                                       num_hidden_layers=layers, num_attention_heads=heads,
                                       max_position_embeddings=context, tie_word_embeddings=True)
        arch = "gpt2_125m" if not small else "tiny"
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa"), arch


def hf(kind: str, context: int, batch: int, device: torch.device, steps: int, small: bool, vocab: int) -> dict:
    """A bare training loop over the Hugging Face model: the reference a user would otherwise write."""
    model, arch = hf_model(kind, context, vocab, small)
    model.to(device).train()
    compiled = device.type == "cuda"
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device.type == "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step():
        x = torch.randint(vocab, (batch, context), device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = forward(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = median_seconds(step, device, warmup=0, repeats=1)
    run = lambda: [step() for _ in range(steps)]  # noqa: E731  (one timing over many steps: no sync between)
    step_s = median_seconds(run, device, warmup=1, repeats=3) / steps
    n = sum(p.numel() for p in model.parameters()) - (model.config.n_positions * model.config.n_embd
                                                     if kind == "GPT2LMHeadModel" else 0)
    flops = 6 * n + 12 * model.config.num_hidden_layers * model.config.hidden_size * context
    return {"model": f"HF {kind}", "context": context, "batch": batch, "compile": compiled, "step_s": step_s,
            "tokens_per_s": batch * context / step_s, "first_step_s": first, "peak_gb": peak_memory_gb(device),
            "flops_per_token": flops, "shape_of": arch}


def targets(rows: list[dict]) -> list[dict]:
    """The issue's goals, as ratios to the references or absolute figures, each met or not."""
    def best_ours(arch, context):  # the fastest compiled variant of ours
        mine = [r for r in rows if r.get("arch") == arch and r["context"] == context and r["compile"]]
        return max(mine, key=lambda r: r["tokens_per_s"], default=None)
    out = []
    for arch, context, goal in (("gpt2_shape", 1024, 550e3), ("gpt2_shape", 128, 590e3), ("gpt2_125m", 1024, 550e3)):
        r = best_ours(arch, context)
        if r:
            out.append({"target": f"{r['model']} T={context} >= {goal / 1e3:.0f}k tokens/s",
                        "value": r["tokens_per_s"], "met": r["tokens_per_s"] >= goal})
    for context in (1024, 128):
        r = best_ours("gpt2_shape", context)
        refs = [x for x in rows if x["model"].startswith("HF") and x["context"] == context]
        if r and refs:
            best = max(x["tokens_per_s"] for x in refs)
            out.append({"target": f"ours T={context} ahead of every HF model (ratio to the fastest)",
                        "value": r["tokens_per_s"] / best, "met": r["tokens_per_s"] > best})
    r = best_ours("gpt2_shape", 1024)
    if r:
        out.append({"target": "MFU >= 0.45 at T=1024", "value": r["mfu"], "met": r["mfu"] >= 0.45})
    return out


def run(device: str = "auto", quick: bool = False, steps: int | None = None) -> dict:
    """Run every case, print the table, return the JSON payload."""
    dev = resolve_device(device)
    cases, hf_cases = (QUICK, QUICK_HF) if quick else (FULL, FULL_HF)
    steps = steps or (8 if quick else 40)
    rows = [ours(c, dev, steps) for c in cases]
    if importlib.util.find_spec("transformers"):
        rows += [hf(kind, t, b, dev, max(steps // 4, 2), quick, cases[0].vocab) for kind, t, b in hf_cases]
    else:
        print("skip the Hugging Face references: pip install transformers")
    for r in rows:
        r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / H100_BF16 if dev.type == "cuda" else math.nan
    goals = targets(rows) if dev.type == "cuda" else []
    print_table(rows, goals, dev)
    return {"benchmark": "train_speed", **device_info(dev), "steps": steps, "warmup_steps": WARMUP_STEPS,
            "peak_flops": H100_BF16, "rows": rows, "targets": goals}


def print_table(rows: list[dict], goals: list[dict], dev: torch.device) -> None:
    print(f"\ntraining speed on {device_info(dev)['device']}, random tokens")
    print(f"{'model':26s} {'T':>5s} {'B':>4s} {'compile':>7s} {'tokens/s':>11s} {'step ms':>8s} {'MFU':>6s} "
          f"{'peak GB':>8s} {'1st step s':>10s}")
    for r in rows:
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
        print(f"{r['model']:26s} {r['context']:>5d} {r['batch']:>4d} {'yes' if r['compile'] else 'no':>7s} "
              f"{r['tokens_per_s']:>11,.0f} {1e3 * r['step_s']:>8.2f} {r['mfu']:>6.3f} {peak:>8s} "
              f"{r['first_step_s']:>10.1f}")
    print_targets(goals)


def main(argv=None) -> None:
    benchmark_cli("train_speed", run, __doc__.splitlines()[0], argv, steps=True)


if __name__ == "__main__":
    main()
