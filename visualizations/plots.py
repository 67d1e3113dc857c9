"""Figures from logs/: loss curves, lr and gradient norm, TID, MoE load, perplexity, time, benchmarks.

    python -m visualizations.plots --runs baseline-quickstart tid-quickstart --out figures/
    python -m visualizations.plots --runs A B --out figures/ --ema 0.95 --log-scale --svg \\
        --bench benchmarks/results/generation_cuda.json

    from visualizations import plots
    plots.loss_curves(["baseline-quickstart"], "logs")           # -> Figure (drawn inline in a notebook)
    plots.plot_all(["baseline-quickstart"], "logs", "figures")   # -> {figure name: [saved paths]}

Each figure function takes run names (or what `load_runs` returns), the log dir and options, and
returns the Figure, or with `out_dir` the saved files (`formats=("png", "svg")` adds SVG). A run whose
logs are missing is named in a MissingLogWarning and left out; with nothing to draw (no run has TID
or MoE statistics, say) a function returns None. A relative log dir that is not found from the
working directory is looked up from the repo root, so notebooks run from `visualizations/` too.
Tokens seen per step = tokens/s x step time from the times log (counts every data-parallel process);
without a times log, batch_size x grad_accum x context from the config (one process assumed).
"""

import argparse
import json
import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter, StrMethodFormatter

from fileio import UnsafeFileError, atomic_write, load_plain_pickle
from train_logs import load_losses, load_times

ROOT = Path(__file__).resolve().parents[1]


class MissingLogWarning(UserWarning):
    """A run has no log of the kind a figure needs; the figure is drawn without it."""


def smooth(values, ema: float = 0.9) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing); ema=0 returns the values.
    NaNs (steps that did not log the value) are skipped: the previous average carries over."""
    if not 0 <= ema < 1:
        raise ValueError(f"ema must be in [0, 1), got {ema}")
    out, avg, weight = np.full(len(values), math.nan), 0.0, 0.0
    for i, v in enumerate(np.asarray(values, dtype=float)):
        if math.isfinite(v):
            avg, weight = ema * avg + (1 - ema) * v, ema * weight + (1 - ema)
        if weight:
            out[i] = avg / weight  # dividing by the weight removes the bias towards the zero start
    return out


# ----------------------------------------------------------------------------- loading

def _dir(log_dir) -> Path:
    """log_dir as given, or under the repo root when relative and only found there."""
    path = Path(log_dir)
    return ROOT / path if not path.is_absolute() and not path.exists() and (ROOT / path).exists() else path


def _warn(msg: str) -> None:
    warnings.warn(msg, MissingLogWarning, stacklevel=3)


def load_runs(runs, log_dir="logs") -> dict:
    """{run: {"losses": ..., "times": ... or None} or None when the run has no losses log}.
    A dict (a previous result) passes through, so figures can share one load."""
    if isinstance(runs, dict):
        return runs
    out = {}
    for run in [runs] if isinstance(runs, str) else runs:
        out[run] = None
        try:
            out[run] = {"losses": load_losses(run, _dir(log_dir)), "times": None}
            out[run]["times"] = load_times(run, _dir(log_dir))
        except (FileNotFoundError, UnsafeFileError) as e:
            _warn(f"run {run!r} left out: {e}" if out[run] is None else f"run {run!r} has no wall-time curves: {e}")
    return out


def load_perplexity(runs, log_dir="logs") -> dict:
    """{run: (per-row perplexities, summary dict or None) or None} from logs/perplexity-losses/."""
    out = {}
    for run in [runs] if isinstance(runs, str) else runs:
        path = _dir(log_dir) / "perplexity-losses" / f"{run}.pkl"
        if not path.is_file():
            _warn(f"run {run!r} has no perplexity log at {path}: run "
                  f"perplexity-runners/run_perplexity.py --ckpt checkpoints/{run}/best.pt")
            out[run] = None
            continue
        try:
            ppl = np.asarray(load_plain_pickle(path), dtype=float)
        except UnsafeFileError as e:
            _warn(f"run {run!r} perplexities left out: {e}")
            out[run] = None
            continue
        summary = path.with_suffix(".json")
        out[run] = (ppl[np.isfinite(ppl) & (ppl > 0)], json.loads(summary.read_text()) if summary.is_file() else None)
    return out


# ----------------------------------------------------------------------------- helpers

def _finish(fig, name: str, out_dir, formats):
    """Return the Figure, or save it as out_dir/name.<format> (atomically), close it, return the paths."""
    if out_dir is None:
        return fig
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120))
        paths.append(path)
    plt.close(fig)
    return paths


def _figure(ncols: int, nrows: int = 1, w: float = 5.5, h: float = 4.0):
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return fig, axes


def _log(ax, which: str = "y") -> None:
    """A log scale on ax's x or y axis, labelled 0.5, 1, 2, 5, 10 rather than 5x10^-1."""
    getattr(ax, f"set_{which}scale")("log")
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


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


