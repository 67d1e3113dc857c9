"""fileio: hashes equal hashlib's over the bytes, atomic writes leave the old file or the new one and no
temporary, locks name their holder, and the pickle loader admits plain data only."""

import hashlib
import os
import pickle
import subprocess
import sys

import pytest

from fileio import (LockedError, UnsafeFileError, _holder, atomic_write, content_sha256, exclusive_lock,
                    load_plain_pickle, process_alive, sha256_file)


def test_file_hash_covers_every_block(tmp_path):
    data = bytes(range(256)) * ((1 << 22) // 256) + b"tail past the first 4 MB block"
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def _folder_reference(root, files: dict[str, bytes]) -> str:
    """The documented folder hash, written out: relative name, NUL, the file's sha256, NUL, in sorted order."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\0".encode())
    return h.hexdigest()


def test_folder_hash_is_names_and_contents_in_sorted_order(tmp_path):
    files = {"b.txt": b"second", "a/z.bin": b"\x00\x01", "a/c.txt": b"first, and longer"}
    for name, data in sorted(files.items(), reverse=True):  # created out of order
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert content_sha256(tmp_path) == _folder_reference(tmp_path, files)
    (tmp_path / "b.txt").rename(tmp_path / "d.txt")  # same contents, another name: another hash
    assert content_sha256(tmp_path) == _folder_reference(tmp_path, {**{k: v for k, v in files.items() if k != "b.txt"},
                                                                    "d.txt": b"second"})


def test_single_file_hash_has_no_name(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"abc")
    expected = hashlib.sha256(f"\0{hashlib.sha256(b'abc').hexdigest()}\0".encode()).hexdigest()
    assert content_sha256(tmp_path / "x.txt") == expected


def test_hash_cache_reuses_a_hash_only_while_size_and_mtime_hold(tmp_path):
    f, cache = tmp_path / "src" / "f.txt", tmp_path / "cache" / "hashes.json"
    f.parent.mkdir()
    f.write_bytes(b"aaaa")
    first = content_sha256(f, cache)
    assert cache.is_file()
    stamp = os.stat(f)
    f.write_bytes(b"bbbb")  # same size; the old mtime put back: the cache answers
    os.utime(f, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert content_sha256(f, cache) == first
    assert content_sha256(f) != first  # without the cache the new bytes count
    os.utime(f, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))
    assert content_sha256(f, cache) == content_sha256(f)  # a new mtime: hashed again
    assert content_sha256(f, cache) == content_sha256(f, tmp_path / "cache" / "fresh.json")


def test_an_unchanged_tree_does_not_rewrite_the_cache(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    cache = tmp_path / "hashes.json"
    content_sha256(tmp_path / "f", cache)
    os.utime(cache, ns=(0, 0))
    content_sha256(tmp_path / "f", cache)
    assert os.stat(cache).st_mtime_ns == 0


def test_an_unreadable_cache_counts_as_empty(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    cache = tmp_path / "hashes.json"
    cache.write_text("{not json")
    assert content_sha256(tmp_path / "f", cache) == content_sha256(tmp_path / "f")


@pytest.mark.parametrize("data, read", [("text é", lambda p: p.read_text(encoding="utf-8")),
                                        (b"\x00bytes", lambda p: p.read_bytes())])
def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path, data, read):
    target = tmp_path / "out"
    target.write_text("old")
    atomic_write(target, data)
    assert read(target) == data
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_write_through_a_function_gets_a_temporary_beside_the_target(tmp_path):
    seen = []

    def writer(path):
        seen.append(path)
        path.write_bytes(b"written by the function")
    atomic_write(tmp_path / "out.pt", writer)
    assert (tmp_path / "out.pt").read_bytes() == b"written by the function"
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".out.pt.") and seen[0].name.endswith(".tmp")


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out"
    target.write_text("old")

    def fails(path):
        path.write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fails)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_held_lock_is_refused_naming_the_holder_and_free_after(tmp_path):
    lock = tmp_path / "sub" / "run.lock"
    with exclusive_lock(lock):
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(LockedError, match=f"held by process {os.getpid()}"):
            with exclusive_lock(lock):
                pass
    with exclusive_lock(lock):  # released at the end of the block
        assert lock.read_text() == str(os.getpid())


def test_a_lock_file_left_with_a_longer_id_is_rewritten_whole(tmp_path):
    lock = tmp_path / "run.lock"
    lock.write_text("9" * 40)
    with exclusive_lock(lock):
        assert lock.read_text() == str(os.getpid())


def test_holder_of_an_empty_lock_file_is_unknown_after_the_wait(tmp_path):
    (tmp_path / "l").write_text("")
    with open(tmp_path / "l") as f:
        assert _holder(f, seconds=0.05) == "?"
    (tmp_path / "l").write_text(" 123\n")
    with open(tmp_path / "l") as f:
        assert _holder(f, seconds=0.05) == "123"


def test_process_alive_tells_a_live_process_from_a_finished_one():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert process_alive(os.getpid())
    assert not process_alive(int(done.stdout))


def test_plain_pickles_load_and_others_are_refused(tmp_path):
    plain = {"step": [1, 2], "loss": [2.5, float("nan")], "meta": {"run": "x", "ok": True, "none": None}}
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(plain))
    got = load_plain_pickle(tmp_path / "plain.pkl")
    assert got["step"] == [1, 2] and got["meta"] == plain["meta"] and got["loss"][0] == 2.5
    (tmp_path / "class.pkl").write_bytes(pickle.dumps({"p": tmp_path}))
    with pytest.raises(UnsafeFileError, match=r"class.pkl holds more than plain .*names pathlib"):
        load_plain_pickle(tmp_path / "class.pkl")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(plain)[:-5])
    with pytest.raises(UnsafeFileError, match="cut.pkl is not a readable log pickle"):
        load_plain_pickle(tmp_path / "cut.pkl")


def test_a_process_we_may_not_signal_is_alive(monkeypatch):
    def refused(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "kill", refused)
    assert process_alive(12345)
