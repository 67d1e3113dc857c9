"""Nothing lost, nothing silently different: --force and convert never destroy a run, --resume refuses
another recipe, every saved byte is checked, and no input hangs a command.

As tests/test_safety.py: each case a careless user met, reproduced through the command line where
there is one, checking the exit status, the one message, and that the run's files are byte-identical.
"""

import copy
import math
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import study
from conftest import REPO, run_cli, tiny_run_config, tiny_sets
from experiment_config import ConfigError
from fileio import exclusive_lock
from models.checkpoint import CheckpointError, load_checkpoint, tensor_sha256
from run_files import lock_path
from test_safety import copy_of, error_line, train_cli
from test_safety_inference import _flip_a_weight_bit
from test_study import _study_file


def contents(*roots: Path) -> dict:
    """{file: bytes} under the roots, less lock files (a lock holds the id of its last holder)."""
    return {p: p.read_bytes() for root in roots for p in sorted(Path(root).rglob("*"))
            if p.is_file() and p.suffix != ".lock"}


def run_files_of(root: Path) -> dict:
    return contents(root / "checkpoints", root / "logs")


# ----------------------------------------------------------------------------- 1. --force checks first

@pytest.mark.parametrize("sets,code", [
    (["data.source=text", "data.path=no-such-file.txt"], 1),   # the data cannot be prepared
    (["train.batch_size=100000"], 2),                          # fewer blocks than one batch (after the data)
    (["init_from=no-such-checkpoint.pt"], 1)])                 # the model cannot be initialised
def test_force_with_a_failing_check_leaves_the_old_run_intact(trained, tmp_path, capsys, sets, code):
    copy_of(trained, tmp_path)
    before = run_files_of(tmp_path)
    assert len(before) >= 5  # last.pt, best.pt, the losses, times and csv logs
    got, err = train_cli(tmp_path, capsys, "--force", sets=sets)
    assert got == code and error_line(err)
    assert run_files_of(tmp_path) == before
    assert train_cli(tmp_path, capsys, "--force", sets=["train.max_steps=3"])[0] == 0  # a good config replaces it
    assert load_checkpoint(tmp_path / "checkpoints/tiny/last.pt")["step"] == 3


# ----------------------------------------------------------------------------- 2. convert --out

def _convert(argv) -> str:
    """models.convert's main; its exit message ("" on success)."""
    from models.convert import main as convert_main
    try:
        convert_main([str(a) for a in argv])
    except SystemExit as e:
        return str(e.code)
    return ""


def test_convert_never_writes_over_a_checkpoint_or_beside_a_live_training(trained, tmp_path, capsys):
    copy_of(trained, tmp_path)
    last, weights = tmp_path / "checkpoints/tiny/last.pt", tmp_path / "w.safetensors"
    assert _convert(["--ckpt", last, "--to", "safetensors", "--out", weights]) == ""
    kept = contents(tmp_path / "checkpoints") | {weights: weights.read_bytes()}
    for argv in (["--from", "safetensors", weights, "--out", last],            # import over the run's last.pt
                 ["--ckpt", last, "--to", "safetensors", "--out", weights]):   # export over an existing file
        message = _convert(argv)
        assert message.startswith("error: ") and f"--out {argv[-1]} already exists" in message
        assert "--overwrite" in message
    assert contents(tmp_path / "checkpoints") | {weights: weights.read_bytes()} == kept
    with exclusive_lock(lock_path(tmp_path / "checkpoints", "tiny")):  # as a training of run tiny holds it
        message = _convert(["--from", "safetensors", weights, "--out", last, "--overwrite"])
        assert "being trained" in message and "tiny.lock" in message
        message = _convert(["--from", "safetensors", weights, "--out", last.parent / "imported.pt"])
        assert "being trained" in message
    assert contents(tmp_path / "checkpoints") == {k: v for k, v in kept.items() if k != weights}
    assert _convert(["--from", "safetensors", weights, "--out", last, "--overwrite"]) == ""
    assert load_checkpoint(last)["step"] == 0  # the imported checkpoint replaced it, as asked


# ----------------------------------------------------------------------------- 3. --resume keeps the global batch

