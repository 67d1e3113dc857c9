"""Generator's numeric contracts on CPU stubs: per-token log-probs (generated and echoed prompt tokens,
unequal prompts, cached or not) against a float64 log_softmax of the stub's logits of the whole prefix;
EOS stopping (which rows count as done, the every-EOS_CHECK_EVERY-steps check, the row cut);
text_completion passing its settings on; generate's and build's defaults; forward's compiled one-token
branch. References: the stubs' own prefix functions, hand-counted decode steps, spies."""

import inspect
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import generators.generation as generation
from generators import Generator
from generators.generation import EOS_CHECK_EVERY
from test_generation_contracts import CharTokenizer, RandomPrefix

EOS = CharTokenizer.eos_id


class FullPrefix(RandomPrefix):
    """RandomPrefix with the uncached entry point too (forward_full: the whole prefix from position 0)."""

    def forward_full(self, tokens):
        return self.forward(tokens, 0)


def ref_logprob(prefix, token):
    """float64 log p(token | prefix) under RandomPrefix, from its logits of the whole prefix."""
    return F.log_softmax(RandomPrefix.logits_of(prefix).double(), dim=-1)[token].item()


def ref_row(tokens, start):
    """Reference log-probs of tokens[start:]: log p(tokens[t] | tokens[:t]), 0 for the very first token."""
    return [0.0 if t == 0 else ref_logprob(tokens[:t], tokens[t]) for t in range(start, len(tokens))]


def char_gen(model=None):
    return Generator(model or FullPrefix(), CharTokenizer(), torch.device("cpu"))


PROMPTS = [[1, 3, 4, 5, 6], [1, 7], [1, 5, 3]]  # unequal lengths: the longer rows keep their prompt


# ----------------------------------------------------------------------------- log-probs

@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generated_logprobs_are_log_softmax_of_the_full_model_at_the_chosen_token(use_cache, temperature):
    """Each generated token's log-prob is log_softmax(logits of its whole prefix)[token], rows of any length."""
    gen = char_gen()
    tokens, lps = gen.generate(PROMPTS, 6, temperature=temperature, seed=3, logprobs=True, use_cache=use_cache)
    for prompt, row, lp in zip(PROMPTS, tokens, lps):
        assert len(row) == len(lp) == 6
        assert lp == pytest.approx(ref_row(prompt + row, len(prompt)), abs=1e-5)


@pytest.mark.parametrize("use_cache", [True, False])
def test_echoed_prompt_logprobs_are_those_of_the_full_model_and_0_for_the_first(use_cache):
    """With echo the prompt comes back too, each token scored given its prefix (0 for the first one)."""
    gen = char_gen()
    tokens, lps = gen.generate(PROMPTS, 4, temperature=0.0, logprobs=True, echo=True, use_cache=use_cache)
    for prompt, row, lp in zip(PROMPTS, tokens, lps):
        assert row[:len(prompt)] == prompt and len(row) == len(prompt) + 4 == len(lp)
        assert lp[0] == 0.0
        assert lp == pytest.approx(ref_row(row, 0), abs=1e-5)


def test_logprobs_is_none_without_logprobs_and_by_default():
    """logprobs=False (the default) returns None in place of the log-probs."""
    gen = char_gen()
    assert gen.generate(PROMPTS, 3, temperature=0.0)[1] is None
    assert gen.generate(PROMPTS, 3, temperature=0.0, logprobs=False, echo=True)[1] is None


def test_decode_steps_yield_no_logprobs_buffer_without_logprobs():
    """_decode_steps yields None for the log-probs unless asked for them (its documented (tokens, None, done))."""
    steps = list(char_gen()._decode_steps(PROMPTS, 2, 0.0, 0.9, None, None, True, False))
    assert steps and all(lp is None for _, lp, _ in steps)


# ----------------------------------------------------------------------------- EOS

