"""Perplexity: known answers on a uniform predictor, sliding windows, row order, the trainer's val loss, the CLIs."""

import json
import math
import pickle
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, tiny_run_config
from dataset_definitions.tokenization import Tokenizer
from experiment_config import from_dict
from generic_runner import Trainer, train
from models.checkpoint import load_checkpoint
from perplexity.results import compare_table
from perplexity.runner import load_scorer, main, main_text, prepared_data
from perplexity.scoring import Scores, encode_rows, score_packed, score_rows, score_texts, token_nll, window_plan
from runtime import setup_env


class ByteTokenizer(Tokenizer):
    """Bytes as ids 3..258; 0 pad, 1 bos, 2 eos."""
    kind, pad_id, bos_id, eos_id, vocab_size = "bytes", 0, 1, 2, 259

    def __init__(self):
        super().__init__(None)

    def encode_batch(self, texts):
        return [[b + 3 for b in t.encode("utf-8")] for t in texts]


def uniform(vocab: int):
    """A model whose logits are all zero: every token has probability 1 / vocab."""
    return lambda x: torch.zeros(*x.shape, vocab)


TEXTS = ["Once upon a time there was a cat.", "héllo wörld", "a" * 150, "x"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run whose evaluations cover the whole val split (eval_batches=None)."""
    tmp = tmp_path_factory.mktemp("ppl")
    summary = train(tiny_run_config(tmp, ["train.max_steps=20", "train.lr=3e-3", "train.eval_batches=null"]))
    return {"tmp": tmp, "ckpt": str(tmp / "checkpoints/tiny/last.pt"), "summary": summary}


@pytest.fixture(scope="module")
def scorer(run):
    return load_scorer(run["ckpt"], device="cpu")


# ----------------------------------------------------------------------------- windows

def test_window_plan_stride_equal_to_context_is_non_overlapping_chunks():
    assert window_plan(100, 32, 32) == [(0, 32, 32), (32, 64, 32), (64, 96, 32), (96, 99, 3)]
    assert window_plan(33, 32, 32) == [(0, 32, 32)]  # 32 targets fit one window
    assert window_plan(2, 32, 8) == [(0, 1, 1)]
    with pytest.raises(ValueError):
        window_plan(10, 8, 9)  # a stride above the context would skip targets


@pytest.mark.parametrize("n_tokens", [2, 5, 32, 33, 64, 65, 100, 257])
@pytest.mark.parametrize("context,stride", [(32, 32), (32, 16), (32, 7), (32, 1), (8, 3)])
def test_every_target_is_scored_exactly_once(n_tokens, context, stride):
    scored = []
    for begin, end, n_new in window_plan(n_tokens, context, stride):
        assert 0 < end - begin <= context and 0 < n_new <= end - begin
        scored += range(end - n_new + 1, end + 1)  # target indices of the scored positions
    assert scored == list(range(1, n_tokens))


def test_uniform_predictor_gives_vocab_perplexity_and_known_bits_per_byte():
    tok = ByteTokenizer()
    for stride, batch in [(16, 1), (5, 3), (16, 64)]:
        scores = score_texts(token_nll(uniform(tok.vocab_size)), tok, TEXTS, context=16, stride=stride, batch_size=batch)
        rows = encode_rows(tok, TEXTS)
        assert scores.tokens.tolist() == [len(r) - 1 for r in rows]  # every token but BOS, once
        assert scores.perplexities() == pytest.approx([259.0] * len(TEXTS), rel=1e-6)
        s = scores.summary()
        n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
        assert s["mean"] == pytest.approx(259) and s["median"] == pytest.approx(259)
        assert s["corpus_ppl"] == pytest.approx(259, rel=1e-6) and s["bytes"] == n_bytes
        assert s["bpb"] == pytest.approx(s["tokens"] * math.log(259) / math.log(2) / n_bytes, rel=1e-6)


def positional(vocab: int):
    """A causal toy model whose prediction at t depends on t (window-relative), the inputs up to t and the target."""
    def logits_fn(x):
        B, T = x.shape
        h = 0.013 * x.cumsum(dim=1).double() + 0.37 * torch.arange(T, dtype=torch.float64)        # (B, T)
        v = torch.arange(vocab, dtype=torch.float64)
        return torch.sin(h[..., None] * (v + 1) * 0.11 + v * 0.7).float() * 3.0                    # (B, T, V)
    return logits_fn


def per_token_loop(logits_fn, row: list[int], context: int, stride: int) -> float:
    """Summed NLL of row[1:], one forward per target: target j sees inputs from the first window
    start (a multiple of stride) whose `context` inputs reach position j - 1."""
    total = 0.0
    for j in range(1, len(row)):
        begin = max(0, -(-(j - context) // stride)) * stride
        x = torch.tensor([row[begin:j]])
        assert 1 <= x.size(1) <= context
        total -= F.log_softmax(logits_fn(x)[0, -1].double(), dim=-1)[row[j]].item()
    return total


@pytest.mark.parametrize("context,stride", [(16, None), (16, 16), (16, 5), (16, 1), (7, 3), (3, None)])
def test_sliding_windows_equal_a_per_token_loop(context, stride, capsys):
    """stride None is the runner's default (context // 2, at least 1): the path every README number takes."""
    tok = ByteTokenizer()
    rows = encode_rows(tok, TEXTS)
    logits_fn = positional(tok.vocab_size)
    for batch, fixed_shapes in ((1, False), (3, False), (3, True)):
        nll, count = score_rows(token_nll(logits_fn), rows, context, stride=stride, batch_size=batch,
                                fixed_shapes=fixed_shapes)
        expected = [per_token_loop(logits_fn, r, context, stride or max(1, context // 2)) for r in rows]
        assert nll == pytest.approx(expected, rel=1e-5)
        assert count.tolist() == [len(r) - 1 for r in rows]
    assert capsys.readouterr().err == ""                           # no progress bar unless asked for
    scores = score_texts(token_nll(logits_fn), tok, TEXTS, context, stride=stride)
    assert scores.perplexities() == pytest.approx([math.exp(e / (len(r) - 1)) for e, r in zip(expected, rows)],
                                                  rel=1e-5)


def test_rows_start_with_bos_and_end_with_eos_which_is_scored():
    tok = ByteTokenizer()
    assert encode_rows(tok, ["ab"]) == [[1, 3 + 97, 3 + 98, 2]]
    # a model that gives EOS probability 1/2 and spreads the rest: EOS's NLL is in the row's total
    def half_eos(x):
        logits = torch.zeros(*x.shape, tok.vocab_size)
        logits[..., 2] = math.log(tok.vocab_size - 1)
        return logits
    nll, count = score_rows(token_nll(half_eos), encode_rows(tok, ["ab"]), context=8)
    assert count.tolist() == [3]
    assert nll[0] == pytest.approx(math.log(2) + 2 * math.log(2 * (tok.vocab_size - 1)))


# ----------------------------------------------------------------------------- a trained model

def test_stride_equal_to_context_equals_scoring_chunks_by_hand(scorer):
    rows = encode_rows(scorer.tokenizer, ["Tom and Lily went to the park. " * 12, "Once upon a time."])
    C = scorer.context
    assert len(rows[0]) > 3 * C
    nll, count = score_rows(scorer.nll_fn, rows, C, stride=C, batch_size=3)
    expected = []
    with torch.no_grad():
        for row in rows:
            t = torch.tensor(row)
            total = 0.0
            for begin in range(0, len(row) - 1, C):
                x, y = t[begin:begin + C], t[begin + 1:begin + C + 1]
                x = x[:len(y)]
                total += F.cross_entropy(scorer.logits_fn(x[None])[0], y, reduction="sum").item()
            expected.append(total)
    assert nll == pytest.approx(expected, rel=1e-5)
    assert count.tolist() == [len(r) - 1 for r in rows]


def test_batching_and_padding_change_no_score(scorer):
    rows = encode_rows(scorer.tokenizer, ["Tom and Lily went to the park. " * 6, "A dog.", "The sun was warm. " * 3])
    one = score_rows(scorer.nll_fn, rows, scorer.context, stride=5, batch_size=1)
    many = score_rows(scorer.nll_fn, rows, scorer.context, stride=5, batch_size=7)
    assert many[0] == pytest.approx(one[0], rel=1e-5)
    assert many[1].tolist() == one[1].tolist() == [len(r) - 1 for r in rows]
    # a smaller stride gives more left context: different numbers, the same targets
    wide = score_rows(scorer.nll_fn, rows, scorer.context, stride=scorer.context, batch_size=7)
    assert wide[1].tolist() == one[1].tolist()


def test_fixed_shapes_and_a_compiled_scorer_change_no_score(run, scorer):
    rows = encode_rows(scorer.tokenizer, ["Tom and Lily went to the park. " * 6, "A dog.", "The sun was warm. " * 3,
                                          "Once upon a time."])
    plain = score_rows(scorer.nll_fn, rows, scorer.context, stride=7, batch_size=3)
    fixed = score_rows(scorer.nll_fn, rows, scorer.context, stride=7, batch_size=3, fixed_shapes=True)
    compiled = load_scorer(run["ckpt"], device="cpu", compile=True)
    both = score_rows(compiled.nll_fn, rows, scorer.context, stride=7, batch_size=3, fixed_shapes=True)
    for nll, count in (fixed, both):
        assert nll == pytest.approx(plain[0], rel=1e-5) and count.tolist() == plain[1].tolist()


def test_packed_val_equals_trainer_evaluate(run, scorer):
    """The runner's packed mode reproduces the run summary's val loss and Trainer.evaluate()."""
    packed_scorer = load_scorer(run["ckpt"], device="cpu", training_model=True)
    data = prepared_data(packed_scorer)
    scores = score_packed(packed_scorer.nll_fn, data.tokens("val"), scorer.context, data.bytes_per_token("val"),
                          packed_scorer.cfg.train.batch_size)
    s = scores.summary()
    summary = run["summary"]  # the evaluation at the last step, on the weights saved in last.pt
    assert s["loss"] == pytest.approx(summary["val_loss"], abs=1e-5)
    assert s["corpus_ppl"] == pytest.approx(summary["val_ppl"], rel=1e-5)
    assert s["bpb"] == pytest.approx(summary["val_bpb"], abs=1e-5)
    cfg = from_dict(load_checkpoint(run["ckpt"])["config"])
    assert cfg.train.eval_batches is None
    cfg = replace(cfg, device="cpu")
    trainer = Trainer(cfg, setup_env(cfg.device, cfg.train.precision), resume=True)  # loads last.pt
    loss, bpb, _ = trainer.evaluate()
    assert s["loss"] == pytest.approx(loss, abs=1e-5) and s["bpb"] == pytest.approx(bpb, abs=1e-5)
    assert s["tokens"] == len(trainer.val_blocks) * scorer.context


# ----------------------------------------------------------------------------- the runners

def test_run_perplexity_cli_writes_rows_in_order_and_compare_prints_a_table(run, scorer, capsys):
    logs = run["tmp"] / "logs"
    r = subprocess.run([sys.executable, "perplexity-runners/run_perplexity.py", "--ckpt", run["ckpt"], "--rows", "7",
                        "--batch-size", "5", "--device", "cpu", "--log-dir", str(logs), "--quiet"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "corpus ppl" in r.stdout and "bits per byte" in r.stdout and "rows/s" in r.stdout
    with open(logs / "perplexity-losses/tiny.pkl", "rb") as f:
        ppl = pickle.load(f)
    summary = json.loads((logs / "perplexity-losses/tiny.json").read_text())
    # the same rows scored one at a time, in the data pipeline's held-out order
    rows = prepared_data(scorer).rows("heldout")[:7]
    alone = [score_texts(scorer.nll_fn, scorer.tokenizer, [t], scorer.context).perplexities()[0] for t in rows]
    assert isinstance(ppl, list) and len(ppl) == 7
    assert ppl == pytest.approx(alone, rel=1e-5)
    for key in ("rows", "tokens", "bytes", "mean", "median", "corpus_ppl", "bpb", "seconds", "rows_per_s", "ckpt",
                "split", "source"):
        assert key in summary
    assert summary["rows"] == 7 and summary["split"] == "heldout" and summary["mean"] == pytest.approx(np.mean(ppl))
    assert summary["median"] == pytest.approx(np.median(ppl))

    main(["--ckpt", run["ckpt"], "--split", "val", "--packed", "--device", "cpu", "--log-dir", str(logs), "--quiet"])
    packed = json.loads((logs / "perplexity-losses/tiny-val-packed.json").read_text())
    assert packed["loss"] == pytest.approx(run["summary"]["val_loss"], abs=1e-5)
    capsys.readouterr()
    main(["--compare", "tiny", "tiny-val-packed", "--log-dir", str(logs)])
    out = capsys.readouterr().out
    assert "corpus ppl" in out and "tiny-val-packed" in out and len(out.strip().splitlines()) == 4
    assert compare_table(["tiny"], logs).splitlines()[2].startswith("tiny ")


def test_text_runner_names_results_after_the_file(run, tmp_path, capsys):
    text = tmp_path / "other_corpus.txt"
    text.write_text("The cat sat on the mat.<|endoftext|>\n\nA bird sang.<|endoftext|>Tom ran home.", encoding="utf-8")
    main_text(["--ckpt", run["ckpt"], "--text-file", str(text), "--delimiter", "<|endoftext|>", "--device", "cpu",
               "--log-dir", str(tmp_path / "logs"), "--quiet"])
    out = tmp_path / "logs/perplexity-losses"
    summary = json.loads((out / "tiny-other_corpus.json").read_text())
    with open(out / "tiny-other_corpus.pkl", "rb") as f:
        assert len(pickle.load(f)) == 3
    assert summary["rows"] == 3 and summary["source"] == str(text) and summary["split"] == "text"
    assert "corpus ppl" in capsys.readouterr().out


def _one_line_error(fn, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        fn()
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_and_nonzero(run, tmp_path, capsys):
    r = subprocess.run([sys.executable, "perplexity-runners/run_perplexity.py", "--ckpt", str(tmp_path / "nope.pt")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert "not found" in r.stderr
    assert "not found" in _one_line_error(
        lambda: main_text(["--ckpt", run["ckpt"], "--text-file", str(tmp_path / "missing.txt")]), capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    assert "no non-empty" in _one_line_error(
        lambda: main_text(["--ckpt", run["ckpt"], "--text-file", str(empty)]), capsys)
    assert "no perplexity results" in _one_line_error(
        lambda: main(["--compare", "nobody", "--log-dir", str(tmp_path)]), capsys)
    assert "--ckpt" in _one_line_error(lambda: main(["--rows", "3"]), capsys)
    assert "stride" in _one_line_error(lambda: main(["--ckpt", run["ckpt"], "--stride", "999"]), capsys)


def test_scores_summary_of_nothing_is_nan_not_a_crash():
    s = Scores(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0)).summary()
    assert s["rows"] == 0 and math.isnan(s["corpus_ppl"])


def test_int8_runner_keeps_the_fp32_result_and_stays_close(run, capsys):
    logs = run["tmp"] / "logs-int8"
    for extra in ([], ["--quantize", "int8"]):
        main(["--ckpt", run["ckpt"], "--rows", "20", "--device", "cpu", "--log-dir", str(logs), "--quiet", *extra])
    fp32 = json.loads((logs / "perplexity-losses/tiny.json").read_text())
    int8 = json.loads((logs / "perplexity-losses/tiny-int8.json").read_text())
    assert int8["quantize"] == "int8" and fp32["quantize"] is None
    assert abs(int8["corpus_ppl"] / fp32["corpus_ppl"] - 1) < 0.02
