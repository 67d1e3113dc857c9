"""Contracts of study_report against independent references: the t interval against scipy.stats, the
paired bootstrap against exact binomial quantiles, each run's numbers against hand arithmetic on its
logs, and the report (summary.json read back, summary.md parsed back, the figures' labels) against
values computed here with statistics.fmean / stdev, numpy and scipy. The study has its arms in an order
other than alphabetical, the reference second, seeds out of order, runs passed in another order than
the study's, and verdicts that differ between last.pt and best.pt."""

import json
import math
import pickle
import re
import statistics
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgba
from scipy import stats

import study_report
from conftest import tiny_run_config
from experiment_config import to_dict
from fileio import UnsafeFileError

matplotlib.use("Agg")

ARMS = ["wide", "base", "deep"]          # study order: not alphabetical, the reference is the second arm
REFERENCE = "base"
SEEDS = [7, 2, 5]                        # not sorted: pairing and per-seed lists follow this order
N_ROWS = 9
BETTER, WORSE = "better (lower held-out NLL)", "worse (higher held-out NLL)"
NONE = "no detectable difference at this budget"
SHAPE = ["model.context=24", "model.d_model=48", "model.n_layers=3", "model.n_heads=4", "model.d_ff=80",
         "train.max_steps=120", "train.batch_size=4", "train.grad_accum=2", "train.epochs=1.37"]
TOKENS = 120 * 4 * 2 * 24                # max_steps x batch_size x grad_accum x context

# column title in summary.md -> (key, decimals, sign shown, thousands separator)
TRAINING_COLUMNS = {
    "epochs": ("epochs", 2, False, False), "unique train tokens": ("train_tokens", 0, False, True),
    "best step": ("best_step", 0, False, False), "best val loss": ("best_val_loss", 4, False, False),
    "last val loss": ("val_loss", 4, False, False), "train-val gap at end": ("train_val_gap", 4, True, False),
    "val bits/token": ("val_bits_per_token", 4, False, False), "val bits/byte": ("val_bits_per_byte", 4, False, False),
    "wall s": ("wall_s", 0, False, False), "tokens/s": ("tokens_per_s", 0, False, True),
    "TID scoring / step": ("scoring_overhead", 2, False, False),
}
HELDOUT_COLUMNS = {
    "held-out ppl (mean of rows)": ("heldout_mean_ppl", 3, False, False),
    "held-out ppl (corpus)": ("heldout_corpus_ppl", 3, False, False),
    "held-out bits/token": ("heldout_bits_per_token", 4, False, False),
    "held-out bits/byte": ("heldout_bits_per_byte", 4, False, False),
}
BEST_COLUMNS = {f"{title} at best.pt": (f"best_{key}", *rest) for title, (key, *rest) in HELDOUT_COLUMNS.items()}


# ----------------------------------------------------------------------------- a study on disk

def _nll(seed_index: int) -> dict:
    """Per-row mean NLL of every arm at last.pt and best.pt for one seed: rows differ by nats, the arms by a
    consistent shift (wide better and deep worse at last.pt; deep better at best.pt, where wide is 0.02 better
    in every seed's mean but swings by 0.3 from row to row: its t interval excludes 0, its bootstrap does not)."""
    rng = np.random.default_rng(100 + seed_index)
    difficulty = np.random.default_rng(0).gamma(2.0, 1.0, N_ROWS) + 1.0
    base = difficulty + rng.normal(0, 0.05) + rng.normal(0, 0.01, N_ROWS)
    base_best = 0.9 * difficulty + rng.normal(0, 0.05) + rng.normal(0, 0.01, N_ROWS)
    swing = np.array([0.3, -0.3] * N_ROWS)[:N_ROWS] - np.mean(np.array([0.3, -0.3] * N_ROWS)[:N_ROWS])
    return {("base", "last"): base, ("wide", "last"): base - 0.2 + rng.normal(0, 0.01, N_ROWS),
            ("deep", "last"): base + 0.15 + rng.normal(0, 0.01, N_ROWS),
            ("base", "best"): base_best, ("wide", "best"): base_best + swing - 0.02 + rng.normal(0, 0.001, N_ROWS),
            ("deep", "best"): base_best - 0.1 + rng.normal(0, 0.01, N_ROWS)}


def _logs(arm: str, seed: int) -> dict:
    """A run's losses log: the best validation loss at step 40 or 80 (not the first, not the last step)."""
    a, k = ARMS.index(arm), SEEDS.index(seed)
    val_loss = [9.5, 3.1 + 0.1 * a, 2.9 + 0.05 * k, 3.2 + 0.01 * seed]     # the best at step 80 ...
    if (a + k) % 2:
        val_loss[1] = 2.5 + 0.02 * seed                                      # ... or at step 40
    bpb = [4.0, 1.4 + 0.01 * a, 1.3 + 0.02 * k, 1.45 + 0.001 * seed]
    stats_ = ({"tid_score_time": [0.1, 0.5, 0.2 + 0.01 * seed], "tid_step_time_without_scoring": [2.0, 2.0, 5.0]}
              if arm == "deep" else {})
    return {"val": {"step": [0, 40, 80, 120], "loss": val_loss, "bpb": bpb}, "stats": stats_,
            "step": [20, 40, 60, 80, 100, 120], "train_loss": [6.0, 4.0, 3.5, 3.0, 2.7 + 0.01 * seed, 2.5 - 0.1 * a],
            "meta": {"train_tokens": 5000 + 10 * a}}


