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
from models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from modelskv.load import load_model
from modelskv.model import KVCacheMixin
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


def _small_config() -> ModelConfig:
    """The small baseline of these tests: the word vocabulary below (10 words), 16 positions."""
    return ModelConfig.from_preset("baseline", vocab_size=10, context=16, d_model=16, n_layers=2, n_heads=2, d_ff=32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small baseline checkpoint with a word tokenizer, written as the trainer writes them."""
    tmp = tmp_path_factory.mktemp("defaults")
    words = list(WORD_SPECIALS) + ["the", "cat", "sat", "on", "mat", "."]
    (tmp / "tok.json").write_text(json.dumps({"kind": "word", "vocab": words, "pattern": r"\w+|[^\w\s]"}))
    cfg = _small_config()
    assert cfg.vocab_size == len(words)
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


def test_a_checkpoint_that_names_no_step_reads_as_step_zero(ckpt, tmp_path):
    saved = load_checkpoint(ckpt)
    del saved["step"]
    save_checkpoint(tmp_path / "no_step.pt", saved)
    assert load_model(tmp_path / "no_step.pt", device="cpu").step == 0 and load_model(ckpt, device="cpu").step == 5


def test_the_memory_check_counts_the_bytes_the_model_and_its_caches_take(monkeypatch):
    """check_fits' estimate against the model it guards: the bytes of the built model's weights and KV caches
    (bf16, 3 sequences of 10 positions). Free memory of exactly that fits; one byte less is refused before
    anything is built."""
    import modelskv.load
    import runtime
    from modelskv.load import inference_model
    from modelskv.model import build

    cfg = _small_config()
    built = build(cfg, 3, 10, torch.bfloat16).to(torch.bfloat16)
    caches = [b for n, b in built.named_buffers() if n.endswith(("kv_cache.k", "kv_cache.v"))]
    assert len(caches) == 2 * cfg.n_layers
    need = sum(t.numel() * t.element_size() for t in [*built.parameters(), *caches])
    monkeypatch.setattr(runtime, "free_memory", lambda device: need)
    inference_model(cfg, torch.device("cpu"), torch.bfloat16, max_batch=3, max_seq_len=10)
    monkeypatch.setattr(runtime, "free_memory", lambda device: need - 1)
    monkeypatch.setattr(modelskv.load, "build", lambda *args: pytest.fail("built before the memory check"))
    with pytest.raises(ValueError, match=r"a KV cache for 3 sequences x 10 positions .* decode fewer prompts"):
        inference_model(cfg, torch.device("cpu"), torch.bfloat16, max_batch=3, max_seq_len=10)


def test_an_inference_model_is_one_sequence_with_caches_by_default_and_lives_on_the_device():
    """Defaults: the cached inference class for one sequence of the full context; weights and caches are moved
    to the device asked for (the meta device stands in for a GPU)."""
    from modelskv.load import inference_model

    cfg = _small_config()
    model = inference_model(cfg, torch.device("cpu"), torch.float32)
    assert isinstance(model, KVCacheMixin) and not model.training
    assert (model.max_batch, model.max_seq_len) == (1, 16)
    meta = inference_model(cfg, torch.device("meta"), torch.bfloat16, max_batch=2)
    tensors = [*meta.parameters(), *meta.buffers()]
    assert {t.device.type for t in tensors} == {"meta"}
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.bfloat16}
