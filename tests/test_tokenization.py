"""Tests for dataset_definitions/tokenization.py and tokenizer_training.py: every backend, specs, training, errors."""

import json
import random

import pytest
import tiktoken

from dataset_definitions.config import TokenizerConfig
from dataset_definitions.tokenization import load_tokenizer
from dataset_definitions.tokenizer_training import MIN_BYTE_VOCAB, build_tokenizer

# Unicode, a ZWJ emoji sequence, blank lines, runs of spaces, tabs, CRLF and special-token strings.
TRICKY = ("Hello wörld! Ünïcödé 漢字 and emoji 🙂👩\u200d👩\u200d👧\n\n  two  spaces\ttab "
          "<eos> <|endoftext|> end \r\n")


def make_texts(n: int = 400, seed: int = 0) -> list[str]:
    """Small varied training documents: names, verbs, objects, numbers, punctuation."""
    rng = random.Random(seed)
    names = ["Ben", "Lily", "Tom", "Sue", "Max", "Mia", "Sam", "Zoe"]
    verbs = ["saw", "found", "liked", "wanted", "painted", "shared", "lost", "built"]
    things = ["a red ball", "the big tree", "a small dog", "her blue hat", "a shiny stone",
              "the old boat", "some sweet cake", "a funny kite"]
    ends = [".", "!", "?", "...", "."]
    texts = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        s = f"{a} {rng.choice(verbs)} {rng.choice(things)}{rng.choice(ends)}"
        if rng.random() < 0.5:
            s += f" {b} said, \"I have {rng.randint(1, 99)} of them, don't you?\""
        texts.append(s)
    return texts


def build(tmp_path, kind: str, vocab_size: int, texts=None, name: str = "tok"):
    texts = make_texts() if texts is None else texts
    return build_tokenizer(TokenizerConfig(kind=kind, vocab_size=vocab_size), lambda: texts, tmp_path, name)


def must_not_train():
    raise AssertionError("train_texts() called: the tokenizer was retrained")


@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
    return build_tokenizer(TokenizerConfig(kind="gpt2", path=str(gpt2_dir)), must_not_train, None, "unused")


@pytest.fixture(scope="module")
def llama(llama_model):
    return build_tokenizer(TokenizerConfig(kind="llama", path=str(llama_model)), must_not_train, None, "unused")


# ----------------------------------------------------------------------------- pretrained

def test_gpt2_local_files(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert (gpt2.vocab_size, gpt2.bos_id, gpt2.eos_id, gpt2.pad_id) == (50257, None, 50256, 50256)
    ids = gpt2.encode(TRICKY)
    assert 50256 not in ids  # "<|endoftext|>" in the text is ordinary text
    assert gpt2.decode(ids) == TRICKY
    assert gpt2.decode(ids + [50256, 50256]) == TRICKY
    assert gpt2.encode_batch(["Hello world", TRICKY, ""]) == [[15496, 995], ids, []]


def test_llama(llama):
    assert (llama.vocab_size, llama.bos_id, llama.eos_id) == (32000, 1, 2)
    assert llama.pad_id == 2  # the Llama 2 model has no pad piece, so pad = eos
    ids = llama.encode("Hello world")
    assert ids == [15043, 3186] and llama.decode([1] + ids + [2]) == "Hello world"
    assert llama.encode_batch(["Hello world", "a b"]) == [ids, llama.encode("a b")]


def test_gpt2_story_round_trip_and_batch(gpt2, tinystories_text):
    ids = gpt2.encode(tinystories_text)
    assert gpt2.decode(ids) == tinystories_text
    texts = tinystories_text.split("<|endoftext|>") + make_texts(100)  # enough to use threads
    assert gpt2.encode_batch(texts) == [gpt2.encode(t) for t in texts]


# ----------------------------------------------------------------------------- bpe

def test_bpe_trains_and_round_trips(tmp_path):
    tok = build(tmp_path, "bpe", 400)
    assert (tok.kind, tok.pad_id, tok.bos_id, tok.eos_id) == ("bpe", 0, 1, 2)
    assert MIN_BYTE_VOCAB < tok.vocab_size <= 400  # learned merges, within the budget
    saved = json.loads((tmp_path / "tok.json").read_text())
    assert [(t["id"], t["content"]) for t in saved["added_tokens"]] == list(
        enumerate(["<pad>", "<bos>", "<eos>", "<unk>"]))
    for text in [TRICKY, "", " leading space", "trailing\n", "x" * 1000, "\x00\x7f\u2028"]:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode(TRICKY)
    assert not {0, 1, 2, 3} & set(ids)  # no specials added, "<eos>" in text stays text
    assert tok.decode([1] + ids + [2, 0, 0]) == TRICKY
    texts = make_texts(20, seed=1)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert len(tok.encode("Ben saw a red ball.")) < len("Ben saw a red ball.")  # merges are used


def test_bpe_build_is_idempotent(tmp_path):
    first = build(tmp_path, "bpe", 400)
    mtime = (tmp_path / "tok.json").stat().st_mtime_ns
    second = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=400), must_not_train, tmp_path, "tok")
    assert (tmp_path / "tok.json").stat().st_mtime_ns == mtime
    assert second.spec() == first.spec()
    assert second.encode(TRICKY) == first.encode(TRICKY)


