"""Figures from logs/: loss curves, lr and gradient norm, TID, MoE load, perplexity, time, benchmarks.

    python -m visualizations.plots --runs baseline-quickstart tid-quickstart --out figures/
    python -m visualizations.plots --runs A B --out figures/ --ema 0.95 --log-scale --svg \\
        --bench benchmarks/results/generation_cuda.json

    from visualizations import plots
    plots.loss_curves(["baseline-quickstart"], "logs")           # -> Figure (drawn inline in a notebook)
    plots.plot_all(["baseline-quickstart"], "logs", "figures")   # -> {figure name: [saved paths]}

Each figure function takes run names (or what `run_logs.load_runs` returns), the log dir and options,
and returns the Figure, or with `out_dir` the saved files (`formats=("png", "svg")` adds SVG). A run
whose logs are missing is named in a MissingLogWarning and left out; with nothing to draw (no run has
TID or MoE statistics, say) a function returns None. Reading the logs: run_logs.py; the benchmark
figures: benchmark_plots.py; shared figure pieces: figures.py.
Tokens seen per step = tokens/s x step time from the times log (counts every data-parallel process);
without a times log, batch_size x grad_accum x context from the config (one process assumed).
"""

import argparse
import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter

from visualizations.benchmark_plots import benchmark
from visualizations.figures import log_axis, new_figure, save_or_return, smooth
from visualizations.run_logs import ROOT, MissingLogWarning, load_perplexity, load_runs


def _time_unit(seconds: float) -> tuple[str, float]:
    """The unit that keeps wall times readable: s under 2 min, min under 2 h, else h."""
    return ("s", 1.0) if seconds < 120 else ("min", 60.0) if seconds < 7200 else ("h", 3600.0)


def _tokens_per_step(d: dict) -> float | None:
    t = d["times"]
    if t and t["step_time"] and math.isfinite(t["tokens_per_s"][0] * t["step_time"][0]):
        return round(t["tokens_per_s"][0] * t["step_time"][0])  # exact: the trainer logs tokens / step_time
    try:
        c = d["losses"]["meta"]["config"]
        return c["train"]["batch_size"] * c["train"]["grad_accum"] * c["model"]["context"]  # one process assumed
    except (KeyError, TypeError):
        return None


def _x_of(d: dict, axis: str, div: float):
    """A function from steps to the x axis `axis` (step | time | tokens) for this run, or None."""
    if axis == "step":
        return lambda s: np.asarray(s, dtype=float)
    if axis == "time":
        t = d["times"]
        return t and (lambda s: np.interp(s, [0, *t["step"]], [0.0, *t["elapsed"]]) / div)
    if axis == "tokens":
        n = _tokens_per_step(d)
        return n and (lambda s: np.asarray(s, dtype=float) * n)
    raise ValueError(f"x axis {axis!r} is not one of step, time, tokens")


def _legend(ax, runs: dict, styles=(), **kw) -> None:
    """One legend: a colour per run, then line styles (label, Line2D kwargs)."""
    handles = [Line2D([], [], color=f"C{i}", lw=2, label=run) for i, (run, d) in enumerate(runs.items()) if d]
    handles += [Line2D([], [], color="0.3", label=label, **style) for label, style in styles]
    ax.legend(handles=handles, fontsize=8, **kw)


def _curve(ax, x, y, color, ema: float) -> None:
    """Raw values faint, the EMA on top (raw only when ema=0)."""
    if ema:
        ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
    ax.plot(x, smooth(y, ema), color=color, lw=1.6)


def _stat_runs(runs: dict, pattern: str) -> dict:
    """The runs whose per-step stats have a key matching `pattern` (others None, keeping colours)."""
    return {r: d if d and any(re.fullmatch(pattern, k) for k in d["losses"]["stats"]) else None
            for r, d in runs.items()}


# ----------------------------------------------------------------------------- training figures

