"""The speed benchmarks run end to end at tiny sizes on CPU and write what they print."""

import json
import subprocess
import sys

import pytest
import torch

from benchmarks import decode_speed, perplexity_speed, run_all, tid_overhead, train_speed
from benchmarks.synthetic import RandomTokens
from benchmarks.train_speed import flops_per_token, model_sets
from conftest import REPO, tiny_run_config
from generic_runner import train


def test_run_all_smoke_on_cpu(tmp_path):
    summary = run_all.main(["--device", "cpu", "--out-dir", str(tmp_path)])
    assert summary["quick"] and set(summary["seconds"]) == {*run_all.BENCHMARKS, "total"}
    for name in run_all.BENCHMARKS:
        payload = json.loads((tmp_path / f"{name}_cpu.json").read_text())
        assert payload["device"] == "cpu" and payload["torch"]
    train_rows = json.loads((tmp_path / "train_speed_cpu.json").read_text())["rows"]
    assert {r["model"] for r in train_rows} >= {"ours tiny", "HF GPT2LMHeadModel", "HF LlamaForCausalLM"}
    assert all(r["tokens_per_s"] > 0 and r["step_s"] > 0 for r in train_rows)
    tid_rows = json.loads((tmp_path / "tid_overhead_cpu.json").read_text())["rows"]
    assert [r["method"] for r in tid_rows] == ["none", "random", "entropy", "attention_mass", "gradient_norm"]
    assert all(r["tokens_per_s"] > 0 and r["step_s"] > 0 for r in tid_rows)
    ppl = json.loads((tmp_path / "perplexity_speed_cpu.json").read_text())
    assert ppl["nll_agree"] and ppl["nll_ours"] > 0                  # the timed path computes the real NLL
    assert {r["scorer"] for r in ppl["results"]} >= {"ours score_rows", "bare forward", "HF GPT2LMHeadModel"}
    decode = json.loads((tmp_path / "decode_speed_cpu.json").read_text())
    assert decode["checks"] == {"cache_equals_no_cache": True, "hf_equals_ours": True}
    decoders = {r["decoder"] for r in decode["results"]}
    assert {"ours, no cache", "ours, KV cache", "ours, int8", "ours, beam 3", "HF generate"} <= decoders
    assert all(r["tokens_per_s"] > 0 for r in decode["results"])
    assert json.loads((tmp_path / "run_all_cpu.json").read_text())["seconds"]["total"] > 0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decode")
    train(tiny_run_config(tmp, ["train.max_steps=30", "train.lr=3e-3", "train.batch_size=8"]))
    return str(tmp / "checkpoints/tiny/last.pt")


def test_bench_cli_runs_tiny(ckpt, tmp_path):
    out = tmp_path / "gen.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.decode_speed", "--ckpt", ckpt, "--device", "cpu",
                        "--batch-sizes", "1,4", "--new-tokens", "6", "--repeats", "1", "--rows", "4",
                        "--beams", "2", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "batch 4: KV cache speed-up" in r.stdout and out.is_file()


def test_unknown_benchmark_is_refused():
    with pytest.raises(SystemExit):
        run_all.main(["--device", "cpu", "--only", "train_speed,nope"])


@pytest.mark.parametrize("module", [train_speed, decode_speed, perplexity_speed, tid_overhead, run_all])
def test_a_device_this_machine_lacks_is_refused_when_parsed(module, capsys):
    bad = "gpu" if torch.cuda.is_available() else "cuda"
    with pytest.raises(SystemExit) as exit_:
        module.main(["--device", bad])
    assert exit_.value.code == 2 and "argument --device" in capsys.readouterr().err


def test_random_tokens_train_without_a_corpus(tmp_path):
    cfg = tiny_run_config(tmp_path, ["train.max_steps=4", "train.checkpoints=false", "model.vocab_size=64"])
    data = RandomTokens(vocab_size=64, train_tokens=4000, val_tokens=400)
    summary = train(cfg, data=data)
    assert summary["steps"] == 4 and not (tmp_path / "checkpoints").exists()
    assert abs(summary["val_loss"] - 4.1589) < 0.1                  # uniform ids: ln 64 is the best possible


