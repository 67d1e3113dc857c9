"""Train a tokenizer file on the train split: byte-level BPE, SentencePiece BPE or a word vocabulary.

    tok = build_tokenizer(cfg.tokenizer, lambda: train_texts, Path("tokenizers"), "bpe-<data key>")

`build_tokenizer` loads the file the config names (or gpt2/llama), else loads or trains
<out_dir>/<name>.<ext>; tokenization.py holds the tokenizer classes that read these files.
"""

import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from dataset_definitions.config import TokenizerConfig
from dataset_definitions.tokenization import (BPE_SPECIALS, TRAINED_FILE_TYPES, WORD_PATTERN, WORD_SPECIALS, Tokenizer,
                                              load_tokenizer_file, num_threads, split_words)
from fileio import atomic_write

MIN_BYTE_VOCAB = 256 + len(BPE_SPECIALS)  # every byte must be a token, plus the specials

# SentencePiece skips sentences longer than max_sentence_length bytes, so long lines are cut
# into pieces of at most _SP_CHUNK_CHARS characters (<= 4 bytes each in UTF-8).
_SP_CHUNK_CHARS = 4096
_SP_MAX_SENTENCES = 1_000_000  # sampled from the train text; more only slows training


def build_tokenizer(cfg: TokenizerConfig, train_texts: Callable[[], Iterable[str]],
                    out_dir: Path, name: str) -> Tokenizer:
    """Load the tokenizer that `cfg` names, training it first if needed.

    Args:
        cfg: tokenizer config; cfg.path set = load that file (or gpt2 folder).
        train_texts: called once, only when training, for an iterable of training documents.
        out_dir: where a trained tokenizer is saved, as <name>.json (bpe, word) or <name>.model.
        name: file stem; if out_dir/<name>.<ext> exists it is loaded, not retrained.
    Returns:
        The tokenizer.
    """
    if cfg.path is not None or cfg.kind in ("gpt2", "llama"):
        return load_tokenizer_file(cfg.kind, cfg.path)
    path = Path(out_dir) / f"{name}.{TRAINED_FILE_TYPES[cfg.kind]}"
    if path.exists():
        tok = load_tokenizer_file(cfg.kind, str(path))
        note = "" if tok.vocab_size == cfg.vocab_size else f", tokenizer.vocab_size={cfg.vocab_size}"
        print(f"tokenizer: loaded {path} (vocab {tok.vocab_size}{note}); delete it to retrain")
        return tok
    path.parent.mkdir(parents=True, exist_ok=True)
    train = {"bpe": _train_bpe, "sentencepiece": _train_sentencepiece, "word": _train_word}[cfg.kind]
    data = train(_NonEmpty(train_texts()), cfg.vocab_size)
    atomic_write(path, data)  # an interrupted run never leaves a half file that later runs would load
    tok = load_tokenizer_file(cfg.kind, str(path))
    print(f"tokenizer: trained {cfg.kind} with vocab {tok.vocab_size}, saved {path}")
    return tok


class _NonEmpty:
    """Iterates the non-empty texts once, counting them, so empty training data fails clearly."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.count, self.error = texts, 0, None

    def __iter__(self):
        try:
            for text in self.texts:
                if text:
                    self.count += 1
                    yield text
        except Exception as e:
            self.error = e  # sentencepiece turns it into a RuntimeError; kept to re-raise as is
            raise

    def check(self):
        if self.count == 0:
            raise ValueError("no training text for the tokenizer (train_texts() yielded nothing)")


def _check_min_vocab(vocab_size: int, minimum: int, why: str):
    if vocab_size < minimum:
        raise ValueError(f"tokenizer.vocab_size={vocab_size} is too small: the minimum is {minimum} ({why})")


def _train_bpe(texts: _NonEmpty, vocab_size: int) -> bytes:
    """Byte-level BPE trained on `texts`; returns the tokenizer JSON."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    _check_min_vocab(vocab_size, MIN_BYTE_VOCAB, "256 bytes + 4 specials")
    tok = HFTokenizer(models.BPE(unk_token="<unk>"))
    # No prefix space: it would add a space to every text and break exact round trips.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True)
    tok.train_from_iterator(texts, trainer)
    texts.check()
    return tok.to_str().encode("utf-8")


def _sentences(texts: Iterable[str]) -> Iterable[str]:
    """Documents to SentencePiece sentences: non-blank lines, long ones cut into chunks."""
    for text in texts:
        for line in text.split("\n"):
            for i in range(0, len(line), _SP_CHUNK_CHARS):
                if line[i:i + _SP_CHUNK_CHARS].strip():
                    yield line[i:i + _SP_CHUNK_CHARS]


def _train_sentencepiece(texts: _NonEmpty, vocab_size: int) -> bytes:
    """SentencePiece BPE with byte fallback trained on `texts`; returns the model bytes."""
    import sentencepiece as spm
    _check_min_vocab(vocab_size, MIN_BYTE_VOCAB, "256 byte pieces + 4 specials, plus the characters seen")
    model = io.BytesIO()
    print(f"tokenizer: training sentencepiece bpe, vocab {vocab_size}")
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_sentences(texts)), model_writer=model,
            model_type="bpe", vocab_size=vocab_size, byte_fallback=True,
            pad_id=0, bos_id=1, eos_id=2, unk_id=3,
            # identity + keep whitespace: the text is what it is, so decode(encode(x)) == x
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_digits=True,
            character_coverage=0.9995,  # rare characters go to byte pieces instead
            max_sentence_length=4 * _SP_CHUNK_CHARS, input_sentence_size=_SP_MAX_SENTENCES,
            shuffle_input_sentence=True, num_threads=num_threads(), minloglevel=1)
    except RuntimeError as e:
        if texts.error is not None:
            raise texts.error
        texts.check()
        reason = str(e).split("] ", 1)[-1].strip()  # drop sentencepiece's source location
        raise ValueError(f"sentencepiece cannot train tokenizer.vocab_size={vocab_size} on this text: "
                         f"{reason} (change tokenizer.vocab_size or train on more text)") from e
    return model.getvalue()


def _train_word(texts: _NonEmpty, vocab_size: int) -> bytes:
    """Word vocabulary: the specials, then the most frequent words (ties alphabetical); JSON bytes."""
    _check_min_vocab(vocab_size, len(WORD_SPECIALS) + 1, "4 specials + 1 word")
    pattern = re.compile(WORD_PATTERN)
    counts = Counter()
    for text in texts:
        counts.update(split_words(pattern, text))
    texts.check()
    words = sorted(counts, key=lambda w: (-counts[w], w))[:vocab_size - len(WORD_SPECIALS)]
    data = {"kind": "word", "pattern": WORD_PATTERN, "vocab": list(WORD_SPECIALS) + words}
    return json.dumps(data, ensure_ascii=False, indent=0).encode("utf-8")
