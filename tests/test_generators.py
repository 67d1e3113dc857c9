"""Generation: cached == uncached greedy, beam search, samplers, EOS handling, streaming, the CLI."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, tiny_run_config
from generators import Generator, beam_search
from generators.sampling import filter_top_k, next_token, sample_top_p
from generic_runner import train


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    train(tiny_run_config(tmp, ["train.max_steps=30", "train.lr=3e-3", "train.batch_size=8"]))
    return str(tmp / "checkpoints/tiny/last.pt")


@pytest.fixture(scope="module")
def gen(ckpt):
    return Generator.build(ckpt, max_batch_size=10, device="cpu")


PROMPTS = ["Once upon a time", "Tom and his dog went to the", "Lily"]


# ----------------------------------------------------------------------------- beam search on a stub
# (first in the file: fast, and a failure here stops a mutation run before the trained fixture)

class PrefixModel(torch.nn.Module):
    """Stub with the modelskv interface whose next-token logits are a fixed random function of the whole
    prefix; its "cache" is the token history per row, reordered as a KV cache is."""
    V, EOS = 3, 2

    def __init__(self, max_batch=16, max_seq_len=16):
        super().__init__()
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.history = torch.zeros(max_batch, max_seq_len, dtype=torch.long)

    @classmethod
    def logits_of(cls, prefix) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash(tuple(int(t) for t in prefix)) % 2**31)
        return 2.0 * torch.randn(cls.V, generator=g)

    def logp(self, prefix) -> list[float]:
        return F.log_softmax(self.logits_of(prefix).double(), dim=-1).tolist()

    def forward(self, tokens, start_pos=0):
        B, T = tokens.shape
        self.history[:B, start_pos:start_pos + T] = tokens
        return torch.stack([torch.stack([self.logits_of(self.history[b, :start_pos + t + 1]) for t in range(T)])
                            for b in range(B)])

    def reorder_caches(self, index):
        self.history[:len(index)] = self.history[index].clone()


def _hypotheses(model, prompt, max_len, alpha):
    """Every hypothesis (tokens, logprob, score, finished): all EOS endings inside the horizon and all
    max_len-token continuations, enumerated one by one."""
    out = []

    def walk(gen, lp):
        logp = model.logp(prompt + gen)
        n = len(gen) + 1
        out.append((gen, lp + logp[model.EOS], (lp + logp[model.EOS]) / n ** alpha, True))
        for t in range(model.V):
            if t != model.EOS:
                if n == max_len:
                    out.append((gen + [t], lp + logp[t], (lp + logp[t]) / n ** alpha, False))
                else:
                    walk(gen + [t], lp + logp[t])
    walk([], 0.0)
    return sorted(out, key=lambda h: h[2], reverse=True)


def _reference_beam(model, prompt, k, max_len, alpha, early_stopping):
    """Textbook beam search over lists: every alive beam x every token, best first; EOS candidates finish."""
    alive, finished = [([], 0.0)], []
    for step in range(max_len):
        cands = sorted(((lp + l, gen, t) for gen, lp in alive for t, l in enumerate(model.logp(prompt + gen))),
                       key=lambda c: c[0], reverse=True)[:2 * k]
        kept = []
        for lp, gen, t in cands:
            if t == model.EOS:
                finished.append((gen, lp, lp / (len(gen) + 1) ** alpha, True))
            else:
                kept.append((gen + [t], lp))
            if len(kept) == k:
                break
        enough = early_stopping and len(finished) >= k
        if enough or not kept or step == max_len - 1:
            if not enough:
                finished += [(g, lp, lp / len(g) ** alpha, False) for g, lp in kept]
            break
        alive = kept
    return sorted(finished, key=lambda h: h[2], reverse=True)[:k]


def _as_tuples(hyps):
    return [(h.tokens, h.logprob, h.score, h.finished) for h in hyps]


def _assert_same(got, expected):
    assert [(g[0], g[3]) for g in got] == [(e[0], e[3]) for e in expected]
    assert [g[1] for g in got] == pytest.approx([e[1] for e in expected], abs=1e-5)
    assert [g[2] for g in got] == pytest.approx([e[2] for e in expected], abs=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.0])
def test_beam_wide_enough_to_keep_everything_finds_the_best_hypotheses(alpha):
    """With 2^4 beams nothing is pruned: the result is the exact top 16 of every hypothesis, EOS endings
    inside the horizon (scored with their EOS and length) included."""
    tok = SimpleNamespace(eos_id=PrefixModel.EOS, pad_id=0, bos_id=None)
    model = PrefixModel()
    gen = Generator(model, tok, torch.device("cpu"))
    prompt = [0, 1, 0]                                   # greedy ends after 2 tokens; the best is elsewhere
    every = _hypotheses(model, prompt, 4, alpha)
    got = beam_search(gen, prompt, beam_size=16, max_gen_len=4, length_penalty=alpha, early_stopping=False)
    _assert_same(_as_tuples(got), every[:16])
    assert any(h.finished for h in got) and any(not h.finished for h in got)
    # beam 1 is greedy; the exact best is at least as likely as greedy's sequence, and here strictly
    greedy = gen.generate([prompt], max_gen_len=4, temperature=0)[0][0]
    (one,) = beam_search(gen, prompt, beam_size=1, max_gen_len=4, length_penalty=alpha)
    assert one.tokens == greedy
    if alpha == 0.0:
        assert got[0].logprob > one.logprob + 1e-3


@pytest.mark.parametrize("k,alpha,early_stopping", [(2, 1.0, True), (3, 0.0, False), (3, 0.7, True), (5, 1.0, False)])
def test_pruned_beam_search_equals_a_reference_beam_search(k, alpha, early_stopping):
    tok = SimpleNamespace(eos_id=PrefixModel.EOS, pad_id=0, bos_id=None)
    model = PrefixModel(max_batch=k)
    gen = Generator(model, tok, torch.device("cpu"))
    for prompt in ([1], [0, 0, 1, 1]):
        # the defaults, length_penalty 1 (the mean log-prob) and early stopping, are left out where they apply
        kwargs = {**({} if alpha == 1.0 else {"length_penalty": alpha}),
                  **({} if early_stopping else {"early_stopping": False})}
        for max_len in (1, 6):
            got = beam_search(gen, prompt, beam_size=k, max_gen_len=max_len, **kwargs)
            _assert_same(_as_tuples(got), _reference_beam(model, prompt, k, max_len, alpha, early_stopping))
    with pytest.raises(ValueError, match="no room"):
        beam_search(gen, [1] * model.max_seq_len, beam_size=k, max_gen_len=3)


# ----------------------------------------------------------------------------- a trained model

def test_greedy_with_cache_equals_without_for_unequal_prompts(gen):
    encoded = [gen.prompt_tokens(p) for p in PROMPTS]
    assert len({len(e) for e in encoded}) == 3
    cached, _ = gen.generate(encoded, max_gen_len=20, temperature=0)
    uncached, _ = gen.generate(encoded, max_gen_len=20, temperature=0, use_cache=False)
    assert cached == uncached and all(len(c) > 0 for c in cached)
    # each row equals that prompt decoded alone: batching changes nothing
    for e, row in zip(encoded, cached):
        assert gen.generate([e], max_gen_len=20, temperature=0)[0][0] == row


def test_logprobs_and_echo(gen):
    prompt = gen.prompt_tokens(PROMPTS[1])
    tokens, lps = gen.generate([prompt], max_gen_len=8, temperature=0, logprobs=True, echo=True)
    seq = torch.tensor([tokens[0]])
    assert tokens[0][:len(prompt)] == prompt
    with torch.no_grad():
        logp = F.log_softmax(gen.model.forward_full(seq)[0].float(), dim=-1)
    expected = [logp[t - 1, seq[0, t]].item() for t in range(1, seq.size(1))]
    assert lps[0][1:] == pytest.approx(expected, abs=1e-4)


def test_beam_of_one_is_greedy_and_scores_are_sorted_sums(gen):
    prompt = gen.prompt_tokens(PROMPTS[0])
    greedy = gen.generate([prompt], max_gen_len=15, temperature=0)[0][0]
    (one,) = beam_search(gen, prompt, beam_size=1, max_gen_len=15)
    assert one.tokens == greedy
    hyps = beam_search(gen, prompt, beam_size=5, max_gen_len=15, length_penalty=0.7)
    assert len(hyps) == 5 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    eos = gen.tokenizer.eos_id
    for h in hyps:
        gen_tokens = h.tokens + ([eos] if h.finished else [])
        seq = torch.tensor([prompt + gen_tokens])
        with torch.no_grad():
            logp = F.log_softmax(gen.model.forward_full(seq)[0].float(), dim=-1)
        total = sum(logp[len(prompt) + i - 1, t].item() for i, t in enumerate(gen_tokens))
        assert h.logprob == pytest.approx(total, abs=1e-3)
        assert h.score == pytest.approx(total / len(gen_tokens) ** 0.7, abs=1e-3)


def test_samplers_stay_inside_the_allowed_set():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]]).repeat(2000, 1)
    drawn = sample_top_p(probs, 0.75, g).flatten()
    assert set(drawn.tolist()) == {0, 1}                  # 0.5 + 0.3 reaches 0.75; the rest never
    assert set(sample_top_p(probs, 0.4, g).flatten().tolist()) == {0}   # the top token is always kept
    logits = torch.log(probs)
    assert set(next_token(filter_top_k(logits, 3), 1.0, 1.0, None, g).tolist()) == {0, 1, 2}
    assert set(next_token(logits, 1.0, 1.0, 2, g).tolist()) == {0, 1}
    assert (next_token(logits, 0.0) == 0).all()


class CountingModel(torch.nn.Module):
    """Stub with the modelskv interface: always predicts (previous token + 1) mod V."""
    max_batch, max_seq_len, V = 4, 32, 10

    def forward(self, tokens, start_pos=0):
        return F.one_hot((tokens + 1) % self.V, self.V).float() * 10.0

    def forward_full(self, tokens):
        return self.forward(tokens)


def test_eos_stops_one_sequence_while_others_continue():
    tok = SimpleNamespace(eos_id=7, pad_id=0, bos_id=None)
    gen = Generator(CountingModel(), tok, torch.device("cpu"))
    tokens, _ = gen.generate([[5], [1, 2]], max_gen_len=6, temperature=0)
    assert tokens[0] == [6]                    # 6 then EOS (7): stops, EOS not returned
    assert tokens[1] == [3, 4, 5, 6]           # the other row continues to its own EOS
    tokens, _ = gen.generate([[8]], max_gen_len=4, temperature=0)
    assert tokens[0] == [9, 0, 1, 2]           # no EOS: max_gen_len tokens


def test_sampling_is_reproducible_with_a_seed_and_stream_matches(gen):
    a = gen.text_completion(PROMPTS, temperature=0.8, top_p=0.9, max_gen_len=12, seed=3)
    b = gen.text_completion(PROMPTS, temperature=0.8, top_p=0.9, max_gen_len=12, seed=3)
    assert a == b
    greedy = gen.text_completion([PROMPTS[0]], temperature=0, max_gen_len=12)[0]["generation"]
    assert "".join(gen.stream(PROMPTS[0], temperature=0, max_gen_len=12)) == greedy


def test_too_many_prompts_or_too_long_is_a_clear_error(gen):
    with pytest.raises(ValueError, match="max_batch_size"):
        gen.generate([[1]] * 11, max_gen_len=2)
    with pytest.raises(ValueError, match="max_seq_len"):
        gen.generate([[1] * 40], max_gen_len=2)


def test_generate_cli(ckpt):
    base = [sys.executable, "-m", "generators.generate", "--ckpt", ckpt, "--max-new-tokens", "8", "--device", "cpu"]
    r = subprocess.run(base + ["--prompt", "Once upon", "--prompt", "Tom", "--temperature", "0"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once upon") and "tokens/s" in r.stderr
    r = subprocess.run(base + ["--prompt", "Once upon", "--beam", "3"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.count("[beam ") == 3
    r = subprocess.run(base[:3] + ["--ckpt", "nope.pt", "--prompt", "x"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and "not found" in r.stderr


def test_the_compiled_step_is_one_fullgraph_fed_its_position_as_a_long_scalar_on_the_device(ckpt, monkeypatch):
    """compile_decode without the compiler (recorded; the slow test above runs the real one): fullgraph, CUDA graphs
    ("reduce-overhead") on GPUs only, every one-token step given start_pos as a 0-d int64 tensor on the device; the
    prompt itself still goes through the eager model, and the tokens are the eager ones."""
    compiled, steps = [], []

    def fake_compile(model, mode=None, fullgraph=False):
        compiled.append((mode, fullgraph))

        def step(tokens, position):
            steps.append((tokens.shape, position.dim(), position.dtype, position.device, int(position)))
            return model(tokens, position)
        return step
    monkeypatch.setattr(torch, "compile", fake_compile)
    gen = Generator.build(ckpt, max_batch_size=3, device="cpu")
    prompts = [gen.prompt_tokens(p) for p in PROMPTS]
    eager = gen.generate(prompts, 6, temperature=0, stop_at_eos=False)[0]
    gen.compile_decode()
    assert compiled == [(None, True)]
    assert gen.generate(prompts, 6, temperature=0, stop_at_eos=False)[0] == eager
    first, last = min(map(len, prompts)), max(map(len, prompts)) + 6 - 2      # the prefill runs 0..first eagerly
    assert steps == [((3, 1), 0, torch.int64, torch.device("cpu"), pos) for pos in range(first, last + 1)]
    on_gpu = SimpleNamespace(model=gen.model, device=torch.device("cuda", 0))
    monkeypatch.setattr(torch, "zeros", lambda *a, **kw: (a, kw))
    Generator.compile_decode(on_gpu)
    assert compiled[-1] == ("reduce-overhead", True)
    assert on_gpu._position == (((),), {"dtype": torch.long, "device": torch.device("cuda", 0)})


def test_compiled_decode_step_gives_the_same_greedy_tokens_and_beams(ckpt):
    gen = Generator.build(ckpt, max_batch_size=3, device="cpu")
    prompts = [gen.prompt_tokens(p) for p in PROMPTS]
    eager = gen.generate(prompts, 12, temperature=0)[0]
    eager_beams = beam_search(gen, prompts[0], beam_size=3, max_gen_len=10)
    gen.compile_decode()          # one graph for every step: the position is a tensor, shapes are static
    assert gen.generate(prompts, 12, temperature=0)[0] == eager
    beams = beam_search(gen, prompts[0], beam_size=3, max_gen_len=10)   # 3 rows every step: the same graph
    assert [b.tokens for b in beams] == [b.tokens for b in eager_beams]
    assert [b.score for b in beams] == pytest.approx([b.score for b in eager_beams], abs=1e-4)
