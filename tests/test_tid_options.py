"""Every tid.* option changes what the trainer does, as its definition says: each is set to a value other
than its default on the real training step and the mask (or the first block's input) is compared with one
computed independently; schedules against their closed forms; selection against brute force."""

import dataclasses
import itertools
import math

import pytest
import torch

import train_setup
from conftest import tiny_run_config
from generic_runner import Trainer
from run_stats import values
from runtime import setup_env
from test_tid import _first_step, explicit_attention_mass, explicit_entropy, explicit_gradient_norm
from tid import SCHEDULES, TIDConfig, drop_ratio, select_drops

MAX_STEPS = 10
# each option -> the tests below that set it to a non-default value on the trainer's step
COVERED = {"method": "test_method_none_and_random", "drop": "test_drop_auto_follows_the_method",
           "entropy_of": "test_entropy_of_current", "keep_position": "test_keep_position_true",
           "schedule": "test_schedule_and_endpoints", "p_start": "test_schedule_and_endpoints",
           "p_end": "test_schedule_and_endpoints", "layer": "test_layer", "protect_first": "test_protect_first"}


def test_every_tid_option_has_a_trainer_test():
    assert {f.name for f in dataclasses.fields(TIDConfig)} == set(COVERED)
    assert all(name in globals() for name in COVERED.values())


def _run(tiny_root, sets, step=0):
    name = "-".join(sets).replace("=", "_")
    return _first_step(tiny_root, [f"train.max_steps={MAX_STEPS}", *sets, f"run_name={name}"], step)


def _expected_mask(tokens, scores, ratio, drop_high, protect_first, specials):
    """Per row: the round(ratio * n) droppable positions (not among the first protect_first, not a special
    token) with the highest (drop_high) or lowest scores."""
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for b in range(tokens.size(0)):
        droppable = [t for t in range(protect_first, tokens.size(1)) if tokens[b, t].item() not in specials]
        ranked = sorted(droppable, key=lambda t: scores[b, t].item(), reverse=drop_high)
        mask[b, ranked[:round(ratio * len(droppable))]] = True
    return mask


def _specials(trainer):
    tok = trainer.data.tokenizer
    return {tok.bos_id, tok.pad_id}


def _droppable_counts(trainer, tokens) -> list[int]:
    """Per row, the positions after the first that hold no bos or pad token."""
    return [sum(t not in _specials(trainer) for t in row[1:].tolist()) for row in tokens]


def test_method_none_and_random(tiny_root):
    _, _, loss_none, seen, _ = _run(tiny_root, ["tid.method=none", "tid.p_start=0.3", "tid.p_end=0.3"])
    assert seen["drop_mask"] is None
    trainer, _, loss_random, seen, x0 = _run(tiny_root, ["tid.method=random", "tid.p_start=0.3", "tid.p_end=0.3"])
    mask, tokens = seen["drop_mask"], seen["tokens"]
    assert mask.sum(1).tolist() == [round(0.3 * n) for n in _droppable_counts(trainer, tokens)]
    assert x0[mask].abs().max() == 0 and abs(loss_random - loss_none) > 1e-4


@pytest.mark.parametrize("method, end", [("entropy", "high"), ("gradient_norm", "low")])
def test_drop_auto_follows_the_method(tiny_root, method, end):
    trainer, model, _, seen, _ = _run(tiny_root, [f"tid.method={method}", "tid.drop=auto", "tid.p_start=0.3",
                                             "tid.p_end=0.3"])
    tokens = seen["tokens"]
    scores = (explicit_entropy(model, tokens) if method == "entropy"
              else explicit_gradient_norm(model, tokens, seen["targets"]))
    expected = _expected_mask(tokens, scores, 0.3, end == "high", 1, _specials(trainer))
    opposite = _expected_mask(tokens, scores, 0.3, end != "high", 1, _specials(trainer))
    assert torch.equal(seen["drop_mask"], expected) and not torch.equal(expected, opposite)


def test_entropy_of_current(tiny_root):
    trainer, model, _, seen, _ = _run(tiny_root, ["tid.method=entropy", "tid.entropy_of=current", "tid.p_start=0.3",
                                             "tid.p_end=0.3"])
    tokens = seen["tokens"]
    expected = _expected_mask(tokens, explicit_entropy(model, tokens, "current"), 0.3, True, 1, _specials(trainer))
    of_next = _expected_mask(tokens, explicit_entropy(model, tokens, "next"), 0.3, True, 1, _specials(trainer))
    assert torch.equal(seen["drop_mask"], expected) and not torch.equal(expected, of_next)


