"""Contracts of tid.py that the wider TID tests leave open: the schedule at its edges, the config's exact
bounds, the attention layer's bounds, what compile=True wraps, and the run log's description."""

import pytest
import torch

import tid
from tid import SCHEDULES, TIDConfig, TokenImportanceDropout, drop_ratio


# ----------------------------------------------------------------------------- drop_ratio

@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s != "constant"])
def test_a_one_step_run_ends_its_schedule_at_step_one(schedule):
    """max_steps=1: step 0 is p_start and step 1 is already the end, p_end (not a point halfway)."""
    p_start, p_end = (0.1, 0.5) if schedule == "linear_warmup" else (0.5, 0.1)
    cfg = TIDConfig(method="random", schedule=schedule, p_start=p_start, p_end=p_end)
    assert drop_ratio(cfg, 0, 1) == pytest.approx(p_start)
    assert drop_ratio(cfg, 1, 1) == pytest.approx(p_end)
    assert drop_ratio(cfg, 3, 1) == pytest.approx(p_end)                          # past the end: clamped


def test_the_constant_schedule_stays_at_p_start():
    """constant: p_start at every step, before, during and past max_steps; p_end plays no part."""
    cfg = TIDConfig(method="random", schedule="constant", p_start=0.3, p_end=0.1)
    assert [drop_ratio(cfg, step, 10) for step in (0, 1, 5, 9, 10, 25)] == [0.3] * 6


# ----------------------------------------------------------------------------- TIDConfig bounds

@pytest.mark.parametrize("key", ["p_start", "p_end"])
def test_drop_ratios_must_lie_in_zero_to_one_half_open(key):
    """p_start and p_end are ratios in [0, 1): 0 and just under 1 are accepted, 1, 1.5 and below 0 refused."""
    for value in (0.0, 0.999):
        assert getattr(TIDConfig(method="random", **{key: value}), key) == value
    for value in (1.0, 1.5, -0.01):
        with pytest.raises(ValueError, match=f"tid.{key} must be in"):
            TIDConfig(method="random", **{key: value})


@pytest.mark.parametrize("schedule", ["linear_decay", "linear_warmup"])
def test_a_linear_schedule_may_stay_flat(schedule):
    """linear_decay and linear_warmup both accept p_end == p_start (neither direction is violated)."""
    cfg = TIDConfig(method="random", schedule=schedule, p_start=0.2, p_end=0.2)
    assert drop_ratio(cfg, 7, 10) == pytest.approx(0.2)


def test_linear_warmup_refuses_a_falling_ratio():
    """linear_warmup with p_end < p_start is refused, naming the schedule; p_end > p_start is accepted."""
    with pytest.raises(ValueError, match="linear_warmup needs p_end >= p_start"):
        TIDConfig(method="random", schedule="linear_warmup", p_start=0.3, p_end=0.1)
    assert TIDConfig(method="random", schedule="linear_warmup", p_start=0.1, p_end=0.3).p_end == 0.3


# ----------------------------------------------------------------------------- TokenImportanceDropout

N_LAYERS = 3


@pytest.mark.parametrize("layer", [-N_LAYERS, -1, 0, N_LAYERS - 1])
def test_attention_mass_accepts_every_layer_index_of_the_model(layer):
    """On 3 layers, tid.layer may be -3 .. 2 (Python indexing of the blocks)."""
    tid_ = TokenImportanceDropout(TIDConfig(method="attention_mass", layer=layer), 10, (None,), n_layers=N_LAYERS)
    assert tid_.cfg.layer == layer


@pytest.mark.parametrize("layer", [N_LAYERS, -N_LAYERS - 1, 10])
def test_attention_mass_refuses_a_layer_outside_the_model(layer):
    """On 3 layers, 3 and -4 index no block: refused when the dropout is built, naming the value."""
    with pytest.raises(ValueError, match=f"tid.layer={layer} is outside the model's {N_LAYERS} layers"):
        TokenImportanceDropout(TIDConfig(method="attention_mass", layer=layer), 10, (None,), n_layers=N_LAYERS)