def _write_scored(log_dir: Path, name: str, nll: np.ndarray, step: int, bpb: float) -> dict:
    """The perplexity runner's <name>.pkl (per-row perplexities) and <name>.json; returns the JSON."""
    out = log_dir / "perplexity-losses"
    out.mkdir(parents=True, exist_ok=True)
    ppl = np.exp(nll)
    (out / f"{name}.pkl").write_bytes(pickle.dumps(ppl.tolist()))
    corpus = float(math.exp(nll.mean()) * 1.01)
    result = {"mean": float(ppl.mean()), "corpus_ppl": corpus, "loss": math.log(corpus), "bpb": bpb,
              "rows": len(ppl), "data_dir": "heldout-rows", "step": step}
    (out / f"{name}.json").write_text(json.dumps(result))
    return result


class Study:
    """Runs of ARMS x SEEDS written as the trainer and the perplexity runner leave them, load_losses and
    load_times answered from memory, and the hand-computed numbers of every run."""

    def __init__(self, tmp_path: Path, monkeypatch, seeds=SEEDS, description="Arms against the base."):
        self.seeds = seeds
        base_cfg = tiny_run_config(tmp_path, SHAPE)
        self.log_dir = Path(base_cfg.log_dir)
        self.nll, self.expected, self.logs, self.times = {}, {}, {}, {}
        runs = []
        for a, arm in enumerate(ARMS):
            for seed in seeds:
                cfg = replace(base_cfg, run_name=f"demo-{arm}-s{seed}", seed=seed)
                nll = _nll(SEEDS.index(seed))
                logs = _logs(arm, seed)
                logs["meta"]["config"] = to_dict(cfg)
                self.logs[cfg.run_name] = logs
                self.times[cfg.run_name] = {"total_elapsed": 100.0 + 7 * seed + 3 * a}
                last = _write_scored(self.log_dir, cfg.run_name, nll[(arm, "last")], 120, 1.2 + 0.03 * seed + 0.01 * a)
                best_step = logs["val"]["step"][int(np.argmin(logs["val"]["loss"]))]
                best = _write_scored(self.log_dir, f"{cfg.run_name}-best", nll[(arm, "best")], best_step,
                                     1.1 + 0.02 * seed + 0.03 * a)
                for c in ("last", "best"):
                    self.nll[(arm, seed, c)] = nll[(arm, c)]
                self.expected[(arm, seed)] = self._by_hand(cfg, logs, self.times[cfg.run_name], last, best)
                runs.append(SimpleNamespace(name=cfg.run_name, arm=arm, seed=seed, cfg=cfg))
        # the runs in another order than the study's (arms alphabetical, seeds descending)
        self.runs = sorted(runs, key=lambda r: (r.arm, -r.seed))
        self.study = SimpleNamespace(name="demo", description=description, reference=REFERENCE, seeds=seeds,
                                     arms=[SimpleNamespace(name=a) for a in ARMS])
        monkeypatch.setattr(study_report, "load_losses", self._load_losses)
        monkeypatch.setattr(study_report, "load_times", self._load_times)

    def _load_losses(self, run, log_dir):
        assert Path(log_dir) == self.log_dir
        return self.logs[run]

    def _load_times(self, run, log_dir):
        assert Path(log_dir) == self.log_dir
        return self.times[run]

    @staticmethod
    def _by_hand(cfg, logs, times, last, best) -> dict:
        """Every number of run_metrics from the logs, written out: no call into train_logs or study."""
        val = logs["val"]
        i_best = val["loss"].index(min(val["loss"]))
        recent = [x for s, x in zip(logs["step"], logs["train_loss"]) if s > val["step"][-2]]
        st = logs["stats"]
        overhead = (statistics.median(st["tid_score_time"]) / statistics.median(st["tid_step_time_without_scoring"])
                    if st else 0.0)
        held = {"heldout_mean_ppl": last["mean"], "heldout_corpus_ppl": last["corpus_ppl"],
                "heldout_bits_per_token": last["loss"] / math.log(2), "heldout_bits_per_byte": last["bpb"]}
        best_held = {"best_heldout_mean_ppl": best["mean"], "best_heldout_corpus_ppl": best["corpus_ppl"],
                     "best_heldout_bits_per_token": best["loss"] / math.log(2),
                     "best_heldout_bits_per_byte": best["bpb"]}
        return {"run": cfg.run_name, "seed": cfg.seed, **held, **best_held, "heldout_rows": N_ROWS,
                "heldout_data": "heldout-rows", "heldout_step": 120, "best_heldout_step": best["step"],
                "epochs": 1.37, "train_tokens": logs["meta"]["train_tokens"], "best_step": val["step"][i_best],
                "best_val_loss": val["loss"][i_best], "val_loss": val["loss"][-1],
                "train_val_gap": val["loss"][-1] - sum(recent) / len(recent),
                "val_bits_per_token": val["loss"][-1] / math.log(2), "val_bits_per_byte": val["bpb"][-1],
                "final_step": 120, "tokens_per_run": TOKENS, "wall_s": times["total_elapsed"],
                "tokens_per_s": TOKENS / times["total_elapsed"], "scoring_overhead": overhead,
                "val_curve": {"step": val["step"], "loss": val["loss"]}}

    def arm_values(self, arm: str, key: str) -> list[float]:
        return [self.expected[(arm, s)][key] for s in self.seeds]

    def diff(self, arm: str, checkpoint: str) -> np.ndarray:
        """(seeds, rows) per-row NLL of arm - reference, seeds in the study's order."""
        return np.stack([self.nll[(arm, s, checkpoint)] - self.nll[(REFERENCE, s, checkpoint)] for s in self.seeds])


