"""generic_runner.train's order of work on each process, with the process group and the Trainer recorded: rank 0
alone claims the outputs and writes logs, every rank meets at a barrier before building its Trainer and after
training, a process group is torn down only by a run of several processes, and the given data, the write-error
guard and the summary reach the right places. (The two-process run itself is test_trainer's torchrun test, whose
races these would not show.)"""

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

import generic_runner
import train_setup
import train_state
from conftest import tiny_run_config
from experiment_config import RunConfig, prepare_run_data
from models.checkpoint import load_checkpoint
from runtime import Env, setup_env
from train_logs import load_losses


@pytest.mark.parametrize("rank, world, initialized", [(0, 1, False), (0, 1, True), (0, 2, True), (1, 2, True),
                                                      (1, 3, True)])
def test_each_process_does_its_part_in_order(monkeypatch, capsys, rank, world, initialized):
    events = []
    env = Env(rank, rank, world, torch.device("cpu"), torch.float32)
    monkeypatch.setattr(generic_runner, "setup_env", lambda device, precision: env)
    monkeypatch.setattr(generic_runner, "check_output_dirs", lambda cfg: events.append("check dirs"))
    monkeypatch.setattr(generic_runner, "run_lock", lambda cfg, here: contextlib.nullcontext())
    monkeypatch.setattr(generic_runner, "claim_outputs", lambda cfg, resume, force: events.append("claim") or [])
    monkeypatch.setattr(generic_runner.dist, "barrier", lambda: events.append("barrier"))
    monkeypatch.setattr(generic_runner.dist, "is_initialized", lambda: initialized)
    monkeypatch.setattr(generic_runner.dist, "destroy_process_group", lambda: events.append("destroy"))
    monkeypatch.setattr(train_setup, "open_logger", lambda trainer: events.append("logger") or "the logger")

    @contextlib.contextmanager
    def guard(trainer):
        events.append(("guard", trainer.name))
        yield
    monkeypatch.setattr(train_state, "stop_on_write_error", guard)

    class Trainer:
        name = "the trainer"

        def __init__(self, cfg, env_, resume, data):
            events.append(("trainer", data))

        def fit(self, logger):
            events.append(("fit", logger))
            return {"steps": 3}
    monkeypatch.setattr(generic_runner, "Trainer", Trainer)
    monkeypatch.setattr(generic_runner, "summarise", lambda trainer, summary: {**summary, "by": trainer.name})
    cfg = RunConfig(run_name="r")
    assert generic_runner.train(cfg, data="given data") == {"steps": 3, "by": "the trainer"}
    main, several = rank == 0, world > 1
    assert events == ([*(["check dirs", "claim"] if main else []), *(["barrier"] if several else []),
                       ("trainer", "given data"), ("guard", "the trainer"), *(["logger"] if main else []),
                       ("fit", "the logger" if main else None), *(["barrier"] if several else []),
                       *(["destroy"] if several and initialized else [])])
    said = capsys.readouterr().out
    assert said == (f"run r: outputs in {generic_runner.run_paths(cfg)['dir']} and logs/\n" if main else "")


def test_a_resume_reads_last_pt_onto_the_processs_device(monkeypatch):
    """Trainer loads an init checkpoint as it is and last.pt onto env.device (map_location): a GPU rank
    resumes onto its own GPU."""
    loads = []

    def load(path, map_location="cpu"):
        loads.append((str(path), map_location))
        raise RuntimeError("stop here")
    monkeypatch.setattr(generic_runner, "load_checkpoint", load)
    env = Env(0, 0, 1, torch.device("meta"), torch.float32)
    with pytest.raises(RuntimeError, match="stop here"):
        generic_runner.Trainer(RunConfig(run_name="r"), env, resume=True, data=SimpleNamespace())
    assert loads == [(str(generic_runner.run_paths(RunConfig(run_name="r"))["last"]), torch.device("meta"))]
    loads.clear()
    with pytest.raises(RuntimeError, match="stop here"):
        generic_runner.Trainer(RunConfig(run_name="r", init_from="other/best.pt"), env, resume=False, data=None)
    assert loads == [("other/best.pt", "cpu")]


def test_the_summary_speed_is_the_tokens_trained_over_the_seconds_it_took(tmp_path):
    cfg = tiny_run_config(tmp_path, ["train.max_steps=3", "train.eval_every=3"])
    summary = generic_runner.train(cfg)
    tokens = 3 * cfg.train.batch_size * cfg.train.grad_accum * cfg.model.context
    assert summary["steps"] == 3 and 0 < summary["wall_s"] < 600                # seconds of this run, not a clock
    assert summary["tokens_per_s"] == pytest.approx(tokens / summary["wall_s"], rel=1e-9)


