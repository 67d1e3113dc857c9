"""Turn the configured text source into packed, cached, verified token streams.

    data = prepare_data(cfg.data, cfg.tokenizer, cfg.data_dir, cfg.tokenizer_dir, context=cfg.model.context)

It takes the run config's data and tokenizer sections only: this package imports nothing from the
models, the run config or the trainer. The command (`python prepare_data.py --config FILE`) sits at
the repo root, where the whole run config is loaded.

Stages (each skipped when its output exists): read and split rows (held-out, validation, train,
disjoint by content hash; `data.dedup` removes exact or near duplicates too, dedup.py) -> load or
train the tokenizer on the train split -> encode every split into a flat token stream `<split>.bin`
(each document as [bos] + ids + [eos]) -> meta.json with sizes and SHA-256 of every file. The
directory `<data_dir>/processed/<data key>/` is built under a temporary name and renamed at the end,
so a half-written cache is never used; one process builds a key at a time (a lock), and temporary
folders left by a killed build are removed by the next one. The data key hashes the settings that
change the data (not those the source ignores) and the content of local files (text/jsonl sources,
local hf files, tokenizer files): a file edited in place gets a new cache and a new trained
tokenizer. The trainer calls `prepare_data`, so preparation is automatic.
"""

import errno
import glob
import hashlib
import itertools
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataset_definitions.config import DataConfig, TokenizerConfig
from dataset_definitions.datasets import DocumentRows, TokenBlocks
from dataset_definitions.dedup import Deduplicator
from dataset_definitions.sources import DataError, iter_rows
from dataset_definitions.tokenization import Tokenizer, load_tokenizer
from dataset_definitions.tokenizer_training import build_tokenizer
from fileio import (atomic_write, content_sha256, exclusive_lock, process_alive, rehash, sha256_file, unwritable_dir,
                    write_failure)

FORMAT_VERSION = 1
REBUILD = ("rebuild it: python prepare_data.py --base <the runner's config> with the run's "
           "--config/--set options and --force (or delete the folder)")
# data.* fields a source never reads: they do not enter the data key
IGNORED_BY_SOURCE = {
    "builtin": {"name", "path", "split", "config_name", "text_field", "delimiter"},
    "text": {"name", "split", "config_name", "text_field", "seed"},
    "jsonl": {"name", "split", "config_name", "delimiter", "seed"},
    "hf": {"delimiter", "seed"},
}
SPLITS = ("heldout", "val", "train")  # the order rows are taken from the source
ENCODE_CHUNK = 2048                   # documents per encode_batch call


