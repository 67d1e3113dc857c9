"""Prepare (tokenize, pack, cache) the data of a run config, as the runner of that config would.

    python prepare_data.py --config configs/quickstart.yaml [--set k=v ...] [--force] [--verify]
    python prepare_data.py --base configs/tid.yaml --config configs/quickstart.yaml   # run_tid.py's data

The configs merge as the runners merge them (the runner's default, `--base`, first: run_baseline.py's
configs/baseline.yaml unless told), so this acts on exactly the cache the training reads.
"""

import argparse

from cli import run_or_exit
from dataset_definitions.sources import DataError
from experiment_config import ConfigError, load_config, prepare_run_data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare (tokenize, pack, cache) the data of a config.")
    parser.add_argument("--base", default="configs/baseline.yaml",
                        help="the runner's default config, merged first (run_tid.py: configs/tid.yaml, ...)")
    parser.add_argument("--config", action="append", default=[], help="YAML config; repeat to overlay")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cache exists")
    parser.add_argument("--verify", action="store_true", help="re-hash the local sources (a new cache if one changed) and every cached file against meta.json")
    args = parser.parse_args(argv)

    def prepare():
        cfg = load_config([args.base, *(args.config or ["configs/quickstart.yaml"])], args.set)
        prepare_run_data(cfg, force=args.force, verify=args.verify)

    run_or_exit(prepare, {ConfigError: 2, DataError: 1})


if __name__ == "__main__":
    main()
