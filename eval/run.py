"""TRACE-style task evaluation of a checkpoint: generate for each task's prompts, score, time.

    python -m eval.run --ckpt checkpoints/<run>/best.pt --tasks story_continuation,cloze,dialogue [--limit N]
        [--out FILE] [--temperature 0.6] [--top-p 0.9] [--seed 0] [--batch-size 1] [--max-new-tokens N]
        [--dialogue-file FILE] [--task-file FILE ...] [--metrics accuracy,bleu-1,...]

Tasks (eval/tasks.py): story_continuation and cloze are built on the fly from the held-out rows of
the checkpoint's data config; dialogue reads an HH-RLHF-style jsonl (default: the small example in
eval/task_data/); each --task-file adds a task named after the file (scored with --metrics). Without
--tasks the built-in three run, or only the task files when some are given.

Generation goes through the Llama-style Generator (temperature 0.6, top-p 0.9; --temperature 0 =
greedy; cloze is always greedy). Prompts longer than the context allows are cut from the left
(BOS kept), so a task's new tokens (at most half the context) always fit.

Output (default results/eval/<run>.json): "ckpt", "run", "step", "settings", and "tasks": per task
TRACE's keys "prompts", "results" (the scored predictions), "labels", "eval" (metric -> 0-100),
plus "generations" (raw text) and "runtime": seconds per prompt (mean, median, p5, p95, std) and
new tokens/s. With --batch-size B > 1 a batch's time is shared evenly by its prompts.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cli import run_or_exit
from dataset_definitions.sources import DataError
from eval import tasks as task_defs
from eval.metrics import METRICS, compute
from experiment_config import ConfigError, prepare_run_data
from fileio import atomic_write
from generators.generation import Generator
from models.checkpoint import CheckpointError
from modelskv.load import load_model


def run_task(generator: Generator, task: task_defs.Task, temperature: float = 0.6, top_p: float = 0.9,
             seed: int | None = 0, batch_size: int = 1, max_new_tokens: int | None = None) -> dict:
    """Generate for every prompt of `task`, score the predictions, time the generation.

    Args:
        generator: a Generator built with max_batch_size >= batch_size.
        task: the prompts, labels, metrics and post-processing.
        temperature, top_p: sampling (0 = greedy; a greedy task ignores temperature).
        seed: seeds batch i's sampler with seed + i (None: unseeded).
        batch_size: prompts decoded together.
        max_new_tokens: overrides the task's max_gen_len.
    Returns:
        {"prompts", "results", "labels", "eval", "generations", "runtime"}.
    """
    context = generator.model.max_seq_len
    gen_len = max(1, min(max_new_tokens or task.max_gen_len, context // 2))
    encoded = [_fit(generator.prompt_tokens(p), context - gen_len) for p in task.prompts]
    temperature = 0.0 if task.greedy else temperature
    generations, seconds, new_tokens = [], [], 0
    for b, start in enumerate(range(0, len(encoded), batch_size)):
        batch = encoded[start:start + batch_size]
        t0 = time.perf_counter()
        out, _ = generator.generate(batch, gen_len, temperature, top_p,
                                    seed=None if seed is None else seed + b)  # .tolist() inside syncs
        dt = time.perf_counter() - t0
        seconds += [dt / len(batch)] * len(batch)
        new_tokens += sum(len(o) for o in out)
        generations += [generator.tokenizer.decode(o) for o in out]
    results = [task.postprocess(g, label) for g, label in zip(generations, task.labels)]
    scores = compute(task.metrics, results, task.labels, task.sources)
    return {"prompts": task.prompts, "results": results, "labels": task.labels, "eval": scores,
            "generations": generations, "runtime": runtime_stats(seconds, new_tokens, batch_size, gen_len, temperature)}


def _fit(tokens: list[int], budget: int) -> list[int]:
    """Cut a prompt from the left to `budget` tokens, keeping its first (BOS) token."""
    return tokens if len(tokens) <= budget else [tokens[0], *tokens[len(tokens) - budget + 1:]]


def runtime_stats(seconds: list[float], new_tokens: int, batch_size: int, max_gen_len: int, temperature: float) -> dict:
    """Seconds per prompt (mean, median, p5, p95, population std) and new tokens per second."""
    s = np.asarray(seconds, dtype=np.float64)
    total = float(s.sum())
    return {
        "prompts": len(s), "seconds": total, "mean_s": float(s.mean()), "median_s": float(np.median(s)),
        "p5_s": float(np.percentile(s, 5)), "p95_s": float(np.percentile(s, 95)), "std_s": float(s.std()),
        "new_tokens": new_tokens, "tokens_per_s": new_tokens / total if total > 0 else float("nan"),
        "batch_size": batch_size, "max_gen_len": max_gen_len, "temperature": temperature,
    }


def build_tasks(args, cfg) -> list[task_defs.Task]:
    """The tasks named by --tasks plus one per --task-file."""
    names = args.tasks.split(",") if args.tasks else ([] if args.task_file else list(task_defs.BUILTIN))
    names = [n.strip() for n in names if n.strip()]
    file_stems = {Path(f).stem for f in args.task_file}
    unknown = [n for n in names if n not in task_defs.BUILTIN and n not in file_stems]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}: choose from {list(task_defs.BUILTIN)} or give --task-file FILE")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; known: {list(METRICS)}")
    rows = None
    if {"story_continuation", "cloze"} & set(names):
        rows = prepare_run_data(cfg, log=lambda *a: None).rows("heldout")
        if not rows:
            raise DataError("the checkpoint's data has no held-out rows (data.heldout_rows is 0)")
    built = []
    for name in names:
        if name == "story_continuation":
            built.append(task_defs.story_continuation(rows, args.limit, args.prompt_words))
        elif name == "cloze":
            built.append(task_defs.cloze(rows, args.limit, seed=args.seed))
        elif name == "dialogue":
            built.append(task_defs.dialogue(args.dialogue_file, args.limit))
    built += [task_defs.from_jsonl(f, args.limit, metrics) for f in args.task_file]
    return built


def table(results: dict) -> str:
    """One line per task: item count, every metric any task has (0-100), speed."""
    metrics = [m for m in METRICS if any(m in r["eval"] for r in results.values())]
    header = f"{'task':20s} {'n':>5s} " + " ".join(f"{m:>9s}" for m in metrics) + \
             f" {'s/prompt':>9s} {'p95 s':>8s} {'tok/s':>9s}"
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        cells = " ".join(f"{r['eval'][m]:9.2f}" if m in r["eval"] else f"{'-':>9s}" for m in metrics)
        rt = r["runtime"]
        lines.append(f"{name[:20]:20s} {rt['prompts']:5d} {cells} {rt['mean_s']:9.4f} {rt['p95_s']:8.4f} "
                     f"{rt['tokens_per_s']:9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="TRACE-style task evaluation of a checkpoint.")
    p.add_argument("--ckpt", required=True, help="checkpoint path (checkpoints/<run>/best.pt)")
    p.add_argument("--tasks", help=f"comma-separated: {', '.join(task_defs.BUILTIN)} or task-file names")
    p.add_argument("--task-file", action="append", default=[], metavar="FILE",
                   help="jsonl with prompt and answer per line (repeatable); the task is named after the file")
    p.add_argument("--metrics", default=",".join(task_defs.FILE_METRICS), help="metrics for --task-file tasks")
    p.add_argument("--dialogue-file", default=str(task_defs.DEFAULT_DIALOGUE_FILE),
                   help="HH-RLHF-style jsonl (chosen/rejected) for the dialogue task")
    p.add_argument("--limit", type=int, default=100, help="most items per task")
    p.add_argument("--prompt-words", type=int, default=16, help="story_continuation: words of the prompt")
    p.add_argument("--out", help="output JSON (default results/eval/<run>.json)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1, help="prompts decoded together")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override each task's generation length")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs, fp32 on CPU) | fp32 | bf16 | fp16")
    args = p.parse_args(argv)
    run_or_exit(lambda: evaluate(args), {(CheckpointError, ConfigError, DataError, FileNotFoundError, ValueError): 1})


def evaluate(args) -> None:
    """Load the checkpoint, build and run the tasks, write the JSON and print the table."""
    if args.limit <= 0 or args.batch_size <= 0:
        raise ValueError("--limit and --batch-size must be positive")
    torch.manual_seed(args.seed)
    loaded = load_model(args.ckpt, max_batch=args.batch_size, device=args.device, dtype=args.dtype)
    cfg = loaded.run_config()
    run = cfg.run_name or Path(args.ckpt).parent.name
    task_list = build_tasks(args, cfg)
    generator = Generator(loaded.model, loaded.tokenizer, loaded.device)
    generator.generate([generator.prompt_tokens("Once")], 2, temperature=0)  # warm-up, not timed
    results = {t.name: run_task(generator, t, args.temperature, args.top_p, args.seed, args.batch_size,
                                args.max_new_tokens) for t in task_list}
    out = Path(args.out or Path("results") / "eval" / f"{run}.json")
    settings = {k: getattr(args, k) for k in ("temperature", "top_p", "seed", "limit", "batch_size", "max_new_tokens")}
    settings.update(device=str(generator.device), dtype=str(loaded.dtype))
    doc = {"ckpt": str(args.ckpt), "run": run, "step": loaded.step, "settings": settings, "tasks": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(doc, indent=2, ensure_ascii=False))
    print(table(results))
    print(f"wrote {out}")

if __name__ == "__main__":
    main()
