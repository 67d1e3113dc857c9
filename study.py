"""A study: named arms x seeds trained on the same data, scored on the same held-out rows, compared.

    python run_study.py --study configs/studies/tid.yaml [--config FILE ...] [--set key=value ...] [--parallel N]

A study file (configs/studies/*.yaml) holds:

    configs: [configs/quickstart.yaml]   # overlays on every arm's runner config (optional)
    set: [train.max_steps=300]           # overrides for every arm (optional)
    seeds: [1, 2, 3]                     # default 1, 2, 3
    reference: baseline                  # the arm the others are compared with (default: the first)
    heldout_rows: 10000                  # held-out rows each run is scored on (default: all there are)
    arms:
      baseline: {runner: run_tid.py, set: {tid.method: none}}
      entropy:  {runner: run_tid.py, set: {tid.method: entropy}}

An arm's config is its runner's default config, the study's `configs`, the command line's
`--config`, the study's `set`, the command line's `--set`, `seed`, then the arm's own `set`. Before
anything trains, the arms' resolved configs are checked to differ from the reference arm's only in
the keys the arms name, to share the data and tokenizer settings, and to train on the same number
of tokens; the data and tokenizer are prepared once. The seed sets the model's initial weights,
the order of the training batches and the TID randomness: arm A and arm B of one seed see the
same batches in the same order.

Each run is trained by its runner in a subprocess (checkpoints/<run>/, logs/), then scored by the
perplexity runner on the held-out rows (logs/perplexity-losses/<run>.*). A run is named
<study>-<arm>-s<seed>-<hash of its resolved config and data key>, so a changed config or an edited
data file never reuses old results;
a finished run is reused, a killed one resumes from its last checkpoint. The report
(study_report.py) goes to studies/<name>/: summary.md, summary.json and figures/.
"""

import ast
import concurrent.futures
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from experiment_config import ConfigError, RunConfig, flatten, load_config, read_yaml, to_dict

DEFAULT_SEEDS = (1, 2, 3)
STUDY_KEYS = {"description", "configs", "set", "seeds", "reference", "heldout_rows", "arms"}
ARM_KEYS = {"runner", "set"}
# keys of a resolved config that name where outputs go, not what is trained
NOT_COMPARED = ("run_name", "seed", "device", "data_dir", "tokenizer_dir", "checkpoint_dir", "log_dir", "wandb")


@dataclass
class Arm:
    name: str
    runner: str                     # the script that trains it, e.g. run_tid.py
    sets: list[str]                 # its overrides as key=value


@dataclass
class Study:
    name: str
    path: Path
    arms: list[Arm]
    reference: str
    seeds: list[int]
    configs: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    heldout_rows: int | None = None
    description: str = ""
    out_dir: Path | None = None     # default studies/<name>

    @property
    def dir(self) -> Path:
        return self.out_dir or Path("studies") / self.name

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


@dataclass
class Run:
    """One training run of the study: an arm at a seed, its resolved config and how to train it."""
    study_dir: Path
    arm: str
    seed: int
    cfg: RunConfig
    runner: str
    configs: list[str]              # --config files for the runner (after its own default)
    sets: list[str]                 # --set overrides for the runner

    @property
    def name(self) -> str:
        return self.cfg.run_name


# ----------------------------------------------------------------------------- the study file

def load_study(path: str | Path) -> Study:
    """Read and check a study file; errors name the key and the fix (ConfigError)."""
    path = Path(path)
    d = read_yaml(path, "study file", "studies live in configs/studies/, e.g. configs/studies/tid.yaml")
    unknown = set(d) - STUDY_KEYS
    if unknown:
        raise ConfigError(f"study file {path}: unknown key(s) {sorted(unknown)}; valid: {sorted(STUDY_KEYS)}")
    arms_d = d.get("arms")
    if not isinstance(arms_d, dict) or len(arms_d) < 2:
        raise ConfigError(f"study file {path}: 'arms' must map at least two arm names to {{runner, set}}")
    arms = [_arm(name, spec, path) for name, spec in arms_d.items()]
    seeds = d.get("seeds", list(DEFAULT_SEEDS))
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"study file {path}: 'seeds' must be a list of distinct integers, e.g. [1, 2, 3]")
    reference = d.get("reference", arms[0].name)
    if reference not in arms_d:
        raise ConfigError(f"study file {path}: reference {reference!r} is not one of the arms {list(arms_d)}")
    heldout = d.get("heldout_rows")
    if heldout is not None and (not isinstance(heldout, int) or heldout <= 0):
        raise ConfigError(f"study file {path}: heldout_rows must be a positive integer (or left out: all rows)")
    return Study(name=path.stem, path=path, arms=arms, reference=reference, seeds=seeds,
                 configs=_str_list(d.get("configs", []), "configs", path), sets=_sets(d.get("set", []), "set", path),
                 heldout_rows=heldout, description=str(d.get("description", "")).strip())


