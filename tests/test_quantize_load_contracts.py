"""Int8Linear answers in the dtype of its input whatever dtype it was quantised from; load_model's
defaults (one sequence, the "auto" device). References: the dequantised weights applied in float64,
runtime.resolve_device("auto"), a second prompt refused by the Generator."""

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

import models
from dataset_definitions.tokenization import WORD_SPECIALS
from generators import Generator
from models import ModelConfig
from models.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from modelskv.load import load_model
from modelskv.quantize import Int8Linear
from runtime import resolve_device


@pytest.mark.parametrize("source,x_dtype,bias", [(torch.float32, torch.bfloat16, False),
                                                 (torch.float32, torch.bfloat16, True),
                                                 (torch.float32, torch.float64, True),
                                                 (torch.bfloat16, torch.float32, True)])
def test_int8_linear_output_is_in_the_dtype_of_its_input(source, x_dtype, bias):
    """y = x @ (w_int8 * scale)^T + b computed and returned in x's dtype, even when the layer was
    quantised from weights of another dtype (its scales and bias are kept in that one)."""
    torch.manual_seed(0)
    linear = nn.Linear(24, 6, bias=bias).to(source)
    q = Int8Linear(linear)
    x = torch.randn(4, 24, dtype=x_dtype)
    y = q(x)
    assert y.dtype == x_dtype
    dequant = q.weight.double() * q.scale.double()[:, None]
    expected = x.double() @ dequant.T + (linear.bias.double() if bias else 0)
    tol = 5e-2 if torch.bfloat16 in (source, x_dtype) else 1e-5
    torch.testing.assert_close(y.double(), expected, atol=tol, rtol=tol)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small baseline checkpoint with a word tokenizer, written as the trainer writes them."""
    tmp = tmp_path_factory.mktemp("defaults")
    words = list(WORD_SPECIALS) + ["the", "cat", "sat", "on", "mat", "."]
    (tmp / "tok.json").write_text(json.dumps({"kind": "word", "vocab": words, "pattern": r"\w+|[^\w\s]"}))
    cfg = ModelConfig.from_preset("baseline", vocab_size=len(words), context=16, d_model=16, n_layers=2,
                                  n_heads=2, d_ff=32)
    torch.manual_seed(0)
    save_checkpoint(tmp / "c.pt", {
        "format": CHECKPOINT_FORMAT, "model": models.build(cfg).state_dict(), "step": 5,
        "config": {"model": dataclasses.asdict(cfg)},
        "tokenizer": {"kind": "word", "path": str(tmp / "tok.json"), "sha256": None, "vocab_size": len(words)}})
    return tmp / "c.pt"


def test_load_model_defaults_to_one_sequence_on_the_auto_device(ckpt):
    loaded = load_model(ckpt)
    assert loaded.device == resolve_device("auto")
    assert next(loaded.model.parameters()).device.type == loaded.device.type
    assert loaded.model.max_batch == 1 and loaded.model.max_seq_len == 16
    gen = Generator(loaded.model, loaded.tokenizer, loaded.device)
    assert len(gen.generate([[0, 4]], max_gen_len=3, temperature=0)[0]) == 1
    with pytest.raises(ValueError, match="max_batch_size=1"):
        gen.generate([[0, 4], [0, 5]], max_gen_len=3, temperature=0)
