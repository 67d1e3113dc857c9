"""Generator's text level: fit_prompt's keep-or-refuse rule, the documented defaults of
text_completion and stream (sampling, max_gen_len filling the cache, the KV cache, refusing long
prompts), stream's pieces joining to the completion (EOS, a multi-byte character split across
tokens), and its argument checks. References: hand-computed slices, `generate` called with the
documented values spelled out, a decode of the whole token row."""

from types import SimpleNamespace

import pytest
import torch

from generators import Generator
from test_generators import PrefixModel

S = 16  # the stubs' max_seq_len


class CharTokenizer:
    """ids 0 pad, 1 bos, 2 eos, 3..7 the letters a..e; decode drops the specials (as Tokenizer.decode)."""
    pad_id, bos_id, eos_id, start_id, vocab_size = 0, 1, 2, 1, 8
    LETTERS = "abcde"

    def encode(self, text):
        return [3 + self.LETTERS.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.LETTERS[i - 3] for i in ids if i >= 3)


class ByteTokenizer:
    """Byte level, as GPT-2's and the trained BPE tokenizers are: ids 0..255 are bytes, then pad, bos,
    eos; a prefix that ends inside a multi-byte character decodes with U+FFFD, as tiktoken's and
    Hugging Face's decoders do."""
    pad_id, bos_id, eos_id, start_id, vocab_size = 256, 257, 258, 257, 259

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class RandomPrefix(PrefixModel):
    """Logits a fixed random function of the whole prefix over CharTokenizer's 8 ids, never a special
    (so every generation fills the room it is given). No forward_full: the default decoding must
    use the cache."""
    V = 8

    def __init__(self):
        super().__init__(max_batch=4, max_seq_len=S)

    @classmethod
    def logits_of(cls, prefix):
        logits = super().logits_of(prefix)
        logits[:3] = float("-inf")
        return logits


class Script(torch.nn.Module):
    """Predicts a fixed script after a prompt of `prompt_len` tokens: position prompt_len + i gets
    script[i] (then `filler`), whatever came before. Cached interface only (no forward_full)."""

    def __init__(self, script, prompt_len, vocab, filler, max_seq_len=64):
        super().__init__()
        self.script, self.prompt_len, self.vocab, self.filler = script, prompt_len, vocab, filler
        self.max_batch, self.max_seq_len = 1, max_seq_len

    def forward(self, tokens, start_pos=0):
        B, T = tokens.shape
        out = torch.full((B, T, self.vocab), -10.0)
        for t in range(T):
            i = start_pos + t + 1 - self.prompt_len
            out[:, t, self.script[i] if 0 <= i < len(self.script) else self.filler] = 10.0
        return out


def char_gen():
    return Generator(RandomPrefix(), CharTokenizer(), torch.device("cpu"))


def encoded(gen, text):
    return [gen.tokenizer.start_id] + gen.tokenizer.encode(text)


# ----------------------------------------------------------------------------- fit_prompt

@pytest.mark.parametrize("length", [1, S - 1, S, S + 3])
@pytest.mark.parametrize("max_gen_len", [1, 5, S - 1, S + 2])
def test_fit_prompt_keeps_what_fits_and_truncates_or_refuses_the_rest(length, max_gen_len):
    """A prompt shorter than the context (room for one new token) comes back unchanged; a longer one
    is a ValueError, by default and with truncate=False, or with truncate=True its last
    max(1, context - max_gen_len) tokens."""
    gen = char_gen()
    tokens = list(range(100, 100 + length))                           # distinct: a wrong slice shows
    if length < S:
        assert gen.fit_prompt(tokens, max_gen_len) == tokens
        assert gen.fit_prompt(tokens, max_gen_len, truncate=True) == tokens
        return
    for refused in (lambda: gen.fit_prompt(tokens, max_gen_len), lambda: gen.fit_prompt(tokens, max_gen_len, False)):
        with pytest.raises(ValueError, match=f"has {length} tokens; the model's context is {S}"):
            refused()
    keep = max(1, S - max_gen_len)
    assert gen.fit_prompt(tokens, max_gen_len, truncate=True) == tokens[length - keep:]


# ----------------------------------------------------------------------------- text_completion

PROMPTS = ["ab", "", "deedc"]


def test_text_completion_defaults_sample_at_0_6_and_0_9_filling_the_cache():
    """Without arguments: temperature 0.6, top_p 0.9, no top_k, max_gen_len = everything the cache
    holds, the KV cache, no logprobs: the same tokens as `generate` with those values spelled out."""
    gen = char_gen()
    out = gen.text_completion(PROMPTS, seed=5)
    prompts = [encoded(gen, p) for p in PROMPTS]
    expected, _ = gen.generate(prompts, S - 1, temperature=0.6, top_p=0.9, top_k=None, seed=5)
    assert [o["tokens"] for o in out] == expected
    assert [o["generation"] for o in out] == [gen.tokenizer.decode(t) for t in expected]
    assert all(set(o) == {"generation", "tokens"} for o in out)       # no logprobs unless asked
    assert [len(t) for t in expected] == [S - len(p) for p in prompts]  # no EOS: the cache fills
    # so the comparison tells the temperatures apart on this model
    assert gen.generate(prompts, S - 1, temperature=1.6, top_p=0.9, seed=5)[0] != expected


