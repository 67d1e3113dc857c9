"""Config sections for the data (`data.*`) and the tokenizer (`tokenizer.*`)."""

from dataclasses import dataclass

SOURCES = ("builtin", "hf", "text", "jsonl")
DEDUP_MODES = ("none", "exact", "near")
TOKENIZER_KINDS = ("bpe", "gpt2", "llama", "sentencepiece", "word")


@dataclass
class DataConfig:
    source: str = "builtin"         # builtin | hf | text | jsonl
    name: str | None = None         # hf: a hub dataset ("roneneldan/TinyStories"), a builder ("json",
                                    # "text", "parquet") or a local dataset folder
    path: str | None = None         # text/jsonl: the file; hf: data_files for a builder (glob allowed)
    split: str = "train"            # hf: the split rows are streamed from
    config_name: str | None = None  # hf: dataset configuration ("subset"), if it has several
    text_field: str = "text"        # hf/jsonl: the field holding the document text
    delimiter: str | None = None    # text: document separator (e.g. "<|endoftext|>"); None = one per line
    train_rows: int | None = None   # documents for training; None = all that remain (builtin: 50,000)
    val_rows: int = 1000            # documents for validation
    heldout_rows: int = 10000       # documents kept apart for the perplexity runners
    seed: int = 0                   # builtin: corpus seed
    stride: int | None = None       # distance between training windows; None = context (no overlap)
    packing: str = "pack"           # pack: windows over the document stream | pad: one padded row per
                                    # document (cut into context-size pieces), as the word-level model had
    dedup: str = "none"             # none | exact | near (dataset_definitions/dedup.py); none still keeps
                                    # rows equal to a held-out/val row out of the later splits
    dedup_threshold: float = 0.8    # near: Jaccard similarity of word n-gram sets at which a row is a copy
    dedup_ngram: int = 5            # near: words per shingle

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"data.source: {self.source!r} is not one of {list(SOURCES)}")
        if self.source in ("text", "jsonl") and not self.path:
            raise ValueError(f"data.source={self.source} needs data.path (set --set data.path=FILE)")
        if self.source == "hf" and not self.name:
            raise ValueError("data.source=hf needs data.name (a hub dataset, a builder such as 'json', or a folder)")
        for key in ("val_rows", "heldout_rows"):
            if getattr(self, key) < 0:
                raise ValueError(f"data.{key} must be >= 0, got {getattr(self, key)}")
        if self.train_rows is not None and self.train_rows <= 0:
            raise ValueError(f"data.train_rows must be positive, got {self.train_rows}")
        if self.stride is not None and self.stride <= 0:
            raise ValueError(f"data.stride must be positive, got {self.stride}")
        if self.packing not in ("pack", "pad"):
            raise ValueError(f"data.packing: {self.packing!r} is not one of ['pack', 'pad']")
        if self.dedup not in DEDUP_MODES:
            raise ValueError(f"data.dedup: {self.dedup!r} is not one of {list(DEDUP_MODES)}")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ValueError(f"data.dedup_threshold must be in (0, 1], got {self.dedup_threshold}")
        if self.dedup_ngram <= 0:
            raise ValueError(f"data.dedup_ngram must be positive, got {self.dedup_ngram}")


@dataclass
class TokenizerConfig:
    kind: str = "bpe"               # bpe | gpt2 | llama | sentencepiece | word
    path: str | None = None         # a trained file to load (bpe .json, sentencepiece/llama .model, word
                                    # .json) or, for gpt2, a folder with encoder.json + vocab.bpe;
                                    # None = train on the train split (bpe, sentencepiece, word) or
                                    # download (gpt2)
    vocab_size: int = 8192          # size to train to (bpe, sentencepiece, word)

    def __post_init__(self):
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer.kind: {self.kind!r} is not one of {list(TOKENIZER_KINDS)}")
        if self.kind == "llama" and not self.path:
            raise ValueError("tokenizer.kind=llama needs tokenizer.path (a Llama tokenizer.model file)")
        if self.vocab_size <= 0:
            raise ValueError(f"tokenizer.vocab_size must be positive, got {self.vocab_size}")
