"""The generic trainer: a short run learns, resume is exact, outputs are protected, DDP matches one process."""

import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import optimizers
import train_setup
from conftest import REPO, prepare_run, tiny_run_config
from generic_runner import Interrupted, Trainer, train
from models.checkpoint import load_checkpoint
from run_files import TrainingError
from train_logs import load_losses, load_times


def _losses(cfg):
    return load_losses(cfg.run_name, cfg.log_dir)


def test_short_run_learns_and_writes_every_output(tmp_path):
    cfg = tiny_run_config(tmp_path, ["train.max_steps=80", "train.eval_every=40", "train.lr=3e-3", "train.batch_size=16",
                                     "train.keep_every=40"])
    summary = train(cfg)
    assert summary["steps"] == 80
    logs = _losses(cfg)
    first_val, last_val = logs["val"]["loss"][0], logs["val"]["loss"][-1]
    vocab = load_checkpoint(tmp_path / "checkpoints/tiny/last.pt")["config"]["model"]["vocab_size"]
    assert abs(first_val - math.log(vocab)) < 0.15          # untrained: uniform over the vocabulary
    assert last_val < first_val - 1.0                      # at least the unigram statistics are learnt
    assert logs["val"]["step"] == [0, 40, 80] and logs["step"] == list(range(1, 81))
    assert len(logs["train_loss"]) == len(logs["lr"]) == len(logs["grad_norm"]) == 80
    times = load_times(cfg.run_name, cfg.log_dir)
    assert len(times["step_time"]) == 80 and times["total_elapsed"] > 0
    csv_rows = (tmp_path / "logs/csv/tiny.csv").read_text().splitlines()
    assert len(csv_rows) == 81 and csv_rows[0].startswith("step,train_loss,lr")
    # bits per token (the TID study's "BPC") is the loss in bits, beside bits per byte
    assert logs["val"]["bits_per_token"] == pytest.approx([x / math.log(2) for x in logs["val"]["loss"]], rel=1e-12)
    header = csv_rows[0].split(",")
    last = dict(zip(header, csv_rows[-1].split(",")))
    assert float(last["val_bits_per_token"]) == pytest.approx(float(last["val_loss"]) / math.log(2), rel=1e-9)
    assert "val_bpb" in header
    assert summary["val_bpt"] == pytest.approx(summary["val_loss"] / math.log(2))
    for name in ("last.pt", "best.pt", "step_40.pt", "step_80.pt"):
        assert (tmp_path / "checkpoints/tiny" / name).is_file()
    ckpt = load_checkpoint(tmp_path / "checkpoints/tiny/last.pt")   # weights_only=True
    assert ckpt["step"] == 80 and ckpt["tokenizer"]["kind"] == "bpe"
    assert {"model", "config", "optimizer", "scaler", "rng", "sampler", "best_val"} <= set(ckpt)
    assert summary["best_val_loss"] == pytest.approx(min(logs["val"]["loss"]))


def test_lr_schedule_warmup_cosine_floor(tmp_path):
    cfg = tiny_run_config(tmp_path, ["train.max_steps=100", "train.warmup_steps=10", "train.lr=1e-3",
                                     "train.min_lr=1e-4"])
    t = cfg.train
    lrs = [optimizers.lr_at(s, t.lr, t.min_lr, t.warmup_steps, t.max_steps) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[100] == pytest.approx(1e-4) and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def _interrupt_at(monkeypatch, step, signum=signal.SIGINT):
    """Deliver `signum` to this process as step `step` + 1 begins (the old handler saved mid-step here)."""
    real = Trainer.train_step

    def train_step(self):
        if self.step == step:
            os.kill(os.getpid(), signum)
        return real(self)
    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    sets = ["train.max_steps=40", "train.eval_every=10", "train.save_every=15", "model.dropout=0.1"]
    straight = tiny_run_config(tmp_path, sets + ["run_name=straight"])
    train(straight)
    resumed = tiny_run_config(tmp_path, sets + ["run_name=resumed"])
    with monkeypatch.context() as m:
        _interrupt_at(m, 20)                     # Ctrl-C during step 21: it finishes, then last.pt is written
        with pytest.raises(Interrupted, match="SIGINT at step 21"):
            train(resumed)
    assert load_checkpoint(tmp_path / "checkpoints/resumed/last.pt")["step"] == 21
    train(resumed, resume=True)
    a, b = _losses(straight), _losses(resumed)
    assert b["step"] == list(range(1, 41))
    assert a["train_loss"] == b["train_loss"]    # bit for bit, dropout and data order included
    assert a["val"] == b["val"]


# validation losses by step: the best at step 10, evals 15, 20 and 25 do not improve
SCRIPTED_VAL = {0: 6.0, 5: 5.5, 10: 5.0, 15: 5.2, 20: 5.1, 25: 5.05}


def scripted_evaluate(real, script=None):
    """Trainer.evaluate with the losses of `script` (default SCRIPTED_VAL): early stopping then
    depends on no rounding luck in the last digits of a loss that barely moves."""
    def evaluate(self):
        _, bpb, stats = real(self)
        return (script or SCRIPTED_VAL)[self.step], bpb, stats
    return evaluate


_HARD_KILL = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_run_config
from generic_runner import Trainer, train
from test_trainer import scripted_evaluate
Trainer.evaluate = scripted_evaluate(Trainer.evaluate)
real = Trainer.train_step
def train_step(self):
    if self.step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)   # no handler, no flush: as a scheduler's kill -9
    return real(self)
