"""A study: named arms x seeds trained on the same data, scored on the same held-out rows, compared.

    python run_study.py --study configs/studies/tid.yaml [--config FILE ...] [--set key=value ...] [--parallel N]

A study file (configs/studies/*.yaml) holds:

    configs: [configs/quickstart.yaml]   # overlays on every arm's runner config (optional)
    set: [train.max_steps=300]           # overrides for every arm (optional)
    seeds: [1, 2, 3]                     # default 1, 2, 3
    reference: baseline                  # the arm the others are compared with (default: the first)
    heldout_rows: 10000                  # held-out rows each run is scored on (default: all there are)
    launcher: {partition: gpu}           # settings of --launcher slurm (optional; study_slurm.py)
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
perplexity runner on the held-out rows at last.pt (logs/perplexity-losses/<run>.*) and at best.pt
(<run>-best.*). A run is named
<study>-<arm>-s<seed>-<hash of its resolved config and data key>, so a changed config or an edited
data file never reuses old results;
a finished run is reused, a killed one resumes from its last checkpoint. The report
(study_report.py) goes to studies/<name>/: summary.md, summary.json and figures/.

This file reads the study and resolves its runs; study_runner.py trains and scores them (and holds
the command line).
"""

import ast
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from experiment_config import ConfigError, RunConfig, check_run_name, flatten, load_config, read_yaml, to_dict

DEFAULT_SEEDS = (1, 2, 3)
ARM_NAME = re.compile(r"[A-Za-z0-9_-]*[A-Za-z0-9][A-Za-z0-9_-]*")
STUDY_KEYS = {"description", "configs", "set", "seeds", "reference", "heldout_rows", "arms", "launcher"}
ARM_KEYS = {"runner", "set"}
# keys of a resolved config that name where outputs go, not what is trained
NOT_COMPARED = ("run_name", "seed", "device", "data_dir", "tokenizer_dir", "checkpoint_dir", "log_dir", "wandb", "log")


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
    launcher: dict = field(default_factory=dict)  # the `launcher:` block (settings of --launcher slurm)
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
            or not all(_is_int(s) for s in seeds)):
        raise ConfigError(f"study file {path}: 'seeds' must be a list of distinct integers, e.g. [1, 2, 3]")
    reference = d.get("reference", arms[0].name)
    if reference not in arms_d:
        raise ConfigError(f"study file {path}: reference {reference!r} is not one of the arms {list(arms_d)}")
    launcher = d.get("launcher", {})
    if not isinstance(launcher, dict):
        raise ConfigError(f"study file {path}: 'launcher' must map settings to values, e.g. {{partition: gpu}}")
    heldout = d.get("heldout_rows")
    if heldout is not None and (not _is_int(heldout) or heldout <= 0):
        raise ConfigError(f"study file {path}: heldout_rows must be a positive integer (or left out: all rows)")
    return Study(name=path.stem, path=path, arms=arms, reference=reference, seeds=seeds,
                 configs=_str_list(d.get("configs", []), "configs", path), sets=_sets(d.get("set", []), "set", path),
                 heldout_rows=heldout, description=str(d.get("description", "")).strip(), launcher=launcher)


def _is_int(value) -> bool:
    """An integer written as one in YAML (true/false load as bool, a subclass of int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _arm(name, spec, path: Path) -> Arm:
    if not isinstance(spec, dict) or "runner" not in spec or set(spec) - ARM_KEYS:
        raise ConfigError(f"study file {path}: arm {name!r} must be a mapping with 'runner' (e.g. run_tid.py) "
                          "and optionally 'set' (key: value overrides)")
    if not ARM_NAME.fullmatch(str(name)):
        raise ConfigError(f"study file {path}: arm name {name!r} must be ASCII letters, digits, '-' or '_', "
                          "with at least one letter or digit")
    try:
        runner = check_runner(str(spec["runner"]))
    except ConfigError as e:
        raise ConfigError(f"study file {path}: arm {name!r}: {e}") from None
    return Arm(str(name), runner, _sets(spec.get("set", {}), f"arms.{name}.set", path))


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


PROJECT_ROOT = Path(__file__).resolve().parent


def project_runners() -> list[str]:
    """The project's training runners: the run_*.py scripts in its root that call main(default_config=...)."""
    return sorted(p.name for p in PROJECT_ROOT.glob("run_*.py") if _default_config(p) is not None)


def check_runner(runner: str) -> str:
    """`runner` as the file name of one of the project's runners ("./run_tid.py" -> "run_tid.py"), or a
    ConfigError listing them: a study runs no other script."""
    name = Path(runner).name
    if Path(runner).parent != Path(".") or name not in project_runners():
        raise ConfigError(f"runner {runner!r} is not one of the project's runners {project_runners()} "
                          "(the run_*.py scripts in its root)")
    return name


def runner_default_config(runner: str) -> str:
    """The default config a runner script passes to generic_runner.main (read, not imported)."""
    return _default_config(PROJECT_ROOT / check_runner(runner))


def _default_config(path: Path) -> str | None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main":
            for kw in node.keywords:
                if kw.arg == "default_config" and isinstance(kw.value, ast.Constant):
                    return kw.value.value
    return None


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
            try:
                check_run_name(cfg.run_name)
            except ConfigError as e:
                raise ConfigError(f"study file {study.path}, arm {arm.name!r}: {e}; here the run name is "
                                  "<study file name>-<arm>-s<seed>-<hash>: shorten the file's or the arm's name") from None
            runs.append(Run(study.dir, arm.name, seed, cfg, arm.runner, configs, sets))
    return runs


def first_seed_runs(study: Study, runs: list[Run]) -> dict[str, Run]:
    """{arm: its run at the first seed}: the runs configs are compared on (the reference's is the baseline)."""
    return {r.arm: r for r in runs if r.seed == study.seeds[0]}


def config_differences(study: Study, runs: list[Run]) -> dict[str, dict[str, tuple]]:
    """{arm: {key: (reference value, arm value)}} for the first seed, checked against what the arms name.

    Raises ConfigError when two arms differ in a key neither names (e.g. a different model family
    from the runners' default configs), differ in data or tokenizer, or train on different budgets.
    """
    first = first_seed_runs(study, runs)
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
        if budget(first[arm.name].cfg) != budget(ref.cfg):
            raise ConfigError(f"study {study.name}: arm {arm.name!r} trains on {budget(first[arm.name].cfg)}, "
                              f"the reference on {budget(ref.cfg)}; every arm needs the same budget "
                              "(train.max_steps x batch_size x grad_accum x model.context)")
        out[arm.name] = diff
    return out


def tokens_budget(cfg: RunConfig) -> int | None:
    """Tokens a run trains on; None when train.epochs sets it (known once the data is)."""
    t = cfg.train
    return None if t.max_steps is None else t.max_steps * t.batch_size * t.grad_accum * cfg.model.context


def budget(cfg: RunConfig) -> str:
    """A run's training budget in words: its tokens, or its epochs when those set it."""
    tokens = tokens_budget(cfg)
    return f"{cfg.train.epochs:g} epochs" if tokens is None else f"{tokens:,} tokens"
