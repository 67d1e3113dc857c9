"""Every loss the models train on against a hand-written reference: cross-entropy (plain and fused in
chunks, mean and per token, ignored targets), Falcon's balance loss, router z-loss and capacity drops."""

import math

import pytest
import torch
import torch.nn.functional as F

from models import ModelConfig, build
from run_stats import values

V = 53


def _ce_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL (B, T) in float64: log(sum(exp(logits))) - the target's logit; 0 where the target is -100."""
    logits = logits.double()
    valid = targets != -100
    target_logit = logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return torch.where(valid, logits.exp().sum(-1).log() - target_logit, 0.0)


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = build(ModelConfig.from_preset("baseline", vocab_size=V, context=12, d_model=32, n_layers=2, n_heads=2,
                                          d_ff=64)).eval()
    with torch.no_grad():                                    # sharper predictions than at init
        model.tok_emb.weight.mul_(20.0)
    return model


def _batch():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, V, (3, 12), generator=g)
    targets = torch.randint(0, V, (3, 12), generator=g)
    targets[0, 4:9] = -100                                   # ignored targets, unevenly spread over rows
    targets[2, -1] = -100
    return tokens, targets


@pytest.mark.parametrize("loss_chunk", [0, 5, 64])            # plain; chunks not dividing 36 rows; one chunk
def test_cross_entropy_mean_and_per_token_equal_the_hand_written_nll(gpt, loss_chunk):
    tokens, targets = _batch()
    with torch.no_grad():
        logits = gpt(tokens).logits
        per_token = gpt(tokens, targets, loss_chunk=loss_chunk, reduction="none").loss
        mean = gpt(tokens, targets, loss_chunk=loss_chunk).loss
    nll = _ce_by_hand(logits, targets)
    valid = targets != -100
    assert nll[valid].std() > 0.5                                           # predictions far from uniform
    torch.testing.assert_close(per_token.double(), nll, atol=2e-5, rtol=1e-5)
    assert per_token.shape == (3, 12) and (per_token[~valid] == 0).all()
    # the mean is over the target tokens that count, not over all positions nor a mean of row means
    assert mean.item() == pytest.approx(nll[valid].mean().item(), rel=1e-5)
    row_means = nll.sum(1) / valid.sum(1)
    assert abs(nll[valid].mean() - nll.mean()) > 0.1 and abs(nll[valid].mean() - row_means.mean()) > 1e-3


@pytest.mark.parametrize("loss_chunk", [0, 5])
def test_cross_entropy_gradient_equals_autograd_of_the_written_out_loss(gpt, loss_chunk):
    """The weights' gradient (the fused loss makes its own in the forward pass) against autograd of
    log-softmax written out on the plain logits, in float64."""
    tokens, targets = _batch()
    model = gpt.train()
    try:
        model.zero_grad(set_to_none=True)
        model(tokens, targets, loss_chunk=loss_chunk).objective.backward()
        got = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        logits = model(tokens).logits.double()
        logp = logits - logits.logsumexp(-1, keepdim=True)
        valid = targets != -100
        (-logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0][valid].mean()).backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-7, msg=lambda m: f"{n}: {m}")
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


# ----------------------------------------------------------------------------- Falcon's auxiliary losses

def _falcon(capacity_factor: float, seed: int = 0):
    torch.manual_seed(seed)
    model = build(ModelConfig.from_preset("falcon", vocab_size=V, context=8, d_model=16, n_layers=3, n_heads=2,
                                          d_ff=32, n_experts=4, top_k=2, capacity_factor=capacity_factor))
    with torch.no_grad():                                    # non-uniform routing, different per layer
        for i, block in enumerate(model.blocks):
            block.mlp.router.weight.normal_(0.0, 1.0 + i)
            block.mlp.up.bias.normal_(0.0, 0.1)
            block.mlp.down.bias.normal_(0.0, 0.1)
    return model.train()