def loss_curves(runs, log_dir="logs", *, x=("step", "time", "tokens"), ema=0.9, log_scale=False,
                out_dir=None, formats=("png",)):
    """Train loss (raw faint, EMA solid) and validation loss (dashed, dots) of each run; one panel
    per x axis: optimizer step, wall time, tokens seen."""
    runs = load_runs(runs, log_dir)
    if not any(runs.values()):
        return None
    unit, div = _time_unit(max((d["times"]["total_elapsed"] for d in runs.values() if d and d["times"]), default=0))
    labels = {"step": "optimizer step", "time": f"wall time ({unit})", "tokens": "tokens seen"}
    fig, axes = new_figure(len(x))
    for ax, axis in zip(axes[0], x):
        for i, (run, d) in enumerate(runs.items()):
            to_x = d and _x_of(d, axis, div)
            if to_x:
                _curve(ax, to_x(d["losses"]["step"]), d["losses"]["train_loss"], f"C{i}", ema)
                val = d["losses"]["val"]
                ax.plot(to_x(val["step"]), val["loss"], color=f"C{i}", ls="--", marker="o", ms=3.5, lw=1.2)
        ax.set(xlabel=labels[axis], ylabel="loss (nats/token)", title=f"by {labels[axis].split(' (')[0]}")
        if log_scale:
            log_axis(ax)
        else:  # the same loss in bits per token (what the TID study calls BPC)
            ax.secondary_yaxis("right", functions=(lambda n: n / math.log(2), lambda b: b * math.log(2))
                               ).set_ylabel("bits/token")
        if axis == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter())
    train = f"train (EMA {ema})" if ema else "train"
    _legend(axes[0, 0], runs, [(train, {}), ("validation", {"ls": "--", "marker": "o", "ms": 3.5})], loc="upper right")
    fig.suptitle("Training and validation loss")
    return save_or_return(fig, "loss", out_dir, formats)


def lr_grad_norm(runs, log_dir="logs", *, ema=0.9, log_scale=True, out_dir=None, formats=("png",)):
    """Learning rate and gradient norm (before clipping; raw faint, EMA solid) per step."""
    runs = load_runs(runs, log_dir)
    if not any(runs.values()):
        return None
    fig, axes = new_figure(2)
    clips = set()
    for i, (run, d) in enumerate(runs.items()):
        if d:
            lo = d["losses"]
            axes[0, 0].plot(lo["step"], lo["lr"], color=f"C{i}", lw=1.6)
            _curve(axes[0, 1], lo["step"], lo["grad_norm"], f"C{i}", ema)
            clips.add(lo.get("meta", {}).get("config", {}).get("train", {}).get("grad_clip") or 0)
    clips.discard(0)
    for clip in clips:
        axes[0, 1].axhline(clip, color="0.3", ls=":", lw=1)
    axes[0, 0].set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    axes[0, 0].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes[0, 1].set(xlabel="optimizer step", ylabel="global gradient norm", title="gradient norm (before clipping)")
    if log_scale:
        log_axis(axes[0, 1])
    _legend(axes[0, 0], runs, loc="upper right")
    _legend(axes[0, 1], {}, [(f"EMA {ema}" if ema else "raw", {})] + [("grad clip", {"ls": ":"})] * bool(clips),
            loc="upper right")
    fig.suptitle("Learning rate and gradient norm")
    return save_or_return(fig, "lr_grad_norm", out_dir, formats)


def tid_overhead(runs, log_dir="logs", *, ema=0.9, out_dir=None, formats=("png",)):
    """TID: realised and target drop ratio per step; median step time split into scoring and the rest,
    beside the step time of the runs without TID (the baseline)."""
    runs = load_runs(runs, log_dir)
    tid = _stat_runs(runs, "tid_drop_ratio")
    if not any(tid.values()):
        return None
    fig, axes = new_figure(2)
    bars = []  # (label, scoring ms, rest ms, colour)
    for i, (run, d) in enumerate(runs.items()):
        if not d:
            continue
        st = d["losses"]["stats"]
        if tid[run]:
            _curve(axes[0, 0], d["losses"]["step"], st["tid_drop_ratio"], f"C{i}", ema)
            if "tid_target_ratio" in st:
                axes[0, 0].plot(d["losses"]["step"], st["tid_target_ratio"], color=f"C{i}", ls="--", lw=1)
            method = next((m for m in st.get("tid_method", []) if isinstance(m, str)), "TID")
            bars.append((f"{run}\n({method})", 1e3 * np.nanmedian(st["tid_score_time"]),
                         1e3 * np.nanmedian(st["tid_step_time_without_scoring"]), f"C{i}"))
        elif d["times"]:
            bars.append((f"{run}\n(no TID)", 0.0, 1e3 * np.median(d["times"]["step_time"]), f"C{i}"))
    axes[0, 0].set(xlabel="optimizer step", ylabel="dropped / droppable tokens", title="drop ratio",
                   ylim=(0, 1.2 * axes[0, 0].get_ylim()[1]))  # room above a constant ratio for the legend
    _legend(axes[0, 0], tid, [("realised" + (f" (EMA {ema})" if ema else ""), {}), ("target", {"ls": "--"})],
            loc="lower right")
    ax = axes[0, 1]
    for y, (label, s, r, c) in enumerate(bars):
        ax.barh(y, r, color=c, alpha=0.5)
        if s:
            ax.barh(y, s, left=r, color=c, hatch="//", edgecolor="0.2")
        ax.text(r + s, y, f"  {r + s:.1f} ms" + (f" (+{s / r:.0%} scoring)" if s else ""), va="center", fontsize=8)
    ax.set(yticks=range(len(bars)), yticklabels=[b[0] for b in bars], xlabel="median ms per optimizer step",
           title="scoring overhead", xlim=(0, 1.5 * max(r + s for _, s, r, _ in bars)))
    ax.invert_yaxis()
    ax.legend(handles=[Patch(color="0.6", label="training step"), Patch(facecolor="0.6", hatch="//", edgecolor="0.2",
                                                                        label="scoring pass")], fontsize=8, loc="lower right")
    fig.suptitle("Token-importance dropout: drop ratio and scoring cost")
    return save_or_return(fig, "tid", out_dir, formats)