class RowScript(torch.nn.Module):
    """Predicts table[row][p] for absolute position p (filler 3 past the table); counts forward calls."""

    def __init__(self, table, max_seq_len=64, vocab=8):
        super().__init__()
        self.table, self.vocab = table, vocab
        self.max_batch, self.max_seq_len = len(table), max_seq_len
        self.calls = 0

    def forward(self, tokens, start_pos=0):
        self.calls += 1
        B, T = tokens.shape
        out = torch.full((B, T, self.vocab), -10.0)
        for b in range(B):
            for t in range(T):
                p = start_pos + t + 1
                out[b, t, self.table[b].get(p, 3)] = 10.0
        return out

    def forward_full(self, tokens):
        return self.forward(tokens, 0)


def eos_gen(table):
    return Generator(RowScript(table), CharTokenizer(), torch.device("cpu"))


# row 0 ends at position 1 and then goes on with other tokens; row 1 ends at position 3 (its 3rd new token)
TABLE = [{1: EOS, 2: 4}, {1: 5, 2: 6, 3: EOS}]
ONE = [[1], [1]]  # first generated position 1: the check runs after steps 7, 15, ... counted from there


def test_generation_stops_at_the_first_check_after_every_row_has_ended():
    """All rows ended by position 3: decoding stops after exactly EOS_CHECK_EVERY steps, rows cut at their EOS."""
    gen = eos_gen(TABLE)
    tokens, _ = gen.generate(ONE, 20, temperature=0.0)
    assert gen.model.calls == EOS_CHECK_EVERY
    assert tokens == [[], [5, 6]]


def test_stop_at_eos_false_decodes_every_step_but_generate_still_needs_it_for_the_cut():
    """stop_at_eos=False runs all max_gen_len steps and returns the rows uncut."""
    gen = eos_gen(TABLE)
    tokens, lps = gen.generate(ONE, 20, temperature=0.0, stop_at_eos=False, logprobs=True)
    assert gen.model.calls == 20
    assert len(tokens[0]) == len(tokens[1]) == 20 == len(lps[0]) and tokens[0][:2] == [EOS, 4]


def test_decode_steps_stop_at_eos_by_default():
    """_decode_steps without stop_at_eos stops at the EOS check, as generate's default does."""
    gen = eos_gen(TABLE)
    steps = list(gen._decode_steps(ONE, 20, 0.0, 0.9, None, None, True, False))
    assert len(steps) == EOS_CHECK_EVERY and steps[-1][2].tolist() == [True, True]


@pytest.mark.parametrize("first", [1, 2, 3])
def test_the_eos_check_counts_steps_from_the_first_generated_position(first):
    """Prompts of `first` tokens, every row ended at once: the stop comes after EOS_CHECK_EVERY steps, not earlier."""
    table = [{first: EOS}, {first: EOS}]
    gen = eos_gen(table)
    tokens, _ = gen.generate([[1] * first, [1] * first], 30, temperature=0.0)
    assert gen.model.calls == EOS_CHECK_EVERY
    assert tokens == [[], []]


def test_a_row_that_ends_late_delays_the_stop_to_the_next_check():
    """One row's EOS at step EOS_CHECK_EVERY + 2: the stop waits for the check after 2 * EOS_CHECK_EVERY steps."""
    late = EOS_CHECK_EVERY + 2
    gen = eos_gen([{1: EOS}, {late: EOS}])
    tokens, _ = gen.generate(ONE, 40, temperature=0.0)
    assert gen.model.calls == 2 * EOS_CHECK_EVERY
    assert tokens == [[], [3] * (late - 1)]


def test_an_eos_inside_the_prompt_does_not_end_the_row():
    """Rows whose prompts hold an EOS (and never generate one) decode all max_gen_len tokens, uncut."""
    gen = eos_gen([{}, {}])
    prompts = [[1, EOS, 4], [1, EOS]]
    tokens, lps = gen.generate(prompts, 20, temperature=0.0, logprobs=True)
    assert gen.model.calls == 21  # positions 2..22: the shorter prompt's end to the longer one's 20th token
    assert tokens == [[3] * 20, [3] * 20] and [len(x) for x in lps] == [20, 20]