def test_resume_with_another_global_batch_is_refused_naming_both(trained, tmp_path, capsys):
    from train_state import check_resumable
    copy_of(trained, tmp_path)
    last = tmp_path / "checkpoints/tiny/last.pt"
    ckpt = load_checkpoint(last)
    assert ckpt["tokens_per_step"] == 4 * 1 * 32 * 1 and ckpt["world_size"] == 1  # batch x accum x context x world
    cfg = tiny_run_config(tmp_path, ["train.max_steps=8"])
    # two processes (torchrun --nproc_per_node=2) with the same per-process batch: twice the tokens
    with pytest.raises(ConfigError, match=r"trained with 128 tokens per step .*this run would take 256 "):
        check_resumable(ckpt, cfg, last, world=2)
    # a checkpoint from before the record, of 2 processes x batch 2: the same 128 tokens, derived
    old = {**{k: v for k, v in ckpt.items() if k != "tokens_per_step"}, "world_size": 2,
           "config": {**ckpt["config"], "train": {**ckpt["config"]["train"], "batch_size": 2}}}
    check_resumable(old, cfg, last, world=1)
    with pytest.raises(ConfigError, match=r"128 tokens per step \(2 x 1 x 32 x 2 .*256 \(4 x 1 x 32 x 2\)"):
        check_resumable(old, cfg, last, world=2)
    for sets, world in ((["train.batch_size=2"], 2), (["train.batch_size=1", "train.grad_accum=2"], 2),
                        (["train.batch_size=2", "train.grad_accum=2"], 1)):
        check_resumable(ckpt, tiny_run_config(tmp_path, ["train.max_steps=8", *sets]), last, world=world)
    before = run_files_of(tmp_path)
    for change in ("train.batch_size=8", "train.grad_accum=3"):
        code, err = train_cli(tmp_path, capsys, "--resume", sets=["train.max_steps=8", change])
        assert code == 2 and "128 tokens per step" in error_line(err) and "train.batch_size / train.grad_accum" in err
    assert run_files_of(tmp_path) == before
    code, _ = train_cli(tmp_path, capsys, "--resume", sets=["train.max_steps=8", "train.batch_size=2",
                                                            "train.grad_accum=2"])
    assert code == 0 and load_checkpoint(last)["step"] == 8 and load_checkpoint(last)["tokens_per_step"] == 128


def test_resume_under_torchrun_with_two_processes_is_refused(trained, tmp_path):
    copy_of(trained, tmp_path)
    before = run_files_of(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master-port",
           str(29700 + os.getpid() % 1000), "run_baseline.py", "--resume",
           *(a for s in [*tiny_sets(tmp_path), "train.max_steps=8", "device=cpu"] for a in ("--set", s))]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0 and "trained with 128 tokens per step" in r.stderr and "256" in r.stderr
    assert run_files_of(tmp_path) == before


# ----------------------------------------------------------------------------- 4. --resume of a finished run

def test_resume_of_a_finished_run_says_so_without_a_nan_summary(trained, tmp_path, capsys):
    copy_of(trained, tmp_path)
    before = run_files_of(tmp_path)
    code, err = train_cli(tmp_path, capsys, "--resume", sets=["train.max_steps=5"])  # the run trained 5 steps
    assert code == 0 and err.rstrip().splitlines()[-1].startswith("nothing to do: ")
    assert "step 5" in err and "finished" in err and "nan" not in err and "done tiny" not in err
    code, err = train_cli(tmp_path, capsys, "--resume", sets=["train.max_steps=3"])
    assert code == 2 and "step 5, beyond train.max_steps=3" in error_line(err) and "nan" not in err
    assert run_files_of(tmp_path) == before


# ----------------------------------------------------------------------------- 5. every saved byte is checked

def _alter_first_leaf(value):
    """`value` with its first leaf changed as a bad disk or a hand edit would: a tensor's bit, a number by
    its smallest step, a string by a character, an empty mapping given an entry."""
    if isinstance(value, torch.Tensor):
        value = value.clone()
        value.view(-1).view(torch.uint8)[0] ^= 1
        return value
    if isinstance(value, dict):
        if not value:
            return {"scale": 65536.0}
        key = sorted(value, key=repr)[0]
        return {**value, key: _alter_first_leaf(value[key])}
    if isinstance(value, (list, tuple)):
        return [_alter_first_leaf(value[0]), *value[1:]]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return math.nextafter(value, 0.0) if math.isfinite(value) else 1.0
    if isinstance(value, str):
        return value + "x"
    return 0  # None


