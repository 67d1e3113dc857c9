"""The generate command line (generators/generate.py) on a stub checkpoint loader: its documented
defaults (what reaches the loader and the sampler), each option doing what it says, prompt files,
and the input errors (exit status 2, a line starting "error: ", nothing loaded). References: the
Generator API (text_completion, stream, beam_search) called with the documented values on the same
stub model, printed as the command prints them."""

import subprocess
import sys

import pytest
import torch

from conftest import REPO, c_locale_env
from generators import Generator, beam_search
from generators import generate as cli
from test_generators import PrefixModel

S = 128  # the stub's context: room for the default 100 new tokens


class ByteTokenizer:
    """Byte level: ids 0..255 are bytes, then pad, bos, eos; decode drops the specials."""
    pad_id, bos_id, eos_id, start_id, vocab_size = 256, 257, 258, 257, 259

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


LETTERS = list(b"abcdefghijklmnopqrstuvwxyz ")


class RandomLetters(PrefixModel):
    """Next-token logits a fixed random function of the whole prefix, over lower-case letters and
    the space only (never EOS: a generation runs to its max_new_tokens)."""
    V = 259

    ALLOWED = torch.full((V,), float("-inf")).index_fill_(0, torch.tensor(LETTERS), 0.0)

    @classmethod
    def logits_of(cls, prefix):
        prefix = prefix.tolist() if isinstance(prefix, torch.Tensor) else prefix      # faster to hash
        return super().logits_of(prefix) + cls.ALLOWED

    def forward_full(self, tokens):
        return torch.stack([torch.stack([self.logits_of(row[:t + 1]) for t in range(len(row))]) for row in tokens])


def stub(max_batch_size=1):
    return Generator(RandomLetters(max_batch=max_batch_size, max_seq_len=S), ByteTokenizer(), torch.device("cpu"))


def fake_build(calls):
    def build(ckpt, max_seq_len=None, max_batch_size=8, device="auto", dtype="auto", compile=False, quantize=None):
        calls.append(dict(ckpt=ckpt, max_batch_size=max_batch_size, device=device, dtype=dtype, compile=compile,
                          quantize=quantize))
        return stub(max_batch_size)
    return build


@pytest.fixture
def run(monkeypatch, capsys):
    """run(*args) -> (exit status, stdout, stderr, the loader's calls), with --ckpt given unless
    the args start with "!" (then exactly the args)."""
    def go(*args):
        calls = []
        monkeypatch.setattr(Generator, "build", staticmethod(fake_build(calls)))
        argv = list(args[1:]) if args and args[0] == "!" else ["--ckpt", "run/best.pt", *args]
        try:
            cli.main(argv)
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err, calls
    return go


def completion_output(prompts, **kwargs):
    """What the command prints for text_completion(prompts, **kwargs): each prompt and its generation."""
    results = stub(len(prompts)).text_completion(prompts, **kwargs)
    return "".join(f"{p}{r['generation']} \n\n" for p, r in zip(prompts, results))


def beam_output(prompt, beam, max_new_tokens, length_penalty):
    gen = stub(beam)
    hyps = beam_search(gen, gen.prompt_tokens(prompt), beam, max_new_tokens, length_penalty)
    return "".join(f"[beam {r + 1}] score {h.score:.4f} (logprob {h.logprob:.2f}, {len(h.tokens)} tokens)\n"
                   f"{prompt}{gen.tokenizer.decode(h.tokens)} \n\n" for r, h in enumerate(hyps))


# ----------------------------------------------------------------------------- defaults

def test_defaults_reach_the_loader_and_the_sampler(run):
    """Without options: the checkpoint loaded for the prompts (one row each), device and dtype
    "auto", no compile, no quantisation; then temperature 0.6, top_p 0.9, no top_k, 100 new tokens,
    the KV cache, prompts too long refused (not truncated)."""
    code, out, err, calls = run("--prompt", "once", "--prompt", "a cat", "--seed", "3")
    assert code == 0, err
    assert calls == [dict(ckpt="run/best.pt", max_batch_size=2, device="auto", dtype="auto", compile=False,
                          quantize=None)]
    expected = completion_output(["once", "a cat"], temperature=0.6, top_p=0.9, top_k=None, max_gen_len=100, seed=3,
                                 use_cache=True, truncate=False)
    assert out == expected
    assert "200 new tokens" in err and "no KV cache" not in err
    # so the comparison tells another temperature or length apart on this model
    assert expected != completion_output(["once", "a cat"], temperature=1.6, top_p=0.9, max_gen_len=100, seed=3)


