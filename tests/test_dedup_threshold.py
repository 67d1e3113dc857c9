"""Near de-duplication honours data.dedup_threshold and data.dedup_ngram: a row is dropped when the
exact Jaccard similarity of its word n-gram set to an earlier row (computed here with Python sets)
is above the threshold, kept when below, for thresholds other than the default. Pairs sit at least
three MinHash standard errors (about 0.035 each) from every threshold."""

import random

import pytest

from dataset_definitions.dedup import Deduplicator

pytest.importorskip("datasketch")


def jaccard(a: str, b: str, n: int) -> float:
    grams = lambda t: {tuple(t.lower().split()[i:i + n]) for i in range(len(t.split()) - n + 1)}  # noqa: E731
    return len(grams(a) & grams(b)) / len(grams(a) | grams(b))


def variant(words: list[str], changes: int) -> str:
    """A copy with `changes` evenly spaced words replaced by words no other row uses."""
    out = list(words)
    for k in range(changes):
        out[(k * len(out)) // changes] = f"new{k}"
    return " ".join(out)


@pytest.mark.parametrize("ngram", [3, 5])
def test_a_row_is_near_duplicate_exactly_when_its_jaccard_reaches_the_threshold(ngram):
    rng = random.Random(7)
    words = [f"w{rng.randrange(5000)}" for _ in range(300)]
    original = " ".join(words)
    # variants at decreasing similarity: the number of changed words that gives each target Jaccard
    targets = [0.97, 0.70, 0.40]
    variants = []
    for target in targets:
        changes = next(c for c in range(1, 300) if jaccard(original, variant(words, c), ngram) <= target)
        variants.append(variant(words, changes))
    similarity = [jaccard(original, v, ngram) for v in variants]
    for threshold in (0.55, 0.85):
        assert all(abs(s - threshold) > 0.1 for s in similarity), (similarity, threshold)
        for text, s in zip(variants, similarity):
            dedup = Deduplicator("near", threshold=threshold, ngram=ngram)
            assert dedup.check(original, "heldout") is None
            expected = "near" if s >= threshold else None
            assert dedup.check(text, "train") == expected, (threshold, s)
            assert dedup.check(text, "train") == ("exact" if expected is None else expected)
