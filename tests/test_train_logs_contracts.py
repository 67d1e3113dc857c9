"""train_logs contracts, each against a reference worked out apart from the code: hand arithmetic (math.exp,
ln 2), log files written or read back by hand with the pickle and csv modules, and fake wandb / TensorBoard
writers that record what they are given. The numbers are chosen so a wrong answer looks different: several
steps of unequal values, numpy scalars, text and flag statistics, statistics first seen late, a resume from a
step that is not an evaluation step."""

import csv
import math
import pickle
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from fileio import UnsafeFileError
from train_logs import (RunLogger, bits_per_token, capped_perplexity, load_losses, load_times, open_tensorboard,
                        open_wandb, overfitting, run_log_paths, tensorboard_dir, tensorboard_tag)

NAN = math.nan
HEADER = ["step", "train_loss", "lr", "grad_norm", "step_time", "tokens_per_s", "elapsed",
          "val_loss", "val_ppl", "val_bits_per_token", "val_bpb"]


def _same(got, want, where="") -> None:
    """got == want, recursively: the same keys, lengths and types; nan equals nan; floats to 1e-12."""
    assert type(got) is type(want), f"{where}: {got!r} is a {type(got).__name__}, want {want!r}"
    if isinstance(want, dict):
        assert set(got) == set(want), f"{where}: keys {list(got)}, want {list(want)}"
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: {got!r}, want {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), f"{where}: {got!r}, want nan"
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-12, abs=0), f"{where}: {got!r}, want {want!r}"
    else:
        assert got == want, f"{where}: {got!r}, want {want!r}"


def _ppl(loss):
    return math.exp(loss)


def _bits(loss):
    return loss * math.log2(math.e)  # bits = nats x log2(e)