@pytest.fixture
def demo(tmp_path, monkeypatch):
    return Study(tmp_path, monkeypatch)


def t_half(values) -> float:
    """Half-width of scipy's 95% t interval of the mean (n - 1 degrees of freedom); 0 for equal values."""
    if statistics.stdev(values) == 0:
        return 0.0
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values),
                              scale=statistics.stdev(values) / math.sqrt(len(values)))
    return (hi - lo) / 2


def hand_bootstrap(diff: np.ndarray, samples: int = 20000) -> tuple[float, float]:
    """Percentile 95% CI of the mean of diff (seeds, rows): seeds and rows drawn with replacement, one row draw
    for all drawn seeds, vectorised and from another generator than the report's."""
    rng = np.random.default_rng(2024)
    n_seeds, n_rows = diff.shape
    s = rng.integers(0, n_seeds, (samples, n_seeds))[:, :, None]
    r = rng.integers(0, n_rows, (samples, n_rows))[:, None, :]
    return tuple(np.quantile(diff[s, r].mean(axis=(1, 2)), [0.025, 0.975]))


def hand_verdict(*intervals) -> str:
    if all(hi < 0 for _, hi in intervals):
        return BETTER
    if all(lo > 0 for lo, _ in intervals):
        return WORSE
    return NONE


# ----------------------------------------------------------------------------- t_interval

@pytest.mark.parametrize("values", [[4.0, 9.0], [2.5, 3.1, 4.9], [10.0, 10.4, 9.1, 13.0, 11.7], (1, 2, 4, 8)])
def test_t_interval_is_scipys_95_percent_t_interval(values):
    """Contract: (mean, half-width of the 95% t interval, n - 1 df). Reference: scipy.stats.t.interval with
    statistics.fmean / stdev; integers and tuples are read as numbers."""
    mean, half = study_report.t_interval(values)
    assert mean == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert half == pytest.approx(t_half(values), rel=1e-9)


def test_t_interval_of_one_value_has_no_half_width_and_of_none_no_mean():
    """Contract: one value -> (that value, nan); no values -> (nan, nan), without numpy's empty-mean warning.
    Reference: the definition (no spread can be estimated from fewer than two values)."""
    mean, half = study_report.t_interval([3.25])
    assert mean == 3.25 and math.isnan(half)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, half = study_report.t_interval([])
    assert math.isnan(mean) and math.isnan(half)


def test_t_interval_reads_a_missing_value_as_nan():
    """Contract: values are read as floats, so a metric a run did not record (None) makes the arm's mean and
    half-width nan instead of failing the report. Reference: IEEE nan propagation (any sum with nan is nan)."""
    mean, half = study_report.t_interval([None, 2.0, 3.0])
    assert math.isnan(mean) and math.isnan(half)
    mean, half = study_report.t_interval([None])
    assert math.isnan(mean) and math.isnan(half)


# ----------------------------------------------------------------------------- paired_bootstrap

@pytest.mark.parametrize("n,ones", [(11, 3), (7, 4)])
def test_bootstrap_over_rows_has_the_exact_binomial_percentiles(n, ones):
    """Contract: rows drawn with replacement, 2.5 and 97.5 percentiles of the replicate means. Reference: with
    0/1 rows the replicate mean is Binomial(n, ones/n) / n, so the ends are scipy's binomial quantiles
    (chosen where a 3.5 or 98.5 percentile, or a draw that leaves a row out, lands on another value)."""
    rows = np.array([1.0] * ones + [0.0] * (n - ones))
    diff = np.stack([rows, rows])                               # two seeds with the same rows: only rows vary
    mean, lo, hi = study_report.paired_bootstrap(diff, samples=20000, seed=3)
    assert mean == pytest.approx(ones / n)
    assert lo == pytest.approx(stats.binom.ppf(0.025, n, ones / n) / n, abs=1e-12)
    assert hi == pytest.approx(stats.binom.ppf(0.975, n, ones / n) / n, abs=1e-12)


@pytest.mark.parametrize("n,ones", [(11, 3), (7, 4)])
def test_bootstrap_over_seeds_has_the_exact_binomial_percentiles(n, ones):
    """Contract: seeds drawn with replacement too (a seed is a random effect). Reference: seeds of 0/1 whose
    rows are equal, so the replicate mean is Binomial(n_seeds, ones/n_seeds) / n_seeds (scipy quantiles)."""
    seeds = np.array([1.0] * ones + [0.0] * (n - ones))
    diff = np.repeat(seeds[:, None], 4, axis=1)                 # (seeds, 4 rows), constant along the rows
    _, lo, hi = study_report.paired_bootstrap(diff, samples=20000, seed=4)
    assert lo == pytest.approx(stats.binom.ppf(0.025, n, ones / n) / n, abs=1e-12)
    assert hi == pytest.approx(stats.binom.ppf(0.975, n, ones / n) / n, abs=1e-12)


