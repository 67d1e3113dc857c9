"""Sampling contracts against written-out references: the distribution drawn at temperature T is
softmax(logits / T), top-k keeps exactly the tokens at or above the k-th largest logit, top-p the
smallest most-likely set whose mass reaches p (renormalised), greedy is argmax; batched prompts of
unequal length decode as each does alone, and the returned log-probs are log_softmax of the model's
logits at the returned tokens. Frequencies come from many draws under a fixed seed, through
Generator.generate on a stub model with fixed non-uniform logits."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from generators import Generator
from generators.sampling import filter_top_k, next_token, sample_top_p
from test_generators import PrefixModel

LOGITS = torch.tensor([2.0, 1.2, 0.9, 0.0, -0.5, -1.5])   # distinct values: the sorted order is unique
DRAWS = 20_000
EOS = 999                                                    # never drawn: every row gets its token


class FixedLogits(torch.nn.Module):
    """Stub with the modelskv interface whose logits are LOGITS at every position of every row."""

    def __init__(self, max_batch=5000, max_seq_len=8):
        super().__init__()
        self.max_batch, self.max_seq_len = max_batch, max_seq_len

    def forward(self, tokens, start_pos=0):
        return LOGITS.expand(*tokens.shape, len(LOGITS)).clone()

    def forward_full(self, tokens):
        return self.forward(tokens)


def drawn_distribution(**sampling) -> torch.Tensor:
    """Frequencies of next_token over DRAWS rows of LOGITS (one vectorised call, a fixed seed)."""
    drawn = next_token(LOGITS.repeat(DRAWS, 1), generator=torch.Generator().manual_seed(11), **sampling)
    return torch.bincount(drawn, minlength=len(LOGITS)).double() / DRAWS


def generated_distribution(draws: int, **sampling) -> torch.Tensor:
    """Frequencies of the first token Generator.generate returns for `draws` identical one-token prompts."""
    gen = Generator(FixedLogits(), SimpleNamespace(eos_id=EOS, pad_id=0, bos_id=None), torch.device("cpu"))
    tokens, _ = gen.generate([[0]] * draws, max_gen_len=1, seed=11, **sampling)
    first = torch.tensor([row[0] for row in tokens])
    return torch.bincount(first, minlength=len(LOGITS)).double() / draws


def assert_close_in_distribution(freq: torch.Tensor, probs: torch.Tensor, draws: int = DRAWS) -> None:
    """Every frequency within 5 binomial standard errors of its probability (and 0 where it is 0)."""
    probs = probs.double()
    se = (probs * (1 - probs) / draws).sqrt()
    assert torch.all((freq - probs).abs() <= 5 * se + 1e-12), f"drawn {freq.tolist()} vs {probs.tolist()}"


def softmax(logits: torch.Tensor) -> torch.Tensor:
    e = [float(torch.exp(x)) for x in logits]
    return torch.tensor([x / sum(e) for x in e])


def reference_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits with -inf below the k-th largest value (ties with it kept), by sorting in Python."""
    kth = sorted(logits.tolist(), reverse=True)[k - 1]
    return torch.tensor([x if x >= kth else float("-inf") for x in logits.tolist()])


def reference_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    """The smallest set of most likely tokens whose mass is >= p, renormalised (a cumulative sum by hand)."""
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))
    kept, mass = [], 0.0
    for i in order:
        kept.append(i)
        mass += float(probs[i])
        if mass >= p:
            break
    out = torch.zeros_like(probs)
    out[kept] = probs[kept] / probs[kept].sum()
    return out


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_drawn_distribution_is_softmax_of_logits_over_temperature(temperature):
    freq = drawn_distribution(temperature=temperature, top_p=1.0)
    assert_close_in_distribution(freq, softmax(LOGITS / temperature))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_generate_samples_softmax_over_temperature_then_top_k_then_top_p(temperature):
    """The whole decoding path: the distribution of the first generated token of many prompts."""
    expected = reference_top_p(softmax(reference_top_k(LOGITS / temperature, 5)), 0.9)
    freq = generated_distribution(5000, temperature=temperature, top_k=5, top_p=0.9)
    assert_close_in_distribution(freq, expected, draws=5000)


