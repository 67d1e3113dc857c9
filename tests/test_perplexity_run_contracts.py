"""run_perplexity.py / run_text_perplexity.py end to end on a stub checkpoint (no weights) and stub prepared
data: what load_scorer is asked for, the packed and held-out paths' numbers, result names and saved info,
the stride and batch defaults, and the argument refusals at their exact boundaries."""

import inspect
import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from perplexity import runner
from perplexity.scoring import Scores, score_packed, score_texts, token_nll
from test_perplexity_aggregation import CharTokenizer, stub_logits

CKPT = "checkpoints/ckrun/best.pt"
DATA_DIR = "data-cache/stub"
ROWS = {"heldout": ["héllo wörld", "the cat sat", "zq zq zq zq"], "val": ["日本語 ok", "aaaa aaaa", "mat again"]}
_rng = np.random.default_rng(0)
TOKENS = {"heldout": _rng.integers(3, 61, 30).astype(np.uint16), "val": _rng.integers(3, 61, 44).astype(np.uint16)}
BYTES_PER_TOKEN = {"heldout": 2.3, "val": 1.7}
METRICS = ("rows", "tokens", "bytes", "mean", "median", "loss", "corpus_ppl", "bits_per_token", "bpb")
NLL_FN = token_nll(stub_logits)


class Harness:
    """Stubs load_scorer and prepared_data, records their calls (and, when asked, score_texts/score_packed's)."""

    def __init__(self, monkeypatch, tmp_path, context=8, run_name="stub", device="cpu", train_batch=5):
        self.logs, self.loads, self.prepared, self.scored = tmp_path / "logs", [], [], {}
        self.context, self.run_name, self.device, self.train_batch = context, run_name, device, train_batch
        monkeypatch.setattr(runner, "load_scorer", self.load_scorer)
        monkeypatch.setattr(runner, "prepared_data", self.prepared_data)
        self.monkeypatch = monkeypatch

    def load_scorer(self, ckpt, device="auto", dtype="auto", training_model=False, quantize=None, compile=False):
        self.loads.append(dict(ckpt=ckpt, device=device, dtype=dtype, training_model=training_model,
                               quantize=quantize, compile=compile))
        cfg = SimpleNamespace(model=SimpleNamespace(context=self.context),
                              train=SimpleNamespace(batch_size=self.train_batch), run_name=self.run_name)
        self.scorer = runner.Scorer(stub_logits, NLL_FN, cfg, CharTokenizer(), torch.device(self.device),
                                    torch.float32, step=7, compiled=compile)
        return self.scorer

    def prepared_data(self, scorer, log=None):
        self.prepared.append(scorer)
        return SimpleNamespace(dir=DATA_DIR, rows=lambda split: list(ROWS[split]), tokens=lambda split: TOKENS[split],
                               bytes_per_token=lambda split: BYTES_PER_TOKEN[split])

    def record(self, name, delegate=True):
        """Record the bound arguments of runner.<name>; run the real one, or return a fixed small Scores."""
        real = getattr(runner, name)

        def spy(*args, **kwargs):
            self.scored[name] = inspect.signature(real).bind(*args, **kwargs).arguments
            return real(*args, **kwargs) if delegate else Scores(np.array([3.0]), np.array([2]), np.array([4.0]), 0.5)
        self.monkeypatch.setattr(runner, name, spy)

    def main(self, *argv, text=False):
        (runner.main_text if text else runner.main)(["--ckpt", CKPT, "--log-dir", str(self.logs), *argv])

    def saved(self, name):
        out = self.logs / "perplexity-losses"
        with open(out / f"{name}.pkl", "rb") as f:
            per_row = pickle.load(f)
        return json.loads((out / f"{name}.json").read_text()), per_row


# ----------------------------------------------------------------------------- packed

