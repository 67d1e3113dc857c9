"""One small tokenizer interface over five backends, chosen by `tokenizer.kind`, and its loaders.

    bpe            byte-level BPE trained with Hugging Face `tokenizers`   (<name>.json)
    gpt2           GPT-2's BPE through tiktoken, local files or download   (a folder)
    llama          a Llama SentencePiece tokenizer.model                   (given file)
    sentencepiece  SentencePiece BPE trained here, byte fallback           (<name>.model)
    word           lower-cased words, most frequent train words            (<name>.json)

Special ids: bpe and sentencepiece use pad=0, bos=1, eos=2, unk=3; word uses <sos>=0, <eos>=1,
<pad>=2, <unk>=3; gpt2 has only <|endoftext|>=50256 (eos and pad, no bos); llama has bos=1,
eos=2 and pads with its pad id, or eos when it has none.

`encode` never adds specials; `decode` drops pad/bos/eos. `spec()` is a small dict of plain
types saved with data and checkpoints; `load_tokenizer(spec)` rebuilds the tokenizer from it
and refuses a file whose sha256 changed. Training the bpe, sentencepiece and word files:
tokenizer_training.py.
"""

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from dataset_definitions.config import TOKENIZER_KINDS
from fileio import sha256_file

BPE_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")   # ids 0..3, also used for sentencepiece
WORD_SPECIALS = ("<sos>", "<eos>", "<pad>", "<unk>")  # ids 0..3
GPT2_FILES = ("encoder.json", "vocab.bpe")
GPT2_EOT = 50256

# Words: letters/digits with an optional contraction ("don't", "it's"), or any single other
# non-space character, so punctuation becomes its own token. Curly apostrophes are mapped to
# "'" first so "don’t" and "don't" are one word.
WORD_PATTERN = r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]"
_NO_SPACE_BEFORE = set(".,!?;:)]}%")
_NO_SPACE_AFTER = set("([{$#")