def _csv_rows(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


class FakeWandb:
    def __init__(self):
        self.calls = []

    def log(self, values, step):
        self.calls.append((step, values))


class FakeWriter:
    """A SummaryWriter that records add_scalar and flush calls, in order."""

    def __init__(self):
        self.events = []

    def add_scalar(self, tag, value, global_step):
        self.events.append((tag, value, global_step))

    def flush(self):
        self.events.append("flush")


# ----------------------------------------------------------------------------- numbers of a loss

def test_capped_perplexity_is_exp_of_the_loss_with_the_loss_capped_at_50_nats():
    """ppl = e^loss for a loss up to 50 nats, e^50 above (inf too), nan stays nan -> math.exp by hand."""
    assert capped_perplexity(0.0) == 1.0
    assert capped_perplexity(2.5) == math.exp(2.5)
    assert capped_perplexity(49.75) == math.exp(49.75)
    assert capped_perplexity(50.0) == math.exp(50)
    for diverged in (50.25, 51.0, 1e6, math.inf):
        assert capped_perplexity(diverged) == math.exp(50) == pytest.approx(5.184705528587072e21)
    assert math.isnan(capped_perplexity(math.nan))
    assert capped_perplexity(-math.inf) == 0.0


def test_bits_per_token_is_the_loss_in_base_2():
    """bits = nats / ln 2 -> ln 8 nats is 3 bits, 1 nat is log2(e), inf and nan stay so."""
    assert bits_per_token(math.log(8)) == pytest.approx(3.0, rel=1e-15)
    assert bits_per_token(1.0) == pytest.approx(math.log2(math.e), rel=1e-15)
    assert bits_per_token(2.5) == pytest.approx(2.5 * math.log2(math.e), rel=1e-15)
    assert bits_per_token(0.0) == 0.0 and bits_per_token(math.inf) == math.inf
    assert math.isnan(bits_per_token(math.nan))


# ----------------------------------------------------------------------------- paths and names

def test_log_paths_and_tensorboard_folder_of_a_run(tmp_path):
    """logs/{losses,times}/<run>.pkl, logs/csv/<run>.csv, logs/tensorboard/<run>/ -> the layout written out by hand."""
    assert run_log_paths("a.b", str(tmp_path)) == [tmp_path / "losses" / "a.b.pkl", tmp_path / "times" / "a.b.pkl",
                                                   tmp_path / "csv" / "a.b.csv"]
    assert tensorboard_dir("a.b", str(tmp_path)) == tmp_path / "tensorboard" / "a.b"
    assert tensorboard_dir("r", tmp_path) == tmp_path / "tensorboard" / "r"


@pytest.mark.parametrize("column, tag", [
    ("val_loss", "val/loss"), ("val_bits_per_token", "val/bits_per_token"), ("val_moe_balance_l1", "val/moe_balance_l1"),
    ("val_train_x", "val/train_x"), ("train_loss", "train/loss"), ("train_train_x", "train/train_x"),
    ("lr", "train/lr"), ("tokens_per_s", "train/tokens_per_s"), ("loss_train_", "train/loss_train_"),
    ("lr_train", "train/lr_train"), ("value_x", "train/value_x"), ("x_val_y", "train/x_val_y"),
])
def test_tensorboard_tag_of_a_csv_column(column, tag):
    """val_x -> val/x, train_x -> train/x (the prefix dropped once), anything else -> train/<column>: a table by hand."""
    assert tensorboard_tag(column) == tag


# ----------------------------------------------------------------------------- reading logs back

def _valid_losses() -> dict:
    return {"run": "r", "meta": {}, "step": [1], "train_loss": [2.0], "lr": [1e-3], "grad_norm": [1.0], "stats": {},
            "val": {"step": [1], "loss": [2.0], "ppl": [7.4], "bits_per_token": [2.9], "bpb": [1.0], "stats": {}}}


def _valid_times() -> dict:
    return {"run": "r", "step": [1], "step_time": [0.5], "tokens_per_s": [8.0], "elapsed": [0.5], "total_elapsed": 0.5}


def _write(tmp_path, kind, obj, run="crafted"):
    path = tmp_path / kind / f"{run}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return path


def test_load_losses_and_times_read_the_pickles_under_logs_by_default(tmp_path, monkeypatch):
    """load_*(run) reads <log_dir>/{losses,times}/<run>.pkl, log_dir "logs" of the working folder -> pickle.dumps by hand."""
    _write(tmp_path / "logs", "losses", _valid_losses(), "r")
    _write(tmp_path / "logs", "times", {**_valid_times(), "total_elapsed": 3}, "r")  # an int total is a number too
    monkeypatch.chdir(tmp_path)
    _same(load_losses("r"), _valid_losses())
    _same(load_times("r"), {**_valid_times(), "total_elapsed": 3})
    _same(load_times("r", tmp_path / "logs"), {**_valid_times(), "total_elapsed": 3})
    with pytest.raises(FileNotFoundError) as e:
        load_times("other")
    assert str(e.value) == ("no log at logs/times/other.pkl: train the run first, or check the run name and log dir")


@pytest.mark.parametrize("kind, content, problem", [
    ("losses", [1, 2], "it holds a list, not a dict of log entries"),
    ("times", "text", "it holds a str, not a dict of log entries"),
    ("losses", {k: v for k, v in _valid_losses().items() if k != "lr"}, "'lr' is missing or not a list"),
    ("losses", {**_valid_losses(), "stats": [1.0]}, "'stats' is missing or not a dict"),
    ("losses", {**_valid_losses(), "val": [1.0]}, "'val' is missing or not a dict"),
    ("losses", {**_valid_losses(), "val": {**_valid_losses()["val"], "bpb": 1.0}}, "'val.bpb' is missing or not a list"),
    ("losses", {**_valid_losses(), "val": {k: v for k, v in _valid_losses()["val"].items() if k != "stats"}},
     "'val.stats' is missing or not a dict"),
    ("times", {**_valid_times(), "total_elapsed": True}, "'total_elapsed' is missing or not a number"),
    ("times", {**_valid_times(), "total_elapsed": "1.0"}, "'total_elapsed' is missing or not a number"),
    ("times", {k: v for k, v in _valid_times().items() if k != "elapsed"}, "'elapsed' is missing or not a list"),
])
def test_a_log_of_another_layout_is_refused_naming_the_key(tmp_path, kind, content, problem):
    """A pickle the readers could not use raises UnsafeFileError naming the file and the first bad key (val keys
    as val.<key>; a bool is no number) -> crafted with pickle.dumps, the message written by hand."""
    path = _write(tmp_path, kind, content)
    load = load_losses if kind == "losses" else load_times
    with pytest.raises(UnsafeFileError) as e:
        load("crafted", tmp_path)
    assert str(e.value) == f"{path} is not a readable log pickle ({problem})"


def test_a_log_with_extra_keys_and_int_numbers_loads(tmp_path):
    """Keys beyond the layout and int entries are fine: the layout only checks what the readers take -> by hand."""
    losses = {**_valid_losses(), "extra": "kept", "step": [1, 2]}
    _write(tmp_path, "losses", losses)
    _same(load_losses("crafted", tmp_path), losses)


# ----------------------------------------------------------------------------- writing logs

def _three_steps(log_dir, wandb_run=None, tensorboard=None) -> RunLogger:
    """Three steps (numpy scalars, a text statistic, statistics first seen at steps 2 and 3) and evals at 2 and 3."""
    log = RunLogger("r", log_dir, {"config": {"lr": 0.001}, "train_tokens": 4096}, wandb_run=wandb_run,
                    tensorboard=tensorboard)
    log.log_step(1, np.float32(4.5), 0.001, np.float64(1.5), 0.25, 1000, 0.5, {"drop": np.float32(0.25), "mode": "high"})
    log.log_step(2, 4.0, 0.002, 1.25, 0.5, 1000, 1.0, {"drop": 0.5, "mode": "low", "moe": np.int64(3)})
    log.log_eval(2, np.float64(3.5), 1.75, {"load": np.float32(0.75)})
    log.log_step(3, 3.0, 0.003, 1.0, 0.125, 1000, 1.25, {"drop": 0.75, "mode": "low", "moe": 2, "flag": True})
    log.log_eval(3, 3.25, 1.5, {"load": 0.5, "extra": 0.125})
    log.save()
    return log


THREE_STEPS_LOSSES = {
    "run": "r", "meta": {"config": {"lr": 0.001}, "train_tokens": 4096}, "step": [1, 2, 3],
    "train_loss": [4.5, 4.0, 3.0], "lr": [0.001, 0.002, 0.003], "grad_norm": [1.5, 1.25, 1.0],
    "stats": {"drop": [0.25, 0.5, 0.75], "mode": ["high", "low", "low"], "moe": [NAN, 3.0, 2], "flag": [NAN, NAN, True]},
    "val": {"step": [2, 3], "loss": [3.5, 3.25], "ppl": [_ppl(3.5), _ppl(3.25)], "bits_per_token": [_bits(3.5), _bits(3.25)],
            "bpb": [1.75, 1.5], "stats": {"load": [0.75, 0.5], "extra": [NAN, 0.125]}}}
THREE_STEPS_TIMES = {"run": "r", "step": [1, 2, 3], "step_time": [0.25, 0.5, 0.125],
                     "tokens_per_s": [4000.0, 2000.0, 8000.0], "elapsed": [0.5, 1.0, 1.25], "total_elapsed": 1.25}


def test_the_pickles_hold_every_step_and_eval_as_plain_python_numbers(tmp_path):
    """losses/times pickles: one entry per step, per eval (ppl = e^loss, bits = loss / ln 2), tokens/s = tokens /
    step time, numpy scalars as float, ints, text and flags kept, late statistics padded with nan, in a log folder
    made on the way -> the dicts written out by hand, read with plain pickle."""
    log_dir = tmp_path / "new" / "logs"
    log = _three_steps(log_dir)
    for name, want in (("losses", THREE_STEPS_LOSSES), ("times", THREE_STEPS_TIMES)):
        with open(log_dir / name / "r.pkl", "rb") as f:
            _same(pickle.load(f), want, name)
    _same(log.losses, THREE_STEPS_LOSSES, "losses")
    _same(load_losses("r", log_dir), THREE_STEPS_LOSSES, "load_losses")
    _same(load_times("r", log_dir), THREE_STEPS_TIMES, "load_times")


def test_the_csv_has_a_row_per_step_with_its_eval_and_a_column_per_statistic(tmp_path):
    """CSV: the fixed header, then statistic columns in order of first appearance (val_<stat> for eval statistics),
    one row per step, val_* filled on eval steps only, written as csv writes (\\r\\n line ends) -> read back with csv."""
    _three_steps(tmp_path)
    text = (tmp_path / "csv" / "r.csv").read_bytes().decode()
    assert text.endswith("\r\n") and text.count("\r\n") == 4 and "\n" not in text.replace("\r\n", "")
    header, rows = _csv_rows(tmp_path / "csv" / "r.csv")
    assert header == [*HEADER, "drop", "mode", "moe", "val_load", "flag", "val_extra"]
    ppl, bits = header.index("val_ppl"), header.index("val_bits_per_token")
    for row, loss in ((rows[1], 3.5), (rows[2], 3.25)):
        assert float(row[ppl]) == pytest.approx(_ppl(loss), rel=1e-12)
        assert float(row[bits]) == pytest.approx(_bits(loss), rel=1e-12)
        row[ppl] = row[bits] = "?"
    assert rows == [
        ["1", "4.5", "0.001", "1.5", "0.25", "4000.0", "0.5", "", "", "", "", "0.25", "high", "", "", "", ""],
        ["2", "4.0", "0.002", "1.25", "0.5", "2000.0", "1.0", "3.5", "?", "?", "1.75", "0.5", "low", "3.0", "0.75", "", ""],
        ["3", "3.0", "0.003", "1.0", "0.125", "8000.0", "1.25", "3.25", "?", "?", "1.5", "0.75", "low", "2", "0.5", "True",
         "0.125"]]


def test_a_new_logger_writes_the_header_only_and_empty_logs(tmp_path):
    """A fresh run: the CSV is the header line at once; saved before any step, the pickles hold empty lists and a
    total of 0 s -> the CSV line and dicts by hand."""
    log = RunLogger("r", tmp_path / "a" / "b", {"k": 1})
    assert (tmp_path / "a" / "b" / "csv" / "r.csv").read_bytes() == (",".join(HEADER) + "\r\n").encode()
    log.save()
    _same(load_losses("r", tmp_path / "a" / "b"),
          {"run": "r", "meta": {"k": 1}, "step": [], "train_loss": [], "lr": [], "grad_norm": [], "stats": {},
           "val": {"step": [], "loss": [], "ppl": [], "bits_per_token": [], "bpb": [], "stats": {}}})
    _same(load_times("r", tmp_path / "a" / "b"),
          {"run": "r", "step": [], "step_time": [], "tokens_per_s": [], "elapsed": [], "total_elapsed": 0.0})


def test_a_step_without_time_logs_no_throughput(tmp_path):
    """tokens/s = tokens / step time only for a positive step time, else nan -> hand division."""
    log = RunLogger("r", tmp_path, {})
    for step, dt in ((1, 0.0), (2, -0.5), (3, 0.5), (4, 2.0)):
        log.log_step(step, 1.0, 0.1, 0.1, dt, 100, float(step), {})
    _same(log.times["tokens_per_s"], [NAN, NAN, 200.0, 50.0])


def test_an_eval_joins_only_the_csv_row_of_its_own_step(tmp_path):
    """An eval before any step (step 0) or at a step other than the last one logged goes to the pickle and wandb
    only: no CSV row takes it -> the rows read back with csv, the val lists by hand."""
    fake = FakeWandb()
    log = RunLogger("r", tmp_path, {}, wandb_run=fake)
    log.log_eval(0, 5.0, 2.5)
    log.log_step(1, 4.0, 0.1, 0.5, 1.0, 10, 1.0, {})
    log.log_step(2, 3.0, 0.1, 0.5, 1.0, 10, 2.0, {})
    log.log_eval(1, 4.5, 2.25, {"load": 0.5})
    log.save()
    _same(log.losses["val"], {"step": [0, 1], "loss": [5.0, 4.5], "ppl": [_ppl(5.0), _ppl(4.5)],
                              "bits_per_token": [_bits(5.0), _bits(4.5)], "bpb": [2.5, 2.25],
                              "stats": {"load": [NAN, 0.5]}})
    header, rows = _csv_rows(tmp_path / "csv" / "r.csv")
    assert header == HEADER and [r[0] for r in rows] == ["1", "2"] and all(r[7:] == ["", "", "", ""] for r in rows)
    assert [(s, v["val/loss"]) for s, v in fake.calls if "val/loss" in v] == [(0, 5.0), (1, 4.5)]


def test_wandb_gets_each_step_and_eval_at_its_step(tmp_path):
    """wandb: per step train/loss, lr, grad_norm, tokens_per_s and train/<stat> (text left out); per eval val/loss,
    val/ppl, val/bits_per_token, val/bpb and val/<stat>; each at its step -> the calls written out by hand."""
    fake = FakeWandb()
    _three_steps(tmp_path, wandb_run=fake)
    _same(fake.calls, [
        (1, {"train/loss": 4.5, "lr": 0.001, "grad_norm": 1.5, "tokens_per_s": 4000.0, "train/drop": 0.25}),
        (2, {"train/loss": 4.0, "lr": 0.002, "grad_norm": 1.25, "tokens_per_s": 2000.0, "train/drop": 0.5,
             "train/moe": 3.0}),
        (2, {"val/loss": 3.5, "val/ppl": _ppl(3.5), "val/bits_per_token": _bits(3.5), "val/bpb": 1.75, "val/load": 0.75}),
        (3, {"train/loss": 3.0, "lr": 0.003, "grad_norm": 1.0, "tokens_per_s": 8000.0, "train/drop": 0.75, "train/moe": 2,
             "train/flag": True}),
        (3, {"val/loss": 3.25, "val/ppl": _ppl(3.25), "val/bits_per_token": _bits(3.25), "val/bpb": 1.5, "val/load": 0.5,
             "val/extra": 0.125})])
    assert [type(s) for s, _ in fake.calls] == [int] * 5


def _scalars(events) -> list:
    return [e for e in events if e != "flush"]


def test_tensorboard_gets_each_numeric_cell_of_a_row_when_the_csv_gets_the_row(tmp_path):
    """TensorBoard: a row's numeric cells (not step, text or flags) as scalars at its step, tagged train/x or val/x,
    sent when the row is written (its eval joined first), and a flush on save -> the CSV read back with csv."""
    writer = FakeWriter()
    log = RunLogger("r", tmp_path, {"config": {}}, tensorboard=writer)
    log.log_step(1, np.float32(4.5), 0.001, np.float64(1.5), 0.25, 1000, 0.5, {"drop": np.float32(0.25), "mode": "high"})
    assert writer.events == []                                  # the row waits for its eval
    log.log_step(2, 4.0, 0.002, 1.25, 0.5, 1000, 1.0, {"drop": 0.5, "mode": "low", "moe": np.int64(3)})
    assert [step for _, _, step in writer.events] == [1] * 7    # row 1 written: its 7 numbers
    writer.events.clear()
    _three_steps(tmp_path, tensorboard=writer)                  # the same run again, from the start
    assert writer.events[-1] == "flush" and writer.events.count("flush") == 1
    header, rows = _csv_rows(tmp_path / "csv" / "r.csv")
    want = []
    for row in rows:
        for column, cell in zip(header[1:], row[1:]):
            if cell and cell not in ("high", "low", "True"):
                tag = f"val/{column[4:]}" if column.startswith("val_") else "train/" + column.replace("train_", "", 1)
                want.append((tag, float(cell), int(row[0])))
    got = _scalars(writer.events)
    assert sorted(got) == sorted(want) and len(got) == 7 + 13 + 14
    assert all(type(v) in (int, float) and type(s) is int for _, v, s in got)


def test_save_flushes_tensorboard_after_the_last_row(tmp_path):
    """save() sends the pending row's scalars, then flushes, each save -> the fake writer's record."""
    writer = FakeWriter()
    log = RunLogger("r", tmp_path, {}, tensorboard=writer)
    log.log_step(1, 2.0, 0.1, 0.5, 1.0, 10, 1.0, {})
    log.save()
    assert writer.events[-1] == "flush" and writer.events[:-1] == [
        ("train/loss", 2.0, 1), ("train/lr", 0.1, 1), ("train/grad_norm", 0.5, 1), ("train/step_time", 1.0, 1),
        ("train/tokens_per_s", 10.0, 1), ("train/elapsed", 1.0, 1)]
    log.save()
    assert writer.events[-2:] == ["flush", "flush"]


def test_log_steps_dates_each_row_back_from_now_after_the_resumed_time(tmp_path):
    """log_steps: elapsed of a row = time before this segment + now - the step times after it, tokens/s = tokens per
    step / its step time -> hand arithmetic."""
    log = RunLogger("r", tmp_path, {})
    log.log_step(1, 1.0, 0.1, 0.1, 1.0, 8, 4.0, {})
    log.save()
    resumed = RunLogger("r", tmp_path, {}, resume_step=1)
    rows = [{"step": s, "lr": 0.1 * s, "loss": 5.0 - s, "grad_norm": 0.25 * s, "dt": dt, "stats": {"d": s}}
            for s, dt in ((2, 0.5), (3, 1.0), (4, 2.0))]
    resumed.log_steps(rows, tokens_per_step=16, elapsed_now=10.0)
    _same(resumed.times, {"run": "r", "step": [1, 2, 3, 4], "step_time": [1.0, 0.5, 1.0, 2.0],
                          "tokens_per_s": [8.0, 32.0, 16.0, 8.0], "elapsed": [4.0, 4.0 + 7.0, 4.0 + 8.0, 4.0 + 10.0],
                          "total_elapsed": 14.0})
    _same(resumed.losses["train_loss"], [1.0, 3.0, 2.0, 1.0])
    _same(resumed.losses["lr"], [0.1, 0.2, 0.3, 0.4])
    _same(resumed.losses["grad_norm"], [0.1, 0.5, 0.75, 1.0])
    _same(resumed.losses["stats"], {"d": [NAN, 2, 3, 4]})


# ----------------------------------------------------------------------------- resume

def _four_steps(log_dir) -> str:
    """Four steps, evals at 2 and 4, a text statistic with a line break in it, statistics first seen at 2 and 4:
    the CSV text."""
    log = RunLogger("r", log_dir, {"m": 1})
    for step, elapsed in ((1, 0.5), (2, 1.5), (3, 2.25), (4, 3.0)):
        stats = {"note": "a\r\nb" if step == 1 else "c", **({"moe": 0.5 * step} if step > 1 else {}),
                 **({"late": 9.0} if step == 4 else {})}
        log.log_step(step, 5.0 - step, 0.01 * step, 2.0 * step, 0.5, 100, elapsed, stats)
        if step % 2 == 0:
            log.log_eval(step, 6.0 - step, 3.0 - step / 2, {"load": float(step)})
    log.save()
    return (log_dir / "csv" / "r.csv").read_bytes().decode()


def test_resume_keeps_the_logs_up_to_the_step_and_continues_the_clock(tmp_path):
    """RunLogger(resume_step=3): every list cut to the steps <= 3 (evals <= 3 too, late statistics still padded), the
    CSV byte for byte its lines up to step 3 (the wider header kept), elapsed counted on from step 3's, then the
    redone step 4 in its place -> the original CSV's text cut by hand, the lists written out by hand."""
    text = _four_steps(tmp_path)
    with open(tmp_path / "csv" / "r.csv", newline="") as f:
        assert next(csv.DictReader(f))["note"] == "a\r\nb"       # kept through the widening at step 2
    resumed = RunLogger("r", tmp_path, {"m": 2}, resume_step=3)
    assert resumed.elapsed_before == 2.25
    assert (tmp_path / "csv" / "r.csv").read_bytes().decode() == text[:text.index("\r\n4,") + 2]
    kept = {"run": "r", "meta": {"m": 2}, "step": [1, 2, 3], "train_loss": [4.0, 3.0, 2.0], "lr": [0.01, 0.02, 0.03],
            "grad_norm": [2.0, 4.0, 6.0],
            "stats": {"note": ["a\r\nb", "c", "c"], "moe": [NAN, 1.0, 1.5], "late": [NAN, NAN, NAN]},
            "val": {"step": [2], "loss": [4.0], "ppl": [_ppl(4.0)], "bits_per_token": [_bits(4.0)], "bpb": [2.0],
                    "stats": {"load": [2.0]}}}
    _same(resumed.losses, kept)
    _same({k: v for k, v in resumed.times.items() if k != "total_elapsed"},
          {"run": "r", "step": [1, 2, 3], "step_time": [0.5] * 3, "tokens_per_s": [200.0] * 3, "elapsed": [0.5, 1.5, 2.25]})
    resumed.log_step(4, 0.75, 0.5, 0.25, 0.25, 100, 0.5, {"note": "d", "moe": 7.0})   # 0.5 s into this segment
    resumed.save()
    times = load_times("r", tmp_path)
    _same(times["elapsed"], [0.5, 1.5, 2.25, 2.75])
    assert times["total_elapsed"] == 2.75 and times["tokens_per_s"][-1] == 400.0
    _same(load_losses("r", tmp_path)["stats"], {"note": ["a\r\nb", "c", "c", "d"], "moe": [NAN, 1.0, 1.5, 7.0],
                                                "late": [NAN, NAN, NAN]})
    header, rows = _csv_rows(tmp_path / "csv" / "r.csv")
    assert header == [*HEADER, "note", "moe", "val_load", "late"]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"] and rows[0][-4] == "a\r\nb"
    assert rows[3] == ["4", "0.75", "0.5", "0.25", "0.25", "400.0", "2.75", "", "", "", "", "d", "7.0", "", ""]


def test_a_resumed_log_saved_before_its_next_step_keeps_the_total_time(tmp_path):
    """total_elapsed is the elapsed time of the last step kept: a resumed logger saved before it logs a step (a stop
    right after the resume) must not write 0 s -> the kept step's elapsed, by hand."""
    _four_steps(tmp_path)
    RunLogger("r", tmp_path, {}, resume_step=3).save()
    times = load_times("r", tmp_path)
    assert times["elapsed"] == [0.5, 1.5, 2.25] and times["total_elapsed"] == 2.25


def test_resume_drops_unreadable_csv_rows_and_rebuilds_a_missing_or_empty_csv(tmp_path):
    """Resumed, the CSV keeps only rows whose step is a number <= the step; an empty file gets the standard header,
    a missing one too -> the CSV text written by hand."""
    (tmp_path / "csv").mkdir()
    path = tmp_path / "csv" / "r.csv"
    path.write_bytes(b"step,train_loss,x\r\n1,4.0,a\r\n,3.5,b\r\nstep,train_loss,x\r\n2,3.0,c\r\n3,2.0,d\r\n-1,9,e\r\n")
    RunLogger("r", tmp_path, {}, resume_step=2)
    assert path.read_bytes() == b"step,train_loss,x\r\n1,4.0,a\r\n2,3.0,c\r\n"
    path.write_bytes(b"")
    RunLogger("r", tmp_path, {}, resume_step=2)
    assert path.read_bytes() == (",".join(HEADER) + "\r\n").encode()
    path.unlink()
    log = RunLogger("r", tmp_path, {}, resume_step=2)
    assert path.read_bytes() == (",".join(HEADER) + "\r\n").encode()
    assert log.losses["step"] == [] and log.times["step"] == [] and log.elapsed_before == 0.0


def test_resume_before_any_timed_step_counts_elapsed_from_zero(tmp_path):
    """Times logged only after the resume step: none kept, so the next step's elapsed is its own -> by hand."""
    log = RunLogger("r", tmp_path, {})
    log.log_step(5, 1.0, 0.1, 0.1, 1.0, 10, 3.0, {})
    log.save()
    resumed = RunLogger("r", tmp_path, {}, resume_step=4)
    assert resumed.elapsed_before == 0.0 and resumed.times["elapsed"] == []
    resumed.log_step(5, 1.0, 0.1, 0.1, 1.0, 10, 1.5, {})
    assert resumed.times["elapsed"] == [1.5] and resumed.times["total_elapsed"] == 1.5


def test_resume_keeps_stored_bits_per_token_and_derives_missing_ones(tmp_path):
    """Resumed, val bits_per_token as stored; a log written before it existed gets loss / ln 2 -> hand values."""
    losses = _valid_losses()
    losses["val"] = {"step": [1, 2], "loss": [2.0, 1.5], "ppl": [7.0, 4.0], "bits_per_token": [0.5, 0.25],
                     "bpb": [1.0, 0.75], "stats": {}}
    _write(tmp_path, "losses", losses, "r")
    _same(RunLogger("r", tmp_path, {}, resume_step=2).losses["val"], losses["val"])
    del losses["val"]["bits_per_token"]
    _write(tmp_path, "losses", losses, "r")
    _same(RunLogger("r", tmp_path, {}, resume_step=1).losses["val"],
          {"step": [1], "loss": [2.0], "ppl": [7.0], "bpb": [1.0], "stats": {}, "bits_per_token": [_bits(2.0)]})


@pytest.mark.parametrize("kind", ["losses", "times"])
def test_resume_refuses_a_crafted_log(tmp_path, kind):
    """A resume reads the old pickles with the layout check -> UnsafeFileError naming the file and the key."""
    valid = _valid_losses() if kind == "losses" else _valid_times()
    path = _write(tmp_path, kind, {**valid, "step": (1,)}, "r")   # a tuple would slice as a list does
    with pytest.raises(UnsafeFileError) as e:
        RunLogger("r", tmp_path, {}, resume_step=1)
    assert str(e.value) == f"{path} is not a readable log pickle ('step' is missing or not a list)"


# ----------------------------------------------------------------------------- wandb and TensorBoard

def test_open_wandb_starts_a_run_of_the_configured_mode_or_none(monkeypatch):
    """disabled -> None without importing wandb; offline/online -> wandb.init(project, name, mode, config); wandb
    missing -> ValueError naming the fix -> a fake wandb module recording its calls."""
    calls = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(kw) or "the run"
    monkeypatch.setitem(sys.modules, "wandb", fake)
    assert open_wandb(SimpleNamespace(mode="disabled", project="p"), "r", {}) is None and calls == []
    assert open_wandb(SimpleNamespace(mode="offline", project="proj"), "run1", {"a": 1}) == "the run"
    assert calls == [{"project": "proj", "name": "run1", "mode": "offline", "config": {"a": 1}}]
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert open_wandb(SimpleNamespace(mode="disabled", project="p"), "r", {}) is None
    with pytest.raises(ValueError) as e:
        open_wandb(SimpleNamespace(mode="online", project="p"), "r", {})
    assert str(e.value) == "wandb.mode is set but wandb is not installed: pip install wandb (or wandb.mode=disabled)"


def test_open_tensorboard_writes_under_the_run_folder_purging_after_a_resume(tmp_path, monkeypatch):
    """log.tensorboard off -> None; on -> SummaryWriter(logs/tensorboard/<run>, purge_step=None from scratch, n + 1
    resumed at n); TensorBoard missing -> ValueError naming the extra -> a fake module recording its calls."""
    made = []
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = lambda logdir, purge_step: made.append((logdir, purge_step)) or "writer"
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    assert open_tensorboard(SimpleNamespace(tensorboard=False), "r", tmp_path, 5) is None and made == []
    assert open_tensorboard(SimpleNamespace(tensorboard=True), "r", tmp_path) == "writer"
    assert open_tensorboard(SimpleNamespace(tensorboard=True), "r2", str(tmp_path), resume_step=7) == "writer"
    assert made == [(str(tmp_path / "tensorboard" / "r"), None), (str(tmp_path / "tensorboard" / "r2"), 8)]
    assert all(type(d) is str for d, _ in made)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert open_tensorboard(SimpleNamespace(tensorboard=False), "r", tmp_path) is None
    with pytest.raises(ValueError) as e:
        open_tensorboard(SimpleNamespace(tensorboard=True), "r", tmp_path)
    assert str(e.value) == ('log.tensorboard=true needs TensorBoard: pip install -e ".[tensorboard]" '
                            "(or log.tensorboard=false)")


# ----------------------------------------------------------------------------- overfitting

def _curve(steps, train, val_steps, val) -> dict:
    return {"step": steps, "train_loss": train, "val": {"step": val_steps, "loss": val}}


def test_overfitting_summary_of_a_curve_that_turned():
    """best_step: the first of the lowest val losses; train_loss_end: the mean train loss of the steps after the
    next-to-last eval; gap = last val - that -> hand arithmetic on six steps, four evals."""
    losses = _curve([1, 2, 3, 4, 5, 6], [6.0, 5.0, 4.0, 3.5, 3.0, 2.0], [2, 3, 4, 6], [4.5, 3.75, 3.75, 4.25])
    _same(overfitting(losses), {"best_step": 3, "last_val_loss": 4.25, "train_loss_end": 2.5, "train_val_gap": 1.75})


def test_overfitting_with_one_or_two_evals():
    """One eval: the mean over all steps; two: over the steps after the first eval -> hand arithmetic."""
    train = [6.0, 4.0, 3.0, 2.0, 1.0]
    _same(overfitting(_curve([1, 2, 3, 4, 5], train, [5], [2.5])),
          {"best_step": 5, "last_val_loss": 2.5, "train_loss_end": 3.2, "train_val_gap": 2.5 - 3.2})
    _same(overfitting(_curve([1, 2, 3, 4, 5], train, [1, 5], [3.0, 3.5])),
          {"best_step": 1, "last_val_loss": 3.5, "train_loss_end": 2.5, "train_val_gap": 1.0})


def test_overfitting_without_train_steps_after_the_eval_before_the_last_is_nan():
    """No train loss logged after the next-to-last eval: train_loss_end and the gap are nan -> by hand."""
    _same(overfitting(_curve([1, 2], [3.0, 2.0], [2, 4], [2.5, 2.0])),
          {"best_step": 4, "last_val_loss": 2.0, "train_loss_end": NAN, "train_val_gap": NAN})


def test_overfitting_of_a_logger_that_ran(tmp_path):
    """overfitting(RunLogger.losses) of the three-step run: best at step 3, train loss of step 3 -> by hand."""
    _same(overfitting(_three_steps(tmp_path).losses),
          {"best_step": 3, "last_val_loss": 3.25, "train_loss_end": 3.0, "train_val_gap": 0.25})


def test_the_logged_pickles_are_plain_data_only(tmp_path):
    """The pickles name no class (a numpy scalar becomes a Python float) -> an Unpickler that refuses every
    global loads them."""
    class NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise AssertionError(f"{module}.{name} in a log pickle")

    _three_steps(tmp_path)
    for name in ("losses", "times"):
        with open(tmp_path / name / "r.pkl", "rb") as f:
            NoGlobals(f).load()
