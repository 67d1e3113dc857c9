"""What the training figures draw, read back from the returned Figures and checked against values worked
out here: the logs each test writes with the trainer's own RunLogger (two runs of unequal length,
non-monotone losses with a NaN, unequal tokens per step, a resumed run), a debiased EMA in its closed
form (a weighted mean with weights ema**(finite values logged since)), tokens = step x tokens per step
and wall times in the unit of the longest run by hand, medians and histogram counts by plain loops.
Also: which runs each figure leaves out, the axis labels and legends, the files written, the CLI."""

import json
import math
import pickle
import statistics

import matplotlib
import numpy as np
import pytest
from matplotlib import pyplot as plt
from matplotlib.colors import same_color
from matplotlib.ticker import EngFormatter

from train_logs import RunLogger
from visualizations import plots
from visualizations.run_logs import MissingLogWarning

matplotlib.use("Agg")

NAN = float("nan")
LN2 = math.log(2)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- logs and references

def _meta(batch=4, accum=2, context=32, clip=1.0):
    return {"config": {"train": {"batch_size": batch, "grad_accum": accum, "grad_clip": clip},
                       "model": {"context": context}}, "params": 1000, "active_params": 1000}


def _write(log_dir, run, losses, *, step_times=1.0, tokens=256, first=1, lr=None, grad=None, stats=None,
           evals=(), meta=None, resume_step=0, elapsed_before=0.0, times=True):
    """A run's logs as the trainer writes them: step `first + i` logs losses[i], step_times[i] seconds for
    `tokens` tokens, elapsed = the sum of this segment's step times; evals are (step, loss) pairs."""
    n = len(losses)
    step_times = [step_times] * n if isinstance(step_times, (int, float)) else step_times
    log = RunLogger(run, log_dir, _meta() if meta is None else meta, resume_step=resume_step)
    elapsed = 0.0
    evals = dict(evals)
    if 0 in evals and first == 1:
        log.log_eval(0, evals[0], 1.0)
    for i in range(n):
        step = first + i
        elapsed += step_times[i]
        log.log_step(step, losses[i], 1e-3 if lr is None else lr[i], 1.0 if grad is None else grad[i],
                     step_times[i], tokens, elapsed, {} if stats is None else stats[i])
        if step in evals:
            log.log_eval(step, evals[step], 1.0)
    log.save()
    if not times:
        (log_dir / "times" / f"{run}.pkl").unlink()


def _ema(values, beta):
    """The debiased EMA in closed form: at each step the mean of the finite values so far, the j-th of
    k weighted beta**(k - 1 - j); NaN before the first finite value."""
    out = []
    for t in range(len(values)):
        seen = [v for v in values[:t + 1] if math.isfinite(v)]
        weights = [beta ** (len(seen) - 1 - j) for j in range(len(seen))]
        out.append(sum(w * v for w, v in zip(weights, seen)) / sum(weights) if seen else NAN)
    return out


def _same(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float),
                               rtol=1e-12, atol=0, equal_nan=True)


def _xy(line):
    return np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)


def _legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()]


# two runs of unequal length, non-monotone losses (a NaN in A), unequal tokens and times per step
A_LOSS = [5.0, 4.0, 4.6, NAN, 3.1, 3.9, 2.5]
A_TIMES = [30.0, 20.0, 40.0, 30.0, 25.0, 35.0, 30.0]     # 210 s in all: minutes on the time axis
A_EVALS = [(0, 6.0), (3, 4.2), (6, 3.5)]
B_LOSS = [6.0, 5.5, 5.8, 4.0]
B_TIMES = [7.3, 7.3, 9.1, 5.0]
B_EVALS = [(0, 6.5), (2, 5.0), (4, 4.1)]


@pytest.fixture
def two_runs(tmp_path):
    log_dir = tmp_path / "logs"
    _write(log_dir, "A", A_LOSS, step_times=A_TIMES, tokens=256, evals=A_EVALS)
    _write(log_dir, "B", B_LOSS, step_times=B_TIMES, tokens=100, evals=B_EVALS, meta=_meta(2, 1, 16))
    return log_dir


def _cumsum(xs):
    out, total = [], 0.0
    for x in xs:
        total += x
        out.append(total)
    return out


# ----------------------------------------------------------------------------- loss curves

def test_loss_by_step_draws_raw_ema_and_validation_of_each_run(two_runs):
    """loss_curves, step panel: per run (in order) the raw train loss, its EMA and the validation loss at
    the eval steps -> the values written, the EMA by its closed form."""
    fig = plots.loss_curves(["A", "B"], two_runs, x=("step",), ema=0.5)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 6
    for k, (loss, evals) in enumerate(((A_LOSS, A_EVALS), (B_LOSS, B_EVALS))):
        raw, ema, val = lines[3 * k: 3 * k + 3]
        steps = list(range(1, len(loss) + 1))
        _same(_xy(raw)[0], steps)
        _same(_xy(raw)[1], loss)
        _same(_xy(ema)[0], steps)
        _same(_xy(ema)[1], _ema(loss, 0.5))
        _same(_xy(val)[0], [s for s, _ in evals])
        _same(_xy(val)[1], [v for _, v in evals])
        assert val.get_linestyle() == "--" and raw.get_linestyle() == ema.get_linestyle() == "-"
        assert raw.get_alpha() == 0.25 and ema.get_alpha() is None and val.get_alpha() is None   # raw faint
    assert ax.get_xlabel() == "optimizer step" and ax.get_title() == "by optimizer step"
    assert ax.get_ylabel() == "loss (nats/token)"
    assert fig.get_suptitle() == "Training and validation loss"


def test_loss_legend_names_the_runs_then_train_and_validation_in_the_lines_colours(two_runs):
    """loss_curves legend: run names in the order given (a missing run left out, its colour skipped), then
    'train (EMA e)' and 'validation' -> the run list; each run's lines share its legend colour."""
    with pytest.warns(MissingLogWarning, match="'ghost'"):
        fig = plots.loss_curves(["B", "ghost", "A"], two_runs, x=("step", "tokens"), ema=0.8)
    assert len(fig.axes) == 2 and fig.axes[1].get_legend() is None
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert _legend_texts(legend) == ["B", "A", "train (EMA 0.8)", "validation"]
    handles = legend.legend_handles
    assert handles[3].get_linestyle() == "--" and handles[2].get_linestyle() == "-"
    assert handles[3].get_marker() == "o" and handles[2].get_marker() == "None"
    assert same_color(handles[2].get_color(), "0.3") and same_color(handles[3].get_color(), "0.3")  # styles: grey
    lines = ax.get_lines()
    assert len(lines) == 6
    for run_lines, handle in ((lines[:3], handles[0]), (lines[3:], handles[1])):
        assert all(same_color(l.get_color(), handle.get_color()) for l in run_lines)
        assert [l.get_marker() for l in run_lines] == ["None", "None", "o"]      # validation: dashed, dots
    assert not same_color(handles[0].get_color(), handles[1].get_color())
    _same(_xy(lines[0])[1], B_LOSS)
    _same(_xy(lines[3])[1], A_LOSS)


def test_loss_with_ema_zero_draws_the_raw_values_once_with_gaps_where_none_was_logged(two_runs):
    """loss_curves(ema=0): one train line per run holding the logged values, a NaN step left a gap (not
    the previous value carried over) -> A_LOSS itself; the legend says 'train'."""
    fig = plots.loss_curves(["A"], two_runs, x=("step",), ema=0)
    ax = fig.axes[0]
    train, val = ax.get_lines()
    _same(_xy(train)[1], A_LOSS)
    _same(_xy(val)[1], [v for _, v in A_EVALS])
    assert _legend_texts(ax.get_legend()) == ["A", "train", "validation"]


