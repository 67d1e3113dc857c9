"""Train and score a study's runs (study.py resolves them), then write its report; the command line.

    python run_study.py --study configs/studies/tid.yaml [--config FILE ...] [--set key=value ...] [--parallel N]
    python run_study.py --study ... --launcher slurm [--set launcher.KEY=VALUE ...]   # one SLURM job per run

Each run is trained by its runner in a subprocess, then scored by the perplexity runner at its last.pt
and its best.pt (the best validation loss), `--parallel`
at a time (one GPU each where there are several); one log file per run under studies/<name>/runs/.
A finished run is reused, a killed one resumes from its last checkpoint. `--launcher slurm` runs the
same two commands of each run in its own submitit job instead (study_slurm.py).
"""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tqdm import tqdm

from experiment_config import ConfigError, prepare_run_data
from study import Run, Study, budget, compared, config_differences, load_study, resolve_runs


def prepare_once(runs: list[Run], log=print):
    """Prepare (or find) the data and tokenizer every arm shares, before any run starts."""
    return prepare_run_data(runs[0].cfg, log=log)


def run_state(run: Run) -> str:
    """'scored', 'trained', 'partial' (a checkpoint to resume), 'stale' (outputs but nothing to resume) or 'new'."""
    record = _record_path(run)
    if record.is_file():
        state = json.loads(record.read_text()).get("state")
        if state in ("scored", "trained"):
            return state
    ckpt = Path(run.cfg.checkpoint_dir) / run.name
    if (ckpt / "last.pt").is_file():
        return "partial"
    logs = Path(run.cfg.log_dir)
    if ckpt.exists() or any((logs / sub / f"{run.name}{ext}").exists()
                            for sub, ext in (("losses", ".pkl"), ("times", ".pkl"), ("csv", ".csv"))):
        return "stale"
    return "new"


def _record_path(run: Run) -> Path:
    return run.study_dir / "runs" / f"{run.name}.json"


def train_command(run: Run) -> list[str]:
    """The runner's command line for this run (exactly what a user would type)."""
    state = run_state(run)
    flag = ["--resume"] if state == "partial" else ["--force"] if state == "stale" else []
    return [sys.executable, run.runner, *(a for c in run.configs for a in ("--config", c)),
            *(a for s in run.sets for a in ("--set", s)), "--run-name", run.name, *flag]


CHECKPOINTS = ("last", "best")  # every run is scored at its last step and at its best validation loss


def scored_name(run: Run, checkpoint: str) -> str:
    """The name of the run's held-out result files for `checkpoint` (logs/perplexity-losses/<name>.*)."""
    return run.name if checkpoint == "last" else f"{run.name}-{checkpoint}"


def score_command(run: Run, heldout_rows: int | None, checkpoint: str = "last") -> list[str]:
    ckpt = Path(run.cfg.checkpoint_dir) / run.name / f"{checkpoint}.pt"
    rows = heldout_rows or run.cfg.data.heldout_rows
    return [sys.executable, "perplexity-runners/run_perplexity.py", "--ckpt", str(ckpt), "--rows", str(rows),
            "--out-name", scored_name(run, checkpoint), "--log-dir", run.cfg.log_dir, "--quiet"]


def execute(study: Study, runs: list[Run], parallel: int = 1, log=print) -> None:
    """Train and score every run not finished yet, `parallel` at a time; one log file per run.

    The first failure stops the study: queued runs are cancelled, running ones are stopped (their
    last checkpoint stays, so the next call resumes them).
    """
    todo = [r for r in runs if run_state(r) != "scored"]
    if len(todo) < len(runs):
        log(f"{len(runs) - len(todo)} of {len(runs)} runs already finished: reused")
    if not todo:
        return
    (study.dir / "runs").mkdir(parents=True, exist_ok=True)
    slots = _slots(parallel)
    free = list(range(len(slots)))
    lock = threading.Lock()
    children: set = set()  # live subprocesses, stopped if the study stops
    bar = tqdm(total=len(todo), desc=f"study {study.name}", unit="run", dynamic_ncols=True)

    def one(run: Run) -> None:
        with lock:
            slot = free.pop()
        try:
            train_and_score(study, run, slots[slot], children)
        finally:
            with lock:
                free.append(slot)
        with lock:
            bar.update(1)
            tqdm.write(f"  {run.name}: trained and scored")

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(slots))
    try:
        futures = [pool.submit(one, r) for r in todo]
        for f in concurrent.futures.as_completed(futures):
            f.result()
    finally:
        for f in futures:
            f.cancel()
        for child in list(children):
            child.terminate()
        pool.shutdown(wait=True)
        bar.close()


def _slots(parallel: int) -> list[dict]:
    """Environment per worker: one GPU each where there are several, a share of the CPU threads otherwise."""
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    gpus = _visible_gpus()
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(parallel)]
    threads = max(1, (os.cpu_count() or 1) // parallel)
    return [{"OMP_NUM_THREADS": str(threads)} if parallel > 1 else {} for _ in range(parallel)]


def _visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]


class StudyRunError(RuntimeError):
    """A run of the study failed; the message names its log file."""


