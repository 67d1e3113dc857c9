"""Beam search on a real inference model (KV cache, cache rows reordered every step) against a
brute-force enumeration of every continuation scored without the cache (forward_full), with the
documented length normalisation; a beam of one against greedy decoding without the cache."""

import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import models
import modelskv
from generators import Generator, beam_search
from models import ModelConfig

V, EOS, MAX_LEN = 4, 3, 4


@pytest.fixture(scope="module")
def gen():
    """A baseline model with a 4-token vocabulary, weights moved off their init so predictions are far
    from uniform, and caches for 27 rows (= every live beam at the last step, so nothing is pruned)."""
    cfg = ModelConfig.from_preset("baseline", vocab_size=V, context=16, d_model=16, n_layers=2, n_heads=2, d_ff=32)
    torch.manual_seed(3)
    train = models.build(cfg).eval()
    with torch.no_grad():
        for p in train.parameters():
            p.add_(0.5 * torch.randn_like(p))
    kv = modelskv.build(cfg, max_batch=(V - 1) ** (MAX_LEN - 1))
    kv.load_state_dict(train.state_dict(), strict=True)
    return Generator(kv.eval(), SimpleNamespace(eos_id=EOS, pad_id=0, bos_id=None), torch.device("cpu"))


def sequence_logprobs(model, prompt: list[int], generated: list[list[int]]) -> list[float]:
    """Per continuation (all of one length), the sum of log p(token | prefix) from one no-cache
    forward of the whole sequences."""
    seq = torch.tensor([prompt + g for g in generated])
    with torch.no_grad():
        logp = F.log_softmax(model.forward_full(seq).double(), dim=-1)             # (N, T, V)
    n = len(generated[0])
    picked = logp[:, len(prompt) - 1:len(prompt) - 1 + n].gather(-1, seq[:, len(prompt):, None])[..., 0]
    return picked.sum(dim=1).tolist()


PROMPT = [1, 0, 2]


@pytest.fixture(scope="module")
def every_continuation(gen):
    """(tokens, logprob, finished) of every continuation of PROMPT: each EOS ending within MAX_LEN
    tokens and each MAX_LEN-token sequence without EOS."""
    out = []
    words = [t for t in range(V) if t != EOS]
    for n in range(MAX_LEN + 1):
        bodies = [list(b) for b in itertools.product(words, repeat=n)]
        ended = [b + [EOS] for b in bodies] if n < MAX_LEN else bodies
        out += [(b, lp, n < MAX_LEN) for b, lp in zip(bodies, sequence_logprobs(gen.model, PROMPT, ended))]
    return out


def ranked(continuations, alpha):
    """(tokens, logprob, score, finished), best first, score = logprob / (generated tokens, EOS included) ** alpha."""
    scored = [(b, lp, lp / (len(b) + finished) ** alpha, finished) for b, lp, finished in continuations]
    return sorted(scored, key=lambda h: h[2], reverse=True)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_unpruned_beams_equal_the_brute_force_ranking(gen, every_continuation, alpha):
    k = gen.model.max_batch
    got = beam_search(gen, PROMPT, beam_size=k, max_gen_len=MAX_LEN, length_penalty=alpha, early_stopping=False)
    expected = ranked(every_continuation, alpha)[:k]
    assert [(h.tokens, h.finished) for h in got] == [(e[0], e[3]) for e in expected]
    assert [h.logprob for h in got] == pytest.approx([e[1] for e in expected], abs=1e-4)
    assert [h.score for h in got] == pytest.approx([e[2] for e in expected], abs=1e-4)
    assert any(h.finished for h in got) and any(not h.finished for h in got)


def test_the_ranking_depends_on_the_length_normalisation(every_continuation):
    """So the test above tells alpha = 0 from alpha = 1 apart on this model."""
    raw, mean = ranked(every_continuation, 0.0), ranked(every_continuation, 1.0)
    assert [h[0] for h in raw[:5]] != [h[0] for h in mean[:5]]


def test_beam_of_one_is_greedy_decoding_without_the_cache(gen):
    for prompt in ([2], [0, 1, 1, 0]):
        greedy = gen.generate([prompt], max_gen_len=MAX_LEN, temperature=0, use_cache=False)[0][0]
        (one,) = beam_search(gen, prompt, beam_size=1, max_gen_len=MAX_LEN)
        assert one.tokens == greedy
        (expected,) = sequence_logprobs(gen.model, prompt, [greedy + [EOS] * one.finished])
        assert one.logprob == pytest.approx(expected, abs=1e-4)
