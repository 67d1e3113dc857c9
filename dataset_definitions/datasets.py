"""Training examples from a packed token stream, and a resumable shuffled batch sampler."""

import numpy as np
import torch


class TokenBlocks(torch.utils.data.Dataset):
    """Windows of `context + 1` tokens over a flat token stream (a memmap; slicing copies nothing).

    Window i starts at i * stride; it yields x = window[:-1] and y = window[1:] (the next token).
    With stride == context every token is a target exactly once.
    """

    def __init__(self, tokens: np.ndarray, context: int, stride: int | None = None):
        self.tokens, self.context, self.stride = tokens, context, stride or context
        self.n = max(0, (len(tokens) - context - 1) // self.stride + 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch(np.array([i]))
        return x[0], y[0]

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack the windows at `indices` into (x, y), each (B, context) int64."""
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n):
            raise IndexError(f"block index out of range [0, {self.n})")
        offsets = indices[:, None] * self.stride + np.arange(self.context + 1)  # (B, T+1)
        chunk = torch.from_numpy(self.tokens[offsets].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]


class DocumentRows(torch.utils.data.Dataset):
    """One row per document, padded: the fixed-length sequences of the original word-level model.

    Documents end at each eos of the stream ([bos] + ids + [eos] each). A document longer than
    context + 1 tokens is cut into windows that overlap by one token (every target once); the last
    window, or a short document, is padded with `pad_id` in x and -100 in y, which the loss skips.
    """

    def __init__(self, tokens: np.ndarray, context: int, eos_id: int, pad_id: int):
        self.tokens, self.context, self.pad_id = tokens, context, pad_id
        ends = np.flatnonzero(np.asarray(tokens) == eos_id) + 1                     # exclusive
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        pieces = np.maximum(1, -(-(ends - starts - 1) // context))                  # windows per document
        doc = np.repeat(np.arange(len(ends)), pieces)
        k = np.arange(len(doc)) - np.repeat(np.cumsum(pieces) - pieces, pieces)     # window number in its doc
        self.start = starts[doc] + k * context
        self.stop = np.minimum(self.start + context + 1, ends[doc])

    def __len__(self) -> int:
        return len(self.start)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, context) int64; y is -100 where x is padding."""
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"row index out of range [0, {len(self)})")
        rows = np.full((len(indices), self.context + 1), -1, dtype=np.int64)
        for r, i in enumerate(indices):
            piece = self.tokens[self.start[i]:self.stop[i]]
            rows[r, :len(piece)] = piece
        chunk = torch.from_numpy(rows)
        x, y = chunk[:, :-1].clone(), chunk[:, 1:].clone()
        x[x < 0], y[y < 0] = self.pad_id, -100
        return x, y


class BlockSampler:
    """Shuffled block indices, one permutation per epoch, split across data-parallel ranks.

    Every step consumes `batch_size * world_size` indices of the permutation; rank r takes its
    slice, so N processes see exactly the samples one process with N times the batch would.
    The state is (epoch, position): saving and restoring it continues the sequence exactly.
    """

    def __init__(self, n_blocks: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if n_blocks < batch_size * world_size:
            raise ValueError(
                f"only {n_blocks} training blocks for a global batch of {batch_size * world_size}: "
                "use more data (data.train_rows) or a smaller train.batch_size / model.context")
        self.n, self.bs, self.seed, self.rank, self.world = n_blocks, batch_size, seed, rank, world_size
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation(0)

    @property
    def batches_per_epoch(self) -> int:
        """Full global batches in one pass over the blocks (the incomplete tail is dropped)."""
        return self.n // (self.bs * self.world)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next_indices(self) -> np.ndarray:
        step = self.bs * self.world
        if self.pos + step > self.n:  # drop the incomplete tail so every batch is full
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        start = self.pos + self.rank * self.bs
        self.pos += step
        return self._perm[start:start + self.bs]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._perm = self._permutation(self.epoch)