def test_the_temperatures_give_visibly_different_distributions():
    """So that applying T the wrong way round (logits * T) cannot pass the test above."""
    cold, hot = softmax(LOGITS / 0.5), softmax(LOGITS / 2.0)
    assert cold[0] > 0.6 and hot[0] < 0.35 and (cold - hot).abs().max() > 0.3


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.8, 0.95])
def test_drawn_distribution_under_top_p_is_the_renormalised_nucleus(top_p):
    temperature = 0.8
    expected = reference_top_p(softmax(LOGITS / temperature), top_p)
    assert_close_in_distribution(drawn_distribution(temperature=temperature, top_p=top_p), expected)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_drawn_distribution_under_top_k_keeps_exactly_the_k_largest(top_k):
    temperature = 1.5
    expected = softmax(reference_top_k(LOGITS / temperature, top_k))
    assert_close_in_distribution(drawn_distribution(temperature=temperature, top_p=1.0, top_k=top_k), expected)


def test_top_k_then_top_p_is_the_nucleus_of_the_k_survivors():
    expected = reference_top_p(softmax(reference_top_k(LOGITS, 4)), 0.7)
    assert_close_in_distribution(drawn_distribution(temperature=1.0, top_p=0.7, top_k=4), expected)


def test_top_p_at_an_exact_cumulative_boundary_keeps_the_set_that_reaches_it():
    """Dyadic probabilities add exactly: 0.5 + 0.25 = 0.75 reaches p = 0.75, so the third token is out."""
    probs = torch.tensor([[0.125, 0.5, 0.0625, 0.25, 0.0625]]).repeat(4000, 1)
    drawn = sample_top_p(probs, 0.75, torch.Generator().manual_seed(0)).flatten()
    assert set(drawn.tolist()) == {1, 3}
    share = (drawn == 1).double().mean().item()
    assert share == pytest.approx(2 / 3, abs=0.03)            # renormalised: 0.5 / 0.75
    assert reference_top_p(probs[0], 0.75).nonzero().flatten().tolist() == [1, 3]


def test_filter_top_k_equals_the_sorted_reference_with_ties():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0, 2.0, 1.0],
                           [0.5, 0.5, 0.5, 0.5, -1.0, 4.0],
                           [-2.0, -1.0, -3.0, -0.5, -4.0, -0.25]])
    for k in range(1, 7):
        got = filter_top_k(logits, k)
        for row in range(logits.size(0)):
            assert torch.equal(got[row], reference_top_k(logits[row], k)), (k, row)
    # ties at the k-th value all survive: k=2 on row 0 keeps 3 and 2; k=3 keeps the three 1.0s too
    assert torch.isfinite(filter_top_k(logits, 3)[0]).sum() == 5


def test_greedy_is_argmax_of_every_row():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(next_token(logits, 0.0), logits.argmax(dim=-1))
    assert torch.equal(next_token(logits, 0.0, top_p=0.1, top_k=3), logits.argmax(dim=-1))


class PrefixLogits(PrefixModel):
    """test_generators' stub (logits a fixed random function of the whole prefix, its "cache" the
    token history per row, so a wrong start_pos or a stale row changes the output), over 7 tokens
    and with the no-cache forward too."""
    V = 7

    def __init__(self):
        super().__init__(max_batch=4, max_seq_len=24)

    def forward_full(self, tokens):
        return torch.stack([torch.stack([self.logits_of(row[:t + 1]) for t in range(len(row))]) for row in tokens])


PROMPTS = [[1], [2, 3, 4], [5, 0, 6, 1, 2, 3]]
LONGER_PROMPTS = [[4, 1], [2, 3, 4], [5, 0, 6, 1, 2, 3]]        # the prefill covers two positions


def _prefix_generator(eos=2):
    return Generator(PrefixLogits(), SimpleNamespace(eos_id=eos, pad_id=0, bos_id=None), torch.device("cpu"))


