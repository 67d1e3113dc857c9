"""The data pipeline: sources, splits, packing, caching and the bad inputs it must survive."""

import ast
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from conftest import REPO, prepare_run, tiny_run_config, tiny_sets
from dataset_definitions.config import DataConfig, TokenizerConfig
from dataset_definitions.datasets import BlockSampler, TokenBlocks
from dataset_definitions.dialogue import iter_dialogues, split_last_turn
from dataset_definitions.prepare import data_key
from dataset_definitions.sources import DataError, iter_rows
from prepare_data import main as prepare_main


def _quiet(*args):
    pass


def _docs(prepared, split):
    """Split a packed stream back into documents (text), using the eos separators."""
    tok = prepared.tokenizer
    stream = prepared.tokens(split).tolist()
    docs, cur = [], []
    for t in stream:
        if t == tok.eos_id:
            docs.append(tok.decode(cur))
            cur = []
        elif t != tok.bos_id:
            cur.append(t)
    return docs


# ----------------------------------------------------------------------------- packing and views

def test_windows_shift_targets_by_one():
    tokens = np.arange(100, dtype=np.uint16)
    blocks = TokenBlocks(tokens, context=8)
    x, y = blocks.batch(np.arange(len(blocks)))
    assert (y[:, :-1] == x[:, 1:]).all()
    assert (y == x + 1).all()                     # y is the next token of the stream
    assert x[1, 0] == 8 and len(blocks) == (100 - 9) // 8 + 1
    # stride == context: every token after the first is a target exactly once
    targets = y.flatten().tolist()
    assert len(set(targets)) == len(targets)


def test_overlapping_stride():
    blocks = TokenBlocks(np.arange(50, dtype=np.uint16), context=8, stride=4)
    x, _ = blocks.batch(np.array([0, 1, 2]))
    assert x[:, 0].tolist() == [0, 4, 8] and len(blocks) == (50 - 9) // 4 + 1


def test_prepared_stream_is_bos_doc_eos_and_initial_loss_scale(tmp_path):
    cfg = tiny_run_config(tmp_path)
    prepared = prepare_run(cfg, log=_quiet)
    tok = prepared.tokenizer
    first_row = prepared.rows("val")[0]
    stream = prepared.tokens("val")
    n = len(tok.encode(first_row))
    assert stream[0] == tok.bos_id and stream[n + 1] == tok.eos_id
    assert tok.decode(stream[1:n + 1].tolist()) == first_row
    x, y = prepared.blocks("train", cfg.model.context).batch(np.arange(4))
    assert (y[:, :-1] == x[:, 1:]).all() and int(x.max()) < tok.vocab_size


def test_sampler_resumes_exactly_and_ranks_partition_the_global_batch():
    a = BlockSampler(50, 4, seed=3)
    first = [a.next_indices() for _ in range(7)]
    b = BlockSampler(50, 4, seed=3)
    b.load_state_dict({"epoch": 0, "pos": 0})
    for _ in range(3):
        b.next_indices()
    state = b.state_dict()
    c = BlockSampler(50, 4, seed=3)
    c.load_state_dict(state)
    assert all((c.next_indices() == f).all() for f in first[3:])   # crosses an epoch boundary too
    one = BlockSampler(50, 8, seed=5)
    r0, r1 = BlockSampler(50, 4, seed=5, rank=0, world_size=2), BlockSampler(50, 4, seed=5, rank=1, world_size=2)
    for _ in range(10):
        assert (one.next_indices() == np.concatenate([r0.next_indices(), r1.next_indices()])).all()


