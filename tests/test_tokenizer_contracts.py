"""Contracts of tokenizer loading and training and of word vectors, checked against independent
references: tiktoken's own GPT-2 files, per-text encoding, the sentencepiece model read back with
the sentencepiece library, the boundaries of the documented minimum vocabularies, and vectors
written by hand into word2vec-format files."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from dataset_definitions import tokenization
from dataset_definitions.config import TokenizerConfig
from dataset_definitions.tokenization import (GPT2_FILES, WORD_PATTERN, WORD_SPECIALS, GPT2Tokenizer,
                                              load_tokenizer_file)
from dataset_definitions.tokenizer_training import MIN_BYTE_VOCAB, _sentences, build_tokenizer
from dataset_definitions.word_vectors import load_word_vectors

WORDS = ["cat", "dog", "tree", "boat", "stone", "kite", "hat", "cake", "ball", "river"]


def _texts(n=120):
    return [f"The {WORDS[i % 10]} and the {WORDS[(3 * i) % 10]} went {i % 7} miles." for i in range(n)]


def _build(tmp_path, kind, vocab_size, texts=None, name="tok"):
    texts = _texts() if texts is None else texts
    return build_tokenizer(TokenizerConfig(kind=kind, vocab_size=vocab_size), lambda: texts, tmp_path, name)


# ----------------------------------------------------------------------------- loading

def test_gpt2_download_is_tiktokens_gpt2_encoding(tmp_path, monkeypatch, gpt2_dir):
    """Without tokenizer.path, gpt2 is tiktoken's 'gpt2' encoding: offline here, from tiktoken's file
    cache filled with the reference GPT-2 files (tiktoken checks their SHA-256). It encodes like the
    local-folder tokenizer."""
    urls = {"vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
            "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"}
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    for name in GPT2_FILES:
        shutil.copy(gpt2_dir / name, cache / hashlib.sha1(urls[name].encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    downloaded, local = GPT2Tokenizer(None), GPT2Tokenizer(str(gpt2_dir))
    text = "Once upon a time, a fox met 3 hens by the river.\n"
    assert downloaded.vocab_size == local.vocab_size == 50257
    assert downloaded.encode(text) == local.encode(text)


def test_gpt2_encode_batch_equals_encode_each(monkeypatch, gpt2_dir):
    """encode_batch gives the same ids, in order, as encode on each text, for batch sizes around the
    thread split (16 texts per thread) with 4 threads allowed. Reference: encode per text."""
    monkeypatch.setattr(tokenization, "num_threads", lambda: 4)
    tok = GPT2Tokenizer(str(gpt2_dir))
    texts = _texts(70)
    for n in (0, 1, 15, 16, 20, 33, 70):
        assert tok.encode_batch(texts[:n]) == [tok.encode(t) for t in texts[:n]]


def test_word_kind_refuses_a_file_that_is_not_a_word_vocabulary(tmp_path):
    """A bpe tokenizer file (a JSON object without "kind": "word") or a JSON list loaded as kind word
    is a ValueError naming the problem, not a KeyError or AttributeError."""
    bpe = _build(tmp_path, "bpe", 300)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(["<sos>", "<eos>"]))
    for path in (bpe.path, listed):
        with pytest.raises(ValueError, match="not a word-level tokenizer file"):
            load_tokenizer_file("word", str(path))


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("kind,minimum,why", [
    ("bpe", MIN_BYTE_VOCAB, "256 bytes + 4 specials"),
    ("word", len(WORD_SPECIALS) + 1, "4 specials + 1 word"),
    ("sentencepiece", MIN_BYTE_VOCAB, "256 byte pieces + 4 specials, plus the characters seen"),
])
def test_minimum_vocab_sizes(tmp_path, kind, minimum, why):
    """The documented minimum trains (bpe, word: exactly that many tokens); one less is refused with
    the reason. Reference: the minimums the module documents (256 bytes + 4 specials; 4 specials + 1 word)."""
    assert (MIN_BYTE_VOCAB, len(WORD_SPECIALS)) == (260, 4)
    with pytest.raises(ValueError, match=rf"vocab_size={minimum - 1} is too small: the minimum is {minimum} "
                                         rf"\({why.replace('+', chr(92) + '+')}\)"):
        _build(tmp_path, kind, minimum - 1, name="small")
    if kind != "sentencepiece":          # sentencepiece also needs room for the characters it saw
        assert _build(tmp_path, kind, minimum, name="min").vocab_size == minimum


def test_sentencepiece_sentences_are_non_blank_lines_cut_in_chunks():
    """Documents become their non-blank lines, each cut into pieces of at most 4096 characters that
    together are the line. Reference: the lines and a hand-made long line."""
    long_line = "".join(chr(ord("a") + i % 26) for i in range(2 * 4096 + 100))
    docs = ["first line here\n\n   \nsecond line", long_line, "last"]
    got = list(_sentences(docs))
    assert got == ["first line here", "second line", long_line[:4096], long_line[4096:8192],
                   long_line[8192:], "last"]


def test_sentencepiece_trains_on_a_shuffled_sample_of_at_most_a_million_lines(tmp_path, monkeypatch):
    """A large corpus is sampled, not read whole and not cut at its first lines: the trainer is asked for
    at most _SP_MAX_SENTENCES (1,000,000) sentences, shuffled, of at most 4 * 4096 bytes each."""
    import sentencepiece as spm

    from dataset_definitions import tokenizer_training
    seen = {}
    real_train = spm.SentencePieceTrainer.train

    def recording_train(**kwargs):
        seen.update(kwargs)
        return real_train(**kwargs)
    monkeypatch.setattr(spm.SentencePieceTrainer, "train", recording_train)
    tok = _build(tmp_path, "sentencepiece", MIN_BYTE_VOCAB + 40)
    assert tok.decode(tok.encode("The cat went 3 miles.")) == "The cat went 3 miles."
    assert tokenizer_training._SP_MAX_SENTENCES == 1_000_000
    assert seen["input_sentence_size"] == 1_000_000 and seen["shuffle_input_sentence"] is True
    assert seen["max_sentence_length"] == 4 * 4096


@pytest.fixture(scope="module")
def sentencepiece_tok(tmp_path_factory):
    texts = [f"Line {i}:    indented by four, year {1900 + i} and code 12345.\n        deeper {i * 7919}"
             for i in range(300)]
    return _build(tmp_path_factory.mktemp("sp"), "sentencepiece", 340, texts=texts, name="sp")


def test_sentencepiece_ids_digits_and_whitespace_pieces(sentencepiece_tok):
    """The trained model (read back with the sentencepiece library) has pad=0, bos=1, eos=2, unk=3 as
    documented; digits are split (no piece holds two digits, though the text repeats '12345' and
    years); runs of spaces may be pieces of their own (the text is kept as it is), so the indentation
    in the training text gives whitespace-only pieces longer than one space."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=sentencepiece_tok.path)
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    normal = [p for i, p in enumerate(pieces) if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]
    assert not [p for p in normal if sum(c.isdigit() for c in p) > 1]
    assert [p for p in normal if len(p) > 1 and set(p) <= {"\u2581", " "}]
    text = "Line 5:    indented by four, year 2024\n        deeper 99"
    assert sentencepiece_tok.decode(sentencepiece_tok.encode(text)) == text


