"""Perplexity of a checkpoint on the held-out rows of its data config (see perplexity/runner.py).

    python perplexity-runners/run_perplexity.py --ckpt checkpoints/<run>/best.pt [--rows 10000] [--batch-size B]
        [--stride S] [--device D] [--dtype D] [--log-dir logs] [--out-name NAME]
    python perplexity-runners/run_perplexity.py --ckpt PATH --split val --packed   # the trainer's val loss
    python perplexity-runners/run_perplexity.py --compare RUN1 RUN2 ...
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("perplexity") is None:  # not `pip install -e .`-ed: the repo root is one level up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perplexity.runner import main  # noqa: E402

if __name__ == "__main__":
    main()
