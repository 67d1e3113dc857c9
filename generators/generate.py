"""Generate text from a checkpoint.

    python -m generators.generate --ckpt checkpoints/baseline-quickstart/best.pt --prompt "Once upon a time"
    python -m generators.generate --ckpt PATH --prompt-file prompts.txt --temperature 0 --max-new-tokens 60
    python -m generators.generate --ckpt PATH --prompt "Tom saw a dog" --beam 5
"""

import argparse
import sys
import time

import torch

from cli import exit_with

from generators.beam_search import beam_search
from generators.generation import Generator
from generators.sampling import check_sampling
from models.checkpoint import CheckpointError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Generate text from a trained checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint path (checkpoints/<run>/best.pt)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for a batch")
    parser.add_argument("--prompt-file", help="a file with one prompt per line")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--truncate", action="store_true",
                        help="a prompt longer than the context keeps its last tokens (default: an error)")
    parser.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--beam", type=int, default=None, help="beam search with this many beams (one prompt)")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--no-kv-cache", action="store_true", help="re-run the whole prefix every step")
    parser.add_argument("--stream", action="store_true", help="print tokens as they come (one prompt)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16")
    parser.add_argument("--compile", action="store_true", help="compile the decode step")
    parser.add_argument("--quantize", choices=("int8",), default=None, help="weight-only int8 linear layers")
    args = parser.parse_args(argv)

    prompts = list(args.prompt)
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompts += [line.rstrip("\n") for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            exit_with(f"error: cannot read --prompt-file {args.prompt_file}: {e}", 2)
    if not prompts:
        exit_with("error: give --prompt TEXT (repeatable) or --prompt-file FILE", 2)
    if (args.beam is not None or args.stream) and len(prompts) > 1:
        exit_with("error: --beam and --stream take one prompt", 2)
    if args.max_new_tokens < 1:
        exit_with(f"error: --max-new-tokens must be >= 1, got {args.max_new_tokens}", 2)
    if args.beam is not None and args.beam < 1:
        exit_with(f"error: --beam must be >= 1 (beams kept per step), got {args.beam}", 2)
    try:
        check_sampling(args.temperature, args.top_p, args.top_k, cli=True)
    except ValueError as e:
        exit_with(f"error: {e}", 2)
    try:
        generator = Generator.build(args.ckpt, max_batch_size=max(len(prompts), args.beam or 1), device=args.device,
                                    dtype=args.dtype, compile=args.compile, quantize=args.quantize)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        exit_with(f"error: {e}", 1)
    try:
        check_sampling(args.temperature, args.top_p, args.top_k, generator.tokenizer.vocab_size, cli=True)
        tokens = [generator.fit_prompt(generator.prompt_tokens(p), args.max_new_tokens, args.truncate)
                  for p in prompts]
    except ValueError as e:
        exit_with(f"error: {e}", 2)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.beam is not None:
        hypotheses = beam_search(generator, tokens[0], args.beam, args.max_new_tokens, args.length_penalty)
        n_new = sum(len(h.tokens) for h in hypotheses)
        for rank, h in enumerate(hypotheses):
            print(f"[beam {rank + 1}] score {h.score:.4f} (logprob {h.logprob:.2f}, {len(h.tokens)} tokens)")
            print(prompts[0] + generator.tokenizer.decode(h.tokens), "\n")
    elif args.stream:
        print(prompts[0], end="", flush=True)
        pieces = list(_echo(generator.stream(prompts[0], args.temperature, args.top_p, args.top_k,
                                             args.max_new_tokens, args.seed, truncate=args.truncate)))
        n_new = len(generator.tokenizer.encode("".join(pieces)))
        print()
    else:
        results = generator.text_completion(prompts, args.temperature, args.top_p, args.top_k, args.max_new_tokens,
                                            seed=args.seed, use_cache=not args.no_kv_cache, truncate=args.truncate)
        n_new = sum(len(r["tokens"]) for r in results)
        for prompt, r in zip(prompts, results):
            print(prompt + r["generation"], "\n")
    seconds = time.perf_counter() - t0
    print(f"{n_new} new tokens in {seconds:.2f}s ({n_new / seconds:,.1f} tokens/s, "
          f"{'no ' if args.no_kv_cache else ''}KV cache, {generator.device})", file=sys.stderr)


def _echo(pieces):
    for piece in pieces:
        print(piece, end="", flush=True)
        yield piece


if __name__ == "__main__":
    main()