def test_ckpt_is_required(run):
    code, _, err, calls = run("!", "--prompt", "once")
    assert code == 2 and "--ckpt" in err and calls == []


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize("options,expected", [
    (["--temperature", "1.3", "--top-p", "0.7", "--top-k", "5", "--max-new-tokens", "12"],
     dict(temperature=1.3, top_p=0.7, top_k=5, max_gen_len=12)),
    (["--temperature", "0", "--max-new-tokens", "1"], dict(temperature=0.0, max_gen_len=1)),
    (["--no-kv-cache", "--max-new-tokens", "6"], dict(max_gen_len=6, use_cache=False)),
])
def test_sampling_options_reach_text_completion(run, options, expected):
    code, out, err, _ = run("--prompt", "the dog", "--seed", "4", *options)
    assert code == 0, err
    assert out == completion_output(["the dog"], seed=4, **expected)
    assert ("no KV cache" in err) == ("--no-kv-cache" in options)


@pytest.mark.parametrize("beam,alpha", [(3, None), (3, "0.5"), (1, "2")])
def test_beam_search_with_its_length_penalty(run, beam, alpha):
    """--beam K ranks K hypotheses with score = logprob / len ** alpha, alpha 1 unless
    --length-penalty says otherwise; --beam 1 is allowed."""
    options = ["--length-penalty", alpha] if alpha else []
    code, out, err, calls = run("--prompt", "a cat", "--beam", str(beam), "--max-new-tokens", "6", *options)
    assert code == 0, err
    assert calls[0]["max_batch_size"] == beam
    assert out == beam_output("a cat", beam, 6, float(alpha) if alpha else 1.0)
    if beam > 1:                                                       # so the penalty shows in the scores
        assert beam_output("a cat", beam, 6, 1.0) != beam_output("a cat", beam, 6, 2.0)


def test_stream_prints_the_prompt_then_the_pieces(run):
    code, out, err, _ = run("--prompt", "the dog", "--stream", "--temperature", "0", "--max-new-tokens", "7")
    assert code == 0, err
    pieces = list(stub().stream("the dog", temperature=0, max_gen_len=7))
    assert out == "the dog" + "".join(pieces) + "\n" and len("".join(pieces)) == 7


def test_truncate_keeps_the_end_of_a_long_prompt(run):
    long = "abc " * 40                                                  # 161 tokens with the BOS: over S
    code, _, err, calls = run("--prompt", long, "--temperature", "0", "--max-new-tokens", "5")
    assert code == 2 and err.startswith("error: ") and "--truncate" in err and len(calls) == 1
    code, out, err, _ = run("--prompt", long, "--temperature", "0", "--max-new-tokens", "5", "--truncate")
    assert code == 0, err
    assert out == completion_output([long], temperature=0, max_gen_len=5, truncate=True)


@pytest.mark.parametrize("options,expected", [
    (["--compile"], dict(compile=True)),
    (["--quantize", "int8"], dict(quantize="int8")),
    (["--device", "cpu", "--dtype", "bf16"], dict(device="cpu", dtype="bf16")),
])
def test_loading_options_reach_the_loader(run, options, expected):
    code, _, err, calls = run("--prompt", "a", "--temperature", "0", "--max-new-tokens", "2", *options)
    assert code == 0, err
    defaults = dict(ckpt="run/best.pt", max_batch_size=1, device="auto", dtype="auto", compile=False, quantize=None)
    assert calls == [defaults | expected]


# ----------------------------------------------------------------------------- prompt files

def test_prompt_file_lines_follow_the_prompt_options(run, tmp_path):
    """One prompt per non-blank line, after the --prompt ones; only the newline is removed (a
    prompt's own spaces and letters stay), read as UTF-8."""
    f = tmp_path / "prompts.txt"
    f.write_text("the cat\n\n   \nends with spaces  \ncaf\u00e9 X\nlast without newline", encoding="utf-8")
    prompts = ["first", "the cat", "ends with spaces  ", "caf\u00e9 X", "last without newline"]
    code, out, err, calls = run("--prompt", "first", "--prompt-file", str(f), "--temperature", "0",
                                "--max-new-tokens", "3")
    assert code == 0, err
    assert calls[0]["max_batch_size"] == 5
    assert out == completion_output(prompts, temperature=0, max_gen_len=3)
    code, out, err, _ = run("--prompt-file", str(f), "--temperature", "0", "--max-new-tokens", "3")
    assert code == 0, err
    assert out == completion_output(prompts[1:], temperature=0, max_gen_len=3)


@pytest.mark.parametrize("content", [None, b"caf\xe9\n"])               # missing; latin-1, not UTF-8
def test_an_unreadable_prompt_file_is_an_input_error(run, tmp_path, content):
    f = tmp_path / "prompts.txt"
    if content is not None:
        f.write_bytes(content)
    code, _, err, calls = run("--prompt-file", str(f))
    assert code == 2 and err.startswith(f"error: cannot read --prompt-file {f}") and calls == []