def test_bpe_vocab_too_small(tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer.vocab_size=100 .*minimum is 260"):
        build(tmp_path, "bpe", 100)
    assert not (tmp_path / "tok.json").exists()


# ----------------------------------------------------------------------------- sentencepiece

def test_sentencepiece_trains_and_round_trips(tmp_path):
    tok = build(tmp_path, "sentencepiece", 400, name="sp")
    assert (tmp_path / "sp.model").is_file()
    assert (tok.kind, tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == ("sentencepiece", 400, 0, 1, 2)
    for text in [TRICKY, "Ben saw a red ball.", "multi\nline\n\ntext"]:
        assert tok.decode(tok.encode(text)) == text
    texts = make_texts(20, seed=1)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    again = build_tokenizer(TokenizerConfig(kind="sentencepiece", vocab_size=400), must_not_train, tmp_path, "sp")
    assert again.encode(TRICKY) == tok.encode(TRICKY)


def test_sentencepiece_text_too_small(tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer.vocab_size=5000.*too high"):
        build(tmp_path, "sentencepiece", 5000, texts=make_texts(50))
    with pytest.raises(ValueError, match=r"minimum is 260"):
        build(tmp_path, "sentencepiece", 100)


def test_sentencepiece_long_lines(tmp_path):
    # One 40k-character line: sentencepiece would skip it whole; it is cut into chunks instead.
    words = " ".join(make_texts(1000, seed=2))
    tok = build(tmp_path, "sentencepiece", 400, texts=[words[:40000]])
    assert tok.decode(tok.encode(words[:500])) == words[:500]


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece", "word"])
def test_empty_training_text(tmp_path, kind):
    with pytest.raises(ValueError, match="no training text"):
        build(tmp_path, kind, 300, texts=["", ""])


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece", "word"])
def test_training_text_error_propagates(tmp_path, kind):
    def broken():
        yield from make_texts(10)
        raise KeyError("dataset broke")
    with pytest.raises(KeyError, match="dataset broke"):
        build_tokenizer(TokenizerConfig(kind=kind, vocab_size=300), broken, tmp_path, "tok")


# ----------------------------------------------------------------------------- word

def test_word_level(tmp_path):
    texts = ["Hello, world. The cat sat on the mat!", "The dog didn't sit. The cat’s hat (red) sat."] * 3
    tok = build(tmp_path, "word", 100, texts=texts)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.words[:4] == ["<sos>", "<eos>", "<pad>", "<unk>"]
    assert tok.words[4:8] == ["the", ".", "sat", "!"]  # by count, ties alphabetical
    assert tok.split("Don’t stop, Bob's DOG!") == ["don't", "stop", ",", "bob's", "dog", "!"]
    assert tok.decode(tok.encode("the cat sat on the mat.")) == "the cat sat on the mat."
    assert tok.decode(tok.encode("Hello , world .")) == "hello, world."
    assert tok.decode(tok.encode("the hat (red) sat!")) == "the hat (red) sat!"
    assert tok.encode("the zebra") == [tok.index["the"], 3]
    assert tok.decode([0] + tok.encode("the zebra") + [1, 2]) == "the <unk>"
    assert tok.encode_batch(["the cat", "mat"]) == [tok.encode("the cat"), tok.encode("mat")]


def test_word_vocab_limit(tmp_path):
    tok = build(tmp_path, "word", 10)
    assert tok.vocab_size == 10
    with pytest.raises(ValueError, match=r"tokenizer.vocab_size=4 .*minimum is 5"):
        build(tmp_path, "word", 4, name="tiny")


# ----------------------------------------------------------------------------- specs

@pytest.mark.parametrize("kind", ["gpt2", "llama", "bpe", "sentencepiece", "word"])
def test_spec_round_trip(request, tmp_path, kind):
    trained_vocab = {"bpe": 300, "sentencepiece": 400, "word": 50}
    tok = build(tmp_path, kind, trained_vocab[kind]) if kind in trained_vocab else request.getfixturevalue(kind)
    spec = tok.spec()
    assert set(spec) == {"kind", "path", "sha256", "vocab_size"} and spec["kind"] == kind
    assert all(v is None or type(v) in (str, int) for v in spec.values())
    assert json.loads(json.dumps(spec)) == spec
    assert (spec["sha256"] is None) == (kind == "gpt2")  # gpt2 is a folder
    again = load_tokenizer(spec)
    assert type(again) is type(tok) and again.spec() == spec
    assert again.encode("The cat sat, 42 times.") == tok.encode("The cat sat, 42 times.")


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bpe", "sentencepiece", "word"])
def test_a_tokenizer_file_is_read_as_the_kind_its_contents_say(request, tmp_path, kind):
    """tokenizer_from_file (the converter's import): a folder is gpt2, a .model SentencePiece (named llama: both
    read alike), a .json ours, word or bpe by its "kind" field; each encodes as the tokenizer it was saved from."""
    from dataset_definitions.tokenization import tokenizer_from_file

    trained_vocab = {"bpe": 300, "sentencepiece": 400, "word": 50}
    tok = build(tmp_path, kind, trained_vocab[kind]) if kind in trained_vocab else request.getfixturevalue(kind)
    path = request.getfixturevalue("gpt2_dir") if kind == "gpt2" else tok.path
    again = tokenizer_from_file(path)
    assert again.kind == {"sentencepiece": "llama"}.get(kind, kind)
    assert (again.vocab_size, again.eos_id, again.pad_id) == (tok.vocab_size, tok.eos_id, tok.pad_id)
    assert again.encode(TRICKY) == tok.encode(TRICKY)
    assert again.spec()["sha256"] == tok.spec()["sha256"]
    assert repr(again) == f"{type(tok).__name__}(kind={again.kind}, vocab_size={tok.vocab_size}, path={path})"


def test_what_is_not_a_tokenizer_file_is_refused_naming_what_is(tmp_path):
    from dataset_definitions.tokenization import tokenizer_from_file

    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path / "notes.txt", tmp_path / "missing.json"):
        with pytest.raises(ValueError, match=r"not a tokenizer \(a folder with encoder.json \+ vocab.bpe, a .model "
                                             r"or a .json file\)"):
            tokenizer_from_file(path)
    (tmp_path / "list.json").write_text("[1, 2]")                     # a .json not of ours: read as bpe, refused
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer file"):
        tokenizer_from_file(tmp_path / "list.json")


def test_a_bpe_file_from_elsewhere_pads_with_eos_and_counts_the_tokens_added_after_training(tmp_path):
    """A Hugging Face BPE file without <pad> pads with <eos>; a special token added after training has the last
    id, so the vocabulary (the model's embedding rows) must count it."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from dataset_definitions.tokenization import BPETokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    hf.train_from_iterator(make_texts(), trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.add_special_tokens(["<tool>"])
    hf.save(str(tmp_path / "other.json"))
    tok = BPETokenizer(str(tmp_path / "other.json"))
    assert tok.pad_id == tok.eos_id == hf.token_to_id("<eos>") and tok.bos_id is None
    assert tok.vocab_size == hf.token_to_id("<tool>") + 1 == hf.get_vocab_size(with_added_tokens=True)


def test_a_spec_whose_vocab_size_differs_from_the_files_is_refused(tmp_path):
    spec = build(tmp_path, "word", 50).spec()
    assert load_tokenizer({**spec, "vocab_size": None}).vocab_size == 50       # an older spec: not checked
    with pytest.raises(ValueError, match=r"tokenizer .*tok.json has vocab_size 50, but this data/checkpoint was made "
                                         r"with 51"):
        load_tokenizer({**spec, "vocab_size": 51})


def test_a_tokenizer_file_with_non_ascii_words_is_read_on_a_c_locale_node(tmp_path):
    """tokenizer_from_file reads our .json as UTF-8 whatever the locale (a bare cluster node runs LC_ALL=C)."""
    import subprocess
    import sys

    from conftest import REPO, c_locale_env

    tok = build(tmp_path, "word", 50, texts=["Le café est là. Le thé est là."] * 3)
    code = ("import sys; from dataset_definitions.tokenization import tokenizer_from_file; "
            "print(tokenizer_from_file(sys.argv[1]).encode('le caf\\u00e9'))")      # (argv would be ASCII here)
    r = subprocess.run([sys.executable, "-c", code, tok.path], cwd=REPO, env=c_locale_env(), capture_output=True,
                       text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tok.encode("le café")) and tok.index["é"] in tok.encode("le café")


def test_changed_file_is_refused(tmp_path):
    spec = build(tmp_path, "word", 50).spec()
    path = tmp_path / "tok.json"
    data = json.loads(path.read_text())
    data["vocab"][4], data["vocab"][5] = data["vocab"][5], data["vocab"][4]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"tok.json changed since this data/checkpoint was made"):
        load_tokenizer(spec)


def test_downloaded_gpt2_spec(monkeypatch, gpt2):
    # A spec without a path means "tiktoken's gpt2"; stand in for the download with the local copy.
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: gpt2._enc)
    tok = build_tokenizer(TokenizerConfig(kind="gpt2"), must_not_train, None, "unused")
    assert tok.spec() == {"kind": "gpt2", "path": None, "sha256": None, "vocab_size": 50257}
    assert load_tokenizer(tok.spec()).encode("Hello world") == [15496, 995]


# ----------------------------------------------------------------------------- errors

def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"encoder.json not found: set tokenizer.path to a folder"):
        build_tokenizer(TokenizerConfig(kind="gpt2", path=str(tmp_path)), must_not_train, tmp_path, "x")
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"vocab.bpe not found"):
        build_tokenizer(TokenizerConfig(kind="gpt2", path=str(tmp_path)), must_not_train, tmp_path, "x")
    missing = str(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match=r"nope.model not found"):
        build_tokenizer(TokenizerConfig(kind="llama", path=missing), must_not_train, tmp_path, "x")
    with pytest.raises(FileNotFoundError, match=r"nope.json not found"):
        load_tokenizer({"kind": "bpe", "path": str(tmp_path / "nope.json"), "sha256": None, "vocab_size": 300})


def test_wrong_file_kind(tmp_path):
    build(tmp_path, "word", 50)
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer file"):
        cfg = TokenizerConfig(kind="bpe", path=str(tmp_path / "tok.json"))
        build_tokenizer(cfg, must_not_train, tmp_path, "x")


def test_gpt2_offline(monkeypatch):
    def offline(name):
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match=r"tokenizer.path to a folder with encoder.json and vocab.bpe") as e:
        build_tokenizer(TokenizerConfig(kind="gpt2"), must_not_train, None, "unused")
    assert "\n" not in str(e.value)