def _schedule_run(tmp_path, monkeypatch, sets):
    """A tiny run with every last.pt save recorded by step; returns (summary, saved steps, checkpoint folder)."""
    saved, save_last = [], generic_runner.Trainer._save_last
    monkeypatch.setattr(generic_runner.Trainer, "_save_last",
                        lambda self, logger, paths: saved.append(self.step) or save_last(self, logger, paths))
    cfg = tiny_run_config(tmp_path, sets)
    return generic_runner.train(cfg), saved, generic_runner.run_paths(cfg)["dir"]


def test_checkpoints_follow_the_schedule_from_the_first_step_never_at_step_zero(tmp_path, monkeypatch):
    summary, saved, folder = _schedule_run(tmp_path, monkeypatch, ["train.max_steps=3", "train.save_every=1",
                                                                  "train.keep_every=1", "train.eval_every=1"])
    assert summary["steps"] == 3 and saved == [1, 2, 3]
    assert sorted(p.name for p in folder.glob("step_*.pt")) == ["step_1.pt", "step_2.pt", "step_3.pt"]


@pytest.mark.parametrize("patience, stops_at", [(0, None), (1, 1), (2, 2)])
def test_early_stopping_counts_evaluations_without_improvement_and_saves_where_it_stops(tmp_path, monkeypatch,
                                                                                         patience, stops_at):
    """With lr 1e-12 (below fp32 resolution of the weights) no evaluation after step 0 improves: patience p stops
    at the p-th, saving last.pt there (once) even off the save schedule; patience 0 never stops."""
    summary, saved, folder = _schedule_run(tmp_path, monkeypatch, [
        "train.max_steps=4", "train.eval_every=1", "train.save_every=100", "train.lr=1e-12", "train.min_lr=0",
        f"train.patience={patience}"])
    assert summary["steps"] == (stops_at or 4) and saved == [stops_at or 4]
    assert summary["stop"] == ("max_steps" if stops_at is None else f"early stop (no improvement in {patience} evals)")
    assert load_checkpoint(folder / "last.pt")["step"] == (stops_at or 4)


@pytest.mark.parametrize("preset", ["baseline", "falcon"])
def test_each_evaluation_logs_its_bits_per_byte_and_the_models_statistics(tmp_path, monkeypatch, preset):
    """A mixture of experts reports each expert's load at every evaluation (as val stats); a dense model none."""
    summary, _, _ = _schedule_run(tmp_path, monkeypatch, ["train.max_steps=2", "train.eval_every=1",
                                                          f"model.preset={preset}"])
    val = load_losses("tiny", tmp_path / "logs")["val"]
    assert val["step"] == [0, 1, 2] and len(val["bpb"]) == 3
    assert val["bpb"][-1] == pytest.approx(summary["val_bpb"]) and all(0 < b < 20 for b in val["bpb"])
    loads = {k: v for k, v in val["stats"].items() if k.startswith("moe_load_")}
    assert bool(loads) == (preset == "falcon")
    assert all(len(v) == 3 and all(0 <= x <= 1 for x in v) for v in loads.values())


def test_a_signal_stops_at_a_step_boundary_saying_what_was_saved(tmp_path, monkeypatch):
    cfg = tiny_run_config(tmp_path, ["train.max_steps=5", "train.log_every=1"])
    monkeypatch.setattr(generic_runner, "agree_on_signal", lambda flag, env, check: 15 if check else 0)
    with pytest.raises(generic_runner.Interrupted) as stopped:
        generic_runner.train(cfg)
    last = generic_runner.run_paths(cfg)["last"]
    assert str(stopped.value) == f"SIGTERM at step 1: {last} saved; continue with --resume"
    assert stopped.value.signum == 15


def test_a_process_without_a_logger_trains_and_summarises_without_one(tmp_path):
    """fit(None) is how ranks other than 0 train (they write no logs): the summary has no overfitting report."""
    cfg = tiny_run_config(tmp_path, ["train.max_steps=2"])
    trainer = generic_runner.Trainer(cfg, setup_env("cpu", "fp32"), resume=False)
    summary = trainer.fit(None)
    assert summary["steps"] == 2 and "train_val_gap" not in summary and "tokens_per_s" in summary


