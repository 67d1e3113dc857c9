"""Cost of token-importance dropout: each scoring method's training step over the plain step.

    python -m benchmarks.tid_overhead --device cuda          # GPT-2 124M shape, T=128 B=128, bf16, compiled
    python -m benchmarks.tid_overhead --device cpu --quick   # tiny sizes: a smoke run

Every variant is the real `generic_runner` step on random tokens (see benchmarks/train_speed.py);
overhead = median step time with TID / median step time without - 1. The scoring pass runs on the
training model, compiled when the step is (see tid.py).
"""


from benchmarks.common import benchmark_cli, device_info
from benchmarks.train_speed import model_sets, train_on_random_tokens
from runtime import resolve_device

METHODS = ("none", "random", "entropy", "attention_mass", "gradient_norm")
LIMITS = {"random": 0.02, "entropy": 0.35, "attention_mass": 0.40, "gradient_norm": 0.80}  # the targets


def judge(rows: list[dict]) -> None:
    """Add overhead (step time over the `none` row's, less 1), limit and met to every row."""
    base = next(r["step_s"] for r in rows if r["method"] == "none")
    for r in rows:
        r["overhead"] = r["step_s"] / base - 1.0
        r["limit"] = LIMITS.get(r["method"])
        r["met"] = None if r["limit"] is None else r["overhead"] <= r["limit"]


def targets(rows: list[dict]) -> list[dict]:
    """One target per judged method with a limit."""
    return [{"target": f"{r['method']} overhead <= {r['limit']:.2f}", "value": r["overhead"], "met": r["met"]}
            for r in rows if r["limit"] is not None]


def run(device: str = "auto", quick: bool = False, steps: int | None = None) -> dict:
    """Train every method for `steps` steps, print the table, return the JSON payload."""
    dev = resolve_device(device)
    arch, context, batch, vocab = ("tiny", 32, 4, 512) if quick else ("gpt2_shape", 128, 128, 50304)
    steps = steps or (8 if quick else 30)
    compiled = dev.type == "cuda"
    sets = model_sets(arch, context, vocab) + [
        f"train.batch_size={batch}", f"train.compile={compiled}",
        f"train.precision={'bf16' if dev.type == 'cuda' else 'fp32'}", "tid.p_start=0.1", "tid.p_end=0.1"]
    rows = []
    for method in METHODS:
        r = train_on_random_tokens(dev, sets + [f"tid.method={method}"], steps, f"tid-overhead-{method}")
        rows.append({"method": method, **r})
    judge(rows)
    print(f"\nTID overhead on {device_info(dev)['device']}: {arch}, T={context} B={batch}, "
          f"{'compiled' if compiled else 'eager'}, drop ratio 0.1")
    print(f"{'method':15s} {'step ms':>8s} {'tokens/s':>11s} {'overhead':>9s} {'target':>7s}")
    for r in rows:
        target = "-" if r["limit"] is None else f"{r['limit']:.2f}"
        verdict = "" if r["met"] is None or dev.type != "cuda" else ("met" if r["met"] else "not met")
        print(f"{r['method']:15s} {1e3 * r['step_s']:>8.2f} {r['tokens_per_s']:>11,.0f} {r['overhead']:>9.3f} "
              f"{target:>7s} {verdict}")
    goals = targets(rows) if dev.type == "cuda" else []
    return {"benchmark": "tid_overhead", **device_info(dev), "model": arch, "context": context, "batch": batch,
            "compile": compiled, "steps": steps, "rows": rows, "targets": goals}


def main(argv=None) -> None:
    benchmark_cli("tid_overhead", run, __doc__.splitlines()[0], argv, steps=True)


if __name__ == "__main__":
    main()
