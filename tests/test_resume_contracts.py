"""Resume decisions and the epochs/steps arithmetic: what --resume refuses, what it puts back (the RNG
stream, the last good checkpoint), and train.epochs <-> train.max_steps, against hand arithmetic."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import train_setup
import train_state
from conftest import tiny_run_config
from experiment_config import ConfigError, RunConfig, TrainConfig
from models.checkpoint import load_checkpoint
from run_files import TrainingError, run_paths
from runtime import setup_env


def _cfg(**train) -> RunConfig:
    return RunConfig(run_name="r", train=TrainConfig(**train))


# ----------------------------------------------------------------------------- epochs <-> steps

@pytest.mark.parametrize("epochs, batches, accum", [(2.5, 50, 3), (1.0, 7, 1), (3.0, 40, 4), (0.5, 33, 2)])
def test_epochs_set_the_steps(epochs, batches, accum):
    """An epoch is `batches` micro-batches and a step takes grad_accum of them: steps = round(epochs x
    batches / grad_accum) (hand arithmetic), and the config is otherwise unchanged."""
    cfg = _cfg(max_steps=None, epochs=epochs, grad_accum=accum, lr=3e-4)
    out = train_setup.resolve_epochs(cfg, batches)
    assert out.train.max_steps == round(epochs * batches / accum)
    assert out.train.epochs == epochs and out.train.lr == 3e-4 and out.model == cfg.model


def test_a_tiny_epoch_count_still_trains_one_step():
    """0.001 epochs of 50 micro-batches is 0.05 steps: the run still takes one step (never zero)."""
    out = train_setup.resolve_epochs(_cfg(max_steps=None, epochs=0.001), 50)
    assert out.train.max_steps == 1


@pytest.mark.parametrize("max_steps, batches, accum", [(100, 50, 3), (1, 7, 1), (10, 30, 2)])
def test_steps_set_the_epochs(max_steps, batches, accum):
    """Without train.epochs it is max_steps x grad_accum / batches (hand arithmetic), kept to 4 decimals."""
    out = train_setup.resolve_epochs(_cfg(max_steps=max_steps, grad_accum=accum), batches)
    exact = max_steps * accum / batches
    assert out.train.max_steps == max_steps
    assert out.train.epochs == pytest.approx(exact, abs=5e-5)
    assert out.train.epochs == pytest.approx(round(exact, 4), abs=1e-12)   # 1/7 -> 0.1429, not 0.14286


def test_both_set_must_agree():
    """epochs and max_steps both set: the same number of steps is accepted, another is a ConfigError."""
    agree = train_setup.resolve_epochs(_cfg(max_steps=20, epochs=2.0, grad_accum=5), 50)   # 2 x 50 / 5 = 20
    assert (agree.train.max_steps, agree.train.epochs) == (20, 2.0)
    with pytest.raises(ConfigError, match="train.epochs=2 is 20 steps"):
        train_setup.resolve_epochs(_cfg(max_steps=21, epochs=2.0, grad_accum=5), 50)


# ----------------------------------------------------------------------------- finished / last good

def test_a_run_at_max_steps_is_finished():
    """--resume of a checkpoint at exactly train.max_steps has nothing to train: RunFinished naming the
    run's last.pt; one step below is not finished."""
    cfg = _cfg(max_steps=5)
    with pytest.raises(train_state.RunFinished, match=str(run_paths(cfg)["last"])):
        train_state.check_unfinished(SimpleNamespace(cfg=cfg, step=5))
    train_state.check_unfinished(SimpleNamespace(cfg=cfg, step=4))


def test_non_finite_before_any_save_says_no_checkpoint_is_good():
    """Nothing saved yet: the error says so truthfully, then gives the fixes."""
    with pytest.raises(TrainingError, match="no last.pt was written before this: lower train.lr"):
        train_state.stop_non_finite(SimpleNamespace(cfg=_cfg(), step=3, saved_step=None), "loss is nan")


