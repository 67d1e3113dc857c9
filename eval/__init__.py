"""Evaluation: perplexity (eval.perplexity, behind perplexity-runners/) and TRACE-style tasks.

    python perplexity-runners/run_perplexity.py --ckpt checkpoints/<run>/best.pt
    python -m eval.run --ckpt checkpoints/<run>/best.pt --tasks story_continuation,cloze,dialogue

Modules: scoring (per-row NLL with sliding windows, batched), perplexity (checkpoints, summaries,
the runners' CLI), metrics (accuracy,
BLEU, ROUGE-L, SARI, edit similarity), tasks (task definitions and builders), run (the harness CLI).
Nothing is imported here, so the perplexity runners need none of the task metrics' packages.
"""