def test_loss_by_tokens_is_step_times_each_runs_own_tokens_per_step(two_runs):
    """loss_curves, tokens panel: x = step x (tokens/s x step time of the run) -> 256 and 100 per step,
    though A's step time varies and B's tokens/s is not a round number; EngFormatter ticks."""
    fig = plots.loss_curves(["A", "B"], two_runs, x=("tokens",), ema=0.5)
    ax = fig.axes[0]
    lines = ax.get_lines()
    for k, (loss, evals, per_step) in enumerate(((A_LOSS, A_EVALS, 256), (B_LOSS, B_EVALS, 100))):
        raw, ema, val = lines[3 * k: 3 * k + 3]
        x = [per_step * s for s in range(1, len(loss) + 1)]
        assert _xy(raw)[0].tolist() == x and _xy(ema)[0].tolist() == x
        assert _xy(val)[0].tolist() == [per_step * s for s, _ in evals]
        _same(_xy(ema)[1], _ema(loss, 0.5))
    assert ax.get_xlabel() == "tokens seen" and ax.get_title() == "by tokens seen"
    assert isinstance(ax.xaxis.get_major_formatter(), EngFormatter)


def test_tokens_per_step_falls_back_to_the_config_and_a_run_without_either_is_left_off(tmp_path):
    """tokens panel: the first step's tokens/s x step time, or without it (no times log, or step 1 timed 0 s:
    NaN tokens/s) batch x accum x context from the config; a later 0 s step changes nothing; a run with
    neither is not on the tokens or time panels, still on the step panel -> the products by hand."""
    log_dir = tmp_path / "logs"
    with pytest.warns(MissingLogWarning):
        _write(log_dir, "notimes", [3.0, 2.0, 2.5], meta=_meta(3, 5, 7), times=False)
        _write(log_dir, "zero", [3.0, 2.0, 2.5], step_times=[0.0, 1.0, 1.0], meta=_meta(2, 3, 11))
        _write(log_dir, "late", [3.0, 2.0, 2.5], step_times=[1.0, 1.0, 0.0], tokens=40, meta=_meta(2, 3, 11))
        _write(log_dir, "bare", [3.0, 2.0], meta={"run": "bare"}, times=False)
        fig = plots.loss_curves(["notimes", "zero", "late", "bare"], log_dir, ema=0.5)
    step_ax, time_ax, tok_ax = fig.axes
    xs = [_xy(l)[0].tolist() for l in tok_ax.get_lines()]
    by_run = [xs[i:i + 3] for i in range(0, len(xs), 3)]          # raw, EMA, validation of each run drawn
    assert len(by_run) == 3
    assert by_run[0][0] == by_run[0][1] == [105.0, 210.0, 315.0]     # 3 x 5 x 7
    assert by_run[1][0] == by_run[1][1] == [66.0, 132.0, 198.0]      # 2 x 3 x 11: step 1 took 0 s
    assert by_run[2][0] == by_run[2][1] == [40.0, 80.0, 120.0]       # step 1: 40 tokens; step 3 took 0 s
    assert len(step_ax.get_lines()) == 4 * 3
    assert len(time_ax.get_lines()) == 2 * 3                          # zero and late have times
    _write(log_dir, "single", [3.0], tokens=64, meta=_meta(2, 3, 11))
    fig = plots.loss_curves(["single"], log_dir, x=("tokens",))
    assert _xy(fig.axes[0].get_lines()[0])[0].tolist() == [64.0]       # one step: its tokens/s x step time
    with pytest.warns(MissingLogWarning, match="no wall-time curves"):                # no run has a times log
        fig = plots.loss_curves(["notimes", "bare"], log_dir, x=("step", "time"))
    assert len(fig.axes[0].get_lines()) == 2 * 3 and not fig.axes[1].get_lines()
    assert fig.axes[1].get_xlabel() == "wall time (s)"


def test_loss_by_wall_time_reads_the_times_log_in_the_unit_of_the_longest_run(two_runs):
    """loss_curves, time panel: x = elapsed seconds at each step (0 at step 0) / 60, since the longest run
    took 210 s (>= 120 s: minutes) -> cumulative step times by hand, B in minutes too."""
    fig = plots.loss_curves(["A", "B"], two_runs, x=("time",), ema=0.5)
    ax = fig.axes[0]
    lines = ax.get_lines()
    for k, (loss, evals, times) in enumerate(((A_LOSS, A_EVALS, A_TIMES), (B_LOSS, B_EVALS, B_TIMES))):
        raw, ema, val = lines[3 * k: 3 * k + 3]
        elapsed = [0.0] + _cumsum(times)            # elapsed[s] after step s
        _same(_xy(raw)[0], [e / 60 for e in elapsed[1:]])
        _same(_xy(ema)[0], [e / 60 for e in elapsed[1:]])
        _same(_xy(val)[0], [elapsed[s] / 60 for s, _ in evals])
        _same(_xy(raw)[1], loss)
    assert ax.get_xlabel() == "wall time (min)" and ax.get_title() == "by wall time"


def test_a_resumed_run_plots_each_step_once_with_elapsed_time_summed_over_segments(tmp_path):
    """A run stopped after step 5, resumed from step 3: steps 1-3 of the first segment then 4-6 of the
    second, evals after step 3 dropped, time continuing from 30 s -> the lists built here by hand."""
    log_dir = tmp_path / "logs"
    _write(log_dir, "R", [4.0, 3.5, 3.2, 9.0, 9.0], step_times=10.0, evals=[(0, 5.0), (4, 9.9)])
    _write(log_dir, "R", [3.0, 2.9, 2.7], step_times=12.0, first=4, resume_step=3, evals=[(6, 2.8)])
    fig = plots.loss_curves(["R"], log_dir, ema=0.5)
    step_ax, time_ax, tok_ax = fig.axes
    loss = [4.0, 3.5, 3.2, 3.0, 2.9, 2.7]
    raw, ema, val = step_ax.get_lines()
    assert _xy(raw)[0].tolist() == [1, 2, 3, 4, 5, 6]
    _same(_xy(raw)[1], loss)
    _same(_xy(ema)[1], _ema(loss, 0.5))
    assert _xy(val)[0].tolist() == [0, 6] and _xy(val)[1].tolist() == [5.0, 2.8]
    raw, _, val = time_ax.get_lines()
    _same(_xy(raw)[0], [10, 20, 30, 42, 54, 66])     # 66 s < 120 s: seconds
    _same(_xy(val)[0], [0, 66])
    assert time_ax.get_xlabel() == "wall time (s)"
    assert _xy(tok_ax.get_lines()[0])[0].tolist() == [256 * s for s in range(1, 7)]


def test_loss_panels_follow_x_and_an_unknown_axis_is_refused(two_runs):
    """loss_curves(x=...): one panel per name in the given order -> titles; 'epoch' is not an axis."""
    fig = plots.loss_curves(["A"], two_runs, x=("tokens", "step"))
    assert [ax.get_title() for ax in fig.axes] == ["by tokens seen", "by optimizer step"]
    with pytest.raises(ValueError, match="x axis 'epoch' is not one of step, time, tokens"):
        plots.loss_curves(["A"], two_runs, x=("step", "epoch"))


