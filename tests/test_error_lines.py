"""Every failure ends in one `error:` line naming the file or key and the fix, exit status 1 or 2, and
nothing written half-way: unwritable output folders, a full disk, malformed inputs, files from elsewhere.

Tests run as root, where a read-only folder can still be written: a refused or full write is made by
raising the OSError the operating system would raise from the write."""

import errno
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

import generic_runner
import study
import study_report
import study_runner
import train_logs
from conftest import REPO, run_cli, tiny_sets
from experiment_config import MAX_RUN_NAME_BYTES, ConfigError, check_run_name
from fileio import UnsafeFileError
from models.checkpoint import load_checkpoint


def _train(capsys, sets, *flags):
    argv = [*(a for s in sets for a in ("--set", s)), *flags]
    return run_cli(lambda a: generic_runner.main(str(REPO / "configs/baseline.yaml"), a), argv, capsys)


def _the_error(code: int, err: str, expected_code: int) -> str:
    """The single `error:` line of a command's stderr (progress bars may precede it)."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == expected_code and len(errors) == 1, (code, err[-2000:])
    assert "Traceback" not in err and err.rstrip().endswith(errors[0])
    return errors[0]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- output folders

@pytest.mark.parametrize("key", ["checkpoint_dir", "log_dir", "data_dir"])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, key):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("not a folder")
    line = _the_error(*_train(capsys, [*tiny_sets(tmp_path), f"{key}={in_the_way}"]), 1)
    assert line.startswith(f"error: {key}={in_the_way}: ") or line.startswith(f"error: {key}: ")
    assert f"{in_the_way} is a file, not a folder" in line and f"--set {key}=DIR" in line
    assert in_the_way.read_text() == "not a folder"
    # nothing but the run's lock files (held while the data is prepared) was written
    assert [p for p in _files(tmp_path) if p.suffix != ".lock"] == [in_the_way]


@pytest.mark.parametrize("key, folder", [("checkpoint_dir", "checkpoints"), ("log_dir", "logs"), ("data_dir", "data")])
def test_a_folder_that_refuses_writes_is_named_with_its_key(tmp_path, capsys, monkeypatch, key, folder):
    refused, real_mkstemp = tmp_path / folder, tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # as a read-only folder answers a non-root user
        if dir is not None and Path(dir).is_relative_to(refused):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(Path(dir) / "x.tmp"))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    line = _the_error(*_train(capsys, tiny_sets(tmp_path)), 1)
    assert line.startswith(f"error: {key}") and f"cannot write in {refused}" in line
    assert "permission denied: make the folder writable or use another one" in line
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_a_full_disk_while_building_the_data_names_the_folder_and_leaves_no_cache(tmp_path, capsys, monkeypatch):
    import dataset_definitions.prepare as prepare
    from prepare_data import main as prepare_main

    def encode_on_a_full_disk(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a file object's write names no file

    monkeypatch.setattr(prepare, "_encode_split", encode_on_a_full_disk)
    argv = [*(a for s in tiny_sets(tmp_path) for a in ("--set", s))]
    line = _the_error(*run_cli(prepare_main, argv, capsys), 1)
    processed = tmp_path / "data" / "processed"
    assert line.startswith(f"error: data: cannot write in {processed}: the disk is full") and "removed" in line
    assert [p.name for p in processed.iterdir() if p.is_dir()] == []


def test_a_cache_in_a_read_only_data_dir_is_still_read(tmp_path, monkeypatch):
    from conftest import prepare_run, tiny_run_config

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Line {i} of a tale about {i % 5} owls.\n" for i in range(300)))
    cfg = tiny_run_config(tmp_path, ["data.source=text", f"data.path={corpus}", "data.train_rows=null",
                                     "tokenizer.vocab_size=300"])
    built = prepare_run(cfg, log=lambda *a: None)
    os.utime(corpus, ns=(0, 10**18))                 # a new mtime: the hash memo would be rewritten
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).is_relative_to(tmp_path / "data"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    assert prepare_run(cfg, log=lambda *a: None).dir == built.dir


def _resumable_copy(trained: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the 5-step trained run and the SHA-256 of its last.pt."""
    root = tmp_path / "run"
    shutil.copytree(trained, root)
    return root, _sha(root / "checkpoints/tiny/last.pt")


