"""data.dedup: planted exact and near duplicates are removed, distinct rows kept, counts reported."""

import random

import pytest

from conftest import prepare_run, tiny_run_config
from dataset_definitions.dedup import Deduplicator, lsh_bands, word_ngrams

pytest.importorskip("datasketch")

WORDS = [f"w{i}" for i in range(2000)]


def _row(rng: random.Random, n: int = 200) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def _changed(words: list[str], n: int, rng: random.Random) -> list[str]:
    """A copy with n words, spread over the row, replaced by words no row uses."""
    out = list(words)
    for k, i in enumerate(range(7, len(out), len(out) // n)[:n]):
        out[i] = f"changed{k}x{rng.random():.6f}"
    return out


def _jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of the word n-gram sets, by plain Python sets (independent of MinHash)."""
    sa = {tuple(a.split()[i:i + n]) for i in range(len(a.split()) - n + 1)}
    sb = {tuple(b.split()[i:i + n]) for i in range(len(b.split()) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def test_word_ngrams():
    assert word_ngrams("The cat sat, the cat SAT!", 3) == {b"the cat sat", b"cat sat the", b"sat the cat"}
    assert word_ngrams("too short", 5) == {b"too short"}


def test_lsh_bands_find_pairs_at_the_threshold():
    bands, rows = lsh_bands(0.8)
    assert bands * rows <= 128 and 1 - (1 - 0.8 ** rows) ** bands >= 0.995
    assert 1 - (1 - 0.8 ** (rows + 1)) ** (128 // (rows + 1)) < 0.995     # the sharpest banding that does


def test_near_duplicates_found_and_distinct_rows_kept():
    rng = random.Random(0)
    a, b = _row(rng), _row(rng)
    near = _changed(a, 3, rng)            # 3 of 200 words changed
    far = _changed(b, 15, rng)            # 15 of 200 changed: similar, but not a copy
    a, b, near, far = (" ".join(w) for w in (a, b, near, far))
    assert _jaccard(a, near) >= 0.8 > _jaccard(b, far) > 0.2
    dedup = Deduplicator("near", threshold=0.8, ngram=5)
    assert [dedup.check(t, "train") for t in (a, b, a, near, far)] == [None, None, "exact", "near", None]
    exact = Deduplicator("exact")
    assert [exact.check(t, "train") for t in (a, b, a, near, far)] == [None, None, "exact", None, None]


def test_none_keeps_only_evaluation_rows_out_of_later_splits():
    dedup = Deduplicator("none")
    assert [dedup.check(t, s) for t, s in (("x", "heldout"), ("x", "val"), ("y", "train"), ("y", "train"),
                                           ("x", "train"))] == [None, "exact", None, None, "exact"]


def _prepare(tmp_path, rows, mode):
    path = tmp_path / f"rows_{mode}.txt"
    path.write_text("\n".join(rows), encoding="utf-8")
    lines = []
    cfg = tiny_run_config(tmp_path, ["data.source=text", f"data.path={path}", "data.heldout_rows=4",
                                     "data.val_rows=4", "data.train_rows=null", "tokenizer.vocab_size=300",
                                     f"data.dedup={mode}"])
    prepared = prepare_run(cfg, log=lines.append)
    tok = prepared.tokenizer
    train, doc = [], []
    for t in prepared.tokens("train").tolist():
        if t == tok.eos_id:
            train.append(tok.decode(doc))
            doc = []
        elif t != tok.bos_id:
            doc.append(t)
    return prepared, {"heldout": prepared.rows("heldout"), "val": prepared.rows("val"), "train": train}, lines


def test_prepare_removes_planted_duplicates_within_and_across_splits(tmp_path):
    rng = random.Random(1)
    base = [" ".join(_row(rng)) for _ in range(20)]
    near = lambda i: " ".join(_changed(base[i].split(), 3, rng))   # noqa: E731
    # rows 0-3 become held-out, 4-7 validation, the rest training; planted copies follow their originals
    rows = base[:8] + [base[0], near(1), base[5], near(6)] + base[8:14] + [base[9], near(10), near(10)] + base[14:]
    # exact: a held-out copy, a val copy, a train copy; near: of held-out row 1, val row 6, train row 10 (twice)
    prepared, kept, lines = _prepare(tmp_path, rows, "near")
    removed = prepared.meta["dedup"]["removed"]
    assert removed == {"exact": {"heldout": 0, "val": 0, "train": 3}, "near": {"heldout": 0, "val": 0, "train": 4}}
    assert kept["heldout"] == base[:4] and kept["val"] == base[4:8] and kept["train"] == base[8:]
    every = [t for split in kept.values() for t in split]
    assert max(_jaccard(x, y) for i, x in enumerate(every) for y in every[i + 1:]) < 0.8
    summary = [line for line in lines if line.strip().startswith("dedup")]
    assert summary == ["  dedup near (Jaccard >= 0.8 on word 5-grams): exact duplicates removed 3 (heldout 0, val 0, "
                       "train 3); near duplicates removed 4 (heldout 0, val 0, train 4)"]

    # exact mode keeps the near copies; none keeps a training row's own exact copy too
    prepared, kept, _ = _prepare(tmp_path, rows, "exact")
    assert sum(prepared.meta["dedup"]["removed"]["exact"].values()) == 3 and len(kept["train"]) == 12 + 4
    prepared, kept, _ = _prepare(tmp_path, rows, "none")
    assert sum(prepared.meta["dedup"]["removed"]["exact"].values()) == 2 and len(kept["train"]) == 12 + 5


def test_bad_dedup_values_refused():
    from dataset_definitions.config import DataConfig
    with pytest.raises(ValueError, match="data.dedup"):
        DataConfig(dedup="fuzzy")
    with pytest.raises(ValueError, match="data.dedup_threshold"):
        DataConfig(dedup="near", dedup_threshold=1.5)