def test_loss_axis_is_log_on_request_else_linear_with_bits_per_token_beside(two_runs):
    """log_scale=True: every panel's y axis is log, no second axis; else linear with a right-hand axis in
    bits/token whose limits are the loss limits / ln 2."""
    fig = plots.loss_curves(["A", "B"], two_runs, log_scale=True)
    assert [ax.get_yscale() for ax in fig.axes] == ["log"] * 3
    assert all(not ax.child_axes for ax in fig.axes)
    fig = plots.loss_curves(["A", "B"], two_runs)
    fig.canvas.draw()
    for ax in fig.axes:
        assert ax.get_yscale() == "linear"
        (bits,) = ax.child_axes
        assert bits.get_ylabel() == "bits/token"
        _same(bits.get_ylim(), [y / LN2 for y in ax.get_ylim()])
        ticks = [b for b in bits.get_yticks() if bits.get_ylim()[0] <= b <= bits.get_ylim()[1]]
        assert len(ticks) >= 2
        for b in ticks:                                      # each bits tick at the height of its loss, b x ln 2
            assert bits.transData.transform((0, b))[1] == pytest.approx(ax.transData.transform((0, b * LN2))[1])


def test_loss_with_no_run_logged_is_none(tmp_path):
    """loss_curves: nothing to draw (every run missing) -> None, each missing run warned about."""
    with pytest.warns(MissingLogWarning, match="'gone'"):
        assert plots.loss_curves(["gone"], tmp_path) is None


# ----------------------------------------------------------------------------- learning rate and gradient norm

@pytest.fixture
def lr_runs(tmp_path):
    log_dir = tmp_path / "logs"
    _write(log_dir, "a", [3.0] * 5, lr=[1e-4, 5e-4, 1e-3, 7e-4, 2e-4], grad=[2.0, 0.4, NAN, 1.5, 0.3],
           meta=_meta(clip=1.0))
    _write(log_dir, "b", [3.0] * 3, lr=[3e-4, 2e-4, 1e-4], grad=[0.9, 0.7, 1.2], meta=_meta(clip=0.5))
    _write(log_dir, "c", [3.0] * 2, lr=[1e-3, 1e-3], grad=[0.1, 0.2], meta=_meta(clip=1.0))
    _write(log_dir, "d", [3.0] * 2, lr=[1e-3, 1e-3], grad=[0.1, 0.2], meta=_meta(clip=None))
    return log_dir


def test_lr_and_grad_norm_per_step_of_each_run(lr_runs):
    """lr_grad_norm: left, each run's lr by step; right, its raw gradient norm and EMA, then one dotted
    line per distinct grad clip (1.0 twice, 0.5, none) -> the values written, the closed-form EMA."""
    with pytest.warns(MissingLogWarning):
        fig = plots.lr_grad_norm(["a", "ghost", "b"], lr_runs, ema=0.7)
    lr_ax, g_ax = fig.axes
    a_lr, b_lr = lr_ax.get_lines()
    assert _xy(a_lr)[0].tolist() == [1, 2, 3, 4, 5] and _xy(b_lr)[0].tolist() == [1, 2, 3]
    _same(_xy(a_lr)[1], [1e-4, 5e-4, 1e-3, 7e-4, 2e-4])
    _same(_xy(b_lr)[1], [3e-4, 2e-4, 1e-4])
    a_raw, a_ema, b_raw, b_ema, *limits = g_ax.get_lines()
    _same(_xy(a_raw)[1], [2.0, 0.4, NAN, 1.5, 0.3])
    _same(_xy(a_ema)[1], _ema([2.0, 0.4, NAN, 1.5, 0.3], 0.7))
    _same(_xy(b_raw)[1], [0.9, 0.7, 1.2])
    _same(_xy(b_ema)[1], _ema([0.9, 0.7, 1.2], 0.7))
    assert _xy(b_ema)[0].tolist() == [1, 2, 3]
    assert sorted(_xy(l)[1][0] for l in limits) == [0.5, 1.0]
    assert all(l.get_linestyle() == ":" and _xy(l)[1].tolist() == [_xy(l)[1][0]] * 2 for l in limits)
    for l, handle in zip((a_lr, b_lr), lr_ax.get_legend().legend_handles):
        assert same_color(l.get_color(), handle.get_color())
    assert same_color(a_lr.get_color(), a_ema.get_color()) and same_color(b_lr.get_color(), b_raw.get_color())
    assert _legend_texts(lr_ax.get_legend()) == ["a", "b"]
    assert _legend_texts(g_ax.get_legend()) == ["EMA 0.7", "grad clip"]
    assert (lr_ax.get_xlabel(), lr_ax.get_ylabel(), lr_ax.get_title()) == (
        "optimizer step", "learning rate", "learning rate")
    assert (g_ax.get_xlabel(), g_ax.get_ylabel(), g_ax.get_title()) == (
        "optimizer step", "global gradient norm", "gradient norm (before clipping)")
    assert fig.get_suptitle() == "Learning rate and gradient norm"


def test_grad_norm_limit_lines_are_one_per_distinct_value_and_none_without(lr_runs):
    """lr_grad_norm: runs a and c share grad_clip 1.0 -> one line at 1.0; run d has none -> no line and
    no 'grad clip' legend entry; ema=0 -> one raw line per run, legend 'raw'."""
    fig = plots.lr_grad_norm(["a", "c"], lr_runs)
    assert [_xy(l)[1].tolist() for l in fig.axes[1].get_lines()[4:]] == [[1.0, 1.0]]
    fig = plots.lr_grad_norm(["d"], lr_runs, ema=0)
    g_ax = fig.axes[1]
    (raw,) = g_ax.get_lines()
    _same(_xy(raw)[1], [0.1, 0.2])
    assert _legend_texts(g_ax.get_legend()) == ["raw"]


def test_learning_rates_read_as_multiples_of_a_power_of_ten_on_their_axis_only(tmp_path):
    """The lr axis puts the power of ten once above it (1e-3) and labels ticks 0.0 .. 1.2; steps and gradient
    norms keep plain numbers; grad clip lines are grey."""
    log_dir = tmp_path / "logs"
    lr = [1e-4 + 1e-3 * (i % 7) / 6 for i in range(150)]
    _write(log_dir, "a", [3.0] * 150, lr=lr, grad=[1.0 + i for i in range(150)], meta=_meta(clip=50.0))
    fig = plots.lr_grad_norm(["a"], log_dir, log_scale=False)
    fig.canvas.draw()
    lr_ax, g_ax = fig.axes
    assert lr_ax.yaxis.get_offset_text().get_text() == "1e\u22123"
    assert [t.get_text() for t in lr_ax.get_yticklabels()][:3] == ["0.0", "0.2", "0.4"]
    assert [ax.xaxis.get_offset_text().get_text() for ax in fig.axes] == ["", ""]
    assert g_ax.yaxis.get_offset_text().get_text() == "" and "100" in [t.get_text() for t in g_ax.get_yticklabels()]
    [clip] = g_ax.get_lines()[2:]
    assert _xy(clip)[1].tolist() == [50.0, 50.0] and same_color(clip.get_color(), "0.3")


def test_a_log_whose_meta_names_no_grad_clip_draws_no_clip_line(tmp_path):
    """A log without a config in its meta (or without its train section) plots, without a clip line."""
    log_dir = tmp_path / "logs"
    _write(log_dir, "bare", [3.0] * 2, meta={})
    _write(log_dir, "untrained", [3.0] * 2, meta={"config": {}})
    fig = plots.lr_grad_norm(["bare", "untrained"], log_dir)
    assert len(fig.axes[1].get_lines()) == 4 and _legend_texts(fig.axes[1].get_legend()) == ["EMA 0.9"]