Trainer.train_step = train_step
from pathlib import Path
train(tiny_run_config(Path({tmp!r}), {sets!r}))
"""


def test_resume_after_kill_9_carries_best_loss_best_checkpoint_early_stopping_and_logs(tmp_path, monkeypatch):
    """Scripted validation losses: the best is at step 10, evals 15 and 20 do not improve, patience 3
    stops the run at 25. Killed at step 23 (last save at 20), the resumed run must stop at 25 too, keep
    step 10's best.pt, and leave logs equal to the uninterrupted run's (steps 21-23 logged once)."""
    monkeypatch.setattr(Trainer, "evaluate", scripted_evaluate(Trainer.evaluate))
    sets = ["train.max_steps=60", "train.eval_every=5", "train.save_every=10", "train.lr=1e-9", "train.min_lr=0",
            "train.patience=3"]
    straight = tiny_run_config(tmp_path, sets + ["run_name=straight"])
    expected = train(straight)
    assert expected["steps"] == 25 and expected["stop"].startswith("early stop")
    killed_sets = sets + ["run_name=killed"]
    code = _HARD_KILL.format(tests=str(REPO / "tests"), step=23, tmp=str(tmp_path), sets=killed_sets)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    ckpt = tmp_path / "checkpoints/killed"
    assert load_checkpoint(ckpt / "last.pt")["step"] == 20
    resumed = tiny_run_config(tmp_path, killed_sets)
    summary = train(resumed, resume=True)
    assert (summary["steps"], summary["stop"]) == (expected["steps"], expected["stop"])
    assert summary["best_val_loss"] == expected["best_val_loss"]
    best, best_straight = load_checkpoint(ckpt / "best.pt"), load_checkpoint(tmp_path / "checkpoints/straight/best.pt")
    assert best["step"] == best_straight["step"] == 10
    assert all(torch.equal(best["model"][k], v) for k, v in best_straight["model"].items())
    a, b = _losses(straight), _losses(resumed)
    assert b["step"] == list(range(1, 26))
    assert a["train_loss"] == b["train_loss"] and a["val"] == b["val"]
    csv_steps = [int(row.split(",")[0]) for row in (tmp_path / "logs/csv/killed.csv").read_text().splitlines()[1:]]
    assert csv_steps == list(range(1, 26))


def test_existing_outputs_are_not_overwritten(tmp_path):
    cfg = tiny_run_config(tmp_path, ["train.max_steps=4"])
    train(cfg)
    stamp = (tmp_path / "checkpoints/tiny/last.pt").stat().st_mtime_ns
    with pytest.raises(TrainingError, match="already has outputs.*--resume.*--force"):
        train(cfg)
    assert (tmp_path / "checkpoints/tiny/last.pt").stat().st_mtime_ns == stamp
    train(cfg, force=True)
    assert (tmp_path / "checkpoints/tiny/last.pt").stat().st_mtime_ns != stamp
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(tiny_run_config(tmp_path, ["run_name=other"]), resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = Trainer.train_step

    def train_step(self):
        loss, norm, stats = real(self)
        return (math.nan if self.step == 7 else loss), norm, stats
    monkeypatch.setattr(Trainer, "train_step", train_step)
    cfg = tiny_run_config(tmp_path, ["train.max_steps=10", "train.save_every=5"])
    with pytest.raises(TrainingError, match="loss is nan at step 8.*last.pt"):
        train(cfg)
    assert load_checkpoint(tmp_path / "checkpoints/tiny/last.pt")["step"] == 5


def _train_each(tmp_path, key: str, values, sets: list[str]) -> dict:
    """Train one run per value of `key` (run names key-value); returns value -> its config."""
    runs = {}
    for value in values:
        runs[value] = tiny_run_config(tmp_path, [*sets, f"{key}={value}", f"run_name={key}-{value}"])
        train(runs[value])
    return runs


def test_losses_read_back_in_groups_equal_step_by_step(tmp_path):
    # train.log_every only sets how often numbers leave the device: every step is logged, unchanged
    runs = _train_each(tmp_path, "train.log_every", (1, 7), ["train.max_steps=16", "train.eval_every=8"])
    a, b = _losses(runs[1]), _losses(runs[7])
    assert b["step"] == list(range(1, 17))
    assert a["train_loss"] == b["train_loss"] and a["grad_norm"] == b["grad_norm"] and a["val"] == b["val"]
    times = load_times(runs[7].run_name, runs[7].log_dir)
    assert all(t > 0 for t in times["step_time"]) and times["elapsed"] == sorted(times["elapsed"])


def test_nan_is_caught_before_a_save_even_between_read_backs(tmp_path, monkeypatch):
    real = Trainer.train_step

    def train_step(self):
        loss, norm, stats = real(self)
        return (loss * math.nan if self.step == 3 else loss), norm, stats
    monkeypatch.setattr(Trainer, "train_step", train_step)
    cfg = tiny_run_config(tmp_path, ["train.max_steps=10", "train.save_every=5", "train.log_every=100"])
    with pytest.raises(TrainingError, match="loss is nan at step 4"):
        train(cfg)
    assert not (tmp_path / "checkpoints/tiny/last.pt").exists()   # step 5's save never happened


def test_chunked_loss_trains_and_evaluates_like_the_plain_loss(tmp_path):
    runs = {k: _losses(cfg) for k, cfg in _train_each(tmp_path, "train.loss_chunk", (0, 40),
                                                        ["train.max_steps=6", "train.eval_every=3"]).items()}
    assert runs[40]["train_loss"] == pytest.approx(runs[0]["train_loss"], rel=1e-5)
    assert runs[40]["val"]["loss"] == pytest.approx(runs[0]["val"]["loss"], rel=1e-5)


def test_early_stopping(tmp_path, monkeypatch):
    # the validation loss stops improving after step 5; patience 2 stops the run at the 2nd eval without improvement
    script = {0: 6.0, 5: 5.9, 10: 5.95, 15: 5.9, 20: 5.8, 25: 5.7, 30: 5.6}
    monkeypatch.setattr(Trainer, "evaluate", scripted_evaluate(Trainer.evaluate, script))
    cfg = tiny_run_config(tmp_path, ["train.max_steps=30", "train.eval_every=5", "train.lr=1e-9",
                                     "train.min_lr=0", "train.patience=2"])
    summary = train(cfg)
    assert summary["steps"] == 15 and summary["stop"].startswith("early stop")


def test_runner_cli_trains_and_refuses_overwrite(tmp_path):
    sets = [f"data_dir={tmp_path / 'data'}", f"tokenizer_dir={tmp_path / 'tok'}",
            f"checkpoint_dir={tmp_path / 'ck'}", f"log_dir={tmp_path / 'logs'}", "data.train_rows=300",
            "data.val_rows=20", "data.heldout_rows=20", "tokenizer.vocab_size=300", "model.context=32",
            "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "train.max_steps=3", "train.batch_size=2"]
    cmd = [sys.executable, "run_baseline.py", "--config", "configs/quickstart.yaml", "--run-name", "cli"]
    cmd += [a for s in sets for a in ("--set", s)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "done cli [baseline (learned positions, layernorm, gelu)]: 3 steps" in r.stderr + r.stdout
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "already has outputs" in again.stderr
    assert again.stderr.strip().count("\n") == 0


def _ddp_losses(tmp_path, nproc, batch_size):
    name = f"ddp{nproc}"
    sets = [f"data_dir={tmp_path / 'data'}", f"tokenizer_dir={tmp_path / 'tok'}",
            f"checkpoint_dir={tmp_path / 'ck'}", f"log_dir={tmp_path / 'logs'}", "data.train_rows=300",
            "data.val_rows=20", "data.heldout_rows=20", "tokenizer.vocab_size=300", "model.context=32",
            "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "train.max_steps=8",
            f"train.batch_size={batch_size}", "train.eval_every=4", "train.eval_batches=2", "device=cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master-port",
           str(29500 + nproc + os.getpid() % 1000), "run_baseline.py", "--config", "configs/quickstart.yaml",
           "--run-name", name] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return load_losses(name, tmp_path / "logs")


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    one = _ddp_losses(tmp_path, nproc=1, batch_size=8)
    two = _ddp_losses(tmp_path, nproc=2, batch_size=4)
    # the same samples per step; only the order of floating-point sums differs (gradient all-reduce)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert two["val"]["loss"] == pytest.approx(one["val"]["loss"], rel=1e-4)
    assert one["train_loss"][-1] < one["train_loss"][0]


def test_trains_on_a_local_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"The {c} number {i} sat on the mat and looked at the sky." for i in range(300)
                              for c in ("cat",)))
    cfg = tiny_run_config(tmp_path, ["data.source=text", f"data.path={path}", "data.heldout_rows=20",
                                     "data.val_rows=20", "data.train_rows=null", "tokenizer.vocab_size=300",
                                     "train.max_steps=4"])
    summary = train(cfg)
    assert summary["steps"] == 4 and math.isfinite(summary["val_loss"])


def test_word_level_setup_trains_the_head_not_the_input_vectors(tmp_path):
    # configs/word_level.yaml's model and data choices at tiny sizes: untied head, frozen vectors, padded rows
    import dataclasses
    import types
    import numpy as np
    from dataset_definitions.stories import stories
    words = sorted({w.strip('.,!?"').lower() for s in stories(50) for w in s.split()} - {""})
    table = np.random.default_rng(0).normal(0.0, 0.7, (len(words), 32)).round(4)
    vec_file = tmp_path / "vectors.txt"
    vec_file.write_text(f"{len(words)} 32\n" + "\n".join(f"{w} " + " ".join(map(str, v)) for w, v in zip(words, table)))
    sets = ["tokenizer.kind=word", "tokenizer.vocab_size=200", f"model.word_vectors={vec_file}",
            "model.freeze_embeddings=true", "model.tie_embeddings=false", "data.packing=pad", "train.max_steps=5"]
    cfg = tiny_run_config(tmp_path, sets)
    tok = prepare_run(cfg, log=lambda *a: None).tokenizer
    sized = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tok.vocab_size))
    initial = train_setup.build_model(sized, tok, types.SimpleNamespace(log=lambda *a: None, device="cpu"))
    summary = train(cfg)
    trained = load_checkpoint(tmp_path / "checkpoints/tiny/last.pt")["model"]

    # validation loss over padded rows: NLL of the real targets / their number (padding is no target)
    val = prepare_run(cfg, log=lambda *a: None).blocks("val", 32, packing="pad")
    x, y = val.batch(np.arange(min(len(val), 2 * 4)))             # eval_batches x batch_size rows
    assert (y == -100).any()
    initial.load_state_dict(trained)
    with torch.no_grad():
        logits = initial.eval()(x)[0]
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
    assert summary["val_loss"] == pytest.approx((nll / (y != -100).sum()).item(), rel=1e-4)
    initial = train_setup.build_model(sized, tok, types.SimpleNamespace(log=lambda *a: None, device="cpu"))

    emb = trained["tok_emb.weight"]
    assert torch.equal(emb, initial.tok_emb.weight)            # the input vectors did not train
    assert (trained["lm_head.weight"] - initial.lm_head.weight).abs().max() > 1e-3   # the head did
    expected = {w: torch.tensor(v, dtype=torch.float32) for w, v in zip(words, table)}
    found = [i for i, w in enumerate(tok.words) if w in expected]
    assert len(found) > 100                                     # most of the 200 words came from the file
    for i in found:
        torch.testing.assert_close(emb[i], expected[tok.words[i]])
    missing = [i for i in range(tok.vocab_size) if i not in found and i != tok.pad_id]
    assert missing and (emb[missing] != 0).all()                # out-of-vector words: random normal, not zero
    assert 0.4 < emb[missing].std().item() < 1.0                # on the vectors' scale (std 0.7)
    assert (emb[tok.pad_id] == 0).all()                         # the padding row is zero


def test_compiled_training_matches_eager(tmp_path):
    eager = tiny_run_config(tmp_path, ["train.max_steps=3", "run_name=eager"])
    # the compiled run also fuses head and loss in chunks: both must leave the losses unchanged
    compiled = tiny_run_config(tmp_path, ["train.max_steps=3", "run_name=compiled", "train.compile=true",
                                          "train.loss_chunk=48"])
    train(eager)
    train(compiled)
    assert _losses(compiled)["train_loss"] == pytest.approx(_losses(eager)["train_loss"], rel=1e-4)
