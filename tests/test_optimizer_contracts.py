"""make_optimizer hands the configured betas, learning rate and groups to the optimizer it builds (fused only
on CUDA); a low-bit optimizer without torchao names the fix; state_bytes counts exactly the state's bytes."""

import sys

import pytest
import torch

import optimizers


def _groups() -> list[dict]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5))
    return optimizers.param_groups(model, weight_decay=0.07)


def test_adamw_gets_the_configured_betas_lr_and_decay_and_is_not_fused_on_cpu():
    opt = optimizers.make_optimizer(_groups(), "adamw", 3e-3, (0.8, 0.85), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["betas"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [((0.8, 0.85), 3e-3, 0.07),
                                                                                    ((0.8, 0.85), 3e-3, 0.0)]
    assert not opt.param_groups[0]["fused"]


def test_a_low_bit_optimizer_gets_the_configured_betas():
    pytest.importorskip("torchao.optim")
    opt = optimizers.make_optimizer(_groups(), "adamw8bit", 3e-3, (0.8, 0.85), torch.device("cpu"))
    assert [g["betas"] for g in opt.param_groups] == [(0.8, 0.85)] * 2


def test_a_low_bit_optimizer_without_torchao_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)        # import torchao.optim now raises ImportError
    monkeypatch.setitem(sys.modules, "torchao.optim", None)
    with pytest.raises(ImportError, match=r"train.optimizer=adamw4bit needs torchao: pip install torchao"):
        optimizers.make_optimizer(_groups(), "adamw4bit", 3e-3, (0.9, 0.95), torch.device("cpu"))


def test_state_bytes_counts_both_moments_and_the_step_of_every_parameter():
    """After one AdamW step each parameter holds exp_avg and exp_avg_sq (its size each, fp32) and a step
    counter (one fp32 scalar): 6*5 + 5 + 5 + 5 = 45 numbers -> 2 * 45 * 4 + 4 * 4 bytes."""
    groups = _groups()
    opt = optimizers.make_optimizer(groups, "adamw", 1e-3, (0.9, 0.95), torch.device("cpu"))
    assert optimizers.state_bytes(opt) == 0
    for g in groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()
    assert optimizers.state_bytes(opt) == 2 * 45 * 4 + 4 * 4
