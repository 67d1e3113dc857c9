"""Study statistics against scipy.stats and hand loops: per-arm 95% t intervals, the paired
bootstrap CI over rows and seeds, the per-seed differences and their t interval, the verdict, and
build_report on saved per-row results where pairing the rows of the two arms is what makes the
difference detectable (large between-row variance, a small consistent shift)."""

import json
import math
import pickle
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

import study_report
from conftest import tiny_run_config
from experiment_config import to_dict

SEEDS = [3, 7, 11]                      # unequal seed values: results are looked up by seed, not position
NO_DIFFERENCE = "no detectable difference at this budget"


def scipy_half_width(values) -> float:
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    return (hi - lo) / 2


def hand_bootstrap(arm: np.ndarray, ref: np.ndarray, samples: int = 4000, seed: int = 123) -> tuple[float, float]:
    """Percentile CI of mean(arm - ref) over (seeds, rows): each replicate draws seeds with
    replacement and one set of row indices, used for every drawn seed and for both arms."""
    rng = np.random.default_rng(seed)
    n_seeds, n_rows = arm.shape
    seeds = rng.choice(n_seeds, (samples, n_seeds))[:, :, None]                 # (samples, seeds, 1)
    rows = rng.choice(n_rows, (samples, n_rows))[:, None, :]                    # (samples, 1, rows)
    means = arm[seeds, rows].mean(axis=(1, 2)) - ref[seeds, rows].mean(axis=(1, 2))
    return tuple(np.quantile(means, [0.025, 0.975]))


def paired_data(n_rows=300, shift=0.03, seed=0):
    """(ref, arm) per-row mean NLLs (seeds, rows): rows differ by several nats, the arm is `shift`
    worse on every row up to small noise, seeds move every row of a run a little."""
    rng = np.random.default_rng(seed)
    difficulty = rng.gamma(2.0, 1.2, n_rows) + 1.0
    ref = difficulty + rng.normal(0, 0.004, (len(SEEDS), 1)) + rng.normal(0, 0.02, (len(SEEDS), n_rows))
    arm = difficulty + shift + rng.normal(0, 0.004, (len(SEEDS), 1)) + rng.normal(0, 0.02, (len(SEEDS), n_rows))
    return ref, arm


# ----------------------------------------------------------------------------- t intervals

@pytest.mark.parametrize("values", [[2.5, 3.1, 4.9], [10.0, 10.4, 9.1, 13.0, 11.7], [0.3, -0.2]])
def test_t_interval_equals_scipy(values):
    mean, half = study_report.t_interval(values)
    assert mean == pytest.approx(np.mean(values))
    assert half == pytest.approx(scipy_half_width(values), rel=1e-9)
    # the same interval as scipy's one-sample t test inverts: its p-value at the interval's ends is 0.05
    assert stats.ttest_1samp(values, mean + half).pvalue == pytest.approx(0.05, abs=1e-9)


# ----------------------------------------------------------------------------- the paired bootstrap

def test_one_seed_paired_bootstrap_equals_scipy_paired_bootstrap():
    ref, arm = paired_data()
    ref, arm = ref[:1], arm[:1]
    mean, lo, hi = study_report.paired_bootstrap(arm - ref)
    res = stats.bootstrap((arm[0], ref[0]), lambda a, b: np.mean(a - b), paired=True, vectorized=False,
                          n_resamples=4000, method="percentile", rng=np.random.default_rng(5))
    half = (res.confidence_interval.high - res.confidence_interval.low) / 2
    assert mean == pytest.approx(np.mean(arm - ref))
    assert lo == pytest.approx(res.confidence_interval.low, abs=0.15 * half)
    assert hi == pytest.approx(res.confidence_interval.high, abs=0.15 * half)


