"""What the study figures draw, checked against values computed by hand from a small report: per
arm the mean validation curve over seeds on the steps every seed has (step 0 left out) with a
min..max band, one color per arm shared by both figures, the held-out perplexity mean with its t
interval (none drawn for a one-seed arm) and the seed dots, and the paired differences with their
asymmetric bootstrap intervals around a zero line. Figures are captured as _save writes them."""

import math

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgba

import study_report

matplotlib.use("Agg")

NAN = float("nan")
# unequal seeds per arm, unequal curves; seed 2 of "wide" lacks step 6, seed 1 has an extra step 9
RUNS = [
    {"arm": "base", "seed": 1, "heldout_corpus_ppl": 20.0,
     "val_curve": {"step": [0, 1, 3, 6], "loss": [10.0, 5.0, 4.0, 3.0]}},
    {"arm": "base", "seed": 2, "heldout_corpus_ppl": 23.0,
     "val_curve": {"step": [0, 1, 3, 6], "loss": [10.5, 6.0, 4.5, 3.6]}},
    {"arm": "wide", "seed": 1, "heldout_corpus_ppl": 17.0,
     "val_curve": {"step": [0, 1, 3, 6, 9], "loss": [11.0, 4.0, 3.0, 2.0, 1.5]}},
    {"arm": "wide", "seed": 2, "heldout_corpus_ppl": 18.5,
     "val_curve": {"step": [0, 1, 3], "loss": [11.2, 4.6, 3.9]}},
    {"arm": "wide", "seed": 3, "heldout_corpus_ppl": 16.0,
     "val_curve": {"step": [0, 1, 3, 6], "loss": [10.8, 4.3, 3.1, 2.4]}},
    {"arm": "deep", "seed": 1, "heldout_corpus_ppl": 19.0,
     "val_curve": {"step": [0, 1, 3, 6], "loss": [9.0, 4.8, 3.7, 2.9]}},
]
REPORT = {
    "study": "toy-study", "reference": "base",
    "arms": {"base": {"heldout_corpus_ppl": {"mean": 21.5, "ci95": 19.06}},
             "wide": {"heldout_corpus_ppl": {"mean": 17.1667, "ci95": 3.1}},
             "deep": {"heldout_corpus_ppl": {"mean": 19.0, "ci95": NAN}}},    # one seed: no interval
    "runs": RUNS,
    "comparisons": {"wide": {"delta_nll": -0.20, "ci95": [-0.31, -0.15]},     # asymmetric around delta
                    "deep": {"delta_nll": 0.05, "ci95": [-0.02, 0.30]}},
}
ARMS = list(REPORT["arms"])


def by_hand(arm):
    """Steps every seed of the arm has, step 0 dropped, and the mean / min / max of the seeds' losses there."""
    curves = [dict(zip(r["val_curve"]["step"], r["val_curve"]["loss"])) for r in RUNS if r["arm"] == arm]
    steps = [s for s in sorted(curves[0]) if s > 0 and all(s in c for c in curves)]
    losses = [[c[s] for c in curves] for s in steps]
    return steps, [sum(v) / len(v) for v in losses], [min(v) for v in losses], [max(v) for v in losses]


def capture_saved_figures(monkeypatch) -> dict:
    """{file name: Figure} of every figure study_report saves from now on (each is still saved)."""
    saved = {}
    real_save = study_report._save

    def capture(fig, path):
        saved[path.name] = fig
        return real_save(fig, path)

    monkeypatch.setattr(study_report, "_save", capture)
    return saved


@pytest.fixture
def drawn(tmp_path, monkeypatch):
    """figures() on REPORT into a not-yet-existing nested folder; each Figure is kept as it is saved."""
    saved = capture_saved_figures(monkeypatch)
    out = tmp_path / "study" / "figures"
    paths = study_report.figures(REPORT, out)
    return paths, out, saved


def same_color(a, b):
    return to_rgba(a) == pytest.approx(to_rgba(b))


