"""Token-importance dropout: schedules, selection rules, each score against a direct computation."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_run_config
from generic_runner import Trainer, train
from models import ModelConfig, build
from run_stats import values
from runtime import setup_env
from tid import (SCHEDULES, TIDConfig, TokenImportanceDropout, attention_mass_scores, drop_ratio,
                 droppable_mask, entropy_scores, gradient_norm_scores, select_drops)
from train_logs import load_losses

V = 97


def tiny_model(**overrides):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("baseline", vocab_size=V, context=16, d_model=32, n_layers=2, n_heads=4,
                                  d_ff=64, **overrides)
    return build(cfg).eval()


@torch.no_grad()
def explicit_attention_mass(model, tokens, layer):
    """Attention each key receives in block `layer` of a learned-position model, summed over heads and
    queries, from an explicit causal softmax (not the model's attention code)."""
    B, T = tokens.shape
    H = model.cfg.n_heads
    hd = model.cfg.d_model // H
    x = model.tok_emb(tokens) + model.pos_emb.weight[:T]
    for block in model.blocks[:layer % len(model.blocks)]:
        x, _, _ = block(x)
    block = model.blocks[layer]
    qkv = block.norm1(x) @ block.attn.wqkv.weight.T + block.attn.wqkv.bias
    q, k, _ = qkv.view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)     # 3 x (B, H, T, hd)
    att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
    return att.sum(dim=(1, 2))                                     # over heads and queries


@torch.no_grad()
def explicit_entropy(model, tokens, of: str = "next"):
    """score[:, t] = entropy of the prediction made at t (next), or of token t, made at t - 1 (current; 0 at t = 0)."""
    p = F.softmax(model(tokens)[0].double(), dim=-1)
    entropy = -(p * p.log()).sum(-1)
    return entropy if of == "next" else F.pad(entropy[:, :-1], (1, 0))


def explicit_gradient_norm(model, tokens, targets):
    """||d loss / d token embedding||, the embedding output made a leaf by a hook on the lookup."""
    leaf = {}

    def hook(module, args, out):
        leaf["x"] = out.detach().requires_grad_()
        return leaf["x"]
    handle = model.tok_emb.register_forward_hook(hook)
    try:
        loss = model(tokens, targets).objective
        (grad,) = torch.autograd.grad(loss, leaf["x"])
    finally:
        handle.remove()
    return grad.norm(dim=-1)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_endpoints(schedule):
    start, end = (0.3, 0.05) if schedule != "linear_warmup" else (0.05, 0.3)
    cfg = TIDConfig(method="random", schedule=schedule, p_start=start, p_end=end if schedule != "constant" else start)
    assert drop_ratio(cfg, 0, 1000) == pytest.approx(cfg.p_start)
    assert drop_ratio(cfg, 1000, 1000) == pytest.approx(cfg.p_end)
    ratios = [drop_ratio(cfg, s, 1000) for s in range(0, 1001, 50)]
    steps = [b - a for a, b in zip(ratios, ratios[1:])]
    assert all(d <= 1e-12 for d in steps) or all(d >= -1e-12 for d in steps)   # monotone


def test_bad_schedule_direction_is_refused():
    with pytest.raises(ValueError, match="linear_decay"):
        TIDConfig(schedule="linear_decay", p_start=0.1, p_end=0.3)


def test_drop_count_per_sequence_follows_the_schedule():
    cfg = TIDConfig(method="random", schedule="linear_decay", p_start=0.5, p_end=0.1, protect_first=3)
    tid = TokenImportanceDropout(cfg, max_steps=100, special_ids=(1, 0), n_layers=2)
    tokens = torch.randint(4, V, (6, 40))
    tokens[2, 10:20] = 0                                          # padding in one row
    tokens[4, 5] = 1                                              # a bos in another
    droppable = torch.ones_like(tokens, dtype=torch.bool)         # by hand: not the first 3, not pad or bos
    droppable[:, :3] = False
    droppable &= (tokens != 0) & (tokens != 1)
    assert torch.equal(droppable_mask(tokens, 3, (1, 0, None)), droppable)
    for step in (0, 37, 100):
        mask, stats = tid.mask(None, tokens, tokens, step)
        stats = values(stats)
        expected = torch.round(drop_ratio(cfg, step, 100) * droppable.sum(1).float()).long()
        assert (mask.sum(1) == expected).all()
        assert not (mask & ~droppable).any()
        assert stats["tid_drop_ratio"] == pytest.approx(float(mask.sum() / droppable.sum()))


