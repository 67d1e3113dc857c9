"""LoRA and int8 against hand-written references: the adapter's output and scale alpha / rank, the merged
weights, what trains; the int8 layers and a whole quantized model against hand-dequantized weights."""

import copy

import pytest
import torch
import torch.nn as nn

from conftest import tiny_run_config
from generic_runner import Trainer
from models import ModelConfig, build
from models.lora import LoRAConfig, LoRALinear, apply_lora, merged_state_dict
from modelskv.quantize import Int8Linear, quantize_int8
from runtime import setup_env

TINY = dict(vocab_size=61, context=16, d_model=32, n_layers=2, n_heads=2, d_ff=64)


def _trained_like(lora: LoRALinear, seed: int) -> LoRALinear:
    with torch.no_grad():                                                          # B = 0 at the start: move it
        lora.lora_b.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
    return lora


@pytest.mark.parametrize("rank, alpha", [(4, 6.0), (2, 16.0), (8, 2.0)])     # scale 1.5, 8, 0.25: never r / alpha
def test_lora_output_is_base_plus_alpha_over_rank_times_b_a_x(rank, alpha):
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    lora = _trained_like(LoRALinear(copy.deepcopy(base), rank, alpha, dropout=0.0), seed=rank)
    x = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(1))
    W, b = base.weight.double(), base.bias.double()
    A, B = lora.lora_a.detach().double(), lora.lora_b.detach().double()
    assert A.shape == (rank, 12) and B.shape == (7, rank)
    expected = x.double() @ W.T + b + (alpha / rank) * ((x.double() @ A.T) @ B.T)  # written out, float64
    torch.testing.assert_close(lora(x).double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lora.merged_weight().double(), W + (alpha / rank) * B @ A, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        nn.init.zeros_(lora.lora_b)
    torch.testing.assert_close(lora(x), base(x))                                  # B = 0: exactly the base layer


def test_lora_dropout_acts_on_the_adapter_input_only():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    lora = _trained_like(LoRALinear(copy.deepcopy(base), 4, 6.0, dropout=0.5), seed=3).train()
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    y = lora(x)
    torch.manual_seed(5)
    kept = nn.functional.dropout(x, 0.5, training=True)                           # the same dropout draw
    expected = base(x) + 1.5 * kept @ lora.lora_a.T @ lora.lora_b.T
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(lora.eval()(x), base(x) + 1.5 * x @ lora.lora_a.T @ lora.lora_b.T)


def test_merged_model_equals_the_adapted_model_and_the_hand_merged_weights():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("gpt2_125m", **TINY)
    model = build(cfg).eval()
    original = copy.deepcopy(model.state_dict())
    apply_lora(model, LoRAConfig(rank=3, alpha=5.0, targets="wqkv,wo,up,down"))
    for i, m in enumerate(m for m in model.modules() if isinstance(m, LoRALinear)):
        _trained_like(m, seed=i)
    merged = merged_state_dict(model)
    assert merged.keys() == original.keys()
    for name, w in merged.items():
        module = name.rsplit(".", 1)[0]
        if module.rsplit(".", 1)[-1] in ("wqkv", "wo", "up", "down"):
            lora = model.get_submodule(module)
            by_hand = original[name].double() + (5.0 / 3) * lora.lora_b.double() @ lora.lora_a.double()
            torch.testing.assert_close(w.double(), by_hand, rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(w, original[name]), name
    plain = build(cfg).eval()
    plain.load_state_dict(merged, strict=True)
    tokens = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted, folded = model(tokens).logits, plain(tokens).logits
    assert (adapted - build(cfg).eval()(tokens).logits).abs().max() > 1e-2       # the adapters change the output
    torch.testing.assert_close(folded, adapted, rtol=1e-4, atol=1e-5)


def test_trainer_with_lora_optimizes_and_changes_only_the_adapters(tiny_root):
    cfg = tiny_run_config(tiny_root, ["lora.rank=2", "lora.alpha=3", "lora.targets=wqkv,up", "train.lr=1e-2",
                                      "run_name=lora-adapters"])
    trainer = Trainer(cfg, setup_env(cfg.device, cfg.train.precision), False)
    lora_names = {f"blocks.{i}.{m}.{ab}" for i in range(2) for m in ("attn.wqkv", "mlp.up")
                  for ab in ("lora_a", "lora_b")}
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    in_optimizer = {names[id(p)] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == lora_names
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == lora_names
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    for _ in range(2):
        trainer.train_step()
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, before[n]) == (n not in lora_names), n
    assert all(trainer.model.get_submodule(m).scale == 1.5 for m in ("blocks.0.attn.wqkv", "blocks.1.mlp.up"))


# ----------------------------------------------------------------------------- int8

def _dequantized_by_hand(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-row int8: s = max|w_row| / 127, w ~ s * round(w / s), in float64."""
    w = weight.detach().double()
    s = w.abs().amax(dim=1, keepdim=True) / 127
    return s * torch.clamp(torch.round(w / s), -127, 127)


def test_int8_linear_equals_the_hand_dequantized_matmul_with_per_row_scales():
    torch.manual_seed(0)
    linear = nn.Linear(40, 6)
    with torch.no_grad():                                                          # rows of very different size
        linear.weight.mul_(torch.tensor([0.01, 1.0, 30.0, 0.3, 5.0, 100.0])[:, None])
    q = Int8Linear(linear)
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(1))
    expected = x.double() @ _dequantized_by_hand(linear.weight).T + linear.bias.double()
    torch.testing.assert_close(q(x).double(), expected, rtol=1e-5, atol=1e-5)
    one_scale = linear.weight.abs().max().double() / 127                           # a per-tensor grid differs
    coarse = one_scale * torch.round(linear.weight.double() / one_scale)
    assert (x.double() @ coarse.T - x.double() @ _dequantized_by_hand(linear.weight).T)[:, 0].abs().max() > 1e-3


def test_quantized_model_equals_the_model_with_hand_dequantized_linear_weights():
    """Every nn.Linear but the router becomes int8 (a tied head its own copy); the embedding stays exact."""
    torch.manual_seed(0)
    model = build(ModelConfig.from_preset("falcon", **TINY)).eval()
    reference = copy.deepcopy(model).double()
    linear_names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("router")}
    assert "lm_head" in linear_names and model.lm_head.weight is model.tok_emb.weight
    with torch.no_grad():
        for name in linear_names:
            layer = reference.get_submodule(name)
            layer.weight = nn.Parameter(_dequantized_by_hand(model.get_submodule(name).weight))  # unties the head
    quantize_int8(model)
    assert {n for n, m in model.named_modules() if isinstance(m, Int8Linear)} == linear_names
    assert torch.equal(model.tok_emb.weight, reference.tok_emb.weight.float())
    tokens = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits.double(), reference(tokens).logits, rtol=1e-4, atol=1e-5)


def test_lora_a_starts_as_nn_linear_initialises_its_weight():
    """A starts uniform in +-1/sqrt(in_features), nn.Linear's own init (kaiming_uniform with a = sqrt(5)); B at 0."""
    torch.manual_seed(0)
    lora = LoRALinear(nn.Linear(400, 9), rank=16, alpha=8.0, dropout=0.0)
    bound = 1 / 400 ** 0.5
    a = lora.lora_a.detach()
    assert a.abs().max().item() <= bound and a.abs().max().item() > 0.99 * bound    # 6,400 draws reach the edge
    assert a.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)               # uniform's std
    assert (lora.lora_b == 0).all()


def test_lora_targets_that_match_no_linear_layer_are_refused():
    """A typo in lora.targets must not train a model with nothing trainable (or everything frozen silently)."""
    model = build(ModelConfig.from_preset("baseline", **TINY))
    with pytest.raises(ValueError, match="matches no linear layer"):
        apply_lora(model, LoRAConfig(rank=4, targets="wqvk"))
    n = apply_lora(model, LoRAConfig(rank=4, targets="wqkv"))
    assert n == sum(p.numel() for name, p in model.named_parameters() if name.endswith(("lora_a", "lora_b")))
    assert n == 2 * 4 * (32 + 3 * 32)                                                # 2 layers x (A + B) of wqkv
