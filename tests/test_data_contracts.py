"""Contracts of the data path checked against independent references: the shuffled batch sampler
(every epoch a partition of the blocks), padded document rows (every target exactly once, token id 0
a real token), and near de-duplication (the LSH banding by brute force, the documented defaults,
the threshold's `at least`)."""

import numpy as np
import pytest
import torch

from dataset_definitions.config import DataConfig
from dataset_definitions.datasets import BlockSampler, DocumentRows, TokenBlocks
from dataset_definitions.dedup import NUM_PERM, Deduplicator, lsh_bands


# ---------------------------------------------------------------- BlockSampler

@pytest.mark.parametrize("n,bs,world", [(24, 3, 2), (20, 5, 1), (23, 3, 2)])
def test_sampler_epochs_are_partitions_of_the_blocks(n, bs, world):
    """Each epoch's global batches are disjoint, full, and (the incomplete tail dropped) cover
    batches_per_epoch * global_batch distinct blocks; with n divisible by the global batch that is
    every block exactly once. Reference: plain Python sets over three epochs, epoch counted by hand."""
    samplers = [BlockSampler(n, bs, seed=7, rank=r, world_size=world) for r in range(world)]
    per_epoch = n // (bs * world)
    assert samplers[0].batches_per_epoch == per_epoch
    seen_epochs = []
    for epoch in range(3):
        seen = []
        for _ in range(per_epoch):
            for s in samplers:
                idx = s.next_indices()
                assert len(idx) == bs                      # every batch is full
                seen.extend(int(i) for i in idx)
        assert len(set(seen)) == len(seen) == per_epoch * bs * world   # no block twice in an epoch
        assert set(seen) <= set(range(n))
        if n % (bs * world) == 0:
            assert set(seen) == set(range(n))              # every block once
        # the state names the epoch it is in: `epoch` full passes so far
        assert samplers[0].state_dict()["epoch"] == epoch
        seen_epochs.append(seen)
    assert seen_epochs[0] != seen_epochs[1]                # a new permutation each epoch