def _arm(name, spec, path: Path) -> Arm:
    if not isinstance(spec, dict) or "runner" not in spec or set(spec) - ARM_KEYS:
        raise ConfigError(f"study file {path}: arm {name!r} must be a mapping with 'runner' (e.g. run_tid.py) "
                          "and optionally 'set' (key: value overrides)")
    if not str(name).replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"study file {path}: arm name {name!r} must be letters, digits, '-' or '_'")
    return Arm(str(name), str(spec["runner"]), _sets(spec.get("set", {}), f"arms.{name}.set", path))


def _str_list(value, key: str, path: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"study file {path}: '{key}' must be a list of strings")
    return value


def _sets(value, key: str, path: Path) -> list[str]:
    """Overrides as key=value strings, from a mapping or a list of key=value strings."""
    if isinstance(value, dict):
        return [f"{k}={_yaml_value(v)}" for k, v in value.items()]
    return _str_list(value, key, path)


def _yaml_value(v) -> str:
    return "null" if v is None else json.dumps(v) if isinstance(v, (str, list, dict)) else str(v).lower() \
        if isinstance(v, bool) else str(v)


def runner_default_config(runner: str) -> str:
    """The default config a runner script passes to generic_runner.main (read, not imported)."""
    path = Path(runner)
    if not path.is_file():
        raise ConfigError(f"runner {runner} not found (runners are the repo's run_*.py scripts, e.g. run_tid.py)")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main":
            for kw in node.keywords:
                if kw.arg == "default_config" and isinstance(kw.value, ast.Constant):
                    return kw.value.value
    raise ConfigError(f"runner {runner} does not call main(default_config=...) as the run_*.py scripts do")


# ----------------------------------------------------------------------------- resolving the runs

def set_keys(sets: list[str]) -> set[str]:
    return {s.partition("=")[0].strip() for s in sets}


def compared(cfg: RunConfig) -> dict:
    """The flat config that defines what is trained (no output places, seed or device)."""
    return {k: v for k, v in flatten(to_dict(cfg)).items() if k.split(".")[0] not in NOT_COMPARED}


def config_hash(cfg: RunConfig) -> str:
    """Short hash of what is trained, seed and data content included: the keys that differ from
    RunConfig's defaults (so a key added to the config tree later, at its default, keeps the names of
    finished runs) and the data key (so an edited data file never reuses runs trained on the old text)."""
    from dataset_definitions.prepare import data_key

    defaults = compared(RunConfig())
    changed = {k: v for k, v in compared(cfg).items() if k not in defaults or defaults[k] != v}
    blob = {**changed, "seed": cfg.seed, "data_key": data_key(cfg.data, cfg.tokenizer, cfg.data_dir)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:8]


def resolve_runs(study: Study, cli_configs: list[str] = (), cli_sets: list[str] = ()) -> list[Run]:
    """Every (seed, arm) run with its resolved config, seed-major (a partial study has whole seeds)."""
    clash = set_keys(cli_sets) & set().union(*(set_keys(a.sets) for a in study.arms))
    if clash:
        raise ConfigError(f"--set {sorted(clash)}: the study's arms set these keys themselves; "
                          "change them in the study file (an override here would make the arms equal)")
    if "seed" in set_keys(cli_sets) | set_keys(study.sets):
        raise ConfigError("--set seed: a study runs every seed in its 'seeds' list; change that list instead")
    runs = []
    for seed in study.seeds:
        for arm in study.arms:
            configs = [*study.configs, *cli_configs]
            sets = [*study.sets, *cli_sets, f"seed={seed}", *arm.sets]
            cfg = load_config([runner_default_config(arm.runner), *configs], sets)
            cfg.run_name = f"{study.name}-{arm.name}-s{seed}-{config_hash(cfg)}"
            runs.append(Run(study.dir, arm.name, seed, cfg, arm.runner, configs, sets))
    return runs


def config_differences(study: Study, runs: list[Run]) -> dict[str, dict[str, tuple]]:
    """{arm: {key: (reference value, arm value)}} for the first seed, checked against what the arms name.

    Raises ConfigError when two arms differ in a key neither names (e.g. a different model family
    from the runners' default configs), differ in data or tokenizer, or train on different budgets.
    """
    first = {r.arm: r for r in runs if r.seed == study.seeds[0]}
    ref = first[study.reference]
    ref_flat = compared(ref.cfg)
    named_by_ref = set_keys(study.arm(study.reference).sets)
    out = {}
    for arm in study.arms:
        mine = compared(first[arm.name].cfg)
        diff = {k: (ref_flat.get(k), mine.get(k)) for k in sorted(set(ref_flat) | set(mine))
                if ref_flat.get(k) != mine.get(k)}
        named = set_keys(arm.sets) | named_by_ref
        unnamed = [k for k in diff if k not in named]
        if unnamed:
            details = ", ".join(f"{k}: {diff[k][0]!r} vs {diff[k][1]!r}" for k in unnamed)
            raise ConfigError(f"study {study.name}: arm {arm.name!r} differs from the reference {study.reference!r} in "
                              f"keys it does not name ({details}); name them in the arm's 'set' or use one runner "
                              "config for both")
        shared = [k for k in diff if k.startswith(("data.", "tokenizer."))]
        if shared:
            raise ConfigError(f"study {study.name}: arm {arm.name!r} changes {shared}; every arm must see the same "
                              "prepared data and tokenizer")
        if tokens_budget(first[arm.name].cfg) != tokens_budget(ref.cfg):
            raise ConfigError(f"study {study.name}: arm {arm.name!r} trains on {tokens_budget(first[arm.name].cfg):,} "
                              f"tokens, the reference on {tokens_budget(ref.cfg):,}; every arm needs the same budget "
                              "(train.max_steps x batch_size x grad_accum x model.context)")
        out[arm.name] = diff
    return out