class Tokenizer:
    """Interface: `encode` text to ids without specials, `decode` ids back, `spec` to rebuild."""

    kind: str
    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int

    def __init__(self, path: str | None):
        self.path = path  # the file or folder this was loaded from; None for a download
        self.sha256 = sha256_file(path) if path is not None and Path(path).is_file() else None

    @property
    def start_id(self) -> int:
        """The token a document starts with: BOS, or EOS for tokenizers without one (GPT-2's), the
        token that precedes a document in the packed stream."""
        return self.bos_id if self.bos_id is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        """Text to ids, no specials added."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts to ids, in parallel where the backend can; same ids as `encode`."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids (list, numpy array or tensor) to text, dropping pad/bos/eos."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return self._decode([int(i) for i in ids if i not in skip])

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def spec(self) -> dict:
        """Plain-typed description (kind, path, sha256, vocab_size) that `load_tokenizer` rebuilds."""
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256, "vocab_size": self.vocab_size}

    def __repr__(self):
        return f"{type(self).__name__}(kind={self.kind}, vocab_size={self.vocab_size}, path={self.path})"


class BPETokenizer(Tokenizer):
    """Byte-level BPE from Hugging Face `tokenizers`; decode(encode(text)) == text for any text."""

    kind = "bpe"

    def __init__(self, path: str):
        from tokenizers import Tokenizer as HFTokenizer
        super().__init__(path)
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception
            raise ValueError(f"{path} is not a Hugging Face tokenizer file: {e}") from e
        # Treat "<eos>" typed in the text as plain text, so arbitrary text round-trips exactly.
        self._tok.encode_special_tokens = True
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.pad_id, self.bos_id, self.eos_id = (self._tok.token_to_id(t) for t in BPE_SPECIALS[:3])
        if self.eos_id is None:
            raise ValueError(f"{path} has no <eos> token; bpe tokenizers are trained here with {BPE_SPECIALS}")
        if self.pad_id is None:
            self.pad_id = self.eos_id

    def encode(self, text):
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        # Rust batch encoder, parallel over texts; the _fast variant (newer tokenizers) skips offsets.
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def _decode(self, ids):
        return self._tok.decode(ids, skip_special_tokens=False)


class GPT2Tokenizer(Tokenizer):
    """GPT-2's 50257-token BPE through tiktoken; <|endoftext|> is both eos and pad."""

    kind = "gpt2"
    bos_id = None
    eos_id = pad_id = GPT2_EOT

    def __init__(self, folder: str | None):
        super().__init__(folder)
        self._enc = _gpt2_download() if folder is None else _gpt2_from_folder(folder)
        self.vocab_size = self._enc.n_vocab

    def encode(self, text):
        return self._enc.encode_ordinary(text)  # "<|endoftext|>" in the text stays plain text

    def encode_batch(self, texts):
        # tiktoken releases the GIL while encoding. Its encode_ordinary_batch makes one thread task
        # per text, which costs about as much as encoding a short story, so each thread here
        # takes a contiguous slice instead (~1.5x faster on 2 cores for ~700-byte documents).
        n = min(num_threads(), max(1, len(texts) // 16))
        if n == 1:
            return [self._enc.encode_ordinary(t) for t in texts]
        k = -(-len(texts) // n)  # ceil
        with ThreadPoolExecutor(n) as pool:
            parts = pool.map(lambda part: [self._enc.encode_ordinary(t) for t in part],
                             [texts[i:i + k] for i in range(0, len(texts), k)])
            return [ids for part in parts for ids in part]

    def _decode(self, ids):
        return self._enc.decode(ids)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model: a Llama tokenizer.model (kind llama) or one trained here."""

    def __init__(self, path: str, kind: str = "sentencepiece"):
        import sentencepiece as spm
        super().__init__(path)
        self.kind = kind
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(path))
        except Exception as e:
            raise ValueError(f"{path} is not a SentencePiece model file: {e}") from e
        self.vocab_size = self._sp.vocab_size()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_id = self._sp.eos_id()
        if self.eos_id < 0:
            raise ValueError(f"SentencePiece model {path} has no eos piece")
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id

    def encode(self, text):
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts):
        return self._sp.encode(texts, out_type=int, num_threads=num_threads())

    def _decode(self, ids):
        return self._sp.decode(ids)


class WordTokenizer(Tokenizer):
    """Lower-cased word level: WORD_PATTERN tokens, unknown words -> <unk>."""

    kind = "word"

    def __init__(self, path: str):
        super().__init__(path)
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("kind") != "word":
            raise ValueError(f"{path} is not a word-level tokenizer file (no \"kind\": \"word\")")
        self.words: list[str] = data["vocab"]  # id -> word, the specials first
        self.index = {w: i for i, w in enumerate(self.words)}
        self._pattern = re.compile(data["pattern"])  # the pattern it was trained with
        self.vocab_size = len(self.words)
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = range(len(WORD_SPECIALS))

    def split(self, text: str) -> list[str]:
        """Text to word strings, before the vocabulary lookup."""
        return split_words(self._pattern, text)

    def encode(self, text):
        return [self.index.get(w, self.unk_id) for w in self.split(text)]

    def _decode(self, ids):
        out = []
        for w in (self.words[i] for i in ids):
            # "hello , world ." -> "hello, world."
            if out and w not in _NO_SPACE_BEFORE and out[-1] not in _NO_SPACE_AFTER:
                out.append(" ")
            out.append(w)
        return "".join(out)


def split_words(pattern: re.Pattern, text: str) -> list[str]:
    """The words of `text` by `pattern`, lower-cased, curly apostrophes read as straight ones."""
    return pattern.findall(text.lower().replace("\u2019", "'"))


# ----------------------------------------------------------------------------- loading

TRAINED_FILE_TYPES = {"bpe": "json", "sentencepiece": "model", "word": "json"}  # kinds trained here, their files


def load_tokenizer_file(kind: str, path: str | None) -> Tokenizer:
    """The tokenizer of `kind` stored at `path` (a folder for gpt2; None = download gpt2)."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind {kind!r} is not one of {list(TOKENIZER_KINDS)}")
    if kind == "gpt2":
        return GPT2Tokenizer(None if path is None else str(path))
    if path is None:
        raise ValueError(f"tokenizer.kind={kind} needs tokenizer.path")
    if not Path(path).is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found: set tokenizer.path to an existing "
                                f"{kind} tokenizer file" + (" (or leave it unset to train one)"
                                                            if kind in TRAINED_FILE_TYPES else ""))
    if kind == "bpe":
        return BPETokenizer(str(path))
    if kind == "word":
        return WordTokenizer(str(path))
    return SentencePieceTokenizer(str(path), kind=kind)


def load_tokenizer(spec: dict) -> Tokenizer:
    """Rebuild a tokenizer from its `spec()`, refusing files that changed since.

    Args:
        spec: the dict returned by `Tokenizer.spec()` (kind, path, sha256, vocab_size).
    Returns:
        The same tokenizer. Raises ValueError if the file's sha256 or the vocab size differ.
    """
    path, sha = spec.get("path"), spec.get("sha256")
    if sha is not None and path is not None and Path(path).is_file() and sha256_file(path) != sha:
        raise ValueError(f"tokenizer file {path} changed since this data/checkpoint was made "
                         f"(sha256 {sha[:12]}... is now {sha256_file(path)[:12]}...)")
    tok = load_tokenizer_file(spec["kind"], path)
    if spec.get("vocab_size") is not None and tok.vocab_size != spec["vocab_size"]:
        raise ValueError(f"tokenizer {path or spec['kind']} has vocab_size {tok.vocab_size}, "
                         f"but this data/checkpoint was made with {spec['vocab_size']}")
    return tok


def tokenizer_from_file(path: str | Path) -> Tokenizer:
    """The tokenizer stored at `path`, its kind read off the file: a folder with encoder.json +
    vocab.bpe is gpt2, a .model file a SentencePiece model (kind llama), a .json file word or bpe."""
    path = Path(path)
    if path.is_dir():
        return load_tokenizer_file("gpt2", str(path))
    if path.suffix == ".model":
        return load_tokenizer_file("llama", str(path))
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        kind = "word" if isinstance(data, dict) and data.get("kind") == "word" else "bpe"
        return load_tokenizer_file(kind, str(path))
    raise ValueError(f"{path}: not a tokenizer (a folder with encoder.json + vocab.bpe, a .model or a .json file)")


# ----------------------------------------------------------------------------- gpt2

def _gpt2_from_folder(folder: str):
    """GPT-2's tiktoken Encoding from a local encoder.json + vocab.bpe."""
    import tiktoken
    import tiktoken.load
    from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenizer regex
    files = [Path(folder) / f for f in GPT2_FILES]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"gpt2 tokenizer file {f} not found: set tokenizer.path to a folder "
                                    f"with encoder.json and vocab.bpe")
    vocab_bpe, encoder_json = str(files[1]), str(files[0])
    # tiktoken caches files by path; passing the hashes makes it re-read a file that changed.
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json,
        vocab_bpe_hash=sha256_file(vocab_bpe), encoder_json_hash=sha256_file(encoder_json))
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": GPT2_EOT}, explicit_n_vocab=GPT2_EOT + 1)


def _gpt2_download():
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # network errors come from requests, urllib3, ssl, ...
        raise RuntimeError(f"could not download the gpt2 tokenizer ({type(e).__name__}); offline? "
                           f"set tokenizer.path to a folder with encoder.json and vocab.bpe") from e


# ----------------------------------------------------------------------------- helpers

def num_threads() -> int:
    """The cores this process may use (containers and taskset limit them), not the machine's."""
    # The cores this process may use (containers and taskset limit them), not the machine's.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