def test_grad_norm_axis_is_log_by_default_and_linear_on_request(lr_runs):
    """lr_grad_norm: the gradient norm panel is on a log axis unless log_scale=False; the lr never is."""
    fig = plots.lr_grad_norm(["a"], lr_runs)
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "log"]
    fig = plots.lr_grad_norm(["a"], lr_runs, log_scale=False)
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "linear"]
    with pytest.warns(MissingLogWarning):
        assert plots.lr_grad_norm(["gone"], lr_runs) is None


# ----------------------------------------------------------------------------- TID

TID_DROP = [NAN, 0.25, 0.1, 0.3, 0.2]             # TID from step 2: the stats are padded with NaN before
TID_SCORE = [0.004, 0.002, 0.010, 0.003]
TID_REST = [0.020, 0.012, 0.016, 0.030]
BASE_STEP_TIMES = [0.010, 0.030, 0.020, 0.5]


def _tid_stats(method="entropy"):
    rows = [{}]
    for d, s, r in zip(TID_DROP[1:], TID_SCORE, TID_REST):
        row = {"tid_drop_ratio": d, "tid_target_ratio": 0.2, "tid_score_time": s, "tid_step_time_without_scoring": r}
        if method:
            row["tid_method"] = method
        rows.append(row)
    return rows


@pytest.fixture
def tid_runs(tmp_path):
    log_dir = tmp_path / "logs"
    _write(log_dir, "base", [3.0] * 4, step_times=BASE_STEP_TIMES)
    _write(log_dir, "tid", [3.0] * 5, stats=_tid_stats())
    _write(log_dir, "plain", [3.0] * 5, stats=_tid_stats(method=None), times=False)
    _write(log_dir, "notimes", [3.0] * 2, times=False)
    return log_dir


def _median_ms(xs):
    return 1e3 * statistics.median([x for x in xs if math.isfinite(x)])


def test_tid_drop_ratio_curves_only_for_runs_that_logged_it(tid_runs):
    """tid_overhead, left: per TID run the raw drop ratio, its EMA and the target (dashed); the run
    without TID draws nothing there -> TID_DROP, the closed-form EMA, 0.2 from step 2 (NaN before)."""
    with pytest.warns(MissingLogWarning):
        fig = plots.tid_overhead(["base", "tid", "ghost", "plain"], tid_runs, ema=0.6)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 6
    for raw, ema, target in (lines[:3], lines[3:]):
        assert _xy(raw)[0].tolist() == [1, 2, 3, 4, 5] and _xy(target)[0].tolist() == [1, 2, 3, 4, 5]
        assert same_color(target.get_color(), raw.get_color()) and same_color(ema.get_color(), raw.get_color())
        _same(_xy(raw)[1], TID_DROP)
        _same(_xy(ema)[1], _ema(TID_DROP, 0.6))
        _same(_xy(target)[1], [NAN, 0.2, 0.2, 0.2, 0.2])
        assert target.get_linestyle() == "--" and ema.get_linestyle() == "-"
    legend = ax.get_legend()
    assert _legend_texts(legend) == ["tid", "plain", "realised (EMA 0.6)", "target"]
    assert same_color(legend.legend_handles[0].get_color(), lines[0].get_color())
    assert same_color(legend.legend_handles[1].get_color(), lines[3].get_color())
    assert not same_color(lines[0].get_color(), lines[3].get_color())
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "optimizer step", "dropped / droppable tokens", "drop ratio")
    bottom, top = ax.get_ylim()   # 1.2 x matplotlib's top (the highest ratio plus a 5% margin): legend room
    assert bottom == 0 and 1.2 * 0.3 <= top <= 1.2 * 0.3 * 1.1 and len(fig.axes) == 2
    assert fig.get_suptitle() == "Token-importance dropout: drop ratio and scoring cost"


def test_tid_bars_split_median_step_time_into_scoring_and_the_rest(tid_runs):
    """tid_overhead, right: per run with TID a bar of the median step time without scoring plus the
    median scoring time stacked on it, per run without TID (with times) its median step time
    -> statistics.median in ms; labels, annotations and x limit from those numbers."""
    with pytest.warns(MissingLogWarning):
        fig = plots.tid_overhead(["base", "notimes", "tid", "plain"], tid_runs, ema=0)
    ax = fig.axes[1]
    base, rest, score = _median_ms(BASE_STEP_TIMES), _median_ms(TID_REST), _median_ms(TID_SCORE)
    assert (base, rest, score) == pytest.approx((25.0, 18.0, 3.5))
    bars = [(p.get_x(), p.get_width(), p.get_y() + p.get_height() / 2) for p in ax.patches]
    expected = [(0, base, 0), (0, rest, 1), (rest, score, 1), (0, rest, 2), (rest, score, 2)]
    assert [v for bar in bars for v in bar] == pytest.approx([v for bar in expected for v in bar])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["base\n(no TID)", "tid\n(entropy)", "plain\n(TID)"]
    assert list(ax.get_yticks()) == [0, 1, 2]
    total = rest + score
    note = f"  {total:.1f} ms (+{score / rest:.0%} scoring)"
    assert [t.get_text() for t in ax.texts] == ["  25.0 ms", note, note] and note == "  21.5 ms (+19% scoring)"
    assert [v for t in ax.texts for v in t.get_position()] == pytest.approx([base, 0, total, 1, total, 2])
    assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] >= 1.4 * base    # every bar whole, room for its note
    colours = [matplotlib.colors.to_rgb(p.get_facecolor()) for p in ax.patches]   # each run's curve colour
    assert colours == [matplotlib.colors.to_rgb(f"C{i}") for i in (0, 2, 2, 3, 3)]
    assert [p.get_hatch() for p in ax.patches] == [None, None, "//", None, "//"]   # the legend's scoring pass
    assert [h.get_hatch() for h in ax.get_legend().get_patches()] == [None, "//"]
    alone = plots.tid_overhead(["tid"], tid_runs, ema=0).axes[1]      # the longest bar is a TID one
    assert alone.get_xlim()[1] >= 1.4 * (rest + score)
    assert ax.yaxis_inverted()
    assert (ax.get_xlabel(), ax.get_title()) == ("median ms per optimizer step", "scoring overhead")
    assert _legend_texts(ax.get_legend()) == ["training step", "scoring pass"]
    assert _legend_texts(fig.axes[0].get_legend()) == ["tid", "plain", "realised", "target"]


def test_tid_figure_is_none_without_a_tid_run(tid_runs):
    """tid_overhead: no run logged tid_drop_ratio -> None."""
    assert plots.tid_overhead(["base"], tid_runs) is None


# ----------------------------------------------------------------------------- MoE load

MOE_LOAD = {  # layer -> per step, per expert: routed load (sums to top_k = 2 but at step 3, which overflowed)
    0: [[1.0, 0.6, 0.4], [0.2, 0.8, 1.0], [0.9, 0.5, 0.4], [0.7, 0.7, 0.6]],
    1: [[0.5, 1.0, 0.5], [1.5, 0.3, 0.2], [0.2, 0.2, 1.4], [0.6, 0.9, 0.5]],
}
MOE_DROPPED = [0.0, 0.05, 0.2, 0.01]
WIDE_EXPERTS = 12


def _wide_load(step, e):
    return (e + 1) + step * (e % 3)