# ----------------------------------------------------------------------------- restore

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny 2-step run: its config and its last.pt."""
    import generic_runner

    cfg = tiny_run_config(tmp_path_factory.mktemp("resume"), ["train.max_steps=2", "run_name=short"])
    generic_runner.train(cfg)
    return cfg, run_paths(cfg)["last"]


def _fresh_trainer(cfg):
    from generic_runner import Trainer

    return Trainer(replace(cfg, train=replace(cfg.train, max_steps=4)), setup_env("cpu", "fp32"), resume=False)


def test_resumed_run_names_its_checkpoint_as_the_last_good_one(run):
    """After --resume the checkpoint it came from is on disk: a later failure names it with its step,
    and says the run can continue with --resume (not "nothing was written")."""
    from generic_runner import Trainer

    cfg, last = run
    trainer = Trainer(replace(cfg, train=replace(cfg.train, max_steps=4)), setup_env("cpu", "fp32"), resume=True)
    with pytest.raises(TrainingError, match=rf"{last} \(step 2\) is the last good checkpoint"):
        train_state.stop_non_finite(trainer, "loss is nan")
    with pytest.raises(TrainingError, match="continue with --resume"):
        with train_state.stop_on_write_error(trainer):
            raise OSError(28, "No space left on device", str(last))


def test_same_world_size_restores_the_saved_rng_stream(run):
    """Same number of processes: the torch RNG continues exactly from the saved state."""
    cfg, last = run
    ckpt = load_checkpoint(last)
    trainer = _fresh_trainer(cfg)
    torch.manual_seed(12345)
    train_state.restore(trainer, ckpt)
    assert torch.equal(torch.get_rng_state(), ckpt["rng"][0]["torch"])


def test_another_world_size_reseeds_from_seed_rank_and_step(run):
    """A checkpoint of 2 processes resumed by 1 (same tokens per step): the saved per-rank streams do
    not apply; rank 0 draws from manual_seed(seed + rank + step), here seed + 0 + 2."""
    cfg, last = run
    ckpt = load_checkpoint(last)
    ckpt["world_size"], ckpt["rng"] = 2, [ckpt["rng"][0], ckpt["rng"][0]]
    trainer = _fresh_trainer(cfg)
    train_state.restore(trainer, ckpt)
    got = torch.rand(4)
    torch.manual_seed(cfg.seed + 0 + ckpt["step"])
    assert ckpt["step"] == 2 and torch.equal(got, torch.rand(4))
    assert trainer.step == 2 and trainer.saved_step == 2
    assert math.isfinite(trainer.best_val)


def test_another_world_size_reseeds_each_rank_apart(run):
    """Rank 1 of a resumed run of another size draws from manual_seed(seed + 1 + step): ranks differ."""
    cfg, last = run
    ckpt = load_checkpoint(last)
    ckpt["world_size"] = 4
    trainer = _fresh_trainer(cfg)
    trainer.env = replace(trainer.env, rank=1)
    train_state.restore(trainer, ckpt)
    got = torch.rand(4)
    torch.manual_seed(cfg.seed + 1 + ckpt["step"])
    assert torch.equal(got, torch.rand(4))


def test_the_saved_grad_scaler_state_is_put_back(run):
    """An fp16 run's loss scale continues from the checkpoint, not from the scaler's initial scale."""
    cfg, last = run
    ckpt = load_checkpoint(last)
    ckpt["scaler"] = torch.amp.GradScaler("cpu", init_scale=512.0).state_dict()
    trainer = _fresh_trainer(cfg)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    train_state.restore(trainer, ckpt)
    assert trainer.scaler.get_scale() == 512.0


def _record_cuda_rng(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((state, device)))
    return calls


def test_a_gpu_checkpoint_resumed_on_cpu_restores_only_the_cpu_stream(run, monkeypatch):
    """A checkpoint saved on a GPU holds a CUDA RNG state; resumed on a CPU it is left alone."""
    cfg, last = run
    ckpt = load_checkpoint(last)
    ckpt["rng"][0]["cuda"] = torch.arange(16, dtype=torch.uint8)
    calls = _record_cuda_rng(monkeypatch)
    train_state.restore(_fresh_trainer(cfg), ckpt)
    assert calls == [] and torch.equal(torch.get_rng_state(), ckpt["rng"][0]["torch"])


def test_on_a_gpu_the_saved_cuda_stream_goes_back_to_its_device(run, monkeypatch):
    """Same world size on a GPU: the rank's CUDA RNG state is set on the rank's device (recorded here:
    the call itself needs a GPU); a checkpoint without one (saved on a CPU) sets none."""
    cfg, last = run
    ckpt = load_checkpoint(last)
    saved = torch.arange(16, dtype=torch.uint8)
    calls = _record_cuda_rng(monkeypatch)
    trainer = _fresh_trainer(cfg)
    trainer.env = replace(trainer.env, device=torch.device("cuda", 0))
    train_state.restore(trainer, ckpt)
    assert calls == []
    ckpt["rng"][0]["cuda"] = saved
    train_state.restore(trainer, ckpt)
    assert len(calls) == 1 and torch.equal(calls[0][0], saved) and calls[0][1] == torch.device("cuda", 0)


def test_a_gpu_process_saves_its_cuda_stream_beside_the_cpu_one(run, monkeypatch):
    """capture() on a GPU keeps the device's CUDA RNG state (read from that device) for --resume."""
    cfg, _ = run
    trainer = _fresh_trainer(cfg)
    trainer.env = replace(trainer.env, device=torch.device("cuda", 0))
    state = torch.arange(16, dtype=torch.uint8)
    asked = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: asked.append(device) or state)
    rng = train_state.capture(trainer)["rng"]
    assert len(rng) == 1 and torch.equal(rng[0]["cuda"], state) and asked == [torch.device("cuda", 0)]
    assert torch.equal(rng[0]["torch"], torch.get_rng_state())


