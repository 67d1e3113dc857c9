"""train.optimizer: torchao's 8-bit AdamW follows fp32 AdamW; low-bit state saves and resumes exactly."""

import math

import numpy as np
import pytest
import torch

import models
import optimizers
from conftest import tiny_run_config
from generic_runner import Trainer, train
from models import ModelConfig
from models.checkpoint import load_checkpoint
from train_logs import load_losses

pytest.importorskip("torchao.optim")

# d_model 64: every weight matrix has >= 4096 elements, so torchao quantises its state
TINY = dict(vocab_size=64, context=32, d_model=64, n_layers=1, n_heads=4, d_ff=256)


def _losses_with(name: str, steps: int = 100) -> tuple[np.ndarray, torch.optim.Optimizer, torch.nn.Module]:
    """Overfit one fixed batch with optimizer `name` from the same initial weights."""
    torch.manual_seed(0)
    model = models.build(ModelConfig.from_preset("baseline", **TINY))
    batch = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    groups = [{"params": list(model.parameters()), "weight_decay": 0.1}]
    opt = optimizers.make_optimizer(groups, name, 3e-3, (0.9, 0.95), torch.device("cpu"))
    losses = []
    for _ in range(steps):
        loss = model(batch[:, :-1], targets=batch[:, 1:]).objective
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return np.array(losses), opt, model


def test_adamw8bit_follows_fp32_adamw_for_100_steps():
    fp32, opt32, model = _losses_with("adamw")
    low, opt8, _ = _losses_with("adamw8bit")
    assert low[-1] < 0.1 * low[0]                              # it learns the batch
    # stated tolerance: at every step within 0.02 nats + 2% of fp32 AdamW's loss
    assert np.all(np.abs(low - fp32) <= 0.02 + 0.02 * fp32), np.abs(low - fp32).max()
    kinds = {type(s["exp_avg"]).__name__ for s in opt8.state.values()}
    assert "OptimState8bit" in kinds                           # the state really is 8-bit
    n = sum(p.numel() for p in model.parameters())
    assert optimizers.state_bytes(opt32) / n == pytest.approx(8.0, abs=0.01)   # two fp32 moments (+ steps)
    assert optimizers.state_bytes(opt8) / n < 3.0


@pytest.mark.parametrize("name", ["adamw8bit", "adamw4bit"])
def test_low_bit_state_saves_and_resumes_exactly(tmp_path, monkeypatch, name):
    sets = [f"train.optimizer={name}", "model.d_model=64", "train.max_steps=6", "train.save_every=3",
            "train.eval_every=3"]
    straight = tiny_run_config(tmp_path, sets + ["run_name=straight"])
    train(straight)
    resumed = tiny_run_config(tmp_path, sets + ["run_name=resumed"])
    real = Trainer.train_step

    def stop_after_3(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return real(self)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", stop_after_3)
        with pytest.raises(KeyboardInterrupt):
            train(resumed)
    saved = load_checkpoint(tmp_path / "checkpoints/resumed/last.pt")         # weights_only=True
    lowbit = [v for s in saved["optimizer"]["state"].values() for v in s.values() if isinstance(v, dict)]
    assert lowbit and {v["lowbit"] for v in lowbit} == {"OptimState8bit" if name == "adamw8bit" else "OptimState4bit"}
    train(resumed, resume=True)
    a, b = load_losses("straight", straight.log_dir), load_losses("resumed", resumed.log_dir)
    assert a["train_loss"] == b["train_loss"]                  # bit for bit after the resume
    end_a = load_checkpoint(tmp_path / "checkpoints/straight/last.pt")["model"]
    end_b = load_checkpoint(tmp_path / "checkpoints/resumed/last.pt")["model"]
    assert all(torch.equal(end_a[k], end_b[k]) for k in end_a)


def test_unknown_optimizer_refused():
    from experiment_config import ConfigError
    with pytest.raises(ConfigError, match="train.optimizer"):
        tiny_run_config(__import__("pathlib").Path("."), ["train.optimizer=sgd"])


@pytest.mark.parametrize("warmup,max_steps", [(3, 4), (2, 12), (0, 5)])
def test_lr_schedule_against_its_closed_form_to_and_past_the_end(warmup, max_steps):
    """Linear warmup to lr over `warmup` steps, cosine to min_lr at max_steps, then min_lr: written out
    step by step (the one-step cosine of (3, 4) included) and past max_steps, where it must not rise again."""
    lr, min_lr = 0.3, 0.02
    for step in range(max_steps + 6):
        if step < warmup:
            expected = lr * (step + 1) / warmup
        elif step >= max_steps:
            expected = min_lr
        else:
            p = (step - warmup) / (max_steps - warmup)
            expected = min_lr + (lr - min_lr) * (1 + math.cos(math.pi * p)) / 2
        assert optimizers.lr_at(step, lr, min_lr, warmup, max_steps) == pytest.approx(expected, abs=1e-12), step
