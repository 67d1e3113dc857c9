"""fileio: hashes equal hashlib's over the bytes, atomic writes leave the old file or the new one and no
temporary, locks name their holder, and the pickle loader admits plain data only."""

import errno
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import fileio
from conftest import c_locale_env
from fileio import (LockedError, UnsafeFileError, _holder, append_whole, atomic_write, content_sha256,
                    exclusive_lock, load_plain_pickle, process_alive, rehash, sha256_file, unwritable_dir)


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


def test_the_hash_cache_is_made_in_a_new_folder_and_one_that_cannot_be_written_is_skipped(tmp_path):
    f = tmp_path / "f.txt"
    f.write_bytes(b"text")
    deep = tmp_path / "a" / "b" / "hashes.json"
    assert content_sha256(f, deep) == content_sha256(f) and deep.is_file()
    (tmp_path / "blocker").write_text("a file where the cache folder should be")
    assert content_sha256(f, tmp_path / "blocker" / "hashes.json") == content_sha256(f)   # a memo only


def test_rehash_finds_files_edited_behind_the_cache_and_drops_only_their_hashes(tmp_path):
    src, cache = tmp_path / "src", tmp_path / "hashes.json"
    src.mkdir()
    for name in ("a.txt", "b.txt"):
        (src / name).write_bytes(b"aaaa")
    (tmp_path / "other.txt").write_bytes(b"not in the cache")
    before = content_sha256(src, cache)
    assert rehash([src, tmp_path / "other.txt"], cache) == []                  # nothing edited: nothing found
    stamp = os.stat(src / "b.txt")
    (src / "b.txt").write_bytes(b"bbbb")                                        # same size, the old mtime put back
    os.utime(src / "b.txt", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert content_sha256(src, cache) == before                                # the cache alone cannot tell
    assert rehash([src, tmp_path / "other.txt"], cache) == [src / "b.txt"]
    kept = json.loads(cache.read_text())
    assert set(kept) == {str((src / "a.txt").resolve())}
    assert content_sha256(src, cache) == content_sha256(src) != before         # hashed anew from the bytes
    os.utime(cache, ns=(0, 0))
    assert rehash([src], cache) == [] and os.stat(cache).st_mtime_ns == 0      # nothing stale: not rewritten


def test_a_writer_that_lost_its_temporary_still_raises_its_own_error(tmp_path):
    """The clean-up after a failed write never hides the failure (the temporary may be gone already)."""
    target = tmp_path / "out"

    def full_disk(path):
        path.unlink()
        raise OSError(errno.ENOSPC, "No space left on device")

    def interrupted(path):
        path.unlink()
        raise KeyboardInterrupt
    with pytest.raises(OSError) as e:
        atomic_write(target, full_disk)
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(target))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_text_is_written_as_utf8_whatever_the_locale(tmp_path):
    """On a node with LC_ALL=C (no UTF-8 mode) a text write must still be UTF-8, not fail or be ASCII."""
    code = (f"import sys; sys.path.insert(0, {str(Path(fileio.__file__).parent)!r}); import fileio; "
            f"fileio.atomic_write({str(tmp_path / 'out')!r}, 'caf\\u00e9 \\u6f22')")
    r = subprocess.run([sys.executable, "-c", code], env=c_locale_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_bytes() == "café 漢".encode("utf-8")


def test_append_whole_adds_all_of_the_text_or_none_of_it(tmp_path, monkeypatch):
    log = tmp_path / "log.csv"
    old_umask = os.umask(0)
    try:
        append_whole(log, "step,loss\n")
    finally:
        os.umask(old_umask)
    assert log.stat().st_mode & 0o777 == 0o644                                # created rw-r--r--
    append_whole(log, "1,2.5 é\n")
    assert log.read_bytes() == "step,loss\n1,2.5 é\n".encode("utf-8")
    real_write, calls = os.write, []

    def disk_fills(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[:3]))                                  # a short write, then a full disk
    monkeypatch.setattr(fileio.os, "write", disk_fills)
    with pytest.raises(OSError, match="No space left"):
        append_whole(log, "2,2.25\n")
    assert calls == [7, 4]
    assert log.read_bytes() == "step,loss\n1,2.5 é\n".encode("utf-8")        # cut back: no half line


def test_unwritable_dir_makes_missing_folders_and_names_why_one_cannot_be_written(tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b"
    assert unwritable_dir(deep) is None and deep.is_dir() and list(deep.iterdir()) == []   # the probe is gone
    file = tmp_path / "f"
    file.write_text("x")
    assert unwritable_dir(file) == f"{file} is a file, not a folder: move the file or use another folder"
    probed = []

    def read_only(dir=None, prefix=None, suffix=None):
        probed.append(dir)
        raise OSError(errno.EROFS, "Read-only file system", str(dir))
    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)
    assert unwritable_dir(deep) == f"cannot write in {deep}: the file system is read-only: use a writable folder"
    assert probed == [deep]                                                     # probed in the folder itself


def test_process_alive_tells_a_live_process_from_a_finished_one():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert process_alive(os.getpid())
    assert not process_alive(int(done.stdout))


def test_asking_whether_a_process_is_alive_sends_it_no_signal():
    code = ("import signal, sys, time; [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGHUP, signal.SIGINT)]; "
            "print('ready', flush=True); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        assert process_alive(child.pid)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)                                             # still running
    finally:
        child.kill()
        child.wait()


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


@pytest.mark.parametrize("value, problem", [
    ([1, 2.5, float("inf")], None), ([], None),
    ((1, 2), "it holds a tuple, not a list of numbers"), ({"a": 1}, "it holds a dict, not a list of numbers"),
    ([1, True, 2], "it holds True among its numbers"), ([1.5, "2"], "it holds '2' among its numbers"),
    ([0.5, None], "it holds None among its numbers")])
def test_a_pickle_of_anything_but_a_flat_list_of_numbers_is_refused_by_that_layout(tmp_path, value, problem):
    from fileio import list_of_numbers

    path = tmp_path / "rows.pkl"
    path.write_bytes(pickle.dumps(value))
    if problem is None:
        assert load_plain_pickle(path, list_of_numbers) == value
    else:
        with pytest.raises(UnsafeFileError, match=rf"rows.pkl is not a readable log pickle \({problem}\)"):
            load_plain_pickle(path, list_of_numbers)


@pytest.mark.parametrize("error, where, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/a/log.csv"), None,
     "cannot write /runs/a/log.csv: the disk is full: free space on it"),
    (OSError(errno.EROFS, "Read-only file system", "/runs/a"), "in /runs",
     "cannot write in /runs: the file system is read-only: use a writable folder"),
    (OSError(errno.EIO, "Input/output error", "/runs/b"), None, "cannot write /runs/b: Input/output error"),
    (OSError(errno.ENOSPC, "No space left on device"), None, "cannot write: the disk is full: free space on it"),
    (OSError("a bare message"), None, "cannot write: a bare message")])
def test_a_write_failure_reads_as_one_line_naming_the_file_and_the_fix(error, where, line):
    from fileio import write_failure

    assert write_failure(error, where) == line
