"""What a training run builds before its first step: the data, the model, its training wrappers and
optimizer, and the lines that describe them in the log (generic_runner.Trainer calls these in order).

    cfg = with_init_checkpoint(cfg, ckpt, env)     # fine-tuning: the checkpoint's model and tokenizer
    data = load_data(cfg, env)                     # prepared by rank 0, found in the cache by the others
    model = build_model(cfg, data.tokenizer, env, init=ckpt)
    optimizer = make_optimizer(model, cfg, env)
    wrapped = wrap_for_training(model, cfg, env)   # DDP and/or torch.compile
"""

from dataclasses import replace

import torch
import torch.distributed as dist

import models
import optimizers
from dataset_definitions.config import TokenizerConfig
from dataset_definitions.word_vectors import load_word_vectors
from experiment_config import ConfigError, RunConfig, prepare_run_data, to_dict
from models.checkpoint import load_weights, model_config
from models.lora import apply_lora
from run_files import TrainingError
from runtime import Env
from train_logs import RunLogger, open_tensorboard, open_wandb


def with_init_checkpoint(cfg: RunConfig, ckpt: dict, env: Env) -> RunConfig:
    """Fine-tuning: the model and tokenizer come from cfg.init_from (model.* keys in the configs are ignored)."""
    spec = ckpt["tokenizer"]
    env.log(f"init from {cfg.init_from} (step {ckpt.get('step', 0)}): its {ckpt['config']['model']['preset']} "
            f"model and {spec['kind']} tokenizer")
    return replace(cfg, model=model_config(ckpt),
                   tokenizer=TokenizerConfig(kind=spec["kind"], path=spec["path"], vocab_size=spec["vocab_size"]))


def load_data(cfg: RunConfig, env: Env):
    """The prepared data of cfg.data: rank 0 builds the cache (or finds it), the other ranks then read it."""
    data = prepare_run_data(cfg, log=env.log) if env.is_main else None
    if env.world > 1:
        dist.barrier()
        data = data or prepare_run_data(cfg, log=lambda *a: None)
    return data


def check_splits(train_blocks, val_blocks, val_tokens: int, cfg: RunConfig, world: int) -> None:
    """A validation block and one training batch at least, or an error naming the key to change."""
    if len(val_blocks) == 0:
        raise TrainingError(f"the validation split has {val_tokens} tokens, fewer than one block of "
                            f"model.context + 1 = {cfg.model.context + 1}: raise data.val_rows")
    if len(train_blocks) < cfg.train.batch_size * world:
        raise ConfigError(
            f"train.batch_size: the train split has {len(train_blocks)} blocks of model.context="
            f"{cfg.model.context}, fewer than one batch ({cfg.train.batch_size} x {world} process(es)): "
            "lower train.batch_size or model.context, or raise data.train_rows")


def resolve_epochs(cfg: RunConfig, batches_per_epoch: int) -> RunConfig:
    """cfg with both train.max_steps and train.epochs: the one left out derived from the other (an epoch is
    `batches_per_epoch` micro-batches, train.grad_accum of them a step); ConfigError when the two disagree."""
    t = cfg.train
    steps_per_epoch = batches_per_epoch / t.grad_accum
    if t.epochs is None:
        return replace(cfg, train=replace(t, epochs=round(t.max_steps / steps_per_epoch, 4)))
    steps = max(1, round(t.epochs * steps_per_epoch))
    if t.max_steps is not None and t.max_steps != steps:
        raise ConfigError(f"train.epochs={t.epochs:g} is {steps} steps ({steps_per_epoch:g} per epoch), not "
                          f"train.max_steps={t.max_steps}: set one of them and the other to null")
    return replace(cfg, train=replace(t, max_steps=steps))