def test_a_checkpoint_of_random_tokens_names_its_tokenizer_as_the_perplexity_benchmark_does(tmp_path):
    """The tokenizer entry of a checkpoint trained on RandomTokens: kind random, no file, its vocab size."""
    from models.checkpoint import load_checkpoint
    cfg = tiny_run_config(tmp_path, ["train.max_steps=2", "model.vocab_size=50"])
    train(cfg, data=RandomTokens(vocab_size=50, train_tokens=2000, val_tokens=200))
    ckpt = load_checkpoint(next((tmp_path / "checkpoints").rglob("last.pt")))
    assert ckpt["tokenizer"] == {"kind": "random", "path": None, "vocab_size": 50}


def test_flops_per_token_of_gpt2_124m_is_nanogpts():
    # nanoGPT's estimate for GPT-2 124M at T=1024: 6 * 85M non-embedding-lookup params + 12 * L * d * T
    flops = flops_per_token(model_sets("gpt2_shape", 1024, 50304))
    n = 124_475_904 - 1024 * 768                                     # all params, less the position table
    assert flops == 6 * n + 12 * 12 * 768 * 1024


# ----------------------------------------------------------------------------- targets, on made-up rows
# (the real rows only come from a GPU run, so a wrong comparison would otherwise never be seen)

def _verdicts(goals):
    return [(g["target"], round(g["value"], 6), g["met"]) for g in goals]


def test_train_speed_targets_use_the_fastest_compiled_row_and_the_fastest_reference():
    ours = lambda arch, T, tps, compile=True, mfu=0.3: {"model": f"ours {arch}", "arch": arch, "context": T,
                                                         "compile": compile, "tokens_per_s": tps, "mfu": mfu}
    hf = lambda kind, T, tps: {"model": f"HF {kind}", "context": T, "compile": False, "tokens_per_s": tps}
    rows = [ours("gpt2_shape", 1024, 550e3, mfu=0.45), ours("gpt2_shape", 1024, 500e3, mfu=0.41),
            ours("gpt2_shape", 1024, 900e3, compile=False),          # eager rows never count
            ours("gpt2_shape", 128, 589e3), ours("gpt2_125m", 1024, 551e3),
            hf("GPT2LMHeadModel", 1024, 540e3), hf("LlamaForCausalLM", 1024, 560e3), hf("GPT2LMHeadModel", 128, 589e3)]
    assert _verdicts(train_speed.targets(rows)) == [
        ("ours gpt2_shape T=1024 >= 550k tokens/s", 550e3, True),     # exactly at the goal: met
        ("ours gpt2_shape T=128 >= 590k tokens/s", 589e3, False),
        ("ours gpt2_125m T=1024 >= 550k tokens/s", 551e3, True),
        ("ours T=1024 ahead of every HF model (ratio to the fastest)", round(550 / 560, 6), False),
        ("ours T=128 ahead of every HF model (ratio to the fastest)", 1.0, False),   # a tie is not ahead
        ("MFU >= 0.45 at T=1024", 0.45, True)]
    assert train_speed.targets([hf("GPT2LMHeadModel", 1024, 1.0)]) == []           # nothing of ours: no targets


def test_decode_speed_targets():
    row = lambda decoder, batch, tps: {"decoder": decoder, "batch": batch, "tokens_per_s": tps}
    rows = [row("ours, KV cache", 1, 9000), row("ours, cache + compile", 1, 6000), row("ours, cache + compile", 32, 59000),
            row("ours, KV cache", 32, 70000), row("ours, beam 5 + compile", 1, 2000), row("HF generate", 32, 99000)]
    assert _verdicts(decode_speed.targets(rows)) == [
        ("batch 1 >= 5,000 new tokens/s", 6000, True), ("batch 32 >= 60,000 new tokens/s", 59000, False),
        ("beam 5 >= 1/3 of greedy (ratio)", round(2000 / 6000, 6), True)]
    rows[4]["tokens_per_s"] = 1999
    assert decode_speed.targets(rows)[2]["met"] is False


def test_tid_overhead_targets():
    rows = [{"method": m, "step_s": s} for m, s in
            (("random", 1.015), ("none", 1.0), ("entropy", 1.36), ("attention_mass", 1.25), ("gradient_norm", 1.79))]
    tid_overhead.judge(rows)
    assert [round(r["overhead"], 6) for r in rows] == [0.015, 0.0, 0.36, 0.25, 0.79]
    assert _verdicts(tid_overhead.targets(rows)) == [
        ("random overhead <= 0.02", 0.015, True), ("entropy overhead <= 0.35", 0.36, False),
        ("attention_mass overhead <= 0.40", 0.25, True), ("gradient_norm overhead <= 0.80", 0.79, True)]


