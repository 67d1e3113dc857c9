"""The perplexity runners' logic: a checkpoint loaded for scoring, and the command lines of
perplexity-runners/run_perplexity.py (`main`) and run_text_perplexity.py (`main_text`).

The commands, and what is scored and how, are in the package docstring (perplexity/__init__.py).
"""

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from cli import run_or_exit
from dataset_definitions.config import DataConfig
from dataset_definitions.prepare import PreparedData
from dataset_definitions.sources import DataError, iter_rows
from dataset_definitions.tokenization import Tokenizer
from experiment_config import ConfigError, RunConfig, prepare_run_data
from models.checkpoint import CheckpointError
from modelskv.load import load_model
from perplexity.results import compare_table, report, results_dir, save_results
from perplexity.scoring import LogitsFn, NllFn, score_packed, score_texts, token_nll
from runtime import resolve_dtype

# ----------------------------------------------------------------------------- checkpoints

@dataclass
class Scorer:
    """A checkpoint ready to score: its logits and NLL functions, run config, tokenizer, device and dtype."""
    logits_fn: LogitsFn
    nll_fn: NllFn               # compiled when load_scorer(compile=True)
    cfg: RunConfig
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype
    step: int
    compiled: bool = False

    @property
    def context(self) -> int:
        return self.cfg.model.context


def load_scorer(ckpt: str | Path, device: str = "auto", dtype: str = "auto", training_model: bool = False,
                quantize: str | None = None, compile: bool = False) -> Scorer:
    """Load a checkpoint for scoring.

    Args:
        ckpt: path of a checkpoint written by the trainer.
        device: "auto", "cpu", "cuda", ...
        dtype: "auto" (bf16 autocast on GPUs, fp32 on CPU), "fp32", "bf16" or "fp16".
        training_model: use the training class in eval mode (what `Trainer.evaluate` runs; for Falcon
            its eval capacity may drop tokens depending on the batch) instead of the inference model,
            whose mixture-of-experts layers drop nothing, so padding and batching change no score.
        quantize: None, or "int8" for weight-only int8 linear layers (modelskv/quantize.py).
        compile: torch.compile the forward and its cross-entropy as one graph (score with
            fixed_shapes=True so it compiles once per window length bucket).
    Returns:
        A Scorer.
    """
    # weights stay fp32 and scoring autocasts to dtype (as the trainer evaluates); the inference
    # model's cache is unused (forward_full), so it is one position
    loaded = load_model(ckpt, max_batch=1, max_seq_len=1, device=device, dtype="fp32", quantize=quantize,
                        training_model=training_model)
    model = loaded.model
    logits_fn = (lambda x: model(x).logits) if training_model else model.forward_full
    nll_fn = token_nll(logits_fn)
    if compile:
        nll_fn = torch.compile(nll_fn, dynamic=False)
    return Scorer(logits_fn, nll_fn, loaded.run_config(), loaded.tokenizer, loaded.device,
                  resolve_dtype(dtype, loaded.device), loaded.step, compile)


def prepared_data(scorer: Scorer, log=None) -> PreparedData:
    """The checkpoint's prepared data (built if missing), checked to use the checkpoint's tokenizer."""
    cfg = scorer.cfg
    data = prepare_run_data(cfg, log=log or (lambda *a: None))
    mine, theirs = scorer.tokenizer.spec(), data.meta["tokenizer"]
    if any(mine.get(k) != theirs.get(k) for k in ("kind", "sha256", "vocab_size")):
        raise DataError(f"the data cache {data.dir} was encoded with another tokenizer than the checkpoint's "
                        f"({theirs.get('kind')} {str(theirs.get('sha256'))[:12]} vs {mine.get('kind')} "
                        f"{str(mine.get('sha256'))[:12]}): rebuild it with the checkpoint's tokenizer.path")
    return data


# ----------------------------------------------------------------------------- command lines

