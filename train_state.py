"""A training run's state in a checkpoint: what `last.pt` holds, the check that a checkpoint continues
this run, and putting the state back, so `--resume` continues exactly where the run stopped.

    save(trainer, path)                 # capture() written; every rank joins (the RNG states are gathered)
    check_resumable(ckpt, cfg, path, world)  # ConfigError when the checkpoint is another run's (or
                                             # another global batch)
    check_unfinished(trainer)           # RunFinished when the resumed run has no step left
    restore(trainer, ckpt)
    stop_non_finite(trainer, what)      # TrainingError naming the last good checkpoint
    with stop_on_write_error(trainer):  # a failed write (disk full) too

`trainer` is generic_runner.Trainer: its cfg, env, model, optimizer, scaler, sampler, data and
counters (step, best_val, evals_since_best, saved_step).
"""

import contextlib

import torch
import torch.distributed as dist

import optimizers
from experiment_config import ConfigError, run_identity_diff, to_dict
from fileio import WRITE_FAILURES, write_failure
from models.checkpoint import CHECKPOINT_FORMAT, load_weights, non_finite_tensors, save_checkpoint
from models.lora import merged_state_dict
from run_files import TrainingError, run_paths


def save(trainer, path) -> None:
    """Write the trainer's state to `path`; non-finite weights stop the run instead (nothing is written)."""
    bad = non_finite_tensors(trainer.model.state_dict())
    if bad:
        stop_non_finite(trainer, f"{len(bad)} weight tensors are not finite (first: {bad[0]})")
    if not trainer.cfg.train.checkpoints:
        return
    state = capture(trainer)  # every rank joins the RNG gather
    if trainer.env.is_main:
        save_checkpoint(path, state)
    if path == run_paths(trainer.cfg)["last"]:
        trainer.saved_step = trainer.step


def stop_non_finite(trainer, what: str) -> None:
    """Stop the run, saying truthfully which checkpoint (if any) holds the last good state."""
    raise TrainingError(f"{what} at step {trainer.step}; stopped, nothing written. {_last_good(trainer)}: "
                        "lower train.lr, raise train.warmup_steps or use fp32")


@contextlib.contextmanager
def stop_on_write_error(trainer):
    """A checkpoint or log that cannot be written (a full disk, a read-only folder) stops the run
    with one line naming the file and the last good checkpoint; the atomic writes left the earlier
    files whole."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_FAILURES:  # not a refused write (e.g. a file that vanished): as it was
            raise
        then = "continue with --resume" if trainer.saved_step is not None else "start the run again with --force"
        raise TrainingError(f"{write_failure(e)}; stopped at step {trainer.step}. {_last_good(trainer)}; "
                            f"once fixed, {then}") from None


def _last_good(trainer) -> str:
    paths = run_paths(trainer.cfg)
    return (f"{paths['last']} (step {trainer.saved_step}) is the last good checkpoint"
            if trainer.saved_step is not None else "no last.pt was written before this")


def capture(trainer) -> dict:
    """The checkpoint dict of the trainer's current state."""
    env, cfg = trainer.env, trainer.cfg
    rng = {"torch": torch.get_rng_state()}
    if env.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(env.device)
    rngs = [None] * env.world
    if env.world > 1:
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    return {
        "format": CHECKPOINT_FORMAT,
        # LoRA: the merged weights for every downstream tool, the adapters apart for --resume
        "model": merged_state_dict(trainer.model) if cfg.lora.rank else trainer.model.state_dict(),
        **({"lora_model": trainer.model.state_dict()} if cfg.lora.rank else {}),
        "config": to_dict(cfg),
        "data_key": trainer.data_key,
        "tokenizer": trainer.data.tokenizer.spec(),
        "step": trainer.step,
        "optimizer": optimizers.plain_state(trainer.optimizer.state_dict()),  # plain tensors only
        "scaler": trainer.scaler.state_dict(),
        "rng": rngs,
        "sampler": trainer.sampler.state_dict(),
        "best_val": trainer.best_val,
        "evals_since_best": trainer.evals_since_best,
        "world_size": env.world,
        "tokens_per_step": trainer.tokens_per_step,
    }


class RunFinished(TrainingError):
    """--resume of a checkpoint already at train.max_steps: there is nothing left to train."""


