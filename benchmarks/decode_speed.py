"""Decoding speed against Hugging Face `generate` and the memory floor; with --ckpt, each decoder's BLEU too.

Ours is `modelskv` + `generators`; with a trained checkpoint, the quality (BLEU) of each decoder on
held-out prompts is measured beside its speed.

    python -m benchmarks.decode_speed --device cuda          # gpt2_125m (context 512), bf16, batch 1 and 32
    python -m benchmarks.decode_speed --device cpu --quick   # tiny sizes: a smoke run
    python -m benchmarks.decode_speed --ckpt checkpoints/baseline-quickstart/best.pt [--batch-sizes 1,32] [--compile]

Random weights (no checkpoint or tokenizer files); a 16-token prompt, 256 new tokens, EOS ignored
so every decoder makes the same number of tokens. New tokens/s are medians after warm-up; compile
time is apart. The floor is one step's bytes (the weights, plus the whole static KV cache the
compiled step reads) over the device's copy bandwidth, measured here (3.0 TB/s assumed on CPU).
Greedy tokens of the cached decoder are checked against the uncached one (and against Hugging
Face in fp32, where they must agree token for token).

With --ckpt: greedy new tokens/s (EOS ignored) with and without the KV cache at each batch size,
compiled with --compile, and the same weights in Hugging Face `generate` where the family converts;
median of --repeats runs after one warm-up. Quality: held-out rows of the checkpoint's data are cut
into a prompt (the first --prompt-words words) and a reference (the rest); the continuation of each
decoder (greedy, sampling, beams) is scored with corpus BLEU (sacrebleu). Writes
benchmarks/results/generation_<cpu|cuda>.json, which `python -m visualizations.plots` draws.
"""

import copy
import time

import torch

from benchmarks.common import (benchmark_parser, default_out, device_info, median_seconds, peak_memory_gb,
                               print_targets, seconds_of, write_results)
from benchmarks.synthetic import IdTokenizer
from cli import exit_with
from experiment_config import ConfigError, prepare_run_data
from generators.beam_search import beam_search
from generators.generation import Generator
from models import ModelConfig
from models.checkpoint import CheckpointError
from modelskv.load import inference_model, load_model
from modelskv.quantize import quantize_int8
from runtime import resolve_device, resolve_dtype

FULL = dict(preset="gpt2_125m", overrides=dict(context=512), prompt=16, new_tokens=256, batches=(1, 32),
            repeats=3, beam=5, no_cache_tokens=64)
QUICK = dict(preset="baseline", overrides=dict(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=512, context=64),
             prompt=8, new_tokens=16, batches=(1, 4), repeats=1, beam=3, no_cache_tokens=16)
ASSUMED_BANDWIDTH = 3.0e12  # B/s, H100 device copy; replaced by the measured figure on a GPU


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    if device.type != "cuda":
        return ASSUMED_BANDWIDTH
    src = torch.randn(256 * 2**20, device=device)             # 1 GiB
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, warmup=2, repeats=10)
    return 2 * src.numel() * src.element_size() / seconds


