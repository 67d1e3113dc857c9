"""What the trainer reports, against references worked out apart from it: the epoch column and summary
(hand arithmetic from the data and config), the validation loss, bits per byte and statistics (a float64
recomputation), the logging cadence, the tokens counted, the logged grad norm and the progress bar.

The runs train on stand-in data of known size (random ids), so every count below follows from the config."""

import contextlib
import copy
import io
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

import generic_runner
import train_logs
import train_setup
from benchmarks.synthetic import RandomTokens
from conftest import tiny_run_config
from generic_runner import Trainer, train
from runtime import setup_env
from train_logs import load_losses, load_times

CONTEXT, BATCH = 32, 4                       # tiny_run_config's model.context and train.batch_size
TRAIN_BLOCKS, VAL_BLOCKS = 40, 8             # blocks of context + 1 tokens, one every context tokens
TOKENS_PER_STEP = BATCH * CONTEXT            # grad_accum 1, one process
VAL_BYTES_PER_TOKEN = 2.5


class StandInData(RandomTokens):
    """Random ids: 40 training blocks, 8 validation blocks, 2.5 bytes of text behind each validation token."""

    def __init__(self):
        super().__init__(vocab_size=64, train_tokens=TRAIN_BLOCKS * CONTEXT + 1, val_tokens=VAL_BLOCKS * CONTEXT + 1)

    def bytes_per_token(self, split: str) -> float:
        return {"train": 3.0, "val": VAL_BYTES_PER_TOKEN}[split]


def _config(root, name, sets=()):
    return tiny_run_config(root, ["model.vocab_size=64", "train.checkpoints=false", "train.eval_batches=2",
                                  f"run_name={name}", *sets])


def _trainer(root, name, sets=()) -> Trainer:
    cfg = _config(root, name, sets)
    return Trainer(cfg, setup_env(cfg.device, cfg.train.precision), False, StandInData())


def _bar_lines(err: str, name: str) -> list[str]:
    """The renders of the progress bar called `name` in captured stderr, in order."""
    return [s.strip() for s in re.split(r"[\r\n]", err) if s.strip().startswith(f"{name}:")]


# ----------------------------------------------------------------------------- epochs

def test_each_logged_step_and_the_summary_carry_the_passes_over_the_training_blocks(tmp_path):
    """epoch after step s = s x grad_accum / micro-batches per pass: 40 blocks / 4 per micro-batch = 10
    micro-batches a pass, 2 a step, so 5 steps a pass; logged per step in stats["epoch"] and in the summary."""
    cfg = _config(tmp_path, "epochs", ["train.grad_accum=2", "train.max_steps=7", "train.log_every=2",
                                       "train.eval_every=100", "train.warmup_steps=1"])
    summary = train(cfg, data=StandInData())
    losses = load_losses("epochs", cfg.log_dir)
    assert losses["step"] == [1, 2, 3, 4, 5, 6, 7]
    assert losses["stats"]["epoch"] == pytest.approx([s / 5 for s in range(1, 8)], rel=1e-12)
    assert summary["epochs"] == pytest.approx(7 / 5, rel=1e-12)


# ----------------------------------------------------------------------------- evaluation

def _reference_val_loss(model, data) -> float:
    """Mean NLL over every target of all the validation blocks, hand-written log-softmax in float64."""
    model = copy.deepcopy(model).double().eval()
    blocks = data.blocks("val", CONTEXT)
    x, y = blocks.batch(np.arange(len(blocks)))
    with torch.no_grad():
        logits = model(x).logits
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)
    nll = -logp.gather(-1, y[..., None])[..., 0]
    assert nll.numel() == VAL_BLOCKS * CONTEXT
    return nll.mean().item()


def test_validation_loss_and_bits_per_byte_match_a_float64_recomputation(tmp_path):
    """val loss = mean NLL over all 8 x 32 validation targets; bpb = loss / ln 2 / the val split's bytes per token."""
    trainer = _trainer(tmp_path, "val-ref")
    trainer.train_step()                                        # weights off their initial values
    loss, bpb, stats = trainer.evaluate()
    ref = _reference_val_loss(trainer.model, trainer.data)
    assert loss == pytest.approx(ref, rel=1e-5)
    assert bpb == pytest.approx(ref / math.log(2) / VAL_BYTES_PER_TOKEN, rel=1e-5)
    assert stats == {}                                          # the baseline reports no statistics


def test_every_validation_block_is_scored_once_on_one_process(tmp_path, monkeypatch):
    """With one process the blocks scored are 0..n-1, each once, and the targets counted are the val set's."""
    scored = []
    real = generic_runner.packed_nll

    def spy(nll_fn, blocks, index, *args):
        nll, targets = real(nll_fn, blocks, index, *args)
        scored.append((list(index), int(targets.sum())))
        return nll, targets
    monkeypatch.setattr(generic_runner, "packed_nll", spy)
    _trainer(tmp_path, "val-blocks").evaluate()
    assert scored == [(list(range(VAL_BLOCKS)), VAL_BLOCKS * CONTEXT)]


