"""The run configuration: one typed tree, loaded from YAML files and --set overrides.

    cfg = load_config(["configs/baseline.yaml", "configs/quickstart.yaml"], ["train.lr=1e-3"])

Files merge in order (later wins), then each `--set a.b=value` (value parsed as YAML). An unknown
key or a value of the wrong type raises ConfigError naming the key; CLIs turn it into exit status 2.
Relative paths in the tree are relative to the working directory (run commands from the repo root).
"""

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dataset_definitions.config import DataConfig, TokenizerConfig
from dataset_definitions.prepare import PreparedData, prepare_data
from models.config import ModelConfig
from models.lora import LoRAConfig
from optimizers import OPTIMIZERS
from tid import TIDConfig


class ConfigError(ValueError):
    """A bad config file, key or value; the message names the key and the fix."""


@dataclass
class TrainConfig:
    max_steps: int | None = None    # optimizer steps; None = from train.epochs (1000 without it)
    epochs: float | None = None     # passes over the training blocks; None = from max_steps (the
                                    # trainer fills in whichever is left out once the data is known)
    batch_size: int = 32            # sequences per micro-batch per process
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 1e-3                # peak learning rate
    min_lr: float = 1e-4            # floor of the cosine decay
    warmup_steps: int = 100         # linear warmup from 0 to lr
    weight_decay: float = 0.1       # on matrices and embeddings (not norms, biases): optimizers.param_groups
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0          # max global gradient norm; 0 = off
    eval_every: int = 100           # steps between validation passes (and at the end)
    eval_batches: int | None = None  # validation micro-batches per pass; None = the whole split
    save_every: int = 500           # steps between last.pt writes (and at the end)
    keep_every: int = 0             # also keep step_<n>.pt every this many steps; 0 = off
    checkpoints: bool = True        # False: write no checkpoint files (speed benchmarks, throwaway sweeps)
    patience: int = 0               # early stopping: evals without improvement; 0 = off
    log_every: int = 10             # steps between reading losses back from the device (bar, logs, NaN check)
    precision: str = "auto"         # auto (bf16 on capable GPUs, fp16 on others, fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False           # torch.compile the model
    loss_chunk: int = 0             # > 0: head + cross-entropy fused, this many tokens at a time (no full logits)
    optimizer: str = "adamw"        # adamw | adamw8bit | adamw4bit (torchao's low-bit state; optimizers.py)

    def __post_init__(self):
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision: {self.precision!r} is not one of ['auto', 'fp32', 'bf16', 'fp16']")
        if self.max_steps is None and self.epochs is None:
            self.max_steps = 1000
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"train.epochs must be positive (or null: from train.max_steps), got {self.epochs}")
        for key in ("max_steps", "batch_size", "grad_accum", "eval_every", "save_every", "log_every"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train.optimizer: {self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        if self.loss_chunk < 0:
            raise ConfigError(f"train.loss_chunk must be >= 0 (0 = plain cross-entropy), got {self.loss_chunk}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"train.lr and train.min_lr need 0 < lr and 0 <= min_lr <= lr, got lr={self.lr} "
                              f"min_lr={self.min_lr}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be in [0, 1) (e.g. 0.9, 0.95), got {getattr(self, key)}")
        for key in ("weight_decay", "grad_clip", "warmup_steps", "keep_every", "patience"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ConfigError(f"train.eval_batches must be >= 1 (or null = the whole validation split), "
                              f"got {self.eval_batches}")


@dataclass
class WandbConfig:
    mode: str = "disabled"          # disabled | offline | online
    project: str = "small-lm"

    def __post_init__(self):
        if self.mode not in ("disabled", "offline", "online"):
            raise ConfigError(f"wandb.mode: {self.mode!r} is not one of ['disabled', 'offline', 'online']")


@dataclass
class LogConfig:
    tensorboard: bool = False       # also write TensorBoard event files to <log_dir>/tensorboard/<run>/


@dataclass
class RunConfig:
    run_name: str | None = None     # outputs go to checkpoints/<run_name>/ and logs/*/<run_name>.*
    seed: int = 1337
    device: str = "auto"            # auto | cpu | cuda | cuda:N | mps
    data_dir: str = "data"          # processed token caches: <data_dir>/processed/<hash>/
    tokenizer_dir: str = "tokenizers"  # trained tokenizer files
    checkpoint_dir: str = "checkpoints"
    log_dir: str = "logs"
    init_from: str | None = None    # a checkpoint to start from (its model and tokenizer; fresh optimizer)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tid: TIDConfig = field(default_factory=TIDConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"device: {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if self.run_name is not None:
            check_run_name(self.run_name)
        if self.tid.method == "attention_mass" and not -self.model.n_layers <= self.tid.layer < self.model.n_layers:
            raise ConfigError(f"tid.layer={self.tid.layer} is outside the model's model.n_layers={self.model.n_layers} "
                              f"layers: use 0..{self.model.n_layers - 1} (or -1 for the last)")


# A resumed run must be the run its checkpoint started: every config key defines the run, except
# these (where outputs go, the device, how long and how often to evaluate, save and log, and how a
# step's batch is split: train_state.check_resumable keeps batch_size x grad_accum x processes). A key
# added later defines the run unless it is listed here. A trailing "." lists a whole section.
RESUMABLE_KEYS = ("run_name", "device", "data_dir", "tokenizer_dir", "checkpoint_dir", "log_dir", "wandb.", "log.",
                  "train.max_steps", "train.epochs", "train.batch_size", "train.grad_accum", "train.eval_every",
                  "train.eval_batches", "train.save_every",
                  "train.keep_every", "train.checkpoints", "train.patience", "train.log_every", "train.compile")

RUN_NAME = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9_.=-]*")
# File systems allow 255 bytes per name; the longest name made from a run name is the temporary
# ".<run>.pkl.<8 random>.tmp" of an atomic write (18 bytes more), so 200 leaves room.
MAX_RUN_NAME_BYTES = 200


def check_run_name(name: str | None) -> None:
    """A run name is a plain name (it names checkpoints/<run>/ and logs/*/<run>.*), never a path."""
    if not name:
        raise ConfigError("run_name is not set (pass --run-name NAME)")
    if not RUN_NAME.fullmatch(name):
        raise ConfigError(f"run_name {name!r} is not a plain name: use letters, digits and -_.= "
                          "(no '/', not starting with '.'), e.g. --run-name my-run")
    if len(name.encode()) > MAX_RUN_NAME_BYTES:
        raise ConfigError(f"run_name is {len(name.encode())} bytes long, more than the {MAX_RUN_NAME_BYTES} "
                          "that leave its file names within the file system's 255 bytes: pass a shorter --run-name")


def default_run_name(config_paths: list[str], sets: list[str]) -> str:
    """E.g. configs/tid.yaml + configs/quickstart.yaml + tid.method=entropy -> tid-quickstart-method=entropy."""
    # where outputs go and which device runs it do not name the experiment
    sets = [s for s in sets if not s.split("=")[0].endswith("_dir") and not s.startswith("device=")]
    parts = [Path(p).stem for p in config_paths] + [f"{k.split('.')[-1]}={v}" for k, _, v in (s.partition("=") for s in sets)]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))


