"""What a scoring pass saves and prints: the summary under its name, the per-row perplexities, refusal of
non-finite numbers (each of them), the note when another checkpoint's results are replaced, the
default folder, and the unit (rows or packed blocks) the printed report counts in."""

import json
import math
import pickle

import numpy as np
import pytest

from perplexity.results import load_result, report, save_results
from perplexity.scoring import Scores

INFO = {"run": "r", "ckpt": "checkpoints/r/last.pt", "step": 7, "source": "heldout rows", "device": "cpu",
        "dtype": "float32"}


def _scores() -> Scores:
    """Three rows of unequal lengths and losses."""
    return Scores(nll=np.array([6.0, 2.5, 9.0]), tokens=np.array([3, 5, 4]), bytes=np.array([12.0, 20.0, 15.0]),
                  seconds=0.5)


class _OneBad(Scores):
    """The summary of _scores() with one number replaced (a non-finite value)."""

    def __init__(self, key, value):
        base = _scores()
        super().__init__(base.nll, base.tokens, base.bytes, base.seconds)
        self.key, self.value = key, value

    def summary(self):
        return {**super().summary(), self.key: self.value}


def test_saved_results_hold_the_name_the_rows_and_the_summary(tmp_path):
    """<name>.json holds the summary with its name (read back by load_result); <name>.pkl the per-row
    perplexities exp(nll / tokens) in row order (hand computed)."""
    summary = save_results("r-heldout", _scores(), INFO, tmp_path)
    out = tmp_path / "perplexity-losses"
    saved = json.loads((out / "r-heldout.json").read_text())
    assert saved == summary and saved["name"] == "r-heldout" and saved["ckpt"] == INFO["ckpt"]
    assert load_result("r-heldout", tmp_path)["name"] == "r-heldout"
    ppl = pickle.loads((out / "r-heldout.pkl").read_bytes())
    assert ppl == pytest.approx([math.exp(6 / 3), math.exp(2.5 / 5), math.exp(9 / 4)], rel=1e-12)
    assert saved["loss"] == pytest.approx(17.5 / 12) and saved["rows"] == 3


def test_the_default_folder_is_logs(tmp_path, monkeypatch):
    """Without log_dir the files go to logs/perplexity-losses/ (as run_perplexity.py's --log-dir default)."""
    monkeypatch.chdir(tmp_path)
    save_results("r", _scores(), INFO)
    assert (tmp_path / "logs/perplexity-losses/r.json").is_file()
    assert load_result("r")["name"] == "r"


@pytest.mark.parametrize("key", ["loss", "mean", "median", "corpus_ppl", "bpb"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_number_is_refused_and_nothing_written(tmp_path, key, value):
    with pytest.raises(ValueError, match=rf"not finite \({key}={value}\)"):
        save_results("r", _OneBad(key, value), INFO, tmp_path)
    assert not (tmp_path / "perplexity-losses" / "r.json").exists()
    assert not (tmp_path / "perplexity-losses" / "r.pkl").exists()


@pytest.mark.parametrize("change, noted", [({}, False), ({"ckpt": "checkpoints/r/best.pt"}, True),
                                           ({"source": "val rows"}, True),
                                           ({"ckpt": "other.pt", "source": "val rows"}, True)])
def test_replacing_another_checkpoints_results_is_noted(tmp_path, capsys, change, noted):
    """Saving again under one name: silent for the same checkpoint and source, a note on stderr when
    either differs (another checkpoint's numbers are replaced); the new numbers are saved either way."""
    save_results("r", _scores(), INFO, tmp_path)
    capsys.readouterr()
    save_results("r", _scores(), {**INFO, **change}, tmp_path)
    err = capsys.readouterr().err
    assert ("note: replacing" in err) == noted
    if noted:
        assert f"was {INFO['ckpt']}, {INFO['source']}" in err
    assert load_result("r", tmp_path)["ckpt"] == change.get("ckpt", INFO["ckpt"])


def test_an_unreadable_previous_summary_is_replaced_with_a_note(tmp_path, capsys):
    """A corrupt <name>.json (a killed write of an old version) is no reason to fail: noted, replaced."""
    out = tmp_path / "perplexity-losses"
    out.mkdir()
    (out / "r.json").write_text("{not json")
    save_results("r", _scores(), INFO, tmp_path)
    assert "note: replacing" in capsys.readouterr().err
    assert load_result("r", tmp_path)["ckpt"] == INFO["ckpt"]


@pytest.mark.parametrize("packed, unit", [(True, "block"), (False, "row")])
def test_the_report_counts_blocks_when_packed_and_rows_otherwise(tmp_path, packed, unit):
    summary = save_results("r", _scores(), {**INFO, "packed": packed}, tmp_path)
    text = report(summary)
    assert f": 3 {unit}s, 12 scored tokens" in text
    assert f"mean per-{unit} ppl" in text and f"3 {unit}s in 0.50s" in text
    other = "row" if packed else "block"
    assert f"per-{other}" not in text