def test_two_ranks_score_interleaved_blocks_and_their_summed_totals_give_the_one_process_loss(tmp_path, monkeypatch):
    """Simulated DDP (world 2, the all-reduce stood in for): rank r scores blocks r, r+2, ...; the all-reduced
    [nll, targets] of both ranks give the loss one process gets over all the blocks."""
    trainer = _trainer(tmp_path, "val-ranks")
    one_process, _, _ = trainer.evaluate()
    env, scored, local = trainer.env, {}, {}
    real = generic_runner.packed_nll

    def spy(nll_fn, blocks, index, *args):
        scored[trainer.env.rank] = list(index)
        return real(nll_fn, blocks, index, *args)

    def all_reduce(tensor, op=None):                           # rank 1 reports first; rank 0 then adds it
        local[trainer.env.rank] = tensor.clone()
        if trainer.env.rank == 0:
            tensor += local[1]
    monkeypatch.setattr(generic_runner, "packed_nll", spy)
    monkeypatch.setattr(generic_runner.dist, "all_reduce", all_reduce)
    losses = {}
    for rank in (1, 0):
        trainer.env = replace(env, rank=rank, world=2)
        losses[rank], _, _ = trainer.evaluate()
    assert scored == {0: [0, 2, 4, 6], 1: [1, 3, 5, 7]}
    assert local[0][1].item() == local[1][1].item() == VAL_BLOCKS // 2 * CONTEXT
    assert losses[0] == pytest.approx(one_process, rel=1e-12)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_validation_forward_runs_in_the_run_precision(tmp_path, precision):
    """A bf16 run scores the validation set under bf16 autocast, an fp32 run with autocast off."""
    trainer = _trainer(tmp_path, f"val-{precision}", [f"train.precision={precision}"])
    seen = []
    trainer.model.register_forward_pre_hook(
        lambda m, args: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    loss, _, _ = trainer.evaluate()
    assert len(seen) == 2                                       # 8 blocks, 4 a batch
    if precision == "bf16":
        assert set(seen) == {(True, torch.bfloat16)}
    else:
        assert {enabled for enabled, _ in seen} == {False}
    assert loss == pytest.approx(_reference_val_loss(trainer.model, trainer.data), rel=2e-2)


def test_validation_statistics_are_the_eval_ones_as_floats(tmp_path):
    """A family with an aux loss (falcon) logs at evaluation the aux loss (mean over the val batches, as
    plain floats) but not "ce_loss", which only training reports apart."""
    trainer = _trainer(tmp_path, "val-falcon", ["model.preset=falcon"])
    _, _, train_stats = trainer.train_step()
    assert {"aux_loss", "ce_loss"} <= train_stats.keys()
    loss, _, stats = trainer.evaluate()
    assert "aux_loss" in stats and "ce_loss" not in stats
    assert all(type(v) is float for v in stats.values())
    model = copy.deepcopy(trainer.model).eval()
    blocks = trainer.data.blocks("val", CONTEXT)
    with torch.no_grad():
        aux = [model(*blocks.batch(np.arange(i, i + BATCH))).aux_loss.item() for i in range(0, VAL_BLOCKS, BATCH)]
    assert stats["aux_loss"] == pytest.approx(sum(aux) / len(aux), rel=1e-5)


def test_the_validation_loss_does_not_depend_on_loss_chunk(tmp_path):
    """loss_chunk only trades memory for time: the chunked head + cross-entropy scores the same."""
    losses = []
    for chunk in (0, 24):
        torch.manual_seed(0)
        trainer = _trainer(tmp_path, f"val-chunk{chunk}", [f"train.loss_chunk={chunk}"])
        losses.append(trainer.evaluate()[0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


# ----------------------------------------------------------------------------- the loop

@pytest.fixture(scope="module")
def run12(tmp_path_factory):
    """12 steps, log_every 3, evals at 0, 5, 10, 12, no clipping; spies on the logger's batches of rows,
    agree_on_signal's check flag and the gradient each optimizer step applies; stderr captured."""
    root = tmp_path_factory.mktemp("run12")
    cfg = _config(root, "twelve", ["train.max_steps=12", "train.log_every=3", "train.eval_every=5",
                                   "train.save_every=100", "train.grad_clip=1000000", "train.warmup_steps=2"])
    seen = {"groups": [], "checks": [], "norms": []}
    real_log_steps, real_agree, real_optimizer = (train_logs.RunLogger.log_steps, generic_runner.agree_on_signal,
                                                  train_setup.make_optimizer)

    def log_steps(self, rows, *args):
        seen["groups"].append([r["step"] for r in rows])
        return real_log_steps(self, rows, *args)

    def agree_on_signal(flag, env, check):
        seen["checks"].append(check)
        return real_agree(flag, env, check)

    def make_optimizer(*args):
        optimizer = real_optimizer(*args)

        def norm(opt, a, k):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            seen["norms"].append(math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads)))
        optimizer.register_step_pre_hook(norm)
        return optimizer

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(train_logs.RunLogger, "log_steps", log_steps)
        mp.setattr(generic_runner, "agree_on_signal", agree_on_signal)
        mp.setattr(train_setup, "make_optimizer", make_optimizer)
        summary = train(cfg, data=StandInData())
    return dict(seen, summary=summary, err=err.getvalue(), losses=load_losses("twelve", cfg.log_dir),
                times=load_times("twelve", cfg.log_dir))


def test_rows_reach_the_logger_every_log_every_steps_and_before_each_eval(run12):
    """Rows are read back at steps 3, 6, 9, 12 (step % log_every == 0) and at the eval steps 5 and 10;
    every step is logged once, in order."""
    assert run12["groups"] == [[1, 2, 3], [4, 5], [6], [7, 8, 9], [10], [11, 12]]
    assert run12["losses"]["step"] == run12["times"]["step"] == list(range(1, 13))


def test_ranks_agree_on_a_signal_at_the_log_steps(run12):
    """agree_on_signal is asked once a step, with check True exactly at steps where step % log_every == 0."""
    assert run12["checks"] == [s % 3 == 0 for s in range(1, 13)]


def test_the_summary_counts_the_tokens_trained_and_the_stop_reason(run12):
    """tokens/s x wall seconds = 12 steps x 4 blocks x 32 tokens; a run that reaches max_steps says so."""
    summary = run12["summary"]
    assert summary["tokens_per_s"] * summary["wall_s"] == pytest.approx(12 * TOKENS_PER_STEP, rel=1e-9)
    assert (summary["steps"], summary["stop"]) == (12, "max_steps")


def test_the_logged_grad_norm_is_the_norm_of_the_applied_gradient(run12):
    """Unclipped (grad_clip far above it), each step's logged grad_norm is the float64 L2 norm of the
    gradient the optimizer applies at that step."""
    logged = run12["losses"]["grad_norm"]
    assert len(run12["norms"]) == 12 and None not in logged
    assert logged == pytest.approx(run12["norms"], rel=1e-5)


def test_the_progress_bar_shows_the_run_its_steps_and_the_last_logged_loss_and_speed(run12):
    """On the main process the bar is named after the run, counts steps up to 12/12 and ends showing the
    last step's loss to 4 decimals and its tokens/s (tokens per step / that step's seconds); the loss it
    shows changes at each read-back step (3, 5, 6, 9, 10, 12)."""
    bars = _bar_lines(run12["err"], "twelve")
    assert bars, run12["err"][-2000:]
    final = bars[-1]
    assert re.match(r"twelve: +100%\|", final) and "| 12/12 [" in final, final
    assert "step/s" in final or "s/step" in final, final
    loss, step_time = run12["losses"]["train_loss"][-1], run12["times"]["step_time"][-1]
    assert final.endswith(f"loss={loss:.4f}, tok_s={TOKENS_PER_STEP / step_time:,.0f}]"), final
    shown = [m.group(1) for m in map(re.compile(r"loss=(\d+\.\d+),").search, bars) if m]
    shown = [v for i, v in enumerate(shown) if i == 0 or v != shown[i - 1]]
    train_loss = run12["losses"]["train_loss"]
    assert shown == [f"{train_loss[s - 1]:.4f}" for s in (3, 5, 6, 9, 10, 12)]     # updated as rows are read back


def test_a_resumed_run_counts_on_from_its_step(tmp_path):
    """Resumed at step 6 of 12: its bar starts at 6/12 and ends at 12/12, and it counts the 6 x 128 tokens
    it trained itself; the rows logged go on from step 7."""
    sets = ["train.checkpoints=true", "train.save_every=6", "train.eval_every=6", "train.log_every=3"]
    cfg = _config(tmp_path, "resumed", [*sets, "train.max_steps=6"])
    train(cfg, data=StandInData())
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        summary = train(_config(tmp_path, "resumed", [*sets, "train.max_steps=12"]), resume=True, data=StandInData())
    bars = _bar_lines(err.getvalue(), "resumed")
    assert bars and "| 6/12 [" in bars[0] and "| 12/12 [" in bars[-1], bars
    assert summary["tokens_per_s"] * summary["wall_s"] == pytest.approx(6 * TOKENS_PER_STEP, rel=1e-9)
    assert load_losses("resumed", cfg.log_dir)["step"] == list(range(1, 13))


def test_no_bar_on_a_process_other_than_the_main_one(tmp_path, capsys):
    """A rank other than 0 prints nothing: its progress bar is disabled."""
    trainer = _trainer(tmp_path, "rank1", ["train.max_steps=2", "train.log_every=1"])
    trainer.env = replace(trainer.env, rank=1)
    capsys.readouterr()
    trainer.fit(None)
    assert capsys.readouterr().err == ""