@pytest.mark.parametrize("seed_sd,row_sd", [(0.1, 0.0), (0.0, 0.5)])
def test_paired_bootstrap_over_seeds_and_rows_equals_a_hand_loop(seed_sd, row_sd):
    """Seed effects shared by the rows, or row effects shared by the seeds: a CI that never resampled
    seeds, or resampled rows per seed, would be narrower than the hand loop's."""
    rng = np.random.default_rng(1)
    ref = rng.normal(3.0, 1.0, (3, 200))
    arm = ref + 0.1 + rng.normal(0, seed_sd, (3, 1)) + rng.normal(0, row_sd, (1, 200)) + rng.normal(0, 0.05, (3, 200))
    mean, lo, hi = study_report.paired_bootstrap(arm - ref)
    hand_lo, hand_hi = hand_bootstrap(arm, ref)
    half = (hand_hi - hand_lo) / 2
    assert mean == pytest.approx(np.mean(arm - ref))
    assert lo == pytest.approx(hand_lo, abs=0.12 * half) and hi == pytest.approx(hand_hi, abs=0.12 * half)


def test_pairing_is_what_makes_the_small_shift_detectable():
    ref, arm = paired_data()
    _, lo, hi = study_report.paired_bootstrap(arm - ref)
    assert 0 < lo < 0.03 < hi < 0.06
    unpaired = stats.bootstrap((arm.ravel(), ref.ravel()), lambda a, b: np.mean(a) - np.mean(b), paired=False,
                               vectorized=False, n_resamples=2000, method="percentile", rng=np.random.default_rng(2))
    assert unpaired.confidence_interval.low < 0 < unpaired.confidence_interval.high   # the data needs the pairing


# ----------------------------------------------------------------------------- the verdict

@pytest.mark.parametrize("intervals,expected", [
    ([(-0.3, -0.1)], "better (lower held-out NLL)"),
    ([(-0.3, -0.1), (-0.5, -0.01)], "better (lower held-out NLL)"),
    ([(0.1, 0.3), (0.02, 0.4)], "worse (higher held-out NLL)"),
    ([(-0.3, 0.1)], NO_DIFFERENCE),
    ([(-0.3, -0.1), (-0.2, 0.05)], NO_DIFFERENCE),          # the seeds' interval crosses 0
    ([(0.1, 0.3), (-0.4, 0.2)], NO_DIFFERENCE),
    ([(-0.3, -0.1), (0.1, 0.2)], NO_DIFFERENCE),            # both exclude 0, on opposite sides
    ([(-0.3, 0.0)], NO_DIFFERENCE),                          # touching 0 is not on one side
    ([(0.0, 0.3)], NO_DIFFERENCE),
])
def test_verdict_needs_every_interval_on_one_side_of_zero(intervals, expected):
    assert study_report.verdict(*intervals) == expected


# ----------------------------------------------------------------------------- build_report on saved results

BEST_SCALE = 0.5  # best.pt's per-row NLL in the report test: half of last.pt's


def _write_run(cfg, per_row_nll: np.ndarray, heldout_extra: dict, name: str | None = None) -> None:
    """The perplexity runner's files for one run (`name`: the run's, or its best.pt's `<run>-best`)."""
    out = Path(cfg.log_dir) / "perplexity-losses"
    out.mkdir(parents=True, exist_ok=True)
    name = name or cfg.run_name
    (out / f"{name}.pkl").write_bytes(pickle.dumps(np.exp(per_row_nll).tolist()))
    ppl = np.exp(per_row_nll)
    summary = {"mean": float(ppl.mean()), "rows": len(ppl), "data_dir": "heldout-data", "step": 10, **heldout_extra}
    (out / f"{name}.json").write_text(json.dumps(summary))


