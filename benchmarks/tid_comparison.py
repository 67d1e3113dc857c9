"""Baseline vs token-importance dropout (each scoring method): same seed, data and steps.

    python -m benchmarks.tid_comparison                       # quickstart overlay, built-in corpus, CPU
    python -m benchmarks.tid_comparison --config configs/quickstart.yaml --set train.max_steps=1000 --device cuda

Trains `tid.method=none` and every method in turn (configs/tid.yaml + the overlays), then prints
final validation loss, perplexity, bits per byte, wall time, and the scoring overhead: median
scoring time per step over the median step time of the baseline. Writes JSON to benchmarks/results/.
"""

import argparse
import math
import statistics

from benchmarks.common import WARMUP_STEPS, device_name, train_variant, write_results

METHODS = ("none", "random", "entropy", "gradient_norm", "attention_mass")


def run_method(args, method: str) -> dict:
    sets = [*args.set, f"tid.method={method}", f"device={args.device}"]
    r = train_variant(["configs/tid.yaml", *args.config], sets, f"tidcmp-{method}")
    stats, tid = r["losses"]["stats"], r["cfg"].tid
    score = statistics.median(stats["tid_score_time"][WARMUP_STEPS:]) if method != "none" else 0.0
    return {"method": method, "drop": tid.drop, "ratio": tid.p_start if method != "none" else 0.0,
            "val_loss": r["val_loss"], "val_ppl": r["val_ppl"], "val_bpb": r["val_bpb"],
            "wall_s": r["wall_s"], "step_s": r["step_s"], "score_s": score, "tokens_per_s": r["tokens_per_s"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None, help="overlays on configs/tid.yaml")
    parser.add_argument("--set", action="append", default=[], help="overrides, e.g. train.max_steps=300")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/tid_comparison_<device>.json)")
    args = parser.parse_args(argv)
    args.config = args.config or ["configs/quickstart.yaml"]

    rows = [run_method(args, m) for m in args.methods.split(",")]
    base = next((r for r in rows if r["method"] == "none"), None)
    for r in rows:
        r["overhead"] = r["score_s"] / base["step_s"] if base else math.nan
    device = device_name(args.device)
    print(f"\nTID comparison on {device}; overlays {args.config}; overrides {args.set}")
    print(f"{'method':15s} {'drop':>5s} {'ratio':>5s} {'val loss':>9s} {'val ppl':>8s} {'bits/byte':>9s} "
          f"{'wall s':>7s} {'step ms':>8s} {'score ms':>9s} {'overhead':>9s}")
    for r in rows:
        print(f"{r['method']:15s} {r['drop']:>5s} {r['ratio']:>5.2f} {r['val_loss']:>9.4f} {r['val_ppl']:>8.3f} "
              f"{r['val_bpb']:>9.4f} {r['wall_s']:>7.1f} {1e3 * r['step_s']:>8.1f} {1e3 * r['score_s']:>9.1f} "
              f"{r['overhead']:>9.2f}")
    out = args.out or f"benchmarks/results/tid_comparison_{'cpu' if device == 'cpu' else 'cuda'}.json"
    write_results(out, {"benchmark": "tid_comparison", "device": device,
                        "configs": ["configs/tid.yaml", *args.config], "set": args.set, "results": rows})


if __name__ == "__main__":
    main()