def floor_tokens_per_s(model, batch: int, bandwidth: float) -> float:
    """New tokens/s if a step only had to read the weights once and the whole KV cache."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cache = sum(b.kv_cache.k[:batch].numel() * b.kv_cache.k.element_size() * 2 for b in model.blocks)
    return batch / ((weights + cache) / bandwidth)


def build_generator(cfg: ModelConfig, max_batch: int, max_seq_len: int, device: torch.device,
                    dtype: torch.dtype) -> Generator:
    torch.manual_seed(0)
    model = inference_model(cfg, device, dtype, max_batch, max_seq_len)
    return Generator(model, IdTokenizer(cfg.vocab_size, bos_id=None, pad_id=0, eos_id=1), device)


def int8_copy(gen: Generator) -> Generator:
    model = quantize_int8(copy.deepcopy(gen.model))
    return Generator(model, gen.tokenizer, gen.device)


def run(device: str = "auto", quick: bool = False) -> dict:
    """Time every decoder, print the table, return the JSON payload."""
    dev = resolve_device(device)
    s = QUICK if quick else FULL
    cfg = ModelConfig.from_preset(s["preset"], **s["overrides"])
    dtype = resolve_dtype("auto", dev)  # bf16 on GPUs, fp32 on CPU
    max_seq_len = s["prompt"] + s["new_tokens"]
    max_batch = max(max(s["batches"]), s["beam"])
    gen = build_generator(cfg, max_batch, max_seq_len, dev, dtype)
    int8 = int8_copy(gen)
    compiled = gen
    if dev.type == "cuda":  # compiling (CUDA graphs) is what a GPU runs; on CPU the smoke run stays eager
        compiled = build_generator(cfg, max_batch, max_seq_len, dev, dtype)
        compiled.compile_decode()
        int8.compile_decode()
    fast = " + compile" if dev.type == "cuda" else ""
    prompt = torch.randint(2, cfg.vocab_size, (s["prompt"],), generator=torch.Generator().manual_seed(1)).tolist()
    bandwidth = copy_bandwidth(dev)
    rows, checks = [], {}

    def timed(name: str, batch: int, new_tokens: int, fn, first_call_compiles: bool = False):
        first = seconds_of(fn, dev)                     # warm-up; compiles where the decoder is compiled
        seconds = median_seconds(fn, dev, warmup=0, repeats=s["repeats"])
        rows.append({"decoder": name, "batch": batch, "new_tokens": new_tokens, "seconds": seconds,
                     "tokens_per_s": batch * new_tokens / seconds, "ms_per_step": 1e3 * seconds / new_tokens,
                     "compile_s": max(first - seconds, 0.0) if first_call_compiles else None})

    def greedy(g: Generator, batch: int, n: int, use_cache: bool = True, temperature: float = 0.0):
        return g.generate([prompt] * batch, n, temperature=temperature, top_p=0.9, use_cache=use_cache,
                          stop_at_eos=False, seed=0)[0]

    n, n_plain = s["new_tokens"], s["no_cache_tokens"]
    checks["cache_equals_no_cache"] = greedy(gen, 1, n_plain) == greedy(gen, 1, n_plain, use_cache=False)
    if compiled is not gen:  # in bf16 a near-tie may flip between fused and unfused kernels: reported, not fatal
        checks["compiled_equals_eager"] = greedy(compiled, 1, n) == greedy(gen, 1, n)
    for batch in s["batches"]:
        if batch == 1:
            timed("ours, no cache", 1, n_plain, lambda: greedy(gen, 1, n_plain, use_cache=False))
        timed("ours, KV cache", batch, n, lambda: greedy(gen, batch, n))
        if compiled is not gen:
            timed("ours, cache + compile", batch, n, lambda: greedy(compiled, batch, n), True)
        timed(f"ours{fast}, sampling", batch, n, lambda: greedy(compiled, batch, n, temperature=0.8), bool(fast))
        timed(f"ours, int8{fast}", batch, n, lambda: greedy(int8, batch, n), bool(fast))
    beam = s["beam"]
    timed(f"ours, beam {beam}{fast}", 1, n, lambda: beam_search(compiled, prompt, beam, n, early_stopping=False),
          bool(fast))
    hf_rows(gen, prompt, s, dev, dtype, checks, timed)

    for r in rows:
        r["vs_floor"] = r["tokens_per_s"] / floor_tokens_per_s(gen.model, r["batch"], bandwidth)
        hf = next((x for x in rows if x["decoder"] == "HF generate" and x["batch"] == r["batch"]), None)
        r["vs_hf"] = r["tokens_per_s"] / hf["tokens_per_s"] if hf else None
    goals = targets(rows) if dev.type == "cuda" and not quick else []
    print_table(rows, goals, checks, dev, s, bandwidth)
    return {"benchmark": "decode_speed", **device_info(dev), "preset": s["preset"], "context": cfg.context,
            "prompt_tokens": s["prompt"], "dtype": str(dtype).removeprefix("torch."), "bandwidth": bandwidth,
            "peak_gb": peak_memory_gb(dev), "checks": checks, "results": rows, "targets": goals}


def hf_reference(gen: Generator, special_ids: tuple):
    """The generator's weights in a Hugging Face model on its device and dtype; None (said why) where
    transformers is missing or the family has no Hugging Face equivalent."""
    from models.convert import ConversionError, to_hf_model

    ckpt = {"model": gen.model.state_dict(), "config": {"model": dict(gen.model.cfg.__dict__)}}
    try:
        return to_hf_model(ckpt, special_ids=special_ids).to(device=gen.device, dtype=gen.model.tok_emb.weight.dtype)
    except ImportError:
        print("skip the Hugging Face reference: pip install transformers")
    except ConversionError as e:
        print(f"skip the Hugging Face reference: {e}")
    return None


def hf_generate(hf, prompt: list[int], batch: int, new_tokens: int, pad_id: int, **kwargs) -> list[list[int]]:
    """Exactly new_tokens greedy tokens per row from Hugging Face `generate` (its default dynamic cache)."""
    ids = torch.tensor([prompt] * batch, device=hf.device)
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                      min_new_tokens=new_tokens, pad_token_id=pad_id, **kwargs)
    return out[:, len(prompt):].tolist()


def hf_rows(gen: Generator, prompt: list[int], s: dict, dev: torch.device, dtype: torch.dtype, checks: dict,
            timed) -> None:
    """Time Hugging Face `generate` on the same weights: dynamic cache, and static cache + compile on GPUs."""
    hf = hf_reference(gen, special_ids=(None, 1))
    if hf is None:
        return
    n = s["new_tokens"]

    def generate(batch: int, **kwargs):
        return hf_generate(hf, prompt, batch, n, pad_id=0, **kwargs)

    if dtype == torch.float32:
        checks["hf_equals_ours"] = generate(1)[0] == gen.generate([prompt], n, temperature=0, stop_at_eos=False)[0][0]
    for batch in s["batches"]:
        timed("HF generate", batch, n, lambda: generate(batch))
    if dev.type == "cuda":
        try:
            hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)
            for batch in s["batches"]:
                timed("HF static cache + compile", batch, n, lambda: generate(batch, cache_implementation="static"),
                      True)
        except Exception as e:  # a reference that does not run on this transformers version is reported, not fatal
            print(f"skip HF static cache + compile: {type(e).__name__}: {str(e).splitlines()[0][:200]}")


def targets(rows: list[dict]) -> list[dict]:
    def best(batch, prefix="ours, cache + compile"):  # greedy, the compiled step
        return max((r["tokens_per_s"] for r in rows if r["batch"] == batch and r["decoder"].startswith(prefix)),
                   default=0.0)
    greedy1 = best(1)
    beam = max((r["tokens_per_s"] for r in rows if "beam" in r["decoder"]), default=0.0)
    return [{"target": "batch 1 >= 5,000 new tokens/s", "value": greedy1, "met": greedy1 >= 5000},
            {"target": "batch 32 >= 60,000 new tokens/s", "value": best(32), "met": best(32) >= 60000},
            {"target": "beam 5 >= 1/3 of greedy (ratio)", "value": beam / max(greedy1, 1e-9),
             "met": beam >= greedy1 / 3}]


def print_table(rows, goals, checks, dev, s, bandwidth) -> None:
    print(f"\ndecoding on {device_info(dev)['device']}: {s['preset']}, prompt {s['prompt']}, {s['new_tokens']} new tokens, "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s{' (assumed)' if dev.type != 'cuda' else ''}")
    print(f"{'decoder':28s} {'batch':>5s} {'new tokens/s':>13s} {'ms/step':>8s} {'vs HF':>7s} {'vs floor':>8s} "
          f"{'compile s':>9s}")
    for r in rows:
        vs_hf = f"{r['vs_hf']:.2f}" if r["vs_hf"] is not None else "-"
        comp = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        print(f"{r['decoder']:28s} {r['batch']:>5d} {r['tokens_per_s']:>13,.1f} {r['ms_per_step']:>8.2f} {vs_hf:>7s} "
              f"{r['vs_floor']:>8.3f} {comp:>9s}")
    print("checks: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in checks.items()))
    print_targets(goals)


# ----------------------------------------------------------------------------- a trained checkpoint

def checkpoint_speed(gen: Generator, batch_sizes: list[int], new_tokens: int, repeats: int, prompt: list[int],
                     decoder: str = "greedy") -> list[dict]:
    """Greedy new tokens/s at each batch size, with the KV cache and (not for a compiled decoder) without."""
    rows = []
    for batch in batch_sizes:
        for use_cache in (True,) if decoder != "greedy" else (True, False):
            seconds = median_seconds(lambda: gen.generate([prompt] * batch, new_tokens, temperature=0,
                                                          use_cache=use_cache, stop_at_eos=False),
                                     gen.device, warmup=1, repeats=repeats)
            rows.append({"decoder": decoder, "kv_cache": use_cache, "batch": batch, "new_tokens": new_tokens,
                         "seconds": seconds, "tokens_per_s": batch * new_tokens / seconds})
    return rows


def checkpoint_hf_speed(gen: Generator, batch_sizes: list[int], new_tokens: int, repeats: int,
                        prompt: list[int]) -> list[dict]:
    """The same weights in Hugging Face `generate` (greedy, its default dynamic cache)."""
    tok = gen.tokenizer
    hf = hf_reference(gen, special_ids=(tok.bos_id, tok.eos_id, tok.pad_id))
    if hf is None:
        return []
    rows = []
    for batch in batch_sizes:
        seconds = median_seconds(lambda: hf_generate(hf, prompt, batch, new_tokens, tok.pad_id), gen.device,
                                 warmup=1, repeats=repeats)
        rows.append({"decoder": "HF generate", "kv_cache": True, "batch": batch, "new_tokens": new_tokens,
                     "seconds": seconds, "tokens_per_s": batch * new_tokens / seconds})
    return rows


def quality_rows(gen: Generator, rows: list[str], prompt_words: int, new_tokens: int, beams: list[int]) -> list[dict]:
    """Corpus BLEU and new tokens/s of greedy, sampling and each beam width on held-out prompts."""
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


def run_checkpoint(args) -> dict:
    """Speed and quality of a trained checkpoint's decoders; prints the tables, returns the JSON payload."""
    batch_sizes, beams = _positive_ints("--batch-sizes", args.batch_sizes), _positive_ints("--beams", args.beams)
    if args.new_tokens < 1 or args.repeats < 1 or args.rows < 1:
        exit_with("error: --new-tokens, --repeats and --rows must be >= 1", 2)
    try:  # a checkpoint that is not ours, damaged or crafted: one line, before any timing
        loaded = load_model(args.ckpt, max_batch=max(batch_sizes + beams), device=args.device, dtype=args.dtype)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        exit_with(f"error: {e}", 1)
    try:
        cfg = loaded.run_config()
    except ConfigError as e:
        exit_with(f"error: {args.ckpt} holds a run config that does not load ({e}): give a checkpoint the trainer wrote", 1)
    gen = Generator(loaded.model, loaded.tokenizer, loaded.device)
    prompt = gen.prompt_tokens("Once upon a time there was")[:args.prompt_len]
    speed = checkpoint_speed(gen, batch_sizes, args.new_tokens, args.repeats, prompt)
    if args.compile:
        gen.compile_decode()
        compile_s = seconds_of(lambda: gen.generate([gen.prompt_tokens("Once")], 2, temperature=0, stop_at_eos=False),
                               gen.device)  # compiles now, timed apart
        speed += [{**row, "compile_s": compile_s} for row in checkpoint_speed(
            gen, batch_sizes, args.new_tokens, args.repeats, prompt, decoder="greedy compiled")]
    speed += checkpoint_hf_speed(gen, batch_sizes, args.new_tokens, args.repeats, prompt)
    heldout = prepare_run_data(cfg, log=lambda *a: None).rows("heldout")
    quality = quality_rows(gen, heldout[:args.rows], args.prompt_words, args.new_tokens, beams)

    info, dtype = device_info(gen.device), str(loaded.dtype).removeprefix("torch.")
    print(f"\n{args.ckpt} on {info['device']}, {dtype}, {info['cpu_threads']} CPU threads")
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
    return {"benchmark": "generation", "ckpt": args.ckpt, **info, "dtype": dtype, "speed": speed, "quality": quality}


