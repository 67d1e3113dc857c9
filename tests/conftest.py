"""Shared test fixtures: the repo on sys.path and the read-only reference data beside the repo."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # <repo>/../shared/data

# So a bare `pytest` finds the repo's packages without an install, not only `python -m pytest`.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def in_ci() -> bool:
    """True where the environment variable CI is set (and not 0 or false), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _shared(relpath: str) -> Path:
    """A path under shared/data; if it is missing, skip the test naming it, or fail it under CI (where a
    skip would silently drop the only coverage of the GPT-2 and Llama tokenizers)."""
    path = SHARED_DATA / relpath
    if not path.exists():
        message = f"reference data <repo>/../shared/data/{relpath} not found (see shared/data/README.md)"
        if in_ci():
            pytest.fail(f"{message}; CI is set, so missing reference data is an error", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def gpt2_dir() -> Path:
    """Folder with GPT-2's encoder.json and vocab.bpe."""
    _shared("tokenizers/gpt2/vocab.bpe")
    return _shared("tokenizers/gpt2/encoder.json").parent


@pytest.fixture(scope="session")
def llama_model() -> Path:
    """The Llama 2 SentencePiece tokenizer.model (32000 pieces)."""
    return _shared("tokenizers/llama/tokenizer.model")


@pytest.fixture(scope="session")
def tinystories_text() -> str:
    """A few TinyStories stories, <|endoftext|>-separated."""
    return _shared("text/tinystories_sample.txt").read_text(encoding="utf-8")


def tiny_sets(tmp_path: Path) -> list[str]:
    """`--set` values of a small built-in-corpus run with every output under tmp_path (fast on CPU)."""
    return [
        f"data_dir={tmp_path / 'data'}", f"tokenizer_dir={tmp_path / 'tokenizers'}",
        f"checkpoint_dir={tmp_path / 'checkpoints'}", f"log_dir={tmp_path / 'logs'}",
        "data.source=builtin", "data.train_rows=400", "data.val_rows=40", "data.heldout_rows=40",
        "tokenizer.kind=bpe", "tokenizer.vocab_size=384",
        "model.context=32", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64",
        "train.max_steps=10", "train.batch_size=4", "train.warmup_steps=2", "train.eval_every=5",
        "train.eval_batches=2", "train.save_every=5", "train.precision=fp32", "run_name=tiny",
    ]


def tiny_run_config(tmp_path: Path, sets: list[str] = ()):
    """A RunConfig on a small built-in corpus with every output under tmp_path (fast on CPU)."""
    from experiment_config import load_config

    return load_config([REPO / "configs" / "baseline.yaml"], [*tiny_sets(tmp_path), *sets])


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A folder for tiny_run_config runs shared by the whole session: their data is prepared once.
    Give each run its own run_name."""
    return tmp_path_factory.mktemp("tiny_runs")


def prepare_run(cfg, **options):
    """prepare_data on a RunConfig (experiment_config.prepare_run_data)."""
    from experiment_config import prepare_run_data

    return prepare_run_data(cfg, **options)


def assert_causal(model, tokens, t: int = 7) -> dict:
    """Changing tokens at positions >= t leaves logits before t unchanged (and changes later ones).

    Returns the model's statistics (their values) on the original tokens.
    """
    import torch

    from run_stats import values

    changed = tokens.clone()
    changed[:, t:] = (changed[:, t:] + 1) % model.cfg.vocab_size
    with torch.no_grad():
        a, _, _, stats = model(tokens)
        b = model(changed).logits
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, t:], b[:, t:])
    return values(stats)


def written_out_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """F.scaled_dot_product_attention written out: softmax(q k^T * scale + mask) v, the causal mask
    aligned top-left as SDPA's is_causal; a reference for the attention modules (no dropout)."""
    import math

    import torch

    assert dropout_p == 0.0
    scores = (q @ k.transpose(-2, -1)) * (scale or 1 / math.sqrt(q.size(-1)))       # (B, H, Tq, Tk)
    if is_causal:
        attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.float().softmax(dim=-1).type_as(q) @ v


def random_tokens(cfg, B: int = 2, T: int | None = None, seed: int = 1):
    """Reproducible random token ids (B, T or cfg.context) below cfg.vocab_size."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (B, T or cfg.context), generator=g)


def assert_initial_loss_is_uniform(model, tol: float = 0.1) -> None:
    """An untrained model predicts nearly uniformly: loss on random targets within tol of ln(vocab)."""
    import math

    import torch

    tokens = random_tokens(model.cfg, B=4)
    targets = random_tokens(model.cfg, B=4, seed=2)
    with torch.no_grad():
        loss = model(tokens, targets=targets).objective
    assert abs(loss.item() - math.log(model.cfg.vocab_size)) < tol


def dead_pid() -> int:
    """The process id of a process that has finished (a build or job killed mid-way, as its folders see it)."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def c_locale_env() -> dict:
    """This environment as on a bare cluster node: LC_ALL=C without Python's UTF-8 mode or locale coercion,
    so a file opened without encoding= reads as ASCII (for tests that text files are read as UTF-8)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8", "PYTHONIOENC"))}
    return env | {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def run_cli(main, argv, capsys) -> tuple[int, str]:
    """Call a CLI's main in-process; returns (exit status, stderr)."""
    code, err, _ = run_cli_out(main, argv, capsys)
    return code, err


def run_cli_out(main, argv, capsys) -> tuple[int, str, str]:
    """Call a CLI's main in-process; returns (exit status, stderr, stdout), the status as the process would
    exit with it: sys.exit(None) is 0, a message 1."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.err, out.out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run (5 steps) to read checkpoints from; tests copy what they change."""
    import generic_runner

    root = tmp_path_factory.mktemp("trained")
    generic_runner.train(tiny_run_config(root, ["train.max_steps=5"]))
    return root
