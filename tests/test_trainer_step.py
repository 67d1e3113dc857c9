"""The real trainer step against references computed another way: gradient accumulation equals one big
batch, clipping scales what the optimizer applies, the LR follows its closed form, weight decay groups."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import optimizers
import train_setup
from conftest import tiny_run_config
from generic_runner import Trainer, train
from models import ModelConfig, build
from models.falcon import _BatchedLinear
from models.lora import LoRAConfig, LoRALinear, apply_lora
from run_stats import values
from runtime import setup_env
from train_logs import load_losses


def _trainer(tiny_root, sets) -> Trainer:
    cfg = tiny_run_config(tiny_root, ["train.precision=fp32", *sets])
    return Trainer(cfg, setup_env(cfg.device, cfg.train.precision), False)


def _record_applied_gradients(trainer) -> list[dict]:
    """Per optimizer step, the gradients the optimizer sees when it steps (after clipping), by name."""
    applied = []
    names = {id(p): n for n, p in trainer.model.named_parameters()}

    def hook(optimizer, args, kwargs):
        applied.append({names[id(p)]: p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]
                        if p.grad is not None})
    trainer.optimizer.register_step_pre_hook(hook)
    return applied


def _record_batches(trainer) -> list[tuple]:
    """The (tokens, targets) of every training forward, in order."""
    batches = []
    trainer.model.register_forward_pre_hook(lambda m, args: batches.append((args[0].clone(), args[1].clone())))
    return batches


def _reference_gradients(model, batches) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over all rows of `batches` (one forward, hand-written log-softmax in float64)
    and its gradients by name: what one optimizer step over that whole batch should apply."""
    model = copy.deepcopy(model).double()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    logits = model(x).logits                                                         # (B, T, V)
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)
    valid = y != -100
    loss = -logp.gather(-1, y.clamp(min=0)[..., None])[..., 0][valid].mean()
    loss.backward()
    return loss.detach(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def _total_norm(grads: dict) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))


def _assert_close_grads(a: dict, b: dict, rtol=1e-4, atol=1e-7):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("packing", ["pack", "pad"])
def test_grad_accum_k_equals_one_batch_of_k_times_b(tiny_root, packing):
    """grad_accum=3 of 2 blocks and grad_accum=1 of 6 blocks see the same blocks in the same order (the
    sampler consumes one permutation), so each step returns the same loss and applies the same gradient,
    the mean over all 6 blocks' targets (a sum over micro-batches would be 3x: Adam's first update hides
    that, these do not; with padded rows a mean of micro-batch means would differ too)."""
    runs = {}
    for accum, batch in ((3, 2), (1, 6)):
        trainer = _trainer(tiny_root, [f"train.grad_accum={accum}", f"train.batch_size={batch}", "train.grad_clip=0",
                                       f"data.packing={packing}", f"run_name=accum{accum}-{packing}"])
        start = copy.deepcopy(trainer.model)                                        # before the hooks
        applied, batches = _record_applied_gradients(trainer), _record_batches(trainer)
        losses = [trainer.train_step()[0].item() for _ in range(3)]
        runs[accum] = dict(trainer=trainer, applied=applied, batches=batches, start=start, losses=losses)
    small, big = runs[3], runs[1]
    assert len(small["batches"]) == 9 and len(big["batches"]) == 3
    assert torch.equal(torch.cat([b[0] for b in small["batches"][:3]]), big["batches"][0][0])   # same blocks
    counted = [(y != -100).sum().item() for _, y in small["batches"]]
    assert (len(set(counted)) > 1) == (packing == "pad")                 # padded micro-batches count unequally
    # the first step against a hand-written mean cross-entropy over the 6 blocks
    ref_loss, ref_grads = _reference_gradients(small["start"], small["batches"][:3])
    assert small["losses"][0] == pytest.approx(ref_loss.item(), rel=1e-5)
    _assert_close_grads(small["applied"][0], ref_grads)
    # three steps of both runs: losses, applied gradients, Adam's first moment and the weights stay equal
    assert small["losses"] == pytest.approx(big["losses"], rel=1e-5)
    for a, b in zip(small["applied"], big["applied"]):
        _assert_close_grads(a, b)
    models = small["trainer"].model, big["trainer"].model
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(small["trainer"].optimizer.state[p][key], big["trainer"].optimizer.state[q][key],
                                       rtol=1e-3, atol=1e-9, msg=lambda m: f"{name} {key}: {m}")