def test_rows_and_their_logprobs_are_cut_at_the_first_generated_eos():
    """An EOS generated mid-row cuts the tokens and the log-probs at the same place, EOS excluded."""
    gen = eos_gen([{1: 4, 2: 5, 3: EOS, 4: 6}, {1: 6, 2: EOS}])
    tokens, lps = gen.generate(ONE, 6, temperature=0.0, logprobs=True)
    assert tokens == [[4, 5], [6]]
    assert [len(x) for x in lps] == [2, 1]
    tokens, lps = gen.generate(ONE, 6, temperature=0.0, logprobs=True, echo=True)
    assert tokens == [[1, 4, 5], [1, 6]] and [len(x) for x in lps] == [3, 2]


def test_a_prompt_filling_the_context_is_refused():
    """A prompt of max_seq_len tokens leaves no room for a new token: ValueError."""
    gen = char_gen()
    with pytest.raises(ValueError, match="no room"):
        gen.generate([[1] + [3] * (gen.model.max_seq_len - 1)], 1)


# ----------------------------------------------------------------------------- text_completion

def spy_generate(gen):
    calls = []
    real = gen.generate

    def spy(*args, **kwargs):
        calls.append(inspect.signature(Generator.generate).bind(gen, *args, **kwargs).arguments)
        return real(*args, **kwargs)
    gen.generate = spy
    return calls


def test_text_completion_passes_its_settings_on_to_generate():
    """top_k, logprobs, echo, seed and use_cache reach generate as given."""
    gen = char_gen()
    calls = spy_generate(gen)
    gen.text_completion(["ab"], temperature=0.7, top_p=0.8, top_k=2, max_gen_len=3, logprobs=True, echo=True,
                        seed=5, use_cache=False)
    args = calls[0]
    assert (args["temperature"], args["top_p"], args["top_k"], args["logprobs"], args["echo"], args["seed"],
            args["use_cache"]) == (0.7, 0.8, 2, True, True, 5, False)


def test_text_completion_top_k_1_is_greedy():
    """top_k=1 samples the argmax whatever the temperature: the greedy completion."""
    gen = char_gen()
    greedy = gen.text_completion(["ab", "c"], temperature=0.0, max_gen_len=6)
    for seed in range(3):
        assert gen.text_completion(["ab", "c"], temperature=1.5, top_p=1.0, top_k=1, max_gen_len=6,
                                   seed=seed) == greedy


def test_text_completion_logprobs_are_the_per_token_reference_values():
    """item["logprobs"] holds each returned token's log-prob (prompt too with echo); absent without logprobs."""
    gen = char_gen()
    out = gen.text_completion(["ab", "c"], temperature=1.0, max_gen_len=5, seed=1, logprobs=True)
    for text, item in zip(["ab", "c"], out):
        prompt = gen.prompt_tokens(text)
        assert item["logprobs"] == pytest.approx(ref_row(prompt + item["tokens"], len(prompt)), abs=1e-5)
    echoed = gen.text_completion(["ab"], temperature=0.0, max_gen_len=3, logprobs=True, echo=True)[0]
    assert echoed["tokens"][:3] == gen.prompt_tokens("ab")
    assert echoed["logprobs"] == pytest.approx(ref_row(echoed["tokens"], 0), abs=1e-5)
    assert "logprobs" not in gen.text_completion(["ab"], temperature=0.0, max_gen_len=3)[0]


def test_text_completion_use_cache_false_runs_the_uncached_path():
    """use_cache=False re-runs the whole prefix (forward_full) every step, never the cached forward."""
    model = RowScript([{}])
    model.forward = None  # the cached entry point must not be used
    gen = Generator(model, CharTokenizer(), torch.device("cpu"))
    with pytest.raises(TypeError):
        gen.text_completion(["a"], temperature=0.0, max_gen_len=2)
    model = RowScript([{}])
    calls = []
    model.forward_full = lambda tokens: calls.append(tokens.shape[1]) or RowScript.forward(model, tokens, 0)
    gen = Generator(model, CharTokenizer(), torch.device("cpu"))
    before = model.calls
    gen.text_completion(["a"], temperature=0.0, max_gen_len=3, use_cache=False)
    assert calls == [2, 3, 4] and model.calls - before == 3


