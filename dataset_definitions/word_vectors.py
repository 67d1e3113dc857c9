"""Pretrained word vectors (word2vec / fastText text format) for a word-level tokenizer's vocabulary.

    vectors, found = load_word_vectors("vectors.txt", tokenizer)   # model.word_vectors
"""

from pathlib import Path

import numpy as np

from dataset_definitions.tokenization import Tokenizer, WordTokenizer


def load_word_vectors(path: str | Path, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Pretrained vectors for a word tokenizer's vocabulary, from a word2vec/fastText text file.

    The file may start with an "N dim" header; each other line is "word v1 ... vd". An exact
    match wins; otherwise the first cased variant ("The") fills a lower-case word's row.

    Args:
        path: the .txt/.vec file.
        tokenizer: a word-level tokenizer (kind word).
    Returns:
        (vectors, found): float32 (vocab_size, d), zero rows for missing words; bool (vocab_size,).
    """
    if not isinstance(tokenizer, WordTokenizer):
        raise ValueError(f"load_word_vectors needs a word-level tokenizer (tokenizer.kind=word), "
                         f"got kind {tokenizer.kind}")
    vectors, found, exact, dim = None, None, None, None
    # errors="replace": a stray bad byte in a huge file only spoils that word, which won't match.
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dim = int(parts[1])  # "N dim" header
                continue
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) < dim + 1:
                raise ValueError(f"{path}:{lineno}: expected a word and {dim} numbers, got {len(parts)} fields")
            if vectors is None:
                vectors = np.zeros((tokenizer.vocab_size, dim), dtype=np.float32)
                found = np.zeros(tokenizer.vocab_size, dtype=bool)
                exact = np.zeros(tokenizer.vocab_size, dtype=bool)
            word = " ".join(parts[:-dim])  # a few files hold words with spaces
            i = tokenizer.index.get(word)
            is_exact = i is not None
            if i is None:
                i = tokenizer.index.get(word.lower())
            if i is None or exact[i] or (found[i] and not is_exact):
                continue  # parse numbers only for rows we fill: most lines are unused
            vectors[i] = np.asarray(parts[-dim:], dtype=np.float32)
            found[i], exact[i] = True, is_exact
    if vectors is None:
        raise ValueError(f"{path} holds no word vectors")
    return vectors, found
