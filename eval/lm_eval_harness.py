"""lm-evaluation-harness's command line with our checkpoints registered as the model `small-lm`.

    python -m eval.lm_eval_harness --model small-lm --model_args ckpt=checkpoints/<run>/best.pt --tasks NAMES
        [--include_path DIR] [--limit N] [--output_path DIR] [--log_samples] ...

Every lm_eval option works: this imports eval/harness.py (which registers the model; lm_eval 0.4
reads no plugin entry points, so its own `lm_eval` command cannot find it) and runs lm_eval's CLI.
What the model answers to each request type: eval/harness.py.
"""

import sys

from cli import run_or_exit
from models.checkpoint import CheckpointError


def main(argv: list[str] | None = None) -> None:
    run_or_exit(lambda: _run(sys.argv[1:] if argv is None else argv),
                {(CheckpointError, FileNotFoundError, ImportError, ValueError): 1})


def _run(argv: list[str]) -> None:
    import eval.harness  # noqa: F401  (registers small-lm; ImportError naming the extra without lm_eval)
    from lm_eval.__main__ import cli_evaluate

    saved, sys.argv = sys.argv, ["lm-eval", *argv]  # lm_eval's parser reads sys.argv
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
