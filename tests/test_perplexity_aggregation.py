"""Perplexity aggregation against hand computation: per-row, mean and median of rows, corpus, bits
per token and per byte, on a stub model with fixed non-uniform, context-dependent predictions and
rows of unequal length and difficulty (so every aggregate differs from the others), up to the
text runner's printed summary and saved pickle."""

import json
import math
import pickle
import re
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataset_definitions.tokenization import Tokenizer
from perplexity import runner
from perplexity.scoring import Scores, score_texts, token_nll

# multi-byte characters (2, 3 and 4 UTF-8 bytes) so bytes != characters != tokens
TEXTS = ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "zq", "héllo wörld, ça va", "日本語のテキスト🙂 ok",
         "the cat sat on the mat and then the cat sat on the mat again"]


class CharTokenizer(Tokenizer):
    """One token per character (ids 3..60); 0 pad, 1 bos, 2 eos."""
    kind, pad_id, bos_id, eos_id, vocab_size = "chars", 0, 1, 2, 61

    def __init__(self):
        super().__init__(None)

    def encode(self, text):
        return [3 + ord(c) % 58 for c in text]


def stub_logits(x: torch.Tensor) -> torch.Tensor:
    """Causal stub: logits at t from the previous two inputs and the position inside the window, so a
    target's NLL depends on where its window starts. Repeating the current input is strongly predicted,
    so a row of one repeated character is easy and the others are hard."""
    B, T = x.shape
    prev = torch.cat([torch.zeros(B, 1, dtype=x.dtype), x[:, :-1]], dim=1)
    v = torch.arange(CharTokenizer.vocab_size, dtype=torch.float64)
    h = (x.double() * 0.31 + prev.double() * 0.17 + torch.arange(T, dtype=torch.float64) * 0.05)[..., None]
    return (2.0 * torch.cos(h * (v + 1) * 0.23) + 6.0 * (v == x[..., None])).float()           # (B, T, V)


def reference_row_nll(row: list[int], context: int, stride: int) -> float:
    """Summed NLL of row[1:] by the documented rule, one model call per window: windows start at
    0, stride, 2 stride, ...; a window feeds row[begin:begin + context] (never the last token); each
    target is scored by the first window whose inputs include the token before it."""
    total, scored, begin = 0.0, set(), 0
    while len(scored) < len(row) - 1:
        inputs = row[begin:min(begin + context, len(row) - 1)]
        logp = F.log_softmax(stub_logits(torch.tensor([inputs]))[0].double(), dim=-1)
        for i in range(len(inputs)):
            target = begin + i + 1
            if target not in scored:
                scored.add(target)
                total -= logp[i, row[target]].item()
        begin += stride
    return total


def rows_of(texts):
    tok = CharTokenizer()
    return [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in texts]


def expected_summary(texts, context, stride) -> dict:
    """Every aggregate from the reference per-row NLLs, written out."""
    rows = rows_of(texts)
    nll = [reference_row_nll(r, context, stride) for r in rows]
    targets = [len(r) - 1 for r in rows]
    ppl = [math.exp(n / t) for n, t in zip(nll, targets)]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"per_row": ppl, "mean": sum(ppl) / len(ppl), "median": float(np.median(ppl)),
            "corpus_ppl": math.exp(sum(nll) / sum(targets)), "loss": sum(nll) / sum(targets),
            "bits_per_token": sum(nll) / sum(targets) / math.log(2), "bpb": sum(nll) / math.log(2) / n_bytes,
            "tokens": sum(targets), "bytes": n_bytes, "row_mean_nll": [n / t for n, t in zip(nll, targets)]}


def test_the_input_tells_every_aggregate_apart():
    """The rows differ enough that each plausible wrong aggregate is far from the right one."""
    e = expected_summary(TEXTS, 8, 3)
    wrong_corpus = [statistics.fmean(e["per_row"]), math.exp(statistics.fmean(e["row_mean_nll"]))]
    assert all(abs(w - e["corpus_ppl"]) > 0.05 * e["corpus_ppl"] for w in wrong_corpus)
    assert abs(e["mean"] - e["median"]) > 0.05 * e["mean"]
    chars = sum(len(t) for t in TEXTS)
    assert chars < e["bytes"] and abs(e["bits_per_token"] - e["bpb"]) > 0.05 * e["bpb"]


@pytest.mark.parametrize("context,stride,batch", [(8, 3, 4), (8, 8, 1), (64, 32, 16)])
def test_scores_and_summary_equal_a_hand_computation(context, stride, batch):
    scores = score_texts(token_nll(stub_logits), CharTokenizer(), TEXTS, context, stride=stride, batch_size=batch)
    e = expected_summary(TEXTS, context, stride)
    assert scores.perplexities() == pytest.approx(e["per_row"], rel=1e-5)
    s = scores.summary()
    assert (s["rows"], s["tokens"], s["bytes"]) == (len(TEXTS), e["tokens"], e["bytes"])
    for key in ("mean", "median", "corpus_ppl", "loss", "bits_per_token", "bpb"):
        assert s[key] == pytest.approx(e[key], rel=1e-5), key


