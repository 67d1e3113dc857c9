"""The report of a study (study.py): per-arm means with confidence intervals, paired comparisons, figures.

Statistics, each over the study's seeds:
- Per arm, every metric as mean ± the half-width of a 95% Student t interval (n - 1 degrees of
  freedom; none with one seed).
- Against the reference arm: the paired difference in held-out NLL. For seed s and held-out row r,
  d[s, r] = NLL_arm[s, r] - NLL_ref[s, r], where NLL is the row's mean token NLL (the log of the
  row's perplexity, as the perplexity runner reports it). The estimate is the mean of d; its 95% CI
  is a percentile bootstrap that resamples seeds and rows with replacement (the same rows for
  every seed of a replicate: rows and seeds are both random effects). With few seeds, resampling
  seeds understates the seed-to-seed spread, so the per-seed mean differences also get a 95% t
  interval (n_seeds - 1 degrees of freedom). Verdict: "better" when both intervals lie below 0,
  "worse" when both lie above, otherwise "no detectable difference at this budget".
- The held-out numbers and the comparison twice: at each run's last.pt and at its best.pt (the best
  validation loss), so an arm that overfits late is judged at its end and at its best.

Writes studies/<name>/summary.md, summary.json and figures/{val_curves,heldout}.png.
"""

import json
import math
import statistics
from pathlib import Path

import numpy as np

from experiment_config import from_dict
from fileio import atomic_write, list_of_numbers, load_plain_pickle
from study import first_seed_runs, tokens_budget
from train_logs import bits_per_token, load_losses, load_times, overfitting

BOOTSTRAP_SAMPLES = 4000
CHECKPOINTS = {"last": "last.pt (the end of training)", "best": "best.pt (the best validation loss)"}
HELDOUT = {  # key -> (column title, format); "best_" + key: the same at best.pt
    "heldout_mean_ppl": ("held-out ppl (mean of rows)", ".3f"),
    "heldout_corpus_ppl": ("held-out ppl (corpus)", ".3f"),
    "heldout_bits_per_token": ("held-out bits/token", ".4f"),
    "heldout_bits_per_byte": ("held-out bits/byte", ".4f"),
}
TRAINING = {
    "epochs": ("epochs", ".2f"),
    "train_tokens": ("unique train tokens", ",.0f"),
    "best_step": ("best step", ".0f"),
    "best_val_loss": ("best val loss", ".4f"),
    "val_loss": ("last val loss", ".4f"),
    "train_val_gap": ("train-val gap at end", "+.4f"),
    "val_bits_per_token": ("val bits/token", ".4f"),
    "val_bits_per_byte": ("val bits/byte", ".4f"),
    "wall_s": ("wall s", ".0f"),
    "tokens_per_s": ("tokens/s", ",.0f"),
    "scoring_overhead": ("TID scoring / step", ".2f"),
}
METRICS = {**HELDOUT, **{f"best_{k}": (f"{title} at best.pt", fmt) for k, (title, fmt) in HELDOUT.items()}, **TRAINING}


# ----------------------------------------------------------------------------- statistics

