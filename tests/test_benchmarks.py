"""The speed benchmarks run end to end at tiny sizes on CPU and write what they print."""

import json

import pytest

from benchmarks import run_all
from benchmarks.synthetic import RandomTokens
from benchmarks.train_speed import flops_per_token, model_sets
from conftest import tiny_run_config
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
    assert [r["method"] for r in tid_rows][0] == "none" and tid_rows[0]["overhead"] == 0.0
    ppl = json.loads((tmp_path / "perplexity_speed_cpu.json").read_text())
    assert ppl["nll_agree"] and ppl["nll_ours"] > 0                  # the timed path computes the real NLL
    assert {r["scorer"] for r in ppl["results"]} >= {"ours score_rows", "bare forward", "HF GPT2LMHeadModel"}
    decode = json.loads((tmp_path / "decode_speed_cpu.json").read_text())
    assert decode["checks"] == {"cache_equals_no_cache": True, "hf_equals_ours": True}
    decoders = {r["decoder"] for r in decode["results"]}
    assert {"ours, no cache", "ours, KV cache", "ours, int8", "ours, beam 3", "HF generate"} <= decoders
    assert all(r["tokens_per_s"] > 0 for r in decode["results"])
    assert json.loads((tmp_path / "run_all_cpu.json").read_text())["seconds"]["total"] > 0


def test_unknown_benchmark_is_refused():
    with pytest.raises(SystemExit):
        run_all.main(["--device", "cpu", "--only", "train_speed,nope"])


def test_random_tokens_train_without_a_corpus(tmp_path):
    cfg = tiny_run_config(tmp_path, ["train.max_steps=4", "train.checkpoints=false", "model.vocab_size=64"])
    data = RandomTokens(vocab_size=64, train_tokens=4000, val_tokens=400)
    summary = train(cfg, data=data)
    assert summary["steps"] == 4 and not (tmp_path / "checkpoints").exists()
    assert abs(summary["val_loss"] - 4.1589) < 0.1                  # uniform ids: ln 64 is the best possible


def test_flops_per_token_of_gpt2_124m_is_nanogpts():
    # nanoGPT's estimate for GPT-2 124M at T=1024: 6 * 85M non-embedding-lookup params + 12 * L * d * T
    flops = flops_per_token(model_sets("gpt2_shape", 1024, 50304))
    n = 124_475_904 - 1024 * 768                                     # all params, less the position table
    assert flops == 6 * n + 12 * 12 * 768 * 1024
