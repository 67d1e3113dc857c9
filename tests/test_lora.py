"""LoRA: only the adapters train, merged weights compute what the adapted model computes."""

import pytest
import torch

from conftest import REPO, tiny_run_config
from generators import Generator
from generic_runner import train
from models import ModelConfig, build
from models.checkpoint import load_checkpoint
from models.lora import LoRAConfig, LoRALinear, apply_lora, merged_state_dict


def test_merged_weights_equal_the_adapted_model():
    cfg = ModelConfig.from_preset("baseline", vocab_size=97, context=16, d_model=32, n_layers=2, n_heads=4, d_ff=64)
    torch.manual_seed(0)
    model = build(cfg).eval()
    n = apply_lora(model, LoRAConfig(rank=4, targets="wqkv,up"))
    assert n == 2 * (4 * (32 + 96) + 4 * (32 + 64))                   # A (r, in) + B (out, r) per wrapped layer
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        f"blocks.{i}.{m}.{ab}" for i in range(2) for m in ("attn.wqkv", "mlp.up") for ab in ("lora_a", "lora_b")}
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b)                            # as if trained
    plain = build(cfg).eval()
    plain.load_state_dict(merged_state_dict(model), strict=True)      # the original parameter names
    x = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], model(x)[0], atol=1e-5, rtol=1e-5)


def test_lora_finetune_trains_only_adapters_from_init_from(tmp_path):
    base = tiny_run_config(tmp_path, ["train.max_steps=10", "run_name=base"])
    train(base)
    init = load_checkpoint(tmp_path / "checkpoints/base/last.pt")
    ft = tiny_run_config(tmp_path, ["run_name=ft", f"init_from={tmp_path / 'checkpoints/base/last.pt'}",
                                    "lora.rank=4", "lora.targets=wqkv,wo", "train.max_steps=6", "train.lr=1e-2",
                                    "data.val_rows=30", "model.d_model=64"])   # model.* is taken from init_from
    train(ft)
    out = load_checkpoint(tmp_path / "checkpoints/ft/last.pt")
    assert out["model"].keys() == init["model"].keys() and out["config"]["model"]["d_model"] == 32
    changed = {k for k in init["model"] if not torch.equal(init["model"][k], out["model"][k])}
    assert changed and changed <= {f"blocks.{i}.attn.{m}.weight" for i in range(2) for m in ("wqkv", "wo")}
    gen = Generator.build(str(tmp_path / "checkpoints/ft/last.pt"), device="cpu")   # an ordinary checkpoint
    assert gen.text_completion(["Once upon"], temperature=0, max_gen_len=4)[0]["tokens"]


def test_lora_resume_is_exact(tmp_path, monkeypatch):
    import os
    import signal

    from generic_runner import Interrupted, Trainer
    from train_logs import load_losses
    base = tiny_run_config(tmp_path, ["train.max_steps=4", "run_name=base"])
    train(base)
    sets = [f"init_from={tmp_path / 'checkpoints/base/last.pt'}", "lora.rank=4", "train.max_steps=12",
            "train.save_every=4", "train.eval_every=4"]
    train(tiny_run_config(tmp_path, sets + ["run_name=a"]))
    real = Trainer.train_step

    def stop_at_6(self):
        if self.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop, mid-step
        return real(self)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", stop_at_6)
        with pytest.raises(Interrupted):
            train(tiny_run_config(tmp_path, sets + ["run_name=b"]))
    train(tiny_run_config(tmp_path, sets + ["run_name=b"]), resume=True)
    logs = tmp_path / "logs"
    assert load_losses("a", logs)["train_loss"] == load_losses("b", logs)["train_loss"]


def test_finetune_config_loads():
    from experiment_config import load_config
    cfg = load_config([REPO / "configs/baseline.yaml", REPO / "configs/finetune_lora.yaml"], ["init_from=x.pt"])
    assert cfg.lora.rank == 8 and cfg.data.text_field == "chosen" and cfg.init_from == "x.pt"