def _positive_ints(option: str, text: str) -> list[int]:
    """Comma-separated positive integers, or exit 2 naming the option."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        exit_with(f"error: {option} takes comma-separated integers >= 1, got {text!r}", 2)
    return values


CHECKPOINT_OPTIONS = {"dtype": "auto", "batch_sizes": "1,32", "new_tokens": 64, "prompt_len": 8, "repeats": 3,
                      "rows": 50, "prompt_words": 12, "beams": "5,10", "compile": False}  # their defaults


def main(argv=None) -> None:
    parser = benchmark_parser("decode_speed", __doc__.splitlines()[0])  # --out with --ckpt: generation_<cuda|cpu>.json
    trained = parser.add_argument_group("a trained checkpoint (--ckpt): speed and BLEU of its decoders")
    trained.add_argument("--ckpt", help="checkpoint path (checkpoints/<run>/best.pt)")
    trained.add_argument("--dtype", help="auto (bf16 on GPUs, fp32 on CPU) | fp32 | bf16 | fp16")
    trained.add_argument("--batch-sizes", help="comma-separated (default 1,32)")
    trained.add_argument("--new-tokens", type=int, help="new tokens per prompt (default 64)")
    trained.add_argument("--prompt-len", type=int, help="prompt tokens for the speed runs (default 8)")
    trained.add_argument("--repeats", type=int, help="timed runs per case (default 3)")
    trained.add_argument("--rows", type=int, help="held-out rows for the quality runs (default 50)")
    trained.add_argument("--prompt-words", type=int, help="words of each quality prompt (default 12)")
    trained.add_argument("--beams", help="comma-separated beam widths (default 5,10)")
    trained.add_argument("--compile", action="store_true", default=None, help="also time the compiled decode step")
    args = parser.parse_args(argv)
    given = [k for k in CHECKPOINT_OPTIONS if getattr(args, k) is not None]
    if args.ckpt is None:
        if given:
            parser.error(f"--{given[0].replace('_', '-')} needs --ckpt (random weights use fixed settings)")
        write_results(args.out or default_out("decode_speed", resolve_device(args.device)), run(args.device, args.quick))
        return
    if args.quick:
        parser.error("--quick sizes random weights; with --ckpt set --batch-sizes, --new-tokens, --rows instead")
    for key, default in CHECKPOINT_OPTIONS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    write_results(args.out or default_out("generation", resolve_device(args.device)), run_checkpoint(args))

if __name__ == "__main__":
    main()