def test_sentencepiece_trains_on_long_lines_of_multibyte_text(tmp_path):
    """Lines of 4096 two-byte characters (8 KiB each) are trained on, not skipped: sentencepiece's
    default limit (4192 bytes) would drop every one of them and leave nothing to train on. Reference:
    the trained vocabulary holds merges of the Cyrillic text."""
    alphabet = "абвгдежзиклмнопрстуф"
    words = [alphabet[i % 20] + alphabet[(i * 7) % 20] + alphabet[(i * 3) % 20] for i in range(60)]
    line = " ".join(words[i % 60] for i in range(1100))[:4096]
    assert len(line) == 4096 and len(line.encode("utf-8")) > 2 * 4096 - 1100
    tok = _build(tmp_path, "sentencepiece", 320, texts=[line] * 30, name="cyr")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tok.path)
    merged = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert any(len(p.strip("\u2581")) >= 2 and set(p.strip("\u2581")) <= set(alphabet) for p in merged)


def test_sentencepiece_error_reason_without_source_location(tmp_path):
    """A vocabulary too large for the text is a ValueError carrying sentencepiece's reason, without
    its C++ source location."""
    with pytest.raises(ValueError) as err:
        _build(tmp_path, "sentencepiece", 5000, texts=_texts(30), name="big")
    message = str(err.value)
    assert "Vocabulary size too high (5000)" in message
    assert ".cc(" not in message and "trainer_spec_" not in message