@pytest.fixture
def moe_runs(tmp_path):
    log_dir = tmp_path / "logs"
    moe_stats = []
    for s in range(4):  # layer 1 logged before layer 0: panels still go by layer number
        row = {f"moe_load_l{l}_e{e}": MOE_LOAD[l][s][e] for l in (1, 0) for e in range(3)}
        moe_stats.append({**row, "moe_dropped": MOE_DROPPED[s]})
    _write(log_dir, "moe", [3.0] * 4, stats=moe_stats)
    wide = [{f"moe_load_l0_e{e}": _wide_load(s, e) for e in reversed(range(WIDE_EXPERTS))} for s in range(3)]
    _write(log_dir, "wide", [3.0] * 3, stats=wide)
    _write(log_dir, "dense", [3.0] * 3)
    return log_dir


def _shares(rows):
    """Each step's loads over their sum."""
    return [[x / sum(row) for x in row] for row in rows]


def test_moe_each_experts_share_per_layer_smoothed_with_a_balanced_line(moe_runs):
    """moe_load: one row per MoE run (dense and missing runs left out); per layer (by number) each expert's
    load / the layer's total at that step, smoothed, in expert order (e10 after e9), and a line at
    1 / experts -> the shares and closed-form EMA by hand."""
    with pytest.warns(MissingLogWarning):
        fig = plots.moe_load(["dense", "moe", "ghost", "wide"], moe_runs, ema=0.5)
    assert len(fig.axes) == 6                          # 2 runs x (2 layers + dropped)
    (l0, l1, _), (w0, _, _) = fig.axes[:3], fig.axes[3:]
    for ax, layer in ((l0, 0), (l1, 1)):
        shares = _shares(MOE_LOAD[layer])
        *experts, balanced = ax.get_lines()
        assert [l.get_label() for l in experts] == ["expert 0", "expert 1", "expert 2"]
        for e, line in enumerate(experts):
            assert _xy(line)[0].tolist() == [1, 2, 3, 4]
            _same(_xy(line)[1], _ema([row[e] for row in shares], 0.5))
        assert balanced.get_label() == "balanced" and _xy(balanced)[1].tolist() == [1 / 3, 1 / 3]
        assert ax.get_title() == f"layer {layer}" and ax.get_xlabel() == "optimizer step"
        assert ax.get_ylim()[0] == 0
    assert l0.get_ylabel() == "moe\nshare of routed tokens" and w0.get_ylabel() == "wide\nshare of routed tokens"
    wide_shares = _shares([[_wide_load(s, e) for e in range(WIDE_EXPERTS)] for s in range(3)])
    *experts, balanced = w0.get_lines()
    assert [l.get_label() for l in experts] == [f"expert {e}" for e in range(WIDE_EXPERTS)]
    for e, line in enumerate(experts):
        _same(_xy(line)[1], _ema([row[e] for row in wide_shares], 0.5))
    assert _xy(balanced)[1].tolist() == [1 / 12, 1 / 12]
    assert [ax.get_visible() for ax in fig.axes] == [True, True, True, True, False, True]
    assert _legend_texts(fig.legends[0]) == [f"expert {e}" for e in range(WIDE_EXPERTS)] + ["balanced"]
    assert fig.get_suptitle() == "MoE expert load (EMA 0.5)"


def test_moe_dropped_fraction_panel(moe_runs):
    """moe_load, last panel of a row: the fraction dropped over capacity, raw and EMA -> MOE_DROPPED; a run
    that logged none gets an empty panel with the same labels; ema=0 -> one raw line, plain title."""
    fig = plots.moe_load(["moe", "wide"], moe_runs, ema=0.5)
    drop, w_drop = fig.axes[2], fig.axes[5]
    raw, ema = drop.get_lines()
    _same(_xy(raw)[1], MOE_DROPPED)
    _same(_xy(ema)[1], _ema(MOE_DROPPED, 0.5))
    assert _xy(ema)[0].tolist() == [1, 2, 3, 4]
    assert not w_drop.get_lines()
    for ax in (drop, w_drop):
        assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
            "dropped over capacity", "optimizer step", "fraction of tokens")
    fig = plots.moe_load(["moe"], moe_runs, ema=0)
    assert len(fig.axes) == 3 and fig.get_suptitle() == "MoE expert load"
    (raw,) = fig.axes[2].get_lines()
    _same(_xy(raw)[1], MOE_DROPPED)
    _same(_xy(fig.axes[0].get_lines()[1])[1], [row[1] for row in _shares(MOE_LOAD[0])])
    assert _legend_texts(fig.legends[0]) == ["expert 0", "expert 1", "expert 2", "balanced"]
    assert plots.moe_load(["dense"], moe_runs) is None


def test_moe_experts_keep_one_colour_in_every_panel_for_the_shared_legend(moe_runs):
    """The legend is drawn once (from the row with the most experts, wherever it is), so expert e has the same
    colour in every panel: tab10 up to 10 experts, tab20 past; the balanced line is dashed grey, the dropped
    fraction red (C3)."""
    for n in (10, 11):
        _write(moe_runs, f"e{n}", [3.0] * 2, stats=[{f"moe_load_l0_e{e}": e + 1 + s for e in range(n)} for s in (0, 1)])
    fig = plots.moe_load(["e10", "e11", "moe"], moe_runs)
    for ax, n, cmap in ((fig.axes[0], 10, plt.cm.tab10), (fig.axes[3], 11, plt.cm.tab20),     # 3 x (2 layers
                        (fig.axes[6], 3, plt.cm.tab10), (fig.axes[7], 3, plt.cm.tab10)):      # + dropped)
        *experts, balanced = ax.get_lines()
        assert len(experts) == n and all(same_color(line.get_color(), cmap(e)) for e, line in enumerate(experts))
        assert same_color(balanced.get_color(), "0.3") and balanced.get_linestyle() == "--"
    assert fig.axes[8].get_lines() and all(same_color(line.get_color(), "C3") for line in fig.axes[8].get_lines())
    assert _legend_texts(fig.legends[0]) == [f"expert {e}" for e in range(11)] + ["balanced"]
    fig = plots.moe_load(["wide", "moe"], moe_runs)                  # the widest row first: still its legend
    assert _legend_texts(fig.legends[0]) == [f"expert {e}" for e in range(WIDE_EXPERTS)] + ["balanced"]


# ----------------------------------------------------------------------------- perplexity

P_ROWS = [4.0, 9.0, 20.0, 5.5, 100.0, 7.0]
Q_ROWS = [2.0, 3.0, 3.5, 50.0, 8.0]


@pytest.fixture
def ppl_logs(tmp_path):
    d = tmp_path / "logs" / "perplexity-losses"
    d.mkdir(parents=True)
    for run, rows in (("p", P_ROWS), ("q", Q_ROWS), ("bad", [NAN, -1.0, 0.0])):
        (d / f"{run}.pkl").write_bytes(pickle.dumps(rows))
    (d / "p.json").write_text(json.dumps({"corpus_ppl": 12.34}))
    return tmp_path / "logs"