def moe_load(runs, log_dir="logs", *, ema=0.9, out_dir=None, formats=("png",)):
    """MoE: each expert's share of the routed tokens per layer over steps (balanced = 1/experts),
    and the fraction of tokens dropped over capacity; one row per run."""
    runs = {r: d for r, d in _stat_runs(load_runs(runs, log_dir), r"moe_load_l\d+_e\d+").items() if d}
    if not runs:
        return None
    loads = {}  # run -> {layer: (steps, n_experts) shares}
    for run, d in runs.items():
        keys = [(int(m[1]), int(m[2]), k) for k in d["losses"]["stats"] if (m := re.fullmatch(r"moe_load_l(\d+)_e(\d+)", k))]
        loads[run] = {}
        for layer in sorted({l for l, _, _ in keys}):
            cols = np.array([d["losses"]["stats"][k] for l, _, k in sorted(keys) if l == layer], dtype=float).T
            loads[run][layer] = cols / cols.sum(axis=1, keepdims=True)  # loads sum to top_k: normalise to shares
    ncols = max(len(v) for v in loads.values()) + 1
    fig, axes = new_figure(ncols, len(runs), w=3.6, h=3.0)
    for row, (run, d) in zip(axes, runs.items()):
        steps = d["losses"]["step"]
        for ax, (layer, share) in zip(row, loads[run].items()):
            cmap = plt.cm.tab10 if share.shape[1] <= 10 else plt.cm.tab20
            for e in range(share.shape[1]):
                ax.plot(steps, smooth(share[:, e], ema), color=cmap(e % cmap.N), lw=1.3, label=f"expert {e}")
            ax.axhline(1 / share.shape[1], color="0.3", ls="--", lw=1, label="balanced")
            ax.set(title=f"layer {layer}", xlabel="optimizer step", ylim=(0, None))
        row[0].set_ylabel(f"{run}\nshare of routed tokens")
        dropped = d["losses"]["stats"].get("moe_dropped")
        if dropped is not None:
            _curve(row[-1], steps, dropped, "C3", ema)
        row[-1].set(title="dropped over capacity", xlabel="optimizer step", ylabel="fraction of tokens")
        for ax in row[len(loads[run]):-1]:
            ax.set_visible(False)
    widest = max(range(len(runs)), key=lambda i: len(axes[i, 0].get_lines()))
    fig.legend(handles=axes[widest, 0].get_lines(), fontsize=8, loc="outside right upper")
    fig.suptitle("MoE expert load" + (f" (EMA {ema})" if ema else ""))
    return save_or_return(fig, "moe_load", out_dir, formats)


def perplexity(runs, log_dir="logs", *, out_dir=None, formats=("png",)):
    """Per-row perplexity of the held-out rows (perplexity runners): histograms on log-spaced bins and
    box plots per run, mean and median marked (the mean is pulled up by a few hard rows)."""
    names = [runs] if isinstance(runs, str) else list(runs)
    ppl = {r: v for r, v in load_perplexity(names, log_dir).items() if v is not None and len(v[0])}
    if not ppl:
        return None
    fig, axes = new_figure(2)
    values = np.concatenate([v for v, _ in ppl.values()])
    bins = np.geomspace(values.min(), values.max() * 1.0001, 40)
    ax = axes[0, 0]
    for run, (v, summary) in ppl.items():
        c = f"C{names.index(run)}"
        corpus = f", corpus {summary['corpus_ppl']:.1f}" if summary and "corpus_ppl" in summary else ""
        ax.hist(v, bins=bins, histtype="step", lw=1.5, color=c,
                label=f"{run}: {len(v)} rows, mean {v.mean():.1f}, median {np.median(v):.1f}{corpus}")
        ax.axvline(v.mean(), color=c, ls="--", lw=1.2)
        ax.axvline(np.median(v), color=c, ls=":", lw=1.5)
    handles = ax.get_legend_handles_labels()[0]
    handles += [Line2D([], [], color="0.3", ls="--", label="mean"), Line2D([], [], color="0.3", ls=":", label="median")]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=2)
    ax.set(xlabel="perplexity of a row", ylabel="rows", title="distribution")
    log_axis(ax, "x")
    ax = axes[0, 1]
    box = ax.boxplot([v for v, _ in ppl.values()], showmeans=True, widths=0.5, flierprops={"ms": 2, "alpha": 0.4},
                     meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "0.2"})
    for patch, run in zip(box["medians"], ppl):
        patch.set(color=f"C{names.index(run)}", lw=2)
    log_axis(ax)
    ax.set(ylabel="perplexity of a row", title="box: median line, mean diamond",
           xticks=range(1, len(ppl) + 1), xticklabels=list(ppl))
    fig.suptitle("Per-row perplexity on held-out rows")
    return save_or_return(fig, "perplexity", out_dir, formats)


