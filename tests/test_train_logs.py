"""train_logs: what a run's log files hold, written out by hand for a few steps, and how a resume cuts them."""

import csv
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from train_logs import (RunLogger, bits_per_token, capped_perplexity, load_losses, load_times, open_wandb,
                        run_log_paths, summary_line)


class FakeWandb:
    def __init__(self):
        self.calls = []

    def log(self, values, step):
        self.calls.append((step, values))


def _csv_rows(log_dir, run="r"):
    with open(log_dir / "csv" / f"{run}.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_perplexity_and_bits_of_a_loss():
    assert capped_perplexity(2.5) == pytest.approx(math.exp(2.5))
    assert capped_perplexity(80.0) == pytest.approx(math.exp(50.0))
    assert bits_per_token(3.0) == pytest.approx(3.0 / math.log(2))


def test_log_paths_of_a_run(tmp_path):
    assert run_log_paths("r", tmp_path) == [tmp_path / "losses" / "r.pkl", tmp_path / "times" / "r.pkl",
                                            tmp_path / "csv" / "r.csv"]


def test_missing_log_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no log at .*losses.*nope\.pkl"):
        load_losses("nope", tmp_path)


def _two_steps(tmp_path, wandb_run=None) -> RunLogger:
    log = RunLogger("r", tmp_path, {"lr": 1e-3}, wandb_run=wandb_run)
    log.log_step(1, np.float32(4.0), 1e-3, np.float64(0.5), 0.25, 1000, 0.3, {"drop": np.float32(0.5)})
    log.log_step(2, 3.0, 2e-3, 0.75, 0.5, 1000, 0.8, {"drop": 0.25, "moe": 0.1})  # "moe" first seen late
    log.log_eval(2, 2.0, 1.5, {"load": 0.9})
    log.save()
    return log


def test_pickles_hold_plain_numbers_one_entry_per_step(tmp_path):
    _two_steps(tmp_path)
    losses, times = load_losses("r", tmp_path), load_times("r", tmp_path)
    assert losses["meta"] == {"lr": 1e-3} and losses["step"] == [1, 2]
    assert losses["train_loss"] == [4.0, 3.0] and type(losses["train_loss"][0]) is float
    assert losses["lr"] == [1e-3, 2e-3] and losses["grad_norm"] == [0.5, 0.75]
    assert losses["stats"]["drop"] == [0.5, 0.25]
    assert math.isnan(losses["stats"]["moe"][0]) and losses["stats"]["moe"][1] == 0.1
    val = losses["val"]
    assert (val["step"], val["loss"], val["bpb"], val["stats"]) == ([2], [2.0], [1.5], {"load": [0.9]})
    assert val["ppl"] == [pytest.approx(math.exp(2.0))] and val["bits_per_token"] == [pytest.approx(2 / math.log(2))]
    assert times["step_time"] == [0.25, 0.5] and times["tokens_per_s"] == [4000.0, 2000.0]
    assert times["elapsed"] == [0.3, 0.8] and times["total_elapsed"] == 0.8


def test_csv_has_a_row_per_step_and_the_eval_on_its_step(tmp_path):
    _two_steps(tmp_path)
    rows = _csv_rows(tmp_path)
    assert [r["step"] for r in rows] == ["1", "2"]
    assert (rows[0]["train_loss"], rows[0]["tokens_per_s"], rows[0]["drop"], rows[0]["val_loss"]) == ("4.0", "4000.0",
                                                                                                      "0.5", "")
    assert (rows[1]["moe"], rows[1]["val_loss"], rows[1]["val_bpb"], rows[1]["val_load"]) == ("0.1", "2.0", "1.5", "0.9")
    assert float(rows[1]["val_ppl"]) == pytest.approx(math.exp(2.0))


def test_a_zero_step_time_logs_no_throughput(tmp_path):
    log = RunLogger("r", tmp_path, {})
    log.log_step(1, 1.0, 1e-3, 0.1, 0.0, 1000, 0.0, {})
    assert math.isnan(log.times["tokens_per_s"][0])


def test_log_steps_dates_each_row_back_from_now(tmp_path):
    log = RunLogger("r", tmp_path, {})
    rows = [{"step": s, "lr": 0.1, "loss": 1.0, "grad_norm": 0.0, "dt": dt, "stats": {}}
            for s, dt in ((1, 1.0), (2, 2.0), (3, 4.0))]
    log.log_steps(rows, tokens_per_step=8, elapsed_now=10.0)
    assert log.times["elapsed"] == [4.0, 6.0, 10.0]  # now less the steps after each
    assert log.times["tokens_per_s"] == [8.0, 4.0, 2.0]


def test_wandb_gets_the_step_and_eval_numbers(tmp_path):
    fake = FakeWandb()
    _two_steps(tmp_path, fake)
    (s1, v1), (s2, v2), (s3, v3) = fake.calls
    assert (s1, v1) == (1, {"train/loss": 4.0, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 4000.0, "train/drop": 0.5})
    assert s2 == 2 and v2["train/moe"] == 0.1 and v2["lr"] == 2e-3
    assert s3 == 2 and v3["val/loss"] == 2.0 and v3["val/bpb"] == 1.5 and v3["val/load"] == 0.9
    assert v3["val/ppl"] == pytest.approx(math.exp(2.0)) and v3["val/bits_per_token"] == pytest.approx(2 / math.log(2))


def test_resume_keeps_what_was_logged_up_to_the_step_and_drops_the_rest(tmp_path):
    log = RunLogger("r", tmp_path, {})
    for step in (1, 2, 3, 4):
        log.log_step(step, 5.0 - step, 1e-3, 0.1, 1.0, 10, float(step), {"drop": 0.1 * step})
        if step % 2 == 0:
            log.log_eval(step, 6.0 - step, 1.0, {"load": float(step)})
    log.save()
    resumed = RunLogger("r", tmp_path, {}, resume_step=2)
    assert resumed.losses["step"] == [1, 2] and resumed.losses["train_loss"] == [4.0, 3.0]
    assert resumed.losses["stats"]["drop"] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert resumed.losses["val"]["step"] == [2] and resumed.losses["val"]["stats"] == {"load": [2.0]}
    assert resumed.times["step"] == [1, 2] and resumed.elapsed_before == 2.0
    assert [r["step"] for r in _csv_rows(tmp_path)] == ["1", "2"]
    resumed.log_step(3, 0.5, 1e-3, 0.1, 1.0, 10, 1.5, {"drop": 0.3})  # elapsed counts from the resumed segment
    resumed.save()
    assert load_times("r", tmp_path)["elapsed"] == [1.0, 2.0, 3.5]
    assert [r["step"] for r in _csv_rows(tmp_path)] == ["1", "2", "3"]


def test_resume_of_an_old_log_derives_bits_per_token(tmp_path):
    log = RunLogger("r", tmp_path, {})
    log.log_step(1, 1.0, 1e-3, 0.1, 1.0, 10, 1.0, {})
    log.log_eval(1, 2.0, 1.0)
    log.save()
    old = load_losses("r", tmp_path)
    del old["val"]["bits_per_token"]  # written before it was logged
    (tmp_path / "losses" / "r.pkl").write_bytes(pickle.dumps(old))
    resumed = RunLogger("r", tmp_path, {}, resume_step=1)
    assert resumed.losses["val"]["bits_per_token"] == [pytest.approx(2.0 / math.log(2))]


def test_a_stats_column_first_seen_later_widens_the_csv(tmp_path):
    log = RunLogger("r", tmp_path, {})
    log.log_step(1, 1.0, 1e-3, 0.1, 1.0, 10, 1.0, {})
    log.log_step(2, 1.0, 1e-3, 0.1, 1.0, 10, 2.0, {"new": 7.0})
    log.save()
    rows = _csv_rows(tmp_path)
    assert [r["step"] for r in rows] == ["1", "2"] and (rows[0]["new"], rows[1]["new"]) == ("", "7.0")


def test_wandb_disabled_opens_nothing():
    assert open_wandb(SimpleNamespace(mode="disabled", project="p"), "r", {}) is None


def test_summary_line_reports_the_run():
    s = {"run": "r", "model": "baseline", "steps": 12, "stop": "max_steps", "epochs": 1.5, "train_tokens": 40960,
         "best_val_loss": 2.5, "best_step": 8, "last_val_loss": 2.75, "train_val_gap": 0.5, "train_loss_end": 2.25,
         "val_ppl": 12.18, "val_bpt": 3.6, "val_bpb": 1.2, "wall_s": 9.87, "tokens_per_s": 12345.6, "mfu": None}
    line = summary_line(s)
    assert line == ("done r [baseline]: 12 steps (max_steps) = 1.50 epochs of 40,960 unique tokens, best val loss "
                    "2.5000 at step 8, last val loss 2.7500, train-val gap +0.5000 (train loss 2.2500), val ppl 12.18, "
                    "3.600 bits/token, 1.200 bits/byte, 9.9s, 12,346 tokens/s")
    assert summary_line({**s, "mfu": 0.123}) == line + ", MFU 12.3%"