def test_document_rows_pad_each_document_and_cut_long_ones():
    from dataset_definitions.datasets import DocumentRows
    BOS, EOS, PAD = 1, 2, 0
    docs = [[BOS, 5, 6, EOS], [BOS, 7, 8, 9, 10, 11, 12, EOS]]                # lengths 4 and 8
    rows = DocumentRows(np.array(sum(docs, []), dtype=np.uint16), context=4, eos_id=EOS, pad_id=PAD)
    assert len(rows) == 3                                                   # 1 + ceil((8 - 1) / 4)
    x, y = rows.batch(np.arange(3))
    assert x.tolist() == [[BOS, 5, 6, EOS], [BOS, 7, 8, 9], [10, 11, 12, EOS]]   # eos's target is padding
    x, y = DocumentRows(np.array([BOS, 5, EOS], dtype=np.uint16), context=4, eos_id=EOS, pad_id=PAD).batch(np.arange(1))
    assert (x.tolist(), y.tolist()) == ([[BOS, 5, EOS, PAD]], [[5, EOS, -100, -100]])
    x, y = rows.batch(np.arange(3))
    assert y.tolist() == [[5, 6, EOS, -100], [7, 8, 9, 10], [11, 12, EOS, -100]]
    # every next-token target of every document appears exactly once
    targets = sorted(t for t in y.flatten().tolist() if t != -100)
    assert targets == sorted(t for d in docs for t in d[1:])


# ----------------------------------------------------------------------------- splits

def test_heldout_disjoint_from_train_even_with_duplicate_rows(tmp_path):
    rows = [f"story number {i % 30} about a cat and a dog." for i in range(300)]  # each text 10 times
    path = tmp_path / "dups.txt"
    path.write_text("\n".join(rows))
    cfg = tiny_run_config(tmp_path, ["data.source=text", f"data.path={path}", "data.heldout_rows=5",
                                     "data.val_rows=5", "data.train_rows=null", "tokenizer.vocab_size=300"])
    prepared = prepare_run(cfg, log=_quiet)
    heldout, val, train = prepared.rows("heldout"), prepared.rows("val"), _docs(prepared, "train")
    assert len(heldout) == 5 and len(val) == 5
    digest = lambda t: hashlib.sha256(t.encode()).digest()
    assert not {digest(t) for t in train} & {digest(t) for t in heldout + val}
    assert not set(heldout) & set(val)
    assert sum(prepared.meta["dedup"]["removed"]["exact"].values()) > 0
    # train keeps its own repeats (data.dedup=none): each of the 20 texts not held out, 10 times
    assert sorted(Counter(train).values()) == [10] * 20 and not set(train) & set(heldout + val)


def test_builtin_split_sizes_and_saved_heldout_text(tmp_path):
    cfg = tiny_run_config(tmp_path)
    prepared = prepare_run(cfg, log=_quiet)
    splits = prepared.meta["splits"]
    assert (splits["heldout"]["rows"], splits["val"]["rows"], splits["train"]["rows"]) == (40, 40, 400)
    assert len(prepared.rows("heldout")) == 40 and all(prepared.rows("heldout"))


# ----------------------------------------------------------------------------- cache

def test_cache_hit_miss_force_and_verify(tmp_path, capsys):
    cfg = tiny_run_config(tmp_path)
    first = prepare_run(cfg, log=_quiet)
    built_at = (first.dir / "meta.json").stat().st_mtime_ns
    again = prepare_run(cfg, log=print)
    assert again.dir == first.dir and "cached" in capsys.readouterr().out
    assert (again.dir / "meta.json").stat().st_mtime_ns == built_at          # nothing rebuilt
    other = prepare_run(tiny_run_config(tmp_path, ["data.val_rows=30"]), log=_quiet)
    assert other.dir != first.dir                                            # a changed config: new dir
    assert prepare_run(tiny_run_config(tmp_path, ["model.context=16"]), log=_quiet).dir == first.dir
    forced = prepare_run(cfg, force=True, log=_quiet)
    assert forced.dir == first.dir and (forced.dir / "meta.json").stat().st_mtime_ns != built_at
    prepare_run(cfg, verify=True, log=_quiet)                                # intact: passes
    # flip one byte in the middle of the train stream: same size, so only --verify can see it
    path = forced.dir / "train.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    prepare_run(cfg, log=_quiet)                                             # cheap check: sizes agree
    with pytest.raises(DataError, match="train.bin.*--force"):
        prepare_run(cfg, verify=True, log=_quiet)
    assert (forced.dir / "train.bin").exists()                               # nothing deleted


