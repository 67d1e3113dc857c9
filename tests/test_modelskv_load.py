"""modelskv.load: one loader for every tool; weights, dtype, caches (allocated once), the training class."""

import pytest
import torch

import modelskv.cache
from conftest import tiny_run_config
from generic_runner import train
from models.checkpoint import load_checkpoint
from modelskv.load import load_model
from modelskv.model import KVCacheMixin
from modelskv.quantize import Int8Linear


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    train(tiny_run_config(tmp, ["train.max_steps=3"]))
    return tmp / "checkpoints/tiny/last.pt"


def test_weights_dtype_and_caches_allocated_once(ckpt, monkeypatch):
    made = []
    init = modelskv.cache.KVCache.__init__
    monkeypatch.setattr(modelskv.cache.KVCache, "__init__", lambda self, *a, **k: (made.append(a), init(self, *a, **k))[1])
    loaded = load_model(ckpt, max_batch=3, max_seq_len=20, device="cpu", dtype="bf16")
    saved = load_checkpoint(ckpt)
    n_layers = saved["config"]["model"]["n_layers"]
    assert len(made) == n_layers                                   # one cache per layer, never a second round
    for block in loaded.model.blocks:
        assert block.kv_cache.k.shape[0] == 3 and block.kv_cache.k.shape[2] == 20
        assert block.kv_cache.k.dtype == block.kv_cache.v.dtype == torch.bfloat16
    state = loaded.model.state_dict()
    assert set(state) == set(saved["model"])
    for name, tensor in saved["model"].items():
        assert torch.equal(state[name], tensor.to(torch.bfloat16)), name
    assert loaded.dtype == torch.bfloat16 and loaded.device == torch.device("cpu")
    assert loaded.step == saved["step"] == 3 and loaded.run_config().run_name == "tiny"
    assert loaded.tokenizer.vocab_size == saved["config"]["model"]["vocab_size"]


def test_training_class_scores_as_the_inference_class(ckpt):
    inference = load_model(ckpt, device="cpu", dtype="fp32").model
    training = load_model(ckpt, device="cpu", dtype="fp32", training_model=True).model
    assert isinstance(inference, KVCacheMixin) and not isinstance(training, KVCacheMixin)
    assert not training.training and not inference.training
    tokens = torch.randint(0, inference.cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(training(tokens)[0], inference.forward_full(tokens))


def test_int8_and_unknown_quantize(ckpt):
    model = load_model(ckpt, device="cpu", quantize="int8").model
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in model.blocks.modules())
    with pytest.raises(ValueError, match="quantize 'int4'"):
        load_model(ckpt, device="cpu", quantize="int4")
