"""Text sources: each yields raw document strings, in a fixed order, from the configured place.

    rows = iter_rows(DataConfig(source="text", path="notes.txt"), skipped=Counter())

Rows that cannot be used (empty, whitespace-only, invalid UTF-8, bad JSON) are skipped and counted
in `skipped`, so the summary can report them; a source that cannot be read at all raises DataError.
"""

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from dataset_definitions.config import DataConfig
from dataset_definitions.stories import stories


class DataError(RuntimeError):
    """A data problem the user can fix; the message says how."""


def iter_rows(cfg: DataConfig, skipped: Counter, limit: int | None = None) -> Iterator[str]:
    """Yield up to `limit` documents from the configured source, stripped of outer whitespace."""
    if cfg.source == "builtin":
        raw = stories(limit if limit is not None else _builtin_total(cfg), seed=cfg.seed)
    elif cfg.source == "text":
        raw = _text_rows(Path(cfg.path), cfg.delimiter, skipped)
    elif cfg.source == "jsonl":
        raw = _jsonl_rows(Path(cfg.path), cfg.text_field, skipped)
    else:
        raw = _hf_rows(cfg, cfg.text_field)
    rows = _clean(raw, skipped)
    return itertools.islice(rows, limit) if limit is not None else rows


def iter_records(cfg: DataConfig, skipped: Counter) -> Iterator[dict]:
    """Yield whole records (all fields) from a jsonl or hf source, e.g. HH-RLHF `chosen`/`rejected` pairs."""
    if cfg.source == "jsonl":
        yield from _jsonl_records(Path(cfg.path), skipped)
    elif cfg.source == "hf":
        yield from _hf_stream(cfg)
    else:
        raise DataError(f"records need data.source=jsonl or hf, got {cfg.source}")


BUILTIN_TRAIN_ROWS = 50_000  # stories for training when data.train_rows is not set


def _builtin_total(cfg: DataConfig) -> int:
    return cfg.heldout_rows + cfg.val_rows + (cfg.train_rows or BUILTIN_TRAIN_ROWS)


def _clean(rows: Iterator[str], skipped: Counter) -> Iterator[str]:
    for row in rows:
        text = row.strip() if isinstance(row, str) else None
        if text:
            yield text
        else:
            skipped["empty or not text"] += 1


def _open_checked(path: Path):
    if not path.is_file():
        raise DataError(f"data file {path} not found (check data.path)")
    return path.open("rb")


def _text_rows(path: Path, delimiter: str | None, skipped: Counter) -> Iterator[str]:
    """One document per line, or documents separated by `delimiter` (read in chunks, bytes-exact)."""
    sep = (delimiter or "\n").encode("utf-8")
    with _open_checked(path) as f:
        pending = b""
        while chunk := f.read(1 << 20):
            pending += chunk
            *docs, pending = pending.split(sep)
            yield from _decode_each(docs, skipped)
        if pending:  # a trailing separator ends the last document; it does not start an empty one
            yield from _decode_each([pending], skipped)


def _decode_each(docs: list[bytes], skipped: Counter) -> Iterator[str]:
    for doc in docs:
        try:
            yield doc.decode("utf-8")
        except UnicodeDecodeError:
            skipped["invalid UTF-8"] += 1


def _jsonl_records(path: Path, skipped: Counter) -> Iterator[dict]:
    with _open_checked(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                skipped["invalid UTF-8"] += 1
                continue
            except json.JSONDecodeError:
                skipped["invalid JSON"] += 1
                continue
            if isinstance(record, dict):
                yield record
            else:
                skipped["invalid JSON"] += 1


def _jsonl_rows(path: Path, field: str, skipped: Counter) -> Iterator[str]:
    return _field(_jsonl_records(path, skipped), field, str(path))


def _field(records: Iterator[dict], field: str, where: str) -> Iterator[str]:
    for i, record in enumerate(records):
        if field not in record:
            if i == 0:  # a wrong field name shows on the first record; later gaps are skipped rows
                raise DataError(
                    f"{where} has no field {field!r}; its fields are {sorted(record)} (set data.text_field)")
            yield None
        else:
            yield record[field]


def _hf_stream(cfg: DataConfig) -> Iterator[dict]:
    """Stream records through `datasets.load_dataset` (hub name, builder + data_files, or local folder)."""
    try:
        import datasets
    except ImportError:
        raise DataError("data.source=hf needs the `datasets` package: pip install datasets") from None
    datasets.disable_progress_bars()
    try:
        stream = datasets.load_dataset(cfg.name, cfg.config_name, data_files=cfg.path, split=cfg.split,
                                       streaming=True)
        yield from stream
    except DataError:
        raise
    except Exception as e:  # the hub raises many types (ConnectionError, HfHubHTTPError, FileNotFoundError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"could not load Hugging Face dataset {cfg.name!r} (split {cfg.split!r}): {first}. "
            "Offline? Point data.name at a local dataset folder, or use data.source=text/jsonl with data.path"
        ) from None


def _hf_rows(cfg: DataConfig, field: str) -> Iterator[str]:
    return _field(_hf_stream(cfg), field, f"dataset {cfg.name!r}")