def test_grad_accum_of_a_mixture_of_experts_averages_its_aux_loss(tiny_root):
    """Falcon over 2 micro-batches: the step's loss and applied gradient are those of the mean over
    micro-batches of (cross-entropy + balance and z-loss), each micro-batch routed on its own (capacity
    is per forward), from a copy of the model run micro-batch by micro-batch."""
    trainer = _trainer(tiny_root, ["model.preset=falcon", "train.grad_accum=2", "train.batch_size=2",
                                   "train.grad_clip=0", "run_name=accum-falcon"])
    start = copy.deepcopy(trainer.model)
    applied, batches = _record_applied_gradients(trainer), _record_batches(trainer)
    loss = trainer.train_step()[0].item()
    outs = [start(x, y) for x, y in batches]
    assert len(outs) == 2 and all(out.aux_loss.item() > 0.01 for out in outs)
    expected = sum(out.loss + out.aux_loss for out in outs) / 2
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    expected.backward()
    _assert_close_grads(applied[0], {n: p.grad for n, p in start.named_parameters()}, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("clipped", [True, False])
def test_the_norm_bound_scales_the_applied_gradient_down_to_it(tiny_root, clipped):
    """Over 2 micro-batches: the returned grad_norm is the pre-clip global L2 norm (hand-computed); above the
    bound the optimizer applies the unclipped gradient times bound / norm (so its norm is the bound),
    below it the gradient untouched. Read at the optimizer's step, where AdamW cannot hide the scale."""
    sets = ["train.grad_accum=2", "train.batch_size=3"]
    probe = _trainer(tiny_root, [*sets, "run_name=clip-probe", "train.grad_clip=0"])
    start = copy.deepcopy(probe.model)                                              # before the hook
    probe_batches = _record_batches(probe)
    probe.train_step()
    _, unclipped = _reference_gradients(start, probe_batches)
    norm = _total_norm(unclipped)
    bound = norm / 3 if clipped else norm * 3
    trainer = _trainer(tiny_root, [*sets, f"run_name=clip-{clipped}", f"train.grad_clip={bound}"])
    applied, batches = _record_applied_gradients(trainer), _record_batches(trainer)
    _, grad_norm, _ = trainer.train_step()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, probe_batches))     # the same blocks, same weights
    assert grad_norm.item() == pytest.approx(norm, rel=1e-5)
    scale = bound / norm if clipped else 1.0
    _assert_close_grads(applied[0], {n: g * scale for n, g in unclipped.items()})
    assert _total_norm(applied[0]) <= bound * (1 + 1e-5)
    if clipped:
        assert _total_norm(applied[0]) == pytest.approx(bound, rel=1e-5)
    # AdamW's first moment after one step is (1 - beta1) * the applied gradient
    beta1 = trainer.cfg.train.beta1
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(trainer.optimizer.state[p]["exp_avg"], (1 - beta1) * applied[0][name])


