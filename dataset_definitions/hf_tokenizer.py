"""Our tokenizers as Hugging Face fast tokenizers, saved beside exported weights.

`save_hf_tokenizer(tokenizer, folder)` writes tokenizer.json + tokenizer_config.json, so that
`AutoTokenizer.from_pretrained(folder)` encodes a prompt as our generator does ([bos] + ids; GPT-2:
<|endoftext|> + ids) with bos/eos/pad/unk set, and decodes ids back. Per kind, the fast tokenizer is:

    bpe            our `tokenizers` file as it is
    gpt2           BPE from encoder.json + vocab.bpe with GPT-2's byte-level pre-tokenizer
    llama, sentencepiece   transformers' own conversion of the .model file (needs protobuf)
    word           WordLevel over our vocabulary: lower-case, split on spaces, then WORD_PATTERN

The source files of ours are copied in too (tokenizer.model, encoder.json + vocab.bpe, or
source_tokenizer.json), so `models.convert --from hf` finds our tokenizer again.
Known difference: word-level decoding joins words with single spaces ("hello , world ."), where
ours attaches punctuation ("hello, world.").
"""

import json
import shutil
import tempfile
from pathlib import Path

from dataset_definitions.tokenization import GPT2_FILES, WORD_PATTERN, Tokenizer


def fast_tokenizer(tokenizer: Tokenizer):
    """A transformers PreTrainedTokenizerFast computing our encoding, with a [bos] prefix template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = _backend(tokenizer)
    start = tokenizer.start_id   # as Generator.prompt_tokens
    token = lambda i: backend.id_to_token(i)  # noqa: E731
    backend.post_processor = processors.TemplateProcessing(
        single=f"{token(start)} $A", pair=f"{token(start)} $A {token(start)} $B", special_tokens=[(token(start), start)])
    specials = {"bos_token": token(start), "eos_token": token(tokenizer.eos_id), "pad_token": token(tokenizer.pad_id)}
    unk = getattr(tokenizer, "unk_id", None)
    if unk is None and backend.token_to_id("<unk>") is not None:
        unk = backend.token_to_id("<unk>")
    if unk is not None:
        specials["unk_token"] = token(unk)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def save_hf_tokenizer(tokenizer: Tokenizer, folder: str | Path) -> None:
    """Write the fast tokenizer and a copy of our tokenizer's files into `folder`."""
    folder = Path(folder)
    fast = fast_tokenizer(tokenizer)
    fast.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # the name transformers 4 and 5 both resolve
    config_path.write_text(json.dumps(config, indent=2))
    source = Path(tokenizer.path) if tokenizer.path else None
    if tokenizer.kind == "gpt2":
        for name in GPT2_FILES:
            shutil.copyfile(source / name, folder / name)
    elif tokenizer.kind in ("llama", "sentencepiece"):
        shutil.copyfile(source, folder / "tokenizer.model")
    else:
        shutil.copyfile(source, folder / "source_tokenizer.json")


def _backend(tokenizer: Tokenizer):
    """The `tokenizers.Tokenizer` that encodes as `tokenizer` does."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if tokenizer.path is None:
        raise ValueError(f"the {tokenizer.kind} tokenizer has no local files to save (tokenizer.path is unset)")
    if tokenizer.kind == "bpe":
        backend = HFTokenizer.from_file(tokenizer.path)
    elif tokenizer.kind == "gpt2":
        folder = Path(tokenizer.path)
        vocab = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
        lines = (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # first line: a version
        merges = [tuple(line.split()) for line in lines if line.strip()]
        backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens(["<|endoftext|>"])
    elif tokenizer.kind == "word":
        backend = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(tokenizer.words)}, unk_token="<unk>"))
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace("\u2019", "'")])
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")])
    else:  # llama, sentencepiece: transformers converts the .model file itself
        try:
            import google.protobuf  # noqa: F401  (without it transformers misreads the .model file)
        except ImportError:
            raise ImportError("saving a SentencePiece tokenizer for Hugging Face needs protobuf: "
                              "pip install protobuf") from None
        from transformers import LlamaTokenizerFast
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(tokenizer.path, Path(tmp) / "tokenizer.model")
            backend = LlamaTokenizerFast.from_pretrained(tmp).backend_tokenizer
    return backend
