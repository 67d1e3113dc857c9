"""The family record: a fifth family is one class and one record, and every tool then serves it."""

import re

import pytest
import torch
import torch.nn as nn

import models
import modelskv
from conftest import REPO, random_tokens, tiny_run_config
from generic_runner import train
from models import GPT, Family, ModelConfig
from models.blocks import MLP, Block
from models.convert import ConversionError, hf_architecture
from models.family import FAMILIES, register
from run_stats import Stat

TINY = dict(vocab_size=61, context=16, d_model=32, n_layers=2, n_heads=4, d_ff=64)


class ScaledMLP(nn.Module):
    """The dense MLP times a learned scalar; reports that scalar as a statistic and a made-up auxiliary loss."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mlp, self.gain = MLP(cfg), nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.gain * self.mlp(x), 1e-3 * self.gain.square(), {"gain": Stat.mean(self.gain.detach())}


class Scaled(GPT):
    def make_block(self, cfg: ModelConfig, layer: int) -> nn.Module:
        return Block(cfg, mlp=ScaledMLP(cfg))


@pytest.fixture
def scaled_family():
    family = register(Family("scaled", Scaled, defaults=dict(n_layers=3),
                             missing_in_hf=lambda cfg: "learned MLP gain (scaled)",
                             describe=lambda cfg: ["gained MLP"]))
    yield family
    del FAMILIES["scaled"]


def test_a_fifth_family_is_one_class_and_one_record(scaled_family, tmp_path):
    cfg = ModelConfig.from_preset("scaled", **{**TINY, "n_layers": 2})
    assert ModelConfig.from_preset("scaled").n_layers == 3                     # the record's defaults
    model = models.build(cfg).eval()
    assert type(model) is Scaled and models.describe(cfg).endswith("gained MLP)")
    tokens = random_tokens(cfg, T=9)
    out = model(tokens, targets=tokens)
    assert out.stats["gain"].count == 2 and out.stats["gain"].value == 1.0     # the mean over 2 layers
    torch.testing.assert_close(out.aux_loss, torch.tensor(2e-3))               # summed over layers
    torch.testing.assert_close(out.objective, out.loss + 2e-3)
    # modelskv derives the cached class: prefill + one-token steps equal the training forward
    kv = modelskv.build(cfg, max_batch=2, max_seq_len=9)
    kv.load_state_dict(model.state_dict())
    with torch.no_grad():
        steps = [kv(tokens[:, :5], start_pos=0)] + [kv(tokens[:, t:t + 1], start_pos=t) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), out.logits, atol=1e-5, rtol=0)
    assert type(kv).__name__ == "KVScaled" and isinstance(kv, Scaled)
    with pytest.raises(ConversionError, match="learned MLP gain"):
        hf_architecture(cfg)
    # and the trainer trains it from the config alone, logging its statistic and aux loss
    summary = train(tiny_run_config(tmp_path, ["model.preset=scaled", "model.n_layers=1", "train.max_steps=2"]))
    assert summary["steps"] == 2 and summary["model"].startswith("scaled (")


def test_unknown_preset_and_foreign_keys_are_refused():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*baseline"):
        ModelConfig.from_preset("nope")
    with pytest.raises(ValueError, match="model.attention=self_score is a condor setting: use model.preset=condor"):
        ModelConfig.from_preset("falcon", attention="self_score")


def test_no_code_outside_models_branches_on_a_preset_name():
    """Preset names are data: code asks the family record (models/family.py), it never compares cfg.preset."""
    pattern = re.compile(r"\.preset\s*(==|!=|in\b|not in\b)")
    offenders = []
    for path in REPO.glob("**/*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", ".venv", "build") or rel.parts[0].endswith(".egg-info"):
            continue
        offenders += [f"{rel}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
