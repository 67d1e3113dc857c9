"""Scoring token rows: per-row summed NLL with sliding windows, batched for the GPU.

The definitions (which tokens are targets, how windows cover a long row, what perplexity and
bits per byte mean) are those of the package docstring (perplexity/__init__.py). Scoring functions take an
`NllFn`, tokens (B, T) and targets (B, T) -> per-token NLL (B, T), 0 where the target is IGNORE,
so a compiled one fuses the fp32 log-softmax into the head instead of writing fp32 logits;
`token_nll(logits_fn)` builds one from any logits function. Per-window sums stay on the device
and come back to the host once, at the end.
"""

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataset_definitions.datasets import TokenBlocks
from dataset_definitions.tokenization import Tokenizer
from runtime import autocast, require_memory, to_device
from train_logs import bits_per_token

IGNORE = -100                   # target id that cross_entropy skips (padding, already-scored targets)
LogitsFn = Callable[[torch.Tensor], torch.Tensor]               # tokens (B, T) -> logits (B, T, V)
NllFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]    # tokens, targets (B, T) -> nll (B, T)
SHAPE_MULTIPLE = 64             # fixed_shapes: window lengths are padded up to a multiple of this


def target_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL (B, T) of targets (B, T) under logits (B, T, V): fp32 cross-entropy per token, 0 on IGNORE targets."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")


def token_nll(logits_fn: LogitsFn) -> NllFn:
    """The NllFn of a logits function (`target_nll` of its logits)."""
    return lambda x, y: target_nll(logits_fn(x), y)


def check_batch_fits(n_windows: int, length: int, vocab_size: int, device: torch.device, dtype: torch.dtype) -> None:
    """A ValueError naming the size, before the first forward, when one batch's logits (in dtype, and the
    fp32 copy cross-entropy reads) need more memory than `device` has free."""
    need = n_windows * length * vocab_size * (dtype.itemsize + 4)
    require_memory(need, device, f"a batch of {n_windows:,} windows x {length:,} positions x {vocab_size:,} logits",
                   "lower the batch size (--batch-size)")


