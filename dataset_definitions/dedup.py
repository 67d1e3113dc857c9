"""De-duplication of rows as they are read (`data.dedup`), first row kept.

    none   only the leakage rule: a row equal to an earlier held-out or validation row is dropped
    exact  every row whose text equals an earlier row's (BLAKE2b of the UTF-8 text) is dropped,
           within and across splits
    near   exact, then every row whose estimated Jaccard similarity to an earlier kept row is at
           least `data.dedup_threshold` (default 0.8), on sets of word n-grams (`data.dedup_ngram`,
           default 5; lower-cased words): MinHash signatures and LSH from `datasketch`, each LSH
           candidate confirmed by its signature's Jaccard estimate before a row is dropped. The LSH
           bands are chosen so that a pair right at the threshold becomes a candidate with
           probability >= 0.995 (datasketch's default banding misses a quarter of pairs at 0.86);
           the estimate's own standard error (about 0.035 at 0.8) decides pairs near the threshold

Rows are read held-out first, then validation, then training, so an earlier split keeps a row and
a later one loses its copies: the held-out rows stay disjoint from training by exact and, with
`near`, by near-duplicate content, and held-out perplexity is not inflated by leakage.
Near de-duplication keeps one 128-value signature per kept row in memory (512 bytes).
"""

import hashlib
import re

import numpy as np

from dataset_definitions.config import DEDUP_MODES

NUM_PERM = 128          # MinHash permutations: the Jaccard estimate's standard error is about 0.04
_WORD = re.compile(r"\w+")


def word_ngrams(text: str, n: int) -> set[bytes]:
    """The set of lower-cased word n-grams of `text` (the whole text as one shingle if shorter)."""
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


def lsh_bands(threshold: float, recall: float = 0.995) -> tuple[int, int]:
    """(bands, rows per band) with the most rows per band whose P(candidate | Jaccard = threshold) >= recall.
    At least 2 bands: datasketch's MinHashLSH refuses one (thresholds from about 0.99996, 1.0 included)."""
    best = (NUM_PERM, 1)
    for rows in range(1, NUM_PERM // 2 + 1):
        bands = NUM_PERM // rows
        if 1 - (1 - threshold ** rows) ** bands >= recall:
            best = (bands, rows)
    return best


class Deduplicator:
    """Decides, row by row in reading order, whether a row repeats an earlier kept row."""

    def __init__(self, mode: str, threshold: float = 0.8, ngram: int = 5, seed: int = 1):
        if mode not in DEDUP_MODES:
            raise ValueError(f"data.dedup: {mode!r} is not one of {list(DEDUP_MODES)}")
        self.mode, self.threshold, self.ngram, self.seed = mode, threshold, ngram, seed
        self._eval_hashes: set[bytes] = set()   # mode none: held-out and validation texts only
        self._hashes: set[bytes] = set()
        self._signatures: list[np.ndarray] = []
        if mode == "near":
            from datasketch import MinHashLSH
            self._lsh = MinHashLSH(num_perm=NUM_PERM, params=lsh_bands(threshold))

    def check(self, text: str, split: str) -> str | None:
        """"exact" or "near" if the row repeats an earlier kept one (it is then not kept), else None."""
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if self.mode == "none":
            if digest in self._eval_hashes:
                return "exact"
            if split != "train":
                self._eval_hashes.add(digest)
            return None
        if digest in self._hashes:
            return "exact"
        if self.mode == "near":
            minhash = self._minhash(text)
            for key in self._lsh.query(minhash):
                if np.mean(self._signatures[key] == minhash.hashvalues) >= self.threshold:
                    return "near"
            self._lsh.insert(len(self._signatures), minhash)
            self._signatures.append(minhash.hashvalues.astype(np.uint32))  # values < 2**32
        self._hashes.add(digest)
        return None

    def _minhash(self, text: str):
        from datasketch import MinHash
        minhash = MinHash(num_perm=NUM_PERM, seed=self.seed)
        minhash.update_batch(list(word_ngrams(text, self.ngram)))
        return minhash
