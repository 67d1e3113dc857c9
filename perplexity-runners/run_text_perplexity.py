"""Perplexity of a checkpoint on another held-out corpus, given as a text file (see perplexity/runner.py).

    python perplexity-runners/run_text_perplexity.py --ckpt checkpoints/<run>/best.pt --text-file other.txt
        [--delimiter '<|endoftext|>'] [--rows N] [--batch-size B] [--stride S] [--log-dir logs] [--out-name NAME]

One row per line unless --delimiter is given; results are named <run>-<file stem>.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("perplexity") is None:  # not `pip install -e .`-ed: the repo root is one level up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perplexity.runner import main_text  # noqa: E402

if __name__ == "__main__":
    main_text()