def test_build_tokenizer_makes_nested_folders_and_notes_a_smaller_vocab(tmp_path, capsys):
    """A trained tokenizer is saved under out_dir however deep (folders made); loading it again says
    'tokenizer.vocab_size=N' only when the file's vocabulary differs from the configured size
    (a word vocabulary of tiny text is smaller than asked). Reference: the file's vocab size."""
    out = tmp_path / "a" / "b" / "c"
    small = _build(out, "word", 1000, texts=["the cat sat"], name="small")
    assert small.vocab_size == len(WORD_SPECIALS) + 3
    exact = _build(out, "word", 6, texts=["the cat sat"], name="exact")
    assert exact.vocab_size == 6
    capsys.readouterr()
    build_tokenizer(TokenizerConfig(kind="word", vocab_size=1000), lambda: [], out, "small")
    build_tokenizer(TokenizerConfig(kind="word", vocab_size=6), lambda: [], out, "exact")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tokenizer: loaded") and lines[0].endswith(
        f"(vocab {small.vocab_size}, tokenizer.vocab_size=1000); delete it to retrain")
    assert lines[1].endswith("(vocab 6); delete it to retrain")


# ----------------------------------------------------------------------------- word vectors

def _word_tok(tmp_path, words):
    path = tmp_path / "words.json"
    path.write_text(json.dumps({"kind": "word", "pattern": WORD_PATTERN, "vocab": list(WORD_SPECIALS) + words},
                               ensure_ascii=False), encoding="utf-8")
    return load_tokenizer_file("word", str(path))


def _vectors(tmp_path, body: bytes):
    path = tmp_path / "vectors.txt"
    path.write_bytes(body)
    return path


def test_word_vectors_rows_from_a_hand_written_file(tmp_path):
    """Exact matches win; otherwise the FIRST cased variant fills a lower-case word (a later variant
    does not replace it); a header 'N dim' fixes the dimension even when the next line is a
    multi-word entry; blank lines are skipped, not the end; a word made of digits with integer
    values is a word, not a header; a bad byte only spoils its own line. Reference: the file's numbers."""
    tok = _word_tok(tmp_path, ["the", "cat", "3", "dog", "é"])
    body = ("5 2\n"
            "new york 9 9\n"
            "The 1.5 -2\n"
            "THE 7 7\n"
            "\n"
            "3 4 5\n"
            "cat 0.25 0.5\n"
            "Cat 8 8\n").encode("utf-8") + b"b\xffad 1 1\n" + "é 6 -6\n".encode("utf-8")
    vectors, found = load_word_vectors(_vectors(tmp_path, body), tok)
    assert vectors.dtype == np.float32 and found.dtype == bool and vectors.shape == (tok.vocab_size, 2)
    expect = {"the": [1.5, -2], "cat": [0.25, 0.5], "3": [4, 5], "é": [6, -6]}
    for word, i in tok.index.items():
        assert found[i] == (word in expect)
        np.testing.assert_array_equal(vectors[i], expect.get(word, [0, 0]))


def test_word_vectors_of_one_dimension_and_short_lines(tmp_path):
    """One-number vectors ('word v') are vectors; a line with fewer numbers than the dimension is an
    error naming the line."""
    tok = _word_tok(tmp_path, ["the", "cat"])
    vectors, found = load_word_vectors(_vectors(tmp_path, b"the 0.5\ncat -1.5\n"), tok)
    assert found.tolist() == [False] * 4 + [True, True]
    assert vectors[4:, 0].tolist() == [0.5, -1.5]
    with pytest.raises(ValueError, match=r"vectors.txt:2: expected a word and 3 numbers, got 3 fields"):
        load_word_vectors(_vectors(tmp_path, b"the 1 2 3\ncat 1 2\n"), tok)


C_LOCALE_SCRIPT = """
import sys
from dataset_definitions.tokenization import load_tokenizer_file
from dataset_definitions.word_vectors import load_word_vectors
tok = load_tokenizer_file("word", sys.argv[1])
vectors, found = load_word_vectors(sys.argv[2], tok)
print(tok.encode("caf\\u00e9"), [round(float(v), 3) for v in vectors[tok.index["\\u00e9"]]],
      bool(found[tok.index["\\u00e9"]]))  # escapes: the command line itself is ASCII
"""


