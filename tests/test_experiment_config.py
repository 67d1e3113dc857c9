"""experiment_config: every range check at its edge, --set parsing, run names, and which keys a resume may change."""

import pytest

from experiment_config import (ConfigError, check_run_name, default_run_name, flatten, from_dict, load_config,
                               read_yaml, run_identity_diff, to_dict, RunConfig)


@pytest.mark.parametrize("item", [
    "train.max_steps=1", "train.batch_size=1", "train.grad_accum=1", "train.eval_every=1", "train.save_every=1",
    "train.log_every=1", "train.loss_chunk=0", "train.min_lr=0", "train.min_lr=0.001", "train.beta1=0",
    "train.beta2=0.999", "train.weight_decay=0", "train.grad_clip=0", "train.warmup_steps=0", "train.keep_every=0",
    "train.patience=0", "train.eval_batches=1", "train.eval_batches=null", "wandb.mode=offline", "device=cuda:12",
    "device=mps", "tid.method=attention_mass", "tid.layer=-6", "run_name=my-run", "train.precision=bf16",
    "train.precision=fp16", "wandb.mode=online",
])
def test_values_at_the_edge_of_their_range_are_accepted(item):
    load_config([], [item] + (["tid.method=attention_mass"] if item.startswith("tid.layer") else []))


@pytest.mark.parametrize("sets, needle", [
    (["train.max_steps=0"], "train.max_steps must be positive"),
    (["train.grad_accum=0"], "train.grad_accum must be positive"),
    (["train.log_every=-1"], "train.log_every must be positive"),
    (["train.lr=0"], "0 <= min_lr <= lr"),
    (["train.min_lr=-0.1"], "0 <= min_lr <= lr"),
    (["train.min_lr=0.0011"], "0 <= min_lr <= lr"),
    (["train.beta1=1"], r"train.beta1 must be in \[0, 1\)"),
    (["train.beta2=-0.1"], r"train.beta2 must be in \[0, 1\)"),
    (["train.weight_decay=-0.1"], "train.weight_decay must be >= 0"),
    (["train.patience=-1"], "train.patience must be >= 0"),
    (["train.eval_batches=0"], "train.eval_batches must be >= 1"),
    (["train.optimizer=sgd"], "train.optimizer: 'sgd' is not one of"),
    (["wandb.mode=live"], "wandb.mode: 'live' is not one of"),
    (["device=gpu"], "device: 'gpu' is not one of"),
    (["device=cuda:x"], "device: 'cuda:x' is not one of"),
    (["tid.method=attention_mass", "tid.layer=6"], "tid.layer=6 is outside .*n_layers=6 .*0..5"),
    (["tid.method=attention_mass", "tid.layer=-7"], "tid.layer=-7 is outside"),
    (["train.lr=inf"], "'train.lr' must be a finite number"),
    (["train.max_steps=true"], "'train.max_steps' expects int or null, got True"),
    (["train.eval_batches=many"], "'train.eval_batches' expects int or null"),
    (["train.lr=fast"], "'train.lr' expects float, got 'fast'"),
    (["train=3"], "train: expected a section of keys, got 3"),
    (["model=3"], "model: expected a section of keys"),
    (["model.bogus=1"], "unknown config key 'model.bogus'"),
    (["train.lr=1e-3", "train.lr.x=1"], "--set train.lr.x=1: lr is not a section"),
    (["=1"], "expected key=value"),
    (["train.lr"], "expected key=value"),
])
def test_values_past_the_edge_are_refused_naming_the_key(sets, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config([], sets)


def test_attention_mass_layer_range_follows_the_models_depth():
    assert load_config([], ["tid.method=attention_mass", "model.n_layers=9", "tid.layer=8"]).tid.layer == 8
    assert load_config([], ["tid.layer=40"]).tid.layer == 40  # other methods read no layer


def test_set_values_are_yaml_typed():
    cfg = load_config([], ["train.lr=3e-4", "train.grad_clip=2", "train.eval_batches=", "train.compile=true",
                           "seed= 7 "])
    assert cfg.train.lr == 3e-4 and cfg.train.grad_clip == 2.0 and type(cfg.train.grad_clip) is float
    assert cfg.train.eval_batches is None and cfg.train.compile is True and cfg.seed == 7
    assert load_config([], ["data.path=[unclosed"]).data.path == "[unclosed"  # not YAML: the raw text


def test_files_merge_section_by_section_and_sets_win(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {lr: 0.01, max_steps: 5}\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("train: {max_steps: 7}\n")
    cfg = load_config([tmp_path / "a.yaml", tmp_path / "b.yaml"], ["seed=3"])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.seed) == (0.01, 7, 3)


@pytest.mark.parametrize("text, needle", [("train: [1, 2", "is not valid YAML"), ("- 1\n- 2\n", "must hold a mapping of keys, got list")])
def test_bad_files_are_named(tmp_path, text, needle):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=f"config file .*c.yaml {needle}"):
        read_yaml(tmp_path / "c.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize("name, ok", [("run-1", True), ("a.b=c_d", True), ("=x", True), (".hidden", False),
                                      ("a/b", False), ("", False), (None, False), ("sp ace", False)])
def test_run_names_are_plain_names(name, ok):
    if ok:
        check_run_name(name)
    else:
        with pytest.raises(ConfigError, match="run_name"):
            check_run_name(name)


def test_default_run_name_from_files_and_sets():
    name = default_run_name(["configs/tid.yaml", "x/quickstart.yaml"],
                            ["tid.method=entropy", "data_dir=/tmp/d", "device=cpu", "train.lr=3e-4", "note=a b/c"])
    assert name == "tid-quickstart-method=entropy-lr=3e-4-note=a_b_c"


def test_identity_diff_lists_run_defining_keys_only():
    old = to_dict(load_config([], ["train.lr=1e-3", "seed=1"]))
    new = to_dict(load_config([], ["train.lr=2e-3", "seed=1", "train.max_steps=9", "train.eval_every=3",
                                   "wandb.mode=offline", "device=cpu", "run_name=other"]))
    assert run_identity_diff(old, new) == ["train.lr: 0.001 -> 0.002"]
    del old["train"]["grad_clip"]  # a key newer than the checkpoint: compared with its default
    assert run_identity_diff(old, to_dict(load_config([], ["train.lr=1e-3", "seed=1"]))) == []
    assert run_identity_diff(old, to_dict(load_config([], ["train.lr=1e-3", "seed=1", "train.grad_clip=2"]))) == [
        "train.grad_clip: 1.0 -> 2.0"]


def test_flatten_joins_keys_with_dots():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_checkpoint_dicts_rebuild_the_same_config_and_bad_ones_are_config_errors():
    cfg = load_config([], ["model.preset=falcon", "tid.method=random", "train.lr=5e-4"])
    assert from_dict(to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="tid.p_start must be in"):
        from_dict({"tid": {"p_start": 1.5}})
    assert from_dict({}) == RunConfig()