def _curve(ax, x, y, color, ema: float, **kw) -> None:
    """Raw values faint, the EMA on top (raw only when ema=0)."""
    if ema:
        ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
    ax.plot(x, smooth(y, ema), color=color, lw=1.6, **kw)


def _bars(ax, labels, values, notes, ylabel: str, title: str) -> None:
    """Vertical bars, a colour and a note above each."""
    x = np.arange(len(values))
    ax.bar(x, values, color=[f"C{i}" for i in x])
    for xi, v, note in zip(x, values, notes):
        ax.annotate(note, (xi, v), ha="center", va="bottom", fontsize=8)
    ax.set(xticks=x, ylabel=ylabel, title=title)
    ax.set_xticklabels(labels, rotation=15, ha="right")
    ax.margins(y=0.15)


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
    fig, axes = _figure(len(x))
    for ax, axis in zip(axes[0], x):
        for i, (run, d) in enumerate(runs.items()):
            to_x = d and _x_of(d, axis, div)
            if to_x:
                _curve(ax, to_x(d["losses"]["step"]), d["losses"]["train_loss"], f"C{i}", ema)
                val = d["losses"]["val"]
                ax.plot(to_x(val["step"]), val["loss"], color=f"C{i}", ls="--", marker="o", ms=3.5, lw=1.2)
        ax.set(xlabel=labels[axis], ylabel="loss (nats/token)", title=f"by {labels[axis].split(' (')[0]}")
        if log_scale:
            _log(ax)
        else:  # the same loss in bits per token (what the TID study calls BPC)
            ax.secondary_yaxis("right", functions=(lambda n: n / math.log(2), lambda b: b * math.log(2))
                               ).set_ylabel("bits/token")
        if axis == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter())
    train = f"train (EMA {ema})" if ema else "train"
    _legend(axes[0, 0], runs, [(train, {}), ("validation", {"ls": "--", "marker": "o", "ms": 3.5})], loc="upper right")
    fig.suptitle("Training and validation loss")
    return _finish(fig, "loss", out_dir, formats)


def lr_grad_norm(runs, log_dir="logs", *, ema=0.9, log_scale=True, out_dir=None, formats=("png",)):
    """Learning rate and gradient norm (before clipping; raw faint, EMA solid) per step."""
    runs = load_runs(runs, log_dir)
    if not any(runs.values()):
        return None
    fig, axes = _figure(2)
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
        _log(axes[0, 1])
    _legend(axes[0, 0], runs, loc="upper right")
    _legend(axes[0, 1], {}, [(f"EMA {ema}" if ema else "raw", {})] + [("grad clip", {"ls": ":"})] * bool(clips),
            loc="upper right")
    fig.suptitle("Learning rate and gradient norm")
    return _finish(fig, "lr_grad_norm", out_dir, formats)


def tid_overhead(runs, log_dir="logs", *, ema=0.9, out_dir=None, formats=("png",)):
    """TID: realised and target drop ratio per step; median step time split into scoring and the rest,
    beside the step time of the runs without TID (the baseline)."""
    runs = load_runs(runs, log_dir)
    tid = _stat_runs(runs, "tid_drop_ratio")
    if not any(tid.values()):
        return None
    fig, axes = _figure(2)
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
    return _finish(fig, "tid", out_dir, formats)


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
    fig, axes = _figure(ncols, len(runs), w=3.6, h=3.0)
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
    return _finish(fig, "moe_load", out_dir, formats)