def build_model(cfg: RunConfig, tokenizer, env: Env, init: dict | None = None) -> torch.nn.Module:
    """The run's model on its device: fresh weights from cfg.seed (the same on every rank), then word
    vectors, the weights of an init checkpoint, LoRA adapters, as the config asks."""
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model)
    if cfg.model.word_vectors:
        vectors, found = load_word_vectors(cfg.model.word_vectors, tokenizer)
        model.init_token_embeddings(torch.from_numpy(vectors), torch.from_numpy(found),
                                    freeze=cfg.model.freeze_embeddings, pad_id=tokenizer.pad_id)
        env.log(f"word vectors: {int(found.sum()):,}/{len(found):,} tokens initialised from {cfg.model.word_vectors}")
    model = model.to(env.device)
    if init is not None:
        load_weights(model, init)
    if cfg.lora.rank:
        n_trainable = apply_lora(model, cfg.lora)
        env.log(f"LoRA rank {cfg.lora.rank} on {cfg.lora.targets}: {n_trainable:,} trainable parameters "
                f"of {model.num_params():,}")
    return model


def make_optimizer(model: torch.nn.Module, cfg: RunConfig, env: Env) -> torch.optim.Optimizer:
    """train.optimizer over the model's parameter groups (optimizers.py)."""
    t = cfg.train
    try:
        return optimizers.make_optimizer(optimizers.param_groups(model, t.weight_decay), t.optimizer, t.lr,
                                         (t.beta1, t.beta2), env.device)
    except ImportError as e:
        raise TrainingError(str(e)) from None


def wrap_for_training(model: torch.nn.Module, cfg: RunConfig, env: Env) -> torch.nn.Module:
    """The model as the training step runs it: DDP across processes, then torch.compile (after DDP, the
    compiler splits the graph at its buckets, so the all-reduce overlaps the backward pass)."""
    if env.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    return torch.compile(model) if cfg.train.compile else model


def parameter_counts(model: torch.nn.Module, cfg: RunConfig) -> tuple[dict, int]:
    """{"params", "active_params"} for the logs, and the training FLOPs per token for MFU (which follow
    the parameters a token uses: for a mixture of experts, its k routed experts)."""
    n_params, active = model.num_params(), getattr(model, "num_active_params", None)
    flops = models.flops_per_token(cfg.model, (active or model.num_params)(exclude_embeddings=True))
    return {"params": n_params, "active_params": active() if active else n_params}, flops


def open_logger(trainer) -> RunLogger:
    """The run's logs (continued from a resumed step), with wandb and TensorBoard when wandb.mode and
    log.tensorboard ask for them."""
    cfg, run = to_dict(trainer.cfg), trainer.cfg
    try:
        wandb_run = open_wandb(run.wandb, run.run_name, cfg)
        tensorboard = open_tensorboard(run.log, run.run_name, run.log_dir, trainer.step)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    meta = {"config": cfg, "train_tokens": trainer.unique_tokens, **trainer.param_counts}
    return RunLogger(run.run_name, run.log_dir, meta,
                     resume_step=trainer.step, wandb_run=wandb_run, tensorboard=tensorboard)


def describe_run(trainer) -> str:
    """The log lines of a Trainer about to start: the model (family, parameters, shape), TID, the run."""
    cfg, env, counts = trainer.cfg, trainer.env, trainer.param_counts
    m, n, active = cfg.model, counts["params"], counts["active_params"]
    lines = [f"model: {models.describe(m)}, {n / 1e6:.2f}M parameters"
             + (f" ({active / 1e6:.2f}M active per token)" if active != n else "")
             + f", {trainer.model.num_params(exclude_embeddings=True) / 1e6:.2f}M without lookup tables; "
             f"d{m.d_model} L{m.n_layers} H{m.n_heads} ctx {m.context}, vocab {m.vocab_size:,}"]
    if trainer.tid.enabled:
        lines.append(f"TID: {trainer.tid.describe()}")
    lines.append(f"train: {len(trainer.train_blocks):,} blocks of {trainer.unique_tokens:,} unique tokens, "
                 f"{trainer.tokens_per_step:,} tokens/step, {cfg.train.max_steps:,} steps = {cfg.train.epochs:g} epochs, "
                 f"{env.world} process(es) on {env.device}, {env.dtype}")
    return "\n".join(lines)