def test_perplexity_speed_targets():
    out = [{"scorer": "ours score_rows", "seconds": 3.0}, {"scorer": "ours score_rows compiled", "seconds": 1.5},
           {"scorer": "bare forward compiled", "seconds": 1.0}, {"scorer": "HF GPT2LMHeadModel", "seconds": 0.5}]
    goals = perplexity_speed.targets(out)
    assert [r["vs_bare_forward"] for r in out] == pytest.approx([1 / 3, 2 / 3, 1.0, 2.0])
    assert _verdicts(goals) == [("10,000 rows in <= 1.5 s", 1.5, True),
                                (">= 0.6x the bare forward's speed", round(2 / 3, 6), True)]
    out[1]["seconds"] = 1.7
    assert [g["met"] for g in perplexity_speed.targets(out)] == [False, False]


# ----------------------------------------------------------------------------- the shared command line

def test_benchmark_cli_passes_device_quick_and_steps_and_writes_the_payload(tmp_path, monkeypatch, capsys):
    """benchmark_cli parses --device (auto by default), --quick (a flag) and, for training benchmarks only,
    --steps; calls run(device, quick[, steps]); writes run's payload (plus the torch version) to --out, or
    by default to benchmarks/results/<name>_<cpu|cuda>.json under the working directory."""
    from benchmarks.common import benchmark_cli
    calls = []

    def run(*args):
        calls.append(args)
        return {"rows": [len(calls)]}
    monkeypatch.chdir(tmp_path)
    benchmark_cli("probe", run, "a probe", argv=["--quick", "--out", str(tmp_path / "a.json")])
    assert calls == [("auto", True)]
    assert json.loads((tmp_path / "a.json").read_text()) == {"rows": [1], "torch": torch.__version__}
    benchmark_cli("probe", run, "a probe", argv=["--device", "cpu", "--steps", "7"], steps=True)
    assert calls[1] == ("cpu", False, 7)
    assert json.loads((tmp_path / "benchmarks/results/probe_cpu.json").read_text())["rows"] == [2]
    benchmark_cli("probe", run, "a probe", argv=[], steps=True)
    assert calls[2] == ("auto", False, None)
    with pytest.raises(SystemExit):
        benchmark_cli("probe", run, "a probe", argv=["--steps", "3"])        # no --steps without steps=True
    capsys.readouterr()
    with pytest.raises(SystemExit):
        benchmark_cli("probe", run, "a probe", argv=["--help"])
    shown = capsys.readouterr().out
    assert "a probe" in shown and "benchmarks/results/probe_<cuda|cpu>.json" in shown


def test_benchmark_parser_describes_itself_and_names_its_default_file():
    """--help shows the description and the default JSON path of the benchmark's own name."""
    from benchmarks.common import benchmark_parser
    text = benchmark_parser("decode_speed", "Decode tokens per second.").format_help()
    assert "Decode tokens per second." in text and "benchmarks/results/decode_speed_<cuda|cpu>.json" in text
    assert "--steps" not in text and "--steps" in benchmark_parser("x", "y", steps=True).format_help()


def test_random_tokens_are_seeded_uniform_int32_ids_in_the_vocabulary():
    """Each split holds its count of int32 ids in [0, vocab) from numpy's generator seeded with `seed`
    (seed 0 by default): the same seed gives the same ids, and id 0 occurs. Blocks are the plain token
    blocks of that stream, with the stride passed on; bits per byte read as bits per token."""
    import numpy as np

    from dataset_definitions.datasets import TokenBlocks
    data = RandomTokens(vocab_size=7, train_tokens=500, val_tokens=40)
    rng = np.random.default_rng(0)
    assert np.array_equal(data.tokens("train"), rng.integers(0, 7, 500, dtype=np.int32))
    assert np.array_equal(data.tokens("val"), rng.integers(0, 7, 40, dtype=np.int32))
    assert data.tokens("train").dtype == np.int32 and data.tokens("train").min() == 0
    assert np.array_equal(RandomTokens(7, 500, 40, seed=3).tokens("train"), RandomTokens(7, 500, 40, 3).tokens("train"))
    assert not np.array_equal(RandomTokens(7, 500, 40, seed=3).tokens("train"), data.tokens("train"))
    got, want = data.blocks("train", 16, stride=4), TokenBlocks(data.tokens("train"), 16, 4)
    assert len(got) == len(want) and np.array_equal(got[len(got) - 1][0], want[len(want) - 1][0])
    assert len(data.blocks("train", 16)) == len(TokenBlocks(data.tokens("train"), 16, None))
    assert data.bytes_per_token("val") == 1.0
