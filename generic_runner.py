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
import re
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import models
import optimizers
import train_state
from cli import exit_with
from dataset_definitions.config import TokenizerConfig
from dataset_definitions.datasets import BlockSampler
from dataset_definitions.prepare import prepare_data
from dataset_definitions.sources import DataError
from dataset_definitions.word_vectors import load_word_vectors
from experiment_config import ConfigError, RunConfig, check_run_name, load_config, to_dict
from fileio import UnsafeFileError
from models.checkpoint import CheckpointError, load_checkpoint, load_weights, model_config, non_finite_tensors, save_checkpoint
from models.lora import apply_lora
from run_files import TrainingError, claim_outputs, run_lock, run_paths
from runtime import Env, Stopwatch, fetch, peak_flops, setup_env, stop_on_signals, to_device
from run_stats import Stat, combine, values
from tid import TokenImportanceDropout
from train_logs import RunLogger, bits_per_token, capped_perplexity


class Interrupted(TrainingError):
    """SIGINT or SIGTERM stopped the run at a step boundary, after saving last.pt."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


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
        configs = [default_config, *args.config]
        cfg = load_config(configs, args.set)
        cfg = replace(cfg, run_name=args.run_name or cfg.run_name or default_run_name(configs, args.set))
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


def train(cfg: RunConfig, resume: bool = False, force: bool = False, data=None) -> dict:
    """Train `cfg` (a RunConfig with run_name set) and return the run summary.

    `data` replaces the prepared data of cfg.data (anything with PreparedData's tokenizer, blocks,
    tokens and bytes_per_token; e.g. the random tokens of the speed benchmarks).
    """
    check_run_name(cfg.run_name)
    try:
        env = setup_env(cfg.device, cfg.train.precision)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        with run_lock(cfg, env.is_main):
            if env.is_main:
                claim_outputs(cfg, resume, force)
            if env.world > 1:
                dist.barrier()
            trainer = Trainer(cfg, env, resume, data)
            env.log(f"run {cfg.run_name}: outputs in {run_paths(cfg)['dir']} and {cfg.log_dir}/")
            logger = RunLogger(cfg.run_name, cfg.log_dir, {"config": to_dict(trainer.cfg), **trainer.param_counts},
                               resume_step=trainer.step, wandb_run=_wandb(trainer.cfg)) if env.is_main else None
            summary = trainer.fit(logger)
            if env.world > 1:
                dist.barrier()  # leave together: a rank tearing down gloo while another still runs aborts
            return summarise(trainer, summary)
    finally:
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def summarise(trainer: "Trainer", summary: dict) -> dict:
    """The run summary (best and last validation numbers, speed, MFU) and its one-line report."""
    cfg = trainer.cfg
    val_loss, bpb = trainer.last_val
    mfu = summary["tokens_per_s"] * trainer.flops_per_token / trainer.peak if trainer.peak else None
    summary.update(best_val_loss=trainer.best_val, run=cfg.run_name, val_loss=val_loss,
                   val_ppl=capped_perplexity(val_loss), val_bpt=bits_per_token(val_loss), val_bpb=bpb,
                   model=models.describe(cfg.model), mfu=mfu)
    trainer.env.log(
        f"done {cfg.run_name} [{summary['model']}]: {summary['steps']} steps ({summary['stop']}), best val loss "
        f"{trainer.best_val:.4f}, val ppl {summary['val_ppl']:.2f}, {summary['val_bpt']:.3f} bits/token, "
        f"{bpb:.3f} bits/byte, {summary['wall_s']:.1f}s, {summary['tokens_per_s']:,.0f} tokens/s"
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


# ----------------------------------------------------------------------------- setup

def with_init_checkpoint(cfg: RunConfig, ckpt: dict, env: Env) -> RunConfig:
    """Fine-tuning: the model and tokenizer come from cfg.init_from (model.* keys in the configs are ignored)."""
    spec = ckpt["tokenizer"]
    env.log(f"init from {cfg.init_from} (step {ckpt.get('step', 0)}): its {ckpt['config']['model']['preset']} "
            f"model and {spec['kind']} tokenizer")
    return replace(cfg, model=model_config(ckpt),
                   tokenizer=TokenizerConfig(kind=spec["kind"], path=spec["path"], vocab_size=spec["vocab_size"]))


def build_model(cfg: RunConfig, tokenizer, env: Env) -> torch.nn.Module:
    """The run's model on its device: fresh weights from cfg.seed (the same on every rank), word vectors."""
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model)
    if cfg.model.word_vectors:
        vectors, found = load_word_vectors(cfg.model.word_vectors, tokenizer)
        model.init_token_embeddings(torch.from_numpy(vectors), torch.from_numpy(found),
                                    freeze=cfg.model.freeze_embeddings, pad_id=tokenizer.pad_id)
        env.log(f"word vectors: {int(found.sum()):,}/{len(found):,} tokens initialised from {cfg.model.word_vectors}")
    return model.to(env.device)


