"""models.convert.from_meta reads Meta's params.json as the Llama reference defines it: max_seq_len when no
context is given, norm_eps and rope_theta when present (their reference defaults, 1e-5 and 10000, when
absent), and a scaled rotary refused rather than imported as plain rotary."""

import pytest
import torch

import models
from models import ModelConfig
from models.convert import ConversionError, from_meta, to_meta


def _meta(**cfg_options):
    cfg = ModelConfig.from_preset("llama", vocab_size=53, context=16, d_model=32, n_layers=1, n_heads=4, d_ff=48,
                                  **cfg_options)
    torch.manual_seed(0)
    return to_meta(cfg, models.build(cfg).state_dict())


def test_params_set_the_context_norm_eps_and_rope_theta():
    params, weights = _meta(norm_eps=1e-6, rope_theta=500000.0)
    assert (params["norm_eps"], params["rope_theta"]) == (1e-6, 500000.0)       # what the export wrote
    cfg, _ = from_meta({**params, "max_seq_len": 24}, weights, context=None)
    assert (cfg.context, cfg.norm_eps, cfg.rope_theta) == (24, 1e-6, 500000.0)
    assert from_meta({**params, "max_seq_len": 24}, weights, context=40)[0].context == 40   # given wins


def test_missing_params_take_the_reference_defaults():
    params, weights = _meta(norm_eps=1e-6, rope_theta=500000.0)
    bare = {k: v for k, v in params.items() if k not in ("norm_eps", "rope_theta")}
    cfg, _ = from_meta(bare, weights, context=16)
    assert (cfg.norm_eps, cfg.rope_theta) == (1e-5, 10000.0)


def test_scaled_rotary_is_refused():
    params, weights = _meta()
    with pytest.raises(ConversionError, match="use_scaled_rope"):
        from_meta({**params, "use_scaled_rope": True}, weights, context=16)
    assert from_meta({**params, "use_scaled_rope": False}, weights, context=16)[0].context == 16