def _hist(polygon):
    """(bin edges, counts) of a step histogram's outline."""
    xy = polygon.get_xy()
    return xy[0::2, 0], xy[1::2, 1][:len(xy) // 2 - 1]


def test_perplexity_histograms_share_log_spaced_bins_over_every_run(ppl_logs):
    """perplexity, left: one step histogram per run with rows (a run without rows or logs left out) on 40
    log-spaced edges from the smallest row of any run to just above the largest -> counts by a loop."""
    with pytest.warns(MissingLogWarning):
        fig = plots.perplexity(["ghost", "p", "bad", "q"], ppl_logs)
    hist_ax, box_ax = fig.axes
    p_hist, q_hist = hist_ax.patches
    for poly, rows in ((p_hist, P_ROWS), (q_hist, Q_ROWS)):
        edges, counts = _hist(poly)
        assert len(edges) == 40 and edges[0] == 2.0 and edges[-1] == pytest.approx(100.0 * 1.0001)
        ratios = edges[1:] / edges[:-1]
        assert np.allclose(ratios, ratios[0])
        by_loop = [sum(lo <= v < hi for v in rows) for lo, hi in zip(edges[:-1], edges[1:])]
        assert counts.tolist() == by_loop and sum(by_loop) == len(rows)
    assert not same_color(p_hist.get_edgecolor(), q_hist.get_edgecolor())
    assert hist_ax.get_xscale() == "log"
    assert (hist_ax.get_xlabel(), hist_ax.get_ylabel(), hist_ax.get_title()) == (
        "perplexity of a row", "rows", "distribution")
    assert fig.get_suptitle() == "Per-row perplexity on held-out rows"


def test_perplexity_marks_mean_and_median_and_names_them_in_the_legend(ppl_logs):
    """perplexity: per run a dashed line at the mean and a dotted one at the median, in its colour; the
    legend names rows, mean, median (and the corpus perplexity when summarised) -> statistics by hand."""
    with pytest.warns(MissingLogWarning):
        fig = plots.perplexity(["ghost", "p", "bad", "q"], ppl_logs)
    hist_ax = fig.axes[0]
    p_mean, p_median, q_mean, q_median = hist_ax.get_lines()
    for mean, median, hist, rows in ((p_mean, p_median, hist_ax.patches[0], P_ROWS),
                                     (q_mean, q_median, hist_ax.patches[1], Q_ROWS)):
        assert _xy(mean)[0].tolist() == [statistics.mean(rows)] * 2 and mean.get_linestyle() == "--"
        assert _xy(median)[0].tolist() == [statistics.median(rows)] * 2 and median.get_linestyle() == ":"
        assert same_color(mean.get_color(), hist.get_edgecolor()) and same_color(median.get_color(), mean.get_color())
    legend = fig.legends[0]
    p_label = f"p: 6 rows, mean {statistics.mean(P_ROWS):.1f}, median {statistics.median(P_ROWS):.1f}, corpus 12.3"
    q_label = f"q: 5 rows, mean {statistics.mean(Q_ROWS):.1f}, median {statistics.median(Q_ROWS):.1f}"
    assert _legend_texts(legend) == [p_label, q_label, "mean", "median"]
    assert p_label == "p: 6 rows, mean 24.2, median 8.0, corpus 12.3"
    assert [h.get_linestyle() for h in legend.legend_handles[2:]] == ["--", ":"]
    assert all(same_color(h.get_color(), "0.3") for h in legend.legend_handles[2:])  # grey: no run's colour


def test_perplexity_box_per_run_with_its_median_and_mean(ppl_logs):
    """perplexity, right: a box per run with rows at x = 1, 2 labelled by run, on a log axis, its median
    line and mean marker at the hand-computed values."""
    with pytest.warns(MissingLogWarning):
        fig = plots.perplexity(["ghost", "p", "bad", "q"], ppl_logs)
    ax = fig.axes[1]
    assert list(ax.get_xticks()) == [1, 2] and [t.get_text() for t in ax.get_xticklabels()] == ["p", "q"]
    assert ax.get_yscale() == "log"
    for pos, rows in ((1, P_ROWS), (2, Q_ROWS)):
        at = [l for l in ax.get_lines() if abs(np.mean(_xy(l)[0]) - pos) < 0.01]
        flat = {_xy(l)[1][0] for l in at if len(_xy(l)[1]) == 2 and _xy(l)[1][0] == _xy(l)[1][1]}
        points = [_xy(l)[1][0] for l in at if len(_xy(l)[1]) == 1]      # the mean marker and any fliers
        assert statistics.median(rows) in flat
        assert any(y == pytest.approx(statistics.mean(rows), rel=1e-12) for y in points)
    assert (ax.get_ylabel(), ax.get_title()) == ("perplexity of a row", "box: median line, mean diamond")
    means = [l for l in ax.get_lines() if l.get_marker() == "D"]                # as the title says: diamonds
    assert [_xy(l)[1][0] for l in means] == pytest.approx([statistics.mean(P_ROWS), statistics.mean(Q_ROWS)])
    assert all(same_color(l.get_markerfacecolor(), "white") for l in means)
    for pos, rows, hist in ((1, P_ROWS, fig.axes[0].patches[0]), (2, Q_ROWS, fig.axes[0].patches[1])):
        [median] = [l for l in ax.get_lines() if _xy(l)[1].tolist() == [statistics.median(rows)] * 2
                    and abs(np.mean(_xy(l)[0]) - pos) < 0.01]
        assert same_color(median.get_color(), hist.get_edgecolor())                # the run's colour


def test_perplexity_with_no_rows_anywhere_is_none(ppl_logs):
    """perplexity: only runs without usable rows -> None; a single name is taken as one run."""
    with pytest.warns(MissingLogWarning):
        assert plots.perplexity(["bad", "ghost"], ppl_logs) is None
    fig = plots.perplexity("q", ppl_logs)
    assert len(fig.axes[0].patches) == 1 and [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["q"]


# ----------------------------------------------------------------------------- training time

def test_training_time_bars_are_total_wall_time_in_the_unit_of_the_longest(tmp_path):
    """training_time: a bar per run with a times log (others left out, colours kept by position) of its
    total elapsed / 60 (longest 150 s: minutes), noted with median tokens/s and steps -> by hand."""
    log_dir = tmp_path / "logs"
    _write(log_dir, "a", [3.0] * 3, step_times=[50.0, 40.0, 60.0], tokens=1000)
    _write(log_dir, "b", [3.0] * 4, step_times=[5.0, 10.0, 0.0, 15.0], tokens=600)
    _write(log_dir, "c", [3.0] * 2, times=False)
    with pytest.warns(MissingLogWarning):
        fig = plots.training_time(["a", "ghost", "c", "b"], log_dir)
    (ax,) = fig.axes
    assert [(p.get_x(), p.get_width()) for p in ax.patches] == [(0, pytest.approx(2.5)), (0, pytest.approx(0.5))]
    assert [p.get_y() + p.get_height() / 2 for p in ax.patches] == [0, 1]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    a_tok = statistics.median([1000 / 50, 1000 / 40, 1000 / 60])
    b_tok = statistics.median([600 / 5, 600 / 10, 600 / 15])      # the 0 s step logged NaN tokens/s
    assert [t.get_text() for t in ax.texts] == [f"  2.5 min, {a_tok:,.0f} tok/s, 3 steps",
                                                f"  0.5 min, {b_tok:,.0f} tok/s, 4 steps"]
    assert [t.get_position() for t in ax.texts] == [(2.5, 0), (0.5, 1)]
    assert [t.get_text() for t in ax.texts][1] == "  0.5 min, 60 tok/s, 4 steps"
    assert ax.get_xlabel() == "wall time (min)" and ax.get_xlim()[0] == 0 and ax.get_xlim()[1] > 2.5
    with pytest.warns(MissingLogWarning):   # each run's bar in the colour of its curves in the loss figure
        loss = plots.loss_curves(["a", "ghost", "c", "b"], log_dir, x=("step",))
    a_colour, b_colour = loss.axes[0].get_lines()[0].get_color(), loss.axes[0].get_lines()[6].get_color()
    assert same_color(ax.patches[0].get_facecolor(), a_colour) and same_color(ax.patches[1].get_facecolor(), b_colour)
    assert ax.yaxis_inverted() and ax.get_title() == "Training time per run"


@pytest.mark.parametrize("seconds, unit, div", [(119.5, "s", 1), (120.0, "min", 60), (7199.0, "min", 60),
                                                (7200.0, "h", 3600)])
def test_wall_time_unit_is_seconds_under_two_minutes_minutes_under_two_hours(tmp_path, seconds, unit, div):
    """training_time and loss_curves: the unit of the longest run, s < 120 s <= min < 7200 s <= h."""
    log_dir = tmp_path / "logs"
    _write(log_dir, "r", [3.0, 2.0], step_times=[seconds / 2, seconds / 2])
    fig = plots.training_time(["r"], log_dir)
    assert fig.axes[0].get_xlabel() == f"wall time ({unit})"
    assert fig.axes[0].patches[0].get_width() == pytest.approx(seconds / div)
    fig = plots.loss_curves(["r"], log_dir, x=("time",))
    assert fig.axes[0].get_xlabel() == f"wall time ({unit})"
    _same(_xy(fig.axes[0].get_lines()[0])[0], [seconds / 2 / div, seconds / div])


def test_training_time_without_any_times_log_is_none(tmp_path):
    """training_time: no run with a times log -> None."""
    with pytest.warns(MissingLogWarning):
        _write(tmp_path / "logs", "c", [3.0], times=False)
        assert plots.training_time(["c"], tmp_path / "logs") is None


# ----------------------------------------------------------------------------- files, plot_all, the command line

@pytest.fixture
def all_logs(tmp_path):
    log_dir = tmp_path / "logs"
    _write(log_dir, "A", A_LOSS, step_times=A_TIMES, evals=A_EVALS)
    _write(log_dir, "tid", [3.0] * 5, stats=_tid_stats())
    moe = [{f"moe_load_l0_e{e}": MOE_LOAD[0][s][e] for e in range(3)} for s in range(4)]
    _write(log_dir, "moe", [3.0] * 4, stats=moe)
    d = log_dir / "perplexity-losses"
    d.mkdir()
    for run, rows in (("A", P_ROWS), ("tid", Q_ROWS), ("moe", [5.0, 6.0])):
        (d / f"{run}.pkl").write_bytes(pickle.dumps(rows))
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    speed = [{"decoder": "greedy", "kv_cache": True, "batch": 1, "tokens_per_s": 50.0}]
    (results / "generation_toy.json").write_text(json.dumps({"speed": speed, "quality": []}))
    (results / "other_toy.json").write_text(json.dumps({"speed": speed, "quality": []}))
    return log_dir


FILES = {"loss": plots.loss_curves, "lr_grad_norm": plots.lr_grad_norm, "tid": plots.tid_overhead,
         "moe_load": plots.moe_load, "perplexity": plots.perplexity, "training_time": plots.training_time}


@pytest.mark.parametrize("name", list(FILES))
def test_each_figure_saves_under_its_name_in_every_format_and_closes(all_logs, tmp_path, name):
    """With out_dir: out_dir/<name>.<format> for each format (a PNG and an SVG file), returned in that
    order, PNG alone by default, and the figure closed."""
    before = plt.get_fignums()
    out = tmp_path / "out" / "nested"
    paths = FILES[name](["A", "tid", "moe"], all_logs, out_dir=out, formats=("png", "svg"))
    assert paths == [out / f"{name}.png", out / f"{name}.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in paths[1].read_bytes()[:2000]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert plt.get_fignums() == before
    assert FILES[name](["A", "tid", "moe"], all_logs, out_dir=tmp_path / "png") == [tmp_path / "png" / f"{name}.png"]
    assert plt.get_fignums() == before


@pytest.mark.parametrize("name", list(FILES))
def test_each_figure_takes_one_run_name_as_a_list_of_it(all_logs, tmp_path, name):
    """A str is one run ("moe", not the runs "m", "o", "e"): drawn and saved as for ["moe"]."""
    run = "tid" if name == "tid" else "moe"                          # a run each figure can draw
    one = FILES[name](run, all_logs, out_dir=tmp_path / "one", formats=("svg",))
    listed = FILES[name]([run], all_logs, out_dir=tmp_path / "listed", formats=("svg",))
    assert one == [tmp_path / "one" / f"{name}.svg"] and listed == [tmp_path / "listed" / f"{name}.svg"]


def test_figure_legends_drawn_outside_the_panels_cover_none_of_them(moe_runs, all_logs):
    """The shared legends of moe_load (right) and perplexity (below) sit outside every panel."""
    for fig, side in ((plots.moe_load(["wide", "moe"], moe_runs), "right"),
                      (plots.perplexity(["A", "tid", "moe"], all_logs), "below")):
        fig.canvas.draw()
        legend = fig.legends[0].get_window_extent()
        for ax in fig.axes:
            if ax.get_visible():
                box = ax.get_tightbbox()
                assert not legend.overlaps(box)
                assert legend.x0 >= box.x1 if side == "right" else legend.y1 <= box.y0


def test_plot_all_returns_every_drawable_figure_with_the_options_passed_on(all_logs, tmp_path):
    """plot_all without out_dir: {name: Figure} for each figure the logs allow, the benchmark under its
    file stem; ema and log_scale reach the figures -> legends and scales read back."""
    bench = tmp_path / "benchmarks" / "results" / "generation_toy.json"
    figs = plots.plot_all(["A", "tid", "moe"], all_logs, bench=[bench], ema=0.3, log_scale=True)
    assert list(figs) == ["loss", "lr_grad_norm", "tid", "moe_load", "perplexity", "training_time",
                          "generation_toy"]
    loss = figs["loss"]
    assert len(loss.axes) == 3 and [ax.get_yscale() for ax in loss.axes] == ["log"] * 3
    assert _legend_texts(loss.axes[0].get_legend()) == ["A", "tid", "moe", "train (EMA 0.3)", "validation"]
    _same(_xy(loss.axes[0].get_lines()[1])[1], _ema(A_LOSS, 0.3))
    assert _legend_texts(figs["lr_grad_norm"].axes[1].get_legend())[0] == "EMA 0.3"
    assert figs["lr_grad_norm"].axes[1].get_yscale() == "log"
    assert _legend_texts(figs["tid"].axes[0].get_legend())[1] == "realised (EMA 0.3)"
    assert figs["moe_load"].get_suptitle() == "MoE expert load (EMA 0.3)"
    assert [t.get_text() for t in figs["perplexity"].axes[1].get_xticklabels()] == ["A", "tid", "moe"]
    assert [t.get_text() for t in figs["training_time"].axes[0].get_yticklabels()] == ["A", "tid", "moe"]
    figs = plots.plot_all(["A"], all_logs)
    assert list(figs) == ["loss", "lr_grad_norm", "perplexity", "training_time"]
    assert figs["loss"].axes[0].get_yscale() == "linear"
    assert _legend_texts(figs["loss"].axes[0].get_legend())[1] == "train (EMA 0.9)"


def test_plot_all_with_out_dir_returns_the_saved_paths(all_logs, tmp_path):
    """plot_all(out_dir, formats): {name: [out/name.fmt, ...]}, the benchmark's too."""
    out = tmp_path / "figs"
    bench = tmp_path / "benchmarks" / "results" / "generation_toy.json"
    saved = plots.plot_all(["moe"], all_logs, out, ("svg",), bench=[bench])
    assert plots.plot_all(["moe"], all_logs, tmp_path / "png")["loss"] == [tmp_path / "png" / "loss.png"]
    assert saved == {n: [out / f"{n}.svg"] for n in ("loss", "lr_grad_norm", "moe_load", "perplexity",
                                                     "training_time", "generation_toy")}
    assert all(p.is_file() for paths in saved.values() for p in paths)


def test_main_writes_the_figures_with_its_defaults_and_reports_them(all_logs, tmp_path, monkeypatch, capsys):
    """main: --log-dir logs and --out figures by default (from the working directory); PNG only unless
    --svg; benchmark JSONs by default = benchmarks/results/generation_*.json of the repo; one printed
    line per figure; exit 0."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plots, "ROOT", tmp_path)
    assert plots.main(["--runs", "A", "moe"]) == 0
    names = {"loss", "lr_grad_norm", "moe_load", "perplexity", "training_time", "generation_toy"}
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {f"{n}.png" for n in names}
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in out) == sorted(names)
    assert any(line.split() == ["loss", "figures/loss.png"] for line in out)


def test_main_passes_ema_log_scale_svg_and_the_json_list_through(all_logs, tmp_path, monkeypatch, capsys):
    """main --ema/--log-scale/--svg/--bench: the same as plot_all with those values -> loss figure read
    back from plot_all, captured; --bench alone: no benchmark figure."""
    seen = {}
    real = plots.plot_all
    with pytest.raises(SystemExit):   # --runs is required
        plots.main(["--log-dir", str(all_logs)])

    def spy(*args):
        seen["args"] = args
        return real(*args)
    monkeypatch.setattr(plots, "plot_all", spy)
    out = tmp_path / "o"
    assert plots.main(["--runs", "A", "--log-dir", str(all_logs), "--out", str(out), "--ema", "0.25",
                       "--log-scale", "--svg", "--bench"]) == 0
    assert seen["args"] == (["A"], str(all_logs), str(out), ("png", "svg"), [], 0.25, True)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["loss", str(out / "loss.png"), str(out / "loss.svg")]
    assert {p.name for p in out.iterdir()} == {f"{n}.{e}" for n in ("loss", "lr_grad_norm", "perplexity",
                                                                     "training_time") for e in ("png", "svg")}
    monkeypatch.setattr(plots, "ROOT", tmp_path)
    assert plots.main(["--runs", "A", "--log-dir", str(all_logs), "--out", str(out)]) == 0
    assert seen["args"] == (["A"], str(all_logs), str(out), ("png",),
                            [tmp_path / "benchmarks" / "results" / "generation_toy.json"], 0.9, False)


@pytest.mark.parametrize("ema", ["1", "-0.1", "1.5"])
def test_main_refuses_an_ema_outside_zero_to_one(all_logs, tmp_path, ema, capsys):
    """main --ema: outside [0, 1) is a usage error (exit 2) naming the value, nothing written."""
    with pytest.raises(SystemExit) as e:
        plots.main(["--runs", "A", "--log-dir", str(all_logs), "--out", str(tmp_path / "o"), "--ema", ema])
    assert e.value.code == 2 and f"--ema must be in [0, 1), got {float(ema)}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert plots.main(["--runs", "A", "--log-dir", str(all_logs), "--out", str(tmp_path / "o"), "--ema", "0",
                       "--bench"]) == 0


def test_main_with_nothing_to_draw_says_so_and_fails(tmp_path, capsys):
    """main: every run missing -> exit 1, each missing run warned on stderr, 'no figures written' naming
    the runs and the log dir."""
    assert plots.main(["--runs", "x", "y", "--log-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                       "--bench"]) == 1
    captured = capsys.readouterr()
    assert "warning: run 'x' left out" in captured.err and "warning: run 'y' left out" in captured.err
    assert captured.out.strip() == f"no figures written: none of ['x', 'y'] has logs under {tmp_path}/"


def test_annotated_bars_draw_each_value_with_its_note_label_and_own_colour():
    """annotated_bars: bar i at x = i with height values[i] in colour C{i}; notes[i] written at the bar's top,
    centred above it; the tick labels, y label and title as given. Reference: the inputs."""
    from matplotlib import colors
    from matplotlib import pyplot as plt

    from visualizations.figures import annotated_bars
    fig, ax = plt.subplots()
    annotated_bars(ax, ["a", "b", "c"], [3.0, 1.0, 2.0], ["n0", "n1", "n2"], ylabel="tok/s", title="speed")
    assert [(p.get_x() + p.get_width() / 2, p.get_height()) for p in ax.patches] == [(0, 3.0), (1, 1.0), (2, 2.0)]
    assert [colors.to_hex(p.get_facecolor()) for p in ax.patches] == [colors.to_hex(f"C{i}") for i in range(3)]
    assert [(t.get_text(), t.xy, t.get_ha(), t.get_va()) for t in ax.texts] == [
        ("n0", (0, 3.0), "center", "bottom"), ("n1", (1, 1.0), "center", "bottom"), ("n2", (2, 2.0), "center", "bottom")]
    assert list(ax.get_xticks()) == [0, 1, 2] and [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert (ax.get_ylabel(), ax.get_title()) == ("tok/s", "speed")
    plt.close(fig)


def test_main_draws_the_benchmark_jsons_named_by_bench_instead_of_the_default_ones(all_logs, tmp_path,
                                                                                   monkeypatch):
    """main --bench FILE: that JSON's figure (named by its stem), not the default generation_*.json."""
    monkeypatch.setattr(plots, "ROOT", tmp_path)
    other = tmp_path / "benchmarks" / "results" / "other_toy.json"
    out = tmp_path / "o"
    assert plots.main(["--runs", "A", "--log-dir", str(all_logs), "--out", str(out), "--bench", str(other)]) == 0
    assert (out / "other_toy.png").is_file() and not (out / "generation_toy.png").exists()


def test_main_prints_every_missing_run_warning_and_other_warnings_once(monkeypatch, tmp_path, capsys):
    """main: each MissingLogWarning reaches stderr, however many come from one line; any other warning
    raised while drawing follows the usual filters (here a repeated UserWarning: printed once)."""
    import warnings

    def fake_plot_all(runs, *args):
        for run in runs:
            warnings.warn(f"run {run!r} left out", MissingLogWarning)
            warnings.warn("a library's repeated warning", UserWarning)
        return {}
    monkeypatch.setattr(plots, "plot_all", fake_plot_all)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert plots.main(["--runs", "x", "y", "z", "--log-dir", str(tmp_path), "--bench"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: run 'x' left out", "warning: a library's repeated warning",
                   "warning: run 'y' left out", "warning: run 'z' left out"]


def test_figures_read_logs_under_the_working_directory_by_default(all_logs, monkeypatch):
    """log_dir defaults to logs/ of the working directory, as the trainer writes it."""
    monkeypatch.chdir(all_logs.parent)
    assert list(plots.plot_all(["A"])) == ["loss", "lr_grad_norm", "perplexity", "training_time"]
    assert plots.training_time(["A"]) is not None and plots.tid_overhead(["tid"]) is not None
    assert plots.lr_grad_norm(["A"]) is not None and plots.moe_load(["moe"]) is not None
    assert plots.loss_curves(["A"]) is not None and plots.perplexity(["A"]) is not None