def test_the_progress_bar_counts_steps_to_max_steps_from_where_a_resume_starts(tmp_path, capsys):
    generic_runner.train(tiny_run_config(tmp_path, ["train.max_steps=2"]))
    bar = capsys.readouterr().err
    assert "tiny:   0%" in bar and "2/2 [" in bar and "step/s" in bar
    cfg = tiny_run_config(tmp_path, ["train.max_steps=4"])
    generic_runner.train(cfg, resume=True)
    bar = capsys.readouterr().err
    assert "tiny:  50%" in bar and " 2/4 [" in bar and "4/4 [" in bar and " 0/4 [" not in bar

    other_rank = Env(1, 0, 1, torch.device("cpu"), torch.float32)           # not rank 0: no bar
    cfg = tiny_run_config(tmp_path, ["train.max_steps=1", "run_name=r1"])
    data = prepare_run_data(cfg, log=lambda *a: None)
    capsys.readouterr()
    generic_runner.Trainer(cfg, other_rank, resume=False, data=data).fit(None)
    assert "r1:" not in capsys.readouterr().err


def test_the_trainer_hands_its_config_and_process_to_each_part(tmp_path, monkeypatch):
    """Trainer.__init__'s wiring, each part recorded on rank 2 of 3 in fp16 fine-tuning from a checkpoint: the
    train split's stride, the val token count for the split check, the sampler's rank and world, the init
    checkpoint to the model, compile to TID, a GradScaler on the device's type enabled for fp16 only, the
    per-rank seed, the device's peak FLOP/s and the run description in the log."""
    seen, logs = {}, []

    def record(key, value, result=None):
        seen[key] = value
        return result
    cfg = tiny_run_config(tmp_path, ["data.stride=5", "train.compile=true", "init_from=given.pt", "seed=11"])
    data = prepare_run_data(cfg, log=lambda *a: None)
    monkeypatch.setattr(generic_runner, "load_checkpoint", lambda path, map_location="cpu": {"the": "init"})
    monkeypatch.setattr(train_setup, "with_init_checkpoint", lambda cfg, init, env: cfg)
    blocks = data.blocks
    monkeypatch.setattr(data, "blocks", lambda split, context, stride=None, packing=False: record(
        f"blocks {split}", (context, stride), blocks(split, context, stride, packing=packing)))
    check = train_setup.check_splits
    monkeypatch.setattr(train_setup, "check_splits", lambda tr, va, n, c, w: record("val tokens", n,
                                                                                        check(tr, va, n, c, w)))
    build = train_setup.build_model
    monkeypatch.setattr(train_setup, "build_model", lambda c, tok, env, init=None: record("init", init,
                                                                                         build(c, tok, env)))
    monkeypatch.setattr(train_setup, "wrap_for_training", lambda model, c, env: model)    # no DDP, no compile
    tid_class = generic_runner.TokenImportanceDropout
    monkeypatch.setattr(generic_runner, "TokenImportanceDropout", lambda *a, **kw: record("tid", kw, tid_class(*a)))
    monkeypatch.setattr(generic_runner.torch.amp, "GradScaler", lambda *a, **kw: record("scaler", (a, kw)))
    seed = torch.manual_seed
    monkeypatch.setattr(generic_runner.torch, "manual_seed", lambda s: record("seeds", [*seen.get("seeds", []), s],
                                                                                seed(s)))
    monkeypatch.setattr(generic_runner, "peak_flops", lambda device: ("peak of", device))
    monkeypatch.setattr(train_setup, "describe_run", lambda trainer: "the description")

    class Rank2(Env):
        def log(self, *args):
            logs.append(args)

    trainer = generic_runner.Trainer(cfg, Rank2(2, 0, 3, torch.device("cpu"), torch.float16), resume=False, data=data)
    assert seen["blocks train"] == (cfg.model.context, 5) and seen["blocks val"] == (cfg.model.context, None)
    assert seen["val tokens"] == len(data.tokens("val"))
    assert (trainer.sampler.rank, trainer.sampler.world) == (2, 3)
    assert seen["init"] == {"the": "init"} and seen["tid"] == {"compile": True}
    assert seen["scaler"] == (("cpu",), {"enabled": True})
    assert seen["seeds"][-1] == 11 + 2
    assert trainer.peak == ("peak of", torch.device("cpu")) and logs[-1] == ("the description",)
    assert (trainer.step, trainer.best_val, trainer.evals_since_best) == (0, math.inf, 0)

    seen.clear()
    cfg = tiny_run_config(tmp_path, ["run_name=fp32"])
    generic_runner.Trainer(cfg, Rank2(0, 0, 1, torch.device("cpu"), torch.float32), resume=False, data=data)
    assert seen["scaler"] == (("cpu",), {"enabled": False}) and seen["tid"] == {"compile": False}
