"""Inference models with a KV cache: same logits as the training models, position by position."""

import pytest
import torch

import models
import modelskv
from models import ModelConfig
from models.checkpoint import CheckpointError, load_weights

VARIANTS = [("baseline", {}), ("gpt2_125m", {}), ("llama", {}), ("falcon", {"eval_capacity_factor": 8.0}),
            ("condor", {"attention": "standard"}), ("condor", {"attention": "head_linear_silu"}),
            ("condor", {"attention": "self_score"})]


def pair(preset, extra, max_batch=3):
    cfg = ModelConfig.from_preset(preset, vocab_size=97, context=32, d_model=32, n_layers=2, n_heads=4,
                                  d_ff=64, **extra)
    torch.manual_seed(0)
    train = models.build(cfg).eval()
    with torch.no_grad():  # norm weights away from 1 and biases away from 0: a mixed-up tensor shows
        for p in train.parameters():
            p.add_(0.1 * torch.randn_like(p))
    kv = modelskv.build(cfg, max_batch=max_batch)
    kv.load_state_dict(train.state_dict(), strict=True)     # the training checkpoint's names
    return train, kv


@pytest.mark.parametrize("preset,extra", VARIANTS)
def test_incremental_logits_equal_the_training_model(preset, extra):
    train, kv = pair(preset, extra)
    x = torch.randint(0, 97, (3, 24))
    with torch.no_grad():
        ref = train(x)[0]
        eager = torch.cat([kv(x[:, :9], 0)] + [kv(x[:, t:t + 1], t) for t in range(9, 24)], dim=1)
        kv(x[:, :9], 0)
        static = torch.cat([kv(x[:, :9], 0)] + [kv(x[:, t:t + 1], torch.tensor(t)) for t in range(9, 24)], dim=1)
    torch.testing.assert_close(eager, ref, atol=2e-5, rtol=0)     # fp32: only summation order differs
    torch.testing.assert_close(static, ref, atol=2e-5, rtol=0)


def test_falcon_inference_never_drops():
    train, kv = pair("falcon", {})                               # eval capacity 1.25 in the training model
    assert kv.blocks[0].mlp.capacity(1) == 1 and kv.blocks[0].mlp.capacity(100) == 100


def test_cache_reorder_keeps_the_chosen_rows():
    _, kv = pair("baseline", {}, max_batch=4)
    x = torch.randint(0, 97, (4, 6))
    with torch.no_grad():
        kv(x, 0)
        full = kv(torch.cat([x, x[:, :1]], 1)[[2, 2, 0, 1]], 0)[:, -1]
        kv(x, 0)
        kv.reorder_caches(torch.tensor([2, 2, 0, 1]))
        step = kv(x[[2, 2, 0, 1], :1], 6)[:, -1]
    torch.testing.assert_close(step, full, atol=2e-5, rtol=0)


def test_wrong_architecture_checkpoint_is_a_clear_error():
    train, _ = pair("baseline", {})
    _, other = pair("llama", {})
    ckpt = {"model": train.state_dict(), "config": {"model": {"preset": "baseline"}}}
    with pytest.raises(CheckpointError, match="do not fit a baseline model"):
        load_weights(other, ckpt)


def test_cache_overflow_and_context_limits():
    _, kv = pair("baseline", {})
    with pytest.raises(ValueError, match="context"):
        modelskv.build(kv.cfg, max_batch=1, max_seq_len=64)
    with torch.no_grad(), pytest.raises(ValueError):
        kv(torch.zeros(1, 40, dtype=torch.long), 0)