def test_data_key_is_the_key_earlier_versions_gave(tmp_path, monkeypatch):
    # keys recorded from the code that took the whole run config: the same settings find the same cache
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("one story\ntwo story\n")
    (tmp_path / "tok.json").write_text('{"fixed": 1}')
    builtin = DataConfig(source="builtin", train_rows=400, val_rows=40, heldout_rows=40)
    assert data_key(builtin, TokenizerConfig(kind="bpe", vocab_size=384), "data") == "e61cc48098374bd7"
    text = DataConfig(source="text", path="corpus.txt", val_rows=1, heldout_rows=0)
    word = TokenizerConfig(kind="word", path="tok.json", vocab_size=100)
    assert data_key(text, word, "data") == "c9f90c2ebe495786"
    # views of the stream and settings the source ignores stay out of the key; the file's content does not
    assert data_key(replace(text, stride=3, packing="pad", name="x"), word, "data") == "c9f90c2ebe495786"
    (tmp_path / "corpus.txt").write_text("one story\ntwo storm\n")
    assert data_key(text, word, "data") != "c9f90c2ebe495786"


FORBIDDEN_IN_DATA = ("models", "modelskv", "experiment_config", "generic_runner", "tid", "optimizers", "train_logs")


def test_dataset_definitions_imports_no_model_config_or_trainer_code():
    # data sits below the models and the trainer (no cycle data -> config -> models): import every module of
    # the package in a fresh interpreter and look at what came with it
    files = sorted((REPO / "dataset_definitions").glob("*.py"))
    modules = [f"dataset_definitions.{p.stem}" for p in files if p.stem != "__init__"]
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert set(modules) <= set(loaded)
    assert [m for m in loaded if m.split(".")[0] in FORBIDDEN_IN_DATA] == []
    # nor inside a function, where importing the module would not reach it
    imported = {(p.name, name.split(".")[0]) for p in files for node in ast.walk(ast.parse(p.read_text()))
                for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                             [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])}
    assert [(f, m) for f, m in sorted(imported) if m in FORBIDDEN_IN_DATA] == []