def test_bootstrap_defaults_are_reproducible_4000_draws_from_seed_0():
    """Contract: the report's CI is reproducible: the default is BOOTSTRAP_SAMPLES (4000) replicates from
    generator seed 0, so two reports of the same runs agree. Reference: the explicit call."""
    diff = np.random.default_rng(9).normal(0.1, 1.0, (3, 40))
    default = study_report.paired_bootstrap(diff)
    assert study_report.BOOTSTRAP_SAMPLES == 4000
    assert default == study_report.paired_bootstrap(diff, samples=4000, seed=0) == study_report.paired_bootstrap(diff)
    assert default != study_report.paired_bootstrap(diff, seed=1)


# ----------------------------------------------------------------------------- verdict

@pytest.mark.parametrize("intervals,expected", [
    ([(-0.5, -0.2), (-0.9, -1e-9)], BETTER),
    ([(0.2, 0.6), (1e-9, 0.9)], WORSE),
    ([(0.5, 0.9), (0.6, 1.5)], WORSE),                      # above 1 too: "above 0" means above 0
    ([(-0.2, -0.1), (-math.inf, math.inf)], NONE),           # one seed: the t interval is unbounded
    ([(0.1, 0.2), (-math.inf, math.inf)], NONE),
    ([(-0.2, 0.0), (-0.3, -0.1)], NONE),                     # touching 0 is not below it
    ([(0.0, 0.2), (0.1, 0.3)], NONE),
    ([(0.4, 0.8)], WORSE),
    ([(-0.8, -0.4)], BETTER),
])
def test_verdict_needs_every_interval_strictly_on_one_side_of_zero(intervals, expected):
    """Contract: better only when every interval lies below 0, worse when every one lies above, else none.
    Reference: the rule written out, on intervals that tell < from <= and 0 from other thresholds."""
    assert study_report.verdict(*intervals) == expected == hand_verdict(*intervals)


# ----------------------------------------------------------------------------- reading a run

def test_run_metrics_are_the_hand_computed_numbers_of_the_runs_logs(demo):
    """Contract: run_metrics reads the run's losses/times logs and both held-out results. Reference: each
    number written out by hand (first best val loss, the gap to the mean train loss after the evaluation
    before the last, medians of the TID times, tokens = max_steps x batch x grad_accum x context)."""
    for run in demo.runs:
        got = study_report.run_metrics(run)
        expected = {**demo.expected[(run.arm, run.seed)], "arm": run.arm}
        assert set(got) == set(expected)
        for key, value in expected.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            assert got[key] == (pytest.approx(value, rel=1e-12, nan_ok=True) if number else value), (run.name, key)
    deep = study_report.run_metrics(next(r for r in demo.runs if r.arm == "deep"))
    assert deep["scoring_overhead"] > 0                       # the TID arm's scoring time, median over median


def test_run_metrics_of_a_run_without_logged_steps_reports_step_0(demo):
    """Contract: final_step is the last logged training step, 0 when none was logged. Reference: the log."""
    run = demo.runs[0]
    demo.logs[run.name] = {**demo.logs[run.name], "step": [], "train_loss": []}
    got = study_report.run_metrics(run)
    assert got["final_step"] == 0 and math.isnan(got["train_val_gap"])


def test_row_nll_is_the_log_of_the_saved_row_perplexities_at_each_checkpoint(demo):
    """Contract: row_nll reads <run>.pkl (last.pt, the default) or <run>-best.pkl and returns log(ppl) per
    row. Reference: math.log of the perplexities written, and the NLLs they were made from."""
    run = demo.runs[0]
    for checkpoint, got in (("last", study_report.row_nll(run)), ("best", study_report.row_nll(run, "best"))):
        assert got == pytest.approx(demo.nll[(run.arm, run.seed, checkpoint)], abs=1e-12)
        assert got.dtype == np.float64
    pkl = demo.log_dir / "perplexity-losses" / f"{run.name}.pkl"
    pkl.write_bytes(pickle.dumps([1.5, True, 2.0]))            # a bool is not a perplexity
    with pytest.raises(UnsafeFileError, match="True"):
        study_report.row_nll(run)


def test_heldout_maps_the_runners_result_and_keeps_its_fields(demo):
    """Contract: _heldout adds the HELDOUT keys to the runner's JSON (bits/token = loss / ln 2) and keeps its
    own fields. Reference: the JSON written and hand arithmetic."""
    run = demo.runs[1]
    for checkpoint, suffix in (("last", ""), ("best", "-best")):
        raw = json.loads((demo.log_dir / "perplexity-losses" / f"{run.name}{suffix}.json").read_text())
        got = study_report._heldout(run, checkpoint)
        assert got == {**raw, "heldout_mean_ppl": raw["mean"], "heldout_corpus_ppl": raw["corpus_ppl"],
                       "heldout_bits_per_token": raw["loss"] / math.log(2), "heldout_bits_per_byte": raw["bpb"]}


# ----------------------------------------------------------------------------- build_report

