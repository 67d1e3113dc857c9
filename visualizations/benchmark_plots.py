"""Figures of the benchmark JSONs (the generation benchmark's: speed with and without the KV cache, decoders).

    from visualizations import benchmark_plots
    benchmark_plots.benchmark("benchmarks/results/generation_cuda.json", out_dir="figures")
"""

import json
from pathlib import Path

import numpy as np

from visualizations.figures import annotated_bars, log_axis, new_figure, save_or_return
from visualizations.run_logs import repo_path, warn_missing


def generation_speed(path, *, out_dir=None, formats=("png",)):
    """benchmarks/decode_speed.py --ckpt JSON: new tokens/s per batch size with and without the KV cache, and per
    decoder (greedy, sampling, beam k) on held-out prompts with its BLEU."""
    data = json.loads(Path(path).read_text())
    fig, axes = new_figure(2)
    ax, speed = axes[0, 0], data.get("speed", [])
    batches = sorted({r["batch"] for r in speed})
    groups = list(dict.fromkeys((r["decoder"], r["kv_cache"]) for r in speed))
    width = 0.8 / max(len(groups), 1)
    for g, (decoder, cache) in enumerate(groups):
        rows = {r["batch"]: r["tokens_per_s"] for r in speed if (r["decoder"], r["kv_cache"]) == (decoder, cache)}
        x = np.arange(len(batches)) + (g - (len(groups) - 1) / 2) * width
        ax.bar(x, [rows.get(b, 0) for b in batches], width, label=f"{decoder}, {'KV cache' if cache else 'no cache'}",
               color=f"C{g}", hatch="" if cache else "//", edgecolor="0.2")
    ax.set(xticks=range(len(batches)), xticklabels=[f"batch {b}" for b in batches],
           ylabel="new tokens/s", title="speed with and without the KV cache")
    log_axis(ax)
    ax.legend(fontsize=8)
    quality = data.get("quality", [])
    annotated_bars(axes[0, 1], [r["decoder"] for r in quality], [r["tokens_per_s"] for r in quality],
                   [f"BLEU {r['bleu']:.1f}" for r in quality], "new tokens/s",
                   "decoders on held-out prompts (BLEU above)")
    fig.suptitle(f"Generation: {data.get('device', '?')}, {data.get('dtype', '?')}")
    return save_or_return(fig, Path(path).stem, out_dir, formats)


def benchmark(path, *, out_dir=None, formats=("png",)):
    """The figure for a benchmark JSON (the generation benchmark's)."""
    path = repo_path(path)
    if not path.is_file():
        warn_missing(f"no benchmark results at {path}: run the benchmark first, or check the path")
        return None
    data = json.loads(path.read_text())
    if "speed" in data or "quality" in data:
        return generation_speed(path, out_dir=out_dir, formats=formats)
    warn_missing(f"{path}: not a generation benchmark; no figure")
    return None
