"""Random token streams in place of prepared data: speed benchmarks need no corpus or tokenizer files."""

from dataclasses import dataclass

import numpy as np

from dataset_definitions.datasets import TokenBlocks
from dataset_definitions.tokenization import Tokenizer


@dataclass
class IdTokenizer(Tokenizer):
    """A tokenizer of bare ids: what the trainer reads of one (size, special ids, spec)."""
    vocab_size: int
    bos_id: int | None = None
    pad_id: int | None = None
    eos_id: int | None = None
    kind: str = "random"
    path: str | None = None

    def spec(self) -> dict:
        return {"kind": "random", "path": None, "vocab_size": self.vocab_size}


class RandomTokens:
    """Uniform random token ids for the train and val splits, shaped like `PreparedData`."""

    def __init__(self, vocab_size: int, train_tokens: int, val_tokens: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.tokenizer = IdTokenizer(vocab_size)
        self._tokens = {split: rng.integers(0, vocab_size, n, dtype=np.int32)
                        for split, n in (("train", train_tokens), ("val", val_tokens))}

    def tokens(self, split: str) -> np.ndarray:
        return self._tokens[split]

    def blocks(self, split: str, context: int, stride: int | None = None, packing: str = "pack") -> TokenBlocks:
        if packing != "pack":
            raise ValueError("random tokens have no documents to pad: use data.packing=pack")
        return TokenBlocks(self._tokens[split], context, stride)

    def bytes_per_token(self, split: str) -> float:
        return 1.0  # no text behind the ids: bits per byte reads as bits per token
