"""Perplexity scoring speed: the runner's scoring path against a bare forward and Hugging Face.

    python -m benchmarks.perplexity_speed --device cuda          # gpt2_125m, 10,000 rows x 128 tokens, bf16
    python -m benchmarks.perplexity_speed --device cpu --quick   # tiny sizes: a smoke run

Random weights and random rows (no data or tokenizer files). Rows: `perplexity.scoring.score_rows` as
the runner calls it, eager and compiled (`--compile`); the reference floor is a bare compiled
no-grad forward over the same tokens (logits only, tokens already on the device); Hugging Face
`transformers` scores the same weights with its forward + cross-entropy. Medians after warm-up,
compile time apart. The runner's total NLL is checked against the bare forward's.
"""

import torch
import torch.nn.functional as F

from benchmarks.common import benchmark_cli, device_info, median_seconds, peak_memory_gb, print_targets, seconds_of
from models import ModelConfig
from modelskv.load import inference_model
from perplexity.scoring import score_rows, token_nll
from runtime import autocast, resolve_device, resolve_dtype

FULL = dict(preset="gpt2_125m", overrides={}, rows=10_000, row_len=128, batch=128, repeats=3)
QUICK = dict(preset="baseline", overrides=dict(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=512, context=64),
             rows=64, row_len=32, batch=16, repeats=1)


def random_checkpoint(cfg: ModelConfig, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A randomly initialised inference model on `device` (fp32: scoring autocasts, as the runner does) and
    the checkpoint dict that describes it; its cache is unused (forward_full), so it is one position."""
    torch.manual_seed(0)
    model = inference_model(cfg, device, torch.float32, max_batch=1, max_seq_len=1)
    ckpt = {"model": model.state_dict(), "config": {"model": dict(cfg.__dict__)},
            "tokenizer": {"kind": "random", "path": None, "vocab_size": cfg.vocab_size}}
    return model, ckpt


def bare_forward(forward, tokens: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Logits of every batch of `tokens` (already on the device): the floor any scorer pays."""
    with torch.inference_mode():
        return [forward(tokens[i:i + batch]) for i in range(0, len(tokens), batch)]


def run(device: str = "auto", quick: bool = False) -> dict:
    """Time every scorer, print the table, return the JSON payload."""
    dev = resolve_device(device)
    s = QUICK if quick else FULL
    cfg = ModelConfig.from_preset(s["preset"], **s["overrides"])
    model, ckpt = random_checkpoint(cfg, dev)
    dtype = resolve_dtype("auto", dev)  # bf16 on GPUs, fp32 on CPU
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (s["rows"], s["row_len"]), generator=g)
    rows = tokens.tolist()
    compile_ok = dev.type == "cuda"
    args = dict(context=cfg.context, stride=None, batch_size=s["batch"], device=dev, dtype=dtype)
    out, results = [], {}

    def timed(name: str, fn, compile_s: float | None = None, note: str = ""):
        seconds = median_seconds(fn, dev, warmup=1, repeats=s["repeats"])
        out.append({"scorer": name, "seconds": seconds, "rows_per_s": s["rows"] / seconds,
                    "tokens_per_s": s["rows"] * (s["row_len"] - 1) / seconds, "compile_s": compile_s, "note": note})

    eager_nll = token_nll(model.forward_full)
    timed("ours score_rows", lambda: results.__setitem__("ours", score_rows(eager_nll, rows, **args)))
    if compile_ok:
        compiled_nll = torch.compile(token_nll(model.forward_full), dynamic=False)
        compile_s = seconds_of(lambda: score_rows(compiled_nll, rows, **args, fixed_shapes=True), dev)
        timed("ours score_rows compiled", lambda: score_rows(compiled_nll, rows, **args, fixed_shapes=True), compile_s)

    on_device = tokens.to(dev)
    forward = torch.compile(model.forward_full, dynamic=False) if compile_ok else model.forward_full
    with autocast(dev, dtype):
        compile_s = seconds_of(lambda: bare_forward(forward, on_device[:, :-1], s["batch"]), dev)
        compile_s = compile_s if compile_ok else None
        timed("bare forward" + (" compiled" if compile_ok else ""),
              lambda: bare_forward(forward, on_device[:, :-1], s["batch"]), compile_s, "logits only, the floor")
        logits = bare_forward(model.forward_full, on_device[:, :-1], s["batch"])
    reference = sum(F.cross_entropy(lg.float().transpose(1, 2), on_device[i * s["batch"]:(i + 1) * s["batch"], 1:],
                                    reduction="sum").item() for i, lg in enumerate(logits))
    del logits
    ours_total = float(results["ours"][0].sum())
    agree = abs(ours_total - reference) <= (1e-5 if dtype == torch.float32 else 1e-2) * abs(reference)

    try:
        from models.convert import to_hf_model
        hf = to_hf_model(ckpt, special_ids=(None, 0)).to(dev)
        hf_nll = token_nll(lambda x: hf(input_ids=x).logits)
        timed("HF " + type(hf).__name__, lambda: score_rows(hf_nll, rows, **args), note="eager forward + loss")
    except ImportError:
        print("skip the Hugging Face reference: pip install transformers")

    goals = targets(out)                      # also fills vs_bare_forward, printed below
    goals = goals if dev.type == "cuda" and not quick else []
    print(f"\nperplexity scoring on {device_info(dev)['device']}: {s['preset']} ({cfg.n_layers} layers), "
          f"{s['rows']:,} rows x {s['row_len']} tokens, batch {s['batch']}, {str(dtype).removeprefix('torch.')}")
    print(f"{'scorer':28s} {'seconds':>8s} {'rows/s':>10s} {'vs bare':>8s} {'compile s':>9s}")
    for r in out:
        comp = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        print(f"{r['scorer']:28s} {r['seconds']:>8.3f} {r['rows_per_s']:>10,.0f} {r['vs_bare_forward']:>8.2f} {comp:>9s}")
    print(f"total NLL: ours {ours_total:.4f}, bare forward {reference:.4f} ({'agree' if agree else 'DISAGREE'})")
    print_targets(goals)
    return {"benchmark": "perplexity_speed", **device_info(dev), "preset": s["preset"], "rows": s["rows"],
            "row_len": s["row_len"], "batch": s["batch"], "dtype": str(dtype).removeprefix("torch."),
            "peak_gb": peak_memory_gb(dev), "nll_ours": ours_total, "nll_reference": reference,
            "nll_agree": agree, "results": out, "targets": goals}


def targets(out: list[dict]) -> list[dict]:
    """Add vs_bare_forward (the bare forward's seconds over the row's) to every row; the goals of the
    fastest of ours: 10,000 rows in <= 1.5 s and >= 0.6x the bare forward's speed."""
    bare = next(r for r in out if r["scorer"].startswith("bare"))
    for r in out:
        r["vs_bare_forward"] = bare["seconds"] / r["seconds"]
    best = min((r for r in out if r["scorer"].startswith("ours")), key=lambda r: r["seconds"])
    return [{"target": "10,000 rows in <= 1.5 s", "value": best["seconds"], "met": best["seconds"] <= 1.5},
            {"target": ">= 0.6x the bare forward's speed", "value": best["vs_bare_forward"],
             "met": best["vs_bare_forward"] >= 0.6}]


def main(argv=None) -> None:
    benchmark_cli("perplexity_speed", run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