def test_build_report_per_arm_means_and_t_intervals_over_each_arms_seeds(demo):
    """Contract: per arm and metric, mean and 95% t half-width over that arm's runs; the arm's seeds in the
    order of its runs. Reference: statistics.fmean and scipy's t interval of the hand-computed run numbers."""
    report = study_report.build_report(demo.study, demo.runs, {}, "cmd")
    assert list(report["arms"]) == ARMS
    keys = [k for k, *_ in [*TRAINING_COLUMNS.values(), *HELDOUT_COLUMNS.values(), *BEST_COLUMNS.values()]]
    for arm in ARMS:
        got = report["arms"][arm]
        assert set(got) == {*keys, "seeds"}
        assert got["seeds"] == [r.seed for r in demo.runs if r.arm == arm]
        for key in keys:
            values = demo.arm_values(arm, key)
            assert got[key]["mean"] == pytest.approx(statistics.fmean(values), rel=1e-12), (arm, key)
            assert got[key]["ci95"] == pytest.approx(t_half(values), rel=1e-9, abs=1e-12), (arm, key)
    assert report["runs"] == [study_report.run_metrics(r) for r in demo.runs]


def test_build_report_pairs_each_arm_with_the_reference_seed_by_seed(demo):
    """Contract: for every arm but the reference (which is not the first arm), the mean of the per-row NLL
    differences, its bootstrap CI, the per-seed means in the study's seed order with their t interval,
    Δ ppl = 100 (e^Δ - 1) and the verdict of both intervals, at last.pt and at best.pt. Reference: numpy on
    the NLLs written, scipy's t interval, a vectorised hand bootstrap and the verdict rule."""
    report = study_report.build_report(demo.study, demo.runs, {}, "cmd")
    verdicts = {}
    for key, checkpoint in (("comparisons", "last"), ("comparisons_best", "best")):
        assert list(report[key]) == ["wide", "deep"]
        for arm, c in report[key].items():
            diff = demo.diff(arm, checkpoint)
            per_seed = diff.mean(axis=1)
            t_lo, t_hi = stats.t.interval(0.95, len(per_seed) - 1, loc=per_seed.mean(), scale=stats.sem(per_seed))
            b_lo, b_hi = hand_bootstrap(diff)
            half = (b_hi - b_lo) / 2
            assert c["delta_nll"] == pytest.approx(diff.mean(), abs=1e-12)
            assert c["per_seed_delta_nll"] == pytest.approx(per_seed.tolist(), abs=1e-12)
            assert c["seed_t_ci95"] == pytest.approx([t_lo, t_hi], rel=1e-9)
            assert c["ci95"] == [pytest.approx(b_lo, abs=0.15 * half), pytest.approx(b_hi, abs=0.15 * half)]
            assert c["delta_ppl_pct"] == pytest.approx(100 * (math.exp(diff.mean()) - 1), rel=1e-9)
            assert c["verdict"] == hand_verdict((b_lo, b_hi), (t_lo, t_hi))
            verdicts[(arm, checkpoint)] = c["verdict"]
    assert verdicts == {("wide", "last"): BETTER, ("deep", "last"): WORSE,
                        ("wide", "best"): NONE, ("deep", "best"): BETTER}
    wide = report["comparisons_best"]["wide"]                 # the seeds agree, the rows do not: no verdict
    assert wide["seed_t_ci95"][1] < 0 < wide["ci95"][1]


def test_study_level_fields_of_the_report(demo):
    """Contract: the study's name, description, command, reference and seeds (study order), the shared
    held-out rows and data, tokens per run, the model line and the config differences as lists. Reference:
    the inputs, and the config's numbers parsed back out of the model line."""
    differences = {"wide": {"model.d_model": (48, 96)}, "base": {}, "deep": {"model.n_layers": (3, 6)}}
    report = study_report.build_report(demo.study, demo.runs, differences, "python run_study.py --study demo.yaml")
    assert (report["study"], report["description"], report["reference"], report["seeds"]) == (
        "demo", "Arms against the base.", REFERENCE, SEEDS)
    assert report["command"] == "python run_study.py --study demo.yaml"
    assert (report["heldout_rows"], report["heldout_data"]) == (N_ROWS, "heldout-rows")
    assert report["tokens_per_run"] == TOKENS
    assert report["config_differences"] == {"wide": {"model.d_model": [48, 96]}, "base": {},
                                            "deep": {"model.n_layers": [3, 6]}}
    m = re.fullmatch(r"(\w+) d(\d+) L(\d+) H(\d+) ff(\d+) ctx (\d+), (\w+) positions, (\w+), (\w+); (\w+) tokenizer; "
                     r"data: (.+)", report["model"])
    cfg = demo.runs[0].cfg
    assert m.groups() == (cfg.model.preset, "48", "3", "4", "80", "24", cfg.model.position, cfg.model.norm,
                          cfg.model.mlp, cfg.tokenizer.kind, "built-in story corpus")


def test_the_model_line_describes_the_reference_at_the_first_seed(demo):
    """Contract: summary.md's model line is the reference arm's model (the config differences below it are
    measured from that run), whatever arm the first run belongs to. Reference: a first run of another arm
    and the reference's run at its last seed with other widths, and the first seed's d_model by hand."""
    other = next(r for r in demo.runs if r.arm != REFERENCE)
    other.cfg = replace(other.cfg, model=replace(other.cfg.model, d_model=96))
    later = next(r for r in demo.runs if r.arm == REFERENCE and r.seed == demo.study.seeds[-1])
    later.cfg = replace(later.cfg, model=replace(later.cfg.model, d_model=80))   # the reference at its last seed
    runs = [other, *[r for r in demo.runs if r is not other]]
    report = study_report.build_report(demo.study, runs, {}, "cmd")
    reference_width = next(r for r in runs if r.arm == REFERENCE and r.seed == demo.study.seeds[0]).cfg.model.d_model
    assert len(demo.study.seeds) > 1 and reference_width not in (96, 80)
    assert report["model"].split()[1] == f"d{reference_width}"