def encode_rows(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each text as [bos] + ids + [eos] (EOS in place of a missing BOS), as the data pipeline writes documents."""
    return [[tokenizer.start_id, *ids, tokenizer.eos_id] for ids in tokenizer.encode_batch(list(texts))]


def window_plan(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a row of n_tokens: (begin, end, n_new) per window.

    The window's inputs are tokens[begin:end] (end - begin <= context), its targets tokens[begin+1:end+1];
    only the last n_new targets are scored (the ones no earlier window scored). Windows start every
    `stride` tokens until the last target is covered; stride == context gives non-overlapping chunks.
    """
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be between 1 and the context ({context}), got {stride}")
    plan, begin, scored_end, last = [], 0, 0, n_tokens - 1
    while scored_end < last:
        end = min(begin + context, last)
        plan.append((begin, end, end - scored_end))
        scored_end = end
        begin += stride
    return plan


def exp_or_inf(x: float) -> float:
    """exp(x) as a perplexity: inf where it overflows a float (an inf loss is an inf perplexity), NaN kept."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


@dataclass
class Scores:
    """Per-row totals of one scoring pass (a row is a document, or a block in packed mode)."""
    nll: np.ndarray         # (N,) float64: summed NLL of the row's scored targets, in nats
    tokens: np.ndarray      # (N,) int64: scored targets of the row
    bytes: np.ndarray       # (N,) float64: UTF-8 bytes of the row's text (packed: targets x bytes/token)
    seconds: float = 0.0    # wall time of the forward passes

    def perplexities(self) -> list[float]:
        """exp(mean NLL) of each row, in row order (inf past float range, NaN for a row with no targets)."""
        return [exp_or_inf(n / t) if t else math.nan for n, t in zip(self.nll.tolist(), self.tokens.tolist())]

    def summary(self) -> dict:
        """The aggregates of the pass, each over all rows:

        mean / median: of the per-row perplexities (`perplexities`); loss: total NLL / total scored
        targets (nats per token); corpus_ppl: exp(loss); bits_per_token: loss / ln 2; bpb: total NLL
        / ln 2 / total UTF-8 bytes; plus rows, tokens (scored targets), bytes, seconds, rows_per_s,
        tokens_per_s. NaN where there is nothing to divide by.
        """
        ppl = self.perplexities()
        total_nll, total_tokens, total_bytes = float(self.nll.sum()), int(self.tokens.sum()), float(self.bytes.sum())
        loss = total_nll / total_tokens if total_tokens else math.nan
        return {
            "rows": len(ppl), "tokens": total_tokens, "bytes": round(total_bytes),
            "mean": statistics.fmean(ppl) if ppl else math.nan,
            "median": statistics.median(ppl) if ppl else math.nan,
            "loss": loss, "corpus_ppl": exp_or_inf(loss),
            "bits_per_token": bits_per_token(loss),
            "bpb": bits_per_token(total_nll) / total_bytes if total_bytes else math.nan,
            "seconds": self.seconds,
            "rows_per_s": len(ppl) / self.seconds if self.seconds > 0 else math.nan,
            "tokens_per_s": total_tokens / self.seconds if self.seconds > 0 else math.nan,
        }


@torch.inference_mode()
def score_rows(nll_fn: NllFn, rows: Sequence[Sequence[int]], context: int, stride: int | None = None,
               batch_size: int = 16, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               pad_id: int = 0, progress: bool = False, fixed_shapes: bool = False,
               vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and scored-target count of each row of token ids, windows batched across rows.

    Args:
        nll_fn: tokens (B, T), targets (B, T) -> NLL (B, T); causal (right padding must not change
            earlier positions). `token_nll(logits_fn)` makes one from a logits function.
        rows: token ids per row, already [bos] + ids + [eos].
        context: most inputs per window (the model's context).
        stride: distance between window starts (default: context // 2); see `window_plan`.
        batch_size: windows per forward pass.
        device, dtype: where to run and the autocast dtype (float32 = none).
        pad_id: input id of padding positions (their targets are ignored).
        progress: show a tqdm bar over windows.
        fixed_shapes: pad every batch to batch_size windows and its length up to a multiple of
            SHAPE_MULTIPLE (at most the context): few distinct shapes, so a compiled nll_fn is not
            recompiled for every batch. The padding is ignored targets; the result is the same.
        vocab_size: given, a batch whose logits would not fit in the device's free memory is refused first.
    Returns:
        (nll, count): float64 (N,) summed NLL in nats and int64 (N,) scored targets (= len(row) - 1).
    """
    stride = max(1, context // 2) if stride is None else stride
    device = torch.device(device)
    windows = [(i, *w) for i, row in enumerate(rows) for w in window_plan(len(row), context, stride)]
    windows.sort(key=lambda w: w[2] - w[1], reverse=True)  # similar lengths together: little padding
    if vocab_size:
        check_batch_fits(batch_size if fixed_shapes else min(batch_size, len(windows)), context, vocab_size, device,
                         dtype)
    window_nll = torch.zeros(len(windows), device=device, dtype=torch.float64)
    count = np.zeros(len(rows), dtype=np.int64)
    with tqdm(total=len(windows), desc=f"scoring {len(rows):,} rows", unit=" windows", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            T = batch[0][2] - batch[0][1]
            n_windows = len(batch)
            if fixed_shapes:
                T, n_windows = min(context, -(-T // SHAPE_MULTIPLE) * SHAPE_MULTIPLE), batch_size
            x = np.full((n_windows, T), pad_id, dtype=np.int64)
            y = np.full((n_windows, T), IGNORE, dtype=np.int64)
            for b, (i, begin, end, n_new) in enumerate(batch):
                n = end - begin
                x[b, :n] = rows[i][begin:end]
                y[b, n - n_new:n] = rows[i][end - n_new + 1:end + 1]
                count[i] += n_new
            xt, yt = to_device(torch.from_numpy(x), device), to_device(torch.from_numpy(y), device)
            with autocast(device, dtype):
                token_nll_ = nll_fn(xt, yt)                                          # (B, T), 0 where ignored
            window_nll[start:start + len(batch)] = token_nll_[:len(batch)].double().sum(1)
            bar.update(len(batch))
    nll = np.zeros(len(rows))
    np.add.at(nll, np.array([w[0] for w in windows], dtype=np.int64), window_nll.cpu().numpy())
    return nll, count


def score_texts(nll_fn: NllFn, tokenizer: Tokenizer, texts: Sequence[str], context: int,
                stride: int | None = None, batch_size: int = 16, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, progress: bool = False, fixed_shapes: bool = False) -> Scores:
    """Score each text as one row ([bos] + ids + [eos]); see `score_rows` for the arguments."""
    rows = encode_rows(tokenizer, texts)
    t0 = time.perf_counter()
    nll, count = score_rows(nll_fn, rows, context, stride, batch_size, device, dtype, tokenizer.pad_id, progress,
                            fixed_shapes, tokenizer.vocab_size)
    seconds = time.perf_counter() - t0
    n_bytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.float64)
    return Scores(nll, count, n_bytes, seconds)


@torch.no_grad()
def packed_nll(nll_fn: NllFn, blocks, index: np.ndarray, batch_size: int, device: torch.device,
               dtype: torch.dtype = torch.float32, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL and scored targets of the blocks `index` of `blocks` (TokenBlocks or DocumentRows),
    `batch_size` blocks per forward pass in the order given; both (len(index),), on the device.

    The packed validation loss, of the trainer (`Trainer.evaluate`) and of `score_packed` alike, is
    nll.sum() / targets.sum(): every target != IGNORE of the blocks, no auxiliary losses.
    """
    nll = torch.zeros(len(index), device=device, dtype=torch.float64)
    targets = torch.zeros(len(index), device=device, dtype=torch.int64)
    for start in tqdm(range(0, len(index), batch_size), desc=f"scoring {len(index):,} blocks", unit=" batches",
                      disable=not progress, dynamic_ncols=True):
        rows = slice(start, start + batch_size)
        x, y = (to_device(t, device) for t in blocks.batch(index[rows]))  # (B, T) each
        with autocast(device, dtype):
            nll[rows] = nll_fn(x, y).double().sum(1)
        targets[rows] = (y != IGNORE).sum(1)
    return nll, targets


@torch.inference_mode()
def score_packed(nll_fn: NllFn, tokens: np.ndarray, context: int, bytes_per_token: float,
                 batch_size: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = False, vocab_size: int | None = None) -> Scores:
    """Score a packed token stream as the trainer's validation does (`packed_nll`), one Scores row per block.

    Blocks of context + 1 tokens start every `context` tokens (the incomplete tail is left out, as in
    training); batches take consecutive blocks. A block's bytes are its targets x bytes_per_token, so
    the summary's bpb is the trainer's loss / ln 2 / bytes_per_token.
    """
    blocks = TokenBlocks(tokens, context)  # the trainer's validation blocks
    if vocab_size:  # as score_rows
        check_batch_fits(min(batch_size, len(blocks)), context, vocab_size, torch.device(device), dtype)
    t0 = time.perf_counter()
    nll, targets = packed_nll(nll_fn, blocks, np.arange(len(blocks)), batch_size, torch.device(device), dtype,
                              progress)
    nll, count = nll.cpu().numpy(), targets.cpu().numpy()
    return Scores(nll, count, count * float(bytes_per_token), time.perf_counter() - t0)