def test_text_completion_refuses_a_prompt_longer_than_the_context_unless_truncate():
    gen = char_gen()
    long = "abcde" * 4                                                  # 21 tokens with the BOS
    with pytest.raises(ValueError, match="context"):
        gen.text_completion([long], temperature=0, max_gen_len=4)
    (out,) = gen.text_completion([long], temperature=0, max_gen_len=4, truncate=True)
    expected, _ = gen.generate([encoded(gen, long)[-(S - 4):]], 4, temperature=0)
    assert out["tokens"] == expected[0] and len(expected[0]) == 4


# ----------------------------------------------------------------------------- stream

def test_stream_defaults_are_those_of_text_completion():
    """stream(prompt, seed=s) shows the text text_completion's defaults give (temperature 0.6,
    top_p 0.9, up to the full cache), drawn from the seeded sampler (not the global RNG), in
    non-empty pieces."""
    gen = char_gen()
    for text in ("ab", ""):                                             # "": the BOS alone, S - 1 new tokens
        prompt = encoded(gen, text)
        expected, _ = gen.generate([prompt], S - 1, temperature=0.6, top_p=0.9, seed=5)
        torch.manual_seed(123)                                          # the global RNG is not the seed
        pieces = list(gen.stream(text, seed=5))
        assert "".join(pieces) == gen.tokenizer.decode(expected[0]) and len(expected[0]) == S - len(prompt)
        assert all(pieces)


@pytest.mark.parametrize("sampling", [dict(temperature=1.0, top_p=0.5, seed=7), dict(temperature=1.0, top_k=2, seed=7),
                                      dict(temperature=1.3, top_p=0.8, top_k=3, seed=11)])
def test_stream_samples_as_generate_with_the_same_settings(sampling):
    gen = char_gen()
    prompt = encoded(gen, "c")
    expected, _ = gen.generate([prompt], 12, **sampling)
    assert "".join(gen.stream("c", max_gen_len=12, **sampling)) == gen.tokenizer.decode(expected[0])
    # so the comparison tells a dropped top_p / top_k apart on this model
    unfiltered, _ = gen.generate([prompt], 12, temperature=sampling["temperature"], top_p=1.0, seed=sampling["seed"])
    assert unfiltered != expected


def test_stream_of_one_token():
    """max_gen_len=1 is allowed and shows exactly the greedy next token."""
    gen = char_gen()
    expected, _ = gen.generate([encoded(gen, "ab")], 1, temperature=0)
    assert len(expected[0]) == 1
    assert "".join(gen.stream("ab", temperature=0, max_gen_len=1)) == gen.tokenizer.decode(expected[0])


@pytest.mark.parametrize("bad", [dict(top_k=0), dict(top_k=-2), dict(top_p=0.0), dict(temperature=-1.0),
                                 dict(max_gen_len=0)])
def test_stream_refuses_what_generate_refuses(bad):
    """Out-of-range settings are a ValueError before anything is decoded, even where greedy decoding
    (temperature 0) would never read them."""
    gen = char_gen()
    args = dict(temperature=0, max_gen_len=3) | bad
    with pytest.raises(ValueError):
        gen.generate([encoded(gen, "ab")], **args)
    with pytest.raises(ValueError):
        next(gen.stream("ab", **args))


def test_stream_refuses_a_long_prompt_unless_truncate_and_then_keeps_its_end():
    gen = char_gen()
    long = "abcde" * 4
    with pytest.raises(ValueError, match="context"):
        next(gen.stream(long, temperature=0, max_gen_len=4))
    expected, _ = gen.generate([encoded(gen, long)[-(S - 4):]], 4, temperature=0)
    assert "".join(gen.stream(long, temperature=0, max_gen_len=4, truncate=True)) == gen.tokenizer.decode(expected[0])


def test_stream_ends_at_the_eos():
    """The pieces join to the text before the first generated EOS, as text_completion's."""
    tok = CharTokenizer()
    prompt = encoded(SimpleNamespace(tokenizer=tok), "ab")
    script = tok.encode("cab") + [tok.eos_id] + tok.encode("dd") + [tok.eos_id]
    gen = Generator(Script(script, len(prompt), tok.vocab_size, filler=3), tok, torch.device("cpu"))
    assert "".join(gen.stream("ab", temperature=0, max_gen_len=10)) == "cab"
    assert gen.text_completion(["ab"], temperature=0, max_gen_len=10)[0]["generation"] == "cab"


TEXT = "Tom saw a \U0001F436 and said \u00e9. X-ray"                  # a 4-byte and a 2-byte character


@pytest.mark.parametrize("cut,eos", [(None, True), (12, True), (12, False), (11, False)])
def test_stream_never_shows_half_a_character(cut, eos):
    """Byte-level tokens split multi-byte characters: the pieces join to the decode of all the
    generated tokens (a character left unfinished by the last token included, as U+FFFD), and no
    piece shows a U+FFFD that a later token completes."""
    tok = ByteTokenizer()
    body = tok.encode(TEXT)[:cut]
    prompt = encoded(SimpleNamespace(tokenizer=tok), "Hi")
    script = body + [tok.eos_id] if eos else body
    gen = Generator(Script(script, len(prompt), tok.vocab_size, filler=tok.eos_id), tok, torch.device("cpu"))
    pieces = list(gen.stream("Hi", temperature=0, max_gen_len=len(script)))
    expected = tok.decode(body)
    assert "".join(pieces) == expected == gen.text_completion(["Hi"], temperature=0, max_gen_len=len(script))[0]["generation"]
    assert all(pieces) and not any("\ufffd" in p for p in pieces[:-1])
    assert ("\ufffd" in expected) == (cut is not None)                  # the cut cases end mid-character
    if cut is None:                                                     # each character once its last byte came
        assert pieces == list(TEXT)
