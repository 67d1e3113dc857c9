"""Baseline vs Falcon (MoE) vs Condor (attention variants): same data, steps and seed.

    python -m benchmarks.family_comparison                    # quickstart overlay, built-in corpus, CPU
    python -m benchmarks.family_comparison --set train.max_steps=1000 --device cuda

Prints final validation loss and perplexity, total and active parameters, and tokens/s per
variant; writes JSON to benchmarks/results/.
"""

import argparse

from benchmarks.common import device_name, train_variant, write_results

VARIANTS = {  # name -> (runner's default config, extra overrides)
    "baseline": ("configs/baseline.yaml", []),
    "falcon": ("configs/falcon.yaml", []),
    "condor_head_linear_silu": ("configs/condor.yaml", ["model.attention=head_linear_silu"]),
    "condor_self_score": ("configs/condor.yaml", ["model.attention=self_score"]),
    "condor_standard": ("configs/condor.yaml", ["model.attention=standard"]),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None, help="overlays on each runner's config")
    parser.add_argument("--set", action="append", default=[], help="overrides, e.g. train.max_steps=300")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.config = args.config or ["configs/quickstart.yaml"]

    rows = []
    for name in args.variants.split(","):
        base, extra = VARIANTS[name]
        r = train_variant([base, *args.config], [*args.set, *extra, f"device={args.device}"], f"familycmp-{name}")
        meta = r["losses"]["meta"]
        rows.append({"variant": name, "layers": r["cfg"].model.n_layers, "val_loss": r["val_loss"],
                     "val_ppl": r["val_ppl"], "params": meta["params"], "active_params": meta["active_params"],
                     "tokens_per_s": r["tokens_per_s"], "step_s": r["step_s"], "wall_s": r["wall_s"]})
    device = device_name(args.device)
    print(f"\nModel families on {device}; overlays {args.config}; overrides {args.set}")
    print(f"{'variant':18s} {'layers':>6s} {'val loss':>9s} {'val ppl':>8s} {'params':>9s} {'active':>9s} "
          f"{'tokens/s':>9s} {'step ms':>8s}")
    for r in rows:
        print(f"{r['variant']:18s} {r['layers']:>6d} {r['val_loss']:>9.4f} {r['val_ppl']:>8.3f} "
              f"{r['params'] / 1e6:>8.2f}M {r['active_params'] / 1e6:>8.2f}M {r['tokens_per_s']:>9,.0f} "
              f"{1e3 * r['step_s']:>8.1f}")
    out = args.out or f"benchmarks/results/family_comparison_{'cpu' if device == 'cpu' else 'cuda'}.json"
    write_results(out, {"benchmark": "family_comparison", "device": device, "configs": args.config,
                        "set": args.set, "results": rows})


if __name__ == "__main__":
    main()