def test_both_pngs_are_written_into_a_new_nested_folder_and_returned(drawn):
    paths, out, saved = drawn
    assert paths == [out / "val_curves.png", out / "heldout.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(saved) == {"val_curves.png", "heldout.png"}


def test_validation_curves_are_the_seed_mean_with_a_min_max_band_on_common_steps(drawn):
    """Reference: by_hand, a plain loop over the report's curves (step 0 and steps only some seeds have left out)."""
    _, _, saved = drawn
    (ax,) = saved["val_curves.png"].axes
    assert len(ax.lines) == len(ARMS) and len(ax.collections) == len(ARMS)
    for i, (arm, line, band) in enumerate(zip(ARMS, ax.lines, ax.collections)):
        steps, mean, lo, hi = by_hand(arm)
        assert line.get_xdata().tolist() == steps and steps[0] == 1
        assert line.get_ydata() == pytest.approx(mean)
        assert line.get_label() == arm
        assert same_color(line.get_color(), f"C{i}")
        # the band's outline: x over steps with the upper edge (max), back with the lower edge (min)
        verts = band.get_paths()[0].vertices
        xs, ys = verts[:, 0], verts[:, 1]
        for s, l, h in zip(steps, lo, hi):
            at = ys[xs == s]
            assert at.min() == pytest.approx(l) and at.max() == pytest.approx(h)
        assert xs.min() == steps[0] and xs.max() == steps[-1]
        assert same_color(band.get_facecolor()[0][:3], to_rgba(f"C{i}")[:3])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ARMS
    assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "validation loss (nats/token)"
    assert REPORT["study"] in ax.get_title()


def _errorbars(ax):
    """(x, y, bar bottom, bar top, marker, color) per errorbar call, in drawing order."""
    out = []
    for c in ax.containers:
        data_line, _, bars = c.lines
        (x,), (y,) = data_line.get_xdata(), data_line.get_ydata()
        if bars:
            (seg,) = bars[0].get_segments()
            bottom, top = sorted(seg[:, 1])
        else:
            bottom = top = None
        out.append((x, y, bottom, top, data_line.get_marker(), data_line.get_color()))
    return out


def test_heldout_panel_draws_arm_mean_with_its_interval_and_the_seed_dots(drawn):
    """Reference: the report's per-arm mean and ci95 (bar of length 0 when ci95 is nan) and per-run perplexities."""
    _, _, saved = drawn
    fig = saved["heldout.png"]
    assert len(fig.axes) == 2
    left = fig.axes[0]
    bars = _errorbars(left)
    assert len(bars) == len(ARMS)
    for i, (arm, (x, y, bottom, top, marker, color)) in enumerate(zip(ARMS, bars)):
        m = REPORT["arms"][arm]["heldout_corpus_ppl"]
        half = m["ci95"] if math.isfinite(m["ci95"]) else 0.0
        assert (x, y) == (i, pytest.approx(m["mean"]))
        assert (bottom, top) == (pytest.approx(m["mean"] - half), pytest.approx(m["mean"] + half))
        assert marker == "o" and same_color(color, f"C{i}")
    dots = [(l.get_xdata()[0], l.get_ydata()[0], l.get_color()) for l in left.lines if l.get_marker() == "."]
    expected = [(ARMS.index(r["arm"]) + 0.15, r["heldout_corpus_ppl"], f"C{ARMS.index(r['arm'])}")
                for r in sorted(RUNS, key=lambda r: ARMS.index(r["arm"]))]
    assert [v for x, y, _ in dots for v in (x, y)] == pytest.approx([v for x, y, _ in expected for v in (x, y)])
    assert all(same_color(c, e) for (_, _, c), (_, _, e) in zip(dots, expected))
    assert [t.get_text() for t in left.get_xticklabels()] == ARMS
    assert left.get_xticks().tolist() == list(range(len(ARMS)))


def test_paired_difference_panel_draws_delta_with_its_asymmetric_interval_and_a_zero_line(drawn):
    """Reference: the report's delta_nll and bootstrap [lo, hi]; the color is the arm's, as in the curves."""
    _, _, saved = drawn
    right = saved["heldout.png"].axes[1]
    comps = REPORT["comparisons"]
    bars = _errorbars(right)
    assert len(bars) == len(comps)
    for j, (arm, (x, y, bottom, top, marker, color)) in enumerate(zip(comps, bars)):
        lo, hi = comps[arm]["ci95"]
        assert (x, y) == (j, pytest.approx(comps[arm]["delta_nll"]))
        assert (bottom, top) == (pytest.approx(lo), pytest.approx(hi))
        assert marker == "o" and same_color(color, f"C{ARMS.index(arm)}")
    in_bars = {id(l) for c in right.containers for l in (c.lines[0], *c.lines[1])}
    zero = [l for l in right.lines if id(l) not in in_bars]
    assert len(zero) == 1 and set(zero[0].get_ydata()) == {0}
    assert [t.get_text() for t in right.get_xticklabels()] == list(comps)
    assert REPORT["reference"] in right.get_ylabel()
