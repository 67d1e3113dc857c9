"""Generation speed and quality of a checkpoint: KV cache vs none, batch 1 vs large, sampling vs beams.

    python -m generators.bench --ckpt checkpoints/baseline-quickstart/best.pt
    python -m generators.bench --ckpt PATH --device cuda --dtype bf16 --batch-sizes 1,32 --compile

Speed: new tokens/s of greedy decoding (EOS ignored, so every run makes the same number of
tokens), median of `--repeats` runs after one warm-up, with and without the KV cache, and the same
weights in Hugging Face `transformers` `generate` when it is installed and the family converts. Quality: held-out rows of the checkpoint's
data are cut into a prompt (the first `--prompt-words` words) and a reference (the rest); each
decoder's continuation is scored with corpus BLEU (sacrebleu). Prints a table, writes JSON.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from dataset_definitions.prepare import prepare_data
from experiment_config import from_dict
from generators.beam_search import beam_search
from generators.generation import Generator
from models.checkpoint import load_checkpoint


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up (synchronised on GPUs)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed_rows(gen: Generator, batch_sizes: list[int], new_tokens: int, repeats: int, prompt_len: int) -> list[dict]:
    rows = []
    prompt = gen.prompt_tokens("Once upon a time there was")[:prompt_len]
    for batch in batch_sizes:
        for use_cache in (True, False):
            run = lambda: gen.generate([prompt] * batch, new_tokens, temperature=0, use_cache=use_cache,
                                       stop_at_eos=False)
            seconds = _timed(run, gen.device, repeats)
            rows.append({"decoder": "greedy", "kv_cache": use_cache, "batch": batch, "new_tokens": new_tokens,
                         "seconds": seconds, "tokens_per_s": batch * new_tokens / seconds})
    return rows


def hf_rows(ckpt_path: str, gen: Generator, batch_sizes: list[int], new_tokens: int, repeats: int,
            prompt_len: int) -> list[dict]:
    """The same weights in Hugging Face `transformers` `generate` (greedy, its default dynamic cache)."""
    try:
        from models.convert import ConversionError, to_hf_model
        hf = to_hf_model(load_checkpoint(ckpt_path)).to(device=gen.device, dtype=gen.model.tok_emb.weight.dtype)
    except ImportError:
        print("skip Hugging Face reference: pip install transformers")
        return []
    except ConversionError as e:
        print(f"skip Hugging Face reference: {e}")
        return []
    prompt = gen.prompt_tokens("Once upon a time there was")[:prompt_len]
    rows = []
    for batch in batch_sizes:
        ids = torch.tensor([prompt] * batch, device=gen.device)
        run = lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  pad_token_id=gen.tokenizer.pad_id)
        seconds = _timed(run, gen.device, repeats)
        rows.append({"decoder": "HF generate", "kv_cache": True, "batch": batch, "new_tokens": new_tokens,
                     "seconds": seconds, "tokens_per_s": batch * new_tokens / seconds})
    return rows


def quality_rows(gen: Generator, rows: list[str], prompt_words: int, new_tokens: int, beams: list[int]) -> list[dict]:
    import sacrebleu

    pairs = [(" ".join(r.split()[:prompt_words]), " ".join(r.split()[prompt_words:])) for r in rows]
    pairs = [(p, ref) for p, ref in pairs if ref]
    prompts, refs = [p for p, _ in pairs], [ref for _, ref in pairs]
    decoders = {"greedy": lambda p: _complete(gen, p, new_tokens, 0.0),
                "sample T=0.6 p=0.9": lambda p: _complete(gen, p, new_tokens, 0.6)}
    for k in beams:
        decoders[f"beam {k}"] = lambda p, k=k: _beam(gen, p, new_tokens, k)
    out = []
    for name, decode in decoders.items():
        t0 = time.perf_counter()
        hyps, n_new = zip(*(decode(p) for p in prompts))
        seconds = time.perf_counter() - t0
        bleu = sacrebleu.corpus_bleu(list(hyps), [refs]).score
        out.append({"decoder": name, "prompts": len(prompts), "bleu": bleu, "seconds": seconds,
                    "tokens_per_s": sum(n_new) / seconds})
    return out


def _complete(gen: Generator, prompt: str, new_tokens: int, temperature: float) -> tuple[str, int]:
    r = gen.text_completion([prompt], temperature=temperature, max_gen_len=new_tokens, seed=0)[0]
    return r["generation"].strip(), len(r["tokens"])


def _beam(gen: Generator, prompt: str, new_tokens: int, k: int) -> tuple[str, int]:
    best = beam_search(gen, gen.prompt_tokens(prompt), k, new_tokens)[0]
    return gen.tokenizer.decode(best.tokens).strip(), len(best.tokens)


def _positive_ints(option: str, text: str) -> list[int]:
    """Comma-separated positive integers, or exit 2 naming the option."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        sys.exit(_usage(f"{option} takes comma-separated integers >= 1, got {text!r}"))
    return values


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=8, help="prompt tokens for the speed runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=50, help="held-out rows for the quality runs")
    parser.add_argument("--prompt-words", type=int, default=12)
    parser.add_argument("--beams", default="5,10")
    parser.add_argument("--compile", action="store_true", help="also time the compiled decode step")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    batch_sizes, beams = _positive_ints("--batch-sizes", args.batch_sizes), _positive_ints("--beams", args.beams)
    if args.new_tokens < 1 or args.repeats < 1 or args.rows < 1:
        sys.exit(_usage("--new-tokens, --repeats and --rows must be >= 1"))
    gen = Generator.build(args.ckpt, max_batch_size=max(batch_sizes + beams), device=args.device, dtype=args.dtype)
    speed = speed_rows(gen, batch_sizes, args.new_tokens, args.repeats, args.prompt_len)
    if args.compile:
        t0 = time.perf_counter()
        gen.compile_decode()
        gen.generate([gen.prompt_tokens("Once")], 2, temperature=0, stop_at_eos=False)  # compile now, timed apart
        compile_s = time.perf_counter() - t0
        for row in speed_rows(gen, batch_sizes, args.new_tokens, args.repeats, args.prompt_len):
            if row["kv_cache"]:
                speed.append({**row, "decoder": "greedy compiled", "compile_s": compile_s})
    speed += hf_rows(args.ckpt, gen, batch_sizes, args.new_tokens, args.repeats, args.prompt_len)
    cfg = from_dict(load_checkpoint(args.ckpt)["config"])
    heldout = prepare_data(cfg.data, cfg.tokenizer, cfg.data_dir, cfg.tokenizer_dir, log=lambda *a: None).rows("heldout")
    quality = quality_rows(gen, heldout[:args.rows], args.prompt_words, args.new_tokens, beams)

    device = torch.cuda.get_device_name(gen.device) if gen.device.type == "cuda" else "cpu"
    dtype = str(gen.model.tok_emb.weight.dtype).replace("torch.", "")
    print(f"\n{args.ckpt} on {device}, {dtype}, {torch.get_num_threads()} CPU threads")
    print(f"{'decoder':18s} {'KV cache':>8s} {'batch':>5s} {'new tokens/s':>13s} {'ms/token':>9s}")
    for r in speed:
        print(f"{r['decoder']:18s} {'yes' if r['kv_cache'] else 'no':>8s} {r['batch']:>5d} "
              f"{r['tokens_per_s']:>13,.1f} {1e3 * r['seconds'] / r['new_tokens']:>9.2f}")
    for batch in batch_sizes:
        cached = next(r for r in speed if r["batch"] == batch and r["kv_cache"] and r["decoder"] == "greedy")
        plain = next(r for r in speed if r["batch"] == batch and not r["kv_cache"])
        hf = next((r for r in speed if r["batch"] == batch and r["decoder"] == "HF generate"), None)
        print(f"batch {batch}: KV cache speed-up {cached['tokens_per_s'] / plain['tokens_per_s']:.2f}x"
              + (f", vs HF generate {cached['tokens_per_s'] / hf['tokens_per_s']:.2f}x" if hf else ""))
    print(f"\n{'decoder':18s} {'prompts':>7s} {'BLEU':>6s} {'new tokens/s':>13s}")
    for r in quality:
        print(f"{r['decoder']:18s} {r['prompts']:>7d} {r['bleu']:>6.2f} {r['tokens_per_s']:>13,.1f}")
    out = Path(args.out or f"benchmarks/results/generation_{'cpu' if device == 'cpu' else 'cuda'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "generation", "ckpt": args.ckpt, "device": device, "dtype": dtype,
                               "torch": torch.__version__, "speed": speed, "quality": quality}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