def test_data_line_names_the_source():
    """Contract: the model line's data part: the built-in corpus, a Hugging Face dataset by name, else the
    file's path. Reference: the config values."""
    line = study_report._data_line
    assert line(SimpleNamespace(source="builtin", name="x/y", path=None)) == "built-in story corpus"
    assert line(SimpleNamespace(source="hf", name="roneneldan/TinyStories", path=None)) == \
        "roneneldan/TinyStories (Hugging Face)"
    assert line(SimpleNamespace(source="text", name="x/y", path=Path("corpus/stories.txt"))) == "corpus/stories.txt"


@pytest.mark.parametrize("field,value", [("data_dir", "other-rows"), ("rows", N_ROWS - 1)])
def test_build_report_refuses_runs_scored_on_other_heldout_rows(demo, field, value):
    """Contract: every run must be scored on the same held-out data and row count, else RuntimeError.
    Reference: one run's result rewritten with another data folder, or another row count, alone."""
    path = demo.log_dir / "perplexity-losses" / f"{demo.runs[2].name}.json"
    result = json.loads(path.read_text())
    path.write_text(json.dumps({**result, field: value}))
    with pytest.raises(RuntimeError, match="different held-out rows"):
        study_report.build_report(demo.study, demo.runs, {}, "cmd")


def test_one_seed_gives_no_intervals_and_no_verdict(tmp_path, monkeypatch):
    """Contract: with one seed, no t interval (nan per arm, (-inf, inf) per comparison) and so no verdict even
    where the bootstrap over rows excludes 0; the markdown shows no ± and the JSON keeps nan / inf.
    Reference: the definition of the t interval (n - 1 = 0 df) and the verdict rule."""
    demo = Study(tmp_path, monkeypatch, seeds=[5], description="")
    report = study_report.write_report(demo.study, demo.runs, {}, "cmd", tmp_path / "out")
    for arm in ARMS:
        assert report["arms"][arm]["epochs"]["mean"] == 1.37 and math.isnan(report["arms"][arm]["epochs"]["ci95"])
    c = report["comparisons"]["deep"]
    assert c["ci95"][0] > 0 and c["seed_t_ci95"] == [-math.inf, math.inf] and c["verdict"] == NONE
    assert report["comparisons"]["wide"]["ci95"][1] < 0 and report["comparisons"]["wide"]["verdict"] == NONE
    back = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert math.isnan(back["arms"]["wide"]["heldout_corpus_ppl"]["ci95"])
    assert back["comparisons"]["deep"]["seed_t_ci95"] == [-math.inf, math.inf]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert not any("±" in line for line in md.splitlines() if line.startswith("| "))
    wide = next(line for line in md.splitlines() if line.startswith("| wide | "))      # the training table
    assert _cells(wide)[1:4] == ["1.37", "5,000", f"{demo.expected[('wide', 5)]['best_step']}"]
    row = next(line for line in md.splitlines() if line.startswith("| deep | ") and "[" in line)
    assert "| [-inf, +inf] |" in row and row.endswith(f"| {NONE} |")
    assert md.startswith("# Study `demo`\n\n`cmd`\n\n")                # an empty description adds no paragraph


# ----------------------------------------------------------------------------- summary.md parsed back

def _blocks(md: str) -> list[list[str]]:
    """The markdown's paragraphs and tables: runs of lines between blank lines."""
    assert md.endswith("\n") and not md.endswith("\n\n")
    return [block.split("\n") for block in md[:-1].split("\n\n")]


def _cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return [c.strip() for c in line[2:-2].split(" | ")]


def _number(text: str, decimals: int, sign: bool, thousands: bool) -> float:
    """A number as the report prints it, checked for its decimals, sign and thousands separator."""
    pattern = (r"[+-]" if sign else r"-?") + (r"\d{1,3}(,\d{3})*" if thousands else r"\d+") + \
        (rf"\.\d{{{decimals}}}" if decimals else "")
    assert re.fullmatch(pattern, text), (text, pattern)
    return float(text.replace(",", ""))


def _check_table(block, columns: dict, demo) -> None:
    header, separator, *rows = block
    assert _cells(header) == ["arm", *columns]
    assert separator == "| --- |" + " ---: |" * len(columns)          # numbers right-aligned
    assert [_cells(r)[0] for r in rows] == ["wide", "base (reference)", "deep"]
    for arm, row in zip(ARMS, rows):
        for cell, (title, (key, decimals, sign, thousands)) in zip(_cells(row)[1:], columns.items()):
            values = demo.arm_values(arm, key)
            mean_text, half_text = cell.split(" ± ")
            tol = 0.5 * 10 ** -decimals + 1e-9
            mean = _number(mean_text, decimals, sign, thousands)
            assert mean == pytest.approx(statistics.fmean(values), abs=tol), title
            assert _number(half_text, decimals, False, thousands) == pytest.approx(t_half(values), abs=tol), title


