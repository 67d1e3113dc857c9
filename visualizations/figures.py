"""Figure pieces every plot shares: a grid of panels, log axes labelled plainly, annotated bars, EMA
smoothing, and saving to files (or returning the Figure to a notebook)."""

import math
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

from fileio import atomic_write


def smooth(values, ema: float = 0.9) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing); ema=0 returns the values as logged.
    With ema > 0, NaNs (steps that did not log the value) are skipped: the previous average carries over."""
    if not 0 <= ema < 1:
        raise ValueError(f"ema must be in [0, 1), got {ema}")
    if not ema:  # raw: a step that did not log the value stays a gap, not the value before it
        return np.array(values, dtype=float)
    out, avg, weight = np.full(len(values), math.nan), 0.0, 0.0
    for i, v in enumerate(np.asarray(values, dtype=float)):
        if math.isfinite(v):
            avg, weight = ema * avg + (1 - ema) * v, ema * weight + (1 - ema)
        if weight:
            out[i] = avg / weight  # dividing by the weight removes the bias towards the zero start
    return out


def save_or_return(fig, name: str, out_dir, formats):
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


def new_figure(ncols: int, nrows: int = 1, w: float = 5.5, h: float = 4.0):
    """A figure of nrows x ncols gridded panels, each w x h inches; returns (fig, 2-D array of axes)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return fig, axes


def log_axis(ax, which: str = "y") -> None:
    """A log scale on ax's x or y axis, labelled 0.5, 1, 2, 5, 10 rather than 5x10^-1."""
    getattr(ax, f"set_{which}scale")("log")
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def annotated_bars(ax, labels, values, notes, ylabel: str, title: str) -> None:
    """Vertical bars, a colour and a note above each."""
    x = np.arange(len(values))
    ax.bar(x, values, color=[f"C{i}" for i in x])
    for xi, v, note in zip(x, values, notes):
        ax.annotate(note, (xi, v), ha="center", va="bottom", fontsize=8)
    ax.set(xticks=x, ylabel=ylabel, title=title)
    ax.set_xticklabels(labels, rotation=15, ha="right")
    ax.margins(y=0.15)