def t_interval(values) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval); half-width nan for fewer than two values."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def paired_bootstrap(diff: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """Mean of diff (seeds, rows) and its 95% percentile-bootstrap CI over seeds and rows.

    Each replicate draws seeds with replacement and rows with replacement (one row draw shared by
    the drawn seeds: the rows are the same documents for every seed) and averages.
    """
    diff = np.asarray(diff, dtype=float)
    n_seeds, n_rows = diff.shape
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for i in range(samples):
        s = rng.integers(0, n_seeds, n_seeds)
        r = rng.integers(0, n_rows, n_rows)
        means[i] = diff[np.ix_(s, r)].mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


def verdict(*intervals: tuple[float, float]) -> str:
    """From one or more 95% intervals of (arm - reference) NLL: better / worse only when all agree."""
    if all(hi < 0 for _, hi in intervals):
        return "better (lower held-out NLL)"
    if all(lo > 0 for lo, _ in intervals):
        return "worse (higher held-out NLL)"
    return "no detectable difference at this budget"


# ----------------------------------------------------------------------------- reading the runs

def run_metrics(run) -> dict:
    """The numbers of one finished, scored run (a study.Run) from its logs and its held-out results at last.pt
    and best.pt (keys prefixed "best_")."""
    cfg = run.cfg
    losses, times = load_losses(run.name, cfg.log_dir), load_times(run.name, cfg.log_dir)
    val = losses["val"]
    heldout = _heldout(run, "last")
    best = _heldout(run, "best")
    stats = losses["stats"]
    overhead = 0.0
    if "tid_score_time" in stats:
        overhead = statistics.median(stats["tid_score_time"]) / statistics.median(stats["tid_step_time_without_scoring"])
    wall = times["total_elapsed"]
    resolved = from_dict(losses["meta"]["config"])  # max_steps and epochs both set
    t = resolved.train
    curve = overfitting(losses)
    return {
        "run": run.name, "arm": run.arm, "seed": run.seed, **{k: heldout[k] for k in HELDOUT},
        "heldout_rows": heldout["rows"], "heldout_data": heldout.get("data_dir"), "heldout_step": heldout["step"],
        **{f"best_{k}": v for k, v in best.items() if k in HELDOUT}, "best_heldout_step": best["step"],
        "epochs": t.epochs, "train_tokens": losses["meta"]["train_tokens"], "best_step": curve["best_step"],
        "best_val_loss": min(val["loss"]), "train_val_gap": curve["train_val_gap"],
        "val_loss": val["loss"][-1], "val_bits_per_token": bits_per_token(val["loss"][-1]),
        "val_bits_per_byte": val["bpb"][-1], "final_step": losses["step"][-1] if losses["step"] else 0,
        "tokens_per_run": tokens_budget(resolved), "wall_s": wall, "tokens_per_s": tokens_budget(resolved) / wall,
        "scoring_overhead": overhead,
        "val_curve": {"step": list(val["step"]), "loss": list(val["loss"])},
    }


def _heldout(run, checkpoint: str) -> dict:
    """The perplexity runner's result for the run's `checkpoint` (last or best), with the HELDOUT keys added."""
    from study_runner import scored_name

    r = json.loads((Path(run.cfg.log_dir) / "perplexity-losses" / f"{scored_name(run, checkpoint)}.json").read_text())
    return {**r, "heldout_mean_ppl": r["mean"], "heldout_corpus_ppl": r["corpus_ppl"],
            "heldout_bits_per_token": bits_per_token(r["loss"]), "heldout_bits_per_byte": r["bpb"]}


def row_nll(run, checkpoint: str = "last") -> np.ndarray:
    """Per held-out row mean token NLL at `checkpoint` (log of the row perplexities the runner saved)."""
    from study_runner import scored_name

    path = Path(run.cfg.log_dir) / "perplexity-losses" / f"{scored_name(run, checkpoint)}.pkl"
    return np.log(np.asarray(load_plain_pickle(path, list_of_numbers), dtype=float))


# ----------------------------------------------------------------------------- the report

def build_report(study, runs, differences: dict, command: str) -> dict:
    """All numbers of the study as one dict (what summary.json holds)."""
    per_run = [run_metrics(r) for r in runs]
    data_dirs = {m["heldout_data"] for m in per_run}
    rows = {m["heldout_rows"] for m in per_run}
    if len(data_dirs) > 1 or len(rows) > 1:
        raise RuntimeError(f"the runs were scored on different held-out rows ({sorted(map(str, data_dirs))}, "
                           f"{sorted(rows)} rows): rerun the scoring")
    arms = {}
    for arm in study.arms:
        mine = [m for m in per_run if m["arm"] == arm.name]
        arms[arm.name] = {k: dict(zip(("mean", "ci95"), t_interval([m[k] for m in mine]))) for k in METRICS}
        arms[arm.name]["seeds"] = [m["seed"] for m in mine]
    reference = first_seed_runs(study, runs)[study.reference]  # the run config_differences measure from
    return {
        "study": study.name, "description": study.description, "command": command, "reference": study.reference,
        "seeds": study.seeds, "heldout_rows": rows.pop(), "heldout_data": str(data_dirs.pop()),
        "tokens_per_run": per_run[0]["tokens_per_run"], "model": _model_line(reference.cfg), "arms": arms,
        "comparisons": comparisons(study, runs, "last"), "comparisons_best": comparisons(study, runs, "best"),
        "config_differences": {a: {k: list(v) for k, v in d.items()} for a, d in differences.items()},
        "runs": per_run,
    }


def comparisons(study, runs, checkpoint: str) -> dict:
    """{arm: paired comparison with the reference} of the held-out NLL at `checkpoint` (last or best)."""
    nll = {(r.arm, r.seed): row_nll(r, checkpoint) for r in runs}
    out = {}
    for arm in study.arms:
        if arm.name == study.reference:
            continue
        diff = np.stack([nll[(arm.name, s)] - nll[(study.reference, s)] for s in study.seeds])
        mean, lo, hi = paired_bootstrap(diff)
        per_seed = diff.mean(axis=1)
        seed_mean, half = t_interval(per_seed)
        seed_ci = (seed_mean - half, seed_mean + half) if math.isfinite(half) else (-math.inf, math.inf)
        out[arm.name] = {"delta_nll": mean, "ci95": [lo, hi], "delta_ppl_pct": 100 * math.expm1(mean),
                         "per_seed_delta_nll": per_seed.tolist(), "seed_t_ci95": list(seed_ci),
                         "verdict": verdict((lo, hi), seed_ci)}
    return out


def _model_line(cfg) -> str:
    m = cfg.model
    return (f"{m.preset} d{m.d_model} L{m.n_layers} H{m.n_heads} ff{m.d_ff} ctx {m.context}, {m.position} positions, "
            f"{m.norm}, {m.mlp}; {cfg.tokenizer.kind} tokenizer; data: {_data_line(cfg.data)}")


def _data_line(data) -> str:
    return {"builtin": "built-in story corpus", "hf": f"{data.name} (Hugging Face)"}.get(data.source, str(data.path))


def markdown(report: dict) -> str:
    """summary.md: the per-arm table, the paired comparison and the config differences."""
    ref = report["reference"]
    lines = [f"# Study `{report['study']}`", ""]
    if report["description"]:
        lines += [report["description"], ""]
    lines += [f"`{report['command']}`", "",
              f"{len(report['arms'])} arms x {len(report['seeds'])} seeds {report['seeds']}; model {report['model']}; "
              f"{report['tokens_per_run']:,} training tokens per run; every run scored on the same "
              f"{report['heldout_rows']:,} held-out rows. Values: mean ± half-width of the 95% t interval over seeds.",
              ""]
    lines += _table(report, "Training (epochs over the unique training tokens, and where the validation curve turned: "
                    "the step of the best validation loss; the gap is the last val loss - the mean training loss "
                    "of the last evaluation interval):", list(TRAINING))
    for checkpoint, what in CHECKPOINTS.items():
        prefix = "" if checkpoint == "last" else f"{checkpoint}_"
        lines += _table(report, f"Held-out rows scored at {what}:", [prefix + k for k in HELDOUT])
        lines += _comparison_table(report, checkpoint)
    lines += [f"Config differences from `{ref}` (resolved configs; every other key is equal):", ""]
    for arm, diff in report["config_differences"].items():
        if arm != ref:
            shown = ", ".join(f"`{k}`: {a!r} -> {b!r}" for k, (a, b) in diff.items()) or "none"
            lines.append(f"- {arm}: {shown}")
    return "\n".join(lines) + "\n"


def _table(report: dict, title: str, keys: list[str]) -> list[str]:
    """A per-arm markdown table of `keys` (mean ± t half-width), under its title."""
    lines = [title, "", "| arm | " + " | ".join(METRICS[k][0] for k in keys) + " |", "| --- |" + " ---: |" * len(keys)]
    for arm, m in report["arms"].items():
        cells = [_pm(m[k]["mean"], m[k]["ci95"], METRICS[k][1]) for k in keys]
        lines.append(f"| {arm}{' (reference)' if arm == report['reference'] else ''} | " + " | ".join(cells) + " |")
    return lines + [""]


def _comparison_table(report: dict, checkpoint: str) -> list[str]:
    """The paired comparisons with the reference at `checkpoint` as a markdown table."""
    ref = report["reference"]
    lines = [f"Paired against `{ref}` at {checkpoint}.pt: held-out NLL difference per row (nats/token, arm - {ref}) "
             "with its 95% bootstrap CI over rows and seeds; the per-seed mean differences with their 95% t interval; "
             "the verdict needs both intervals on one side of 0.", "",
             "| arm | Δ NLL | 95% bootstrap CI | per-seed Δ NLL | 95% t interval | Δ ppl | verdict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    key = "comparisons" if checkpoint == "last" else f"comparisons_{checkpoint}"
    for arm, c in report[key].items():
        lo, hi = c["ci95"]
        slo, shi = c["seed_t_ci95"]
        seeds = ", ".join(f"{d:+.4f}" for d in c["per_seed_delta_nll"])
        lines.append(f"| {arm} | {c['delta_nll']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {seeds} | [{slo:+.4f}, {shi:+.4f}] | "
                     f"{c['delta_ppl_pct']:+.2f}% | {c['verdict']} |")
    return lines + [""]


def _pm(mean: float, half: float, fmt: str) -> str:
    return format(mean, fmt) + ("" if not math.isfinite(half) else f" ± {format(half, fmt.lstrip('+'))}")


def figures(report: dict, out_dir: Path) -> list[Path]:
    """Validation curves (mean over seeds, band min..max) and held-out perplexity / paired differences."""
    from matplotlib import pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for i, arm in enumerate(report["arms"]):
        curves = [m["val_curve"] for m in report["runs"] if m["arm"] == arm]
        steps = sorted(set.intersection(*(set(c["step"]) for c in curves)))
        y = np.array([[dict(zip(c["step"], c["loss"]))[s] for s in steps] for c in curves])
        keep = np.array(steps) > 0  # the untrained model's loss would flatten the scale
        x = np.array(steps)[keep]
        ax.plot(x, y.mean(0)[keep], color=f"C{i}", lw=1.6, label=arm)
        ax.fill_between(x, y.min(0)[keep], y.max(0)[keep], color=f"C{i}", alpha=0.2)
    ax.set(xlabel="optimizer step", ylabel="validation loss (nats/token)",
           title=f"{report['study']}: validation loss, mean over seeds (band: min to max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "val_curves.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    names = list(report["arms"])
    for i, arm in enumerate(names):
        m = report["arms"][arm]["heldout_corpus_ppl"]
        axes[0].errorbar(i, m["mean"], yerr=0 if not math.isfinite(m["ci95"]) else m["ci95"], fmt="o",
                         color=f"C{i}", capsize=5)
        for r in report["runs"]:
            if r["arm"] == arm:
                axes[0].plot(i + 0.15, r["heldout_corpus_ppl"], ".", color=f"C{i}", alpha=0.6)
    axes[0].set(xticks=range(len(names)), ylabel="held-out corpus perplexity",
                title="held-out perplexity: mean, 95% t interval, seeds (dots)")
    axes[0].set_xticklabels(names, rotation=15, ha="right")
    comps = report["comparisons"]
    for j, (arm, c) in enumerate(comps.items()):
        lo, hi = c["ci95"]
        i = names.index(arm)
        axes[1].errorbar(j, c["delta_nll"], yerr=[[c["delta_nll"] - lo], [hi - c["delta_nll"]]], fmt="o",
                         color=f"C{i}", capsize=5)
    axes[1].axhline(0, color="0.3", lw=1)
    axes[1].set(xticks=range(len(comps)), ylabel=f"held-out NLL - {report['reference']} (nats/token)",
                title="paired difference, 95% bootstrap CI (rows x seeds)")
    axes[1].set_xticklabels(list(comps), rotation=15, ha="right")
    for ax in axes:
        ax.grid(alpha=0.3)
    paths.append(_save(fig, out_dir / "heldout.png"))
    return paths


def _save(fig, path: Path) -> Path:
    from matplotlib import pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    tmp.replace(path)
    plt.close(fig)
    return path


def write_report(study, runs, differences: dict, command: str, out_dir: Path) -> dict:
    """Build the report and write summary.json, summary.md and figures/ under out_dir."""
    report = build_report(study, runs, differences, command)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "summary.json", json.dumps(report, indent=2, default=str))
    atomic_write(out_dir / "summary.md", markdown(report))
    report["figures"] = [str(p) for p in figures(report, out_dir / "figures")]
    return report