def test_a_change_anywhere_in_a_checkpoint_is_refused_naming_the_file(trained, tmp_path):
    src = trained / "checkpoints/tiny/last.pt"
    ckpt = torch.load(src, weights_only=True)
    parts = [k for k in ckpt if not k.endswith("_sha256")]
    assert {"model", "optimizer", "scaler", "rng", "sampler", "step", "config", "best_val", "tokenizer"} <= set(parts)
    edits = {k: (lambda c, k=k: c.update({k: _alter_first_leaf(c[k])})) for k in parts}
    edits.update({  # deep, non-tensor fields a resume reads
        "sampler.pos": lambda c: c["sampler"].update(pos=c["sampler"]["pos"] + 1),
        "config.train.lr": lambda c: c["config"]["train"].update(lr=c["config"]["train"]["lr"] * 2),
        "optimizer.param_groups.lr": lambda c: c["optimizer"]["param_groups"][0].update(lr=0.5),
        "a new entry": lambda c: c.update(extra=1)})
    intact = tmp_path / "intact.pt"
    torch.save(ckpt, intact)
    assert load_checkpoint(intact)["step"] == ckpt["step"]  # saved again unchanged: accepted
    for name, edit in edits.items():
        altered = copy.deepcopy(ckpt)
        edit(altered)
        path = tmp_path / f"{name}.pt"
        torch.save(altered, path)
        why = "is not a checkpoint of this project" if name == "format" else "is corrupted"
        with pytest.raises(CheckpointError, match=re.escape(f"{path} {why}")):
            load_checkpoint(path)
    with zipfile.ZipFile(src) as z:
        records = [i for i in z.infolist() if "/data/" in i.filename]
    assert len(records) > len(ckpt["model"]) / 2  # the optimizer's and the RNG's tensors as well as the weights
    for n in range(len(records)):
        path = tmp_path / f"flipped-{n}.pt"
        _flip_a_weight_bit(src, path, record=n)
        with pytest.raises(CheckpointError, match=re.escape(f"{path} is corrupted")):
            load_checkpoint(path)


def test_a_checkpoint_from_before_the_full_hash_is_checked_on_its_weights(trained, tmp_path):
    ckpt = torch.load(trained / "checkpoints/tiny/last.pt", weights_only=True)
    old = {k: v for k, v in ckpt.items() if k != "state_sha256"}
    old["tensor_sha256"] = tensor_sha256(old)
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["step"] == ckpt["step"]
    old["model"]["tok_emb.weight"].view(-1)[3] += 1.0
    torch.save(old, tmp_path / "old-changed.pt")
    with pytest.raises(CheckpointError, match="old-changed.pt is corrupted"):
        load_checkpoint(tmp_path / "old-changed.pt")


# ----------------------------------------------------------------------------- 6. cached token ids

def test_cached_ids_outside_the_vocabulary_are_found_before_training(trained, tmp_path, capsys):
    copy_of(trained, tmp_path)
    (cache,) = [d for d in (tmp_path / "data/processed").iterdir() if d.is_dir()]
    stream = cache / "train.bin"
    data = bytearray(stream.read_bytes())
    data[-2:] = b"\xff\xff"  # the last token id becomes 65535 (vocab 384); size and mtime aside, as a bad disk
    stream.write_bytes(bytes(data))
    code, err = train_cli(tmp_path, capsys, "--run-name", "fresh")
    line = error_line(err)
    assert code == 1 and f"data cache {cache} is corrupted" in line and "train.bin" in line
    assert "65535" in line and "python prepare_data.py" in line and "--force" in line
    assert not (tmp_path / "checkpoints/fresh").exists()


# ----------------------------------------------------------------------------- 7. nothing hangs

class _Hung(Exception):
    pass


