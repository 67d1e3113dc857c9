"""Every speed benchmark in one command: training, TID overhead, perplexity scoring, decoding.

    python -m benchmarks.run_all --device cuda     # full sizes on one GPU (about 8 minutes)
    python -m benchmarks.run_all --device cpu      # tiny sizes: the smoke run CI does

Each benchmark prints its table and writes benchmarks/results/<name>_<cuda|cpu>.json; this
command adds run_all_<cuda|cpu>.json with the wall time of each and every target it marks.
"""

import argparse
import importlib
import time
from pathlib import Path

from benchmarks.common import device_arg, device_info, write_results
from runtime import resolve_device

BENCHMARKS = ("train_speed", "tid_overhead", "perplexity_speed", "decode_speed")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", type=device_arg)
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ", ".join(BENCHMARKS))
    parser.add_argument("--out-dir", default="benchmarks/results")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    dev = resolve_device(args.device)
    quick = dev.type != "cuda"  # full sizes need a GPU; elsewhere the tiny smoke sizes
    suffix = "cuda" if dev.type == "cuda" else "cpu"
    summary = {"benchmark": "run_all", **device_info(dev), "quick": quick, "date": time.strftime("%Y-%m-%d"),
               "seconds": {}, "targets": []}
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        payload = importlib.import_module(f"benchmarks.{name}").run(str(dev), quick=quick)
        summary["seconds"][name] = time.perf_counter() - t0
        summary["targets"] += [{"benchmark": name, **t} for t in payload.get("targets", [])]
        write_results(Path(args.out_dir) / f"{name}_{suffix}.json", payload)
    summary["seconds"]["total"] = time.perf_counter() - t_all
    write_results(Path(args.out_dir) / f"run_all_{suffix}.json", summary)
    print("\ntargets:" if summary["targets"] else "")
    for t in summary["targets"]:
        print(f"  {'met    ' if t['met'] else 'not met'}  {t['benchmark']}: {t['target']} ({t['value']:,.3f})")
    print("wall time: " + ", ".join(f"{n} {s:.0f}s" for n, s in summary["seconds"].items()))
    return summary


if __name__ == "__main__":
    main()
