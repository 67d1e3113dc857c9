"""Files that lose nothing: atomic writes, locks, content hashes, and a pickle loader that runs no
code. Used by the data pipeline, checkpoints, logs and results."""

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


class UnsafeFileError(ValueError):
    """A file that would need more than plain data to load (e.g. a pickle naming a class or function)."""


class LockedError(RuntimeError):
    """Another live process holds the lock; the message names it."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 4 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _files_of(path: Path) -> list[Path]:
    """The file itself, or a folder's files in sorted order."""
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def content_sha256(path: str | Path, cache_file: str | Path | None = None) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, in sorted order).

    With `cache_file` (a JSON map), a file's hash is reused while its size and mtime are unchanged.
    """
    path = Path(path)
    files = _files_of(path)
    cache = _read_json(cache_file) if cache_file else {}
    h, changed = hashlib.sha256(), False
    for f in files:
        st = f.stat()
        key, stamp = str(f.resolve()), [st.st_size, st.st_mtime_ns]
        if cache.get(key, {}).get("stamp") != stamp:
            cache[key], changed = {"stamp": stamp, "sha256": sha256_file(f)}, True
        h.update(f"{f.relative_to(path) if path.is_dir() else ''}\0{cache[key]['sha256']}\0".encode())
    if cache_file and changed:
        with contextlib.suppress(OSError):  # a memo only: where it cannot be written, files are hashed again
            Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache_file, json.dumps(cache, indent=1))
    return h.hexdigest()


def rehash(paths: list[Path], cache_file: str | Path) -> list[Path]:
    """Re-hash every file under `paths` whose hash `cache_file` remembers; returns the files whose
    content changed although their size and mtime did not, after dropping their stale hashes (so
    `content_sha256` hashes them anew)."""
    cache = _read_json(cache_file)
    stale = [f for path in paths for f in _files_of(Path(path))
             if str(f.resolve()) in cache and cache[str(f.resolve())].get("sha256") != sha256_file(f)]
    if stale:
        for f in stale:
            del cache[str(f.resolve())]
        atomic_write(cache_file, json.dumps(cache, indent=1))
    return stale


def _read_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def atomic_write(path: str | Path, data: bytes | str | Callable[[Path], None]) -> None:
    """Write to a uniquely named temporary file beside `path`, then rename: readers never see a
    half-written file and two writers never share a temporary. `data` may be a function that
    writes the file at the path it is given (e.g. `lambda p: torch.save(state, p)`)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:  # e.g. a full disk: named by the file meant, not the temporary
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_whole(path: str | Path, text: str) -> None:
    """Append `text` to a file, all of it or nothing: a failed write (a full disk) cuts the file back
    to its old size before the error goes on, so no half line is left."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


WRITE_FAILURES = {  # errno -> what it means for a file being written, and the fix
    errno.ENOSPC: "the disk is full: free space on it",
    errno.EDQUOT: "the disk quota is used up: free space",
    errno.EROFS: "the file system is read-only: use a writable folder",
    errno.EACCES: "permission denied: make the folder writable or use another one",
    errno.EPERM: "permission denied: make the folder writable or use another one",
    errno.ENOTDIR: "a file stands where a folder is needed: move the file or use another folder",
    errno.EEXIST: "a file stands where a folder is needed: move the file or use another folder",
    errno.ENAMETOOLONG: "a name is longer than the file system allows (255 bytes): use a shorter name",
}


def write_failure(e: OSError, where: str | Path | None = None) -> str:
    """One line for an OSError raised while writing: the file (or `where`), what happened and the fix."""
    where = where or e.filename
    what = WRITE_FAILURES.get(e.errno, f"{e.strerror or e}")
    return f"cannot write {where}: {what}" if where else f"cannot write: {what}"


def unwritable_dir(path: str | Path) -> str | None:
    """Why files cannot be written in the folder `path` (made if missing), or None when they can:
    a file in its place, a read-only file system, no permission. Probed with a temporary file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder: move the file or use another folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return write_failure(e, f"in {path}")
    return None


@contextlib.contextmanager
def exclusive_lock(path: str | Path, wait: bool = False):
    """Hold an exclusive lock on `path` (flock) for the `with` block; the OS releases it if the process dies.

    Without `wait`, a lock held by another process raises LockedError naming that process's id.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise LockedError(f"{path} is held by process {_holder(f)}") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _holder(f, seconds: float = 2.0) -> str:
    """The process id a lock file names. The holder writes it just after taking the lock, so a
    loser that arrives in between waits a moment for it rather than naming no one."""
    deadline = time.monotonic() + seconds
    while True:
        f.seek(0)
        pid = f.read().strip()
        if pid or time.monotonic() > deadline:
            return pid or "?"
        time.sleep(0.02)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise UnsafeFileError(f"it names {module}.{name}")


def load_plain_pickle(path: str | Path, layout: Callable[[object], str | None] | None = None):
    """Unpickle a file that may hold only plain containers, strings and numbers: no class or
    function is looked up, so a crafted file cannot run code. Other content raises UnsafeFileError,
    as does plain data that `layout` (the problem with it, or None) finds the wrong shape."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = _PlainUnpickler(io.BytesIO(data)).load()
    except UnsafeFileError as e:
        raise UnsafeFileError(f"{path} holds more than plain lists, dicts and numbers ({e}); "
                              "refusing to load it (pickled logs are read without running code)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise UnsafeFileError(f"{path} is not a readable log pickle ({e})") from None
    problem = layout(obj) if layout else None
    if problem:
        raise UnsafeFileError(f"{path} is not a readable log pickle ({problem})")
    return obj


def list_of_numbers(obj) -> str | None:
    """A `layout` for load_plain_pickle: a flat list of numbers (e.g. per-row perplexities)."""
    if not isinstance(obj, list):
        return f"it holds a {type(obj).__name__}, not a list of numbers"
    bad = [v for v in obj if isinstance(v, bool) or not isinstance(v, (int, float))]
    return f"it holds {bad[0]!r} among its numbers" if bad else None
