"""A training run's files: where they go, the lock that keeps one writer per run name, and claiming
them (a run never overwrites another's outputs unless --resume or --force says what to do).

    checkpoints/<run>/{last,best,step_<n>}.pt     logs/{losses,times,csv}/<run>.*, logs/tensorboard/<run>/   (train_logs.py)
    <log_dir>/.locks/<run>.lock, <checkpoint_dir>/.locks/<run>.lock   held for the run's life
"""

import contextlib
from pathlib import Path

from experiment_config import RunConfig
from fileio import LockedError, exclusive_lock, unwritable_dir
from train_logs import run_log_paths, tensorboard_dir


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


def run_paths(cfg: RunConfig) -> dict[str, Path]:
    ckpt = Path(cfg.checkpoint_dir) / cfg.run_name
    return {"dir": ckpt, "last": ckpt / "last.pt", "best": ckpt / "best.pt"}


def run_outputs(cfg: RunConfig) -> list[Path]:
    """The files this run writes (and --force deletes): its checkpoints and its logs, nothing else."""
    paths = run_paths(cfg)
    ckpts = [paths["last"], paths["best"], *paths["dir"].glob("step_*.pt")] if paths["dir"].is_dir() else []
    events = tensorboard_dir(cfg.run_name, cfg.log_dir).glob("events.out.tfevents.*")
    return [p for p in [*ckpts, *run_log_paths(cfg.run_name, cfg.log_dir), *events] if p.is_file()]


def claim_outputs(cfg: RunConfig, resume: bool, force: bool) -> list[Path]:
    """Refuse to overwrite another run's outputs unless --resume or --force says what to do; returns
    the earlier outputs that --force replaces. Nothing is deleted here: the caller removes them once
    the new run has passed every check (config, data, model), so a failing check loses nothing.
    (Called under the run's lock: temporaries of its files are left by a killed writer; removed.)"""
    paths = run_paths(cfg)
    stale = [*paths["dir"].glob(".*.tmp"), *(t for p in run_log_paths(cfg.run_name, cfg.log_dir)
                                             for t in p.parent.glob(f".{p.name}.*.tmp"))]
    for t in stale:
        t.unlink(missing_ok=True)
    existing = run_outputs(cfg)
    if resume:
        if not paths["last"].is_file():
            raise TrainingError(f"--resume: no checkpoint at {paths['last']} (start the run without --resume)")
        return []
    if existing and not force:
        raise TrainingError(
            f"run {cfg.run_name!r} already has outputs ({existing[0]}): pass --resume to continue it, "
            "--force to overwrite it, or --run-name NAME for a new run")
    return existing


def check_output_dirs(cfg: RunConfig) -> None:
    """Every folder the run writes in is a folder it can write (made if missing), before any work:
    otherwise one error naming the config key."""
    keys = ["log_dir"] + (["checkpoint_dir"] if cfg.train.checkpoints else [])  # data: prepare_data checks
    for key in keys:
        why = unwritable_dir(getattr(cfg, key))
        if why:
            raise TrainingError(f"{key}={getattr(cfg, key)}: {why} (--set {key}=DIR)")


def run_locks(cfg: RunConfig) -> list[Path]:
    """The locks of a run: <log_dir>/.locks/<run>.lock, and <checkpoint_dir>/.locks/<run>.lock when it
    writes checkpoints (a run that shares either folder and name with a live one must not start)."""
    dirs = [cfg.log_dir] + ([cfg.checkpoint_dir] if cfg.train.checkpoints else [])
    return [lock_path(d, cfg.run_name) for d in dirs]


def lock_path(folder: str | Path, run_name: str) -> Path:
    """The lock of run `run_name` in one of its output folders (a checkpoint_dir or log_dir)."""
    return Path(folder) / ".locks" / f"{run_name}.lock"


@contextlib.contextmanager
def run_lock(cfg: RunConfig, held_here: bool):
    """One writer per run name: the process that writes (`held_here`, rank 0) holds the run's locks
    for its whole life (the OS drops them if the process dies)."""
    with contextlib.ExitStack() as held:
        if held_here:
            try:
                for path in run_locks(cfg):
                    held.enter_context(exclusive_lock(path))
            except LockedError as e:
                raise TrainingError(f"run {cfg.run_name!r} is already being trained ({e}): wait for it to "
                                    "finish, or pick another --run-name") from None
        yield