def _torch_save_on_a_full_disk(obj, f, *args, **kwargs):
    """What torch.save does when the disk fills: the write's OSError, then torch's own RuntimeError."""
    f.write(b"PK\x03\x04" + bytes(100))
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def test_a_full_disk_while_saving_a_checkpoint_keeps_and_names_the_last_good_one(trained, tmp_path, capsys,
                                                                                   monkeypatch):
    root, last_sha = _resumable_copy(trained, tmp_path)
    monkeypatch.setattr(torch, "save", _torch_save_on_a_full_disk)
    line = _the_error(*_train(capsys, tiny_sets(root), "--resume"), 1)
    ckpts = root / "checkpoints/tiny"
    assert re.search(rf"cannot write {ckpts}/(best|last)\.pt: the disk is full", line), line
    assert f"{ckpts / 'last.pt'} (step 5) is the last good checkpoint" in line and "--resume" in line
    monkeypatch.undo()
    assert _sha(ckpts / "last.pt") == last_sha and load_checkpoint(ckpts / "last.pt")["step"] == 5
    assert not [p for p in ckpts.iterdir() if p.suffix == ".tmp"]


def test_a_full_disk_while_writing_logs_names_the_log_and_the_last_good_checkpoint(trained, tmp_path, capsys,
                                                                                     monkeypatch):
    root, last_sha = _resumable_copy(trained, tmp_path)
    losses = root / "logs/losses/tiny.pkl"
    losses_sha, real_write = _sha(losses), train_logs.atomic_write

    def atomic_write(path, data):
        if Path(path).suffix == ".pkl":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(train_logs, "atomic_write", atomic_write)
    line = _the_error(*_train(capsys, tiny_sets(root), "--resume"), 1)
    assert f"cannot write {losses}: the disk is full" in line
    assert f"{root / 'checkpoints/tiny/last.pt'} (step 5) is the last good checkpoint" in line
    assert _sha(losses) == losses_sha and _sha(root / "checkpoints/tiny/last.pt") == last_sha


def test_a_csv_row_is_appended_whole_or_not_at_all(tmp_path, monkeypatch):
    logger = train_logs.RunLogger("r", tmp_path, meta={})
    for step in (1, 2):
        logger.log_step(step, 2.5, 1e-3, 0.5, 0.1, 64, float(step), {"x": 1.0})
    before = logger.paths["csv"].read_bytes()   # header + step 1 (step 2 waits for its eval columns)
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        logger.log_step(3, 2.4, 1e-3, 0.5, 0.1, 64, 3.0, {"x": 1.0})
    monkeypatch.undo()
    assert logger.paths["csv"].read_bytes() == before
    assert [r.split(",")[0] for r in before.decode().splitlines()] == ["step", "1"]


# ----------------------------------------------------------------------------- malformed inputs

