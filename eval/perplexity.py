"""Perplexity and bits per byte of a checkpoint: held-out rows, another text file, the packed val stream.

    python perplexity-runners/run_perplexity.py --ckpt checkpoints/<run>/best.pt [--rows 10000] [--stride S]
    python perplexity-runners/run_perplexity.py --ckpt PATH --split val --packed   # = the trainer's val loss
    python perplexity-runners/run_text_perplexity.py --ckpt PATH --text-file other.txt [--delimiter D]
    python perplexity-runners/run_perplexity.py --compare RUN1 RUN2 ...

Definitions (DESIGN section 6), each made once here:
- A row is encoded as training documents are, [bos] + ids + [eos] (tokenizers without BOS, such
  as GPT-2's, start with EOS, the token that precedes a document in the packed stream). BOS is
  context, never a target; every other token is, EOS included: ending the document is part of
  modelling it, and the trainer's loss scores EOS too. A row of L tokens has L - 1 targets.
- Rows longer than the context are scored with a sliding window (`window_plan`): windows of up to
  `context` inputs start every `stride` tokens; each scores only the targets that no earlier window
  scored, so every target is scored exactly once, with as much left context as its window gives.
- Per-row perplexity = exp(row NLL / row targets); the runner saves the list (pickle, in row
  order) and prints its mean (the seed's aggregate) and median, the corpus perplexity
  exp(total NLL / total targets), bits per token = corpus loss / ln 2, and bits per byte = total NLL / ln 2 / UTF-8 bytes of the rows'
  text (bytes of the text only: BOS/EOS have none, but EOS's NLL counts, as in the trainer).
- `--packed` scores a split's token stream exactly as `Trainer.evaluate` does: blocks of
  context + 1 tokens at stride = context, total NLL / target tokens, the training model class in
  eval mode, batches of train.batch_size; bits per byte = loss / ln 2 / (bytes / token of the split).

Outputs: logs/perplexity-losses/<name>.pkl (list of per-row perplexities) and <name>.json (summary).
"""

import argparse
import json
import math
import pickle
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import models
import modelskv
from cli import run_or_exit
from dataset_definitions.config import DataConfig
from dataset_definitions.prepare import PreparedData, prepare_data
from dataset_definitions.sources import DataError, iter_rows
from dataset_definitions.tokenization import Tokenizer, load_tokenizer
from eval.scoring import (IGNORE, LogitsFn, NllFn, Scores, encode_rows, score_packed, score_rows, score_texts,
                          token_nll, window_plan)
from experiment_config import ConfigError, RunConfig, from_dict
from fileio import atomic_write, load_plain_pickle
from models.checkpoint import CheckpointError, load_checkpoint, load_weights, model_config
from modelskv.quantize import quantize_int8
from runtime import resolve_device, resolve_dtype

__all__ = ["IGNORE", "Scores", "Scorer", "compare_table", "encode_rows", "load_result", "load_scorer", "main",
           "main_text", "prepared_data", "report", "save_results", "score_packed", "score_rows", "score_texts",
           "token_nll", "window_plan"]

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
    checkpoint = load_checkpoint(ckpt)
    cfg = from_dict(checkpoint["config"])
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    mcfg = model_config(checkpoint)
    if training_model:
        model = models.build(mcfg)
        logits_fn = lambda x: model(x)[0]  # noqa: E731  (logits, loss, stats)
    else:
        model = modelskv.build(mcfg, max_batch=1, max_seq_len=1)  # the cache is unused: forward_full
        logits_fn = model.forward_full
    load_weights(model, checkpoint)
    model.to(dev).eval()
    if quantize == "int8":
        quantize_int8(model)
    elif quantize is not None:
        raise ValueError(f"--quantize {quantize!r} is not one of ['int8']")
    nll_fn = token_nll(logits_fn)
    if compile:
        nll_fn = torch.compile(nll_fn, dynamic=False)
    tokenizer = load_tokenizer(checkpoint["tokenizer"])
    return Scorer(logits_fn, nll_fn, cfg, tokenizer, dev, torch_dtype, int(checkpoint.get("step", 0)), compile)


def prepared_data(scorer: Scorer, log=None) -> PreparedData:
    """The checkpoint's prepared data (built if missing), checked to use the checkpoint's tokenizer."""
    cfg = scorer.cfg
    data = prepare_data(cfg.data, cfg.tokenizer, cfg.data_dir, cfg.tokenizer_dir, log=log or (lambda *a: None))
    mine, theirs = scorer.tokenizer.spec(), data.meta["tokenizer"]
    if any(mine.get(k) != theirs.get(k) for k in ("kind", "sha256", "vocab_size")):
        raise DataError(f"the data cache {data.dir} was encoded with another tokenizer than the checkpoint's "
                        f"({theirs.get('kind')} {str(theirs.get('sha256'))[:12]} vs {mine.get('kind')} "
                        f"{str(mine.get('sha256'))[:12]}): rebuild it with the checkpoint's tokenizer.path")
    return data