def _closed_form_lr(step, lr, min_lr, warmup, max_steps):
    """Linear warmup from lr / warmup at step 0 to lr at step warmup - 1, then a half cosine from lr at step
    warmup to min_lr at max_steps (written from the schedule's definition)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / (max_steps - warmup)
    return lr - (lr - min_lr) * (1 - math.cos(math.pi * t)) / 2


def test_lr_of_every_step_is_the_schedule_in_the_optimizer_and_the_logs(tiny_root, monkeypatch):
    groups_lr = []
    real = train_setup.make_optimizer

    def make_optimizer(*args):
        optimizer = real(*args)
        optimizer.register_step_pre_hook(lambda opt, a, k: groups_lr.append([g["lr"] for g in opt.param_groups]))
        return optimizer
    monkeypatch.setattr(train_setup, "make_optimizer", make_optimizer)
    lr, min_lr, warmup, steps = 2e-3, 3e-4, 3, 9
    cfg = tiny_run_config(tiny_root, [f"train.lr={lr}", f"train.min_lr={min_lr}", f"train.warmup_steps={warmup}",
                                 f"train.max_steps={steps}", "train.eval_every=100", "train.save_every=100",
                                 "train.log_every=4", "train.checkpoints=false", "run_name=lr-steps"])
    train(cfg)
    expected = [_closed_form_lr(s, lr, min_lr, warmup, steps) for s in range(steps)]
    assert expected[0] == pytest.approx(lr / 3) and expected[warmup] == pytest.approx(lr)
    assert len(groups_lr) == steps
    for s, group_lrs in enumerate(groups_lr):
        assert len(group_lrs) == 2 and group_lrs == pytest.approx([expected[s]] * 2, rel=1e-12), s
    assert load_losses(cfg.run_name, cfg.log_dir)["lr"] == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- weight decay groups

TINY = dict(vocab_size=61, context=16, d_model=32, n_layers=2, n_heads=2, d_ff=64)


def _family_models():
    """One tiny model per family shape: baseline, gpt2_125m / llama (RMSNorm, SwiGLU, no biases; llama
    untied), falcon (2-D expert biases), both condor attentions, baseline with LoRA, a frozen embedding."""
    shapes = {"baseline": ("baseline", {}), "gpt2_125m": ("gpt2_125m", {}), "llama": ("llama", {}),
              "falcon": ("falcon", {}), "condor_head": ("condor", {"attention": "head_linear_silu"}),
              "condor_self_score": ("condor", {"attention": "self_score"}),
              "lora": ("baseline", {}), "frozen_embedding": ("llama", {})}
    out = {}
    for name, (preset, extra) in shapes.items():
        torch.manual_seed(0)
        model = build(ModelConfig.from_preset(preset, **TINY, **extra))
        if name == "lora":
            apply_lora(model, LoRAConfig(rank=2, targets="wqkv,wo,up"))
        if name == "frozen_embedding":
            model.tok_emb.weight.requires_grad_(False)
        out[name] = model
    return out


def _expected_decay(model) -> tuple[set, set]:
    """Names of the tensors that decay and that do not, by module kind (not by tensor shape): weights of
    linear layers, embeddings, batched experts and LoRA factors decay; norm weights and every bias do not;
    frozen tensors are in no group; tied ones once."""
    decay, no_decay, seen = set(), set(), set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or pname == "bias":
                no_decay.add(id(p))
            else:
                assert isinstance(module, (nn.Linear, nn.Embedding, _BatchedLinear, LoRALinear)), (module, pname)
                decay.add(id(p))
    return _names(model, decay), _names(model, no_decay)


def _names(model, ids) -> set[str]:
    """The parameter names (a tied tensor under its first name) of the tensors whose ids are `ids`."""
    ids = set(ids)
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("name", ["baseline", "gpt2_125m", "llama", "falcon", "condor_head", "condor_self_score",
                                  "lora", "frozen_embedding"])
def test_weight_decay_groups_hold_exactly_the_matrices(name):
    model = _family_models()[name]
    decay, no_decay = _expected_decay(model)
    groups = optimizers.param_groups(model, weight_decay=0.07)
    assert [g["weight_decay"] for g in groups] == [0.07, 0.0]
    got = [[id(p) for p in g["params"]] for g in groups]
    assert len(got[0]) == len(set(got[0])) and len(got[1]) == len(set(got[1]))    # each tensor once
    assert _names(model, got[0]) == decay and _names(model, got[1]) == no_decay
    assert decay and (no_decay or name == "lora")


def test_the_trainer_optimizer_uses_the_decay_groups(tiny_root):
    trainer = _trainer(tiny_root, ["train.weight_decay=0.03", "model.preset=falcon", "run_name=wd-falcon"])
    decay, no_decay = _expected_decay(trainer.model)
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.03, 0.0]
    assert _names(trainer.model, map(id, groups[0]["params"])) == decay
    assert _names(trainer.model, map(id, groups[1]["params"])) == no_decay


# ----------------------------------------------------------------------------- the step's other contracts

def test_target_shares_are_each_micro_batchs_counted_targets_over_all_ranks(monkeypatch):
    """share_i = counted targets of micro-batch i * world / the step's counted targets summed over ranks
    (an all-reduce sum), the total floored at 1. Reference: hand counts; the other rank is faked by an
    all_reduce that adds a second rank with 5 counted targets."""
    import generic_runner
    from runtime import Env
    y = [torch.tensor([[1, 2, -100, 3]]), torch.tensor([[-100, 4, -100, -100]])]      # 3 and 1 targets
    one = SimpleNamespace(env=Env(0, 0, 1, torch.device("cpu"), torch.float32))
    assert Trainer._target_shares(one, y).tolist() == [0.75, 0.25]
    single = [torch.tensor([[-100, 7]])]                                             # one target in the step
    assert Trainer._target_shares(one, single).tolist() == [1.0]
    assert Trainer._target_shares(one, [torch.full((1, 3), -100)]).tolist() == [0.0]  # all padding: no 0/0

    reduced = []

    def all_reduce(tensor, op=None):
        reduced.append(tensor.item())
        tensor += 5.0
    monkeypatch.setattr(generic_runner.dist, "all_reduce", all_reduce)
    two = SimpleNamespace(env=Env(0, 0, 2, torch.device("cpu"), torch.float32))
    assert Trainer._target_shares(two, y).tolist() == pytest.approx([3 * 2 / 9, 1 * 2 / 9])
    assert reduced == [4.0]


def test_a_step_frees_the_gradients_and_reports_a_zero_norm_without_clipping(tiny_root):
    """After optimizer.step the gradients are set to None (their memory is free until the next backward),
    and with train.grad_clip=0 the returned grad norm is a 0-d zero tensor (nothing measured)."""
    trainer = _trainer(tiny_root, ["train.grad_clip=0", "run_name=free-grads"])
    loss, grad_norm, _ = trainer.train_step()
    assert all(p.grad is None for p in trainer.model.parameters())
    assert isinstance(grad_norm, torch.Tensor) and grad_norm.shape == () and grad_norm.item() == 0.0
    assert math.isfinite(loss.item())


def test_the_step_passes_loss_chunk_and_keep_position_to_the_model(tiny_root):
    """train.loss_chunk and tid.keep_position reach every training forward (a chunked loss bounds the
    logits' memory; keep_position decides the positions of kept tokens)."""
    trainer = _trainer(tiny_root, ["train.loss_chunk=16", "tid.method=random", "tid.p_start=0.3",
                                   "tid.keep_position=true", "train.grad_accum=2", "run_name=step-kwargs"])
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    trainer.train_step()
    training = [k for k in seen if k.get("drop_mask") is not None]   # TID's scoring forwards pass no mask
    assert len(training) == 2
    assert all(k["loss_chunk"] == 16 and k["keep_position"] is True for k in training)


def test_a_mixture_of_experts_step_logs_its_cross_entropy_apart(tiny_root):
    """In training a family with an auxiliary loss logs ce_loss beside aux_loss (their sum is the
    step's loss, one micro-batch here)."""
    trainer = _trainer(tiny_root, ["model.preset=falcon", "train.grad_clip=0", "run_name=ce-falcon"])
    loss, _, stats = trainer.train_step()
    got = values(stats)
    assert {"ce_loss", "aux_loss"} <= set(got)
    assert float(got["ce_loss"]) + float(got["aux_loss"]) == pytest.approx(loss.item(), rel=1e-5)