@pytest.mark.parametrize("content, expected", [
    (b"\x7fELF\x02\x01\x01\x00\xd0\xff\xfe" + bytes(range(256)), "is not a text file (byte 8 is not UTF-8)"),
    (b"- a list\n- not a mapping\n", "must hold a mapping of keys, got list"),
], ids=["binary", "list"])
@pytest.mark.parametrize("kind", ["config", "study"])
def test_a_yaml_file_that_is_binary_or_not_a_mapping_is_named(tmp_path, capsys, kind, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    if kind == "config":
        code, err = _train(capsys, tiny_sets(tmp_path), "--config", str(path))
    else:
        code, err = run_cli(study_runner.main, ["--study", str(path)], capsys)
    line = _the_error(code, err, 2)
    assert line.startswith(f"error: {kind} file {path} ") and expected in line
    assert _files(tmp_path) == [path]


def test_a_run_name_longer_than_its_files_can_be_named_is_refused(tmp_path, capsys):
    longest = "r" * MAX_RUN_NAME_BYTES
    check_run_name(longest)
    # every file named after the longest run name fits this file system (the atomic write's temporary first)
    for name in (f".{longest}.pkl.abcdefgh.tmp", f"{longest}.lock", f"{longest}.csv"):
        (tmp_path / name).touch()
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    line = _the_error(*_train(capsys, tiny_sets(tmp_path), "--run-name", longest + "r"), 2)
    assert f"run_name is {MAX_RUN_NAME_BYTES + 1} bytes long" in line and "shorter --run-name" in line
    assert _files(tmp_path) == []


def test_a_study_whose_run_names_would_be_too_long_names_the_arm(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = tmp_path / "s.yaml"
    arm = "a" * MAX_RUN_NAME_BYTES
    path.write_text(yaml.safe_dump({"seeds": [1], "arms": {"base": {"runner": "run_tid.py"},
                                                            arm: {"runner": "run_tid.py"}}}))
    with pytest.raises(ConfigError, match=f"study file {path}, arm '{arm}': run_name is .* bytes long"):
        study.resolve_runs(study.load_study(path), [], tiny_sets(tmp_path))


# ----------------------------------------------------------------------------- files from elsewhere

def test_an_hf_folder_with_only_pickle_weights_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    from models.convert import main as convert_main

    folder = tmp_path / "hf"
    config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=1, n_head=4)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    weights = folder / "model.safetensors"   # as a folder from elsewhere may hold it: pickled weights only
    from safetensors.torch import load_file
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    out = tmp_path / "imported.pt"
    with pytest.raises(SystemExit) as e:
        convert_main(["--from", "hf", str(folder), "--out", str(out)])
    assert str(e.value.code).startswith(f"error: {folder / 'pytorch_model.bin'} is in PyTorch's pickle format")
    assert "convert it to safetensors" in str(e.value.code) and not out.exists()


@pytest.mark.parametrize("metadata", [
    {"config": json.dumps({"n_embd": 32, "n_layer": 2})},            # another library's config
    {"config": "{not json"},
    {"config": json.dumps([1, 2, 3])},
    {"config": json.dumps({"d_model": "wide"})},
    {"config": json.dumps({"vocab_size": 8}), "tokenizer": json.dumps(["not", "a", "spec"])},
])
def test_safetensors_whose_metadata_is_not_our_config_is_refused(tmp_path, metadata):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    from models.convert import main as convert_main

    path, out = tmp_path / "w.safetensors", tmp_path / "imported.pt"
    save_file({"tok_emb.weight": torch.zeros(8, 4)}, str(path), metadata=metadata)
    with pytest.raises(SystemExit) as e:
        convert_main(["--from", "safetensors", str(path), "--out", str(out)])
    message = str(e.value.code)
    assert message.startswith(f"error: {path}: its metadata ") and "of ours" in message and not out.exists()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("crafted, expected", [
    ("code", "holds more than tensors and plain data (it names "),
    ("no_config", "is not a checkpoint of this project (no 'tokenizer' spec)"),
    ("foreign_config", "is not a checkpoint of this project (its model config is not one of ours"),
])
def test_the_decode_benchmark_refuses_a_crafted_checkpoint(tmp_path, capsys, crafted, expected):
    from benchmarks import decode_speed

    marker, path = tmp_path / "code_ran", tmp_path / "crafted.pt"
    weights = {"tok_emb.weight": torch.zeros(8, 4)}
    torch.save({"code": {"format": 1, "model": weights, "hook": _RunsCode(marker)},
                "no_config": {"format": 1, "model": weights},
                "foreign_config": {"format": 1, "model": weights, "tokenizer": {"kind": "bpe"},
                                   "config": {"model": {"n_embd": 4}}}}[crafted], path)
    line = _the_error(*run_cli(decode_speed.main, ["--ckpt", str(path), "--device", "cpu"], capsys), 1)
    assert line.startswith(f"error: {path} ") and expected in line and not marker.exists()


@pytest.mark.parametrize("content, expected", [
    ([1.0, 2.0], "it holds a list, not a dict of log entries"),
    ({"step": [1]}, "'meta' is missing or not a dict"),
    ({"meta": {}, "step": [1], "train_loss": [2.0], "lr": [1e-3], "grad_norm": [1.0], "stats": {}, "val": []},
     "'val' is missing or not a dict"),
    ({"meta": {}, "step": [1], "train_loss": [2.0], "lr": [1e-3], "grad_norm": [1.0], "stats": {},
      "val": {"step": [1], "loss": 2.0, "bpb": [1.0], "stats": {}}}, "'val.loss' is missing or not a list"),
])
def test_load_losses_refuses_a_log_of_another_shape_as_the_other_readers_do(trained, tmp_path, content, expected):
    assert train_logs.load_losses("tiny", trained / "logs")["step"][-1] == 5    # a real log loads
    path = tmp_path / "losses" / "crafted.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(UnsafeFileError) as e:
        train_logs.load_losses("crafted", tmp_path)
    assert str(e.value) == f"{path} is not a readable log pickle ({expected})"


def test_load_times_refuses_a_log_of_another_shape(tmp_path):
    path = tmp_path / "times" / "crafted.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"step": [1], "step_time": [0.1], "tokens_per_s": [9.0], "elapsed": [0.1]}))
    with pytest.raises(UnsafeFileError, match=r"not a readable log pickle \('total_elapsed' is missing or not a number\)"):
        train_logs.load_times("crafted", tmp_path)


def _scored_study(tmp_path) -> tuple[list[str], list]:
    """A two-arm study whose runs are recorded as trained and scored (nothing to train): argv, runs."""
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump({"seeds": [1], "reference": "base", "arms": {
        "base": {"runner": "run_tid.py", "set": {"tid.method": "none"}},
        "random": {"runner": "run_tid.py", "set": {"tid.method": "random"}}}}))
    sets = [s for s in tiny_sets(tmp_path) if not s.startswith("run_name=")]
    argv = ["--study", str(path), "--out", str(tmp_path / "out"), *(a for s in sets for a in ("--set", s))]
    s = study.load_study(path)
    s.out_dir = tmp_path / "out"
    runs = study.resolve_runs(s, [], sets)
    (s.dir / "runs").mkdir(parents=True)
    for run in runs:
        study_runner._write_record(run, "scored")
    return argv, runs


def test_the_study_report_refuses_a_crafted_log_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    argv, runs = _scored_study(tmp_path)
    marker = tmp_path / "code_ran"
    path = Path(runs[0].cfg.log_dir) / "losses" / f"{runs[0].name}.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps({"meta": _RunsCode(marker)}))
    line = _the_error(*run_cli(study_runner.main, argv, capsys), 1)
    assert line.startswith(f"error: {path} holds more than plain lists, dicts and numbers")
    assert "refusing to load it" in line and "rerun the same command" in line and not marker.exists()
    assert not (tmp_path / "out" / "summary.json").exists()


def test_the_study_report_refuses_perplexities_that_are_not_numbers(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    _, runs = _scored_study(tmp_path)
    path = Path(runs[0].cfg.log_dir) / "perplexity-losses" / f"{runs[0].name}.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps([12.5, "13.1", 9.0]))
    with pytest.raises(UnsafeFileError, match=r"not a readable log pickle \(it holds '13.1' among its numbers\)"):
        study_report.row_nll(runs[0])
    path.write_bytes(pickle.dumps([12.5, 13.0, 9.0]))
    assert study_report.row_nll(runs[0]).tolist() == pytest.approx([math.log(12.5), math.log(13.0), math.log(9.0)])