def test_summary_of_given_totals_weights_rows_by_their_tokens():
    """Three rows: 2, 10 and 1 targets; NLL sums chosen so the row perplexities are 2, 8 and 100."""
    tokens = np.array([2, 10, 1])
    nll = np.log([2.0, 8.0, 100.0]) * tokens
    n_bytes = np.array([5.0, 30.0, 4.0])
    s = Scores(nll, tokens, n_bytes).summary()
    assert Scores(nll, tokens, n_bytes).perplexities() == pytest.approx([2.0, 8.0, 100.0])
    assert s["mean"] == pytest.approx((2 + 8 + 100) / 3)
    assert s["median"] == pytest.approx(8.0)
    total = 2 * math.log(2) + 10 * math.log(8) + math.log(100)
    assert s["loss"] == pytest.approx(total / 13)
    assert s["corpus_ppl"] == pytest.approx(math.exp(total / 13))             # 8.57..., not 36.7 or 11.7
    assert s["bits_per_token"] == pytest.approx(total / 13 / math.log(2))
    assert s["bpb"] == pytest.approx(total / math.log(2) / 39)
    even = Scores(nll[:2], tokens[:2], n_bytes[:2]).summary()               # an even count: mean of the middle two
    assert even["median"] == pytest.approx(5.0)


def test_a_loss_past_float_range_is_an_infinite_perplexity_not_a_crash_or_nan():
    """A row whose mean NLL overflows exp (1600 nats) or is inf (an fp16 overflow upstream) has perplexity
    inf, and so has the corpus; only a row with no scored target, or a NaN loss, is NaN."""
    s = Scores(np.array([1600.0, math.log(4.0)]), np.array([1, 1]), np.array([3.0, 3.0]))
    assert s.perplexities() == [math.inf, pytest.approx(4.0)]
    assert s.summary()["corpus_ppl"] == math.inf and s.summary()["loss"] == pytest.approx(800 + math.log(2))
    s = Scores(np.array([math.inf, 0.0]), np.array([2, 0]), np.array([3.0, 0.0]))
    ppl = s.perplexities()
    assert ppl[0] == math.inf and math.isnan(ppl[1])
    assert s.summary()["corpus_ppl"] == math.inf
    assert math.isnan(Scores(np.array([math.nan]), np.array([1]), np.array([1.0])).summary()["corpus_ppl"])


def stub_scorer(context: int):
    """What load_scorer returns, for the stub model (no checkpoint)."""
    cfg = SimpleNamespace(model=SimpleNamespace(context=context), train=SimpleNamespace(batch_size=4),
                          run_name="stub")
    return runner.Scorer(stub_logits, token_nll(stub_logits), cfg, CharTokenizer(), torch.device("cpu"),
                         torch.float32, step=7)


def _printed(out: str, label: str) -> float:
    return float(re.search(rf"^\s*{label}\s+([-0-9.,]+)", out, re.MULTILINE).group(1).replace(",", ""))


def test_text_runner_prints_and_saves_the_hand_computed_numbers(tmp_path, monkeypatch, capsys):
    """The number a researcher reports: the printed corpus perplexity, mean, median and bits, the
    per-row pickle and the JSON summary all equal the hand computation, and one another."""
    text_file = tmp_path / "rows.txt"
    text_file.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    monkeypatch.setattr(runner, "load_scorer", lambda *a, **k: stub_scorer(8))
    runner.main_text(["--ckpt", "stub.pt", "--text-file", str(text_file), "--stride", "3",
                      "--log-dir", str(tmp_path / "logs"), "--quiet"])
    out = capsys.readouterr().out
    e = expected_summary(TEXTS, 8, 3)
    assert _printed(out, "mean per-row ppl") == pytest.approx(e["mean"], abs=1e-3)
    assert _printed(out, "median per-row ppl") == pytest.approx(e["median"], abs=1e-3)
    assert _printed(out, "corpus ppl") == pytest.approx(e["corpus_ppl"], abs=1e-3)
    assert _printed(out, "bits per token") == pytest.approx(e["bits_per_token"], abs=1e-4)
    assert _printed(out, "bits per byte") == pytest.approx(e["bpb"], abs=1e-4)
    saved = tmp_path / "logs" / "perplexity-losses"
    with open(saved / "stub-rows.pkl", "rb") as f:
        per_row = pickle.load(f)
    assert per_row == pytest.approx(e["per_row"], rel=1e-6)                 # in row order
    summary = json.loads((saved / "stub-rows.json").read_text())
    for key in ("mean", "median", "corpus_ppl", "loss", "bits_per_token", "bpb", "tokens", "bytes"):
        assert summary[key] == pytest.approx(e[key], rel=1e-6), key
    assert statistics.fmean(per_row) == pytest.approx(summary["mean"])      # the pickle gives the printed mean
    assert summary["stride"] == 3 and summary["rows"] == len(TEXTS)