def test_packed_run_saves_score_packed_of_the_split(monkeypatch, tmp_path, capsys):
    """--packed: load_scorer gets the training model; the saved summary is score_packed of the split's tokens
    (context, its bytes/token, the run's train.batch_size, device, dtype, progress, vocab size), named
    <run>-<split>-packed, with split / '<split> packed' / data_dir and stride = context."""
    h = Harness(monkeypatch, tmp_path)
    h.record("score_packed")
    h.main("--split", "val", "--packed", "--device", "cpu", "--dtype", "fp32")
    assert h.loads == [dict(ckpt=CKPT, device="cpu", dtype="fp32", training_model=True, quantize=None, compile=False)]
    assert h.prepared == [h.scorer]
    a = h.scored["score_packed"]
    assert a["nll_fn"] is NLL_FN and a["tokens"] is TOKENS["val"] and a["bytes_per_token"] == 1.7
    assert (a["context"], a["batch_size"], a["vocab_size"]) == (8, 5, 61)
    assert a["device"] == torch.device("cpu") and a["dtype"] is torch.float32 and a["progress"] is True
    assert "scoring 5 blocks" in capsys.readouterr().err                    # the progress bar, not --quiet
    expected = score_packed(NLL_FN, TOKENS["val"], 8, 1.7, 5)
    summary, per_row = h.saved("stub-val-packed")
    assert {k: summary[k] for k in METRICS} == pytest.approx({k: expected.summary()[k] for k in METRICS})
    assert per_row == pytest.approx(expected.perplexities())
    assert (summary["split"], summary["source"], summary["data_dir"]) == ("val", "val packed", DATA_DIR)
    assert (summary["packed"], summary["stride"], summary["batch_size"], summary["name"]) == (True, 8, 5, "stub-val-packed")


def test_packed_out_name_wins(monkeypatch, tmp_path):
    """--out-name replaces <run>-<split>-packed; the heldout split's own tokens and bytes/token are scored."""
    h = Harness(monkeypatch, tmp_path)
    h.main("--split", "heldout", "--packed", "--out-name", "mine", "--quiet")
    summary, _ = h.saved("mine")
    expected = score_packed(NLL_FN, TOKENS["heldout"], 8, 2.3, 5).summary()
    assert {k: summary[k] for k in METRICS} == pytest.approx({k: expected[k] for k in METRICS})
    assert (summary["source"], summary["name"]) == ("heldout packed", "mine")


# ----------------------------------------------------------------------------- rows

@pytest.mark.parametrize("split, out_name, name", [("heldout", None, "stub"), ("val", None, "stub-val"),
                                                   ("val", "custom", "custom"), ("heldout", "custom", "custom")])
def test_row_run_scores_the_splits_first_rows_under_its_name(monkeypatch, tmp_path, split, out_name, name):
    """Rows: the first --rows rows of the split, scored as score_texts does (stride context // 2, batch 16 on
    CPU); named <run> for heldout, <run>-<split> otherwise, --out-name winning; split / '<split> rows' / data_dir."""
    h = Harness(monkeypatch, tmp_path)
    h.main("--split", split, "--rows", "2", "--quiet", *(["--out-name", out_name] if out_name else []))
    assert h.loads[0]["training_model"] is False and h.prepared == [h.scorer]
    summary, per_row = h.saved(name)
    expected = score_texts(NLL_FN, CharTokenizer(), ROWS[split][:2], 8, 4)
    assert per_row == pytest.approx(expected.perplexities())
    assert {k: summary[k] for k in METRICS} == pytest.approx({k: expected.summary()[k] for k in METRICS})
    assert (summary["split"], summary["source"], summary["data_dir"]) == (split, f"{split} rows", DATA_DIR)
    assert summary["name"] == name


def test_saved_info_has_every_documented_field_with_its_value(monkeypatch, tmp_path):
    """The saved JSON's info: run, ckpt, step, device, dtype without 'torch.', context, stride, batch_size,
    packed, eos_scored, quantize, compiled; --quantize without --out-name suffixes the name."""
    h = Harness(monkeypatch, tmp_path)
    h.record("score_texts")
    h.main("--device", "cpu", "--dtype", "fp32", "--quantize", "int8", "--compile", "--quiet")
    assert h.loads == [dict(ckpt=CKPT, device="cpu", dtype="fp32", training_model=False, quantize="int8", compile=True)]
    summary, _ = h.saved("stub-int8")
    info = {"run": "stub", "ckpt": CKPT, "step": 7, "device": "cpu", "dtype": "float32", "context": 8, "stride": 4,
            "batch_size": 16, "packed": False, "eos_scored": True, "quantize": "int8", "compiled": True,
            "split": "heldout", "source": "heldout rows", "data_dir": DATA_DIR, "name": "stub-int8"}
    assert {k: summary.get(k) for k in info} == info
    a = h.scored["score_texts"]
    assert a["fixed_shapes"] is True and a.get("progress") is False      # a compiled scorer: fixed shapes


def test_row_run_shows_progress_unless_quiet_and_plain_scorer_has_free_shapes(monkeypatch, tmp_path, capsys):
    """Without --quiet score_texts gets progress=True (a bar on stderr); an uncompiled scorer fixed_shapes=False."""
    h = Harness(monkeypatch, tmp_path)
    h.record("score_texts")
    h.main()
    assert h.loads[0]["compile"] is False and h.loads[0]["quantize"] is None
    a = h.scored["score_texts"]
    assert a["progress"] is True and a["fixed_shapes"] is False
    assert "scoring 3 rows" in capsys.readouterr().err
    summary, _ = h.saved("stub")
    assert summary["compiled"] is False and summary["quantize"] is None


