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
import signal
import time
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import models
import optimizers
import train_setup
import train_state
from cli import exit_with
from dataset_definitions.datasets import BlockSampler
from dataset_definitions.sources import DataError
from experiment_config import ConfigError, RunConfig, check_run_name, default_run_name, load_config
from fileio import UnsafeFileError
from models.checkpoint import CheckpointError, load_checkpoint
from models.loss import IGNORE_INDEX
from perplexity.scoring import packed_nll
from run_files import TrainingError, check_output_dirs, claim_outputs, run_lock, run_paths
from run_stats import Stat, StepRecord, combine, read_back, values
from runtime import Env, Stopwatch, agree_on_signal, peak_flops, setup_env, stop_on_signals, to_device
from tid import TokenImportanceDropout
from train_logs import RunLogger, bits_per_token, capped_perplexity, overfitting, summary_line


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
    except train_state.RunFinished as e:
        exit_with(f"nothing to do: {e}", 0)
    except (DataError, TrainingError, CheckpointError, FileNotFoundError, UnsafeFileError) as e:
        exit_with(f"error: {e}", 1)
    except KeyboardInterrupt:
        exit_with("interrupted outside the training loop: nothing saved since the last checkpoint", 130)


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
        if env.is_main:
            check_output_dirs(cfg)
        with run_lock(cfg, env.is_main):
            replaced = claim_outputs(cfg, resume, force) if env.is_main else []
            if env.world > 1:
                dist.barrier()
            trainer = Trainer(cfg, env, resume, data)
            if resume:
                train_state.check_unfinished(trainer)
            for p in replaced:  # --force: the new run passed its checks; only now the old one goes
                p.unlink()
            env.log(f"run {cfg.run_name}: outputs in {run_paths(cfg)['dir']} and {cfg.log_dir}/")
            with train_state.stop_on_write_error(trainer):
                summary = trainer.fit(train_setup.open_logger(trainer) if env.is_main else None)
            if env.world > 1:
                dist.barrier()  # leave together: a rank tearing down gloo while another still runs aborts
            return summarise(trainer, summary)
    finally:
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def summarise(trainer: "Trainer", summary: dict) -> dict:
    """The run summary: best and last validation numbers, speed, MFU; and its one-line report."""
    val_loss, bpb = trainer.last_val
    mfu = summary["tokens_per_s"] * trainer.flops_per_token / trainer.peak if trainer.peak else None
    summary.update(best_val_loss=trainer.best_val, run=trainer.cfg.run_name, val_loss=val_loss,
                   val_ppl=capped_perplexity(val_loss), val_bpt=bits_per_token(val_loss), val_bpb=bpb,
                   model=models.describe(trainer.cfg.model), mfu=mfu)
    if trainer.env.is_main:  # the curve's numbers come from rank 0's logs
        trainer.env.log(summary_line(summary))
    return summary


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
            cfg = train_setup.with_init_checkpoint(cfg, init, env)
        last = run_paths(cfg)["last"]
        resume_from = load_checkpoint(last, map_location=env.device) if resume else None
        if resume_from:  # refuse another run's checkpoint before any work (the data check follows)
            train_state.check_resumable(resume_from, cfg, last, env.world)
        self.data = data = train_setup.load_data(cfg, env) if data is None else data
        self.data_key = getattr(data, "meta", {}).get("key")  # None for stand-in data (benchmarks)
        self.cfg = cfg = replace(cfg, model=replace(cfg.model, vocab_size=data.tokenizer.vocab_size))
        self.train_blocks = data.blocks("train", cfg.model.context, cfg.data.stride, packing=cfg.data.packing)
        self.val_blocks = data.blocks("val", cfg.model.context, packing=cfg.data.packing)
        train_setup.check_splits(self.train_blocks, self.val_blocks, len(data.tokens("val")), cfg, env.world)
        self.sampler = BlockSampler(len(self.train_blocks), cfg.train.batch_size, cfg.seed, env.rank, env.world)
        self.cfg = cfg = train_setup.resolve_epochs(cfg, self.sampler.batches_per_epoch)
        self.unique_tokens = len(data.tokens("train"))

        self.model = train_setup.build_model(cfg, data.tokenizer, env, init)
        tok = data.tokenizer
        self.tid = TokenImportanceDropout(cfg.tid, cfg.train.max_steps, (tok.bos_id, tok.pad_id), cfg.model.n_layers,
                                          compile=cfg.train.compile)
        self.optimizer = train_setup.make_optimizer(self.model, cfg, env)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=env.dtype == torch.float16)
        self.step, self.best_val, self.evals_since_best = 0, math.inf, 0
        self.saved_step: int | None = None  # the step of the last.pt on disk (none yet)
        if resume:
            train_state.check_resumable(resume_from, cfg, last, env.world, self.data_key, tok.spec())
            train_state.restore(self, resume_from)
        else:
            torch.manual_seed(cfg.seed + env.rank)  # the training stream (dropout, TID) differs per rank
        self.wrapped = train_setup.wrap_for_training(self.model, cfg, env)
        self.tokens_per_step = train_state.tokens_per_step(cfg, env.world)
        self.param_counts, self.flops_per_token = train_setup.parameter_counts(self.model, cfg)
        self.peak = peak_flops(env.device)
        env.log(train_setup.describe_run(self))

    # -- one optimizer step
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, Stat]]:
        """Forward/backward over grad_accum micro-batches, clip, step.

        Returns loss and grad norm as 0-d device tensors and the statistics: nothing here waits for
        the GPU; `read_back` fetches the numbers in groups. loss is what one batch of all the step's
        blocks (every micro-batch, every rank) gives: the cross-entropy's mean over all its counted
        targets, padded rows or not, plus the aux loss's mean over micro-batches. grad_norm is the global
        L2 norm of the accumulated gradient before clipping (0 when train.grad_clip = 0); the optimizer
        applies that gradient times min(1, grad_clip / grad_norm).
        """
        cfg, env = self.cfg, self.env
        total = torch.zeros((), device=env.device)
        stats: dict[str, Stat] = {}
        batches = [tuple(to_device(t, env.device) for t in self.train_blocks.batch(self.sampler.next_indices()))
                   for _ in range(cfg.train.grad_accum)]
        shares = self._target_shares([y for _, y in batches])
        for micro, (x, y) in enumerate(batches):
            drop_mask = None
            if self.tid.enabled:
                with env.autocast():  # score in the training precision
                    drop_mask, tid_stats = self.tid.mask(self.model, x, y, self.step)
                stats = combine(stats, tid_stats)
            # skip the gradient all-reduce on all but the last micro-batch
            last = micro == cfg.train.grad_accum - 1
            sync = self.wrapped.no_sync() if env.world > 1 and not last else contextlib.nullcontext()
            with sync, env.autocast():
                out = self.wrapped(x, y, drop_mask=drop_mask, keep_position=cfg.tid.keep_position,
                                   loss_chunk=cfg.train.loss_chunk)
                # summed over micro-batches: the mean over every target of the step, and the mean aux loss
                aux = out.aux_loss / cfg.train.grad_accum if out.aux_loss is not None else 0.0
                loss = out.loss * shares[micro] + aux
            self.scaler.scale(loss).backward()
            total += loss.detach()
            stats = combine(stats, {**out.stats, **out.loss_stats(training=True)})
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

    def _target_shares(self, targets: list[torch.Tensor]) -> torch.Tensor:
        """Each micro-batch's share of the step's counted targets (!= -100) over all ranks, times the world
        size (DDP averages the ranks' gradients): 1 / grad_accum each when no row is padded."""
        counts = torch.stack([(y != IGNORE_INDEX).sum() for y in targets]).float()        # exact below 2^24
        step_total = counts.sum()
        if self.env.world > 1:
            dist.all_reduce(step_total)
        return counts * self.env.world / step_total.clamp(min=1)

    def read_back(self, records: list[StepRecord]) -> list[dict]:
        """The rows of `records` on the host (one copy); stops at the first non-finite loss."""
        rows = read_back(records)
        for row in rows:
            if not math.isfinite(row["loss"]):
                self.step = row["step"]
                train_state.stop_non_finite(self, f"loss is {row['loss']}")
            if self.tid.enabled:
                row["stats"].update(self.tid.logged_extras(row["dt"], row["stats"]))
            row["stats"]["epoch"] = self.epoch_at(row["step"])
        return rows

    def epoch_at(self, step: int) -> float:
        """Passes over the training blocks after `step` optimizer steps (2.5: halfway through the third)."""
        return step * self.cfg.train.grad_accum / self.sampler.batches_per_epoch

    def evaluate(self) -> tuple[float, float, dict]:
        """Validation loss = total NLL / target tokens (`packed_nll`, as `score_packed`), bits per byte, and
        the model's statistics averaged over the validation batches (rank 0's share under DDP)."""
        cfg, env, stats = self.cfg, self.env, {}
        n = len(self.val_blocks)
        if cfg.train.eval_batches is not None:
            n = min(n, cfg.train.eval_batches * cfg.train.batch_size * env.world)

        def nll_fn(x, y):
            nonlocal stats
            out = self.model(x, y, loss_chunk=cfg.train.loss_chunk, reduction="none")
            stats = combine(stats, {**out.stats, **out.loss_stats(training=False)})
            return out.loss

        self.wrapped.eval()
        nll, targets = packed_nll(nll_fn, self.val_blocks, np.arange(env.rank, n, env.world),  # every world-th block
                                  cfg.train.batch_size, env.device, env.dtype)
        self.wrapped.train()
        totals = torch.stack([nll.sum(), targets.sum().double()])
        if env.world > 1:
            dist.all_reduce(totals)
        loss = (totals[0] / totals[1]).item()
        if not math.isfinite(loss):
            train_state.stop_non_finite(self, f"validation loss is {loss}")
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
                    signum = agree_on_signal(signalled, self.env, check=self.step % cfg.train.log_every == 0)
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
        return {"steps": self.step, "stop": stop_reason, "wall_s": wall, "epochs": self.epoch_at(self.step),
                "train_tokens": self.unique_tokens, "tokens_per_s": tokens_done / wall if wall > 0 else math.nan,
                **(overfitting(logger.losses) if logger else {})}

    def _save_last(self, logger: RunLogger | None, paths: dict) -> None:
        """Logs first, then last.pt: a kill between the two leaves logs ahead of the checkpoint, which
        --resume trims, never a checkpoint ahead of its logs."""
        if logger:
            logger.save()
        train_state.save(self, paths["last"])

    def _log(self, rows: list[dict], logger: RunLogger | None, bar: tqdm, t_start: float) -> None:
        if logger:
            logger.log_steps(rows, self.tokens_per_step, time.time() - t_start)
        if rows:
            last = rows[-1]
            bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{self.tokens_per_step / last['dt']:,.0f}")

    def _due(self) -> set[str]:
        """What the schedule asks for after this step: "eval", "save" (last.pt), "keep" (step_<n>.pt)."""
        step, t = self.step, self.cfg.train
        return {name for name, due in (("eval", step % t.eval_every == 0 or step == t.max_steps),
                                       ("save", step > 0 and step % t.save_every == 0),
                                       ("keep", step > 0 and t.keep_every and step % t.keep_every == 0)) if due}

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
                train_state.save(self, paths["best"])
            else:
                self.evals_since_best += 1
                stop = cfg.train.patience > 0 and self.evals_since_best >= cfg.train.patience
            self.env.log(f"step {step}: val loss {val_loss:.4f} (ppl {capped_perplexity(val_loss):.2f}, "
                         f"{bits_per_token(val_loss):.3f} bits/token, {bpb:.3f} bits/byte){' *' if improved else ''}")
        if "save" in due:  # (an early stop is saved by fit, as every final state off the schedule)
            self._save_last(logger, paths)
        if "keep" in due:
            train_state.save(self, paths["dir"] / f"step_{step}.pt")
        return stop
