"""A training run's state in a checkpoint: what `last.pt` holds, the check that a checkpoint continues
this run, and putting the state back, so `--resume` continues exactly where the run stopped.

    save(trainer, path)                 # capture() written; every rank joins (the RNG states are gathered)
    check_resumable(ckpt, cfg, path)    # ConfigError when the checkpoint is another run's
    restore(trainer, ckpt)
    stop_non_finite(trainer, what)      # TrainingError naming the last good checkpoint

`trainer` is generic_runner.Trainer: its cfg, env, model, optimizer, scaler, sampler, data and
counters (step, best_val, evals_since_best, saved_step).
"""

import torch
import torch.distributed as dist

import optimizers
from experiment_config import ConfigError, run_identity_diff, to_dict
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
    paths = run_paths(trainer.cfg)
    kept = (f"{paths['last']} (step {trainer.saved_step}) is the last good checkpoint"
            if trainer.saved_step is not None else "no last.pt was written before this")
    raise TrainingError(f"{what} at step {trainer.step}; stopped, nothing written. {kept}: "
                        "lower train.lr, raise train.warmup_steps or use fp32")


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
    }


def check_resumable(ckpt: dict, cfg, path, data_key: str | None = None, tokenizer_spec: dict | None = None) -> None:
    """Refuse a checkpoint that does not continue this config's run (data, tokenizer, model, seed, ...).
    Without `tokenizer_spec` (before the data is ready) the config alone is compared, less
    model.vocab_size (which the tokenizer sets)."""
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
