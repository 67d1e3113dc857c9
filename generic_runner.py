"""The generic trainer: one training loop for every model family and experiment.

    python run_baseline.py [--config FILE ...] [--set key=value ...] [--resume] [--force] [--run-name NAME]
    torchrun --nproc_per_node=N run_baseline.py ...      # data parallel (NCCL on GPUs, gloo on CPU)

A runner passes its experiment's default config; `--config` files overlay it in order, then
`--set` overrides (see experiment_config.py). The data is prepared (or found cached), the model is
built from `model.preset`, and training writes checkpoints/<run>/{last,best,step_<n>}.pt and
logs/{losses,times,csv}/<run>.* (see train_logs.py). One process trains a run name at a time (a
lock held for the run's life). SIGINT and SIGTERM stop the run at the next step boundary after
saving last.pt, so `--resume` continues exactly, as it does from the last save after `kill -9`;
it refuses a checkpoint whose settings (other than RESUMABLE_KEYS) differ from the config's.
"""

import argparse
import contextlib
import math
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import models
import optimizers
from cli import exit_with
from dataset_definitions.config import TokenizerConfig
from dataset_definitions.datasets import BlockSampler
from dataset_definitions.prepare import prepare_data
from dataset_definitions.sources import DataError
from dataset_definitions.word_vectors import load_word_vectors
from experiment_config import ConfigError, RunConfig, check_run_name, load_config, run_identity_diff, to_dict
from fileio import LockedError, UnsafeFileError, exclusive_lock
from models.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, load_weights, model_config,
                               non_finite_tensors, save_checkpoint)
from models.lora import apply_lora, merged_state_dict
from runtime import autocast, resolve_device, resolve_dtype, to_device
from tid import TokenImportanceDropout
from train_logs import RunLogger, bits_per_token, capped_perplexity, run_log_paths

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}  # dense bf16


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class Interrupted(TrainingError):
    """SIGINT or SIGTERM stopped the run at a step boundary, after saving last.pt."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


# ----------------------------------------------------------------------------- entry point

def main(default_config: str, argv: list[str] | None = None) -> None:
    """Parse the runner CLI, train, and turn user errors into one-line messages."""
    parser = argparse.ArgumentParser(description=f"Train with {default_config} as the base config.")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML overlay on the runner's default config; repeat to stack")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last.pt")
    parser.add_argument("--force", action="store_true", help="delete the run's earlier outputs and start over")
    parser.add_argument("--run-name", help="name for checkpoints/ and logs/ (default: from the configs)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config([default_config, *args.config], args.set)
        cfg.run_name = args.run_name or cfg.run_name or default_run_name([default_config, *args.config], args.set)
        train(cfg, resume=args.resume, force=args.force)
    except ConfigError as e:
        exit_with(f"error: {e}", 2)
    except Interrupted as e:
        exit_with(f"interrupted: {e}", 128 + e.signum)
    except (DataError, TrainingError, CheckpointError, FileNotFoundError, UnsafeFileError) as e:
        exit_with(f"error: {e}", 1)
    except KeyboardInterrupt:
        exit_with("interrupted outside the training loop: nothing saved since the last checkpoint", 130)


def default_run_name(config_paths: list[str], sets: list[str]) -> str:
    """E.g. configs/tid.yaml + configs/quickstart.yaml + tid.method=entropy -> tid-quickstart-method=entropy."""
    # where outputs go and which device runs it do not name the experiment
    sets = [s for s in sets if not s.split("=")[0].endswith("_dir") and not s.startswith("device=")]
    parts = [Path(p).stem for p in config_paths] + [f"{k.split('.')[-1]}={v}" for k, _, v in (s.partition("=") for s in sets)]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))


# ----------------------------------------------------------------------------- setup

@dataclass
class Env:
    """Where this process runs: rank, world size, device, precision."""
    rank: int
    local_rank: int
    world: int
    device: torch.device
    dtype: torch.dtype                # autocast dtype; float32 = no autocast

    @property
    def master(self) -> bool:
        return self.rank == 0

    def log(self, *args) -> None:
        """Print on rank 0 only (through tqdm so bars stay intact)."""
        if self.master:
            tqdm.write(" ".join(str(a) for a in args))

    def autocast(self):
        return autocast(self.device, self.dtype)


def setup_env(cfg: RunConfig) -> Env:
    """Read torchrun's environment, join the process group, pick device and precision, enable TF32."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    try:
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if device.type == "cuda" and (cfg.device == "auto" or world > 1):
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
    dtype = resolve_dtype(cfg.train.precision, device, training=True)
    return Env(rank, local_rank, world, device, dtype)


