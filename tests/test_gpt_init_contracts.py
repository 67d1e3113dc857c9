"""GPT's GPT-2 initialisation measured on the built weights (N(0, 0.02), the residual projections wo / down at
0.02 / sqrt(2 n_layers)); token-importance dropout's position handling by default and with keep_position;
the sinusoidal table added in the input's dtype; each MoE block reporting under its own layer number; model.bias
and model.norm_eps reaching every LayerNorm and projection."""

import math

import pytest
import torch

from models import ModelConfig, build

WIDE = dict(vocab_size=512, context=16, d_model=256, n_layers=8, n_heads=4, d_ff=1024)


def _std_of(model, suffix: str) -> float:
    """The std of all weights whose names end with `suffix`, pooled."""
    return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith(suffix)]).std().item()


@pytest.mark.parametrize("preset,residual", [("baseline", ("attn.wo.weight", "mlp.down.weight")),
                                             ("llama", ("attn.wo.weight", "mlp.down.weight"))])
def test_init_draws_n_0_002_and_scales_the_residual_projections(preset, residual):
    """Every matrix and embedding ~ N(0, 0.02); the two projections into the residual stream of each block
    ~ N(0, 0.02 / sqrt(2 * 8)) = N(0, 0.005). 65k-260k draws per pool: the std within 2%."""
    torch.manual_seed(0)
    model = build(ModelConfig.from_preset(preset, **WIDE))
    names = {n for n, _ in model.named_parameters()}
    assert all(any(n.endswith(s) for n in names) for s in residual), sorted(names)
    for suffix in residual:
        assert _std_of(model, suffix) == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.02), suffix
    assert _std_of(model, "tok_emb.weight") == pytest.approx(0.02, rel=0.02)
    other = [p.detach().flatten() for n, p in model.named_parameters()
             if p.dim() == 2 and not n.endswith(residual) and "emb" not in n]
    pooled = torch.cat(other)
    assert pooled.std().item() == pytest.approx(0.02, rel=0.02)
    assert abs(pooled.mean().item()) < 3 * 0.02 / math.sqrt(pooled.numel())       # mean 0, within 3 s.e.


TINY = dict(vocab_size=37, context=9, d_model=12, n_layers=2, n_heads=3, d_ff=20)


@pytest.fixture
def learned():
    torch.manual_seed(0)
    return build(ModelConfig.from_preset("baseline", position="learned", **TINY)).eval()


def test_a_dropped_token_loses_its_whole_input_by_default(learned):
    """forward / embed / add_positions without keep_position zero the dropped position's token and position
    embedding."""
    tokens = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 3] = mask[1, 0] = True
    x, _ = learned.embed(tokens, drop_mask=mask)
    assert x[0, 3].abs().sum() == 0 and x[1, 0].abs().sum() == 0
    torch.testing.assert_close(learned.add_positions(learned.embed_tokens(tokens), drop_mask=mask)[0], x)
    x_pos, _ = learned.embed(tokens, drop_mask=mask, keep_position=True)        # the position embedding stays
    torch.testing.assert_close(x_pos[0, 3], learned.pos_emb.weight[3])
    torch.testing.assert_close(learned(tokens, drop_mask=mask).logits,
                               learned(tokens, drop_mask=mask, keep_position=False).logits)
    assert not torch.allclose(learned(tokens, drop_mask=mask).logits,
                              learned(tokens, drop_mask=mask, keep_position=True).logits)


def test_keep_position_without_a_mask_drops_nothing(learned):
    tokens = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(learned(tokens, keep_position=True).logits, learned(tokens).logits)


def test_the_sinusoidal_table_is_added_in_the_inputs_dtype():
    """add_positions on fp16 embeddings (a model kept in fp32) answers fp16, the table cast to it."""
    model = build(ModelConfig.from_preset("baseline", position="sinusoidal", **TINY))
    x = torch.randn(2, 5, 12).half()
    out, rope = model.add_positions(x)
    assert out.dtype == torch.float16 and rope is None
    torch.testing.assert_close(out, x + model.pos_table[:5].half())


def test_each_moe_block_reports_under_its_own_layer_number():
    torch.manual_seed(0)
    model = build(ModelConfig.from_preset("falcon", **{**TINY, "n_layers": 3}))
    stats = model(torch.randint(0, 37, (2, 9)), targets=torch.randint(0, 37, (2, 9))).stats
    assert {k for k in stats if k.startswith("moe_balance_l")} == {"moe_balance_l0", "moe_balance_l1", "moe_balance_l2"}


@pytest.mark.parametrize("bias", [True, False])
def test_bias_and_norm_eps_reach_every_layernorm_and_projection(bias):
    """With model.bias every Linear (the head aside: it never has one) and LayerNorm has a bias, without none;
    every LayerNorm uses model.norm_eps."""
    model = build(ModelConfig.from_preset("baseline", bias=bias, norm="layernorm", norm_eps=1e-3, **TINY))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert len(norms) == 2 * 2 + 1 and {m.eps for m in norms} == {1e-3}
    assert {n.rsplit(".", 1)[-1] for n, _ in linears} >= {"wo", "down"}
    assert all((m.bias is not None) == bias for m in norms)
    assert all((m.bias is not None) == bias for _, m in linears), [n for n, m in linears if (m.bias is not None) != bias]
    assert model.lm_head.bias is None