def test_run_name_falls_back_to_the_checkpoint_folder(monkeypatch, tmp_path):
    """A config without run_name: the run is the checkpoint's parent folder name."""
    h = Harness(monkeypatch, tmp_path, run_name=None)
    h.main("--quiet")
    summary, _ = h.saved("ckrun")
    assert summary["run"] == "ckrun"


def test_text_runner_reads_only_rows_lines(monkeypatch, tmp_path):
    """run_text_perplexity.py --rows N scores the file's first N rows."""
    text = tmp_path / "corpus.txt"
    text.write_text("first row\nsecond row\nthird row\n", encoding="utf-8")
    h = Harness(monkeypatch, tmp_path)
    h.main("--text-file", str(text), "--rows", "2", "--quiet", text=True)
    summary, per_row = h.saved("stub-corpus")
    assert len(per_row) == summary["rows"] == 2
    assert per_row == pytest.approx(score_texts(NLL_FN, CharTokenizer(), ["first row", "second row"], 8, 4).perplexities())


# ----------------------------------------------------------------------------- defaults

@pytest.mark.parametrize("argv, context, device, stride, batch", [
    ([], 8, "cpu", 4, 16),                                         # rows: context // 2; 16 on CPU
    ([], 3, "cpu", 1, 16),                                         # 3 // 2 = 1
    ([], 8, "cuda", 4, 128),                                       # 128 on a GPU
    (["--packed"], 8, "cpu", 8, 5),                                # packed: the context, the run's batch size
    (["--packed"], 8, "cuda", 8, 5),
    (["--stride", "3", "--batch-size", "7"], 8, "cuda", 3, 7),     # given values win
    (["--packed", "--batch-size", "2"], 8, "cpu", 8, 2),
])
def test_stride_and_batch_defaults(monkeypatch, tmp_path, argv, context, device, stride, batch):
    """stride: context when packed, else max(1, context // 2), unless --stride; batch: --batch-size, else the
    run's train.batch_size when packed, else 128 on cuda and 16 on CPU (scoring stubbed out)."""
    h = Harness(monkeypatch, tmp_path, context=context, device=device)
    h.record("score_texts", delegate=False)
    h.record("score_packed", delegate=False)
    h.main("--quiet", "--out-name", "r", *argv)
    summary, _ = h.saved("r")
    assert (summary["stride"], summary["batch_size"], summary["device"], summary["packed"]) == \
        (stride, batch, device, "--packed" in argv)
    a = h.scored["score_packed" if "--packed" in argv else "score_texts"]
    assert a["batch_size"] == batch and a.get("stride", stride) == stride


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("argv, message", [
    (["--rows", "0"], "--rows and --batch-size must be positive"),
    (["--batch-size", "0"], "--rows and --batch-size must be positive"),
    (["--stride", "0"], "--stride must be >= 1"),
    (["--stride", "9"], "between 1 and the context (8), got 9"),
    (["--packed", "--stride", "4"], "--stride does not apply to --packed"),
])
def test_refused_at_the_boundary(monkeypatch, tmp_path, capsys, argv, message):
    """--rows 0, --batch-size 0, --stride 0 and --stride context + 1 exit 2 with one line naming the value;
    a stride given with --packed (which scores whole blocks) is refused rather than ignored."""
    h = Harness(monkeypatch, tmp_path)
    with pytest.raises(SystemExit) as e:
        h.main("--quiet", *argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("argv, stride, batch", [(["--rows", "1"], 4, 16), (["--batch-size", "1"], 4, 1),
                                                 (["--stride", "1"], 1, 16), (["--stride", "8"], 8, 16)])
def test_accepted_at_the_boundary(monkeypatch, tmp_path, argv, stride, batch):
    """--rows 1, --batch-size 1, --stride 1 and --stride context are accepted and used."""
    h = Harness(monkeypatch, tmp_path)
    h.main("--quiet", *argv)
    summary, _ = h.saved("stub")
    assert (summary["stride"], summary["batch_size"]) == (stride, batch)
    assert summary["rows"] == (1 if "--rows" in argv else 3)


def test_run_perplexity_description_names_what_it_scores():
    """run_perplexity.py --help opens with what it scores."""
    assert runner._parser(text_file=False).description == \
        "Perplexity of a checkpoint on the held-out rows (or the packed val stream) of its data config."