def _moe_by_hand(moe, x: torch.Tensor) -> dict:
    """One MoE layer written out token by token, in float64: router softmax, top-k renormalised, each
    expert filled in position-major order (t, then b; a token's k choices together) up to
    ceil(capacity_factor * N * k / E) assignments, the rest dropped; the balance loss
    E * sum_e mean_prob_e * kept_share_e / k and the z-loss mean(logsumexp^2)."""
    B, T, C = x.shape
    E, k = moe.cfg.n_experts, moe.cfg.top_k
    N = B * T
    capacity = min(N, math.ceil(moe.cfg.capacity_factor * N * k / E))
    W = moe.router.weight.double()
    kept = [0] * E
    y = torch.zeros(B, T, C, dtype=torch.float64)
    prob_sum = torch.zeros(E, dtype=torch.float64)
    z_sum, n_dropped = 0.0, 0
    for t in range(T):
        for b in range(B):
            logits = W @ x[b, t].double()                                          # (E,)
            probs = logits.softmax(-1)
            prob_sum += probs
            z_sum += torch.logsumexp(logits, 0).item() ** 2
            top = sorted(range(E), key=lambda e: -probs[e].item())[:k]
            norm = sum(probs[e].item() for e in top)
            for e in top:
                if kept[e] == capacity:
                    n_dropped += 1
                    continue
                kept[e] += 1
                h = F.gelu(x[b, t].double() @ moe.up.weight[e].double() + moe.up.bias[e].double())
                y[b, t] += probs[e].item() / norm * (h @ moe.down.weight[e].double() + moe.down.bias[e].double())
    importance = prob_sum / N
    balance = E * sum(importance[e].item() * kept[e] / N / k for e in range(E))
    return dict(y=y, balance=balance, z=z_sum / N, dropped=n_dropped / (N * k), kept=kept, capacity=capacity)


def _layer_inputs_and_outputs(model, tokens, targets):
    """The model's output and, per MoE layer, its input (the normalised residual) and output."""
    seen = []
    hooks = [block.mlp.register_forward_hook(lambda m, args, out: seen.append((args[0].detach(), out[0].detach())))
             for block in model.blocks]
    try:
        out = model(tokens, targets)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


@pytest.mark.parametrize("capacity_factor", [0.6, 4.0])       # overflow dropped; nothing dropped
def test_falcon_objective_is_ce_plus_weighted_balance_and_z_loss_of_every_layer(capacity_factor):
    """aux_loss = sum over layers of 0.01 * balance + 1e-3 * z-loss (each coefficient once), objective =
    cross-entropy + aux_loss, and each layer's output and statistics equal the token-by-token MoE."""
    cfg = ModelConfig.from_preset("falcon")
    assert (cfg.balance_coef, cfg.z_loss_coef) == (0.01, 1e-3)                     # DESIGN.md section 3
    model = _falcon(capacity_factor)
    g = torch.Generator().manual_seed(5)
    tokens, targets = torch.randint(0, V, (3, 8), generator=g), torch.randint(0, V, (3, 8), generator=g)
    out, layers = _layer_inputs_and_outputs(model, tokens, targets)
    stats = values(out.stats)
    expected_aux = 0.0
    for i, (x, y) in enumerate(layers):
        ref = _moe_by_hand(model.blocks[i].mlp, x)
        assert (ref["dropped"] > 0.1) == (capacity_factor < 1)
        torch.testing.assert_close(y.double(), ref["y"], atol=1e-5, rtol=1e-4)
        assert stats[f"moe_balance_l{i}"].item() == pytest.approx(ref["balance"], rel=1e-5)
        assert stats[f"moe_z_l{i}"].item() == pytest.approx(ref["z"], rel=1e-5)
        assert stats[f"moe_dropped_l{i}"].item() == pytest.approx(ref["dropped"], abs=1e-6)
        expected_aux += 0.01 * ref["balance"] + 1e-3 * ref["z"]
    zs = [stats[f"moe_z_l{i}"].item() for i in range(3)]
    assert min(zs) > 1.0 and max(zs) > 2 * min(zs)                                  # layers differ: each counts
    assert out.aux_loss.item() == pytest.approx(expected_aux, rel=1e-5)
    ce = _ce_by_hand(out.logits.detach(), targets).mean().item()
    assert out.loss.item() == pytest.approx(ce, rel=1e-5)
    assert out.objective.item() == pytest.approx(ce + expected_aux, rel=1e-5)


