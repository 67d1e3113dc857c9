"""The logs a figure reads: each run's losses and times logs, and the perplexity runners' per-row lists.

    runs = load_runs(["baseline-quickstart", "tid-quickstart"], "logs")   # {run: {"losses", "times"} or None}

A run whose logs are missing is named in a MissingLogWarning and comes back as None. A relative log
dir that is not found from the working directory is looked up from the repo root, so notebooks run
from `visualizations/` too.
"""

import json
import warnings
from pathlib import Path

import numpy as np

from fileio import UnsafeFileError, load_plain_pickle
from train_logs import load_losses, load_times

ROOT = Path(__file__).resolve().parents[1]


class MissingLogWarning(UserWarning):
    """A run has no log of the kind a figure needs; the figure is drawn without it."""


def repo_path(path) -> Path:
    """`path` as given, or under the repo root when relative and only found there."""
    path = Path(path)
    return ROOT / path if not path.is_absolute() and not path.exists() and (ROOT / path).exists() else path


def warn_missing(msg: str) -> None:
    """Warn (MissingLogWarning) at the caller of the function that calls this."""
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
            out[run] = {"losses": load_losses(run, repo_path(log_dir)), "times": None}
            out[run]["times"] = load_times(run, repo_path(log_dir))
        except (FileNotFoundError, UnsafeFileError) as e:
            warn_missing(f"run {run!r} left out: {e}" if out[run] is None else f"run {run!r} has no wall-time curves: {e}")
    return out


def load_perplexity(runs, log_dir="logs") -> dict:
    """{run: (per-row perplexities, summary dict or None) or None} from logs/perplexity-losses/."""
    out = {}
    for run in [runs] if isinstance(runs, str) else runs:
        path = repo_path(log_dir) / "perplexity-losses" / f"{run}.pkl"
        if not path.is_file():
            warn_missing(f"run {run!r} has no perplexity log at {path}: run "
                  f"perplexity-runners/run_perplexity.py --ckpt checkpoints/{run}/best.pt")
            out[run] = None
            continue
        try:
            ppl = np.asarray(load_plain_pickle(path), dtype=float)
        except UnsafeFileError as e:
            warn_missing(f"run {run!r} perplexities left out: {e}")
            out[run] = None
            continue
        summary = path.with_suffix(".json")
        out[run] = (ppl[np.isfinite(ppl) & (ppl > 0)], json.loads(summary.read_text()) if summary.is_file() else None)
    return out