def test_the_prompt_file_is_utf8_whatever_the_locale(tmp_path):
    """Under the C locale (ASCII, UTF-8 mode off) a UTF-8 prompt file still reads."""
    f = tmp_path / "prompts.txt"
    f.write_text("caf\u00e9\n", encoding="utf-8")
    code = ("import sys; sys.path.insert(0, 'tests'); import torch, test_generate_cli_contracts as t;"
            "from generators import Generator, generate;"
            "Generator.build = staticmethod(t.fake_build([]));"
            f"generate.main(['--ckpt', 'x', '--prompt-file', {str(f)!r}, '--temperature', '0', '--max-new-tokens', '2'])")
    env = c_locale_env() | {"PYTHONIOENCODING": "utf-8"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                       encoding="utf-8", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("caf\u00e9")


# ----------------------------------------------------------------------------- input errors

@pytest.mark.parametrize("args,names", [
    ([], "--prompt-file"),                                               # no prompt at all
    (["--prompt", "a", "--prompt", "b", "--beam", "2"], "one prompt"),
    (["--prompt", "a", "--prompt", "b", "--stream"], "one prompt"),
    (["--prompt", "a", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--prompt", "a", "--beam", "0"], "--beam"),
    (["--prompt", "a", "--top-k", "0"], "--top-k"),
    (["--prompt", "a", "--top-p", "0"], "--top-p"),
    (["--prompt", "a", "--temperature", "-1"], "--temperature"),
])
def test_input_errors_exit_2_before_loading_anything(run, args, names):
    code, out, err, calls = run(*args)
    assert code == 2 and out == "" and calls == []
    assert err.startswith("error: ") and names in err and err.count("\n") == 1


@pytest.mark.parametrize("args", [["--quantize", "int4"], ["--beam", "x"], ["--seed", "1.5"], ["--length-penalty", "x"]])
def test_argparse_refuses_bad_values(run, args):
    code, _, _, calls = run("--prompt", "a", *args)
    assert code == 2 and calls == []


def _recording(monkeypatch, method):
    """Generator.`method` records its arguments, then runs as it would."""
    real, seen = getattr(Generator, method), []

    def record(self, *args, **kwargs):
        seen.append((args, kwargs))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Generator, method, record)
    return seen


@pytest.mark.parametrize("options, cache, truncate", [([], True, False), (["--no-kv-cache", "--truncate"], False, True)])
def test_seed_cache_and_truncation_reach_text_completion(run, monkeypatch, options, cache, truncate):
    """The seed makes a sample reproducible (at a temperature where it matters), and --no-kv-cache and --truncate
    reach text_completion as use_cache and truncate (the cache changes no token, so it is checked by what the
    call was given)."""
    seen = _recording(monkeypatch, "text_completion")
    hot = ["--temperature", "5", "--top-p", "1", "--max-new-tokens", "8"]
    code, out, err, _ = run("--prompt", "the dog", "--seed", "4", *hot, *options)
    assert code == 0, err
    assert seen[0][1] == dict(seed=4, use_cache=cache, truncate=truncate)
    assert out == completion_output(["the dog"], temperature=5.0, top_p=1.0, max_gen_len=8, seed=4)
    assert out != completion_output(["the dog"], temperature=5.0, top_p=1.0, max_gen_len=8, seed=5)


def test_stream_passes_the_sampling_options_and_the_seed(run, monkeypatch):
    seen = _recording(monkeypatch, "stream")
    code, out, err, _ = run("--prompt", "the dog", "--stream", "--temperature", "5", "--top-p", "1", "--top-k", "9",
                            "--max-new-tokens", "8", "--seed", "4", "--truncate")
    assert code == 0, err
    assert seen == [(("the dog", 5.0, 1.0, 9, 8, 4), dict(truncate=True))]
    pieces = list(stub().stream("the dog", temperature=5.0, top_p=1.0, top_k=9, max_gen_len=8, seed=4))
    assert out == "the dog" + "".join(pieces) + "\n"
    assert pieces != list(stub().stream("the dog", temperature=5.0, top_p=1.0, top_k=9, max_gen_len=8, seed=5))


def test_the_speed_line_divides_the_new_tokens_by_the_seconds_taken(run, monkeypatch):
    clock = iter([100.0, 102.5])
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(clock))
    code, _, err, _ = run("--prompt", "the dog", "--temperature", "0", "--max-new-tokens", "5")
    assert code == 0, err
    assert "5 new tokens in 2.50s (2.0 tokens/s, KV cache, cpu)" in err


@pytest.mark.parametrize("error", [FileNotFoundError("checkpoint run/best.pt not found"),
                                   ValueError("a KV cache for 1 sequences needs more than is free")])
def test_a_checkpoint_that_cannot_be_loaded_exits_1_with_one_line(monkeypatch, capsys, error):
    def fails(*args, **kwargs):
        raise error
    monkeypatch.setattr(Generator, "build", staticmethod(fails))
    with pytest.raises(SystemExit) as e:
        cli.main(["--ckpt", "run/best.pt", "--prompt", "once"])
    assert e.value.code == 1 and capsys.readouterr().err == f"error: {error}\n"