def test_build_report_pairs_rows_and_seeds_and_matches_scipy(tmp_path, monkeypatch):
    ref, arm = paired_data()
    # the reference arm's runs are written in another seed order than the study's: a report that
    # paired by position instead of by seed would compare different runs
    by_arm = {"baseline": ref, "entropy": arm}
    base = tiny_run_config(tmp_path)
    logs, runs = {}, []
    for arm_name, order in (("baseline", [2, 0, 1]), ("entropy", [0, 1, 2])):
        for i in order:
            seed = SEEDS[i]
            cfg = replace(base, run_name=f"{arm_name}-s{seed}", seed=seed)
            nll = by_arm[arm_name][i]
            val_loss = 2.0 + 0.1 * i + (0.05 if arm_name == "entropy" else 0.0)
            corpus = float(np.exp(nll.mean()) * (1.0 + 0.01 * seed))
            _write_run(cfg, nll, {"corpus_ppl": corpus, "loss": float(np.log(corpus)), "bpb": 1.5 + 0.01 * seed})
            _write_run(cfg, BEST_SCALE * nll, {"corpus_ppl": corpus, "loss": float(np.log(corpus)), "bpb": 1.4},
                       name=f"{cfg.run_name}-best")  # best.pt: other rows, so the two reports differ
            logs[cfg.run_name] = {"val": {"step": [0, 10], "loss": [5.0, val_loss], "bpb": [2.0, val_loss / 2]},
                                  "stats": {}, "step": [10], "train_loss": [val_loss - 1.0],
                                  "meta": {"config": to_dict(cfg), "train_tokens": 5000}}
            runs.append(SimpleNamespace(name=cfg.run_name, arm=arm_name, seed=seed, cfg=cfg))
    monkeypatch.setattr(study_report, "load_losses", lambda run, log_dir: logs[run])
    monkeypatch.setattr(study_report, "load_times", lambda run, log_dir: {"total_elapsed": 60.0 + len(run)})
    study = SimpleNamespace(name="s", description="", reference="baseline", seeds=SEEDS,
                            arms=[SimpleNamespace(name="baseline"), SimpleNamespace(name="entropy")])
    report = study_report.build_report(study, runs, {}, "cmd")

    # per arm: mean and t half-width over the seeds, as scipy computes them from the saved numbers
    for arm_name, nll in by_arm.items():
        mean_ppl = [np.exp(row).mean() for row in nll]
        got = report["arms"][arm_name]["heldout_mean_ppl"]
        assert got["mean"] == pytest.approx(np.mean(mean_ppl))
        assert got["ci95"] == pytest.approx(scipy_half_width(mean_ppl), rel=1e-6)
        bpb = [1.5 + 0.01 * s for s in SEEDS]
        assert report["arms"][arm_name]["heldout_bits_per_byte"]["ci95"] == pytest.approx(scipy_half_width(bpb))

    c = report["comparisons"]["entropy"]
    per_seed = (arm - ref).mean(axis=1)                                   # seed order of the study
    assert c["per_seed_delta_nll"] == pytest.approx(per_seed.tolist(), abs=1e-9)
    assert c["delta_nll"] == pytest.approx(np.mean(arm - ref), abs=1e-9)
    assert c["delta_ppl_pct"] == pytest.approx(100 * (math.exp(np.mean(arm - ref)) - 1), rel=1e-6)
    lo, hi = stats.t.interval(0.95, len(SEEDS) - 1, loc=per_seed.mean(), scale=stats.sem(per_seed))
    assert c["seed_t_ci95"] == pytest.approx([lo, hi], rel=1e-6)
    hand_lo, hand_hi = hand_bootstrap(arm, ref)
    half = (hand_hi - hand_lo) / 2
    assert c["ci95"][0] == pytest.approx(hand_lo, abs=0.15 * half)
    assert c["ci95"][1] == pytest.approx(hand_hi, abs=0.15 * half)
    assert 0 < c["ci95"][0] and c["verdict"] == "worse (higher held-out NLL)"
    best = report["comparisons_best"]["entropy"]  # paired on best.pt's rows, not last.pt's
    assert best["delta_nll"] == pytest.approx(BEST_SCALE * np.mean(arm - ref), abs=1e-9)
    assert best["per_seed_delta_nll"] == pytest.approx((BEST_SCALE * per_seed).tolist(), abs=1e-9)

    # summary.md prints these numbers: the paired row, and each arm's mean ± t half-width
    md = study_report.markdown(report)
    seeds = ", ".join(f"{d:+.4f}" for d in per_seed)
    assert (f"| entropy | {np.mean(arm - ref):+.4f} | [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {seeds} | "
            f"[{lo:+.4f}, {hi:+.4f}] | {100 * (math.exp(np.mean(arm - ref)) - 1):+.2f}% | worse") in md
    mean_ppl = [np.exp(row).mean() for row in ref]
    assert f"| baseline (reference) | {np.mean(mean_ppl):.3f} ± {scipy_half_width(mean_ppl):.3f} |" in md
