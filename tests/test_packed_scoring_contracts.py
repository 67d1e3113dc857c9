"""The packed scorer (the trainer's validation loss and `run_perplexity --packed`) against a hand loop:
blocks batched as asked, per-block sums in float64, counts as integers, autocast as the trainer runs it,
the memory check before the first forward, the pass's time, and the summary's rates."""

import math
import time

import numpy as np
import pytest
import torch

from perplexity.scoring import Scores, packed_nll, score_packed

IGNORE = -100


class _Blocks:
    """Rows of unequal counted targets (some ignored), like DocumentRows: batch(index) -> (x, y)."""

    def __init__(self, n: int = 7, length: int = 5):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 50, (n, length), generator=g)
        self.y = torch.randint(0, 50, (n, length), generator=g)
        for i in range(n):
            self.y[i, length - i % 3:] = IGNORE          # 0, 1 or 2 ignored targets at the end

    def batch(self, index):
        index = torch.as_tensor(np.asarray(index))
        return self.x[index], self.y[index]


def _nll_fn(calls: list):
    """A deterministic float64 'model': NLL of (x, y) = x / 3 + 1 / 7 (thirds: float32 would round them), 0 on
    ignored targets; records each call's batch size and whether autocast was on."""
    def nll(x, y):
        calls.append((x.size(0), torch.is_autocast_enabled("cpu")))
        return torch.where(y == IGNORE, 0.0, x.double() / 3 + 1 / 7)
    return nll


def test_packed_nll_batches_as_asked_and_sums_each_block_in_float64():
    blocks, calls = _Blocks(), []
    index = np.array([6, 0, 3, 2, 5, 1, 4])
    nll, targets = packed_nll(_nll_fn(calls), blocks, index, batch_size=3, device=torch.device("cpu"))
    assert [c[0] for c in calls] == [3, 3, 1]                                     # 7 blocks, 3 per forward
    expected = [sum(blocks.x[i, t].item() / 3 + 1 / 7 for t in range(5) if blocks.y[i, t] != IGNORE) for i in index]
    assert nll.dtype == torch.float64 and targets.dtype == torch.int64
    assert nll.tolist() == pytest.approx(expected, rel=1e-15)                      # in index order, per block
    assert targets.tolist() == [int((blocks.y[i] != IGNORE).sum()) for i in index]
    assert len(set(targets.tolist())) == 3                                          # the blocks' counts differ


def test_packed_nll_sums_a_float32_models_targets_in_float64():
    """A model answering in float32 (as target_nll does) has its block's targets summed in float64: 2**24 plus
    ones, which a float32 sum would round back to 2**24."""
    blocks = _Blocks(n=2, length=5)
    blocks.y[:] = 1

    def nll_fn(x, y):
        out = torch.ones(x.shape, dtype=torch.float32)
        out[:, 0] = 2.0 ** 24
        return out

    nll, _ = packed_nll(nll_fn, blocks, np.array([0, 1]), batch_size=2, device=torch.device("cpu"))
    assert nll.tolist() == [2.0 ** 24 + 4] * 2


@pytest.mark.parametrize("dtype,on", [(torch.float32, False), (torch.bfloat16, True)])
def test_packed_nll_runs_the_forward_under_the_trainers_autocast(dtype, on):
    calls = []
    packed_nll(_nll_fn(calls), _Blocks(), np.arange(4), batch_size=2, device=torch.device("cpu"), dtype=dtype)
    assert [c[1] for c in calls] == [on, on]


def test_packed_nll_and_score_packed_show_a_bar_only_when_asked(capsys):
    tokens = np.arange(3 * 8 + 1) % 50
    packed_nll(_nll_fn([]), _Blocks(), np.arange(7), batch_size=2, device=torch.device("cpu"))
    score_packed(_nll_fn([]), tokens, context=8, bytes_per_token=2.0, batch_size=2)
    assert capsys.readouterr().err == ""
    packed_nll(_nll_fn([]), _Blocks(), np.arange(7), batch_size=2, device=torch.device("cpu"), progress=True)
    assert "scoring 7 blocks" in capsys.readouterr().err
    score_packed(_nll_fn([]), tokens, context=8, bytes_per_token=2.0, batch_size=2, progress=True)
    assert "scoring 3 blocks" in capsys.readouterr().err


def test_score_packed_times_the_pass_and_counts_bytes_per_target():
    tokens = np.arange(4 * 8 + 3) % 50                                              # 4 blocks and a short tail
    start = time.perf_counter()
    scores = score_packed(_nll_fn([]), tokens, context=8, bytes_per_token=2.5, batch_size=3)
    wall = time.perf_counter() - start
    assert 0 < scores.seconds <= wall
    assert scores.tokens.tolist() == [8, 8, 8, 8] and scores.bytes.tolist() == [20.0] * 4
    block0 = sum(t / 3 + 1 / 7 for t in tokens[:8])
    assert scores.nll[0] == pytest.approx(block0, rel=1e-15)


def test_score_packed_refuses_a_batch_whose_logits_do_not_fit_before_any_forward():
    """The memory check counts min(batch_size, blocks) windows x context x vocab logits (here 2 blocks of
    1,024 positions and a vocabulary of 10^9: far more than any machine's memory)."""
    calls = []
    tokens = np.zeros(2 * 1024 + 1, dtype=np.int64)
    with pytest.raises(ValueError, match=r"a batch of 2 windows x 1,024 positions x 1,000,000,000 logits needs "
                                         r"[\d,.]+ GiB.*--batch-size"):
        score_packed(_nll_fn(calls), tokens, context=1024, bytes_per_token=1.0, batch_size=64,
                     vocab_size=10**9)
    assert calls == []
    score_packed(_nll_fn(calls), tokens, context=1024, bytes_per_token=1.0, batch_size=64, vocab_size=50)
    assert [c[0] for c in calls] == [2]


def test_summary_rates_are_per_second_of_the_pass():
    scores = Scores(np.array([3.0, 6.0, 1.5]), np.array([3, 4, 1]), np.array([10.0, 12.0, 3.0]), seconds=0.5)
    s = scores.summary()
    assert (s["rows_per_s"], s["tokens_per_s"]) == (pytest.approx(6.0), pytest.approx(16.0))
    assert s["corpus_ppl"] == pytest.approx(math.exp(10.5 / 8))
    untimed = Scores(scores.nll, scores.tokens, scores.bytes).summary()
    assert math.isnan(untimed["rows_per_s"]) and math.isnan(untimed["tokens_per_s"])
