"""Tests for dataset_definitions/word_vectors.py: word2vec/fastText text files onto a word vocabulary."""

import numpy as np
import pytest

from dataset_definitions.config import TokenizerConfig
from dataset_definitions.tokenizer_training import build_tokenizer
from dataset_definitions.word_vectors import load_word_vectors


def trained(tmp_path, kind: str, vocab_size: int, texts: list[str]):
    return build_tokenizer(TokenizerConfig(kind=kind, vocab_size=vocab_size), lambda: texts, tmp_path, "tok")


@pytest.mark.parametrize("header", [True, False])
def test_load_word_vectors(tmp_path, header):
    tok = trained(tmp_path, "word", 12, ["the cat sat on the mat. the dog sat."])
    lines = ["The 9 9 9", "the 1 2 3", "cat 0.5 -1 2.5", "Dog 4 5 6", "zebra 7 7 7", "sat 1e-1 0 0"]
    path = tmp_path / "vectors.txt"
    path.write_text(("6 3\n" if header else "") + "\n".join(lines) + "\n")
    vectors, found = load_word_vectors(path, tok)
    assert vectors.shape == (tok.vocab_size, 3) and vectors.dtype == np.float32
    assert found.shape == (tok.vocab_size,) and found.dtype == bool
    ix = tok.index
    np.testing.assert_allclose(vectors[ix["the"]], [1, 2, 3])  # exact match beats "The"
    np.testing.assert_allclose(vectors[ix["cat"]], [0.5, -1, 2.5])
    np.testing.assert_allclose(vectors[ix["dog"]], [4, 5, 6])  # cased variant fills the row
    np.testing.assert_allclose(vectors[ix["sat"]], [0.1, 0, 0])
    assert set(np.flatnonzero(found)) == {ix["the"], ix["cat"], ix["dog"], ix["sat"]}
    assert not vectors[~found].any()


def test_load_word_vectors_needs_word_tokenizer(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("the 1 2\n")
    with pytest.raises(ValueError, match="tokenizer.kind=word"):
        load_word_vectors(path, trained(tmp_path, "bpe", 300, [f"the cat {i} sat on the mat." for i in range(50)]))
