"""TRACE-style task evaluation of a checkpoint (perplexity lives in the `perplexity` package).

    python -m eval.run --ckpt checkpoints/<run>/best.pt --tasks story_continuation,cloze,dialogue

Modules: metrics (accuracy, BLEU, ROUGE-L, SARI, edit similarity), tasks (task definitions and
builders; their example data in task_data/), run (the harness CLI).
"""