def reference_greedy(prompt, max_gen_len, eos):
    """Greedy decoding by hand: argmax of the prefix's logits, stop before EOS."""
    seq = list(prompt)
    for _ in range(max_gen_len):
        t = int(PrefixLogits.logits_of(seq).argmax())
        if t == eos:
            break
        seq.append(t)
    return seq[len(prompt):]


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_unequal_prompts_decode_greedily_as_each_alone(use_cache):
    gen = _prefix_generator()
    batched, _ = gen.generate(PROMPTS, max_gen_len=10, temperature=0, use_cache=use_cache)
    expected = [reference_greedy(p, 10, eos=2) for p in PROMPTS]
    assert batched == expected
    assert sorted(map(len, expected)) == [1, 2, 10]     # EOS stops two rows (EOS inside a prompt does not)
    for prompt, row in zip(PROMPTS, batched):
        assert gen.generate([prompt], max_gen_len=10, temperature=0, use_cache=use_cache)[0][0] == row
    echoed, _ = gen.generate(PROMPTS, max_gen_len=10, temperature=0, use_cache=use_cache, echo=True)
    assert echoed == [p + e for p, e in zip(PROMPTS, expected)]


def test_an_eos_inside_the_prompt_neither_ends_nor_cuts_the_generation():
    """A prompt holding the EOS id decodes to max_gen_len, past the early-stop check (every 8 steps)
    that the other row, ended by a generated EOS, would satisfy."""
    gen = _prefix_generator()
    prompts = [[6], [0, 2, 0]]
    expected = [reference_greedy(p, 12, eos=2) for p in prompts]
    assert [len(e) for e in expected] == [5, 12]
    assert gen.generate(prompts, max_gen_len=12, temperature=0)[0] == expected
    assert gen.generate(prompts, max_gen_len=12, temperature=0, echo=True)[0] == [p + e for p, e in zip(prompts, expected)]


@pytest.mark.parametrize("prompts,use_cache", [(PROMPTS, True), (LONGER_PROMPTS, True), (LONGER_PROMPTS, False)])
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.7, top_k=4, top_p=0.8, seed=2)])
def test_logprobs_are_log_softmax_of_the_model_logits_at_the_returned_tokens(sampling, prompts, use_cache):
    """Under the model's own distribution (before temperature, top-k and top-p), prompt tokens
    included with echo (the prefill scores them when every prompt is longer than one token); the
    first prompt token has no prediction and gets 0."""
    gen = _prefix_generator(eos=99)
    tokens, lps = gen.generate(prompts, max_gen_len=5, logprobs=True, echo=True, use_cache=use_cache, **sampling)
    for prompt, row, row_lp in zip(prompts, tokens, lps):
        assert row[:len(prompt)] == prompt and len(row) == len(prompt) + 5 == len(row_lp)
        expected = [0.0] + [F.log_softmax(PrefixLogits.logits_of(row[:t]).double(), dim=-1)[row[t]].item()
                            for t in range(1, len(row))]
        assert row_lp == pytest.approx(expected, abs=1e-5)
    plain, plain_lps = gen.generate(prompts, max_gen_len=5, logprobs=True, use_cache=use_cache, **sampling)
    assert plain == [row[len(p):] for p, row in zip(prompts, tokens)]
    assert plain_lps == [lp[len(p):] for p, lp in zip(prompts, lps)]


def test_filter_top_k_refuses_k_outside_one_to_the_vocabulary_with_a_value_error():
    """k = 0 or k > V is a ValueError naming top_k and the vocabulary size, not torch's topk error."""
    from generators.sampling import filter_top_k

    logits = torch.randn(2, 5)
    for k in (0, -1, 6):
        with pytest.raises(ValueError, match=r"top_k must be between 1 and the vocabulary size \(5\), got " + str(k)):
            filter_top_k(logits, k)
    assert torch.isfinite(filter_top_k(logits, 5)).all()                      # k = V keeps every token
