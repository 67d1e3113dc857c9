"""Tests for models/falcon.py: routing order and capacity, losses, a dense reference, training, compile."""

import math
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_causal, random_tokens
from models import FAMILIES, build, ModelConfig
from models.falcon import MoE, Falcon, route
from run_stats import values

TINY = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, vocab_size=97, context=16)


def tiny(**overrides) -> ModelConfig:
    return ModelConfig.from_preset("falcon", **{**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides) -> Falcon:
    torch.manual_seed(seed)
    return build(tiny(**overrides)).eval()


def tiny_moe(seed: int = 0, **overrides) -> MoE:
    torch.manual_seed(seed)
    return Falcon(tiny(**overrides)).blocks[0].mlp   # initialised as in the model


def dense_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The same top-k mixture without capacity, one token and one expert at a time."""
    B, T, C = x.shape
    xf = x.reshape(B * T, C)
    y = torch.zeros_like(xf)
    for n in range(B * T):
        probs = (xf[n] @ moe.router.weight.T).softmax(-1)
        top_p, top_e = probs.topk(moe.cfg.top_k)
        for p, e in zip(top_p / top_p.sum(), top_e):
            h = xf[n] @ moe.up.weight[e]
            if moe.up.bias is not None:
                h = h + moe.up.bias[e]
            if moe.cfg.mlp == "swiglu":
                h = F.silu(h[: moe.width]) * h[moe.width:]
            else:
                h = F.relu(h) if moe.cfg.mlp == "relu" else F.gelu(h)
            out = h @ moe.down.weight[e]
            if moe.down.bias is not None:
                out = out + moe.down.bias[e]
            y[n] += p * out
    return y.view(B, T, C)


def forced_input(moe: MoE, B: int, T: int) -> torch.Tensor:
    """Input and router weights that send every token to expert 0 first and expert 1 second."""
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0], moe.router.weight[1, 0] = 10.0, 5.0
    x = torch.randn(B, T, moe.cfg.d_model, generator=torch.Generator().manual_seed(4))
    x[..., 0] = 1.0 + x[..., 0].abs()        # logits 10 * x0 > 5 * x0 > 0 for experts 0, 1, rest
    return x


def test_contract_and_stats():
    model = tiny_model()
    assert isinstance(model, FAMILIES["falcon"].model) and FAMILIES["falcon"].model is Falcon
    tokens = random_tokens(model.cfg)
    for train in (True, False):
        model.train(train)
        logits, loss, aux_loss, stats = model(tokens, targets=tokens)
        assert logits.shape == (2, model.cfg.context, model.cfg.vocab_size)
        E, L = model.cfg.n_experts, model.cfg.n_layers
        keys = {"moe_dropped"}
        for i in range(L):
            keys |= {f"moe_balance_l{i}", f"moe_z_l{i}", f"moe_dropped_l{i}"}
            keys |= {f"moe_load_l{i}_e{j}" for j in range(E)}
        assert set(stats) == keys
        stats = values(stats)
        # loss is the cross-entropy alone; training minimises it plus the auxiliary loss
        ce = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
        torch.testing.assert_close(loss, ce)
        torch.testing.assert_close(model(tokens, targets=tokens).objective, ce + aux_loss)
        assert aux_loss.requires_grad and not [k for k, v in stats.items() if v.requires_grad]  # logged values
        # aux_loss is the weighted sum over layers; moe_dropped the mean; loads sum to k per layer
        expected = sum(0.01 * stats[f"moe_balance_l{i}"] + 1e-3 * stats[f"moe_z_l{i}"] for i in range(L))
        torch.testing.assert_close(aux_loss.detach(), expected)
        torch.testing.assert_close(stats["moe_dropped"], sum(stats[f"moe_dropped_l{i}"] for i in range(L)) / L)
        total_load = sum(stats[f"moe_load_l0_e{j}"] for j in range(E))
        torch.testing.assert_close(total_load, torch.tensor(float(model.cfg.top_k)))
    out = model(tokens)                                 # no targets: still reports the aux loss
    assert out.loss is None and out.objective is None and out.aux_loss is not None


def test_causality_with_drops():
    # a small capacity so tokens are dropped; position-major priority keeps earlier logits fixed
    model = tiny_model(capacity_factor=0.5)
    stats = assert_causal(model, random_tokens(model.cfg))
    assert stats["moe_dropped"] > 0.2


@pytest.mark.parametrize("mlp", ["gelu", "relu", "swiglu"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_dense_reference(mlp, bias):
    moe = tiny_moe(mlp=mlp, bias=bias, capacity_factor=8.0)    # capacity = every token: no drops
    with torch.no_grad():                                       # nonzero biases, so they count
        for p in moe.parameters():
            if p.dim() == 2 and p is not moe.router.weight:
                p.normal_(0.0, 0.1)
        moe.router.weight.normal_(0.0, 1.0)                     # well-separated top-k choices
    x = torch.randn(2, 5, moe.cfg.d_model, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y, _, stats = moe(x)
        stats = values(stats)
    assert stats["moe_dropped"] == 0
    assert moe.width == 64 // 2 and moe.up.weight.shape[-1] == (64 if mlp == "swiglu" else 32)
    torch.testing.assert_close(y, dense_reference(moe, x), atol=1e-5, rtol=0)


def test_capacity_keeps_earliest_positions():
    moe = tiny_moe(n_experts=4, top_k=2, capacity_factor=0.75).eval()
    B, T = 2, 4
    x = forced_input(moe, B, T)
    assert moe.capacity(B * T) == 3                            # ceil(0.75 * 8 * 2 / 4)
    with torch.no_grad():
        y, _, stats = moe(x)
        stats = values(stats)
        full = dense_reference(moe, x)
    # experts 0 and 1 each take 3 tokens, position-major: (b0, t0), (b1, t0), (b0, t1)
    kept = torch.zeros(B, T, dtype=torch.bool)
    kept[0, 0] = kept[1, 0] = kept[0, 1] = True
    torch.testing.assert_close(y[kept], full[kept], atol=1e-5, rtol=0)
    assert torch.all(y[~kept] == 0)                            # dropped by both: residual only
    torch.testing.assert_close(stats["moe_dropped_l0"], torch.tensor(10 / 16))
    torch.testing.assert_close(stats["moe_load_l0_e0"], torch.tensor(1.0))   # before capacity


def test_route_orders_choices_token_major():
    # token 0 picks (e0, e2), token 1 picks (e2, e0); capacity 1. Token-major: token 0 keeps both,
    # whereas first-choices-first (Switch/GShard) would hand e2 to token 1's first choice
    logits = torch.tensor([[2.0, 0.0, 1.0], [1.0, 0.0, 5.0]])
    r = route(logits, top_k=2, capacity=1)
    assert r.expert.tolist() == [[0, 2], [2, 0]]
    assert r.keep.tolist() == [[True, True], [False, False]]
    assert r.slot.tolist() == [[0, 2], [3, 3]]                 # dropped -> the spare row E * capacity
    assert torch.all(r.weight[1] == 0)                          # dropped weight is not renormalised
    torch.testing.assert_close(r.weight[0].sum(), torch.tensor(1.0))
    torch.testing.assert_close(r.dropped, torch.tensor(0.5))


def test_balance_and_z_loss_values():
    E = 8
    r = route(torch.zeros(5, E), top_k=2, capacity=10)          # uniform softmax (top-k ties)
    torch.testing.assert_close(r.balance, torch.tensor(1.0))
    torch.testing.assert_close(r.z, torch.tensor(math.log(E) ** 2))
    # uneven probabilities, but every expert equally important and equally loaded
    logits = torch.zeros(E, E)
    for n in range(E):
        logits[n, n], logits[n, (n + 1) % E] = 2.0, 1.0
    r = route(logits, top_k=2, capacity=10)
    torch.testing.assert_close(r.load, torch.full((E,), 2 / E))
    torch.testing.assert_close(r.balance, torch.tensor(1.0))
    # collapse onto one expert: balance E with k = 1 (E / k in general)
    collapsed = torch.full((6, E), float("-inf"))
    collapsed[:, 3] = 0.0
    torch.testing.assert_close(route(collapsed, top_k=1, capacity=6).balance, torch.tensor(float(E)))
    torch.testing.assert_close(route(collapsed, top_k=2, capacity=6).balance, torch.tensor(E / 2))


def test_balance_counts_load_after_capacity_by_default():
    # 6 tokens collapse onto expert 3, which keeps 2 of them: importance is 1 on expert 3
    E = 8
    collapsed = torch.full((6, E), float("-inf"))
    collapsed[:, 3] = 0.0
    after = route(collapsed, top_k=1, capacity=2)
    before = route(collapsed, top_k=1, capacity=2, balance_after_capacity=False)
    torch.testing.assert_close(after.balance, torch.tensor(E * 2 / 6))   # load = the 2 kept of 6 tokens
    torch.testing.assert_close(before.balance, torch.tensor(float(E)))   # load = all 6 routed
    torch.testing.assert_close(after.load, before.load)                  # the logged load: routing, before capacity
    assert after.load[3] == 1.0


@pytest.mark.parametrize("count", ["after_capacity", "before_capacity"])
def test_balance_count_option_reaches_the_loss(count):
    moe = tiny_moe(n_experts=4, top_k=2, capacity_factor=0.75, balance_count=count).eval()
    assert ModelConfig.from_preset("falcon").balance_count == "after_capacity"
    x = forced_input(moe, 2, 4)                      # every token to experts 0 and 1; 3 of 8 kept each
    with torch.no_grad():
        _, _, stats = moe(x)
        stats = values(stats)
        probs = (x.reshape(8, -1) @ moe.router.weight.T).softmax(-1).mean(0)
    load = torch.tensor([3 / 8, 3 / 8, 0, 0]) if count == "after_capacity" else torch.tensor([1.0, 1.0, 0, 0])
    torch.testing.assert_close(stats["moe_balance_l0"], 4 * (probs * load / 2).sum())


def test_router_gets_gradient():
    model = tiny_model().train()
    tokens = random_tokens(model.cfg)
    loss = model(tokens, targets=tokens).objective
    loss.backward()
    for block in model.blocks:
        assert block.mlp.router.weight.grad.abs().sum() > 0
        assert block.mlp.up.weight.grad.abs().sum() > 0


def test_train_and_eval_capacity():
    moe = tiny_moe(n_experts=4, top_k=2, capacity_factor=0.5, eval_capacity_factor=2.0)
    x = forced_input(moe, 2, 4)
    assert moe.train().capacity(8) == 2 and moe.eval().capacity(8) == 8
    with torch.no_grad():
        dropped_train = moe.train()(x)[2]["moe_dropped_l0"].value
        dropped_eval = moe.eval()(x)[2]["moe_dropped_l0"].value
    torch.testing.assert_close(dropped_train, torch.tensor(12 / 16))
    torch.testing.assert_close(dropped_eval, torch.tensor(0.0))
    same = tiny_moe(capacity_factor=0.5)                        # eval_capacity_factor unset
    assert same.train().capacity(64) == same.eval().capacity(64) == 8


def test_bf16_autocast_router_in_fp32():
    moe = tiny_moe()
    x = torch.randn(2, 8, moe.cfg.d_model, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, _, stats = moe(x)
        stats = values(stats)
    with torch.no_grad():
        y32, _, stats32 = moe(x)
        stats32 = values(stats32)
    # an fp32 router gives the fp32 logits bit for bit; a bf16 one would change the z-loss
    assert stats["moe_z_l0"].dtype == torch.float32
    assert torch.equal(stats["moe_z_l0"], stats32["moe_z_l0"])
    assert y.dtype == x.dtype and torch.isfinite(y).all()
    assert y32.abs().max() > 5e-3                               # outputs large enough for the bound to mean something
    torch.testing.assert_close(y, y32, atol=2e-4, rtol=2e-2)     # experts ran in bf16: ~0.4% apart


def test_overfits_one_batch():
    model = tiny_model(vocab_size=32).train()
    tokens = random_tokens(model.cfg, B=4)
    targets = random_tokens(model.cfg, B=4, seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(100):
        out = model(tokens, targets=targets)
        if step == 0:
            first = out.loss.item()
        opt.zero_grad(set_to_none=True)
        out.objective.backward()
        opt.step()
    assert first > 3.0 and out.loss.item() < 0.5, f"ce {first:.3f} -> {out.loss.item():.3f}"


def test_num_active_params():
    model = tiny_model()
    E, k, L, d, w = 8, 2, TINY["n_layers"], TINY["d_model"], TINY["d_ff"] // 2
    per_expert = d * w + w + w * d + d                          # up and down, with biases
    assert model.num_active_params() == model.num_params() - L * (E - k) * per_expert
    assert model.num_active_params() < model.num_params()
    assert model.num_active_params(exclude_embeddings=True) < model.num_params(exclude_embeddings=True)


def test_residual_projection_init():
    model = tiny_model(d_model=64, n_layers=8, d_ff=256)
    moe = model.blocks[0].mlp
    assert abs(moe.down.weight.std().item() - 0.02 / math.sqrt(16)) < 1e-3
    assert abs(moe.up.weight.std().item() - 0.02) < 1e-3
    assert abs(moe.router.weight.std().item() - 0.02) < 2e-3


def test_torch_compile_forward_backward():
    # CPU inductor compile: slow-ish (a few seconds) even for this tiny model
    model = tiny_model(n_layers=1, capacity_factor=1.0).train()
    tokens = random_tokens(model.cfg)
    compiled = torch.compile(model, fullgraph=True)             # no graph breaks, so no host syncs
    start = time.perf_counter()
    out = compiled(tokens, targets=tokens)
    logits, loss = out.logits, out.objective
    loss.backward()
    assert time.perf_counter() - start < 120
    grad = model.blocks[0].mlp.router.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    out = model(tokens, targets=tokens)
    eager_logits, eager_loss = out.logits, out.objective
    eager_loss.backward()
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, model.blocks[0].mlp.router.weight.grad, atol=1e-6, rtol=1e-4)