@pytest.mark.parametrize("method", ["none", "random", "entropy", "gradient_norm"])
def test_other_methods_do_not_read_the_layer(method):
    """Only attention_mass reads tid.layer: any value is accepted with the other methods."""
    for layer in (N_LAYERS, -N_LAYERS - 1):
        TokenImportanceDropout(TIDConfig(method=method, layer=layer), 10, (None,), n_layers=N_LAYERS)


@pytest.fixture
def compile_calls(monkeypatch):
    """torch.compile replaced (as tid sees it) by a recording stand-in: each compiled callable logs its calls
    and returns a marker tensor of its own, so a caller of the compiled function is recognisable."""
    compiled, calls = [], []

    def fake_compile(fn):
        compiled.append(fn)
        marker = torch.full((1, 4), float(len(compiled)))

        def run(*args):
            calls.append((fn, args))
            return marker
        run.marker = marker
        return run
    monkeypatch.setattr(tid.torch, "compile", fake_compile)
    return compiled, calls


def test_compile_is_off_by_default(compile_calls):
    """Without compile=True nothing is compiled: the score functions are tid's own."""
    compiled, _ = compile_calls
    tid_ = TokenImportanceDropout(TIDConfig(method="entropy"), 10, (None,), n_layers=2)
    assert compiled == []
    assert tid_.score_fns == {"entropy": tid.entropy_scores, "gradient_norm": tid.gradient_norm_scores,
                              "attention_mass": tid.attention_mass_scores}


def test_compile_wraps_each_score_function_and_scoring_calls_the_compiled_one(compile_calls):
    """compile=True compiles entropy, gradient-norm and attention-mass scoring, one graph each, and
    `scores` calls those compiled callables with the method's own arguments."""
    compiled, calls = compile_calls
    cfg = TIDConfig(method="entropy", entropy_of="current", layer=-1)
    tid_ = TokenImportanceDropout(cfg, 10, (None,), n_layers=2, compile=True)
    originals = {"entropy": tid.entropy_scores, "gradient_norm": tid.gradient_norm_scores,
                 "attention_mass": tid.attention_mass_scores}
    assert compiled == list(originals.values())
    model = torch.nn.Linear(2, 2)                                   # only its mode and parameters are touched
    tokens, targets = torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)
    extra = {"entropy": "current", "gradient_norm": targets, "attention_mass": -1}   # entropy_of, targets, layer
    for method, fn in originals.items():
        cfg.method = method
        calls.clear()
        assert tid_.scores(model, tokens, targets) is tid_.score_fns[method].marker
        [(called, args)] = calls
        assert called is fn and args[0] is model and args[1] is tokens
        assert args[2] is targets if method == "gradient_norm" else args[2] == extra[method]
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("cfg, expected", [
    (TIDConfig(method="entropy"),
     "entropy, drop high (auto), entropy of the next token's prediction, whole input zeroed, constant 0.1"),
    (TIDConfig(method="random", p_start=0.3, p_end=0.1),                          # constant: p_end plays no part
     "random, drop high (auto), whole input zeroed, constant 0.3"),
    (TIDConfig(method="entropy", drop="low", entropy_of="current", keep_position=True, schedule="cosine",
               p_start=0.2, p_end=0.05),
     "entropy, drop low, entropy of the current token's prediction, token embedding only zeroed, cosine 0.2 -> 0.05"),
    (TIDConfig(method="gradient_norm", keep_position=True, schedule="linear_warmup", p_start=0.0, p_end=0.25),
     "gradient_norm, drop low (auto), token embedding only zeroed, linear_warmup 0 -> 0.25"),
    (TIDConfig(method="attention_mass", drop="high", layer=-1, schedule="sigmoid", p_start=0.3, p_end=0.1),
     "attention_mass, drop high, whole input zeroed, sigmoid 0.3 -> 0.1"),
    (TIDConfig(method="random", drop="auto", schedule="linear_decay", p_start=0.4, p_end=0.0),
     "random, drop high (auto), whole input zeroed, linear_decay 0.4 -> 0"),
])
def test_describe_names_the_settings_in_words(cfg, expected):
    """One line for the run log: method, resolved drop end (" (auto)" only when resolved), the entropy's
    position for entropy only, what is zeroed, schedule with p_start -> p_end (constant: p_start alone)."""
    assert TokenImportanceDropout(cfg, 10, (None,), n_layers=2).describe() == expected