def check_unfinished(trainer) -> None:
    """RunFinished when the resumed trainer is already at train.max_steps (training would only log nan)."""
    if trainer.step >= trainer.cfg.train.max_steps:
        raise RunFinished(f"--resume: {run_paths(trainer.cfg)['last']} is at step {trainer.step}, the run's "
                          "train.max_steps: it is finished, nothing to train (raise train.max_steps to train it further)")


def tokens_per_step(cfg, world: int) -> int:
    """Tokens one optimizer step takes over all processes: batch_size x grad_accum x context x world."""
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.model.context * world


def _global_batch(ckpt: dict) -> tuple[int, str]:
    """A checkpoint's tokens per step and how they came about (checkpoints before "tokens_per_step": from its config)."""
    t, world = ckpt["config"]["train"], ckpt.get("world_size", 1)
    how = f"{t['batch_size']} x {t['grad_accum']} x {ckpt['config']['model']['context']} x {world}"
    recorded = ckpt.get("tokens_per_step")
    return (recorded if recorded is not None else
            t["batch_size"] * t["grad_accum"] * ckpt["config"]["model"]["context"] * world), how


def check_resumable(ckpt: dict, cfg, path, world: int, data_key: str | None = None,
                    tokenizer_spec: dict | None = None) -> None:
    """Refuse a checkpoint that does not continue this config's run (data, tokenizer, model, seed, ...,
    and the global batch: train.batch_size and grad_accum may change with the number of processes
    `world` only so that the tokens per step stay the same), or that has no step left to train.
    Without `tokenizer_spec` (before the data is ready) the config alone is compared, less
    model.vocab_size (which the tokenizer sets)."""
    step, max_steps = ckpt["step"], cfg.train.max_steps
    if step > max_steps:
        raise ConfigError(f"--resume: {path} is at step {step}, beyond train.max_steps={max_steps}: "
                          f"set train.max_steps above {step} to train it further")
    old, old_how = _global_batch(ckpt)
    new = tokens_per_step(cfg, world)
    if old != new:
        raise ConfigError(
            f"--resume: {path} was trained with {old:,} tokens per step ({old_how} = batch_size x grad_accum x "
            f"context x processes), this run would take {new:,} ({cfg.train.batch_size} x {cfg.train.grad_accum} x "
            f"{cfg.model.context} x {world}): set train.batch_size / train.grad_accum so the global batch is unchanged")
    now = to_dict(cfg)
    if tokenizer_spec is None:
        now["model"]["vocab_size"] = ckpt["config"]["model"]["vocab_size"]
    diff = run_identity_diff(ckpt["config"], now)
    if tokenizer_spec is not None:
        if ckpt.get("data_key") not in (None, data_key):
            diff.append(f"data key {ckpt['data_key']} -> {data_key} (the source or its settings)")
        theirs = ckpt["tokenizer"]
        if any(tokenizer_spec.get(k) != theirs.get(k) for k in ("kind", "sha256", "vocab_size")):
            diff.append(f"tokenizer {theirs.get('kind')} {str(theirs.get('sha256'))[:12]} -> "
                        f"{tokenizer_spec.get('kind')} {str(tokenizer_spec.get('sha256'))[:12]}")
    if diff:
        raise ConfigError(f"--resume: {path} was trained with other settings ({'; '.join(diff)}); "
                          "resume with the run's own settings, or start a new run with --run-name NAME")
    if cfg.lora.rank and "lora_model" not in ckpt:
        raise ConfigError(f"lora.rank={cfg.lora.rank}: {path} holds no LoRA adapters to resume; "
                          "resume without lora.rank, or start a new run")


def restore(trainer, ckpt: dict) -> None:
    """Weights, optimizer, scaler, sampler, counters and (same world size) every rank's RNG state."""
    env, cfg = trainer.env, trainer.cfg
    if cfg.lora.rank:
        trainer.model.load_state_dict(ckpt["lora_model"])
    else:
        load_weights(trainer.model, ckpt)
    trainer.optimizer.load_state_dict(optimizers.restore_state(ckpt["optimizer"]))
    trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.sampler.load_state_dict(ckpt["sampler"])
    trainer.step, trainer.best_val = ckpt["step"], ckpt["best_val"]
    trainer.saved_step = trainer.step
    trainer.evals_since_best = ckpt["evals_since_best"]
    if ckpt["world_size"] == env.world:
        rng = ckpt["rng"][env.rank]
        torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and env.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), env.device)
    else:
        torch.manual_seed(cfg.seed + env.rank + trainer.step)
    env.log(f"resumed from step {trainer.step} (best val loss {trainer.best_val:.4f})")
