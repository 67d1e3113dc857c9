"""Nothing lost, nothing silently wrong: one test (or a few) per failure a hostile but fair user found.

Each reproduces the failure through the command line where there is one, and checks the exit
status, that the message names the key or file, and that nothing but the run's own outputs changed.
Sections 9 (checkpoint hashes) and 13 (generation and eval) are in test_safety_inference.py.
"""

import math
import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import generic_runner
from conftest import REPO, dead_pid, prepare_run, run_cli, tiny_run_config, tiny_sets
from dataset_definitions.datasets import BlockSampler
from dataset_definitions.prepare import data_key
from fileio import LockedError, atomic_write, exclusive_lock, load_plain_pickle
from models.checkpoint import load_checkpoint
from train_logs import load_losses

BASE = str(REPO / "configs" / "baseline.yaml")


def _quiet(*_):
    pass


def train_cli(tmp_path, capsys, *args, sets=()):
    argv = [a for s in [*tiny_sets(tmp_path), *sets] for a in ("--set", s)] + list(args)
    return run_cli(lambda a: generic_runner.main(BASE, a), argv, capsys)


def error_line(err: str) -> str:
    """The last line of stderr (progress bars come before it); it must be the one error line."""
    line = err.rstrip("\n").split("\n")[-1]
    assert line.startswith("error: ") or line.startswith("interrupted: "), err[-500:]
    return line


def snapshot(root: Path, skip=()) -> dict:
    """{file: (size, mtime_ns)} under root, leaving out paths under any of `skip` and lock files
    (a run's lock holds the id of its last holder)."""
    skip = [Path(s) for s in skip]
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(root).rglob("*")
            if p.is_file() and p.suffix != ".lock" and not any(p == s or s in p.parents for s in skip)}


def run_outputs(tmp_path, run="tiny") -> list[Path]:
    logs = tmp_path / "logs"
    return [tmp_path / "checkpoints" / run, *(logs / d / f"{run}.{e}" for d, e in
                                              (("losses", "pkl"), ("times", "pkl"), ("csv", "csv")))]


def copy_of(trained: Path, tmp_path: Path) -> Path:
    """tmp_path holding a copy of the trained run's data, tokenizer, checkpoints and logs."""
    import shutil
    for sub in ("data", "tokenizers", "checkpoints", "logs"):
        shutil.copytree(trained / sub, tmp_path / sub, ignore=shutil.ignore_patterns("*.lock"))
    return tmp_path


# ----------------------------------------------------------------------------- 1. run names, --force