# ----------------------------------------------------------------------------- defaults

def test_generate_defaults_sample_at_0_6_and_0_9_with_stop_at_eos():
    """generate's defaults: temperature 0.6, top_p 0.9, no top_k, no logprobs, no echo, cache, stop at EOS."""
    gen = char_gen()
    for seed in range(4):
        assert gen.generate(PROMPTS, 10, seed=seed) == gen.generate(
            PROMPTS, 10, temperature=0.6, top_p=0.9, top_k=None, logprobs=False, echo=False, seed=seed,
            use_cache=True, stop_at_eos=True)
    params = inspect.signature(Generator.generate).parameters
    assert {k: params[k].default for k in ("temperature", "top_p", "top_k", "logprobs", "echo", "seed",
                                           "use_cache", "stop_at_eos")} == dict(
        temperature=0.6, top_p=0.9, top_k=None, logprobs=False, echo=False, seed=None, use_cache=True,
        stop_at_eos=True)


def test_build_defaults_and_arguments_reach_load_model(monkeypatch):
    """build(ckpt) loads with max_batch_size 8, max_seq_len None, device/dtype "auto", no quantize, no compile."""
    loads, compiles = [], []
    device = torch.device("cpu")
    loaded = SimpleNamespace(model=FullPrefix(), tokenizer=CharTokenizer(), device=device)
    monkeypatch.setattr(generation, "load_model", lambda *a: loads.append(a) or loaded)
    monkeypatch.setattr(Generator, "compile_decode", lambda self: compiles.append(self))
    gen = Generator.build("ck.pt")
    assert loads[-1] == ("ck.pt", 8, None, "auto", "auto", None) and compiles == []
    assert gen.model is loaded.model and gen.tokenizer is loaded.tokenizer and gen.device is device
    gen = Generator.build("ck.pt", max_seq_len=12, max_batch_size=3, device="cpu", dtype="fp32", compile=True,
                          quantize="int8")
    assert loads[-1] == ("ck.pt", 3, 12, "cpu", "fp32", "int8") and compiles == [gen]


# ----------------------------------------------------------------------------- compiled decode branch

class Recorder:
    """Stands in for the compiled step: records (tokens, position value) and answers with the model's logits."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, tokens, position):
        self.calls.append((tokens, position, int(position)))
        return self.model(tokens, int(position))


def test_forward_routes_one_token_steps_to_the_compiled_step_with_the_position_tensor():
    """With _decode set, a one-token forward calls it with (tokens, position tensor = start_pos); longer ones bypass it."""
    gen = char_gen()
    gen._decode = rec = Recorder(gen.model)
    gen._position = torch.zeros((), dtype=torch.long)
    prefix = torch.tensor([[1, 3, 4, 5]])
    full = gen.forward(prefix[:, :3], 0)
    assert rec.calls == []
    out = gen.forward(prefix[:, 3:], 3)
    (tokens, position, value), = rec.calls
    assert tokens is not None and torch.equal(tokens, prefix[:, 3:]) and position is gen._position and value == 3
    assert int(gen._position) == 3 and out.shape == (1, 1, RandomPrefix.V)
    assert torch.equal(out[0, 0], RandomPrefix.logits_of([1, 3, 4, 5]))
    assert full.shape == (1, 3, RandomPrefix.V)


def test_generation_through_the_compiled_step_matches_the_plain_model():
    """A generation whose one-token steps go through _decode equals one without it; every step used it."""
    plain = char_gen().generate(PROMPTS, 5, temperature=0.0, logprobs=True)
    gen = char_gen()
    gen._decode = rec = Recorder(gen.model)
    gen._position = torch.zeros((), dtype=torch.long)
    assert gen.generate(PROMPTS, 5, temperature=0.0, logprobs=True) == plain
    assert [v for _, _, v in rec.calls] == list(range(2, 9))  # positions 2.. after the 2-token prefill
