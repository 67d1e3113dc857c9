"""Tokenization throughput (MB/s of UTF-8 text) of each tokenizer on the built-in story corpus.

    python -m benchmarks.tokenize_throughput [--stories 20000] [--gpt2-dir DIR] [--llama-model FILE]

Encodes with `encode_batch` in chunks of the size the data pipeline uses; reports the best of
`--repeats` timings after one warm-up pass. Prints a table and writes JSON to benchmarks/results/.
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from dataset_definitions.config import TokenizerConfig
from dataset_definitions.prepare import ENCODE_CHUNK
from dataset_definitions.stories import stories
from dataset_definitions.tokenizer_training import build_tokenizer


def time_encoding(tokenizer, texts: list[str], repeats: int) -> tuple[float, int]:
    """Best wall time over `repeats` passes, and the number of tokens produced."""
    def one_pass():
        return sum(len(ids) for i in range(0, len(texts), ENCODE_CHUNK)
                   for ids in tokenizer.encode_batch(texts[i:i + ENCODE_CHUNK]))
    n_tokens = one_pass()  # warm-up (thread pools, caches)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        one_pass()
        best = min(best, time.perf_counter() - t0)
    return best, n_tokens


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpt2-dir", help="folder with encoder.json + vocab.bpe (default: tiktoken download)")
    parser.add_argument("--llama-model", help="a Llama tokenizer.model")
    parser.add_argument("--out", default="benchmarks/results/tokenize_throughput.json")
    args = parser.parse_args(argv)

    texts = list(stories(args.stories, seed=0))
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    configs = {
        "bpe": TokenizerConfig(kind="bpe", vocab_size=8192),
        "sentencepiece": TokenizerConfig(kind="sentencepiece", vocab_size=2048),
        "word": TokenizerConfig(kind="word", vocab_size=8192),
        "gpt2": TokenizerConfig(kind="gpt2", path=args.gpt2_dir),
    }
    if args.llama_model:
        configs["llama"] = TokenizerConfig(kind="llama", path=args.llama_model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in configs.items():
            try:
                tokenizer = build_tokenizer(cfg, lambda: iter(texts), Path(tmp), f"bench-{name}")
            except (RuntimeError, FileNotFoundError) as e:
                print(f"skip {name}: {e}")
                continue
            seconds, n_tokens = time_encoding(tokenizer, texts, args.repeats)
            rows.append({"tokenizer": name, "vocab": tokenizer.vocab_size, "mb": round(mb, 2),
                         "seconds": round(seconds, 3), "mb_per_s": round(mb / seconds, 2),
                         "tokens_per_s": round(n_tokens / seconds), "bytes_per_token": round(mb * 1e6 / n_tokens, 2)})

    print(f"\n{args.stories:,} built-in stories, {mb:.1f} MB, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'tokenizer':14s} {'vocab':>7s} {'seconds':>8s} {'MB/s':>7s} {'tokens/s':>11s} {'bytes/token':>11s}")
    for r in rows:
        print(f"{r['tokenizer']:14s} {r['vocab']:>7,} {r['seconds']:>8.3f} {r['mb_per_s']:>7.1f} "
              f"{r['tokens_per_s']:>11,} {r['bytes_per_token']:>11.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "tokenize_throughput", "machine": platform.machine(),
                               "threads": torch.get_num_threads(), "stories": args.stories, "results": rows},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
