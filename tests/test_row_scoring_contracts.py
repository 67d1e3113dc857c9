"""The document-mode scorer (`score_rows`, `score_texts`) against a hand loop over windows in float64: the
window layout and padding, batches as asked (and by default), per-window sums in float64, integer counts,
autocast, the progress bar, the memory check and its byte count, the pass's time and bytes; plus the closed
forms of `target_nll` and `Scores.perplexities`."""

import math
import time

import numpy as np
import pytest
import torch

from perplexity import scoring
from perplexity.scoring import IGNORE, Scores, check_batch_fits, score_rows, score_texts, target_nll
from test_perplexity_aggregation import CharTokenizer


def token_cost(x: int, prev: int, pos: int, y: int) -> float:
    """The stub model's NLL of target y after input x (prev before it, 0 at the window's start) at window
    position pos: thirds, sevenths, ... so a float32 sum would round them."""
    return x / 3 + prev / 7 + pos / 11 + y / 13


class StubModel:
    """A causal float64 nll_fn (token_cost, 0 on IGNORE targets) that records each call's inputs, targets
    and whether autocast was on."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, y):
        self.calls.append((x.clone(), y.clone(), torch.is_autocast_enabled("cpu")))
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        pos = torch.arange(x.size(1), dtype=torch.float64)
        nll = x.double() / 3 + prev.double() / 7 + pos / 11 + y.double() / 13
        return torch.where(y == IGNORE, 0.0, nll)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [tuple(x.shape) for x, _, _ in self.calls]


def reference_nll(row: list[int], context: int, stride: int) -> float:
    """Summed NLL of row[1:], one window at a time, by the documented rule: windows start at 0, stride,
    2 stride, ...; a window's inputs are row[begin:begin + context] (never the last token); each target is
    scored by the first window that reaches it."""
    total, scored, begin = 0.0, set(), 0
    while len(scored) < len(row) - 1:
        inputs = row[begin:min(begin + context, len(row) - 1)]
        for i, x in enumerate(inputs):
            target = begin + i + 1
            if target not in scored:
                scored.add(target)
                total += token_cost(x, inputs[i - 1] if i else 0, i, row[target])
        begin += stride
    return total


def random_rows(lengths: list[int], seed: int = 0) -> list[list[int]]:
    """[bos] + ids + [eos] rows of the given total lengths, ids 3..60."""
    g = np.random.default_rng(seed)
    return [[1, *g.integers(3, 61, n - 2).tolist(), 2] for n in lengths]


def two_window_rows(n: int) -> list[list[int]]:
    """n rows of 9 tokens: two windows each at context 4, stride 4."""
    return random_rows([9] * n)


# ----------------------------------------------------------------------------- closed forms

def test_target_nll_is_fp32_cross_entropy_and_zero_on_ignored_targets():
    """NLL = logsumexp(logits) - logits[target], in float32 whatever the logits' dtype, 0 where the target
    is IGNORE."""
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    targets = torch.tensor([[0, 4, IGNORE], [IGNORE, 2, 1]])
    expected = [[0.0 if y == IGNORE else (torch.logsumexp(logits[b, t], 0) - logits[b, t, y]).item()
                 for t, y in enumerate(row)] for b, row in enumerate(targets.tolist())]
    nll = target_nll(logits, targets)
    assert nll.dtype == torch.float32 and nll.shape == (2, 3)
    assert nll.tolist() == [pytest.approx(row, rel=1e-6) for row in expected]
    assert nll[0, 2].item() == 0.0 and nll[1, 0].item() == 0.0
    assert target_nll(logits.bfloat16(), targets).dtype == torch.float32


def test_perplexities_are_exp_mean_nll_and_nan_for_a_row_without_targets():
    """exp(nll / tokens) per row; a row with no scored target is NaN, not a ZeroDivisionError."""
    scores = Scores(np.array([0.0, 2 * math.log(3.0), 1.5]), np.array([0, 2, 3]), np.array([0.0, 4.0, 5.0]))
    ppl = scores.perplexities()
    assert math.isnan(ppl[0]) and ppl[1:] == [pytest.approx(3.0), pytest.approx(math.exp(0.5))]


def test_check_batch_fits_asks_for_the_logits_and_their_fp32_copy(monkeypatch):
    """It asks require_memory for windows x length x vocab x (itemsize + 4) bytes, an exact integer."""
    asked = []
    monkeypatch.setattr(scoring, "require_memory", lambda need, device, what, fix: asked.append((need, what)))
    check_batch_fits(3, 10, 7, torch.device("cpu"), torch.float32)
    check_batch_fits(3, 10, 7, torch.device("cpu"), torch.bfloat16)
    assert [need for need, _ in asked] == [3 * 10 * 7 * 8, 3 * 10 * 7 * 6]
    assert all(type(need) is int for need, _ in asked)
    assert asked[0][1] == "a batch of 3 windows x 10 positions x 7 logits"


# ----------------------------------------------------------------------------- score_rows

@pytest.mark.parametrize("context,stride,batch_size", [(8, 3, 4), (8, 8, 1), (5, 2, 16)])
def test_score_rows_equals_a_float64_hand_loop_over_windows(context, stride, batch_size):
    """Per-row summed NLL in float64 (a float32 accumulator would round the thirds), counts len(row) - 1 as
    int64, in row order, however the windows are batched."""
    rows = random_rows([2, 3, 9, 17, 30, 6])
    nll, count = score_rows(StubModel(), rows, context, stride=stride, batch_size=batch_size)
    assert nll.dtype == np.float64 and count.dtype == np.int64
    assert count.tolist() == [len(r) - 1 for r in rows]
    assert nll.tolist() == pytest.approx([reference_nll(r, context, stride) for r in rows], rel=1e-13)


def test_score_rows_sums_a_float32_models_window_in_float64():
    """A model answering in float32 (as target_nll does) has each window's targets summed in float64: 2**24
    plus ones, which a float32 sum would round back to 2**24."""
    def nll_fn(x, y):
        out = torch.where(y == IGNORE, 0.0, 1.0).float()
        out[:, 0] = 2.0 ** 24
        return out

    nll, count = score_rows(nll_fn, [[1, 5, 6, 7, 8, 2]], context=5)
    assert count.tolist() == [5] and nll.tolist() == [2.0 ** 24 + 4]


@pytest.mark.parametrize("stride", [0, -1, 5])
def test_score_rows_refuses_a_stride_outside_1_to_the_context(stride):
    """stride 0 is not the default (None is): it is refused, as any stride outside 1..context."""
    with pytest.raises(ValueError, match="stride must be between 1 and the context"):
        score_rows(StubModel(), [[1, 5, 6, 2]], context=4, stride=stride)


def test_score_rows_lays_out_windows_and_pads_with_pad_id_0_by_default():
    """Windows longest first, inputs row[begin:end] then pad id 0, targets only the window's new ones (the
    rest IGNORE); by default one batch of exactly the windows, as long as the longest (no fixed shapes)."""
    model = StubModel()
    rows = [[1, 10, 11, 12, 13, 14, 15, 2], [1, 9, 2]]
    score_rows(model, rows, context=4, stride=2)
    (x, y, _), = model.calls
    assert x.tolist() == [[1, 10, 11, 12], [11, 12, 13, 14], [13, 14, 15, 0], [1, 9, 0, 0]]
    assert y.tolist() == [[10, 11, 12, 13], [IGNORE, IGNORE, 14, 15], [IGNORE, IGNORE, 2, IGNORE],
                          [9, 2, IGNORE, IGNORE]]


def test_score_rows_batches_16_windows_by_default():
    """40 windows of 4 positions go in forwards of 16, 16 and 8 windows, the last not padded."""
    model = StubModel()
    score_rows(model, two_window_rows(20), context=4, stride=4)
    assert model.shapes == [(16, 4), (16, 4), (8, 4)]


def test_fixed_shapes_pad_every_batch_to_full_shape_and_change_nothing():
    """fixed_shapes: every batch is batch_size windows x a multiple of 64 positions, the padding pad_id
    inputs and IGNORE targets; the scores are those without it."""
    rows = random_rows([5, 40, 12, 3, 20])
    fixed, plain = StubModel(), StubModel()
    nll, count = score_rows(fixed, rows, context=100, batch_size=3, pad_id=7, fixed_shapes=True)
    expected = score_rows(plain, rows, context=100, batch_size=3, pad_id=7)
    assert fixed.shapes == [(3, 64), (3, 64)] and plain.shapes == [(3, 39), (2, 4)]
    x, y, _ = fixed.calls[-1]
    assert (x[y == IGNORE] == 7).all() and (y[2] == IGNORE).all()            # a whole padding window
    assert nll.tolist() == pytest.approx(expected[0].tolist(), rel=1e-13)      # summed in another order
    assert count.tolist() == expected[1].tolist()


def test_score_rows_feeds_int64_whatever_the_integer_type_of_rows_and_pad_id():
    """Inputs and targets reach the model as int64 (what embeddings and cross_entropy index with), also
    from uint16 token arrays and a numpy pad id."""
    model = StubModel()
    rows = [np.array(r, dtype=np.uint16) for r in random_rows([9, 4])]
    score_rows(model, rows, context=8, pad_id=np.uint16(0))
    (x, y, _), = model.calls
    assert x.dtype == torch.int64 and y.dtype == torch.int64


def test_rows_without_targets_score_zero_and_nan_perplexity():
    """A row of one token has no window: 0 NLL, 0 targets, NaN perplexity; no rows give empty arrays."""
    nll, count = score_rows(StubModel(), [[1]], context=4)
    assert nll.tolist() == [0.0] and count.tolist() == [0] and count.dtype == np.int64
    rows = [[1], [1, 5, 2]]
    nll, count = score_rows(StubModel(), rows, context=4)
    assert nll.tolist() == pytest.approx([0.0, reference_nll(rows[1], 4, 2)], rel=1e-13)
    ppl = Scores(nll, count, np.ones(2)).perplexities()
    assert math.isnan(ppl[0]) and ppl[1] == pytest.approx(math.exp(nll[1] / 2))
    nll, count = score_rows(StubModel(), [], context=4)
    assert nll.shape == count.shape == (0,)


@pytest.mark.parametrize("dtype,on", [(torch.float32, False), (torch.bfloat16, True)])
def test_score_rows_runs_the_forward_under_autocast_of_dtype(dtype, on):
    """Each forward runs under the trainer's autocast: on for bf16, off for float32."""
    model = StubModel()
    score_rows(model, two_window_rows(3), context=4, stride=4, batch_size=4, dtype=dtype)
    assert [c[2] for c in model.calls] == [on, on]