@dataclass
class PreparedData:
    """A finished cache directory: token streams, evaluation rows as text, the tokenizer."""
    dir: Path
    meta: dict
    tokenizer: Tokenizer

    def tokens(self, split: str) -> np.ndarray:
        path = self.dir / f"{split}.bin"
        if path.stat().st_size == 0:  # an empty split (e.g. data.heldout_rows=0): mmap refuses empty files
            return np.zeros(0, dtype=self.meta["dtype"])
        return np.memmap(path, dtype=self.meta["dtype"], mode="r")

    def blocks(self, split: str, context: int, stride: int | None = None,
               packing: str = "pack") -> TokenBlocks | DocumentRows:
        """Training examples: windows over the packed stream, or (packing="pad") one padded row per document."""
        if packing == "pad":
            return DocumentRows(self.tokens(split), context, self.tokenizer.eos_id, self.tokenizer.pad_id)
        return TokenBlocks(self.tokens(split), context, stride)

    def rows(self, split: str) -> list[str]:
        """The documents of the held-out or validation split, as text, in order."""
        with open(self.dir / f"{split}.jsonl", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f]

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 bytes of text per token of the stream, for converting nats/token to bits/byte."""
        s = self.meta["splits"][split]
        return s["bytes"] / max(s["tokens"], 1)


def data_key(data: DataConfig, tokenizer: TokenizerConfig, data_dir: str | Path) -> str:
    """Hash of everything that changes the token streams: the data settings the source reads (not
    the stride or packing: they are views), the tokenizer settings, and the content of local files
    (their SHA-256 is remembered under `data_dir`)."""
    ignored = IGNORED_BY_SOURCE[data.source] | {"stride", "packing"}
    settings = {k: v for k, v in asdict(data).items() if k not in ignored}
    hashes = _hash_cache(data_dir)
    settings["content"] = [content_sha256(p, hashes) for p in _local_files(data)]
    tok = asdict(tokenizer)
    if tok["path"] and Path(tok["path"]).exists():
        tok["sha256"] = content_sha256(tok["path"], hashes)
    if tok["kind"] in ("gpt2", "llama"):
        tok.pop("vocab_size")  # fixed by the file, not trained
    blob = json.dumps({"format": FORMAT_VERSION, "data": settings, "tokenizer": tok}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _hash_cache(data_dir: str | Path) -> Path:
    return Path(data_dir) / "processed" / ".content-hashes.json"  # size + mtime -> SHA-256


def _local_files(cfg: DataConfig) -> list[Path]:
    """The local files (or folders) a source reads: text/jsonl data.path, hf local folders and data files."""
    if cfg.source in ("text", "jsonl"):
        return _regular_files([Path(cfg.path)] if Path(cfg.path).exists() else [])
    if cfg.source != "hf":
        return []
    found = [Path(cfg.name)] if Path(cfg.name).is_dir() else []
    return found + _regular_files([Path(p) for p in sorted(glob.glob(cfg.path))]) if cfg.path else found


def _regular_files(paths: list[Path]) -> list[Path]:
    """`paths`, each a regular file: a device (/dev/zero), a pipe or a folder would be read forever or not at all."""
    for p in paths:
        if not p.is_file():
            raise DataError(f"data.path {p} is not a regular file (a device, a pipe or a folder): "
                            "point data.path at a text or jsonl file")
    return paths


def prepare_data(data: DataConfig, tokenizer: TokenizerConfig, data_dir: str | Path, tokenizer_dir: str | Path, *,
                 context: int | None = None, force: bool = False, verify: bool = False, log=print) -> PreparedData:
    """Return the prepared data of these data and tokenizer settings, building it if needed.

    Args:
        data, tokenizer: the run config's `data` and `tokenizer` sections.
        data_dir: where caches live (<data_dir>/processed/<data key>/).
        tokenizer_dir: where a tokenizer trained here is saved.
        context: the model's context; given, the summary counts the training blocks of each split.
        force: rebuild even if the cache exists. verify: re-hash the local sources (whatever their size
            and mtime say) and every cached file against meta.json.
        log: where the summary lines go.
    """
    if verify:
        _rehash_sources(data, tokenizer, data_dir, log)
    key = data_key(data, tokenizer, data_dir)
    final = Path(data_dir) / "processed" / key
    if final.exists() and not force:
        return _cached(final, verify, context, log)
    _check_writable(data_dir, tokenizer_dir, tokenizer)
    try:
        return _build_cache(data, tokenizer, tokenizer_dir, key, final, force, verify, context, log)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise DataError(f"data: {write_failure(e, e.filename or f'in {final.parent}')}; the half-built cache was "
                        "removed (or set data_dir / tokenizer_dir to a folder on another disk)") from None


def _rehash_sources(data: DataConfig, tokenizer: TokenizerConfig, data_dir: str | Path, log) -> None:
    """--verify: re-hash every local source (text/jsonl file, local hf files, tokenizer file), so an edit
    that kept a file's size and modification time still changes the data key (a new cache)."""
    paths = _local_files(data) + ([Path(tokenizer.path)] if tokenizer.path and Path(tokenizer.path).exists() else [])
    for f in rehash(paths, _hash_cache(data_dir)):
        log(f"data: {f} changed although its size and modification time did not: its hash is renewed, "
            "so the data key and the cache follow the new content")


def _check_writable(data_dir: str | Path, tokenizer_dir: str | Path, tokenizer: TokenizerConfig) -> None:
    """Before a build: the cache folder (and, for a tokenizer trained here, its folder) can be written."""
    trained = not tokenizer.path and tokenizer.kind not in ("gpt2", "llama")
    for key, folder in (("data_dir", Path(data_dir)), ("data_dir", Path(data_dir) / "processed"),
                        ("tokenizer_dir", Path(tokenizer_dir) if trained else None)):
        why = folder and unwritable_dir(folder)
        if why:
            raise DataError(f"{key}: {why} (--set {key}=DIR)")