@pytest.mark.parametrize("name", ["/victim", ".", "..", "a/b", ".hidden"])
def test_run_name_must_be_a_plain_name(tmp_path, capsys, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("not a run output")
    name = str(victim) if name == "/victim" else name
    before = snapshot(tmp_path)
    code, err = train_cli(tmp_path, capsys, "--run-name", name, "--force")
    assert code == 2 and "run_name" in err and repr(name) in err and err.count("\n") == 1
    assert snapshot(tmp_path) == before


def test_force_deletes_only_the_runs_own_outputs(tmp_path, capsys):
    assert train_cli(tmp_path, capsys, "--run-name", "a", sets=["train.max_steps=5"])[0] == 0
    assert train_cli(tmp_path, capsys, "--run-name", "b", sets=["train.max_steps=5"])[0] == 0
    notes = tmp_path / "checkpoints" / "a" / "notes.txt"
    notes.write_text("mine")
    (tmp_path / "checkpoints" / "a" / "step_1.pt").write_bytes(b"old")  # an old kept checkpoint of run a
    keep = snapshot(tmp_path, skip=run_outputs(tmp_path, "a"))
    assert train_cli(tmp_path, capsys, "--run-name", "a", "--force", sets=["train.max_steps=5"])[0] == 0
    assert notes.read_text() == "mine" and not (tmp_path / "checkpoints/a/step_1.pt").exists()
    after = snapshot(tmp_path, skip=run_outputs(tmp_path, "a"))
    assert after == keep          # run b, the data cache and the tokenizer untouched


# ----------------------------------------------------------------------------- 2. one writer per run

def test_second_writer_of_a_run_is_refused_until_the_first_dies(tmp_path, capsys):
    lock = tmp_path / "checkpoints" / ".locks" / "tiny.lock"   # (logs/.locks/tiny.lock is the other one)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fileio import exclusive_lock\n"
         "with exclusive_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)", str(lock)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(tmp_path)
        code, err = train_cli(tmp_path, capsys, "--run-name", "tiny", "--force")
        assert code == 1 and "'tiny' is already being trained" in err and str(holder.pid) in err
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()   # kill -9: the OS releases the lock
        holder.wait()
    assert train_cli(tmp_path, capsys, "--run-name", "tiny", sets=["train.max_steps=2"])[0] == 0


def test_a_loser_arriving_before_the_holder_wrote_its_id_still_names_it(tmp_path):
    # the holder takes the lock, then writes its id: a second process between the two must wait for the id
    lock = tmp_path / "run.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'a+')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\ntime.sleep(0.5)\nf.write('4242'); f.flush()\ntime.sleep(120)", str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match="held by process 4242"):
            with exclusive_lock(lock):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_two_trainings_of_one_run_started_together_one_refuses(tmp_path):
    sets = [*tiny_sets(tmp_path), "train.max_steps=40", "train.eval_every=20", "train.save_every=20"]
    cmd = [sys.executable, "run_baseline.py", "--run-name", "same"] + [a for s in sets for a in ("--set", s)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = sorted((p.wait(timeout=600), p.stderr.read(), p.pid) for p in procs)
    (ok, _, winner), (refused, err, _) = results
    assert (ok, refused) == (0, 1)
    assert "'same' is already being trained" in error_line(err) and f"process {winner}" in err
    steps = [line.split(",")[0] for line in (tmp_path / "logs/csv/same.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, 41)]       # one run's rows, not two interleaved


def test_atomic_writes_of_one_file_never_share_a_temporary(tmp_path):
    target, both_open = tmp_path / "last.pt", threading.Barrier(2)
    temps = []

    def writer(text):
        def write(tmp):
            temps.append(tmp)
            tmp.write_text(text)
            both_open.wait(timeout=10)  # both temporaries exist at once
        atomic_write(target, write)
    threads = [threading.Thread(target=writer, args=(t * 1000,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(temps)) == 2 and target.read_text() in ("a" * 1000, "b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ----------------------------------------------------------------------------- 3. stale temporaries

def test_prepare_removes_temporaries_of_killed_builds_only(tmp_path):
    cfg = tiny_run_config(tmp_path)
    processed = tmp_path / "data" / "processed"
    stale = processed / f".tmp-{data_key(cfg.data, cfg.tokenizer, cfg.data_dir)}-{dead_pid()}"
    live = processed / f".tmp-otherkey-{os.getpid()}"   # a build still running (this process)
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "train.jsonl").write_text("half\n")
    prepare_run(cfg, log=_quiet)
    assert not stale.exists() and (live / "train.jsonl").is_file()


# ----------------------------------------------------------------------------- 4. content-keyed sources

def test_a_source_edited_in_place_gets_a_new_cache_and_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the cat number {i} sat on the mat." for i in range(200)))
    sets = ["data.source=text", f"data.path={corpus}", "data.train_rows=null", "data.val_rows=20",
            "data.heldout_rows=20", "tokenizer.vocab_size=300"]
    old = prepare_run(tiny_run_config(tmp_path, sets), log=_quiet)
    stamp = corpus.stat().st_mtime_ns
    corpus.write_text("\n".join(f"the dog number {i} ran in the fog." for i in range(200)))  # same size
    os.utime(corpus, ns=(stamp + 10**9, stamp + 10**9))
    new = prepare_run(tiny_run_config(tmp_path, sets), log=_quiet)
    assert new.dir != old.dir and new.meta["tokenizer"]["path"] != old.meta["tokenizer"]["path"]
    assert "dog" in new.rows("val")[0] and "cat" in old.rows("val")[0]
    assert "dog" in new.tokenizer.decode(new.tokens("train")[:40].tolist())
    # unchanged size and mtime: the stored hash is reused, and the same cache is found
    assert prepare_run(tiny_run_config(tmp_path, sets), verify=True, log=_quiet).dir == new.dir


def test_resume_refuses_a_checkpoint_of_the_old_text(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the cat number {i} sat on the mat." for i in range(300)))
    sets = ["data.source=text", f"data.path={corpus}", "data.train_rows=null", "data.val_rows=20",
            "data.heldout_rows=20", "tokenizer.vocab_size=300", "train.max_steps=5"]
    assert train_cli(tmp_path, capsys, sets=sets)[0] == 0
    corpus.write_text(corpus.read_text().replace("cat", "dog"))
    outputs = snapshot(tmp_path / "checkpoints") | snapshot(tmp_path / "logs")
    code, err = train_cli(tmp_path, capsys, "--resume", sets=sets[:-1] + ["train.max_steps=10"])
    assert code == 2 and "data key" in error_line(err) and "last.pt" in err
    assert snapshot(tmp_path / "checkpoints") | snapshot(tmp_path / "logs") == outputs


# ----------------------------------------------------------------------------- 5. prepare = training cache

def test_documented_prepare_command_builds_the_cache_training_reads(tmp_path, capsys):
    from prepare_data import main as prepare_main
    from experiment_config import load_config
    sets = [*tiny_sets(tmp_path), "data.name=ignored-by-builtin"]
    argv = ["--config", str(REPO / "configs/quickstart.yaml")] + [a for s in sets for a in ("--set", s)]
    assert run_cli(prepare_main, argv, capsys)[0] == 0
    built = [d for d in (tmp_path / "data/processed").iterdir() if d.is_dir()]
    runner_cfg = load_config([BASE, REPO / "configs/quickstart.yaml"], tiny_sets(tmp_path))  # run_baseline.py's merge
    assert [d.name for d in built] == [data_key(runner_cfg.data, runner_cfg.tokenizer, runner_cfg.data_dir)]
    # the trainer's "rebuild" advice is a command that rebuilds
    (built[0] / "val.bin").write_bytes(b"\0\0")
    code, err = train_cli(tmp_path, capsys, "--config", str(REPO / "configs/quickstart.yaml"))
    assert code == 1 and "python prepare_data.py" in error_line(err) and "--force" in err and str(built[0]) in err
    assert run_cli(prepare_main, argv + ["--force"], capsys)[0] == 0
    assert run_cli(prepare_main, argv + ["--verify"], capsys)[0] == 0


# ----------------------------------------------------------------------------- 6. stop at a step boundary

def _signal_mid_step(monkeypatch, after_batches: int, signum: int):
    """Deliver `signum` right after the sampler hands out batch number `after_batches` (mid-step)."""
    real, drawn = BlockSampler.next_indices, [0]

    def next_indices(self):
        out = real(self)
        drawn[0] += 1
        if drawn[0] == after_batches:
            os.kill(os.getpid(), signum)
        return out
    monkeypatch.setattr(BlockSampler, "next_indices", next_indices)


def test_a_signal_mid_step_resumes_to_the_uninterrupted_losses(tmp_path, capsys, monkeypatch):
    sets = ["train.max_steps=12", "train.eval_every=5", "train.save_every=8", "model.dropout=0.1"]
    assert train_cli(tmp_path, capsys, "--run-name", "straight", sets=sets)[0] == 0
    a = load_losses("straight", tmp_path / "logs")
    wa = load_checkpoint(tmp_path / "checkpoints/straight/last.pt")["model"]
    for signum, name in ((signal.SIGINT, "ctrl-c"), (signal.SIGTERM, "scheduler")):
        with monkeypatch.context() as m:
            _signal_mid_step(m, 10, signum)      # inside step 10, its batch drawn
            code, err = train_cli(tmp_path, capsys, "--run-name", name, sets=sets)
        assert code == 128 + signum and "at step 10" in error_line(err) and f"{name}/last.pt" in err
        assert load_checkpoint(tmp_path / f"checkpoints/{name}/last.pt")["step"] == 10
        assert train_cli(tmp_path, capsys, "--run-name", name, "--resume", sets=sets)[0] == 0
        b = load_losses(name, tmp_path / "logs")
        assert b["step"] == list(range(1, 13)) and a["train_loss"] == b["train_loss"] and a["val"] == b["val"]
        wb = load_checkpoint(tmp_path / f"checkpoints/{name}/last.pt")["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ----------------------------------------------------------------------------- 7. resume checks identity

@pytest.mark.parametrize("change,key", [
    ("tokenizer.vocab_size=320", "tokenizer.vocab_size"), ("data.seed=5", "data.seed"), ("seed=7", "seed"),
    ("model.d_ff=96", "model.d_ff"), ("lora.rank=4", "lora.rank")])
def test_resume_refuses_a_checkpoint_of_other_settings(trained, tmp_path, capsys, change, key):
    copy_of(trained, tmp_path)
    outputs = snapshot(tmp_path / "checkpoints") | snapshot(tmp_path / "logs")
    code, err = train_cli(tmp_path, capsys, "--resume", sets=["train.max_steps=8", change])
    assert code == 2 and f"{key}:" in error_line(err) and "last.pt" in err
    assert snapshot(tmp_path / "checkpoints") | snapshot(tmp_path / "logs") == outputs


def test_resume_accepts_settings_that_may_change(trained, tmp_path, capsys):
    copy_of(trained, tmp_path)
    code, _ = train_cli(tmp_path, capsys, "--resume", sets=["train.max_steps=8", "train.eval_every=4",
                                                            "train.log_every=3", "train.save_every=4"])
    assert code == 0 and load_checkpoint(tmp_path / "checkpoints/tiny/last.pt")["step"] == 8


def test_identity_rule_lists_the_keys_that_may_change(tmp_path):
    from experiment_config import run_identity_diff, to_dict
    old = to_dict(tiny_run_config(tmp_path))
    new = {**old, "train": {**old["train"], "max_steps": 99, "lr": 0.5}, "device": "cpu"}
    new_key = {**old, "tid": {**old["tid"], "a_key_added_later": 1}}   # unknown to the rule: defines the run
    assert run_identity_diff(old, new) == [f"train.lr: {old['train']['lr']!r} -> 0.5"]
    assert run_identity_diff(old, new_key) == ["tid.a_key_added_later: None -> 1"]


# ----------------------------------------------------------------------------- 8. non-finite values

def _checkpoints_are_finite(run_dir: Path) -> list[int]:
    steps = []
    for p in sorted(run_dir.glob("*.pt")):
        ckpt = load_checkpoint(p)
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point()), p
        steps.append(ckpt["step"])
    return steps


def test_nan_validation_loss_stops_without_writing(tmp_path, capsys, monkeypatch):
    real, eval_batches = F.cross_entropy, [0]

    def nan_in_eval(*args, **kwargs):   # the validation pass asks per-token losses; training the mean
        out = real(*args, **kwargs)
        if kwargs.get("reduction") == "none":
            eval_batches[0] += 1
            if eval_batches[0] > 2:     # the step-0 evaluation (2 batches) stays finite
                return out * math.nan
        return out
    monkeypatch.setattr(F, "cross_entropy", nan_in_eval)
    code, err = train_cli(tmp_path, capsys, sets=["train.max_steps=10", "train.save_every=3"])
    assert code == 1 and "validation loss is nan at step 5" in error_line(err)
    assert "checkpoints/tiny/last.pt (step 3) is the last good checkpoint" in err
    assert _checkpoints_are_finite(tmp_path / "checkpoints/tiny") == [0, 3]   # best.pt, last.pt


def test_non_finite_weights_are_never_written(tmp_path, capsys, monkeypatch):
    real = generic_runner.Trainer._eval_and_checkpoint

    def poison_at_10(self, *args):
        if self.step == 10:
            with torch.no_grad():
                self.model.tok_emb.weight[0, 0] = math.inf
        return real(self, *args)
    monkeypatch.setattr(generic_runner.Trainer, "_eval_and_checkpoint", poison_at_10)
    code, err = train_cli(tmp_path, capsys, sets=["train.max_steps=20", "train.eval_every=100"])
    assert code == 1 and "weight tensors are not finite" in error_line(err) and "tok_emb.weight" in err
    assert "last.pt (step 5) is the last good checkpoint" in err
    assert _checkpoints_are_finite(tmp_path / "checkpoints/tiny") == [0, 5]


def test_nan_before_any_last_checkpoint_says_none_is_good(tmp_path, capsys, monkeypatch):
    real = generic_runner.Trainer.train_step

    def train_step(self):
        loss, norm, stats = real(self)
        return (loss * math.nan if self.step == 2 else loss), norm, stats
    monkeypatch.setattr(generic_runner.Trainer, "train_step", train_step)
    code, err = train_cli(tmp_path, capsys, sets=["train.log_every=1"])
    assert code == 1 and "loss is nan at step 3" in error_line(err) and "no last.pt was written" in err
    assert "last good" not in err and not (tmp_path / "checkpoints/tiny/last.pt").exists()


# ----------------------------------------------------------------------------- 10. eval_batches=0

def test_eval_batches_zero_is_refused_before_any_work(tmp_path, capsys):
    code, err = train_cli(tmp_path, capsys, sets=["train.eval_batches=0"])
    assert code == 2 and "train.eval_batches" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 11. log pickles run no code

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_log_pickles_are_refused_everywhere(trained, tmp_path, capsys):
    from perplexity.runner import main as ppl_main
    from visualizations.plots import main as plots_main
    copy_of(trained, tmp_path)
    marker = tmp_path / "code_ran"
    crafted = pickle.dumps({"step": [1], "x": _Payload(marker)})
    logs = tmp_path / "logs"
    (logs / "perplexity-losses").mkdir()
    for path in ("losses/tiny.pkl", "times/tiny.pkl", "perplexity-losses/tiny.pkl"):
        (logs / path).write_bytes(crafted)
    before = snapshot(tmp_path)
    code, err = train_cli(tmp_path, capsys, "--resume", sets=["train.max_steps=8"])   # reads losses/tiny.pkl
    assert code == 1 and str(logs / "losses/tiny.pkl") in error_line(err) and "posix.system" in err
    code, err = run_cli(ppl_main, ["--compare", "tiny", "--log-dir", str(logs)], capsys)
    assert code == 1 and str(logs / "perplexity-losses/tiny.pkl") in err
    assert plots_main(["--runs", "tiny", "--log-dir", str(logs), "--out", str(tmp_path / "fig"), "--bench"]) == 1
    assert str(logs / "losses/tiny.pkl") in capsys.readouterr().err
    assert not marker.exists() and snapshot(tmp_path) == before
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": [1, 2.5, float("nan")], "b": ("x", None, True), "c": {3}}))
    assert load_plain_pickle(plain)["b"] == ("x", None, True)


# ----------------------------------------------------------------------------- 12. bad values

@pytest.mark.parametrize("value,key", [
    ("train.lr=.nan", "train.lr"), ("train.min_lr=.inf", "train.min_lr"), ("train.beta1=1", "train.beta1"),
    ("train.beta2=-0.1", "train.beta2"), ("train.weight_decay=-1", "train.weight_decay"),
    ("train.grad_clip=-1", "train.grad_clip"), ("train.warmup_steps=-5", "train.warmup_steps"),
    ("model.dropout=1.0", "model.dropout"), ("device=tpu", "device"), ("train.eval_batches=-1", "train.eval_batches"),
    ("tid.layer=2", "tid.layer")])
def test_bad_values_exit_2_naming_the_key_before_any_work(tmp_path, capsys, value, key):
    code, err = train_cli(tmp_path, capsys, sets=[value, "tid.method=attention_mass"])
    assert code == 2 and key in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_fewer_training_blocks_than_one_batch(tmp_path, capsys):
    code, err = train_cli(tmp_path, capsys, sets=["train.batch_size=5000"])
    assert code == 2 and "train.batch_size" in error_line(err) and "blocks" in err
    assert not (tmp_path / "checkpoints/tiny").exists() and not snapshot(tmp_path / "logs")   # (locks only)