def training_time(runs, log_dir="logs", *, out_dir=None, formats=("png",)):
    """Wall time of each run (bars), with its median tokens/s and steps written beside the bar."""
    data = load_runs(runs, log_dir)
    colours = {r: f"C{i}" for i, r in enumerate(data)}
    runs = {r: d for r, d in data.items() if d and d["times"]}
    if not runs:
        return None
    unit, div = _time_unit(max(d["times"]["total_elapsed"] for d in runs.values()))
    fig, axes = new_figure(1, w=7.5, h=0.6 * len(runs) + 1.6)
    ax, y = axes[0, 0], np.arange(len(runs))
    total = [d["times"]["total_elapsed"] / div for d in runs.values()]
    ax.barh(y, total, color=[colours[r] for r in runs])
    for yi, d, t in zip(y, runs.values(), total):
        tok = np.nanmedian(d["times"]["tokens_per_s"])
        ax.text(t, yi, f"  {t:.3g} {unit}, {tok:,.0f} tok/s, {len(d['times']['step'])} steps", va="center", fontsize=8)
    ax.set(yticks=y, yticklabels=list(runs), xlabel=f"wall time ({unit})", xlim=(0, 1.6 * max(total)))
    ax.invert_yaxis()
    ax.set_title("Training time per run")
    return save_or_return(fig, "training_time", out_dir, formats)


# ----------------------------------------------------------------------------- all of them

def plot_all(runs, log_dir="logs", out_dir=None, formats=("png",), bench=(), ema=0.9, log_scale=False) -> dict:
    """Every figure that the runs' logs (and the benchmark JSONs in `bench`) can give.
    Returns {figure name: saved paths}, or {figure name: Figure} when out_dir is None."""
    data, kw = load_runs(runs, log_dir), {"out_dir": out_dir, "formats": formats}
    figs = {"loss": loss_curves(data, ema=ema, log_scale=log_scale, **kw),
            "lr_grad_norm": lr_grad_norm(data, ema=ema, **kw),
            "tid": tid_overhead(data, ema=ema, **kw),
            "moe_load": moe_load(data, ema=ema, **kw),
            "perplexity": perplexity(list(data), log_dir, **kw),
            "training_time": training_time(data, **kw)}
    figs.update({Path(p).stem: benchmark(p, **kw) for p in bench})
    return {name: f for name, f in figs.items() if f is not None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Figures from logs/ (and benchmark JSONs) as PNG/SVG files.")
    parser.add_argument("--runs", nargs="+", required=True, help="run names (logs/losses/<run>.pkl)")
    parser.add_argument("--log-dir", default="logs")
    parser.add_argument("--out", default="figures", help="folder for the figures")
    parser.add_argument("--ema", type=float, default=0.9, help="smoothing of per-step curves, 0 = raw")
    parser.add_argument("--log-scale", action="store_true", help="loss on a log axis")
    parser.add_argument("--svg", action="store_true", help="SVG beside each PNG")
    parser.add_argument("--bench", nargs="*", default=None,
                        help="benchmark JSONs (default: benchmarks/results/generation_*.json; --bench alone: none)")
    args = parser.parse_args(argv)
    if not 0 <= args.ema < 1:
        parser.error(f"--ema must be in [0, 1), got {args.ema}")
    plt.switch_backend("Agg")
    bench = args.bench if args.bench is not None else sorted(
        (ROOT / "benchmarks/results").glob("generation_*.json"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingLogWarning)
        saved = plot_all(args.runs, args.log_dir, args.out, ("png", "svg") if args.svg else ("png",), bench,
                         args.ema, args.log_scale)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr, flush=True)
    for name, paths in saved.items():
        print(f"{name:20s} " + "  ".join(str(p) for p in paths))
    if not saved:
        print(f"no figures written: none of {args.runs} has logs under {args.log_dir}/")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