def test_realised_ratio_with_a_single_droppable_position():
    tid = TokenImportanceDropout(TIDConfig(method="random", p_start=0.6, p_end=0.6), 10, (0,), n_layers=2)
    tokens = torch.tensor([[5, 7, 0, 0]])                        # position 0 protected, 2 and 3 padding
    mask, stats = tid.mask(None, tokens, tokens, 0)
    stats = values(stats)
    assert mask.tolist() == [[False, True, False, False]] and float(stats["tid_drop_ratio"]) == 1.0
    assert stats["tid_target_ratio"] == pytest.approx(0.6)


def test_low_and_high_pick_opposite_ends_and_protected_positions_stay():
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0, 7.0, 2.0, 8.0, 4.0]])
    droppable = torch.ones_like(scores, dtype=torch.bool)
    droppable[0, 0] = False                                       # the highest score, but protected
    high = select_drops(scores, droppable, 0.3, drop_high=True)   # round(0.3 * 7) = 2
    low = select_drops(scores, droppable, 0.3, drop_high=False)
    assert high[0].nonzero().flatten().tolist() == [4, 6]         # scores 7 and 8
    assert low[0].nonzero().flatten().tolist() == [1, 5]          # scores 1 and 2
    everything = select_drops(scores, droppable, 0.99, drop_high=True)
    assert not everything[0, 0] and everything.sum() == 7


def test_entropy_scores_equal_the_softmax_entropy():
    model = tiny_model()
    tokens = torch.randint(0, V, (3, 16))
    with torch.no_grad():
        logits = model(tokens)[0].double()                        # (B, T, V): row t predicts token t+1
    entropy = torch.zeros(3, 16, dtype=torch.float64)
    for b in range(3):
        for t in range(16):
            p = F.softmax(logits[b, t], dim=-1)
            entropy[b, t] = -(p * p.log()).sum()
    # next (the study's): the prediction made at t; current: the prediction of t, made at t-1
    assert torch.allclose(entropy_scores(model, tokens, "next").double(), entropy, atol=1e-5)
    current = entropy_scores(model, tokens, "current").double()
    assert current[:, 0].abs().max() == 0
    assert torch.allclose(current[:, 1:], entropy[:, :-1], atol=1e-5)
    assert TIDConfig().entropy_of == "next"


@pytest.mark.parametrize("method, expected", [("entropy", "high"), ("gradient_norm", "low"),
                                              ("attention_mass", "low"), ("random", "high")])
def test_drop_auto_drops_the_least_important_tokens_of_each_method(method, expected):
    cfg = TIDConfig(method=method)
    assert cfg.drop == "auto" and cfg.resolved_drop == expected
    assert TIDConfig(method=method, drop="low").resolved_drop == "low"      # explicit overrides win
    assert TIDConfig(method=method, drop="high").resolved_drop == "high"
    # the selection follows it: entropy drops its highest scores, gradient norm and attention mass their lowest
    tid = TokenImportanceDropout(TIDConfig(method=method, p_start=0.4, p_end=0.4), 10, (None,), n_layers=2)
    tid.scores = lambda *args: torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0, 3.0]])
    mask, _ = tid.mask(None, torch.zeros(1, 6, dtype=torch.long), None, 0)   # round(0.4 * 5 droppable) = 2
    assert mask[0].nonzero().flatten().tolist() == ([1, 3] if expected == "high" else [2, 4])  # 5, 4 or 1, 2


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_keep_position_false_zeroes_the_whole_input_vector(position):
    model = tiny_model(position=position) if position != "rotary" else tiny_model(
        position="rotary", norm="rmsnorm", mlp="swiglu", bias=False)
    tokens = torch.randint(0, V, (2, 16))
    drop = torch.zeros(2, 16, dtype=torch.bool)
    drop[0, 3] = drop[1, 7] = True
    with torch.no_grad():
        x, _ = model.embed(tokens, drop)                          # default: the study's whole-input zeroing
        kept, _ = model.embed(tokens, drop, keep_position=True)
        plain, _ = model.embed(tokens)
    assert x[drop].abs().max() == 0
    assert torch.equal(x[~drop], plain[~drop]) and torch.equal(kept[~drop], plain[~drop])
    # keep_position=True: what is left at a dropped position is its position embedding alone
    position_only = {"learned": lambda: model.pos_emb.weight[:16], "sinusoidal": lambda: model.pos_table[:16],
                     "rotary": lambda: torch.zeros(16, 32)}[position]()
    assert torch.allclose(kept[drop], position_only.expand(2, 16, 32)[drop])


