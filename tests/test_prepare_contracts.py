"""Contracts of data preparation (dataset_definitions/prepare.py) checked against references built
from the rows themselves: the packed stream and its counts, the cached path's checks and log, the
build lock, the writable-folder checks, the --verify re-hash of a tokenizer file, and reading
non-ASCII text under a C locale."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import REPO, c_locale_env, dead_pid
from dataset_definitions import prepare
from dataset_definitions.config import DataConfig, TokenizerConfig
from dataset_definitions.prepare import PreparedData, data_key, prepare_data
from dataset_definitions.sources import DataError
from fileio import exclusive_lock

DATA = DataConfig(source="builtin", train_rows=60, val_rows=12, heldout_rows=9)
BPE = TokenizerConfig(kind="bpe", vocab_size=300)


def _quiet(*args):
    pass


def _prepare(tmp_path, data=DATA, tok=BPE, **kw):
    kw.setdefault("log", _quiet)
    return prepare_data(data, tok, tmp_path / "data", tmp_path / "tok", **kw)


def _reference_stream(tok, texts):
    """[bos] + encode(text) + [eos] per document (no bos where the tokenizer has none), each text
    encoded on its own: the documented layout of a split's stream."""
    prefix = [tok.bos_id] if tok.bos_id is not None else []
    return [i for t in texts for i in prefix + tok.encode(t) + [tok.eos_id]]