def perplexity(runs, log_dir="logs", *, out_dir=None, formats=("png",)):
    """Per-row perplexity of the held-out rows (perplexity runners): histograms on log-spaced bins and
    box plots per run, mean and median marked (the mean is pulled up by a few hard rows)."""
    names = [runs] if isinstance(runs, str) else list(runs)
    ppl = {r: v for r, v in load_perplexity(names, log_dir).items() if v is not None and len(v[0])}
    if not ppl:
        return None
    fig, axes = _figure(2)
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
    _log(ax, "x")
    ax = axes[0, 1]
    box = ax.boxplot([v for v, _ in ppl.values()], showmeans=True, widths=0.5, flierprops={"ms": 2, "alpha": 0.4},
                     meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "0.2"})
    for patch, run in zip(box["medians"], ppl):
        patch.set(color=f"C{names.index(run)}", lw=2)
    _log(ax)
    ax.set(ylabel="perplexity of a row", title="box: median line, mean diamond",
           xticks=range(1, len(ppl) + 1), xticklabels=list(ppl))
    fig.suptitle("Per-row perplexity on held-out rows")
    return _finish(fig, "perplexity", out_dir, formats)


def training_time(runs, log_dir="logs", *, out_dir=None, formats=("png",)):
    """Wall time of each run (bars), with its median tokens/s and steps written beside the bar."""
    data = load_runs(runs, log_dir)
    colours = {r: f"C{i}" for i, r in enumerate(data)}
    runs = {r: d for r, d in data.items() if d and d["times"]}
    if not runs:
        return None
    unit, div = _time_unit(max(d["times"]["total_elapsed"] for d in runs.values()))
    fig, axes = _figure(1, w=7.5, h=0.6 * len(runs) + 1.6)
    ax, y = axes[0, 0], np.arange(len(runs))
    total = [d["times"]["total_elapsed"] / div for d in runs.values()]
    ax.barh(y, total, color=[colours[r] for r in runs])
    for yi, d, t in zip(y, runs.values(), total):
        tok = np.nanmedian(d["times"]["tokens_per_s"])
        ax.text(t, yi, f"  {t:.3g} {unit}, {tok:,.0f} tok/s, {len(d['times']['step'])} steps", va="center", fontsize=8)
    ax.set(yticks=y, yticklabels=list(runs), xlabel=f"wall time ({unit})", xlim=(0, 1.6 * max(total)))
    ax.invert_yaxis()
    ax.set_title("Training time per run")
    return _finish(fig, "training_time", out_dir, formats)


# ----------------------------------------------------------------------------- benchmark figures

def generation_speed(path, *, out_dir=None, formats=("png",)):
    """generators/bench.py JSON: new tokens/s per batch size with and without the KV cache, and per
    decoder (greedy, sampling, beam k) on held-out prompts with its BLEU."""
    data = json.loads(Path(path).read_text())
    fig, axes = _figure(2)
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
    _log(ax)
    ax.legend(fontsize=8)
    quality = data.get("quality", [])
    _bars(axes[0, 1], [r["decoder"] for r in quality], [r["tokens_per_s"] for r in quality],
          [f"BLEU {r['bleu']:.1f}" for r in quality], "new tokens/s", "decoders on held-out prompts (BLEU above)")
    fig.suptitle(f"Generation: {data.get('device', '?')}, {data.get('dtype', '?')}")
    return _finish(fig, Path(path).stem, out_dir, formats)


def benchmark(path, *, out_dir=None, formats=("png",)):
    """The figure for a benchmark JSON (the generation benchmark's)."""
    path = _dir(path)
    if not path.is_file():
        _warn(f"no benchmark results at {path}: run the benchmark first, or check the path")
        return None
    data = json.loads(path.read_text())
    if "speed" in data or "quality" in data:
        return generation_speed(path, out_dir=out_dir, formats=formats)
    _warn(f"{path}: not a generation benchmark; no figure")
    return None


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
