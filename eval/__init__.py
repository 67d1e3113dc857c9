"""TRACE-style task evaluation of a checkpoint (perplexity lives in the `perplexity` package).

    python -m eval.run --ckpt checkpoints/<run>/best.pt --tasks story_continuation,cloze,dialogue

Modules: metrics (accuracy, BLEU, ROUGE-L, SARI, edit similarity), tasks (task definitions and
builders; their example data in task_data/), run (the harness CLI), harness (our checkpoints as the
lm-evaluation-harness model `small-lm`) and lm_eval_harness (lm_eval's CLI with it registered).
"""