def test_word_files_are_utf8_whatever_the_locale(tmp_path):
    """A word vocabulary and a vectors file with non-ASCII words are read as UTF-8 under LC_ALL=C
    without Python's UTF-8 mode (a bare cluster node): 'é' is a known word with its vector."""
    import subprocess
    import sys

    from conftest import REPO, c_locale_env
    tok = _word_tok(tmp_path, ["caf", "é"])
    vectors = _vectors(tmp_path, "é 0.5 -1\ncaf 1 2\n".encode("utf-8"))
    env = c_locale_env()
    r = subprocess.run([sys.executable, "-c", C_LOCALE_SCRIPT, tok.path, str(vectors)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[0] == f"{[4, 5]} [0.5, -1.0] True"


# ----------------------------------------------------------------------------- gpt2 from a folder

GPT2_URLS = {"vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
             "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"}


def _gpt2_copy(gpt2_dir, folder):
    """The reference GPT-2 files copied into `folder` (under tmp_path), to be edited there."""
    folder.mkdir(parents=True)
    for name in GPT2_FILES:
        shutil.copy(gpt2_dir / name, folder / name)
    return folder


def test_gpt2_folder_encoding_is_tiktokens_gpt2_definition(tmp_path, monkeypatch, gpt2_dir):
    """The Encoding read from a folder has the name, special token, size, regex and ranks of tiktoken's
    own gpt2 definition (tiktoken_ext.openai_public.gpt2, offline from a filled file cache), and
    '<|endoftext|>' is GPT2_EOT both ways. Reference: tiktoken's definition and GPT2_EOT = 50256."""
    from tiktoken_ext import openai_public
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    for name in GPT2_FILES:
        shutil.copy(gpt2_dir / name, cache / hashlib.sha1(GPT2_URLS[name].encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    ref = openai_public.gpt2()
    enc = GPT2Tokenizer(str(gpt2_dir))._enc
    assert enc.name == ref["name"] == "gpt2"
    assert enc._special_tokens == ref["special_tokens"] == {"<|endoftext|>": tokenization.GPT2_EOT}
    assert enc.n_vocab == ref["explicit_n_vocab"] == tokenization.GPT2_EOT + 1 == 50257
    assert enc._pat_str == ref["pat_str"] and enc._mergeable_ranks == ref["mergeable_ranks"]
    assert enc.decode([tokenization.GPT2_EOT]) == "<|endoftext|>"
    assert enc.encode("a<|endoftext|>b", allowed_special="all") == [64, tokenization.GPT2_EOT, 65]
    assert enc.encode_single_token("<|endoftext|>") == tokenization.GPT2_EOT


def test_gpt2_folder_passes_each_files_sha256_to_tiktoken(monkeypatch, gpt2_dir):
    """tiktoken is given vocab.bpe and encoder.json with the SHA-256 of each (so its path-keyed file
    cache is checked against the file as it is now). Reference: hashlib.sha256 of the file bytes."""
    import tiktoken.load
    seen = []
    real = tiktoken.load.data_gym_to_mergeable_bpe_ranks

    def recording(**kwargs):
        seen.append(kwargs)
        return real(**kwargs)
    monkeypatch.setattr(tiktoken.load, "data_gym_to_mergeable_bpe_ranks", recording)
    GPT2Tokenizer(str(gpt2_dir))
    sha = {name: hashlib.sha256((gpt2_dir / name).read_bytes()).hexdigest() for name in GPT2_FILES}
    assert seen == [{"vocab_bpe_file": str(gpt2_dir / "vocab.bpe"), "encoder_json_file": str(gpt2_dir / "encoder.json"),
                     "vocab_bpe_hash": sha["vocab.bpe"], "encoder_json_hash": sha["encoder.json"]}]


def test_gpt2_folder_files_changed_in_place_are_read_again(tmp_path, monkeypatch, gpt2_dir):
    """tiktoken caches files by path; after both files of a folder are edited in place (the last two
    merges swapped in vocab.bpe and their ids swapped in encoder.json) the tokenizer loaded from the
    folder has the new ids, not the cached old ones. Reference: the hand-made edit of the two files."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    folder = _gpt2_copy(gpt2_dir, tmp_path / "gpt2")
    before = GPT2Tokenizer(str(folder))
    assert before.encode(" informants") == [50254] and before.encode(" gazed") == [50255]
    assert len(list((tmp_path / "tiktoken-cache").iterdir())) == 2     # both files were cached
    lines = (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    assert lines[-3:] == ["\u0120inform ants", "\u0120g azed", ""]
    lines[-3], lines[-2] = lines[-2], lines[-3]
    (folder / "vocab.bpe").write_text("\n".join(lines), encoding="utf-8")
    encoder = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    encoder["\u0120informants"], encoder["\u0120gazed"] = 50255, 50254
    (folder / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    after = GPT2Tokenizer(str(folder))
    assert after.encode(" informants") == [50255] and after.encode(" gazed") == [50254]
    assert after.decode([50254, 50255]) == " gazed informants"


def test_gpt2_folder_with_other_than_50257_tokens_is_refused(tmp_path, monkeypatch, gpt2_dir):
    """A folder whose files are consistent but hold one merge fewer than GPT-2 (50256 tokens with
    <|endoftext|>) is refused, not loaded with a hole below GPT2_EOT. Reference: the hand-truncated files."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    folder = _gpt2_copy(gpt2_dir, tmp_path / "gpt2")
    lines = (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    (folder / "vocab.bpe").write_text("\n".join(lines[:-2] + [""]), encoding="utf-8")
    encoder = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    del encoder["\u0120gazed"]
    (folder / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    import tiktoken.load
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"))
    assert len(ranks) == 50256 - 1 and max(ranks.values()) == 50254    # the edit is consistent
    with pytest.raises(AssertionError):
        GPT2Tokenizer(str(folder))


# ----------------------------------------------------------------------------- num_threads

def test_num_threads_is_the_affinity_then_cpu_count_then_one(monkeypatch):
    """num_threads() is len(os.sched_getaffinity(0)) where os has it (not os.cpu_count()); without it,
    os.cpu_count(), and 1 when that is None. Reference: the values the patched os functions return."""
    import os
    if hasattr(os, "sched_getaffinity"):
        assert tokenization.num_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    assert tokenization.num_threads() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    assert tokenization.num_threads() == 12
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert tokenization.num_threads() == 1


# ----------------------------------------------------------------------------- bpe

@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("bpe"), "bpe", 300, name="bpe")


def test_bpe_decode_keeps_special_tokens_other_than_pad_bos_eos(bpe_tok):
    """decode drops pad/bos/eos but writes any other special token of the file (here <unk>) as its
    text. Reference: the added tokens listed in the tokenizer JSON and decode of the plain parts."""
    added = {t["content"]: t["id"] for t in json.loads(open(bpe_tok.path, encoding="utf-8").read())["added_tokens"]}
    assert added == {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    a, b = bpe_tok.encode("the cat"), bpe_tok.encode(" sat.")
    ids = [added["<bos>"]] + a + [added["<unk>"]] + b + [added["<eos>"], added["<pad>"], added["<pad>"]]
    assert bpe_tok.decode(ids) == "the cat<unk> sat."
    assert bpe_tok.decode([added["<unk>"]] * 2) == "<unk><unk>"


def test_bpe_encode_batch_adds_no_specials_even_with_a_template(tmp_path, bpe_tok):
    """A bpe file whose post-processor adds <bos> ... <eos> still encodes, one text or a batch, to the
    text's ids alone. Reference: the template encoding with its first and last id removed."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.processors import TemplateProcessing
    hf = HFTokenizer.from_file(bpe_tok.path)
    hf.post_processor = TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    path = tmp_path / "templated.json"
    hf.save(str(path))
    tok = load_tokenizer_file("bpe", str(path))
    texts = ["the cat sat.", "a dog", "", "river <eos> stone"]
    ref = HFTokenizer.from_file(str(path))
    ref.encode_special_tokens = True                  # "<eos>" typed in the text is text, as in encode
    with_template = [ref.encode(t).ids for t in texts]
    assert all(ids[0] == 1 and ids[-1] == 2 for ids in with_template)   # the template is in effect
    reference = [ids[1:-1] for ids in with_template]
    assert tok.encode_batch(texts) == reference
    assert [tok.encode(t) for t in texts] == reference


class _RecordingBatchEncoder:
    """Stands in for the Hugging Face tokenizer: records which batch method encode_batch calls."""

    def __init__(self, real, with_fast: bool):
        self.real, self.calls = real, []
        if with_fast:
            self.encode_batch_fast = self._recorded("encode_batch_fast")
        self.encode_batch = self._recorded("encode_batch")

    def _recorded(self, name):
        def call(texts, **kwargs):
            self.calls.append((name, kwargs))
            return getattr(self.real, name)(texts, **kwargs)
        return call


@pytest.mark.parametrize("with_fast", [True, False])
def test_bpe_encode_batch_uses_the_fast_batch_encoder_when_present(monkeypatch, bpe_tok, with_fast):
    """encode_batch calls the tokenizer's encode_batch_fast where it has one and encode_batch where it
    has not, once, without specials; both give encode's ids per text. Reference: encode on each text."""
    texts = _texts(20) + ["", "<eos> stays text"]
    reference = [bpe_tok.encode(t) for t in texts]
    recorder = _RecordingBatchEncoder(bpe_tok._tok, with_fast)
    monkeypatch.setattr(bpe_tok, "_tok", recorder)
    assert bpe_tok.encode_batch(texts) == reference
    name = "encode_batch_fast" if with_fast else "encode_batch"
    assert recorder.calls == [(name, {"add_special_tokens": False})]


# ----------------------------------------------------------------------------- sentencepiece ids

def _sp_tok(tmp_path, name, **ids):
    """A tiny SentencePiece model trained with the given special ids, loaded as kind sentencepiece."""
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_texts(200)), model_prefix=str(tmp_path / name),
                                   model_type="bpe", vocab_size=60, hard_vocab_limit=False, num_threads=1,
                                   minloglevel=2, **ids)
    return load_tokenizer_file("sentencepiece", str(tmp_path / f"{name}.model"))


def test_sentencepiece_bos_id_zero_is_kept_and_no_bos_is_none(tmp_path):
    """bos_id is the model's bos id when it has one, 0 included, and None when it has none (-1), so
    documents then start with eos. Reference: the ids the models were trained with, read back."""
    zero = _sp_tok(tmp_path, "bos0", bos_id=0, eos_id=1, unk_id=2, pad_id=-1)
    assert (zero._sp.bos_id(), zero._sp.eos_id(), zero._sp.pad_id()) == (0, 1, -1)
    assert (zero.bos_id, zero.eos_id, zero.pad_id, zero.start_id) == (0, 1, 1, 0)
    assert zero.decode([0] + zero.encode("The cat") + [1, 1]) == "The cat"
    none = _sp_tok(tmp_path, "nobos", bos_id=-1, eos_id=1, unk_id=0, pad_id=2)
    assert (none._sp.bos_id(), none._sp.eos_id(), none._sp.pad_id()) == (-1, 1, 2)
    assert none.bos_id is None and (none.eos_id, none.pad_id, none.start_id) == (1, 2, 1)


def test_sentencepiece_eos_id_zero_is_an_eos_and_no_eos_is_refused(tmp_path):
    """A model whose eos id is 0 loads with eos_id 0 (dropped by decode, padding when there is no pad);
    one without eos (-1) is a ValueError. Reference: the ids the models were trained with, read back."""
    zero = _sp_tok(tmp_path, "eos0", eos_id=0, unk_id=1, bos_id=2, pad_id=-1)
    assert (zero._sp.eos_id(), zero._sp.bos_id()) == (0, 2)
    assert (zero.eos_id, zero.pad_id, zero.bos_id, zero.start_id) == (0, 0, 2, 2)
    assert zero.decode([2] + zero.encode("The dog") + [0]) == "The dog"
    with pytest.raises(ValueError, match="has no eos piece"):
        _sp_tok(tmp_path, "noeos", eos_id=-1, unk_id=0, bos_id=1, pad_id=-1)


# ----------------------------------------------------------------------------- decode of arrays

def test_decode_takes_a_tensor_or_array_like_a_list(tmp_path):
    """decode of a torch tensor (int64 or int32) or a numpy array gives the list's text, its
    <sos>/<eos>/<pad> dropped. Reference: decode of the same ids as a list of ints."""
    import torch
    tok = _word_tok(tmp_path, ["the", "cat", "sat"])
    ids = [0, 4, 5, 6, 1, 2, 2]
    assert tok.decode(ids) == "the cat sat"
    assert tok.decode(torch.tensor(ids)) == tok.decode(torch.tensor(ids, dtype=torch.int32)) == "the cat sat"
    assert tok.decode(np.array(ids)) == tok.decode(np.array(ids, dtype=np.int32)) == "the cat sat"