def train_and_score(study: Study, run: Run, env: dict, children: set) -> None:
    """Train the run (unless trained) and score it, recording each stage; `env` adds to the commands'
    environment, `children` holds the live subprocess (for stopping it)."""
    log_path = study.dir / "runs" / f"{run.name}.log"
    with open(log_path, "a") as out:
        if run_state(run) not in ("trained", "scored"):
            _call(train_command(run), env, out, log_path, f"training {run.name}", children)
            _write_record(run, "trained")
        for checkpoint in CHECKPOINTS:
            _call(score_command(run, study.heldout_rows, checkpoint), env, out, log_path,
                  f"scoring {run.name} ({checkpoint}.pt)", children)
        _write_record(run, "scored")


def _call(cmd: list[str], env: dict, out, log_path: Path, what: str, children: set) -> None:
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    children.add(child)
    try:
        rc = child.wait()
    finally:
        children.discard(child)
    if rc != 0:
        raise StudyRunError(f"{what} failed (exit {rc}): see {log_path}")


def _write_record(run: Run, state: str) -> None:
    from fileio import atomic_write

    atomic_write(_record_path(run), json.dumps({"run": run.name, "arm": run.arm, "seed": run.seed, "state": state,
                                                "runner": run.runner, "configs": run.configs, "set": run.sets}))


def filled_by_trainer(key: str, value) -> bool:
    """A key the trainer resolves from the data: the tokenizer's vocab size, and whichever of train.max_steps and
    train.epochs the config left out."""
    return key == "model.vocab_size" or (key in ("train.max_steps", "train.epochs") and value is None)


def check_trained_configs(runs: list[Run]) -> None:
    """Each run's logged config is the one the study resolved (the runner trained what the study says)."""
    from experiment_config import from_dict
    from train_logs import load_losses

    for run in runs:
        logged = compared(from_dict(load_losses(run.name, run.cfg.log_dir)["meta"]["config"]))
        expected = compared(run.cfg)
        diff = [k for k in expected if not filled_by_trainer(k, expected[k]) and logged.get(k) != expected[k]]
        if diff:
            raise StudyRunError(f"run {run.name} trained with other values of {diff} than the study resolved; "
                                f"delete its outputs (checkpoints/{run.name}, logs/*/{run.name}.*) and rerun")


# ----------------------------------------------------------------------------- command line

def _launcher(name: str, study: Study, sets: list[str], parallel: int):
    """The function that trains and scores the runs: `execute` here, or one SLURM job per run."""
    if name == "local":
        if sets:
            raise ConfigError(f"--set {sets[0]}: launcher.* settings are for --launcher slurm")
        return lambda s, runs: execute(s, runs, parallel)
    if parallel != 1:
        raise ConfigError("--parallel is for --launcher local; with slurm every run is its own job")
    from study_slurm import execute_on_slurm, slurm_config

    cfg = slurm_config(study, sets)
    return lambda s, runs: execute_on_slurm(s, runs, cfg)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    import argparse

    from dataset_definitions.sources import DataError
    from fileio import UnsafeFileError
    from study_report import write_report

    parser = argparse.ArgumentParser(description="Train and compare a study's arms over its seeds.")
    parser.add_argument("--study", required=True, metavar="FILE", help="configs/studies/NAME.yaml")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML overlay on every arm (after the study's configs); repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every arm, e.g. --set data.source=text (repeatable)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (one GPU each where there are several)")
    parser.add_argument("--out", default=None, metavar="DIR", help="report folder (default studies/NAME)")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: subprocesses here (default); slurm: one submitit job per run (--set launcher.*)")
    args = parser.parse_args(argv)
    launcher_sets = [s for s in args.set if s.startswith("launcher.")]
    arm_sets = [s for s in args.set if not s.startswith("launcher.")]
    # a scheduler's SIGTERM stops the study as Ctrl-C does: running runs are stopped, finished ones kept
    signal.signal(signal.SIGTERM, _interrupt)
    command = " ".join(["python run_study.py", "--study", args.study,
                        *(f"--config {c}" for c in args.config), *(f"--set {s}" for s in args.set)])
    try:
        study = load_study(args.study)
        study.out_dir = Path(args.out) if args.out else None
        launch = _launcher(args.launcher, study, launcher_sets, args.parallel)
        runs = resolve_runs(study, args.config, arm_sets)
        differences = config_differences(study, runs)
        print(f"study {study.name}: {len(study.arms)} arms x {len(study.seeds)} seeds {study.seeds}, "
              f"reference {study.reference!r}, {budget(runs[0].cfg)} per run")
        for arm, diff in differences.items():
            if arm != study.reference:
                print(f"  {arm}: " + (", ".join(f"{k}={b!r}" for k, (_, b) in diff.items()) or "(no difference)"))
        prepare_once(runs)
        launch(study, runs)
        check_trained_configs(runs)
        report = write_report(study, runs, differences, command, study.dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (StudyRunError, DataError) as e:
        print(f"error: {e}; rerun the same command to continue", file=sys.stderr)
        sys.exit(1)
    except (UnsafeFileError, FileNotFoundError) as e:  # a run's logs: crafted, damaged or deleted
        print(f"error: {e}; delete that file and the run's <run>.json in the study's runs/ folder, then rerun "
              "the same command (the run is resumed from its last checkpoint and scored again)", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    out = study.dir
    verdicts = "; ".join(f"{a}: {c['verdict']} ({c['delta_nll']:+.4f} nats/token)"
                         for a, c in report["comparisons"].items())
    print(f"study {study.name} done: {out / 'summary.md'}, summary.json, figures/. Against {study.reference}: {verdicts}")