def _within(seconds: int, fn):
    """fn(), or _Hung if it is still running after `seconds` (as a user would give up on it)."""
    def on_alarm(*_):
        raise _Hung(f"still running after {seconds}s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_a_data_path_that_is_not_a_regular_file_is_refused(tmp_path, capsys, kind):
    path = {"device": Path("/dev/zero"), "fifo": tmp_path / "pipe", "folder": tmp_path / "texts"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
        (path / "a.txt").write_text("one story\n")
    if not path.exists():
        pytest.skip(f"{path} does not exist here")
    code, err = _within(30, lambda: train_cli(tmp_path, capsys, sets=["data.source=text", f"data.path={path}"]))
    assert code == 1 and f"data.path {path} is not a regular file" in error_line(err)


def test_a_kv_cache_that_would_not_fit_is_refused_up_front_with_its_size(trained, capsys, monkeypatch):
    import models
    import modelskv.load
    import runtime
    from generators.generate import main as gen_main
    ckpt_path = trained / "checkpoints/tiny/last.pt"
    cfg = models.ModelConfig(**load_checkpoint(ckpt_path)["config"]["model"])
    beams = 10**9
    head_dim = cfg.d_model // cfg.n_heads
    cache = cfg.n_layers * 2 * beams * cfg.n_heads * cfg.context * head_dim * 4  # k and v per layer, fp32
    code, err = _within(60, lambda: run_cli(gen_main, ["--ckpt", str(ckpt_path), "--prompt", "Once", "--beam",
                                                       str(beams), "--device", "cpu"], capsys))
    line = error_line(err)
    assert code == 1 and f"a KV cache for {beams:,} sequences x {cfg.context} positions" in line
    assert f"({cache / 2**30:,.2f} GiB, with" in line and "GiB free on cpu" in line
    # the limit is the weights and the caches together, against the memory free
    weights = sum(p.numel() for p in models.build(cfg).parameters()) * 4
    need = cfg.n_layers * 2 * 3 * cfg.n_heads * cfg.context * head_dim * 4 + weights
    monkeypatch.setattr(runtime, "free_memory", lambda device: need - 1)
    with pytest.raises(ValueError, match="a KV cache for 3 sequences"):
        modelskv.load.load_model(ckpt_path, max_batch=3, device="cpu")
    monkeypatch.setattr(runtime, "free_memory", lambda device: need)
    assert modelskv.load.load_model(ckpt_path, max_batch=3, device="cpu").model.max_batch == 3


def test_a_perplexity_batch_whose_logits_would_not_fit_is_refused(trained, tmp_path, capsys, monkeypatch):
    import runtime
    from perplexity.runner import main as ppl_main
    argv = ["--ckpt", str(trained / "checkpoints/tiny/last.pt"), "--batch-size", "10", "--rows", "40",
            "--log-dir", str(tmp_path / "logs"), "--quiet", "--device", "cpu"]
    logits = 10 * 32 * 384 * (4 + 4)  # windows x context x vocab, fp32 logits and cross-entropy's fp32 copy
    monkeypatch.setattr(runtime, "free_memory", lambda device: logits - 1)
    code, err = run_cli(ppl_main, argv, capsys)
    assert code == 1 and "a batch of 10 windows x 32 positions x 384 logits needs" in error_line(err)
    assert "--batch-size" in err and not (tmp_path / "logs").exists()
    monkeypatch.setattr(runtime, "free_memory", lambda device: logits)
    assert run_cli(ppl_main, argv, capsys)[0] == 0


# ----------------------------------------------------------------------------- 8. a study runs only the project's runners

RUNNERS = ["run_baseline.py", "run_condor.py", "run_falcon.py", "run_tid.py"]  # DESIGN.md section 1


@pytest.mark.parametrize("runner", ["study.py", "run_study.py", "../run_tid.py", "/bin/sh", "tests/run_x.py",
                                    "run_nothing.py", "crafted"])
def test_a_study_runner_must_be_one_of_the_projects_runners(tmp_path, monkeypatch, runner):
    monkeypatch.chdir(REPO)
    if runner == "crafted":  # a script that looks like a runner, outside the project
        runner = str(tmp_path / "run_mine.py")
        Path(runner).write_text('import os\nos.system("touch hacked")\nmain(default_config="configs/tid.yaml")\n')
    path = _study_file(tmp_path, {"baseline": {"runner": "run_tid.py"}, "other": {"runner": runner}})
    with pytest.raises(ConfigError) as e:
        study.load_study(path)
    assert f"arm 'other': runner {runner!r} is not one of the project's runners {RUNNERS}" in str(e.value)


def test_a_study_runner_may_be_named_from_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _study_file(tmp_path, {"baseline": {"runner": "./run_tid.py"}, "dense": {"runner": "run_baseline.py"}})
    assert [a.runner for a in study.load_study(path).arms] == ["run_tid.py", "run_baseline.py"]