def test_summary_md_tables_print_the_reference_values(demo):
    """Contract: summary.md opens with the study, its description, command and a line of arms x seeds, model,
    tokens and rows, then the training table, the held-out table and paired comparison at last.pt, the same
    at best.pt, then the config differences; each table under its title and set apart by blank lines.
    Reference: the tables parsed back; each cell's mean ± half-width equals fmean and scipy's t half-width of
    the hand-computed run numbers to the printed digits."""
    differences = {"wide": {"model.d_model": (48, 96), "train.lr": (0.001, 0.002)}, "base": {}, "deep": {}}
    report = study_report.build_report(demo.study, demo.runs, differences, "python run_study.py --study demo.yaml")
    blocks = _blocks(study_report.markdown(report))
    assert len(blocks) == 16 and all(len(b) == 1 for b in blocks[:5])
    assert blocks[0] == ["# Study `demo`"] and blocks[1] == ["Arms against the base."]
    assert blocks[2] == ["`python run_study.py --study demo.yaml`"]
    assert blocks[3][0].startswith(f"3 arms x 3 seeds {SEEDS}; model {report['model']}; {TOKENS:,} training tokens "
                                   f"per run; every run scored on the same {N_ROWS:,} held-out rows.")
    assert blocks[4][0].startswith("Training (")
    _check_table(blocks[5], TRAINING_COLUMNS, demo)
    assert blocks[6] == ["Held-out rows scored at last.pt (the end of training):"]
    _check_table(blocks[7], HELDOUT_COLUMNS, demo)
    assert blocks[8][0].startswith(f"Paired against `{REFERENCE}` at last.pt:")
    assert blocks[10] == ["Held-out rows scored at best.pt (the best validation loss):"]
    _check_table(blocks[11], BEST_COLUMNS, demo)
    assert blocks[12][0].startswith(f"Paired against `{REFERENCE}` at best.pt:")
    assert blocks[14] == [f"Config differences from `{REFERENCE}` (resolved configs; every other key is equal):"]
    assert blocks[15] == ["- wide: `model.d_model`: 48 -> 96, `train.lr`: 0.001 -> 0.002", "- deep: none"]


def test_summary_md_comparison_tables_print_the_paired_numbers(demo):
    """Contract: one row per compared arm in study order: Δ NLL, bootstrap CI, per-seed Δ in the study's seed
    order, t interval, Δ ppl % and verdict, signed to 4 (2 for %) decimals. Reference: the tables parsed back
    against numpy / scipy on the NLLs written (the bootstrap ends against summary.json's, read back)."""
    report = study_report.build_report(demo.study, demo.runs, {"wide": {}, "base": {}, "deep": {}}, "cmd")
    blocks = _blocks(study_report.markdown(report))
    back = json.loads(json.dumps(report))
    for block, key, checkpoint in ((blocks[9], "comparisons", "last"), (blocks[13], "comparisons_best", "best")):
        header, separator, *rows = block
        assert header == "| arm | Δ NLL | 95% bootstrap CI | per-seed Δ NLL | 95% t interval | Δ ppl | verdict |"
        assert separator == "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
        assert [_cells(r)[0] for r in rows] == ["wide", "deep"]
        for arm, row in zip(("wide", "deep"), rows):
            _, delta, ci, seeds, t_ci, ppl, verdict = _cells(row)
            diff = demo.diff(arm, checkpoint)
            per_seed = diff.mean(axis=1)
            t_lo, t_hi = stats.t.interval(0.95, len(per_seed) - 1, loc=per_seed.mean(), scale=stats.sem(per_seed))
            assert _number(delta, 4, True, False) == pytest.approx(diff.mean(), abs=5e-5)
            lo, hi = (_number(x, 4, True, False) for x in ci.strip("[]").split(", "))
            assert (lo, hi) == (pytest.approx(back[key][arm]["ci95"][0], abs=5e-5),
                                pytest.approx(back[key][arm]["ci95"][1], abs=5e-5))
            assert [_number(x, 4, True, False) for x in seeds.split(", ")] == pytest.approx(per_seed.tolist(), abs=5e-5)
            t_ends = [_number(x, 4, True, False) for x in t_ci.strip("[]").split(", ")]
            assert t_ends == pytest.approx([t_lo, t_hi], abs=5e-5)
            assert ppl.endswith("%") and _number(ppl[:-1], 2, True, False) == pytest.approx(
                100 * math.expm1(diff.mean()), abs=5e-3)
            assert verdict == back[key][arm]["verdict"]


# ----------------------------------------------------------------------------- write_report and figures

def test_write_report_writes_json_markdown_and_figures(demo, tmp_path):
    """Contract: write_report writes summary.json (the report, read back equal), summary.md (markdown of it)
    and figures/{val_curves,heldout}.png under out_dir, into a new nested folder or an existing one, and
    returns the report with the figure paths. Reference: json.loads of the file, the PNG signature."""
    for out in (tmp_path / "new" / "nested", tmp_path / "new" / "nested"):        # the second time it exists
        report = study_report.write_report(demo.study, demo.runs, {"wide": {"k": (1, 2)}}, "cmd", out)
        assert sorted(p.name for p in out.iterdir()) == ["figures", "summary.json", "summary.md"]
        back = json.loads((out / "summary.json").read_text())
        assert back == json.loads(json.dumps({k: v for k, v in report.items() if k != "figures"}))
        assert back["comparisons"]["deep"]["delta_nll"] == pytest.approx(demo.diff("deep", "last").mean(), abs=1e-12)
        wall = statistics.fmean(demo.arm_values("base", "wall_s"))
        assert back["arms"]["base"]["wall_s"]["mean"] == pytest.approx(wall)
        assert back["config_differences"] == {"wide": {"k": [1, 2]}}
        assert (out / "summary.md").read_text() == study_report.markdown(report)
        assert report["figures"] == [str(out / "figures" / "val_curves.png"), str(out / "figures" / "heldout.png")]
        for p in report["figures"]:
            assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert sorted(p.name for p in (out / "figures").iterdir()) == ["heldout.png", "val_curves.png"]