def test_keep_position_true(tiny_root):
    """Learned positions: a dropped position's first-block input is its position embedding alone."""
    _, model, _, seen, x0 = _run(tiny_root, ["tid.method=random", "tid.keep_position=true", "tid.p_start=0.3",
                                        "tid.p_end=0.3"])
    tokens, mask = seen["tokens"], seen["drop_mask"]
    pos = model.pos_emb.weight.detach()[: tokens.size(1)].expand(tokens.size(0), -1, -1)
    full = model.tok_emb.weight.detach()[tokens] + pos
    assert mask.any() and pos[mask].abs().min() > 0
    torch.testing.assert_close(x0[mask], pos[mask])
    torch.testing.assert_close(x0[~mask], full[~mask])


def _closed_form_ratio(schedule, p_start, p_end, x):
    """The drop ratio at training progress x in [0, 1] (clamped), from each schedule's definition."""
    x = min(max(x, 0.0), 1.0)
    if schedule == "constant":
        return p_start
    if schedule in ("linear_decay", "linear_warmup"):
        return (1 - x) * p_start + x * p_end
    if schedule == "cosine":
        return p_end + (p_start - p_end) * (1 + math.cos(math.pi * x)) / 2
    # sigmoid(10 (x - 1/2)) rescaled to run exactly from 0 at x = 0 to 1 at x = 1, via tanh(z / 2) = 2 sigmoid(z) - 1
    w = (math.tanh(5 * (x - 0.5)) + math.tanh(2.5)) / (2 * math.tanh(2.5))
    return p_start + w * (p_end - p_start)


SCHEDULE_CASES = [("constant", 0.35, 0.35, 6), ("linear_decay", 0.55, 0.2, 5), ("linear_warmup", 0.15, 0.6, 7),
                  ("cosine", 0.5, 0.2, 4), ("sigmoid", 0.6, 0.25, 6)]


@pytest.mark.parametrize("schedule, p_start, p_end, step", SCHEDULE_CASES)
def test_schedule_and_endpoints(tiny_root, schedule, p_start, p_end, step):
    """At optimizer step `step` of 10, every row drops round(ratio * droppable) tokens, ratio the schedule's
    closed form: ignoring the schedule, p_start, p_end or the step would give another count."""
    trainer, _, _, seen, _ = _run(tiny_root, ["tid.method=random", f"tid.schedule={schedule}", f"tid.p_start={p_start}",
                                         f"tid.p_end={p_end}"], step)
    tokens, mask = seen["tokens"], seen["drop_mask"]
    ratio = _closed_form_ratio(schedule, p_start, p_end, step / MAX_STEPS)
    n = _droppable_counts(trainer, tokens)
    assert mask.sum(1).tolist() == [round(ratio * k) for k in n]
    wrong = {0.1, p_start if schedule != "constant" else 0.1, p_end if schedule != "constant" else 0.1,
             _closed_form_ratio(schedule, p_start, p_end, 0.0), _closed_form_ratio("constant", p_start, p_end, 0)}
    wrong = {r for r in wrong if abs(r - ratio) > 1e-9}
    assert all(round(r * n[0]) != round(ratio * n[0]) for r in wrong)            # each mistake shows
    assert trainer.tid.mask(trainer.model, tokens, seen["targets"], step)[1]["tid_target_ratio"].value \
        == pytest.approx(ratio)


