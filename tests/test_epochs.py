"""Multi-epoch training: the sampler's epochs, train.epochs against train.max_steps, the epoch in the logs,
the same batches for every arm of a seed across epochs, and where the validation curve turned."""

import csv
import math

import numpy as np
import pytest

from conftest import REPO, tiny_run_config, tiny_sets
from dataset_definitions.datasets import BlockSampler
from experiment_config import ConfigError, load_config
from generic_runner import main, train
from models.checkpoint import load_checkpoint
from train_logs import load_losses, overfitting
from train_setup import resolve_epochs

# a train split of a few dozen blocks: several epochs in a few steps
FEW_BLOCKS = ["data.train_rows=8", "train.batch_size=8", "train.eval_every=4", "train.save_every=4"]


def _epochs(sampler: BlockSampler, n_epochs: int) -> list[np.ndarray]:
    """The indices the sampler hands out, one array per epoch."""
    return [np.concatenate([sampler.next_indices() for _ in range(sampler.batches_per_epoch)])
            for _ in range(n_epochs)]


# ----------------------------------------------------------------------------- the sampler

def test_every_block_once_per_epoch_in_a_new_seeded_order():
    epochs = _epochs(BlockSampler(48, 6, seed=3), 4)
    for e in epochs:
        assert sorted(e) == list(range(48))                      # each index exactly once per epoch
    assert all(not np.array_equal(a, b) for i, a in enumerate(epochs) for b in epochs[i + 1:])
    again, other = _epochs(BlockSampler(48, 6, seed=3), 4), _epochs(BlockSampler(48, 6, seed=4), 4)
    assert all(np.array_equal(a, b) for a, b in zip(epochs, again))
    assert not any(np.array_equal(a, b) for a, b in zip(epochs, other))


def test_the_incomplete_tail_is_dropped_and_differs_between_epochs():
    sampler = BlockSampler(50, 8, seed=1)                        # 6 full batches, 2 blocks left over per epoch
    assert sampler.batches_per_epoch == 6
    epochs = _epochs(sampler, 5)
    assert all(len(set(e)) == len(e) == 48 for e in epochs)
    left_out = [frozenset(range(50)) - set(e) for e in epochs]
    assert len(set(left_out)) > 1                                 # not always the same two blocks unseen


def test_resume_mid_epoch_continues_the_same_order():
    whole = np.concatenate(_epochs(BlockSampler(40, 4, seed=7), 3))
    first = BlockSampler(40, 4, seed=7)
    head = [first.next_indices() for _ in range(13)]              # stopped 3 batches into the second epoch
    resumed = BlockSampler(40, 4, seed=7)
    resumed.load_state_dict(first.state_dict())
    tail = [resumed.next_indices() for _ in range(17)]
    assert np.array_equal(np.concatenate(head + tail), whole)


def test_ranks_partition_each_epoch():
    world, bs = 3, 4
    ranks = [BlockSampler(60, bs, seed=2, rank=r, world_size=world) for r in range(world)]
    single = BlockSampler(60, bs * world, seed=2)                 # one process with the global batch
    assert ranks[0].batches_per_epoch == 5
    for _ in range(3):                                            # epochs
        seen = []
        for _ in range(5):
            parts = [s.next_indices() for s in ranks]
            assert np.array_equal(np.concatenate(parts), single.next_indices())
            seen += [i for p in parts for i in p]
        assert sorted(seen) == list(range(60))


# ----------------------------------------------------------------------------- epochs and max_steps

def _cfg(*sets):
    return load_config([], list(sets))


def test_epochs_and_max_steps_derive_each_other():
    # 10 micro-batches an epoch, 2 a step: 5 steps an epoch
    assert resolve_epochs(_cfg("train.epochs=3", "train.max_steps=null", "train.grad_accum=2"), 10).train.max_steps == 15
    assert resolve_epochs(_cfg("train.max_steps=12", "train.grad_accum=2"), 10).train.epochs == pytest.approx(2.4)
    both = resolve_epochs(_cfg("train.epochs=3", "train.max_steps=15", "train.grad_accum=2"), 10).train
    assert (both.epochs, both.max_steps) == (3, 15)
    with pytest.raises(ConfigError, match="train.epochs=3 is 15 steps .*train.max_steps=14"):
        resolve_epochs(_cfg("train.epochs=3", "train.max_steps=14", "train.grad_accum=2"), 10)
    assert _cfg().train.max_steps == 1000 and _cfg("train.epochs=2").train.max_steps is None
    with pytest.raises(ConfigError, match="train.epochs must be positive"):
        _cfg("train.epochs=0")