@pytest.fixture
def drawn(demo, tmp_path, monkeypatch):
    """(report, {file name: Figure}, figures left open) of figures() on the demo study's report, each Figure
    kept as it is saved."""
    from matplotlib import pyplot as plt

    from test_study_figures import capture_saved_figures
    saved = capture_saved_figures(monkeypatch)
    report = study_report.build_report(demo.study, demo.runs, {}, "cmd")
    before = len(plt.get_fignums())
    study_report.figures(report, tmp_path / "figs")
    return report, saved, len(plt.get_fignums()) - before


def test_figures_are_labelled_with_what_they_plot_and_closed(drawn):
    """Contract: the held-out figure's panels are labelled with what they plot (corpus perplexity with its t
    interval and seed dots; the paired NLL difference against the reference with its bootstrap CI), one tick
    per arm / compared arm, and no figure is left open. Reference: the study's arms, reference and name."""
    _, saved, left_open = drawn
    assert left_open == 0
    left, right = saved["heldout.png"].axes
    assert left.get_ylabel() == "held-out corpus perplexity"
    assert left.get_title() == "held-out perplexity: mean, 95% t interval, seeds (dots)"
    assert [t.get_text() for t in left.get_xticklabels()] == ARMS and left.get_xticks().tolist() == [0, 1, 2]
    assert right.get_ylabel() == f"held-out NLL - {REFERENCE} (nats/token)"
    assert right.get_title() == "paired difference, 95% bootstrap CI (rows x seeds)"
    assert [t.get_text() for t in right.get_xticklabels()] == ["wide", "deep"] and right.get_xticks().tolist() == [0, 1]
    (curves,) = saved["val_curves.png"].axes
    assert curves.get_title() == "demo: validation loss, mean over seeds (band: min to max)"


def _bars(ax) -> list[tuple]:
    """(x, y, bar bottom, bar top, marker, color) of each errorbar on the axes, in drawing order."""
    out = []
    for c in ax.containers:
        point, _, bars = c.lines
        (x,), (y,) = point.get_xdata(), point.get_ydata()
        (segment,) = bars[0].get_segments() if bars else [np.array([[x, math.nan], [x, math.nan]])]
        out.append((x, y, *sorted(segment[:, 1]), point.get_marker(), to_rgba(point.get_color())))
    return out


def test_heldout_panel_draws_each_arms_mean_t_interval_and_seed_dots(drawn, demo):
    """Contract: per arm (in study order, colour C<i>): its mean corpus perplexity with the 95% t interval as
    the bar, and one dot per run at x = i + 0.15; the dots stay on this panel. Reference: fmean and scipy's
    t half-width of the perplexities the runs' results hold."""
    _, saved, _ = drawn
    left, right = saved["heldout.png"].axes
    for i, (arm, (x, y, bottom, top, marker, color)) in enumerate(zip(ARMS, _bars(left), strict=True)):
        values = demo.arm_values(arm, "heldout_corpus_ppl")
        mean, half = statistics.fmean(values), t_half(values)
        assert (x, marker, color) == (i, "o", to_rgba(f"C{i}"))
        assert (y, bottom, top) == (pytest.approx(mean), pytest.approx(mean - half), pytest.approx(mean + half))
    dots = [(line.get_xdata()[0], line.get_ydata()[0], to_rgba(line.get_color()))
            for line in left.lines if line.get_marker() == "."]
    expected = [(i + 0.15, demo.expected[(r.arm, r.seed)]["heldout_corpus_ppl"], to_rgba(f"C{i}"))
                for i, arm in enumerate(ARMS) for r in demo.runs if r.arm == arm]
    assert len(dots) == len(expected) == len(demo.runs)
    for (x, y, color), (ex, ey, ecolor) in zip(dots, expected):
        assert (x, y, color) == (pytest.approx(ex), pytest.approx(ey), ecolor)
    assert not [line for line in right.lines if line.get_marker() == "."]


def test_difference_panel_draws_each_delta_with_its_bootstrap_interval(drawn, demo):
    """Contract: per compared arm, at x = 0, 1, ... in study order and in the arm's colour C<index among all
    arms>: Δ NLL at last.pt with the bar spanning its bootstrap CI (not symmetric), and a line at 0.
    Reference: the NLL differences written (mean) and the report's CI ends."""
    report, saved, _ = drawn
    _, right = saved["heldout.png"].axes
    compared = ["wide", "deep"]
    for j, (arm, (x, y, bottom, top, marker, color)) in enumerate(zip(compared, _bars(right), strict=True)):
        lo, hi = report["comparisons"][arm]["ci95"]
        assert (x, marker, color) == (j, "o", to_rgba(f"C{ARMS.index(arm)}"))
        assert y == pytest.approx(demo.diff(arm, "last").mean(), abs=1e-12)
        assert (bottom, top) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    in_bars = {id(line) for c in right.containers for line in (c.lines[0], *c.lines[1])}
    (zero,) = [line for line in right.lines if id(line) not in in_bars]
    assert set(zero.get_ydata()) == {0}