def tokens_budget(cfg: RunConfig) -> int:
    t = cfg.train
    return t.max_steps * t.batch_size * t.grad_accum * cfg.model.context


# ----------------------------------------------------------------------------- running

def prepare_once(runs: list[Run], log=print):
    """Prepare (or find) the data and tokenizer every arm shares, before any run starts."""
    from dataset_definitions.prepare import prepare_data

    cfg = runs[0].cfg
    return prepare_data(cfg.data, cfg.tokenizer, cfg.data_dir, cfg.tokenizer_dir, context=cfg.model.context, log=log)


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


def score_command(run: Run, heldout_rows: int | None) -> list[str]:
    ckpt = Path(run.cfg.checkpoint_dir) / run.name / "last.pt"
    rows = heldout_rows or run.cfg.data.heldout_rows
    return [sys.executable, "perplexity-runners/run_perplexity.py", "--ckpt", str(ckpt), "--rows", str(rows),
            "--out-name", run.name, "--log-dir", run.cfg.log_dir, "--quiet"]


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
            _train_and_score(study, run, slots[slot], children)
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


def _train_and_score(study: Study, run: Run, env: dict, children: set) -> None:
    log_path = study.dir / "runs" / f"{run.name}.log"
    with open(log_path, "a") as out:
        if run_state(run) not in ("trained", "scored"):
            _call(train_command(run), env, out, log_path, f"training {run.name}", children)
            _write_record(run, "trained")
        _call(score_command(run, study.heldout_rows), env, out, log_path, f"scoring {run.name}", children)
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


def check_trained_configs(runs: list[Run]) -> None:
    """Each run's logged config is the one the study resolved (the runner trained what the study says)."""
    from experiment_config import from_dict
    from train_logs import load_losses

    for run in runs:
        logged = compared(from_dict(load_losses(run.name, run.cfg.log_dir)["meta"]["config"]))
        expected = compared(run.cfg)
        diff = [k for k in expected if k != "model.vocab_size" and logged.get(k) != expected[k]]
        if diff:
            raise StudyRunError(f"run {run.name} trained with other values of {diff} than the study resolved; "
                                f"delete its outputs (checkpoints/{run.name}, logs/*/{run.name}.*) and rerun")


# ----------------------------------------------------------------------------- command line

def _interrupt(signum, frame):
    raise KeyboardInterrupt

def main(argv: list[str] | None = None) -> None:
    import argparse

    from dataset_definitions.sources import DataError
    from study_report import write_report

    parser = argparse.ArgumentParser(description="Train and compare a study's arms over its seeds.")
    parser.add_argument("--study", required=True, metavar="FILE", help="configs/studies/NAME.yaml")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML overlay on every arm (after the study's configs); repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every arm, e.g. --set data.source=text (repeatable)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (one GPU each where there are several)")
    parser.add_argument("--out", default=None, metavar="DIR", help="report folder (default studies/NAME)")
    args = parser.parse_args(argv)
    # a scheduler's SIGTERM stops the study as Ctrl-C does: running runs are stopped, finished ones kept
    signal.signal(signal.SIGTERM, _interrupt)
    command = " ".join(["python run_study.py", "--study", args.study,
                        *(f"--config {c}" for c in args.config), *(f"--set {s}" for s in args.set)])
    try:
        study = load_study(args.study)
        study.out_dir = Path(args.out) if args.out else None
        runs = resolve_runs(study, args.config, args.set)
        differences = config_differences(study, runs)
        print(f"study {study.name}: {len(study.arms)} arms x {len(study.seeds)} seeds {study.seeds}, "
              f"reference {study.reference!r}, {tokens_budget(runs[0].cfg):,} tokens per run")
        for arm, diff in differences.items():
            if arm != study.reference:
                print(f"  {arm}: " + (", ".join(f"{k}={b!r}" for k, (_, b) in diff.items()) or "(no difference)"))
        prepare_once(runs)
        execute(study, runs, args.parallel)
        check_trained_configs(runs)
        report = write_report(study, runs, differences, command, study.dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (StudyRunError, DataError) as e:
        print(f"error: {e}; rerun the same command to continue", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    out = study.dir
    verdicts = "; ".join(f"{a}: {c['verdict']} ({c['delta_nll']:+.4f} nats/token)"
                         for a, c in report["comparisons"].items())
    print(f"study {study.name} done: {out / 'summary.md'}, summary.json, figures/. Against {study.reference}: {verdicts}")
