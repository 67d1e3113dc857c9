"""generic_runner.main, the CLI of every runner: how argv becomes the run's config and name, and which
exit status and one-line message each kind of failure ends in (train() replaced by a stub)."""

import signal

import pytest

import generic_runner
import train_state
from dataset_definitions.sources import DataError
from experiment_config import ConfigError
from fileio import UnsafeFileError
from models.checkpoint import CheckpointError
from run_files import TrainingError


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(generic_runner, "train", lambda cfg, resume, force: seen.append((cfg, resume, force)))
    return seen


def test_the_run_name_comes_from_the_configs_and_sets_in_order(calls):
    """Written out by hand from DESIGN.md's naming rule: config stems, then each --set as last-key=value;
    output folders and the device do not name the experiment."""
    generic_runner.main("configs/tid.yaml", ["--config", "configs/quickstart.yaml", "--set", "tid.method=entropy",
                                             "--set", "train.lr=0.001", "--set", "log_dir=/tmp/x",
                                             "--set", "device=cpu"])
    (cfg, resume, force), = calls
    assert cfg.run_name == "tid-quickstart-method=entropy-lr=0.001"
    assert (cfg.tid.method, cfg.train.lr, cfg.log_dir, resume, force) == ("entropy", 0.001, "/tmp/x", False, False)


def test_overlays_stack_in_order_and_the_flags_pass_through(calls, tmp_path):
    """A later --config overrides an earlier one and --set overrides both; --run-name wins over the default;
    --resume and --force reach train()."""
    (tmp_path / "a.yaml").write_text("train:\n  lr: 0.1\n  max_steps: 5\nmodel:\n  d_model: 48\n")
    (tmp_path / "b.yaml").write_text("train:\n  lr: 0.2\n  max_steps: 6\n")
    generic_runner.main("configs/quickstart.yaml", ["--config", str(tmp_path / "a.yaml"), "--config",
                                                    str(tmp_path / "b.yaml"), "--set", "train.max_steps=7",
                                                    "--resume", "--force", "--run-name", "mine"])
    (cfg, resume, force), = calls
    assert (cfg.run_name, resume, force) == ("mine", True, True)
    assert (cfg.train.lr, cfg.train.max_steps, cfg.model.d_model, cfg.model.context) == (0.2, 7, 48, 128)


def test_without_options_the_default_config_alone_is_used(calls):
    generic_runner.main("configs/quickstart.yaml", [])
    (cfg, resume, force), = calls
    assert (cfg.run_name, resume, force) == ("quickstart", False, False)


@pytest.mark.parametrize("error,code,prefix", [
    (ConfigError("bad key"), 2, "error: bad key"),
    (generic_runner.Interrupted("stopped at step 3", signal.SIGTERM), 128 + 15, "interrupted: stopped at step 3"),
    (generic_runner.Interrupted("stopped at step 3", signal.SIGINT), 128 + 2, "interrupted: stopped at step 3"),
    (train_state.RunFinished("already at step 10"), 0, "nothing to do: already at step 10"),
    (DataError("no rows"), 1, "error: no rows"),
    (TrainingError("nan loss"), 1, "error: nan loss"),
    (CheckpointError("bad hash"), 1, "error: bad hash"),
    (FileNotFoundError("gone.pt"), 1, "error: gone.pt"),
    (UnsafeFileError("crafted"), 1, "error: crafted"),
    (KeyboardInterrupt(), 130, "interrupted outside the training loop: nothing saved since the last checkpoint"),
])
def test_each_failure_ends_in_one_line_and_its_exit_status(monkeypatch, capsys, error, code, prefix):
    def fail(cfg, resume, force):
        raise error

    monkeypatch.setattr(generic_runner, "train", fail)
    with pytest.raises(SystemExit) as stop:
        generic_runner.main("configs/quickstart.yaml", [])
    assert stop.value.code == code
    err = capsys.readouterr().err
    assert err == prefix + "\n"


def _finished(peak):
    """The parts of a Trainer that summarise reads, after a run whose last validation loss is 2.5."""
    from types import SimpleNamespace

    from experiment_config import RunConfig
    logged = []
    env = SimpleNamespace(is_main=True, log=logged.append)
    trainer = SimpleNamespace(last_val=(2.5, 1.25), peak=peak, flops_per_token=6.0e6, best_val=2.4,
                              cfg=RunConfig(run_name="r"), env=env)
    summary = dict(tokens_per_s=5.0e4, steps=10, stop="max_steps", epochs=2.0, train_tokens=1000, best_step=8,
                   last_val_loss=2.5, train_val_gap=0.3, train_loss_end=2.2, wall_s=3.0)
    return generic_runner.summarise(trainer, summary), logged


@pytest.mark.parametrize("peak", [1.0e12, None])
def test_the_summary_reports_mfu_perplexity_and_bits_from_the_last_validation(peak):
    """MFU = tokens/s x FLOPs per token / the device's peak FLOP/s (none where the peak is unknown, as on
    CPU); val ppl = exp(val loss); bits per token = val loss / ln 2; the one line carries them."""
    import math

    import models
    from experiment_config import RunConfig

    summary, logged = _finished(peak)
    assert summary["mfu"] == (pytest.approx(5.0e4 * 6.0e6 / 1.0e12) if peak else None)
    assert summary["val_ppl"] == pytest.approx(math.exp(2.5))
    assert summary["val_bpt"] == pytest.approx(2.5 / math.log(2))
    assert (summary["val_loss"], summary["val_bpb"], summary["best_val_loss"], summary["run"]) == (2.5, 1.25, 2.4, "r")
    line, = logged
    assert ("MFU 30.0%" in line) == (peak is not None) and "val ppl 12.18" in line
    assert summary["model"] == models.describe(RunConfig().model) and f"done r [{summary['model']}]" in line


def test_logged_elapsed_time_is_the_seconds_since_the_run_started(tiny_root):
    """Every logged step's `elapsed` is wall time since the run began: non-decreasing, within what the
    test measured around train(), and at least the sum of the step times before it."""
    import time

    from conftest import tiny_run_config
    from train_logs import load_times

    cfg = tiny_run_config(tiny_root, ["run_name=elapsed", "train.max_steps=4", "train.eval_every=2"])
    start = time.time()
    generic_runner.train(cfg)
    wall = time.time() - start
    times = load_times("elapsed", cfg.log_dir)
    elapsed, step_time = times["elapsed"], times["step_time"]
    assert times["step"] == [1, 2, 3, 4]                                      # steps done
    assert all(b >= a for a, b in zip(elapsed, elapsed[1:]))
    assert 0 < elapsed[0] and elapsed[-1] <= wall
    assert all(e >= sum(step_time[:i + 1]) - 1e-6 for i, e in enumerate(elapsed))