def test_sampler_epoch_k_uses_permutation_k():
    """Epoch k's order is the documented per-epoch permutation default_rng([seed, k]), starting at
    its first element (reference: numpy's generator called directly)."""
    n, bs, seed = 12, 4, 3
    s = BlockSampler(n, bs, seed=seed)
    for epoch in range(3):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        got = np.concatenate([s.next_indices() for _ in range(n // bs)])
        np.testing.assert_array_equal(got, perm)


# ---------------------------------------------------------------- DocumentRows

def _docs_stream(lengths, bos, eos, rng):
    """[bos] + body + [eos] per document; bodies use ids 0..9 so id 0 (a real token) appears often."""
    docs = [[bos] + list(rng.integers(0, 10, size=k)) + [eos] for k in lengths]
    return docs, np.array(sum(docs, []), dtype=np.uint16)


@pytest.mark.parametrize("context", [3, 4])
def test_document_rows_every_target_once_and_zero_is_a_token(context):
    """Reading the rows back, for each document the x positions with a target are doc[:-1] and the
    non-ignored y positions are doc[1:], in order (every target exactly once), whatever its length,
    including lengths with (len - 1) % context == 1. Token id 0 stays a token in x and y.
    Reference: the documents themselves (brute-force reassembly)."""
    rng = np.random.default_rng(0)
    bos, eos, pad = 0, 11, 12                             # bos is id 0: a real token, not padding
    lengths = list(range(0, 3 * context + 2))             # body lengths: every remainder mod context
    docs, stream = _docs_stream(lengths, bos, eos, rng)
    rows = DocumentRows(stream, context=context, eos_id=eos, pad_id=pad)
    x, y = rows.batch(np.arange(len(rows)))
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert x.shape == y.shape == (len(rows), context)
    # rows are in document order; split them back by counting windows per document
    r = 0
    for doc in docs:
        xs, ys = [], []
        while True:
            xr, yr = x[r].tolist(), y[r].tolist()
            keep = [i for i in range(context) if yr[i] != -100]
            xs += [xr[i] for i in keep]
            ys += [yr[i] for i in keep]
            ignored = [i for i in range(context) if yr[i] == -100]
            # after the document's last token (its eos, whose target is ignored) x is padding
            assert all(xr[i] == pad for i in ignored[1:]) and all(xr[i] in (pad, eos) for i in ignored[:1])
            r += 1
            if len(ys) == len(doc) - 1:
                break
        assert xs == doc[:-1] and ys == doc[1:]
    assert r == len(rows)                                 # no extra (empty) rows


def test_document_rows_refuse_out_of_range_rows():
    """A negative row index is an error, not numpy's wrap-around to the last row."""
    rows = DocumentRows(np.array([1, 5, 2, 1, 6, 7, 2], dtype=np.uint16), context=4, eos_id=2, pad_id=0)
    with pytest.raises(IndexError):
        rows.batch(np.array([0, -1]))
    with pytest.raises(IndexError):
        rows.batch(np.array([len(rows)]))


# ---------------------------------------------------------------- dedup

def _p_candidate(t: float, bands: int, rows: int) -> float:
    return 1 - (1 - t ** rows) ** bands


def test_lsh_bands_against_brute_force():
    """(bands, rows) is the largest rows-per-band whose candidate probability at the threshold reaches
    the recall, with bands = NUM_PERM // rows >= 2 (datasketch refuses a single band); where no banding
    reaches it, the most sensitive one (one row per band, NUM_PERM bands). At threshold 1.0 every
    banding finds identical signatures, so the answer is 2 bands of NUM_PERM / 2 rows.
    Reference: enumeration of every rows value."""
    for t in (0.5, 0.7, 0.8, 0.9, 0.95, 0.999):
        ok = [r for r in range(1, NUM_PERM + 1)
              if NUM_PERM // r >= 2 and _p_candidate(t, NUM_PERM // r, r) >= 0.995]
        assert lsh_bands(t) == (NUM_PERM // max(ok), max(ok))
    assert lsh_bands(1.0) == (2, NUM_PERM // 2)
    assert lsh_bands(1.0, recall=1.0) == (2, NUM_PERM // 2)    # P is exactly 1: 'at least' the recall
    # unreachable recall: the banding with the highest candidate probability
    best = max(range(1, NUM_PERM + 1), key=lambda r: _p_candidate(0.01, NUM_PERM // r, r))
    assert lsh_bands(0.01) == (NUM_PERM // best, best) == (NUM_PERM, 1)


def test_threshold_one_drops_rows_with_the_same_ngram_set():
    """'At least the threshold': with data.dedup_threshold = 1.0, a row whose word n-gram set equals
    an earlier row's (only case and punctuation differ, so not an exact copy) is a near duplicate;
    a row with one different word is kept."""
    pytest.importorskip("datasketch")
    words = " ".join(f"w{i}" for i in range(40))
    dedup = Deduplicator("near", threshold=1.0, ngram=3)
    assert dedup.check(words, "heldout") is None
    assert dedup.check(words.upper().replace(" ", ", ") + "!", "train") == "near"
    assert dedup.check(words.replace("w20", "other"), "train") is None


def test_deduplicator_defaults_are_the_documented_config_defaults():
    """Deduplicator('near') decides as the documented defaults (DataConfig: threshold 0.8, 5-word
    shingles) do. Rows: 'buffalo' x5 and x8 have the same 5-gram set (a near copy with 5-grams, not
    with 6-grams); a row sharing about 90% of its 5-grams is a copy, one sharing about 50% is not."""
    pytest.importorskip("datasketch")
    cfg = DataConfig()
    assert (cfg.dedup_threshold, cfg.dedup_ngram) == (0.8, 5)
    base = [f"w{i}" for i in range(400)]
    close = list(base)
    for i in range(10, 400, 100):                          # 4 changed words: 20 of 396 5-grams differ
        close[i] = f"x{i}"
    far = base[:200] + [f"y{i}" for i in range(200)]
    rows = [("buffalo " * 5).strip(), ("buffalo " * 8).strip(), " ".join(base), " ".join(close), " ".join(far)]
    expected = [None, "near", None, "near", None]
    defaults = Deduplicator("near")
    documented = Deduplicator("near", cfg.dedup_threshold, cfg.dedup_ngram)
    assert [defaults.check(r, "train") for r in rows] == expected
    assert [documented.check(r, "train") for r in rows] == expected


# ---------------------------------------------------------------- dialogue and data config

def _hh(*transcripts):
    return [{"chosen": c, "rejected": r} if r is not None else {"chosen": c} for c, r in transcripts]


def _write_jsonl(path, records, extra_lines=()):
    import json
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(extra_lines), encoding="utf-8")
    return path


def test_split_last_turn_at_the_start_of_the_transcript():
    """A transcript that begins with the Assistant turn splits there (cut at index 0 is a cut)."""
    from dataset_definitions.dialogue import split_last_turn
    assert split_last_turn("\n\nAssistant: hi there ") == ("\n\nAssistant:", "hi there")
    assert split_last_turn("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d") == (
        "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", "d")


def test_dialogues_skip_and_count_each_bad_record(tmp_path):
    """Records without an Assistant turn, with an empty response, or unreadable lines are skipped and
    counted one each, into the caller's counter; a rejected text without an Assistant turn is the
    rejected response as it is (stripped); `limit` caps the dialogues yielded. Reference: counts by hand."""
    from collections import Counter

    from dataset_definitions.dialogue import iter_dialogues
    good = [(f"\n\nHuman: q{i}\n\nAssistant: a{i}", f"\n\nHuman: q{i}\n\nAssistant: bad{i}") for i in range(3)]
    records = _hh(good[0], ("no turn at all", None), ("\n\nHuman: q\n\nAssistant:   ", None), good[1],
                  ("\n\nHuman: q\n\nAssistant:", None), ("", None), ("\n\nHuman: x\n\nAssistant: y", "  plain no  "),
                  ("\n\nHuman: q\n\nAssistant: ", None), good[2])
    path = _write_jsonl(tmp_path / "hh.jsonl", records, ["{not json\n"])
    cfg = DataConfig(source="jsonl", path=str(path))
    skipped = Counter()
    out = list(iter_dialogues(cfg, skipped=skipped))
    assert [d.chosen for d in out] == ["a0", "a1", "y", "a2"]
    assert [d.rejected for d in out] == ["bad0", "bad1", "plain no", "bad2"]
    assert skipped == Counter({"no Assistant turn": 2, "empty response": 3, "invalid JSON": 1})
    assert [d.chosen for d in iter_dialogues(cfg, limit=2)] == ["a0", "a1"]   # no counter given: still works


def test_dialogues_of_an_empty_file_are_none(tmp_path):
    """An empty jsonl source gives no dialogues (not an error)."""
    from dataset_definitions.dialogue import iter_dialogues
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert list(iter_dialogues(DataConfig(source="jsonl", path=str(path)))) == []


@pytest.mark.parametrize("source", ["text", "jsonl"])
def test_file_sources_need_a_path(source):
    """data.source=text or jsonl without data.path is refused when the config is made."""
    with pytest.raises(ValueError, match=f"data.source={source} needs data.path"):
        DataConfig(source=source)


@pytest.mark.parametrize("context, stride", [(4, None), (4, 1), (5, 3), (8, 8), (3, 7)])
def test_token_blocks_are_every_window_that_fits_and_nothing_past_the_end(context, stride):
    """Against a brute-force reference, for stream lengths around each edge: the windows are those starting at
    i * stride with context + 1 tokens inside the stream (none fewer, none more), x = its first context tokens
    and y = its last, as (B, context) int64; an index outside [0, n) is refused, at either end."""
    step = stride or context
    for length in range(0, 4 * context + 3):
        tokens = (np.arange(length, dtype=np.uint16) * 7 + 3) % 1000
        starts = [s for s in range(0, length, step) if s + context + 1 <= length]
        blocks = TokenBlocks(tokens, context, stride)
        assert len(blocks) == len(starts), (length, context, stride)
        if not starts:
            continue
        x, y = blocks.batch(np.arange(len(starts))[::-1].copy())
        assert x.shape == y.shape == (len(starts), context) and x.dtype == y.dtype == torch.int64
        for row, s in zip(range(len(starts)), starts[::-1]):
            assert x[row].tolist() == tokens[s:s + context].tolist()
            assert y[row].tolist() == tokens[s + 1:s + context + 1].tolist()
        x0, y0 = blocks[len(starts) - 1]
        assert torch.equal(x0, x[0]) and torch.equal(y0, y[0])
        for bad in (np.array([len(starts)]), np.array([-1]), np.array([0, len(starts)])):
            with pytest.raises(IndexError, match=rf"block index out of range \[0, {len(starts)}\)"):
                blocks.batch(bad)


def test_a_sampler_needs_one_global_batch_of_blocks_and_exactly_one_will_do():
    assert BlockSampler(4, 2, seed=0, world_size=2).batches_per_epoch == 1
    with pytest.raises(ValueError, match=r"only 3 training blocks for a global batch of 4: use more data"):
        BlockSampler(3, 2, seed=0, world_size=2)