def _check_stream_and_counts(prepared):
    tok = prepared.tokenizer
    for split in ("heldout", "val"):
        texts = prepared.rows(split)
        stream = prepared.tokens(split).tolist()
        assert stream == _reference_stream(tok, texts)
        s = prepared.meta["splits"][split]
        assert s["rows"] == len(texts)
        assert s["tokens"] == len(stream)
        assert s["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
        assert prepared.bytes_per_token(split) == pytest.approx(s["bytes"] / s["tokens"], rel=1e-12)
    train = prepared.tokens("train")
    assert prepared.meta["splits"]["train"]["tokens"] == len(train)
    assert int((train == tok.eos_id).sum()) == prepared.meta["splits"]["train"]["rows"] == DATA.train_rows


@pytest.mark.parametrize("kind", ["bpe", "word"])
def test_stream_and_split_counts_match_the_rows_over_several_encode_chunks(tmp_path, monkeypatch, kind):
    """Each split's stream is its rows encoded one by one, [bos] + ids + [eos]; meta's tokens and bytes
    are the stream's length and the rows' UTF-8 bytes, whatever the encode chunk (5 rows here, so
    several chunks and a partial last one). The word tokenizer's bos is id 0: its cache, reloaded,
    passes the token id check (0 is in the vocabulary). Reference: the tokenizer's own encode."""
    monkeypatch.setattr(prepare, "ENCODE_CHUNK", 5)
    prepared = _prepare(tmp_path, tok=replace(BPE, kind=kind))
    _check_stream_and_counts(prepared)
    if kind == "word":
        assert prepared.tokenizer.bos_id == 0 and prepared.tokens("val")[0] == 0
    again = _prepare(tmp_path, tok=replace(BPE, kind=kind))          # the cached path
    assert again.dir == prepared.dir and again.meta == prepared.meta


def test_gpt2_stream_has_no_bos(tmp_path, gpt2_dir):
    """GPT-2 has no bos: a document is encode(text) + [<|endoftext|>] (reference: tiktoken's encode)."""
    tok = TokenizerConfig(kind="gpt2", path=str(gpt2_dir))
    prepared = _prepare(tmp_path, data=replace(DATA, train_rows=10), tok=tok)
    assert prepared.tokenizer.bos_id is None
    for split in ("heldout", "val"):
        assert prepared.tokens(split).tolist() == _reference_stream(prepared.tokenizer, prepared.rows(split))


def test_cached_path_logs_what_it_checked_and_the_blocks(tmp_path):
    """A cache hit says 'cached' and claims 'every file verified' only under verify; its summary counts
    the training blocks of the given context like a fresh build (reference: the TokenBlocks count
    (n - context - 1) // context + 1 from the stream length)."""
    first = _prepare(tmp_path)
    for verify in (False, True):
        lines = []
        _prepare(tmp_path, context=16, verify=verify, log=lines.append)
        claim = " (every file verified against meta.json)" if verify else ""
        assert f"data: cached {first.dir}{claim}" in lines
        for split in ("heldout", "val", "train"):
            n = len(first.tokens(split))
            blocks = (n - 16 - 1) // 16 + 1
            assert any(line.lstrip().startswith(split) and f"{blocks:,} blocks of 16" in line for line in lines)


def _overwrite(path, values, dtype):
    """Rewrite a stream file with `values`, keeping its size (so only the content check can see it)."""
    n = path.stat().st_size // np.dtype(dtype).itemsize
    np.resize(np.asarray(values, dtype=dtype), n).tofile(path)


def test_cached_token_ids_must_lie_in_zero_to_vocab(tmp_path):
    """The cached path accepts every stream whose ids are in [0, vocab): all 0, all vocab - 1, a single
    repeated id; and refuses one holding the id vocab. Reference: the interval itself."""
    first = _prepare(tmp_path)
    vocab, dtype, path = first.meta["vocab_size"], first.meta["dtype"], first.dir / "val.bin"
    for values in ([0], [vocab - 1], [7], [0, vocab - 1]):
        _overwrite(path, values, dtype)
        assert _prepare(tmp_path).dir == first.dir
    _overwrite(path, [5, vocab, 6], dtype)
    with pytest.raises(DataError, match=f"val.bin holds token ids outside the vocabulary of {vocab}"):
        _prepare(tmp_path)


def test_a_builder_that_waited_for_the_lock_returns_the_finished_cache(tmp_path):
    """When another process finished the cache while this one waited for the lock, the build returns
    that cache, checked as a cache hit is (verify re-hashes its files) and summarised with the blocks."""
    first = _prepare(tmp_path)
    key, final = first.dir.name, first.dir
    lines = []
    got = prepare._build_cache(DATA, BPE, tmp_path / "tok", key, final, False, False, 16, lines.append)
    assert isinstance(got, PreparedData) and got.dir == final and got.meta == first.meta
    assert f"data: cached {final}" in lines and any("blocks of 16" in line for line in lines)
    data = bytearray((final / "train.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF                                     # same size: only a re-hash sees it
    (final / "train.bin").write_bytes(bytes(data))
    with pytest.raises(DataError, match="train.bin SHA-256"):
        prepare._build_cache(DATA, BPE, tmp_path / "tok", key, final, False, True, 16, _quiet)


def test_the_build_waits_for_the_lock_of_its_key(tmp_path):
    """One builder per key: a build that finds the key's lock held waits for it and then builds,
    rather than failing (the lock is held here by this test, then released)."""
    key = data_key(DATA, BPE, tmp_path / "data")
    result = {}

    def build():
        try:
            result["prepared"] = _prepare(tmp_path)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    with exclusive_lock(tmp_path / "data" / "processed" / f".{key}.lock"):
        worker = threading.Thread(target=build)
        worker.start()
        worker.join(timeout=1.5)     # a builder that does not wait would have failed by now
    worker.join()
    assert "error" not in result, result.get("error")
    assert result["prepared"].dir.name == key


def test_unwritable_folders_are_named_before_a_build(tmp_path):
    """data_dir, data_dir/processed and (for a tokenizer trained here) tokenizer_dir must be writable
    folders; the error names the setting to change. A file in a folder's place makes it unwritable."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DataError, match=r"^data_dir: .*\(--set data_dir=DIR\)"):
        prepare_data(DATA, BPE, blocker, tmp_path / "tok", log=_quiet)
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "processed").write_text("x")
    with pytest.raises(DataError, match=r"^data_dir: .*processed.*\(--set data_dir=DIR\)"):
        prepare_data(DATA, BPE, tmp_path / "d1", tmp_path / "tok", log=_quiet)
    with pytest.raises(DataError, match=r"^tokenizer_dir: .*\(--set tokenizer_dir=DIR\)"):
        prepare_data(DATA, BPE, tmp_path / "d2", blocker, log=_quiet)
    assert not list((tmp_path / "d2" / "processed").glob("[!.]*"))   # nothing built


def test_tokenizer_dir_only_matters_for_a_tokenizer_trained_here(tmp_path):
    """A given tokenizer file or GPT-2 (file or download) is not trained here: an unwritable
    tokenizer_dir does not stop the build. The kinds trained here (bpe, sentencepiece, word, with
    tokenizer.path unset) need it."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    trained = _prepare(tmp_path)                                     # trains bpe into tmp/tok
    given = replace(BPE, path=trained.tokenizer.path)
    assert prepare_data(DATA, given, tmp_path / "data2", blocker, log=_quiet).tokenizer.vocab_size == 300
    prepare._check_writable(tmp_path / "data3", blocker, TokenizerConfig(kind="gpt2"))   # no download here
    for kind in ("bpe", "sentencepiece", "word"):
        with pytest.raises(DataError, match="tokenizer_dir"):
            prepare._check_writable(tmp_path / "data3", blocker, TokenizerConfig(kind=kind))


def test_verify_rehashes_a_tokenizer_file_edited_without_a_new_size_or_mtime(tmp_path):
    """--verify re-hashes tokenizer.path too: a file edited in place with its size and mtime kept gets
    a new hash, so a new data key and cache (reference: the key before and after)."""
    trained = _prepare(tmp_path)
    path = tmp_path / "given.json"
    shutil.copy(trained.tokenizer.path, path)
    tok = replace(BPE, path=str(path))
    first = _prepare(tmp_path, tok=tok)
    stat, old = path.stat(), path.read_bytes()
    a, b = b'"truncation":null,"padding":null', b'"padding":null,"truncation":null'
    assert old.count(a) == 1
    path.write_bytes(old.replace(a, b))                              # same size, same tokenizer
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DataError, match="changed since"):          # the fast path keeps the old key, whose
        _prepare(tmp_path, tok=tok)                                  # cache refuses the changed file
    lines = []
    again = _prepare(tmp_path, tok=tok, verify=True, log=lines.append)
    assert again.dir != first.dir
    assert any(f"data: {path} changed although its size and modification time did not" in l for l in lines)


SCRIPT = """
import sys
from dataset_definitions.config import DataConfig, TokenizerConfig
from dataset_definitions.prepare import prepare_data
root = sys.argv[1]
data = DataConfig(source="text", path=root + "/corpus.txt", train_rows=None, val_rows=3, heldout_rows=3)
p = prepare_data(data, TokenizerConfig(kind="word", vocab_size=100), root + "/data", root + "/tok",
                 log=lambda *a: None)
open(root + "/out.txt", "w", encoding="utf-8").write("\\n".join(p.rows("heldout") + p.rows("val")))
"""


def test_non_ascii_rows_under_a_c_locale(tmp_path):
    """Rows are read and written as UTF-8 whatever the locale: under LC_ALL=C without Python's UTF-8
    mode (a bare cluster node), non-ASCII rows are prepared and read back unchanged."""
    texts = [f"Café {i} — naïve señor ünïcode {i} ☃" for i in range(30)]
    (tmp_path / "corpus.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    env = c_locale_env()
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")[-2000:]
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n") == texts[:6]


def test_blocks_are_windows_of_the_stream_or_one_padded_row_per_document(tmp_path):
    """blocks(split, context, stride): TokenBlocks over that split's stream with that stride (packing="pack", the
    default); packing="pad": DocumentRows of the stream with the tokenizer's eos and pad ids -> each built by hand."""
    import numpy as np

    from dataset_definitions.datasets import DocumentRows, TokenBlocks

    p = _prepare(tmp_path)
    everything = np.arange(len(p.blocks("train", 16)))
    for got, ref in ((p.blocks("train", 16), TokenBlocks(p.tokens("train"), 16)),
                     (p.blocks("train", 16, stride=5), TokenBlocks(p.tokens("train"), 16, 5)),
                     (p.blocks("val", 12, packing="pad"),
                      DocumentRows(p.tokens("val"), 12, p.tokenizer.eos_id, p.tokenizer.pad_id))):
        assert type(got) is type(ref) and len(got) == len(ref) > 0
        idx = np.arange(len(ref))
        for a, b in zip(got.batch(idx), ref.batch(idx)):
            assert torch.equal(a, b)
    assert len(p.blocks("train", 16, stride=5)) > len(everything)            # overlapping windows: more of them
    assert p.tokenizer.pad_id != p.tokenizer.eos_id


# ----------------------------------------------------------------------------- what a build writes and logs

class _WideTokenizer:
    """A tokenizer of `vocab_size` ids whose every document uses the top ids (eos is the last one)."""

    def __init__(self, vocab_size):
        self.vocab_size, self.bos_id, self.eos_id, self.pad_id = vocab_size, None, vocab_size - 1, vocab_size - 1

    def encode_batch(self, texts):
        return [[self.vocab_size - 2 - (len(t) % 3), self.vocab_size - 3] for t in texts]

    def decode(self, ids):
        return " ".join(map(str, ids))

    def spec(self):
        return {"kind": "wide", "path": None, "vocab_size": self.vocab_size, "sha256": None}


@pytest.mark.parametrize("vocab_size, dtype", [(2**16, "uint16"), (2**16 + 1, "int32"), (100_000, "int32")])
def test_token_ids_are_stored_in_two_bytes_up_to_a_vocab_of_65536_and_in_four_past_it(tmp_path, monkeypatch,
                                                                                   vocab_size, dtype):
    monkeypatch.setattr(prepare, "build_tokenizer", lambda cfg, texts, folder, name: _WideTokenizer(vocab_size))
    prepared = _prepare(tmp_path)
    assert prepared.meta["dtype"] == dtype
    for split in ("heldout", "val"):
        expected = [i for doc in prepared.tokenizer.encode_batch(prepared.rows(split)) for i in [*doc, vocab_size - 1]]
        assert prepared.tokens(split).tolist() == expected
        assert (prepared.dir / f"{split}.bin").stat().st_size == len(expected) * np.dtype(dtype).itemsize


def test_a_build_records_its_configs_and_time_and_logs_its_rows_and_blocks(tmp_path, monkeypatch):
    """meta.json names the data and tokenizer configs that built it and the build's seconds (to 0.01 s, on a
    scripted clock); the log gives the rows per split and, for a context, the blocks as a cache hit does."""
    from dataclasses import asdict
    from types import SimpleNamespace
    clock = iter([100.0, 103.456])
    monkeypatch.setattr(prepare, "time", SimpleNamespace(time=lambda: next(clock)))
    lines = []
    prepared = _prepare(tmp_path, context=16, log=lines.append)
    assert prepared.meta["config"] == {"data": asdict(DATA), "tokenizer": asdict(BPE)}
    assert prepared.meta["build_seconds"] == 3.46
    assert "data: 9 held-out / 12 val / 60 train rows" in lines
    assert any(line.startswith(f"data: {prepared.dir} (built in 3.5s;") for line in lines)
    n = len(prepared.tokens("train"))
    assert any(line.lstrip().startswith("train") and f"{(n - 17) // 16 + 1:,} blocks of 16" in line for line in lines)


def test_a_long_source_fills_each_split_to_its_quota_and_counts_the_duplicates_dropped(tmp_path):
    """A text file of more rows than heldout + val + train: the splits take their quotas of kept rows in order,
    exact duplicates are dropped and counted in the split they fell in, and no row past heldout + val + train
    is read (the limit counts the dropped rows too)."""
    rows = [f"row {i} of the corpus." for i in range(300)]
    rows[3] = rows[1]                       # a duplicate in heldout
    rows[8] = rows[7]                       # one in val
    rows[20] = rows[30] = rows[15]          # two in train
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(rows), encoding="utf-8")
    data = DataConfig(source="text", path=str(corpus), heldout_rows=5, val_rows=6, train_rows=40, dedup="exact")
    prepared = _prepare(tmp_path, data=data)
    assert prepared.rows("heldout") == [rows[i] for i in (0, 1, 2, 4, 5)]
    assert prepared.rows("val") == [rows[i] for i in (6, 7, 9, 10, 11, 12)]
    assert prepared.meta["splits"]["train"]["rows"] == 36                    # rows 13..50 less the two copies
    assert prepared.meta["dedup"]["removed"] == {"exact": {"heldout": 1, "val": 1, "train": 2},
                                                 "near": {"heldout": 0, "val": 0, "train": 0}}


def test_stale_folders_of_stopped_builds_are_removed_and_said_and_one_that_resists_stops_nothing(tmp_path,
                                                                                                 monkeypatch):
    """Before a build: .tmp-* and .old-* folders of processes that are gone are removed (each named in the log);
    one that cannot be removed is left without failing the build; a .tmp of this very process id (a pid
    reused after a kill) is emptied and built into."""
    key = data_key(DATA, BPE, tmp_path / "data")
    processed = tmp_path / "data" / "processed"
    old, stuck = processed / f".old-{key}-{dead_pid()}", processed / f".tmp-other-{dead_pid()}"
    mine = processed / f".tmp-{key}-{os.getpid()}"
    for d in (old, stuck, mine):
        d.mkdir(parents=True)
        (d / "train.bin").write_bytes(b"half")
    real = shutil.rmtree

    def rmtree(path, ignore_errors=False, **kw):
        if path == stuck:                      # as a folder on a read-only mount would
            if ignore_errors:
                return
            raise PermissionError(f"cannot remove {path}")
        return real(path, ignore_errors=ignore_errors, **kw)
    monkeypatch.setattr(prepare.shutil, "rmtree", rmtree)
    lines = []
    prepared = _prepare(tmp_path, log=lines.append)
    assert not old.exists() and stuck.exists() and not mine.exists() and prepared.dir.name == key
    assert f"data: removed {old} (left by a build that was stopped)" in lines
    _check_stream_and_counts(prepared)


def test_the_summary_of_a_cache_names_every_count_in_its_meta(tmp_path):
    """_summarise, on a real cache whose meta is then given known numbers: one line for the cache, one per split
    (rows, tokens, MB as bytes / 1e6, blocks of the context only when one is given), the skipped rows, the
    de-duplication (each step, per split) and the first 64 val tokens decoded."""
    prepared = _prepare(tmp_path)
    meta = prepared.meta
    meta["build_seconds"], meta["vocab_size"], meta["dtype"] = 12.34, 50_257, "uint16"
    meta["splits"]["val"] |= {"rows": 1_234, "tokens": 5_678_901, "bytes": 12_345_678_901}
    meta["skipped"] = {"empty or not text": 3, "invalid UTF-8": 1_200}
    meta["dedup"] = {"mode": "near", "threshold": 0.8, "ngram": 5,
                     "removed": {"exact": {"heldout": 1, "val": 0, "train": 2},
                                 "near": {"heldout": 0, "val": 4, "train": 1_000}}}
    lines = []
    prepare._summarise(prepared, None, lines.append)
    sample = prepared.tokenizer.decode(prepared.tokens("val")[:64].tolist())
    assert lines[0] == f"data: {prepared.dir} (built in 12.3s; vocab 50,257, uint16, tokenizer bpe)"
    assert lines[2] == "  val          1,234 rows    5,678,901 tokens  12345.68 MB"
    assert lines[4:] == ["  skipped: 3 empty or not text, 1,200 invalid UTF-8",
                         "  dedup near (Jaccard >= 0.8 on word 5-grams): exact duplicates removed 3 (heldout 1, val 0, "
                         "train 2); near duplicates removed 1,004 (heldout 0, val 4, train 1,000)",
                         f"  first val tokens decoded: {sample!r}"]
    assert len(prepared.tokens("val")) > 64 and len(sample) < len(prepared.tokenizer.decode(
        prepared.tokens("val")[:65].tolist()))
    lines.clear()
    meta["skipped"] = {}
    del meta["dedup"]                                                  # a cache from before de-duplication
    prepare._summarise(prepared, 16, lines.append)
    assert len(lines) == 5 and lines[2].endswith(f" {len(prepared.blocks('val', 16)):>9,} blocks of 16")
    assert lines[-1].startswith("  first val tokens decoded: ")


@pytest.mark.parametrize("mode, how", [("none", "none (rows equal to a held-out/val row only)"),
                                       ("exact", "exact")])
def test_the_dedup_line_of_the_modes_without_a_near_step(mode, how):
    removed = {"exact": {"heldout": 0, "val": 2, "train": 1_500}, "near": {"heldout": 0, "val": 0, "train": 0}}
    assert prepare.dedup_summary({"mode": mode, "threshold": 0.8, "ngram": 5, "removed": removed}) == (
        f"dedup {how}: exact duplicates removed 1,502 (heldout 0, val 2, train 1,500)")


def test_token_streams_are_read_only_and_an_empty_split_has_the_caches_dtype(tmp_path):
    prepared = _prepare(tmp_path, data=replace(DATA, heldout_rows=0))
    val = prepared.tokens("val")
    assert val.dtype == np.uint16 and not val.flags.writeable
    empty = prepared.tokens("heldout")
    assert len(empty) == 0 and empty.dtype == np.uint16


def test_no_validation_rows_is_refused_and_the_deduplicator_gets_the_configs_settings(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"^no validation rows: set data.val_rows > 0$"):
        _prepare(tmp_path, data=replace(DATA, val_rows=0))
    made, real = [], prepare.Deduplicator
    monkeypatch.setattr(prepare, "Deduplicator", lambda *settings: made.append(settings) or real(*settings))
    _prepare(tmp_path, data=replace(DATA, dedup="near", dedup_threshold=0.6, dedup_ngram=3))
    assert made == [("near", 0.6, 3)]


def test_local_sources_are_hashed_once_into_the_hash_cache_under_processed(tmp_path):
    """A text source's SHA-256 (hashlib of its bytes) is remembered in <data_dir>/processed/.content-hashes.json,
    keyed by the file's resolved path: the file the data key reads back while size and mtime hold."""
    text = tmp_path / "corpus.txt"
    text.write_text("one line\nanother line\n")
    data_key(DataConfig(source="text", path=str(text)), BPE, tmp_path / "data")
    cache = json.loads((tmp_path / "data" / "processed" / ".content-hashes.json").read_text())
    assert list(cache) == [str(text.resolve())]
    assert cache[str(text.resolve())]["sha256"] == hashlib.sha256(text.read_bytes()).hexdigest()


def test_an_hf_sources_local_files_are_its_folder_and_the_data_files_its_path_matches(tmp_path):
    """source=hf: data.name when it is a local folder (a hub name is not a file), then the files the data.path
    glob matches, sorted; a glob matching a folder is refused as not a regular file."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    for name in ("b.jsonl", "a.jsonl", "notes.md"):
        (tmp_path / name).write_text("{}\n")
    hf = DataConfig(source="hf", name=str(folder), path=str(tmp_path / "*.jsonl"))
    assert prepare._local_files(hf) == [folder, tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    assert prepare._local_files(replace(hf, path=None)) == [folder]
    assert prepare._local_files(replace(hf, name="roneneldan/TinyStories")) == [tmp_path / "a.jsonl",
                                                                                 tmp_path / "b.jsonl"]
    assert prepare._local_files(replace(hf, name="roneneldan/TinyStories", path=None)) == []
    with pytest.raises(DataError, match=f"data.path {folder} is not a regular file"):
        prepare._local_files(replace(hf, path=str(tmp_path / "data*")))


def test_the_data_key_ignores_the_vocab_size_of_a_tokenizer_read_from_files_only(tmp_path):
    """gpt2 and llama take their vocabulary from their files: tokenizer.vocab_size does not change their key;
    for a tokenizer trained here (bpe) it does."""
    files = tmp_path / "tokfiles"
    files.mkdir()
    (files / "tokenizer.model").write_bytes(b"\x00model")
    for kind, path in (("gpt2", files), ("llama", files / "tokenizer.model")):
        keys = {data_key(DATA, TokenizerConfig(kind=kind, path=str(path), vocab_size=v), tmp_path / "d")
                for v in (5, 9)}
        assert len(keys) == 1, kind
    assert data_key(DATA, replace(BPE, vocab_size=5), tmp_path / "d") != data_key(DATA, BPE, tmp_path / "d")


def test_prepare_data_hands_its_options_to_the_build(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(prepare, "_build_cache", lambda *args: seen.setdefault("args", args))
    prepare_data(DATA, BPE, tmp_path / "data", tmp_path / "tok", context=16, force=True, verify=True, log=_quiet)
    data, tok, tok_dir, key, final, force, verify, context, log = seen["args"]
    assert (data, tok, tok_dir, force, verify, context, log) == (DATA, BPE, tmp_path / "tok", True, True, 16, _quiet)
    assert final == tmp_path / "data" / "processed" / key and key == data_key(DATA, BPE, tmp_path / "data")


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS", "EIO", "EACCES"])
def test_a_full_or_read_only_disk_during_a_build_is_one_data_error_other_os_errors_pass_through(tmp_path,
                                                                                                monkeypatch, code):
    number = getattr(errno, code)

    def fail(*args):
        raise OSError(number, os.strerror(number))
    monkeypatch.setattr(prepare, "_build_cache", fail)
    if code in ("ENOSPC", "EDQUOT", "EROFS"):
        with pytest.raises(DataError, match=f"data: cannot write in {tmp_path / 'data' / 'processed'}: .*"
                                            "the half-built cache was removed"):
            _prepare(tmp_path)
    else:
        with pytest.raises(OSError) as raised:
            _prepare(tmp_path)
        assert raised.value.errno == number                                # the error itself, not a DataError
