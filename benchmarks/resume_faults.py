"""Fault injection: stop a training run at random points with SIGKILL, SIGINT and SIGTERM, resume it
each time, and check that it ends bit for bit where an uninterrupted run ends.

    python -m benchmarks.resume_faults --stops 10 [--steps 240] [--seed 0] [--workdir DIR] [--json FILE]

A tiny model (dropout on, so the RNG state matters) trains on the built-in corpus through the real
command line (`run_baseline.py`), once without interruption and once with `--stops` stops. Each stop
waits until the run has logged a random step, sleeps a random fraction of a step and sends a random
signal of the three. The run is then resumed (`--resume`; started again with `--force` when it was
stopped before its first last.pt). At the end, the CSV losses (train and validation, as written),
the losses pickle and the weights of last.pt must equal the uninterrupted run's exactly; a stop
counts as resumed exactly when the steps its resumed segment wrote equal the reference's. Prints
`N of N stops resumed exactly` and one row per stop, and writes the details as JSON.
"""

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint
from train_logs import load_losses

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def run_command(work: Path, run: str, steps: int, *flags: str) -> list[str]:
    sets = [f"data_dir={work / 'data'}", f"tokenizer_dir={work / 'tokenizers'}",
            f"checkpoint_dir={work / 'checkpoints'}", f"log_dir={work / 'logs'}",
            "data.source=builtin", "data.train_rows=600", "data.val_rows=40", "data.heldout_rows=0",
            "tokenizer.vocab_size=384", "model.context=32", "model.d_model=32", "model.n_layers=2",
            "model.n_heads=2", "model.d_ff=64", "model.dropout=0.1", f"train.max_steps={steps}",
            "train.batch_size=8", "train.warmup_steps=10", "train.eval_every=30", "train.eval_batches=2",
            "train.save_every=20", "train.log_every=1", "train.precision=fp32", "device=cpu"]
    return [sys.executable, "run_baseline.py", "--config", "configs/quickstart.yaml", "--run-name", run,
            *(a for s in sets for a in ("--set", s)), *flags]


def logged_steps(csv_path: Path) -> int:
    try:
        with open(csv_path, newline="") as f:
            return sum(1 for _ in f) - 1
    except OSError:
        return 0


def csv_losses(csv_path: Path) -> dict[int, tuple[str, str]]:
    """step -> (train_loss, val_loss) exactly as written."""
    with open(csv_path, newline="") as f:
        return {int(r["step"]): (r["train_loss"], r["val_loss"]) for r in csv.DictReader(f)}


def ckpt_step(path: Path) -> int | None:
    return load_checkpoint(path)["step"] if path.is_file() else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stops", type=int, default=10, help="how many times the run is stopped")
    parser.add_argument("--steps", type=int, default=240, help="training steps of the run")
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of signals and moments")
    parser.add_argument("--workdir", help="where runs are written (default: a temporary folder)")
    parser.add_argument("--json", help="write the details here (default: <workdir>/resume_faults.json)")
    args = parser.parse_args(argv)
    if args.stops < 1 or args.steps < 20:
        parser.error("--stops must be >= 1 and --steps >= 20")
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="resume_faults_")).resolve()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same reduction order in every process
    log = lambda *a: print(*a, flush=True)  # noqa: E731

    t0 = time.time()
    ref = subprocess.run(run_command(work, "reference", args.steps), cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if ref.returncode != 0:
        log(ref.stderr[-2000:])
        return 1
    log(f"reference run: {args.steps} steps in {time.time() - t0:.1f}s")

    csv_path = work / "logs" / "csv" / "faulty.csv"
    last = work / "checkpoints" / "faulty" / "last.pt"
    stops, flags = [], ["--force"]
    while True:
        launched = time.time()
        proc = subprocess.Popen(run_command(work, "faulty", args.steps, *flags), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        start = ckpt_step(last) or 0
        if len(stops) < args.stops:
            # stop once a random step of this stop's share of the remaining steps is logged
            share = max(1, (args.steps - 15 - start) // (args.stops - len(stops)))
            target = start + rng.randint(1, share)
            name = rng.choice(list(SIGNALS))
            while proc.poll() is None and not (csv_path.is_file() and csv_path.stat().st_mtime >= launched
                                               and logged_steps(csv_path) >= target):
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is None:
                proc.send_signal(SIGNALS[name])
                code = proc.wait()
                if code == 0:  # the signal came as the run ended: not a stop; the run is complete
                    log(f"{name} came after the last step; the run finished")
                    break
                saved = ckpt_step(last)
                stops.append({"signal": name, "after_logged_step": target, "exit": code,
                              "resume_from": saved, "started_at": start,
                              "message": (proc.stderr.read().strip().splitlines() or [""])[-1][:200]})
                log(f"stop {len(stops):2d}: {name:7s} after step {target:4d} -> exit {code:4d}, last.pt at "
                    f"step {saved}")
                flags = ["--resume"] if saved is not None else ["--force"]
                continue
        code = proc.wait()
        if code != 0:
            log(proc.stderr.read()[-2000:])
            return 1
        break

    ref_rows, rows = csv_losses(work / "logs/csv/reference.csv"), csv_losses(csv_path)
    bounds = [s["resume_from"] or 0 for s in stops] + [args.steps]  # each stop's segment: (resume, next resume]
    for s, lo, hi in zip(stops, bounds, bounds[1:]):
        s["exact"] = all(rows.get(k) == ref_rows.get(k) for k in range(lo + 1, max(lo, hi) + 1))
    wa, wb = load_checkpoint(work / "checkpoints/reference/last.pt")["model"], load_checkpoint(last)["model"]
    weights_equal = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    la, lb = load_losses("reference", work / "logs"), load_losses("faulty", work / "logs")
    logs_equal = rows == ref_rows and la["train_loss"] == lb["train_loss"] and la["val"] == lb["val"]
    exact = sum(s["exact"] for s in stops) if weights_equal and logs_equal else 0

    log(f"\n{'stop':>4s} {'signal':8s} {'after step':>10s} {'exit':>5s} {'resumed from':>12s} {'exact':>6s}")
    for i, s in enumerate(stops, 1):
        log(f"{i:4d} {s['signal']:8s} {s['after_logged_step']:10d} {s['exit']:5d} {str(s['resume_from']):>12s} "
            f"{str(s['exact']):>6s}")
    log(f"final CSV losses equal: {rows == ref_rows}; losses pickle equal: {logs_equal}; "
        f"last.pt weights bit-equal: {weights_equal}")
    if len(stops) < args.stops:
        log(f"only {len(stops)} of the {args.stops} stops were made: raise --steps")
    log(f"{exact} of {len(stops)} stops resumed exactly ({time.time() - t0:.0f}s, workdir {work})")
    out = Path(args.json) if args.json else work / "resume_faults.json"
    out.write_text(json.dumps({"stops": stops, "steps": args.steps, "seed": args.seed, "exact": exact,
                               "weights_equal": weights_equal, "logs_equal": logs_equal,
                               "torch": torch.__version__}, indent=2))
    return 0 if exact == len(stops) == args.stops else 1


if __name__ == "__main__":
    sys.exit(main())