# ----------------------------------------------------------------------------- results

def results_dir(log_dir: str | Path) -> Path:
    return Path(log_dir) / "perplexity-losses"


def save_results(name: str, scores: Scores, info: dict, log_dir: str | Path = "logs") -> dict:
    """Write <log_dir>/perplexity-losses/<name>.pkl (per-row perplexities) and <name>.json (summary)."""
    out = results_dir(log_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**scores.summary(), **info, "name": name}
    bad = [k for k in ("loss", "mean", "median", "corpus_ppl", "bpb") if not math.isfinite(summary.get(k, 0.0))]
    if bad:
        raise ValueError(f"{info.get('ckpt')}: the scores are not finite ({', '.join(f'{k}={summary[k]}' for k in bad)}); "
                         f"nothing written to {out}. The checkpoint's weights or the dtype overflow: try --dtype fp32")
    previous = out / f"{name}.json"
    if previous.is_file():  # never silently replace another checkpoint's numbers
        try:
            old = json.loads(previous.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("ckpt") != info.get("ckpt") or old.get("source") != info.get("source"):
            print(f"note: replacing {previous} (was {old.get('ckpt')}, {old.get('source')}); "
                  "use --out-name to keep both", file=sys.stderr)
    atomic_write(out / f"{name}.pkl", pickle.dumps(scores.perplexities()))
    atomic_write(out / f"{name}.json", json.dumps(summary, indent=2))
    return summary


def load_result(name: str, log_dir: str | Path = "logs") -> dict:
    """A saved summary; for a pickle without JSON (the seed's logs) the numbers its list gives."""
    out = results_dir(log_dir)
    if (out / f"{name}.json").is_file():
        return json.loads((out / f"{name}.json").read_text())
    if (out / f"{name}.pkl").is_file():
        ppl = [float(p) for p in load_plain_pickle(out / f"{name}.pkl")]
        return {"name": name, "rows": len(ppl), "mean": statistics.fmean(ppl) if ppl else math.nan,
                "median": statistics.median(ppl) if ppl else math.nan, "source": "pkl only"}
    raise FileNotFoundError(f"no perplexity results named {name!r} in {out} (run run_perplexity.py first)")


def compare_table(names: Sequence[str], log_dir: str | Path = "logs") -> str:
    """A table of several saved results, one line each."""
    header = f"{'name':24s} {'source':16s} {'rows':>7s} {'tokens':>10s} {'mean ppl':>9s} {'median':>9s} " \
             f"{'corpus ppl':>10s} {'bpb':>7s} {'rows/s':>8s}"
    lines = [header, "-" * len(header)]
    for name in names:
        r = load_result(name, log_dir)
        lines.append(f"{name:24s} {str(r.get('source', '-'))[:16]:16s} {r['rows']:>7,} {_num(r.get('tokens'), ',d'):>10s} "
                     f"{_num(r['mean'], '.3f'):>9s} {_num(r['median'], '.3f'):>9s} "
                     f"{_num(r.get('corpus_ppl'), '.3f'):>10s} {_num(r.get('bpb'), '.4f'):>7s} "
                     f"{_num(r.get('rows_per_s'), ',.1f'):>8s}")
    return "\n".join(lines)


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(summary: dict) -> str:
    """The printed summary of one scoring pass."""
    unit = "block" if summary.get("packed") else "row"
    seed = "" if summary.get("packed") else "   (the seed's aggregate)"
    skipped = summary.get("skipped") or {}
    skipped = f"; {sum(skipped.values()):,} rows skipped ({', '.join(skipped)})" if skipped else ""
    return "\n".join([
        f"{summary['source']} of {summary['run']} (step {summary['step']}): {summary['rows']:,} {unit}s, "
        f"{summary['tokens']:,} scored tokens, {summary['bytes']:,} bytes{skipped}",
        f"  {f'mean per-{unit} ppl':22s}{summary['mean']:12.3f}{seed}",
        f"  {f'median per-{unit} ppl':22s}{summary['median']:12.3f}",
        f"  {'corpus ppl':22s}{summary['corpus_ppl']:12.3f}   exp(total NLL / total tokens) = exp({summary['loss']:.4f})",
        f"  {'bits per token':22s}{summary['bits_per_token']:12.4f}   (loss / ln 2)",
        f"  {'bits per byte':22s}{summary['bpb']:12.4f}",
        f"  {summary['rows']:,} {unit}s in {summary['seconds']:.2f}s: {summary['rows_per_s']:,.1f} {unit}s/s, "
        f"{summary['tokens_per_s']:,.0f} tokens/s on {summary['device']} ({summary['dtype']})",
    ])


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
                              batch, scorer.device, scorer.dtype, progress)
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