def _build_cache(data: DataConfig, tokenizer: TokenizerConfig, tokenizer_dir: str | Path, key: str, final: Path,
                 force: bool, verify: bool, context: int | None, log) -> PreparedData:
    """Build the cache of `key` under a temporary name (one builder per key) and rename it to `final`."""
    with exclusive_lock(final.with_name(f".{key}.lock"), wait=True):  # one builder per key
        _remove_stale_temporaries(final.parent, log)
        if final.exists() and not force:  # another process built it while this one waited
            return _cached(final, verify, context, log)
        tmp = final.with_name(f".tmp-{key}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            meta, tok = _build(data, tokenizer, Path(tokenizer_dir), key, tmp, log)
            if final.exists():  # --force: move the old copy aside only once the new one is complete
                trash = final.with_name(f".old-{key}-{os.getpid()}")
                final.rename(trash)
                shutil.rmtree(trash)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    prepared = PreparedData(final, meta, tok)
    _summarise(prepared, context, log)
    return prepared


def _cached(final: Path, verify: bool, context: int | None, log) -> PreparedData:
    meta = _load_meta(final)
    _check_files(final, meta, full=verify)
    prepared = PreparedData(final, meta, _tokenizer_or_error(load_tokenizer, meta["tokenizer"]))
    _check_token_ids(prepared)
    log(f"data: cached {final}" + (" (every file verified against meta.json)" if verify else ""))
    _summarise(prepared, context, log)
    return prepared


def _remove_stale_temporaries(processed: Path, log) -> None:
    """Delete the .tmp-*/.old-* folders of builds whose process is gone (killed mid-build)."""
    for d in [*processed.glob(".tmp-*-*"), *processed.glob(".old-*-*")]:
        pid = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            log(f"data: removed {d} (left by a build that was stopped)")


def _build(data: DataConfig, tok_cfg: TokenizerConfig, tokenizer_dir: Path, key: str, out: Path,
           log) -> tuple[dict, Tokenizer]:
    t0 = time.time()
    skipped: Counter = Counter()
    counts, removed = _split_rows(data, out, skipped)
    log(f"data: {counts['heldout']:,} held-out / {counts['val']:,} val / {counts['train']:,} train rows")
    tokenizer = _tokenizer_or_error(build_tokenizer, tok_cfg, lambda: _read_texts(out / "train.jsonl"),
                                    tokenizer_dir, f"{tok_cfg.kind}-{key}")
    dtype = "uint16" if tokenizer.vocab_size <= 2**16 else "int32"
    splits = {s: _encode_split(out / f"{s}.jsonl", out / f"{s}.bin", tokenizer, dtype, counts[s], s)
              for s in SPLITS}
    (out / "train.jsonl").unlink()  # the token stream is what training reads; keep only eval text
    meta = {
        "format": FORMAT_VERSION,
        "key": key,
        "config": {"data": asdict(data), "tokenizer": asdict(tok_cfg)},
        "tokenizer": tokenizer.spec(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype,
        "splits": splits,
        "skipped": dict(skipped),
        "dedup": {"mode": data.dedup, "threshold": data.dedup_threshold, "ngram": data.dedup_ngram,
                  "removed": removed},
        "build_seconds": round(time.time() - t0, 2),
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(out.iterdir())},
    }
    atomic_write(out / "meta.json", json.dumps(meta, indent=2))
    return meta, tokenizer


def _tokenizer_or_error(fn, *args) -> Tokenizer:
    """Call a tokenizer loader; its user-fixable failures (missing file, offline, bad vocab) become DataError."""
    try:
        return fn(*args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        raise DataError(f"tokenizer: {e}") from None


def _split_rows(cfg: DataConfig, out: Path, skipped: Counter) -> tuple[dict, dict]:
    """Write heldout/val/train rows as jsonl, dropping the duplicates `cfg.dedup` names.

    Returns the rows kept per split, and the rows removed per step ("exact", "near") and split.
    """
    limit = cfg.heldout_rows + cfg.val_rows + cfg.train_rows if cfg.train_rows is not None else None
    quotas = {"heldout": cfg.heldout_rows, "val": cfg.val_rows, "train": cfg.train_rows}
    counts = dict.fromkeys(SPLITS, 0)
    removed = {step: dict.fromkeys(SPLITS, 0) for step in ("exact", "near")}
    dedup = Deduplicator(cfg.dedup, cfg.dedup_threshold, cfg.dedup_ngram)
    files = {s: open(out / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}
    split_iter = iter(SPLITS)
    split = next(split_iter)
    try:
        for text in tqdm(iter_rows(cfg, skipped, limit), desc="reading rows", unit=" rows", total=limit):
            while quotas[split] is not None and counts[split] >= quotas[split]:
                split = next(split_iter)
            step = dedup.check(text, split)
            if step is not None:
                removed[step][split] += 1
                continue
            files[split].write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            counts[split] += 1
    finally:
        for f in files.values():
            f.close()
    if counts["train"] == 0:
        raise DataError(
            f"the source gave {sum(counts.values())} usable rows, all taken by data.heldout_rows="
            f"{cfg.heldout_rows} and data.val_rows={cfg.val_rows}: lower them or add data")
    if counts["val"] == 0:
        raise DataError("no validation rows: set data.val_rows > 0")
    return counts, removed


def _read_texts(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def _encode_split(src: Path, dst: Path, tokenizer: Tokenizer, dtype: str, n_rows: int, name: str) -> dict:
    """Encode a jsonl split into a flat stream of [bos] + ids + [eos] documents."""
    prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    n_tokens = n_bytes = 0
    with open(dst, "wb") as out, tqdm(total=n_rows, desc=f"encoding {name}", unit=" rows") as bar:
        batch: list[str] = []
        for text in [*_read_texts(src), None]:
            if text is not None:
                batch.append(text)
                n_bytes += len(text.encode("utf-8"))
            if len(batch) == ENCODE_CHUNK or (text is None and batch):
                ids = [prefix + doc + [tokenizer.eos_id] for doc in tokenizer.encode_batch(batch)]
                flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=sum(map(len, ids)))
                flat.tofile(out)
                n_tokens += len(flat)
                bar.update(len(batch))
                batch = []
    return {"rows": n_rows, "tokens": n_tokens, "bytes": n_bytes}


def _load_meta(d: Path) -> dict:
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise DataError(f"data cache {d} has no readable meta.json: {REBUILD}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(f"data cache {d} has format {meta.get('format')}, expected {FORMAT_VERSION}: {REBUILD}")
    return meta


def _check_files(d: Path, meta: dict, full: bool) -> None:
    """Sizes always (cheap); SHA-256 of every file when `full` (--verify)."""
    for name, info in meta["files"].items():
        p = d / name
        if not p.is_file() or p.stat().st_size != info["bytes"]:
            raise DataError(f"data cache {d} is incomplete or corrupted ({name} size differs): {REBUILD}")
        if full and sha256_file(p) != info["sha256"]:
            raise DataError(f"data cache {d} is corrupted ({name} SHA-256 differs from meta.json): {REBUILD}")


def _check_token_ids(prepared: PreparedData) -> None:
    """Every cached token id is in the vocabulary (one pass over each memmap: cheap beside training), so
    a corrupted stream stops here, naming the cache, rather than as an IndexError inside the embedding."""
    vocab = prepared.meta["vocab_size"]
    for split in prepared.meta["splits"]:
        tokens = prepared.tokens(split)
        if len(tokens) and not 0 <= int(tokens.min()) <= int(tokens.max()) < vocab:
            raise DataError(f"data cache {prepared.dir} is corrupted ({split}.bin holds token ids outside the "
                            f"vocabulary of {vocab:,}: {int(tokens.min())}..{int(tokens.max())}): {REBUILD}")


def _summarise(prepared: PreparedData, context: int | None, log) -> None:
    meta = prepared.meta
    log(f"data: {prepared.dir} (built in {meta['build_seconds']:.1f}s; "
        f"vocab {meta['vocab_size']:,}, {meta['dtype']}, tokenizer {meta['tokenizer']['kind']})")
    for split, s in meta["splits"].items():
        blocks = f" {len(prepared.blocks(split, context)):>9,} blocks of {context}" if context else ""
        log(f"  {split:8s} {s['rows']:>9,} rows {s['tokens']:>12,} tokens {s['bytes'] / 1e6:>9.2f} MB{blocks}")
    if meta["skipped"]:
        log("  skipped: " + ", ".join(f"{n:,} {why}" for why, n in meta["skipped"].items()))
    if "dedup" in meta:
        log("  " + dedup_summary(meta["dedup"]))
    sample = prepared.tokenizer.decode(prepared.tokens("val")[:64].tolist())
    log(f"  first val tokens decoded: {sample!r}")


def dedup_summary(dedup: dict) -> str:
    """One line: the de-duplication mode and the rows each step removed, per split."""
    how = {"none": "none (rows equal to a held-out/val row only)", "exact": "exact",
           "near": f"near (Jaccard >= {dedup['threshold']} on word {dedup['ngram']}-grams)"}[dedup["mode"]]
    steps = ["exact", "near"] if dedup["mode"] == "near" else ["exact"]
    parts = [f"{step} duplicates removed {sum(dedup['removed'][step].values()):,} ("
             + ", ".join(f"{split} {n:,}" for split, n in dedup["removed"][step].items()) + ")" for step in steps]
    return f"dedup {how}: " + "; ".join(parts)