def run_identity_diff(old: dict, new: dict) -> list[str]:
    """The keys (other than RESUMABLE_KEYS) whose values differ between two config dicts, as 'key: a -> b'."""
    a, b, default = flatten(old), flatten(new), flatten(to_dict(RunConfig()))
    diffs = []
    for key in sorted(a.keys() | b.keys()):
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS):
            continue
        was = a.get(key, default.get(key))  # a key newer than the checkpoint: its default then
        if was != b.get(key):
            diffs.append(f"{key}: {was!r} -> {b.get(key)!r}")
    return diffs


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def load_config(paths: list[str | Path] = (), sets: list[str] = ()) -> RunConfig:
    """Merge YAML files in order, apply `key=value` overrides, and build the typed tree."""
    merged: dict = {}
    for path in paths:
        merged = _merge(merged, read_yaml(Path(path)))
    for item in sets:
        key, value = _parse_set(item)
        node = merged
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {p} is not a section")
        node[leaf] = value
    return from_dict(merged)


def section_from(cls, d: dict, sets: list[str], prefix: str):
    """A config section outside the run tree (e.g. a study's `launcher:` block) as a `cls` dataclass:
    `d`, then the `--set prefix.key=value` items; an unknown key or a wrong type names the key."""
    merged = dict(d)
    for item in sets:
        key, value = _parse_set(item)
        merged[key.removeprefix(prefix)] = value
    try:
        return _build(cls, merged, prefix)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # raised by a section's own __post_init__ checks
        raise ConfigError(str(e)) from None


def from_dict(d: dict) -> RunConfig:
    """Build a RunConfig from nested plain dicts (e.g. the `config` saved in a checkpoint)."""
    return section_from(RunConfig, d, [], "")


def to_dict(cfg) -> dict:
    """Plain nested dict of the config (safe to save in checkpoints and JSON)."""
    return dataclasses.asdict(cfg)


def prepare_run_data(cfg: RunConfig, **options) -> PreparedData:
    """prepare_data for a run config: its data and tokenizer sections in its data and tokenizer folders,
    block counts at its model.context; `options` (log, force, verify) as prepare_data takes them."""
    return prepare_data(cfg.data, cfg.tokenizer, cfg.data_dir, cfg.tokenizer_dir, **{"context": cfg.model.context, **options})


def read_yaml(path: Path, what: str = "config file",
              where: str = "configs live in configs/, e.g. configs/quickstart.yaml") -> dict:
    """A YAML file holding a mapping; a missing file, bad YAML or another shape is a ConfigError
    naming `what` and the file (`where` says where such files live)."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found ({where})")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not a text file (byte {e.start} is not UTF-8): "
                          f"give a YAML file ({where})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(d, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys, got {type(d).__name__}")
    return d


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: sections merge key by key, any other value replaces."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_set(item: str) -> tuple[str, object]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None  # blank (a tab too, which YAML refuses): null
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _build(cls, d, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a section of keys, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in hints:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys here: {', '.join(names)}")
    values = {}
    for key, value in d.items():
        if dataclasses.is_dataclass(hints[key]) and hints[key] is not ModelConfig:
            values[key] = _build(hints[key], value, f"{prefix}{key}.")
        elif hints[key] is ModelConfig:
            values[key] = _build_model(value, f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, hints[key], prefix + key)
    return cls(**values)


def _build_model(d, prefix: str) -> ModelConfig:
    # A preset fills the defaults; the keys the user set win over them.
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a section of keys, got {d!r}")
    hints = typing.get_type_hints(ModelConfig)
    for key in d:
        if key not in hints:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys here: {', '.join(hints)}")
    values = {k: _coerce(v, hints[k], prefix + k) for k, v in d.items()}
    return ModelConfig.from_preset(values.pop("preset", "baseline"), **values)


def _coerce(value, hint, key: str):
    """Check `value` against a field's type hint; ints are accepted where floats are expected."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    expected = hint.__name__ + (" or null" if optional else "")
    raise ConfigError(f"config key '{key}' expects {expected}, got {value!r}")