def test_layer(tiny_root, monkeypatch):
    """attention_mass reads tid.layer: on 3 layers, layer 1 is neither the default 0 nor the last (weights
    perturbed: at init every layer attends nearly uniformly, so all three would rank alike)."""
    build_model = train_setup.build_model

    def perturbed(*args, **kwargs):
        model = build_model(*args, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        return model
    monkeypatch.setattr(train_setup, "build_model", perturbed)
    trainer, model, _, seen, _ = _run(tiny_root, ["model.n_layers=3", "tid.method=attention_mass", "tid.layer=1",
                                             "tid.p_start=0.3", "tid.p_end=0.3"])
    tokens = seen["tokens"]
    masks = [_expected_mask(tokens, explicit_attention_mass(model, tokens, layer), 0.3, False, 1, _specials(trainer))
             for layer in range(3)]
    assert torch.equal(seen["drop_mask"], masks[1])
    assert not torch.equal(masks[1], masks[0]) and not torch.equal(masks[1], masks[2])


def test_protect_first(tiny_root):
    trainer, model, _, seen, _ = _run(tiny_root, ["tid.method=entropy", "tid.protect_first=6", "tid.p_start=0.4",
                                             "tid.p_end=0.4"])
    tokens, mask = seen["tokens"], seen["drop_mask"]
    scores = explicit_entropy(model, tokens)
    assert not mask[:, :6].any()
    assert torch.equal(mask, _expected_mask(tokens, scores, 0.4, True, 6, _specials(trainer)))
    assert not torch.equal(mask, _expected_mask(tokens, scores, 0.4, True, 1, _specials(trainer)))


def test_bos_and_pad_are_never_dropped_by_the_trainers_tid(tiny_root):
    """The trainer hands its tokenizer's bos and pad ids to TID: at ratio 0.9 every other position goes."""
    cfg = tiny_run_config(tiny_root, ["tid.method=random", "tid.p_start=0.9", "tid.p_end=0.9", "run_name=specials"])
    trainer = Trainer(cfg, setup_env(cfg.device, cfg.train.precision), False)
    tok = trainer.data.tokenizer
    assert tok.bos_id is not None and tok.pad_id is not None and tok.bos_id != tok.pad_id
    tokens = torch.randint(0, cfg.model.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    tokens[tokens == tok.bos_id] = tokens[tokens == tok.pad_id] = 7
    tokens[0, 5], tokens[1, 9:] = tok.bos_id, tok.pad_id                           # a document start, padding
    tokens[2, 3] = tok.bos_id
    mask, stats = trainer.tid.mask(trainer.model, tokens, tokens, 0)
    special = (tokens == tok.bos_id) | (tokens == tok.pad_id)
    assert not mask[special].any() and not mask[:, 0].any()
    droppable = (~special[:, 1:]).sum(1)
    assert mask.sum(1).tolist() == [round(0.9 * n) for n in droppable.tolist()]
    assert values(stats)["tid_drop_ratio"].item() == pytest.approx(mask.sum().item() / droppable.sum().item())


# ----------------------------------------------------------------------------- schedules and selection alone

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_equals_its_closed_form_at_every_step(schedule):
    p_start, p_end = {"constant": (0.3, 0.3), "linear_warmup": (0.05, 0.45)}.get(schedule, (0.45, 0.05))
    cfg = TIDConfig(method="random", schedule=schedule, p_start=p_start, p_end=p_end)
    for step in (0, 1, 13, 50, 77, 99, 100, 130):                                 # past max_steps: clamped
        expected = _closed_form_ratio(schedule, p_start, p_end, step / 100)
        assert drop_ratio(cfg, step, 100) == pytest.approx(expected, rel=1e-12, abs=1e-15), step


def test_select_drops_equals_brute_force_over_subsets():
    """Per row, the chosen set is the subset of round(ratio * droppable) droppable positions with the largest
    (high) or smallest (low) total score, found by enumerating every subset."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 7, generator=g)                                        # distinct: one best subset
    droppable = torch.rand(4, 7, generator=g) > 0.25
    droppable[:, 0] = False
    droppable[3] = False                                                           # a row with nothing droppable
    for ratio, drop_high in itertools.product((0.2, 0.5, 0.8), (True, False)):
        got = select_drops(scores, droppable, ratio, drop_high)
        for b in range(4):
            positions = droppable[b].nonzero().flatten().tolist()
            n = round(ratio * len(positions))
            total = lambda subset: sum(scores[b, t].item() for t in subset)      # noqa: E731
            best = (max if drop_high else min)(itertools.combinations(positions, n), key=total)
            assert got[b].nonzero().flatten().tolist() == sorted(best), (ratio, drop_high, b)


def test_entropy_scores_default_to_the_next_token_prediction():
    """entropy_scores(model, tokens) without `of` scores position t by the entropy of the prediction made
    at t (the study's definition), written out per position in float64 from the softmax."""
    from models import ModelConfig, build
    from tid import entropy_scores

    torch.manual_seed(0)
    model = build(ModelConfig.from_preset("baseline", vocab_size=29, context=8, d_model=16, n_layers=1, n_heads=2,
                                          d_ff=32)).eval()
    with torch.no_grad():
        model.tok_emb.weight.mul_(8.0)                                           # entropies differ by position
    tokens = torch.randint(0, 29, (2, 8), generator=torch.Generator().manual_seed(1))
    got = entropy_scores(model, tokens)
    with torch.no_grad():
        logits = model(tokens).logits.double()
    expected = torch.tensor([[-sum(p * math.log(p) for p in logits[b, t].softmax(-1).tolist() if p > 0)
                              for t in range(8)] for b in range(2)], dtype=torch.float64)
    assert (expected[:, 1:] - expected[:, :-1]).abs().max() > 0.05                # a shift by one would show
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_logged_extras_subtract_the_scoring_time_from_the_step_time():
    """The logs' TID overhead column: a 1.5 s step that spent 0.25 s scoring took 1.25 s without it; the
    method and the resolved drop direction are named."""
    from tid import TokenImportanceDropout

    tid = TokenImportanceDropout(TIDConfig(method="entropy", drop="high"), max_steps=10, special_ids=(), n_layers=1)
    extras = tid.logged_extras(1.5, {"tid_score_time": 0.25})
    assert extras == {"tid_step_time_without_scoring": 1.25, "tid_method": "entropy", "tid_drop": "high"}