def test_every_rank_saves_its_rng_streams_gathered_in_rank_order(run, monkeypatch):
    """capture() with 2 processes: each rank's RNG state, all-gathered (rank order) into the checkpoint; one
    process gathers nothing. A run without LoRA saves its weights once (no lora_model copy)."""
    cfg, last = run
    trainer = _fresh_trainer(cfg)
    other = {"torch": torch.zeros(3, dtype=torch.uint8)}
    gathers = []

    def all_gather_object(out, obj):
        gathers.append((list(out), obj))
        out[:] = [obj, other]
    monkeypatch.setattr(train_state.dist, "all_gather_object", all_gather_object)
    single = train_state.capture(trainer)
    assert gathers == [] and len(single["rng"]) == 1
    assert "lora_model" not in single and single["model"].keys() == trainer.model.state_dict().keys()
    trainer.env = replace(trainer.env, world=2)
    rng = train_state.capture(trainer)["rng"]
    assert len(gathers) == 1 and gathers[0][0] == [None, None]
    assert torch.equal(gathers[0][1]["torch"], torch.get_rng_state()) and rng == [gathers[0][1], other]


def test_a_resume_says_its_step_and_best_validation_loss(run, capsys):
    cfg, last = run
    ckpt = load_checkpoint(last)
    train_state.restore(_fresh_trainer(cfg), ckpt)
    assert f"resumed from step 2 (best val loss {ckpt['best_val']:.4f})" in capsys.readouterr().out


def _longer(cfg, **train):
    return replace(cfg, train=replace(cfg.train, max_steps=4, **train))


def test_the_recorded_global_batch_is_the_one_compared(run):
    """A checkpoint's recorded tokens_per_step is what it was trained with, whatever its config derives; one from
    before the record (and before world_size) derives batch_size x grad_accum x context x 1 process."""
    cfg, last = run
    ckpt = load_checkpoint(last)
    b, ctx = cfg.train.batch_size, cfg.model.context
    assert ckpt["tokens_per_step"] == b * ctx
    recorded = {**ckpt, "tokens_per_step": 2 * b * ctx}                      # e.g. trained on two processes
    train_state.check_resumable(recorded, _longer(cfg, grad_accum=2), last, world=1)
    with pytest.raises(ConfigError, match=rf"trained with {2 * b * ctx:,} tokens per step \({b} x 1 x {ctx} x 1 = "):
        train_state.check_resumable(recorded, _longer(cfg), last, world=1)
    oldest = {k: v for k, v in ckpt.items() if k not in ("tokens_per_step", "world_size")}
    train_state.check_resumable(oldest, _longer(cfg), last, world=1)
    with pytest.raises(ConfigError, match=rf"trained with {b * ctx:,} tokens per step \({b} x 1 x {ctx} x 1 = "):
        train_state.check_resumable(oldest, _longer(cfg), last, world=2)


@pytest.mark.parametrize("field", ["kind", "sha256", "vocab_size"])
def test_a_resume_with_another_tokenizer_is_refused_naming_both(run, field):
    cfg, last = run
    ckpt = load_checkpoint(last)
    theirs = ckpt["tokenizer"]
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=theirs["vocab_size"]))     # as the tokenizer sets it
    train_state.check_resumable(ckpt, _longer(cfg), last, world=1, data_key=ckpt.get("data_key"),
                                tokenizer_spec=dict(theirs))
    changed = {"kind": "word" if theirs["kind"] != "word" else "bpe", "sha256": "f" * 64,
               "vocab_size": theirs["vocab_size"] + 1}
    other = {**theirs, field: changed[field]}
    was = f"tokenizer {theirs['kind']} {str(theirs['sha256'])[:12]} -> {other['kind']} {str(other['sha256'])[:12]}"
    with pytest.raises(ConfigError) as refused:
        train_state.check_resumable(ckpt, _longer(cfg), last, world=1, data_key=ckpt.get("data_key"),
                                    tokenizer_spec=other)
    assert f"({was})" in str(refused.value) or f"; {was})" in str(refused.value)
