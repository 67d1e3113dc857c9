"""Study files and run identity: an arm's `set:` mapping reaches the run config with YAML's types,
overrides are keyed by the text before the first "=", the run hash covers what is trained (and only
that), and the arms are refused when they differ in data, tokenizer or keys they do not name."""

from dataclasses import replace

import pytest
import yaml

import study
from conftest import REPO
from experiment_config import ConfigError, _parse_set

TINY = ["data.source=builtin", "data.train_rows=300", "data.val_rows=20", "data.heldout_rows=12",
        "tokenizer.kind=bpe", "tokenizer.vocab_size=300", "model.context=32", "model.d_model=32", "model.n_layers=1",
        "model.n_heads=2", "model.d_ff=64", "train.max_steps=4", "train.batch_size=2", "train.precision=fp32"]


def _study(tmp_path, arms: dict, **extra) -> study.Study:
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump({"seeds": [1], "reference": "baseline", "arms": arms, **extra}))
    return study.load_study(path)


def _runs(tmp_path, monkeypatch, arms: dict, cli_sets=(), **extra):
    monkeypatch.chdir(REPO)  # runners' default configs are relative to the project root
    s = _study(tmp_path, arms, **extra)
    return s, study.resolve_runs(s, ["configs/quickstart.yaml"], [*TINY, *cli_sets])


BASELINE = {"runner": "run_tid.py", "set": {"tid.method": "none"}}


# ----------------------------------------------------------------------------- the study file

@pytest.mark.parametrize("configs", ["configs/quickstart.yaml", [1, 2], {"a": "b"}])
def test_configs_must_be_a_list_of_strings(tmp_path, configs):
    """`configs:` as one string (a common slip), a list of numbers or a mapping is refused."""
    with pytest.raises(ConfigError, match="'configs' must be a list of strings"):
        _study(tmp_path, {"baseline": BASELINE, "b": BASELINE}, configs=configs)


def test_arm_set_values_reach_the_config_with_their_yaml_types(tmp_path, monkeypatch):
    """An arm's `set:` mapping holds YAML values: null, booleans, numbers and strings arrive as
    such in the resolved config (the same values as a top-level YAML file gives)."""
    arms = {"baseline": BASELINE,
            "typed": {"runner": "run_tid.py", "set": {"train.eval_batches": None, "train.compile": True,
                                                      "train.checkpoints": False, "train.lr": 0.002,
                                                      "train.grad_accum": 2, "tid.method": "entropy"}}}
    _, runs = _runs(tmp_path, monkeypatch, arms, set=["train.eval_batches=3"])
    typed = next(r.cfg for r in runs if r.arm == "typed")
    t = typed.train
    assert t.eval_batches is None and t.compile is True and t.checkpoints is False
    assert t.lr == 0.002 and t.grad_accum == 2 and typed.tid.method == "entropy"
    reference = next(r.cfg for r in runs if r.arm == "baseline")
    assert reference.train.eval_batches == 3 and reference.train.compile is False


def test_override_keys_are_the_text_before_the_first_equals_sign():
    """As the config loader reads `--set key=value`: the key ends at the first "=" (values may hold "=")."""
    sets = ["data.path=/tmp/a=b.txt", " train.lr = 3e-4", "tid.method=x=y=z"]
    assert study.set_keys(sets) == {_parse_set(s)[0] for s in sets} == {"data.path", "train.lr", "tid.method"}


def test_a_command_line_set_of_a_key_an_arm_sets_is_refused_even_with_equals_in_the_value(tmp_path, monkeypatch):
    """The arm sets tid.method to a value holding "=": --set tid.method=... must still be seen as a clash."""
    arms = {"baseline": BASELINE, "odd": {"runner": "run_tid.py", "set": {"tid.method": "a=b"}}}
    with pytest.raises(ConfigError, match="the study's arms set these keys"):
        _runs(tmp_path, monkeypatch, arms, ["tid.method=random"])


# ----------------------------------------------------------------------------- run identity (the hash)

@pytest.fixture
def cfg(tmp_path, monkeypatch):
    _, runs = _runs(tmp_path, monkeypatch, {"baseline": BASELINE, "b": BASELINE})
    return runs[0].cfg


def test_hash_changes_with_what_is_trained_and_the_seed(cfg):
    """A changed training key (lr, a model size) or seed is another run: another hash."""
    h = study.config_hash(cfg)
    assert study.config_hash(replace(cfg, train=replace(cfg.train, lr=cfg.train.lr * 2))) != h
    assert study.config_hash(replace(cfg, model=replace(cfg.model, d_ff=128))) != h
    assert study.config_hash(replace(cfg, seed=cfg.seed + 1)) != h
    assert study.config_hash(cfg) == h


def test_hash_ignores_where_outputs_go(cfg):
    """Output places and logging (run name, folders, device, wandb, tensorboard) do not change what is
    trained: the same hash, so a run logged elsewhere is still found."""
    h = study.config_hash(cfg)
    moved = replace(cfg, run_name="other", device="cpu", checkpoint_dir="/elsewhere/ck", log_dir="/elsewhere/logs",
                    wandb=replace(cfg.wandb, project="another-project", mode="offline"),
                    log=replace(cfg.log, tensorboard=not cfg.log.tensorboard))
    assert study.config_hash(moved) == h
    assert not any(k.startswith(("wandb.", "log.")) for k in study.compared(cfg))


def test_a_key_added_later_at_its_default_keeps_the_hash(cfg, monkeypatch):
    """Finished runs keep their names when the config tree grows: a new key at its default value (the
    same in RunConfig() and in the run) leaves the hash unchanged; the same key set otherwise changes it."""
    before = study.config_hash(cfg)
    real = study.compared

    def grown(value):
        def compared(c):
            return {**real(c), "model.new_knob": 0 if c is not cfg else value}
        return compared

    monkeypatch.setattr(study, "compared", grown(0))
    assert study.config_hash(cfg) == before
    monkeypatch.setattr(study, "compared", grown(7))
    assert study.config_hash(cfg) != before


# ----------------------------------------------------------------------------- arm differences

@pytest.mark.parametrize("key, value", [("data.seed", 5), ("tokenizer.path", "tok.json")])
def test_an_arm_naming_a_data_or_tokenizer_key_is_refused(tmp_path, monkeypatch, key, value):
    """Every arm sees the same prepared data and tokenizer, even when the arm names the key it changes."""
    s, runs = _runs(tmp_path, monkeypatch, {"baseline": BASELINE,
                                            "other": {"runner": "run_tid.py", "set": {key: value}}})
    with pytest.raises(ConfigError, match=rf"changes \['{key}'\]; every arm must see the same"):
        study.config_differences(s, runs)


def test_unnamed_differences_are_all_listed(tmp_path, monkeypatch):
    """run_baseline.py vs run_tid.py differ in several keys the arms do not name: each is listed, "key: a vs b",
    separated by ", "."""
    monkeypatch.chdir(REPO)
    s = _study(tmp_path, {"baseline": {"runner": "run_baseline.py"}, "tid": {"runner": "run_tid.py"}})
    runs = study.resolve_runs(s, ["configs/quickstart.yaml"], TINY)
    a, b = (study.compared(r.cfg) for r in runs)
    unnamed = [k for k in sorted(a) if a[k] != b[k]]
    assert len(unnamed) >= 2
    listed = ", ".join(f"{k}: {a[k]!r} vs {b[k]!r}" for k in unnamed)
    with pytest.raises(ConfigError) as e:
        study.config_differences(s, runs)
    assert f"keys it does not name ({listed})" in str(e.value)