def test_falcon_balance_loss_gradient_reaches_the_router_through_the_mean_probabilities():
    """d aux / d router logits flows through importance (the mean router probability) and the z-loss only:
    the router's gradient equals autograd of the written-out aux loss with the kept counts held fixed."""
    model = _falcon(1.0)
    moe = model.blocks[0].mlp
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(7))
    _, aux, _ = moe(x)
    (got,) = torch.autograd.grad(aux, moe.router.weight)
    ref = _moe_by_hand(moe, x.detach())
    assert ref["dropped"] > 0 and len(set(ref["kept"])) > 1     # unequal kept loads: the balance term has a gradient
    W = moe.router.weight.detach().double().requires_grad_()
    logits = x.reshape(-1, 16).double() @ W.T                                      # (N, E)
    N, E, k = logits.size(0), 4, 2
    kept_share = torch.tensor(ref["kept"], dtype=torch.float64) / N
    written = 0.01 * E * (logits.softmax(-1).mean(0) * kept_share / k).sum() + 1e-3 * logits.logsumexp(-1).pow(2).mean()
    (expected,) = torch.autograd.grad(written, W)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-8)


# ----------------------------------------------------------------------------- the fused head + loss

def _head_inputs(n: int = 20, c: int = 8, v: int = 96, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(n, c, generator=g), torch.randn(v, c, generator=g) * 2.0
    targets = torch.randint(0, v, (n,), generator=g)
    targets[[1, 7, 8]] = -100
    return x, w, targets


def _reference(x, w, targets, x_grad: bool, w_grad: bool, scale: float = 1.0):
    """F.cross_entropy on the full logits (autograd), the loss times `scale`, and the asked gradients."""
    x, w = x.detach().clone().requires_grad_(x_grad), w.detach().clone().requires_grad_(w_grad)
    loss = F.cross_entropy(x @ w.T, targets, ignore_index=-100) * scale
    loss.backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("x_grad,w_grad", [(True, True), (True, False), (False, True)])
def test_fused_loss_gradients_when_only_some_inputs_need_them(x_grad, w_grad):
    """A frozen head (LoRA, frozen tied embedding) or frozen features: the gradients that are asked for
    equal autograd of F.cross_entropy on the full logits, and none is made for the frozen input."""
    from models.loss import linear_cross_entropy

    x, w, targets = _head_inputs()
    xs, ws = x.clone().requires_grad_(x_grad), w.clone().requires_grad_(w_grad)
    loss = linear_cross_entropy(xs, ws, targets, chunk_rows=6) * 0.37           # 4 chunks, the last short
    loss.backward()
    ref_loss, ref_dx, ref_dw = _reference(x, w, targets, x_grad, w_grad, scale=0.37)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for got, ref in ((xs.grad, ref_dx), (ws.grad, ref_dw)):
        if ref is None:
            assert got is None
        else:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("x_grad,w_grad", [(True, True), (True, False), (False, True)])
def test_fused_loss_keeps_no_logits_sized_tensor_for_backward(x_grad, w_grad):
    """The point of the fused loss: nothing of (rows x vocab) size is saved for the backward pass, only
    gradients of the inputs' sizes (the plain loss saves the logits: checked as the reference)."""
    from models.loss import linear_cross_entropy

    x, w, targets = _head_inputs(n=64, c=8, v=512)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    for fused in (True, False):
        saved.clear()
        xs, ws = x.clone().requires_grad_(x_grad), w.clone().requires_grad_(w_grad)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = (linear_cross_entropy(xs, ws, targets, chunk_rows=16) if fused else
                    F.cross_entropy(xs @ ws.T, targets, ignore_index=-100))
        loss.backward()
        if fused:
            assert max(saved, default=0) <= max(x.numel(), w.numel())
        else:
            assert max(saved) >= 64 * 512                                          # the reference does save them


@pytest.mark.parametrize("n_valid", [0, 1])
def test_fused_loss_with_one_or_no_counted_target(n_valid):
    """The mean is over counted targets: one counted target gives its own NLL; none gives 0 (not nan)."""
    from models.loss import linear_cross_entropy

    x, w, _ = _head_inputs()
    targets = torch.full((x.size(0),), -100)
    targets[5:5 + n_valid] = 17
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss = linear_cross_entropy(xs, ws, targets, chunk_rows=6)
    loss.backward()
    if n_valid:
        nll = torch.logsumexp(x[5].double() @ w.double().T, 0) - x[5].double() @ w[17].double()
        assert loss.item() == pytest.approx(nll.item(), rel=1e-6)
        _, ref_dx, ref_dw = _reference(x, w, targets, True, True)
        torch.testing.assert_close(xs.grad, ref_dx, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ws.grad, ref_dw, rtol=1e-5, atol=1e-7)
    else:
        assert loss.item() == 0.0 and (xs.grad == 0).all() and (ws.grad == 0).all()


def test_fused_loss_under_bf16_autocast_uses_bf16_matmuls_and_fp32_softmax():
    """Under autocast the head matmul runs at the autocast dtype (as the plain head would) and the softmax
    in fp32: the loss equals log-softmax of the bf16 product computed in float64, not of the fp32 product;
    x.grad is the bf16 matmul of the fp32 softmax gradient, times the outer scale applied in fp32."""
    from models.loss import linear_cross_entropy

    x, w, targets = _head_inputs()
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(xs, ws, targets, chunk_rows=6)
    (loss * 0.3).backward()
    logits16 = (x.bfloat16() @ w.bfloat16().T).double()
    valid = targets != -100
    nll16 = logits16.logsumexp(-1) - logits16.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    nll32 = F.cross_entropy(x.double() @ w.double().T, targets, ignore_index=-100)
    assert abs(nll16[valid].mean().item() - nll32.item()) > 1e-4                  # the precisions differ here
    assert loss.item() == pytest.approx(nll16[valid].mean().item(), rel=1e-6)
    assert xs.grad.dtype == torch.float32 and ws.grad.dtype == torch.float32
    probs = logits16.float().softmax(-1)
    probs[torch.arange(len(targets)), targets.clamp(min=0)] -= 1.0
    dlogits = (probs * valid[:, None] / valid.sum()).bfloat16()
    torch.testing.assert_close(xs.grad, (dlogits @ w.bfloat16()).float() * 0.3, rtol=1e-5, atol=1e-6)


def test_fused_loss_accumulates_a_bf16_weight_gradient_in_fp32():
    """A bf16 model: the head weight's gradient is summed over many chunks in fp32 and rounded to bf16
    once, so it is the float64 sum of the chunks' products rounded to bf16 (within one bf16 step)."""
    from models.loss import linear_cross_entropy

    x, w, targets = _head_inputs(n=96, c=8, v=32)
    xs, ws = x.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()
    linear_cross_entropy(xs, ws, targets, chunk_rows=1).backward()               # 96 chunks
    logits = (xs.detach() @ ws.detach().T).float()
    valid = targets != -100
    probs = logits.softmax(-1)
    probs[torch.arange(len(targets)), targets.clamp(min=0)] -= 1.0
    dlogits = (probs * valid[:, None] / valid.sum()).bfloat16()
    per_row = [(dlogits[i:i + 1].T @ xs.detach()[i:i + 1]).double() for i in range(len(targets))]
    expected = torch.stack(per_row).sum(0)
    assert ws.grad.dtype == torch.bfloat16
    err = (ws.grad.double() - expected).abs() / expected.abs().clamp(min=1e-3)
    assert err.max().item() <= 2 ** -8                                             # one rounding to bf16


def test_fused_loss_refuses_unknown_reductions_and_bad_shapes():
    """Only "mean" and "none" exist (a "sum" must not silently return the mean); x is (N, C), targets (N,)."""
    from models.loss import linear_cross_entropy

    x, w, targets = _head_inputs()
    with torch.no_grad():
        with pytest.raises(ValueError, match="reduction"):
            linear_cross_entropy(x, w, targets, reduction="sum")
        with pytest.raises(ValueError, match="expected x"):
            linear_cross_entropy(x, w, targets[:-1])
        with pytest.raises(ValueError, match="expected x"):
            linear_cross_entropy(x[None], w, targets)
        per_row = linear_cross_entropy(x, w, targets, reduction="none", chunk_rows=7)
    ref = F.cross_entropy(x @ w.T, targets, ignore_index=-100, reduction="none")
    torch.testing.assert_close(per_row, ref, rtol=1e-5, atol=1e-6)
