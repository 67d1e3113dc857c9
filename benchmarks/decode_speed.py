"""Decoding speed of `modelskv` + `generators` against Hugging Face `generate` and the memory floor.

    python -m benchmarks.decode_speed --device cuda          # gpt2_125m (context 512), bf16, batch 1 and 32
    python -m benchmarks.decode_speed --device cpu --quick   # tiny sizes: a smoke run

Random weights (no checkpoint or tokenizer files); a 16-token prompt, 256 new tokens, EOS ignored
so every decoder makes the same number of tokens. New tokens/s are medians after warm-up; compile
time is apart. The floor is one step's bytes (the weights, plus the whole static KV cache the
compiled step reads) over the device's copy bandwidth, measured here (3.0 TB/s assumed on CPU).
Greedy tokens of the cached decoder are checked against the uncached one (and against Hugging
Face in fp32, where they must agree token for token).
"""

import copy
import time

import torch

import modelskv
from benchmarks.common import benchmark_cli, device_info, median_seconds, peak_memory_gb, print_targets
from runtime import resolve_device
from benchmarks.synthetic import IdTokenizer
from generators.beam_search import beam_search
from generators.generation import Generator
from models import ModelConfig
from modelskv.quantize import quantize_int8

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
    model = modelskv.build(cfg, max_batch, max_seq_len).to(device=device, dtype=dtype)
    model.setup_caches(max_batch, max_seq_len, dtype)
    return Generator(model, IdTokenizer(cfg.vocab_size, bos_id=None, pad_id=0, eos_id=1), device)


def int8_copy(gen: Generator) -> Generator:
    model = quantize_int8(copy.deepcopy(gen.model))
    return Generator(model, gen.tokenizer, gen.device)


def run(device: str = "auto", quick: bool = False) -> dict:
    """Time every decoder, print the table, return the JSON payload."""
    dev = resolve_device(device)
    s = QUICK if quick else FULL
    cfg = ModelConfig.from_preset(s["preset"], **s["overrides"])
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
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
        t0 = time.perf_counter()
        fn()                                            # warm-up; compiles where the decoder is compiled
        first = time.perf_counter() - t0
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


def hf_rows(gen: Generator, prompt: list[int], s: dict, dev: torch.device, dtype: torch.dtype, checks: dict,
            timed) -> None:
    """Time Hugging Face `generate` on the same weights: dynamic cache, and static cache + compile on GPUs."""
    from models.convert import to_hf_model

    try:
        ckpt = {"model": gen.model.state_dict(), "config": {"model": dict(gen.model.cfg.__dict__)}}
        hf = to_hf_model(ckpt, special_ids=(None, 1)).to(device=dev, dtype=dtype)
    except ImportError:
        print("skip the Hugging Face reference: pip install transformers")
        return
    n = s["new_tokens"]

    def generate(batch: int, **kwargs):
        ids = torch.tensor([prompt] * batch, device=dev)
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                          min_new_tokens=n, pad_token_id=0, **kwargs)
        return out[:, len(prompt):].tolist()

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


def main(argv=None) -> None:
    benchmark_cli("decode_speed", run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