def test_truncated_cache_is_refused_and_no_temp_dir_is_left(tmp_path):
    cfg = tiny_run_config(tmp_path)
    prepared = prepare_run(cfg, log=_quiet)
    with open(prepared.dir / "val.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match="size differs"):
        prepare_run(cfg, log=_quiet)
    assert not [p for p in prepared.dir.parent.iterdir() if p.name.startswith(".tmp")]


def test_failed_build_leaves_nothing_that_looks_valid(tmp_path, monkeypatch):
    import dataset_definitions.prepare as prep
    cfg = tiny_run_config(tmp_path)

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(prep, "_encode_split", boom)
    with pytest.raises(RuntimeError):
        prepare_run(cfg, log=_quiet)
    assert not [p for p in (tmp_path / "data" / "processed").iterdir() if p.is_dir()]  # (the key's lock file stays)


def test_cli_verify_fails_loudly(tmp_path, capsys):
    sets = [f"data_dir={tmp_path / 'data'}", f"tokenizer_dir={tmp_path / 'tok'}", "data.train_rows=200",
            "data.val_rows=20", "data.heldout_rows=20", "tokenizer.vocab_size=300"]
    argv = ["--config", "configs/quickstart.yaml"] + [a for s in sets for a in ("--set", s)]
    prepare_main(argv)
    out = capsys.readouterr().out
    assert "train" in out and "tokens" in out
    meta = json.loads(next((tmp_path / "data" / "processed").glob("*/meta.json")).read_text())
    assert meta["splits"]["train"]["rows"] == 200 and sorted(meta["files"]) == ["heldout.bin", "heldout.jsonl", "train.bin", "val.bin", "val.jsonl"]
    bin_path = next((tmp_path / "data" / "processed").glob("*/heldout.bin"))
    data = bytearray(bin_path.read_bytes())
    data[3] ^= 1
    bin_path.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as e:
        prepare_main(argv + ["--verify"])
    assert e.value.code == 1 and "heldout.bin" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sources

def test_hf_load_dataset_on_a_local_folder(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    with open(folder / "train.jsonl", "w") as f:
        for i in range(120):
            f.write(json.dumps({"story": f"Tom found {i} red apples in the garden.", "id": i}) + "\n")
    rows = list(iter_rows(DataConfig(source="hf", name=str(folder), text_field="story"), Counter()))
    assert len(rows) == 120 and rows[7] == "Tom found 7 red apples in the garden."
    # the builder + data_files form of the same call, and a hard row limit
    cfg = DataConfig(source="hf", name="json", path=str(folder / "*.jsonl"), text_field="story")
    assert list(iter_rows(cfg, Counter(), limit=5)) == rows[:5]
    # and end to end through prepare_run
    run = tiny_run_config(tmp_path, ["data.source=hf", f"data.name={folder}", "data.text_field=story",
                                     "data.heldout_rows=10", "data.val_rows=10", "data.train_rows=null",
                                     "tokenizer.vocab_size=300", "model.context=8"])
    assert prepare_run(run, log=_quiet).meta["splits"]["train"]["rows"] == 100


def test_hf_offline_or_unknown_dataset_is_one_clear_error(tmp_path, monkeypatch):
    # the libraries read these at import time, so set both the environment and their constants
    import datasets
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    cfg = DataConfig(source="hf", name="someone/no-such-dataset-xyz")
    with pytest.raises(DataError, match="no-such-dataset-xyz.*data.source=text"):
        next(iter_rows(cfg, Counter()))


def test_text_delimiter_and_jsonl_field(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("First story.\nStill first.<|endoftext|>Second story.<|endoftext|>  <|endoftext|>Third.")
    skipped = Counter()
    rows = list(iter_rows(DataConfig(source="text", path=str(path), delimiter="<|endoftext|>"), skipped))
    assert rows == ["First story.\nStill first.", "Second story.", "Third."] and skipped["empty or not text"] == 1
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"body": "one"}\n{"body": "two"}\n')
    assert list(iter_rows(DataConfig(source="jsonl", path=str(jl), text_field="body"), Counter())) == ["one", "two"]


def test_bad_rows_are_skipped_and_counted(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"good row one\n   \n\nbad \xff\xfe bytes\ngood row two\n\t\n")
    skipped = Counter()
    rows = list(iter_rows(DataConfig(source="text", path=str(path)), skipped))
    assert rows == ["good row one", "good row two"]
    assert skipped["invalid UTF-8"] == 1 and skipped["empty or not text"] == 3
    jl = tmp_path / "mixed.jsonl"
    jl.write_bytes(b'{"text": "fine"}\nnot json\n{"text": "  "}\n{"text": "caf\xe9"}\n{"text": 3}\n')
    skipped = Counter()
    assert list(iter_rows(DataConfig(source="jsonl", path=str(jl)), skipped)) == ["fine"]
    assert skipped == Counter({"invalid JSON": 1, "empty or not text": 2, "invalid UTF-8": 1})


def test_skipped_rows_reach_the_summary(tmp_path):
    path = tmp_path / "mixed.txt"
    lines = [f"line {i} of a small text about birds." for i in range(120)] + ["", "   ", "x\udcff"]
    path.write_bytes("\n".join(lines[:-1]).encode() + b"\nbad \xff\n")
    cfg = tiny_run_config(tmp_path, ["data.source=text", f"data.path={path}", "data.heldout_rows=10",
                                     "data.val_rows=10", "data.train_rows=null", "tokenizer.vocab_size=300"])
    meta = prepare_run(cfg, log=_quiet).meta
    assert meta["skipped"]["invalid UTF-8"] == 1 and meta["skipped"]["empty or not text"] == 2


@pytest.mark.parametrize("sets, match", [
    (["data.source=text", "data.path=/nonexistent/file.txt"], "not found"),
    (["data.source=jsonl", "data.path=FIELD", "data.text_field=content"], "no field 'content'"),
    (["data.train_rows=5", "data.heldout_rows=10", "data.val_rows=10", "data.source=text", "data.path=SMALL"],
     "lower them"),
    (["tokenizer.vocab_size=100"], "vocab"),
])
def test_bad_inputs_get_a_clear_error(tmp_path, sets, match):
    field = tmp_path / "f.jsonl"
    field.write_text('{"text": "hello there"}\n')
    small = tmp_path / "small.txt"
    small.write_text("\n".join(f"row {i}" for i in range(15)))
    sets = [s.replace("FIELD", str(field)).replace("SMALL", str(small)) for s in sets]
    with pytest.raises(DataError, match=match):
        prepare_run(tiny_run_config(tmp_path, sets), log=_quiet)


# ----------------------------------------------------------------------------- dialogue

def test_hh_rlhf_dialogues(tmp_path):
    records = [
        {"chosen": "\n\nHuman: Hi, what is a cat?\n\nAssistant: A small furry animal.",
         "rejected": "\n\nHuman: Hi, what is a cat?\n\nAssistant: No idea."},
        {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C?\n\nAssistant: D.", "rejected": ""},
        {"chosen": "no turns here", "rejected": "x"},
    ]
    path = tmp_path / "hh.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    skipped = Counter()
    out = list(iter_dialogues(DataConfig(source="jsonl", path=str(path)), skipped=skipped))
    assert [d.chosen for d in out] == ["A small furry animal.", "D."]
    assert out[0].prompt == "\n\nHuman: Hi, what is a cat?\n\nAssistant:" and out[0].rejected == "No idea."
    assert out[1].prompt.endswith("\n\nHuman: C?\n\nAssistant:") and out[1].rejected is None
    assert skipped["no Assistant turn"] == 1
    assert split_last_turn("\n\nHuman: q\n\nAssistant: a") == ("\n\nHuman: q\n\nAssistant:", "a")
    with pytest.raises(DataError, match="chosen"):
        list(iter_dialogues(DataConfig(source="jsonl", path=str(tmp_path / "x.jsonl"))) if
             (tmp_path / "x.jsonl").write_text('{"text": "a"}\n') else [])


def test_an_empty_heldout_split_is_allowed(tmp_path):
    prepared = prepare_run(tiny_run_config(tmp_path, ["data.heldout_rows=0"]), log=_quiet)
    assert len(prepared.tokens("heldout")) == 0 and prepared.rows("heldout") == []
    assert len(prepared.blocks("heldout", 32)) == 0


def _edit_keeping_size_and_mtime(path, old: bytes, new: bytes) -> None:
    """Replace `old` by `new` (same length) in a file, then set its modification time back."""
    assert len(old) == len(new)
    stat = path.stat()
    data = path.read_bytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


@pytest.mark.parametrize("source", ["text", "jsonl", "hf"])
def test_verify_rehashes_a_source_edited_without_a_new_size_or_mtime(tmp_path, capsys, source):
    texts = [f"Row {i:03d} tells of a fox and {i % 7} hens by the river." for i in range(150)]
    if source == "text":
        path = edited = tmp_path / "corpus.txt"
        path.write_text("\n".join(texts) + "\n")
        sets = ["data.source=text", f"data.path={path}"]
    else:
        folder = tmp_path / "hf_folder"
        folder.mkdir()
        edited = (tmp_path if source == "jsonl" else folder) / "rows.jsonl"
        edited.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        sets = (["data.source=jsonl", f"data.path={edited}"] if source == "jsonl"
                else ["data.source=hf", f"data.name={folder}", "data.text_field=text"])
    cfg = tiny_run_config(tmp_path, [*sets, "data.heldout_rows=10", "data.val_rows=10", "data.train_rows=null",
                                     "tokenizer.vocab_size=300"])
    first = prepare_run(cfg, log=_quiet)
    assert first.rows("heldout")[0] == texts[0]
    _edit_keeping_size_and_mtime(edited, b"Row 000 tells of a fox", b"Row 000 tells of a cat")
    # the fast path trusts size + mtime: the old cache, with the old text
    assert prepare_run(cfg, log=_quiet).dir == first.dir
    argv = ["--config", "configs/quickstart.yaml"] + [a for s in [*tiny_sets(tmp_path), *sets,
            "data.heldout_rows=10", "data.val_rows=10", "data.train_rows=null", "tokenizer.vocab_size=300"]
            for a in ("--set", s)]
    capsys.readouterr()
    prepare_main([*argv, "--verify"])
    out = capsys.readouterr().out
    assert f"data: {edited} changed although its size and modification time did not" in out
    again = prepare_run(cfg, log=_quiet)                    # and the fast path now keeps the new hash
    assert again.dir != first.dir and f"data: {again.dir} (built" in out
    assert again.rows("heldout")[0] == texts[0].replace("fox", "cat")   # the file as it is now
    assert again.rows("heldout")[1:] == texts[1:10]