@dataclass
class StepRecord:
    """One optimizer step's results, still on the device until `Trainer.read_back`."""
    step: int
    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor
    stats: dict[str, Stat]
    clock: Stopwatch


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """State of one training run; `fit` runs the loop.

    self.cfg is the run's config resolved once: the model and tokenizer of an init checkpoint, the
    tokenizer's vocab size; it is what checkpoints and logs record. self.model is the plain model
    (what is saved), self.wrapped the same under DDP and/or torch.compile (what the step runs).
    """

    def __init__(self, cfg: RunConfig, env: Env, resume: bool, data=None):
        self.env, self.last_val = env, (math.nan, math.nan)
        init = load_checkpoint(cfg.init_from) if cfg.init_from else None
        if init is not None:
            cfg = with_init_checkpoint(cfg, init, env)
        last = run_paths(cfg)["last"]
        resume_from = load_checkpoint(last, map_location=env.device) if resume else None
        if resume_from:  # refuse another run's checkpoint before any work (the data check follows)
            train_state.check_resumable(resume_from, cfg, last)
        if data is None:
            data = prepare_data(cfg.data, cfg.tokenizer, cfg.data_dir, cfg.tokenizer_dir, context=cfg.model.context,
                                log=env.log) if env.is_main else None
            if env.world > 1:
                dist.barrier()  # rank 0 builds the cache; the others then find it
                data = data or prepare_data(cfg.data, cfg.tokenizer, cfg.data_dir, cfg.tokenizer_dir, log=lambda *a: None)
        self.data, self.data_key = data, getattr(data, "meta", {}).get("key")  # None for stand-in data
        self.cfg = cfg = replace(cfg, model=replace(cfg.model, vocab_size=data.tokenizer.vocab_size))
        self.train_blocks = data.blocks("train", cfg.model.context, cfg.data.stride, packing=cfg.data.packing)
        self.val_blocks = data.blocks("val", cfg.model.context, packing=cfg.data.packing)
        self._check_splits(len(data.tokens("val")))
        self.sampler = BlockSampler(len(self.train_blocks), cfg.train.batch_size, cfg.seed, env.rank, env.world)

        self.model = build_model(cfg, data.tokenizer, env)
        if init is not None:
            load_weights(self.model, init)
        if cfg.lora.rank:
            n_trainable = apply_lora(self.model, cfg.lora)
            env.log(f"LoRA rank {cfg.lora.rank} on {cfg.lora.targets}: {n_trainable:,} trainable parameters "
                    f"of {self.model.num_params():,}")
        tok = data.tokenizer
        self.tid = TokenImportanceDropout(cfg.tid, cfg.train.max_steps, (tok.bos_id, tok.pad_id), cfg.model.n_layers,
                                          compile=cfg.train.compile)
        try:
            self.optimizer = optimizers.make_optimizer(optimizers.param_groups(self.model, cfg.train.weight_decay),
                                                       cfg.train.optimizer, cfg.train.lr,
                                                       (cfg.train.beta1, cfg.train.beta2), env.device)
        except ImportError as e:
            raise TrainingError(str(e)) from None
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=env.dtype == torch.float16)
        self.step, self.best_val, self.evals_since_best = 0, math.inf, 0
        self.saved_step: int | None = None  # the step of the last.pt on disk (none yet)
        if resume:
            train_state.check_resumable(resume_from, cfg, last, self.data_key, data.tokenizer.spec())
            train_state.restore(self, resume_from)
        else:
            torch.manual_seed(cfg.seed + env.rank)  # the training stream (dropout, TID) differs per rank
        wrapped = self.model
        if env.world > 1:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                wrapped, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
        if cfg.train.compile:  # after DDP: the compiler splits the graph at its buckets, so all-reduce overlaps
            wrapped = torch.compile(wrapped)
        self.wrapped = wrapped
        self.tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.context * env.world
        n_params, active = self.model.num_params(), getattr(self.model, "num_active_params", None)
        # FLOPs follow the parameters a token actually uses (for MoE: the k routed experts)
        self.flops_per_token = models.flops_per_token(cfg.model, (active or self.model.num_params)(exclude_embeddings=True))
        self.peak = peak_flops(env.device)
        self.param_counts = {"params": n_params, "active_params": active() if active else n_params}
        env.log(f"model: {models.describe(cfg.model)}, {n_params / 1e6:.2f}M parameters"
                + (f" ({active() / 1e6:.2f}M active per token)" if active else "")
                + f", {self.model.num_params(exclude_embeddings=True) / 1e6:.2f}M without lookup tables; "
                f"d{cfg.model.d_model} L{cfg.model.n_layers} H{cfg.model.n_heads} ctx {cfg.model.context}, "
                f"vocab {cfg.model.vocab_size:,}")
        if self.tid.enabled:
            env.log(f"TID: {self.tid.describe()}")
        env.log(f"train: {len(self.train_blocks):,} blocks, {self.tokens_per_step:,} tokens/step, "
                f"{cfg.train.max_steps:,} steps, {env.world} process(es) on {env.device}, {env.dtype}")

    def _check_splits(self, val_tokens: int) -> None:
        cfg = self.cfg
        if len(self.val_blocks) == 0:
            raise TrainingError(f"the validation split has {val_tokens} tokens, fewer than one block of "
                                f"model.context + 1 = {cfg.model.context + 1}: raise data.val_rows")
        if len(self.train_blocks) < cfg.train.batch_size * self.env.world:
            raise ConfigError(
                f"train.batch_size: the train split has {len(self.train_blocks)} blocks of model.context="
                f"{cfg.model.context}, fewer than one batch ({cfg.train.batch_size} x {self.env.world} process(es)): "
                "lower train.batch_size or model.context, or raise data.train_rows")

    def save(self, path: Path) -> None:
        """Write a checkpoint; non-finite weights stop the run instead (nothing is written)."""
        bad = non_finite_tensors(self.model.state_dict())
        if bad:
            self._stop_non_finite(f"{len(bad)} weight tensors are not finite (first: {bad[0]})")
        if not self.cfg.train.checkpoints:
            return
        state = train_state.capture(self)  # every rank joins the RNG gather
        if self.env.is_main:
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
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, Stat]]:
        """Forward/backward over grad_accum micro-batches, clip, step.

        Returns loss and grad norm as 0-d device tensors and the statistics: nothing here waits for
        the GPU; `read_back` fetches the numbers in groups.
        """
        cfg, env = self.cfg, self.env
        total = torch.zeros((), device=env.device)
        stats: dict[str, Stat] = {}
        for micro in range(cfg.train.grad_accum):
            x, y = (to_device(t, env.device) for t in self.train_blocks.batch(self.sampler.next_indices()))
            drop_mask = None
            if self.tid.enabled:
                with env.autocast(), Stopwatch(env.device) as clock:  # score in the training precision
                    drop_mask, tid_stats = self.tid.mask(self.model, x, y, self.step)
                stats = combine(stats, {**tid_stats, "tid_score_time": Stat.sum(clock)})
            # skip the gradient all-reduce on all but the last micro-batch
            last = micro == cfg.train.grad_accum - 1
            sync = self.wrapped.no_sync() if env.world > 1 and not last else contextlib.nullcontext()
            with sync, env.autocast():
                out = self.wrapped(x, y, drop_mask=drop_mask, keep_position=cfg.tid.keep_position,
                                   loss_chunk=cfg.train.loss_chunk)
                loss = out.objective / cfg.train.grad_accum  # the sum over micro-batches is the batch mean
            self.scaler.scale(loss).backward()
            total += loss.detach()
            stats = combine(stats, {**out.stats, **_loss_stats(out, with_ce=True)})
        if cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
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
        flat = [v for r, ks in zip(records, keys)
                for v in (r.loss, r.grad_norm, r.clock, *(r.stats[k].value for k in ks))]
        numbers = iter(fetch(flat))
        rows = []
        for r, ks in zip(records, keys):
            loss, grad_norm, dt = next(numbers), next(numbers), next(numbers)
            if not math.isfinite(loss):
                self.step = r.step
                self._stop_non_finite(f"loss is {loss}")
            stats = {k: next(numbers) for k in ks}
            if self.tid.enabled:  # the overhead of TID, readable off the logs
                stats["tid_step_time_without_scoring"] = dt - stats["tid_score_time"]
                stats["tid_method"], stats["tid_drop"] = self.cfg.tid.method, self.cfg.tid.resolved_drop
            rows.append({"step": r.step, "lr": r.lr, "loss": loss, "grad_norm": grad_norm, "dt": dt, "stats": stats})
        return rows

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float, dict]:
        """Validation loss = total NLL / target tokens (no auxiliary losses), bits per byte, and the
        model's statistics averaged over the validation batches (rank 0's share under DDP)."""
        cfg, env = self.cfg, self.env
        self.wrapped.eval()
        n = len(self.val_blocks)
        if cfg.train.eval_batches is not None:
            n = min(n, cfg.train.eval_batches * cfg.train.batch_size * env.world)
        nll = torch.zeros((), device=env.device, dtype=torch.float64)
        count = torch.zeros((), device=env.device, dtype=torch.float64)
        stats: dict[str, Stat] = {}
        for batch in torch.arange(env.rank, n, env.world).split(cfg.train.batch_size):  # every world-th block
            x, y = (to_device(t, env.device) for t in self.val_blocks.batch(batch.numpy()))
            with env.autocast():
                out = self.model(x, y, loss_chunk=cfg.train.loss_chunk, reduction="none")
            nll += out.loss.double().sum()
            count += (y != -100).sum()  # data.packing=pad: padding positions are no targets
            stats = combine(stats, {**out.stats, **_loss_stats(out, with_ce=False)})
        if env.world > 1:
            dist.all_reduce(nll)
            dist.all_reduce(count)
        self.wrapped.train()
        loss = (nll / count).item()
        if not math.isfinite(loss):
            self._stop_non_finite(f"validation loss is {loss}")
        bpb = bits_per_token(loss) / self.data.bytes_per_token("val")
        return loss, bpb, {k: float(v) for k, v in values(stats).items()}

    # -- the loop
    def fit(self, logger: RunLogger | None) -> dict:
        cfg, env, paths = self.cfg, self.env, run_paths(self.cfg)
        t_start, tokens_done = time.time(), 0
        if self.step == 0:
            self._eval_and_checkpoint(logger, paths)
        bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc=cfg.run_name, unit="step",
                   disable=not env.is_main, dynamic_ncols=True)
        stop_reason, pending, signalled = "max_steps", [], {}
        try:
            with stop_on_signals(signalled):
                while self.step < cfg.train.max_steps:
                    lr = optimizers.lr_at(self.step, cfg.train.lr, cfg.train.min_lr, cfg.train.warmup_steps,
                                          cfg.train.max_steps)
                    optimizers.set_lr(self.optimizer, lr)
                    with Stopwatch(env.device) as clock:
                        loss, grad_norm, stats = self.train_step()
                    self.step += 1
                    tokens_done += self.tokens_per_step
                    pending.append(StepRecord(self.step, lr, loss, grad_norm, stats, clock))
                    bar.update(1)
                    if self.step % cfg.train.log_every == 0 or self._due():  # losses checked before a save
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

    def _due(self) -> set[str]:
        """What the schedule asks for after this step: "eval", "save" (last.pt), "keep" (step_<n>.pt)."""
        step, t = self.step, self.cfg.train
        due = set()
        if step % t.eval_every == 0 or step == t.max_steps:
            due.add("eval")
        if step > 0 and step % t.save_every == 0:
            due.add("save")
        if step > 0 and t.keep_every and step % t.keep_every == 0:
            due.add("keep")
        return due

    def _eval_and_checkpoint(self, logger: RunLogger | None, paths: dict) -> bool:
        """Evaluate / save as `_due` says. Returns True when early stopping says stop."""
        cfg, step, due = self.cfg, self.step, self._due()
        stop = False
        if "eval" in due:
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
        if "save" in due or (stop and step > 0):
            self._save_last(logger, paths)
        if "keep" in due:
            self.save(paths["dir"] / f"step_{step}.pt")
        return stop


def _loss_stats(out: models.ModelOutput, with_ce: bool) -> dict[str, Stat]:
    """A family with an auxiliary loss logs it, and in training the cross-entropy apart (their sum is
    the train loss)."""
    if out.aux_loss is None:
        return {}
    return {"aux_loss": Stat.mean(out.aux_loss.detach()), **({"ce_loss": Stat.mean(out.loss.detach())} if with_ce else {})}