def test_gradient_norm_scores_equal_autograd_of_the_embeddings():
    model = tiny_model(tie_embeddings=False)
    tokens = torch.randperm(V)[:48].view(3, 16)                   # every id once: row grad = position grad
    targets = torch.randint(0, V, (3, 16))
    scores = gradient_norm_scores(model, tokens, targets)
    assert model.tok_emb.weight.grad is None                      # scoring leaves no parameter gradients
    loss = model(tokens, targets).objective
    loss.backward()
    direct = model.tok_emb.weight.grad[tokens].norm(dim=-1)
    assert torch.allclose(scores, direct, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("layer", [0, 1])
def test_attention_mass_of_a_rotary_model_equals_hugging_face_attentions(layer):
    """Rotary positions enter the scores: the reference is HF Llama's own attention weights on the same weights."""
    pytest.importorskip("transformers")
    from models.convert import to_hf_model
    model = tiny_model(position="rotary", norm="rmsnorm", mlp="swiglu", bias=False)
    with torch.no_grad():                                          # sharp attention: at init it is near uniform
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ckpt = {"model": model.state_dict(), "config": {"model": model.cfg.__dict__}}
    hf = to_hf_model(ckpt, special_ids=(None, 0))
    hf.config._attn_implementation = "eager"                       # attention weights are returned
    tokens = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        expected = hf(tokens, output_attentions=True).attentions[layer].sum(dim=(1, 2))
    assert torch.allclose(attention_mass_scores(model, tokens, layer), expected, atol=1e-4)


@pytest.mark.parametrize("layer", [0, 1])
def test_attention_mass_equals_an_explicit_softmax_attention(layer):
    model = tiny_model()
    with torch.no_grad():                                          # sharp attention: at init it is near uniform
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    tokens = torch.randint(0, V, (2, 16))
    scores = attention_mass_scores(model, tokens, layer)
    expected = explicit_attention_mass(model, tokens, layer)
    assert expected.std() > 0.5                                    # far from uniform attention
    assert torch.allclose(scores, expected, atol=1e-5)
    assert torch.allclose(scores.sum(1), torch.full((2,), 4.0 * 16), atol=1e-4)  # each query spends 1 per head


@pytest.mark.parametrize("method", ["random", "entropy", "gradient_norm", "attention_mass"])
def test_every_method_trains_and_logs_its_overhead(tmp_path, method):
    cfg = tiny_run_config(tmp_path, [f"tid.method={method}", "tid.p_start=0.25", "tid.p_end=0.25",
                                     "train.max_steps=3", "train.grad_accum=2", "tid.layer=-1"])
    train(cfg)
    stats = load_losses(cfg.run_name, cfg.log_dir)["stats"]
    assert stats["tid_method"] == [method] * 3 and stats["tid_target_ratio"] == pytest.approx([0.25] * 3)
    assert all(abs(r - 0.25) < 0.02 for r in stats["tid_drop_ratio"])
    assert all(t > 0 for t in stats["tid_score_time"])
    assert all(t > 0 for t in stats["tid_step_time_without_scoring"])


def test_compiled_scoring_equals_eager_and_leaves_parameters_trainable():
    model = tiny_model(position="rotary", norm="rmsnorm", mlp="swiglu", bias=False).train()
    tokens = torch.randint(0, V, (2, 16))
    cfg = TIDConfig(method="entropy", layer=-1)
    eager = TokenImportanceDropout(cfg, 10, (None,), n_layers=2)
    compiled = TokenImportanceDropout(cfg, 10, (None,), n_layers=2, compile=True)
    for method in ("entropy", "gradient_norm", "attention_mass"):
        eager.cfg.method = compiled.cfg.method = method
        expected = eager.scores(model, tokens, tokens)
        assert torch.allclose(compiled.scores(model, tokens, tokens), expected, rtol=1e-4, atol=1e-5), method
    assert model.training and all(p.requires_grad for p in model.parameters()) and all(
        p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def tid_dir(tmp_path_factory):
    """One prepared data cache for the trainer-path tests."""
    return tmp_path_factory.mktemp("tid")


def _first_step(tmp, sets, step: int = 0):
    """Build a Trainer, run one train_step (as optimizer step `step`); returns (trainer, the model as it was
    before the step, loss, the tokens, targets and drop_mask the training forward got, the input of the
    first block in that forward)."""
    cfg = tiny_run_config(tmp, sets)
    trainer = Trainer(cfg, setup_env(cfg.device, cfg.train.precision), False)
    trainer.step = step
    seen, block_inputs = {}, []

    def record(module, args, kwargs):
        if "drop_mask" in kwargs:                                 # the training forward (scoring passes pass none)
            seen.update(tokens=args[0], targets=args[1], drop_mask=kwargs["drop_mask"])
    hooks = [trainer.model.register_forward_pre_hook(record, with_kwargs=True),
             trainer.model.blocks[0].register_forward_pre_hook(lambda m, a: block_inputs.append(a[0].detach()))]
    scoring_model = copy.deepcopy(trainer.model).eval()        # the weights the scores are taken on
    loss, _, _ = trainer.train_step()
    for h in hooks:
        h.remove()
    return trainer, scoring_model, loss.item(), seen, block_inputs[-1]


@pytest.mark.parametrize("method", ["entropy", "gradient_norm", "attention_mass"])
@pytest.mark.parametrize("drop", ["high", "low"])
def test_trainer_drops_the_intended_tokens(tid_dir, method, drop):
    """The trainer's own step: the mask it applies is the chosen end of an independently computed ranking,
    the dropped positions reach the first block as zero vectors, and the loss changes."""
    ratio = 0.25
    sets = [f"tid.method={method}", f"tid.drop={drop}", f"tid.p_start={ratio}", f"tid.p_end={ratio}", "tid.layer=1",
            "tid.entropy_of=next", "tid.keep_position=false", f"run_name=tid-{method}-{drop}"]
    trainer, model, loss, seen, x0 = _first_step(tid_dir, sets)
    tokens, targets, mask = seen["tokens"], seen["targets"], seen["drop_mask"]
    assert mask is not None and mask.shape == tokens.shape
    if method == "entropy":
        scores = explicit_entropy(model, tokens, "next")
    elif method == "gradient_norm":
        scores = explicit_gradient_norm(model, tokens, targets)
    else:
        scores = explicit_attention_mass(model, tokens, 1)
    tok = trainer.data.tokenizer
    for b in range(tokens.size(0)):
        droppable = [t for t in range(1, tokens.size(1)) if tokens[b, t] not in (tok.bos_id, tok.pad_id)]
        ranked = sorted(droppable, key=lambda t: scores[b, t].item(), reverse=drop == "high")
        expected = sorted(ranked[:round(ratio * len(droppable))])
        assert mask[b].nonzero().flatten().tolist() == expected, (b, method, drop)
    # keep_position=false: the first block sees a zero input vector where a token was dropped
    pos = model.pos_emb.weight[:tokens.size(1)].detach()         # the weights before the step
    full = model.tok_emb.weight.detach()[tokens] + pos
    assert x0[mask].abs().max() == 0
    torch.testing.assert_close(x0[~mask], full[~mask])
    _, _, plain_loss, _, _ = _first_step(tid_dir, [f"run_name=plain-{method}-{drop}"])
    assert abs(loss - plain_loss) > 1e-4                          # same batch and weights: only the mask differs