def test_inconsistent_epochs_and_max_steps_exit_with_one_line(tmp_path, capsys):
    sets = [*tiny_sets(tmp_path), *FEW_BLOCKS, "train.epochs=3", "train.max_steps=7"]
    with pytest.raises(SystemExit) as exit_info:
        main(str(REPO / "configs/baseline.yaml"), [f"--set={s}" for s in sets])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]   # the rest: data progress bars
    assert exit_info.value.code == 2 and len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith("error: train.epochs=3 is ") and "set one of them and the other to null" in errors[0]


# ----------------------------------------------------------------------------- a multi-epoch run

def test_a_run_of_epochs_logs_them_and_records_them_in_its_checkpoint(tmp_path, capsys):
    cfg = tiny_run_config(tmp_path, [*FEW_BLOCKS, "train.epochs=3", "train.max_steps=null", "train.grad_accum=2"])
    summary = train(cfg)
    from experiment_config import prepare_run_data

    data = prepare_run_data(cfg, log=lambda *a: None)
    n_blocks = len(data.blocks("train", cfg.model.context))
    per_epoch = n_blocks // cfg.train.batch_size                  # micro-batches an epoch, 2 a step
    steps = round(3 * per_epoch / 2)
    assert summary["steps"] == steps and summary["epochs"] == pytest.approx(steps * 2 / per_epoch)
    ckpt = load_checkpoint(tmp_path / "checkpoints/tiny/last.pt")["config"]["train"]
    assert (ckpt["epochs"], ckpt["max_steps"]) == (3, steps)
    with open(tmp_path / "logs/csv/tiny.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["epoch"]) for r in rows] == pytest.approx([s * 2 / per_epoch for s in range(1, steps + 1)])
    unique = len(data.tokens("train"))
    assert summary["train_tokens"] == unique
    logs = load_losses("tiny", cfg.log_dir)
    assert logs["meta"]["train_tokens"] == unique
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("done tiny"))
    best = logs["val"]["step"][int(np.argmin(logs["val"]["loss"]))]
    assert f"= {summary['epochs']:.2f} epochs of {unique:,} unique tokens" in line
    assert f"at step {best}," in line and f"last val loss {logs['val']['loss'][-1]:.4f}" in line


def test_two_arms_of_one_seed_see_the_same_batches_across_epochs(tmp_path, monkeypatch):
    seen = []
    original = BlockSampler.next_indices
    monkeypatch.setattr(BlockSampler, "next_indices", lambda self: seen[-1].append(original(self)) or seen[-1][-1])

    def batches(run_name, seed, method):
        seen.append([])
        summary = train(tiny_run_config(tmp_path, [*FEW_BLOCKS, f"run_name={run_name}", f"seed={seed}",
                                                   f"tid.method={method}", "tid.p_start=0.3", "tid.p_end=0.3",
                                                   "train.epochs=3", "train.max_steps=null"]))
        assert summary["epochs"] >= 3
        return np.stack(seen[-1])

    none = batches("none", 5, "none")
    for method in ("random", "entropy"):
        assert np.array_equal(batches(method, 5, method), none), method
    per_epoch = len(none) // 3
    epochs = none[:3 * per_epoch].reshape(3, -1)
    assert all(len(set(e)) == e.size for e in epochs) and not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(none, batches("other-seed", 6, "none"))   # the seed, not the arm, sets the order


# ----------------------------------------------------------------------------- where the curve turned

def test_overfitting_reads_the_turn_of_the_validation_curve():
    val_steps, val_loss = [0, 10, 20, 30, 40], [7.0, 5.0, 4.6, 4.9, 5.3]
    steps = list(range(1, 41))
    train_loss = [6.0 - 0.1 * s for s in steps]
    losses = {"step": steps, "train_loss": train_loss, "val": {"step": val_steps, "loss": val_loss}}
    got = overfitting(losses)
    last_interval = [loss for s, loss in zip(steps, train_loss) if 30 < s <= 40]   # steps 31..40
    assert got["best_step"] == 20 and got["last_val_loss"] == 5.3
    assert got["train_loss_end"] == pytest.approx(sum(last_interval) / 10)
    assert got["train_val_gap"] == pytest.approx(5.3 - sum(last_interval) / 10)
    tie = overfitting({"step": [1], "train_loss": [1.0], "val": {"step": [0, 5, 9], "loss": [3.0, 2.0, 2.0]}})
    assert tie["best_step"] == 5                                  # the first of equal losses, as best.pt keeps
    assert math.isnan(overfitting({"step": [], "train_loss": [], "val": {"step": [0], "loss": [3.0]}})["train_loss_end"])