def test_score_rows_shows_a_bar_over_windows_only_when_asked(capsys):
    """No output by default; with progress the bar reads 'scoring N rows', done/total windows, windows/s."""
    score_rows(StubModel(), two_window_rows(20), context=4, stride=4)
    assert capsys.readouterr().err == ""
    score_rows(StubModel(), two_window_rows(20), context=4, stride=4, progress=True)
    err = capsys.readouterr().err
    assert "scoring 20 rows" in err and "40/40" in err and " windows/s" in err


@pytest.mark.parametrize("n_rows,fixed_shapes,n_windows", [(3, False, 3), (3, True, 8), (12, False, 8)])
def test_memory_check_counts_the_windows_of_one_batch(monkeypatch, n_rows, fixed_shapes, n_windows):
    """With vocab_size, one batch is checked: min(batch_size, windows) windows, or batch_size with fixed
    shapes, x context positions x vocab x 8 bytes (fp32 logits and their fp32 copy)."""
    asked = []
    monkeypatch.setattr(scoring, "require_memory", lambda need, *_: asked.append(need))
    rows = random_rows([5] * n_rows)                                           # one window each
    score_rows(StubModel(), rows, context=8, batch_size=8, fixed_shapes=fixed_shapes, vocab_size=10)
    assert asked == [n_windows * 8 * 10 * 8]