def _parser(text_file: bool) -> argparse.ArgumentParser:
    what = "a text file" if text_file else "the held-out rows (or the packed val stream) of its data config"
    p = argparse.ArgumentParser(description=f"Perplexity of a checkpoint on {what}.")
    p.add_argument("--ckpt", help="checkpoint path (checkpoints/<run>/best.pt)")
    if text_file:
        p.add_argument("--text-file", required=True, help="UTF-8 text, one row per line or split by --delimiter")
        p.add_argument("--delimiter", help="row separator, e.g. '<|endoftext|>' or '\\n\\n' (default: newline)")
    else:
        p.add_argument("--split", choices=("heldout", "val"), default="heldout",
                       help="rows saved by the data pipeline (never training rows)")
        p.add_argument("--packed", action="store_true",
                       help="score the split's token stream as Trainer.evaluate does (reproduces the val loss)")
        p.add_argument("--compare", nargs="+", metavar="NAME", help="print a table of saved results and exit")
    p.add_argument("--rows", type=int, default=10_000, help="first N rows (default 10000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per forward pass (default 128 on a GPU, 16 on CPU; packed: the run's train.batch_size)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the forward + cross-entropy (GPU: faster after ~30 s of compiling)")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: context // 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs, fp32 on CPU) | fp32 | bf16 | fp16")
    p.add_argument("--quantize", choices=("int8",), default=None, help="weight-only int8 linear layers")
    p.add_argument("--log-dir", default="logs", help="results go to LOG_DIR/perplexity-losses/")
    p.add_argument("--out-name", help="name of the result files (default: the run name, + a suffix)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> None:
    """run_perplexity.py: held-out (or val) rows of the checkpoint's data, or the packed stream."""
    args = _parser(text_file=False).parse_args(argv)
    if args.compare:
        run_or_exit(lambda: print(compare_table(args.compare, args.log_dir)), EXIT_CODES)
        return
    run_or_exit(lambda: _run(args, text_file=False), EXIT_CODES)


def main_text(argv: list[str] | None = None) -> None:
    """run_text_perplexity.py: rows of another text file."""
    args = _parser(text_file=True).parse_args(argv)
    run_or_exit(lambda: _run(args, text_file=True), EXIT_CODES)


class UsageError(ValueError):
    """A bad command-line value (exit status 2)."""


# user errors become one line on stderr: exit status 2 for a bad argument, 1 for the rest
EXIT_CODES = {UsageError: 2, (CheckpointError, DataError, ConfigError, FileNotFoundError, ValueError): 1}


def _run(args, text_file: bool) -> None:
    if not args.ckpt:
        raise UsageError("--ckpt PATH is required (or --compare NAME ...)")
    if args.rows <= 0 or (args.batch_size is not None and args.batch_size <= 0):
        raise UsageError("--rows and --batch-size must be positive")
    if args.stride is not None and args.stride < 1:
        raise UsageError(f"--stride must be >= 1 (at most the context), got {args.stride}")
    texts, skipped = _read_text_file(args.text_file, args.delimiter, args.rows) if text_file else (None, None)
    packed = not text_file and args.packed
    if packed and args.stride is not None:
        raise UsageError("--stride does not apply to --packed: its blocks are scored whole, as in training")
    scorer = load_scorer(args.ckpt, args.device, args.dtype, training_model=packed, quantize=args.quantize,
                         compile=args.compile)
    context = scorer.context
    stride = context if packed else max(1, context // 2) if args.stride is None else args.stride
    if not 1 <= stride <= context:
        raise UsageError(f"--stride must be between 1 and the context ({context}), got {stride}")
    batch = args.batch_size or (scorer.cfg.train.batch_size if packed else 128 if scorer.device.type == "cuda" else 16)
    run = scorer.cfg.run_name or Path(args.ckpt).parent.name
    info = {"run": run, "ckpt": str(args.ckpt), "step": scorer.step, "device": str(scorer.device),
            "dtype": str(scorer.dtype).removeprefix("torch."), "context": context, "stride": stride,
            "batch_size": batch, "packed": packed, "eos_scored": True, "quantize": args.quantize,
            "compiled": args.compile}
    progress = not args.quiet
    if packed:
        data = prepared_data(scorer)
        name = args.out_name or f"{run}-{args.split}-packed"
        info.update(split=args.split, source=f"{args.split} packed", data_dir=str(data.dir))
        scores = score_packed(scorer.nll_fn, data.tokens(args.split), context, data.bytes_per_token(args.split),
                              batch, scorer.device, scorer.dtype, progress, scorer.tokenizer.vocab_size)
    else:
        if text_file:
            name = args.out_name or f"{run}-{Path(args.text_file).stem}"
            info.update(split="text", source=str(args.text_file), skipped=dict(skipped))
        else:
            data = prepared_data(scorer)
            texts = _split_rows(data, args.split, args.rows)
            name = args.out_name or (run if args.split == "heldout" else f"{run}-{args.split}")
            info.update(split=args.split, source=f"{args.split} rows", data_dir=str(data.dir))
        scores = score_texts(scorer.nll_fn, scorer.tokenizer, texts, context, stride, batch,
                             scorer.device, scorer.dtype, progress, fixed_shapes=scorer.compiled)
    if args.quantize and not args.out_name:  # keep the full-precision result beside it
        name = f"{name}-{args.quantize}"
    summary = save_results(name, scores, info, args.log_dir)
    print(report(summary))
    print(f"wrote {results_dir(args.log_dir) / name}.pkl and .json")


def _split_rows(data: PreparedData, split: str, limit: int) -> list[str]:
    texts = data.rows(split)
    if not texts:
        raise DataError(f"the {split} split of {data.dir} has no rows (data.{split}_rows is 0)")
    if len(texts) < limit:
        print(f"note: the {split} split has {len(texts):,} rows (fewer than --rows {limit:,}); scoring all",
              file=sys.stderr)
    return texts[:limit]


def _read_text_file(path: str, delimiter: str | None, limit: int) -> tuple[list[str], Counter]:
    """Rows of a text file (empty and non-UTF-8 rows skipped and counted); one-line errors for bad files."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--text-file {path} not found")
    if delimiter is not None:  # let a shell user type '\n\n' or '\t'
        delimiter = delimiter.replace("\\n", "\n").replace("\\t", "\t")
        if not delimiter:
            raise ValueError("--delimiter is empty")
    skipped: Counter = Counter()
    texts = list(iter_rows(DataConfig(source="text", path=path, delimiter=delimiter), skipped, limit))
    if not texts:
        raise DataError(f"--text-file {path} has no non-empty UTF-8 rows"
                        + (f" (skipped: {dict(skipped)})" if skipped else ""))
    return texts, skipped