def run_paths(cfg: RunConfig) -> dict[str, Path]:
    ckpt = Path(cfg.checkpoint_dir) / cfg.run_name
    return {"dir": ckpt, "last": ckpt / "last.pt", "best": ckpt / "best.pt"}


def run_outputs(cfg: RunConfig) -> list[Path]:
    """The files this run writes (and --force deletes): its checkpoints and its logs, nothing else."""
    paths = run_paths(cfg)
    ckpts = [paths["last"], paths["best"], *paths["dir"].glob("step_*.pt")] if paths["dir"].is_dir() else []
    return [p for p in [*ckpts, *run_log_paths(cfg.run_name, cfg.log_dir)] if p.is_file()]


def claim_outputs(cfg: RunConfig, resume: bool, force: bool) -> None:
    """Refuse to overwrite another run's outputs unless --resume or --force says what to do.
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
        return
    if existing and not force:
        raise TrainingError(
            f"run {cfg.run_name!r} already has outputs ({existing[0]}): pass --resume to continue it, "
            "--force to overwrite it, or --run-name NAME for a new run")
    for p in existing:
        p.unlink()


def run_locks(cfg: RunConfig) -> list[Path]:
    """The locks of a run: <log_dir>/.locks/<run>.lock, and <checkpoint_dir>/.locks/<run>.lock when it
    writes checkpoints (a run that shares either folder and name with a live one must not start)."""
    dirs = [cfg.log_dir] + ([cfg.checkpoint_dir] if cfg.train.checkpoints else [])
    return [Path(d) / ".locks" / f"{cfg.run_name}.lock" for d in dirs]


@contextlib.contextmanager
def run_lock(cfg: RunConfig, env: "Env"):
    """One writer per run name: rank 0 holds the run's locks for its whole life (the OS drops them
    if the process dies)."""
    with contextlib.ExitStack() as held:
        if env.master:
            try:
                for path in run_locks(cfg):
                    held.enter_context(exclusive_lock(path))
            except LockedError as e:
                raise TrainingError(f"run {cfg.run_name!r} is already being trained ({e}): wait for it to "
                                    "finish, or pick another --run-name") from None
        yield


@contextlib.contextmanager
def stop_on_signals(flag: dict):
    """While inside, SIGINT and SIGTERM only record themselves in flag["signum"]; the loop stops at
    the next step boundary. (Only the main thread can install handlers; elsewhere nothing changes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        flag["signum"] = signum
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def model_family(cfg: RunConfig) -> str:
    """The architecture a run trains, in words: preset and the choices that tell the families apart."""
    m = cfg.model
    parts = [f"{m.position} positions", m.norm, m.mlp]
    if m.preset == "condor":
        parts.append(f"{m.attention} attention")
    if m.preset == "falcon":
        parts.append(f"top-{m.top_k} of {m.n_experts} experts")
    return f"{m.preset} ({', '.join(parts)})"


def build_model(cfg: RunConfig, tokenizer, env: Env) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = models.build(cfg.model)
    if cfg.model.word_vectors:
        vectors, found = load_word_vectors(cfg.model.word_vectors, tokenizer)
        model.init_token_embeddings(torch.from_numpy(vectors), torch.from_numpy(found),
                                    freeze=cfg.model.freeze_embeddings, pad_id=tokenizer.pad_id)
        env.log(f"word vectors: {int(found.sum()):,}/{len(found):,} tokens initialised from {cfg.model.word_vectors}")
    return model.to(env.device)


def adopt_init_checkpoint(cfg: RunConfig, env: Env) -> dict:
    """Fine-tuning: the model and tokenizer come from cfg.init_from (model.* keys in the configs are ignored)."""
    ckpt = load_checkpoint(cfg.init_from)
    spec = ckpt["tokenizer"]
    cfg.model = model_config(ckpt)
    cfg.tokenizer = TokenizerConfig(kind=spec["kind"], path=spec["path"], vocab_size=spec["vocab_size"])
    env.log(f"init from {cfg.init_from} (step {ckpt.get('step', 0)}): its {cfg.model.preset} model and "
            f"{spec['kind']} tokenizer")
    return ckpt


def make_optimizer(model: torch.nn.Module, cfg: RunConfig, env: Env) -> torch.optim.Optimizer:
    """train.optimizer (optimizers.py); weight decay on matrices and embeddings only, not on norms and
    biases (MoE biases are 2-D)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # a tied weight comes once
    decay = [p for n, p in params if p.dim() >= 2 and not n.endswith("bias")]
    no_decay = [p for n, p in params if p.dim() < 2 or n.endswith("bias")]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return optimizers.make_optimizer(groups, cfg.train.optimizer, cfg.train.lr,
                                         (cfg.train.beta1, cfg.train.beta2), env.device)
    except ImportError as e:
        raise TrainingError(str(e)) from None


def lr_at(step: int, cfg: RunConfig) -> float:
    """Linear warmup to train.lr, then cosine decay to train.min_lr at train.max_steps."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _accumulate(total: dict, new: dict, n_micro: int) -> dict:
    """Combine per-micro-batch statistics: times add up, everything else is averaged."""
    out = dict(total)
    for k, v in new.items():
        share = v if k.endswith("_time") else v / n_micro
        out[k] = out[k] + share if k in out else share
    return out


class Stopwatch:
    """Times a region without stalling the host: CUDA events on GPUs (read when the numbers are
    fetched), perf_counter elsewhere. Stopwatches add up: `a + b` reads as the sum of both."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.parts = [self]

    def __enter__(self) -> "Stopwatch":
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.elapsed = time.perf_counter() - self.t0

    def __add__(self, other: "Stopwatch") -> "Stopwatch":
        total = Stopwatch.__new__(Stopwatch)
        total.parts = self.parts + other.parts
        return total

    def seconds(self) -> float:
        """Elapsed seconds (waits for the region's end on the GPU)."""
        if self.parts != [self]:
            return sum(p.seconds() for p in self.parts)
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3
        return self.elapsed


def _fetch(values: list) -> list:
    """Numbers from a mix of floats, device tensors and Stopwatches, with one device-to-host copy."""
    tensors = [v.detach().float().reshape(()) for v in values if isinstance(v, torch.Tensor)]
    fetched = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else [])
    return [next(fetched) if isinstance(v, torch.Tensor) else v.seconds() if isinstance(v, Stopwatch) else v
            for v in values]


@dataclass
class StepRecord:
    """One optimizer step's results, still on the device until `Trainer.read_back`."""
    step: int
    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor
    stats: dict
    clock: Stopwatch


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """State of one training run; `fit` runs the loop."""

    def __init__(self, cfg: RunConfig, env: Env, resume: bool, data=None):
        self.cfg, self.env = cfg, env
        init = adopt_init_checkpoint(cfg, env) if cfg.init_from else None
        resume_from = load_checkpoint(run_paths(cfg)["last"], map_location=env.device) if resume else None
        if resume_from:  # refuse another run's checkpoint before any work (the data check follows)
            self._check_resumable(resume_from, settings_only=True)
        if data is None:
            data = prepare_data(cfg.data, cfg.tokenizer, cfg.data_dir, cfg.tokenizer_dir, context=cfg.model.context,
                                log=env.log) if env.master else None
            if env.world > 1:
                dist.barrier()  # rank 0 builds the cache; the others then find it
                data = data or prepare_data(cfg.data, cfg.tokenizer, cfg.data_dir, cfg.tokenizer_dir, log=lambda *a: None)
        self.data = data
        self.data_key = getattr(data, "meta", {}).get("key")  # None for stand-in data (benchmarks)
        cfg.model = replace(cfg.model, vocab_size=data.tokenizer.vocab_size)
        self.train_blocks = data.blocks("train", cfg.model.context, cfg.data.stride, packing=cfg.data.packing)
        self.val_blocks = data.blocks("val", cfg.model.context, packing=cfg.data.packing)
        if len(self.val_blocks) == 0:
            raise TrainingError(f"the validation split has {len(data.tokens('val'))} tokens, fewer than one block of "
                                f"model.context + 1 = {cfg.model.context + 1}: raise data.val_rows")
        if len(self.train_blocks) < cfg.train.batch_size * env.world:
            raise ConfigError(
                f"train.batch_size: the train split has {len(self.train_blocks)} blocks of model.context="
                f"{cfg.model.context}, fewer than one batch ({cfg.train.batch_size} x {env.world} process(es)): "
                "lower train.batch_size or model.context, or raise data.train_rows")
        self.sampler = BlockSampler(len(self.train_blocks), cfg.train.batch_size, cfg.seed, env.rank, env.world)

        self.raw_model = build_model(cfg, data.tokenizer, env)
        if init is not None:
            load_weights(self.raw_model, init)
        if cfg.lora.rank:
            n_trainable = apply_lora(self.raw_model, cfg.lora)
            env.log(f"LoRA rank {cfg.lora.rank} on {cfg.lora.targets}: {n_trainable:,} trainable parameters "
                    f"of {self.raw_model.num_params():,}")
        tok = data.tokenizer
        self.tid = TokenImportanceDropout(cfg.tid, cfg.train.max_steps, (tok.bos_id, tok.pad_id), cfg.model.n_layers,
                                          compile=cfg.train.compile)
        self.optimizer = make_optimizer(self.raw_model, cfg, env)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=env.dtype == torch.float16)
        self.step, self.best_val, self.evals_since_best = 0, math.inf, 0
        self.saved_step: int | None = None  # the step of the last.pt on disk (none yet)
        if resume:
            self._check_resumable(resume_from)
            self._restore(resume_from)
        else:
            torch.manual_seed(cfg.seed + env.rank)  # the training stream (dropout, TID) differs per rank
        self.raw_model.loss_chunk = cfg.train.loss_chunk
        model = self.raw_model
        if env.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
        if cfg.train.compile:  # after DDP: the compiler splits the graph at its buckets, so all-reduce overlaps
            model = torch.compile(model)
        self.model = model
        self.tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.context * env.world
        n_params = self.raw_model.num_params()
        active = getattr(self.raw_model, "num_active_params", None)  # mixture-of-experts models
        # FLOPs follow the parameters a token actually uses (for MoE: the k routed experts)
        n_compute = (active or self.raw_model.num_params)(exclude_embeddings=True)
        self.flops_per_token = models.flops_per_token(cfg.model, n_compute)
        self.peak = peak_flops(env.device)
        self.param_counts = {"params": n_params, "active_params": active() if active else n_params}
        env.log(f"model: {model_family(cfg)}, {n_params / 1e6:.2f}M parameters"
                + (f" ({active() / 1e6:.2f}M active per token)" if active else "")
                + f", {self.raw_model.num_params(exclude_embeddings=True) / 1e6:.2f}M without lookup tables; "
                f"d{cfg.model.d_model} L{cfg.model.n_layers} H{cfg.model.n_heads} ctx {cfg.model.context}, "
                f"vocab {cfg.model.vocab_size:,}")
        if self.tid.enabled:
            tid = cfg.tid
            env.log(f"TID: {tid.method}, drop {tid.resolved_drop}" + (" (auto)" if tid.drop == "auto" else "")
                    + (f", entropy of the {tid.entropy_of} token's prediction" if tid.method == "entropy" else "")
                    + f", {'token embedding only' if tid.keep_position else 'whole input'} zeroed, "
                    f"{tid.schedule} {tid.p_start:g} -> {tid.p_end:g}")
        env.log(f"train: {len(self.train_blocks):,} blocks, {self.tokens_per_step:,} tokens/step, "
                f"{cfg.train.max_steps:,} steps, {env.world} process(es) on {env.device}, {env.dtype}")

    # -- checkpoint state
    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.env.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.env.device)
        rngs = [None] * self.env.world
        if self.env.world > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        return {
            "format": CHECKPOINT_FORMAT,
            # LoRA: the merged weights for every downstream tool, the adapters apart for --resume
            "model": merged_state_dict(self.raw_model) if self.cfg.lora.rank else self.raw_model.state_dict(),
            **({"lora_model": self.raw_model.state_dict()} if self.cfg.lora.rank else {}),
            "config": to_dict(self.cfg),
            "data_key": self.data_key,
            "tokenizer": self.data.tokenizer.spec(),
            "step": self.step,
            "optimizer": optimizers.plain_state(self.optimizer.state_dict()),  # plain tensors only
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "sampler": self.sampler.state_dict(),
            "best_val": self.best_val,
            "evals_since_best": self.evals_since_best,
            "world_size": self.env.world,
        }

    def _check_resumable(self, ckpt: dict, settings_only: bool = False) -> None:
        """Refuse a checkpoint that does not continue this config's run (data, tokenizer, model, seed, ...).
        `settings_only`: compare the config alone (before the data, which sets model.vocab_size, is ready)."""
        path, now = run_paths(self.cfg)["last"], to_dict(self.cfg)
        if settings_only:
            now["model"]["vocab_size"] = ckpt["config"]["model"]["vocab_size"]
        diff = run_identity_diff(ckpt["config"], now)
        if not settings_only:
            if ckpt.get("data_key") not in (None, self.data_key):
                diff.append(f"data key {ckpt['data_key']} -> {self.data_key} (the source or its settings)")
            mine, theirs = self.data.tokenizer.spec(), ckpt["tokenizer"]
            if any(mine.get(k) != theirs.get(k) for k in ("kind", "sha256", "vocab_size")):
                diff.append(f"tokenizer {theirs.get('kind')} {str(theirs.get('sha256'))[:12]} -> "
                            f"{mine.get('kind')} {str(mine.get('sha256'))[:12]}")
        if diff:
            raise ConfigError(f"--resume: {path} was trained with other settings ({'; '.join(diff)}); "
                              "resume with the run's own settings, or start a new run with --run-name NAME")
        if self.cfg.lora.rank and "lora_model" not in ckpt:
            raise ConfigError(f"lora.rank={self.cfg.lora.rank}: {path} holds no LoRA adapters to resume; "
                              "resume without lora.rank, or start a new run")

    def _restore(self, ckpt: dict) -> None:
        if self.cfg.lora.rank:
            self.raw_model.load_state_dict(ckpt["lora_model"])
        else:
            load_weights(self.raw_model, ckpt)
        self.optimizer.load_state_dict(optimizers.restore_state(ckpt["optimizer"]))
        self.scaler.load_state_dict(ckpt["scaler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        self.step, self.best_val = ckpt["step"], ckpt["best_val"]
        self.saved_step = self.step
        self.evals_since_best = ckpt["evals_since_best"]
        if ckpt["world_size"] == self.env.world:
            rng = ckpt["rng"][self.env.rank]
            torch.set_rng_state(rng["torch"].cpu())
            if "cuda" in rng and self.env.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"].cpu(), self.env.device)
        else:
            torch.manual_seed(self.cfg.seed + self.env.rank + self.step)
        self.env.log(f"resumed from step {self.step} (best val loss {self.best_val:.4f})")

    def save(self, path: Path) -> None:
        """Write a checkpoint; non-finite weights stop the run instead (nothing is written)."""
        bad = non_finite_tensors(self.raw_model.state_dict())
        if bad:
            self._stop_non_finite(f"{len(bad)} weight tensors are not finite (first: {bad[0]})")
        if not self.cfg.train.checkpoints:
            return
        state = self.state()  # every rank joins the RNG gather
        if self.env.master:
            save_checkpoint(path, state)
        if path == run_paths(self.cfg)["last"]:
            self.saved_step = self.step

    def _stop_non_finite(self, what: str) -> None:
        """Stop the run, saying truthfully which checkpoint (if any) holds the last good state."""
        paths = run_paths(self.cfg)
        kept = (f"{paths['last']} (step {self.saved_step}) is the last good checkpoint"
                if self.saved_step is not None else "no last.pt was written before this")
        raise TrainingError(f"{what} at step {self.step}; stopped, nothing written. {kept}: "
                            "lower train.lr, raise train.warmup_steps or use fp32")

    # -- one optimizer step
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Forward/backward over grad_accum micro-batches, clip, step.

        Returns loss and grad norm as 0-d device tensors and the statistics (tensors, floats,
        Stopwatches): nothing here waits for the GPU; `read_back` fetches the numbers in groups.
        """
        cfg, env = self.cfg, self.env
        total = torch.zeros((), device=env.device)
        stats: dict = {}
        for micro in range(cfg.train.grad_accum):
            x, y = self._to_device(*self.train_blocks.batch(self.sampler.next_indices()))
            last = micro == cfg.train.grad_accum - 1
            drop_mask, tid_stats = None, {}
            if self.tid.enabled:
                with env.autocast(), Stopwatch(env.device) as clock:  # score in the training precision
                    drop_mask, tid_stats = self.tid.mask(self.raw_model, x, y, self.step)
                tid_stats["tid_score_time"] = clock
            # skip the gradient all-reduce on all but the last micro-batch
            sync = self.model.no_sync() if env.world > 1 and not last else contextlib.nullcontext()
            with sync, env.autocast():
                _, loss, model_stats = self.model(x, y, drop_mask=drop_mask, keep_position=cfg.tid.keep_position)
                loss = loss / cfg.train.grad_accum  # the sum over micro-batches is the batch mean
            self.scaler.scale(loss).backward()
            total += loss.detach()
            stats = _accumulate(stats, {**model_stats, **tid_stats}, cfg.train.grad_accum)
        if cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.train.grad_clip)
        else:
            grad_norm = torch.zeros((), device=env.device)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if env.world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.AVG)
        return total, grad_norm, stats

    def read_back(self, records: list[StepRecord]) -> list[dict]:
        """The numbers of `records` on the host (one copy); stops at the first non-finite loss."""
        keys = [sorted(r.stats) for r in records]
        flat = [v for r, ks in zip(records, keys) for v in (r.loss, r.grad_norm, r.clock, *(r.stats[k] for k in ks))]
        values = iter(_fetch(flat))
        rows = []
        for r, ks in zip(records, keys):
            loss, grad_norm, dt = next(values), next(values), next(values)
            if not math.isfinite(loss):
                self.step = r.step
                self._stop_non_finite(f"loss is {loss}")
            stats = {k: next(values) for k in ks}
            if self.tid.enabled:  # the overhead of TID, readable off the logs
                stats["tid_step_time_without_scoring"] = dt - stats["tid_score_time"]
                stats["tid_method"] = self.cfg.tid.method
                stats["tid_drop"] = self.cfg.tid.resolved_drop
            rows.append({"step": r.step, "lr": r.lr, "loss": loss, "grad_norm": grad_norm, "dt": dt, "stats": stats})
        return rows

    def _to_device(self, x: torch.Tensor, y: torch.Tensor):
        return to_device(x, self.env.device), to_device(y, self.env.device)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float, dict]:
        """Validation loss = total NLL / target tokens (no auxiliary losses), bits per byte, and the
        model's statistics averaged over the validation batches (rank 0's share under DDP)."""
        cfg, env = self.cfg, self.env
        self.model.eval()
        n = len(self.val_blocks)
        if cfg.train.eval_batches is not None:
            n = min(n, cfg.train.eval_batches * cfg.train.batch_size * env.world)
        nll = torch.zeros((), device=env.device, dtype=torch.float64)
        count = torch.zeros((), device=env.device, dtype=torch.float64)
        mine = torch.arange(env.rank, n, env.world)  # each rank takes every world-th block
        batches = mine.split(cfg.train.batch_size)
        stats: dict = {}
        for batch in batches:
            x, y = self._to_device(*self.val_blocks.batch(batch.numpy()))
            targets = (y != -100).sum()  # data.packing=pad: padding positions are no targets
            with env.autocast():
                if self.raw_model.loss_chunk:  # the fused head: no full logits here either
                    _, loss, batch_stats = self.raw_model(x, y)
                    nll += batch_stats.pop("ce_loss", loss).double() * targets
                else:
                    logits, _, batch_stats = self.raw_model(x)
                    nll += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
            count += targets
            stats = _accumulate(stats, batch_stats, len(batches))
        if env.world > 1:
            dist.all_reduce(nll)
            dist.all_reduce(count)
        self.model.train()
        loss = (nll / count).item()
        if not math.isfinite(loss):
            self._stop_non_finite(f"validation loss is {loss}")
        bpb = bits_per_token(loss) / self.data.bytes_per_token("val")
        return loss, bpb, {k: float(v) for k, v in stats.items()}

    # -- the loop
    def fit(self, logger: RunLogger | None) -> dict:
        cfg, env, paths = self.cfg, self.env, run_paths(self.cfg)
        t_start, tokens_done = time.time(), 0
        if self.step == 0:
            self._eval_and_checkpoint(logger, paths)
        bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc=cfg.run_name, unit="step",
                   disable=not env.master, dynamic_ncols=True)
        stop_reason = "max_steps"
        pending: list[StepRecord] = []
        signalled: dict = {}
        try:
            with stop_on_signals(signalled):
                while self.step < cfg.train.max_steps:
                    lr = lr_at(self.step, cfg)
                    optimizers.set_lr(self.optimizer, lr)
                    with Stopwatch(env.device) as clock:
                        loss, grad_norm, stats = self.train_step()
                    self.step += 1
                    tokens_done += self.tokens_per_step
                    pending.append(StepRecord(self.step, lr, loss, grad_norm, stats, clock))
                    bar.update(1)
                    if self.step % cfg.train.log_every == 0 or self._eval_or_save_due():
                        self._log(self.read_back(pending), logger, bar, t_start)
                        pending = []
                    if self._eval_and_checkpoint(logger, paths):
                        stop_reason = f"early stop (no improvement in {cfg.train.patience} evals)"
                        break
                    signum = self._signal_received(signalled)
                    if signum:  # a step boundary: the saved state is exactly the one after this step
                        self._log(self.read_back(pending), logger, bar, t_start)
                        self._save_last(logger, paths)
                        raise Interrupted(f"{signal.Signals(signum).name} at step {self.step}: {paths['last']} "
                                          "saved; continue with --resume", signum)
        finally:
            bar.close()
        if self.step % cfg.train.save_every:  # the final state, if the last periodic save missed it
            self._save_last(logger, paths)
        elif logger:
            logger.save()
        wall = time.time() - t_start
        return {"steps": self.step, "stop": stop_reason, "wall_s": wall,
                "tokens_per_s": tokens_done / wall if wall > 0 else math.nan}

    def _signal_received(self, signalled: dict) -> int:
        """The signal that asked to stop, or 0. Under DDP every rank agrees (checked every log_every steps)."""
        signum = signalled.get("signum", 0)
        if self.env.world == 1:
            return signum
        if self.step % self.cfg.train.log_every:
            return 0
        flag = torch.tensor([signum], device=self.env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def _save_last(self, logger: RunLogger | None, paths: dict) -> None:
        """Logs first, then last.pt: a kill between the two leaves logs ahead of the checkpoint, which
        --resume trims, never a checkpoint ahead of its logs."""
        if logger:
            logger.save()
        self.save(paths["last"])

    def _log(self, rows: list[dict], logger: RunLogger | None, bar: tqdm, t_start: float) -> None:
        if logger:
            later = sum(r["dt"] for r in rows)  # elapsed at each step: now, less the steps after it
            for r in rows:
                later -= r["dt"]
                logger.log_step(r["step"], r["loss"], r["lr"], r["grad_norm"], r["dt"], self.tokens_per_step,
                                time.time() - t_start - later, r["stats"])
        if rows:
            last = rows[-1]
            bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{self.tokens_per_step / last['dt']:,.0f}")

    def _eval_or_save_due(self) -> bool:
        """Whether `_eval_and_checkpoint` acts after this step (the losses are checked before a save)."""
        step, t = self.step, self.cfg.train
        return (step % t.eval_every == 0 or step == t.max_steps or step % t.save_every == 0
                or bool(t.keep_every and step % t.keep_every == 0))

    def _eval_and_checkpoint(self, logger: RunLogger | None, paths: dict) -> bool:
        """Evaluate / save on their schedules. Returns True when early stopping says stop."""
        cfg, step = self.cfg, self.step
        stop = False
        if step % cfg.train.eval_every == 0 or step == cfg.train.max_steps:
            val_loss, bpb, stats = self.evaluate()
            self.last_val = (val_loss, bpb)
            if logger:
                logger.log_eval(step, val_loss, bpb, stats)
            improved = val_loss < self.best_val
            if improved:
                self.best_val, self.evals_since_best = val_loss, 0
                self.save(paths["best"])
            else:
                self.evals_since_best += 1
                stop = cfg.train.patience > 0 and self.evals_since_best >= cfg.train.patience
            self.env.log(f"step {step}: val loss {val_loss:.4f} (ppl {capped_perplexity(val_loss):.2f}, "
                         f"{bits_per_token(val_loss):.3f} bits/token, {bpb:.3f} bits/byte){' *' if improved else ''}")
        if step > 0 and (step % cfg.train.save_every == 0 or stop):
            self._save_last(logger, paths)
        if step > 0 and cfg.train.keep_every and step % cfg.train.keep_every == 0:
            self.save(paths["dir"] / f"step_{step}.pt")
        return stop


def train(cfg: RunConfig, resume: bool = False, force: bool = False, data=None) -> dict:
    """Train `cfg` (a RunConfig with run_name set) and return the run summary.

    `data` replaces the prepared data of cfg.data (anything with PreparedData's tokenizer, blocks,
    tokens and bytes_per_token; e.g. the random tokens of the speed benchmarks).
    """
    check_run_name(cfg.run_name)
    env = setup_env(cfg)
    try:
        with run_lock(cfg, env):
            if env.master:
                claim_outputs(cfg, resume, force)
            if env.world > 1:
                dist.barrier()
            return _train_locked(cfg, env, resume, data)
    finally:
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train_locked(cfg: RunConfig, env: Env, resume: bool, data) -> dict:
    trainer = Trainer(cfg, env, resume, data)
    env.log(f"run {cfg.run_name}: outputs in {run_paths(cfg)['dir']} and {cfg.log_dir}/")
    meta = {"config": to_dict(cfg), **trainer.param_counts}
    logger = RunLogger(cfg.run_name, cfg.log_dir, meta, resume_step=trainer.step,
                       wandb_run=_wandb(cfg)) if env.master else None
    summary = trainer.fit(logger)
    if env.world > 1:
        dist.barrier()  # leave together: a rank tearing down gloo while another still runs aborts
    summary.update(best_val_loss=trainer.best_val, run=cfg.run_name)
    val_loss, bpb = getattr(trainer, "last_val", (math.nan, math.nan))
    summary.update(val_loss=val_loss, val_ppl=capped_perplexity(val_loss), val_bpt=bits_per_token(val_loss),
                   val_bpb=bpb, model=model_family(cfg))
    mfu = (summary["tokens_per_s"] * trainer.flops_per_token / trainer.peak) if trainer.peak else None
    summary["mfu"] = mfu
    env.log(
        f"done {cfg.run_name} [{summary['model']}]: {summary['steps']} steps ({summary['stop']}), best val loss "
        f"{trainer.best_val:.4f}, val ppl {summary['val_ppl']:.2f}, {summary['val_bpt']:.3f} bits/token, "
        f"{bpb:.3f} bits/byte, "
        f"{summary['wall_s']:.1f}s, {summary['tokens_per_s']:,.0f} tokens/s"
        + (f", MFU {mfu:.1%}" if mfu is not None else ""))
    return summary


def _wandb(cfg: RunConfig):
    if cfg.wandb.mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError("wandb.mode is set but wandb is not installed: pip install wandb (or wandb.mode=disabled)") from None
    return wandb.init(project=cfg.wandb.project, name=cfg.run_name, mode=cfg.wandb.mode, config=to_dict(cfg))
