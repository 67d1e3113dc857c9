"""visualizations.run_logs: which runs a figure gets, what is left out with a warning, and the perplexity lists."""

import json
import pickle

import numpy as np
import pytest

from train_logs import RunLogger
from visualizations.run_logs import MissingLogWarning, load_perplexity, load_runs


def _log(log_dir, run, loss):
    log = RunLogger(run, log_dir, {"run": run})
    log.log_step(1, loss, 1e-3, 0.1, 0.5, 10, 0.5, {})
    log.save()


def test_runs_with_logs_load_and_a_missing_one_is_none_with_a_warning(tmp_path):
    _log(tmp_path, "a", 3.0)
    _log(tmp_path, "b", 2.0)
    with pytest.warns(MissingLogWarning, match="run 'gone' left out: no log at"):
        runs = load_runs(["a", "gone", "b"], tmp_path)
    assert list(runs) == ["a", "gone", "b"] and runs["gone"] is None
    assert runs["a"]["losses"]["train_loss"] == [3.0] and runs["b"]["losses"]["train_loss"] == [2.0]
    assert runs["b"]["times"]["step_time"] == [0.5]
    assert load_runs(runs) is runs  # a previous load passes through


def test_a_single_name_and_a_run_without_times(tmp_path):
    _log(tmp_path, "a", 3.0)
    (tmp_path / "times" / "a.pkl").unlink()
    with pytest.warns(MissingLogWarning, match="run 'a' has no wall-time curves"):
        runs = load_runs("a", tmp_path)
    assert list(runs) == ["a"] and runs["a"]["times"] is None and runs["a"]["losses"]["step"] == [1]


def test_a_crafted_losses_log_is_left_out(tmp_path):
    (tmp_path / "losses").mkdir()
    (tmp_path / "losses" / "x.pkl").write_bytes(pickle.dumps({"p": tmp_path}))
    with pytest.warns(MissingLogWarning, match="run 'x' left out: .*more than plain"):
        assert load_runs(["x"], tmp_path) == {"x": None}


def test_perplexities_keep_finite_positive_rows_with_their_summary(tmp_path):
    d = tmp_path / "perplexity-losses"
    d.mkdir()
    (d / "a.pkl").write_bytes(pickle.dumps([3.0, float("nan"), 0.0, 5.5, float("inf"), -1.0, 1.25]))
    (d / "a.json").write_text(json.dumps({"corpus_ppl": 4.0}))
    (d / "b.pkl").write_bytes(pickle.dumps([2.0]))
    (d / "bad.pkl").write_bytes(pickle.dumps({"p": tmp_path}))
    with pytest.warns(MissingLogWarning) as caught:
        out = load_perplexity(["a", "b", "none", "bad"], tmp_path)
    ppl, summary = out["a"]
    assert ppl.tolist() == [3.0, 5.5, 1.25] and ppl.dtype == np.float64 and summary == {"corpus_ppl": 4.0}
    assert out["b"][0].tolist() == [2.0] and out["b"][1] is None
    assert out["none"] is None and out["bad"] is None
    messages = [str(w.message) for w in caught]
    assert any("'none' has no perplexity log" in m and "--ckpt checkpoints/none/best.pt" in m for m in messages)
    assert any("'bad' perplexities left out" in m for m in messages)
    assert list(load_perplexity("b", tmp_path)) == ["b"]


def test_perplexity_lists_read_as_floats_in_order_past_a_bad_log_and_keep_a_perfect_row(tmp_path):
    d = tmp_path / "perplexity-losses"
    d.mkdir()
    (d / "bad.pkl").write_bytes(pickle.dumps({"p": tmp_path}))
    (d / "ints.pkl").write_bytes(pickle.dumps([3, None, 1, 0.5]))        # ints, a row never scored, a perfect row
    with pytest.warns(MissingLogWarning):
        out = load_perplexity(["bad", "gone", "ints"], tmp_path)
    assert list(out) == ["bad", "gone", "ints"] and out["bad"] is None and out["gone"] is None
    ppl, _ = out["ints"]
    assert ppl.dtype == np.float64 and ppl.tolist() == [3.0, 1.0, 0.5]
    assert list(load_perplexity("ints", tmp_path)) == ["ints"]            # one name, not its letters


def test_logs_are_looked_for_in_logs_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(MissingLogWarning, match=r"at (\S*/)?logs/perplexity-losses/no-such-run\.pkl: run"):
        assert load_perplexity("no-such-run") == {"no-such-run": None}
    with pytest.warns(MissingLogWarning, match=r"no log at (\S*/)?logs/losses/no-such-run\.pkl"):
        assert load_runs("no-such-run") == {"no-such-run": None}


def test_a_missing_log_warning_points_at_the_line_that_asked_for_it(tmp_path):
    """(Under mutmut's trampolines the frames differ: this test is left out of its runs.)"""
    with pytest.warns(MissingLogWarning) as caught:
        load_perplexity("no-such-run", tmp_path)
        load_runs("no-such-run", tmp_path)
    assert [w.filename for w in caught] == [__file__, __file__]
