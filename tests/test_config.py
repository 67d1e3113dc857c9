"""The config loader: merge order, presets, typed values, and one-line errors with exit status 2."""

import subprocess
import sys

import pytest

from conftest import REPO
from experiment_config import ConfigError, from_dict, load_config, to_dict

QUICKSTART = REPO / "configs" / "quickstart.yaml"
BASELINE = REPO / "configs" / "baseline.yaml"


def test_overlays_merge_in_order_then_sets_win():
    cfg = load_config([BASELINE, QUICKSTART], ["train.lr=3e-4", "model.n_layers=3"])
    assert cfg.data.source == "builtin"          # quickstart overlays baseline's hf source
    assert cfg.tokenizer.vocab_size == 4096
    assert cfg.train.lr == 3e-4                   # "3e-4" (YAML reads it as a string) becomes a float
    assert cfg.model.n_layers == 3 and cfg.model.d_model == 128


def test_preset_fills_defaults_and_user_keys_win():
    cfg = load_config([], ["model.preset=gpt2_125m", "model.d_model=96"])
    assert (cfg.model.norm, cfg.model.position, cfg.model.mlp, cfg.model.bias) == ("rmsnorm", "rotary", "swiglu", False)
    assert cfg.model.d_model == 96 and cfg.model.n_layers == 12


def test_round_trip_through_plain_dict():
    cfg = load_config([BASELINE, QUICKSTART], ["model.preset=llama"])
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("sets, needle", [
    (["train.lrr=1"], "train.lrr"),
    (["nonsense=1"], "nonsense"),
    (["train.max_steps=ten"], "train.max_steps"),
    (["train.compile=yes please"], "train.compile"),
    (["model.norm=batchnorm"], "model.norm"),
    (["model.preset=gpt5"], "model.preset"),
    (["data.source=ftp"], "data.source"),
    (["tokenizer.kind=chars"], "tokenizer.kind"),
    (["train.precision=fp8"], "train.precision"),
    (["data.source=text"], "data.path"),
    (["train.loss_chunk=-1"], "train.loss_chunk"),
    (["train.checkpoints=sometimes"], "train.checkpoints"),
])
def test_bad_key_or_value_names_the_key(sets, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config([BASELINE], sets)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(["configs/nope.yaml"])


@pytest.mark.parametrize("module", ["prepare_data", "run_baseline"])
def test_cli_bad_key_exits_2_with_one_line(module):
    args = [sys.executable, "-m", module, "--config", str(QUICKSTART), "--set", "train.bogus=1"]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "train.bogus" in r.stderr


def test_word_level_config_is_the_original_setup():
    cfg = load_config([REPO / "configs/baseline.yaml", REPO / "configs/word_level.yaml"],
                      ["model.word_vectors=vectors.txt"])
    m = cfg.model
    assert (cfg.tokenizer.kind, cfg.data.packing, m.context) == ("word", "pad", 64)
    assert (m.tie_embeddings, m.freeze_embeddings) == (False, True)
    with pytest.raises(ConfigError, match="model.word_vectors"):
        load_config([REPO / "configs/baseline.yaml", REPO / "configs/word_level.yaml"])