def test_memory_check_refuses_before_the_first_forward(monkeypatch):
    """A batch that does not fit is refused before the model is called."""
    def refuse(need, device, what, fix):
        raise ValueError(f"{what} needs too much: {fix}")
    monkeypatch.setattr(scoring, "require_memory", refuse)
    model = StubModel()
    with pytest.raises(ValueError, match="a batch of 2 windows x 8 positions x 10 logits"):
        score_rows(model, random_rows([5, 6]), context=8, vocab_size=10)
    assert model.calls == []


# ----------------------------------------------------------------------------- score_texts

class PadTokenizer(CharTokenizer):
    """The char tokenizer with a pad id other than score_rows' default."""
    pad_id = 57


TEXTS = ["héllo wörld", "zq", "日本語🙂 ok", "the cat sat on the mat"]


def test_score_texts_scores_each_text_as_one_row_and_times_the_pass():
    """[bos] + ids + [eos] per text; NLL as the hand loop, int64 targets, float64 UTF-8 bytes, and the
    pass's wall time (more than 0, at most the call's)."""
    tok = CharTokenizer()
    start = time.perf_counter()
    scores = score_texts(StubModel(), tok, TEXTS, context=6, stride=4, batch_size=3)
    wall = time.perf_counter() - start
    rows = [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in TEXTS]
    assert scores.nll.tolist() == pytest.approx([reference_nll(r, 6, 4) for r in rows], rel=1e-13)
    assert scores.tokens.dtype == np.int64 and scores.tokens.tolist() == [len(t) + 1 for t in TEXTS]
    assert scores.bytes.dtype == np.float64 and scores.bytes.tolist() == [len(t.encode()) for t in TEXTS]
    assert 0 < scores.seconds <= wall


def test_score_texts_defaults_are_16_windows_a_batch_no_fixed_shapes_and_no_bar(capsys):
    """By default score_texts batches 16 windows, pads neither batch nor length, and prints nothing."""
    model = StubModel()
    score_texts(model, CharTokenizer(), ["abcdefg"] * 20, context=4, stride=4)    # 9 tokens: 2 windows each
    assert model.shapes == [(16, 4), (16, 4), (8, 4)]
    assert capsys.readouterr().err == ""


def test_score_texts_passes_the_tokenizers_pad_id_and_vocabulary_and_the_options_on(monkeypatch, capsys):
    """Padding is the tokenizer's pad id; the memory check uses its vocabulary; progress and fixed_shapes
    reach score_rows (a bar; batches of batch_size x 64)."""
    asked = []
    monkeypatch.setattr(scoring, "require_memory", lambda need, *_: asked.append(need))
    model = StubModel()
    score_texts(model, PadTokenizer(), TEXTS, context=100, batch_size=3, progress=True, fixed_shapes=True)
    assert asked == [3 * 100 * PadTokenizer.vocab_size * 8]
    assert model.shapes == [(3, 64), (3, 64)]
    assert all((x[y == IGNORE] == PadTokenizer.pad_id).all() for x, y, _ in model.calls)
    assert "scoring 4 rows" in capsys.readouterr().err
