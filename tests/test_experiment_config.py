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
    (["train.lr=0"], "0 < lr and 0 <= min_lr <= lr"),
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


# ----------------------------------------------------------------------------- contracts by hand

def test_zero_epochs_and_a_zero_lr_are_refused_even_with_min_lr_zero():
    """train.epochs > 0 (one epoch is fine), and lr > 0 even when min_lr = 0 allows min_lr <= lr."""
    with pytest.raises(ConfigError, match="train.epochs must be positive"):
        load_config([], ["train.epochs=0"])
    assert load_config([], ["train.epochs=1"]).train.epochs == 1.0
    with pytest.raises(ConfigError, match="need 0 < lr and 0 <= min_lr <= lr, got lr=0.0 min_lr=0.0"):
        load_config([], ["train.lr=0", "train.min_lr=0"])


def test_max_steps_defaults_to_1000_only_when_epochs_are_not_given():
    assert load_config().train.max_steps == 1000
    assert load_config([], ["train.epochs=2"]).train.max_steps is None


def test_a_set_value_may_hold_an_equals_sign_and_a_blank_value_is_null():
    """--set splits at the first '=': run_name=a=b names the run 'a=b'; a blank value (spaces, a tab) sets null."""
    assert load_config([], ["run_name=a=b"]).run_name == "a=b"
    assert load_config([], ["train.eval_batches=4", "train.eval_batches="]).train.eval_batches is None
    assert load_config([], ["train.eval_batches=4", "train.eval_batches=  "]).train.eval_batches is None
    assert load_config([], ["train.eval_batches=4", "train.eval_batches=\t"]).train.eval_batches is None


def test_a_string_field_keeps_a_value_that_reads_as_a_number_and_an_int_field_refuses_a_string():
    """Only float fields convert strings ("3e-4", which YAML 1.1 reads as a string); a string field keeps
    "1e5" as given, an int field refuses "12" naming its key with the value as given."""
    assert from_dict({"run_name": "1e5"}).run_name == "1e5"
    assert from_dict({"train": {"lr": "3e-4"}}).train.lr == 3e-4
    with pytest.raises(ConfigError) as e:
        from_dict({"train": {"batch_size": "12"}})
    assert str(e.value) == "config key 'train.batch_size' expects int, got '12'"


def test_a_model_key_of_the_wrong_type_is_named_with_its_section():
    with pytest.raises(ConfigError) as e:
        load_config([], ["model.d_model=wide"])
    assert str(e.value) == "config key 'model.d_model' expects int, got 'wide'"


def test_a_run_name_of_exactly_the_byte_limit_is_accepted():
    from experiment_config import MAX_RUN_NAME_BYTES

    check_run_name("a" * MAX_RUN_NAME_BYTES)
    with pytest.raises(ConfigError, match=f"more than the {MAX_RUN_NAME_BYTES}"):
        check_run_name("a" * (MAX_RUN_NAME_BYTES + 1))


def test_default_run_name_keeps_capitals_and_splits_each_set_at_its_first_equals_sign():
    """The last part of each key, '=', then the whole value: tid.method=v1.2=x -> method=v1.2=x."""
    assert default_run_name(["configs/TID.yaml"], ["tid.method=v1.2=x"]) == "TID-method=v1.2=x"


def test_a_missing_yaml_file_says_where_config_files_live(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_yaml(tmp_path / "nope.yaml")
    assert str(e.value) == (f"config file {tmp_path / 'nope.yaml'} not found "
                            "(configs live in configs/, e.g. configs/quickstart.yaml)")


def test_a_section_outside_the_run_tree_takes_its_prefixed_sets():
    """section_from: the block's keys, then `--set prefix.key=value` items with the prefix taken off, typed."""
    from dataclasses import dataclass

    from experiment_config import section_from

    @dataclass
    class Launcher:
        partition: str | None = None
        cpus: int = 8
        mem_gb: float | None = None

    got = section_from(Launcher, {"partition": "gpu", "cpus": 4}, ["launcher.cpus=16", "launcher.mem_gb=2"],
                       "launcher.")
    assert got == Launcher(partition="gpu", cpus=16, mem_gb=2.0) and isinstance(got.mem_gb, float)
    with pytest.raises(ConfigError, match="config key 'launcher.cpus' expects int"):
        section_from(Launcher, {}, ["launcher.cpus=many"], "launcher.")


def test_prepare_run_data_prepares_the_runs_sections_at_its_context(monkeypatch):
    """prepare_run_data(cfg, **options) = prepare_data(cfg.data, cfg.tokenizer, cfg.data_dir, cfg.tokenizer_dir,
    context=cfg.model.context, **options); an explicit context wins."""
    import experiment_config

    calls = []
    monkeypatch.setattr(experiment_config, "prepare_data", lambda *a, **kw: calls.append((a, kw)) or "prepared")
    cfg = load_config([], ["model.context=48", "data_dir=d", "tokenizer_dir=t"])
    log = print
    assert experiment_config.prepare_run_data(cfg, log=log, force=True) == "prepared"
    assert experiment_config.prepare_run_data(cfg, context=16) == "prepared"
    assert calls == [((cfg.data, cfg.tokenizer, "d", "t"), {"context": 48, "log": log, "force": True}),
                     ((cfg.data, cfg.tokenizer, "d", "t"), {"context": 16})]


def test_config_files_are_read_as_utf8_whatever_the_locale(tmp_path):
    """Under LC_ALL=C without Python's UTF-8 mode (a bare cluster node) a config with non-ASCII text loads
    unchanged."""
    import subprocess
    import sys

    from conftest import REPO, c_locale_env

    path = tmp_path / "c.yaml"
    path.write_text("data:\n  path: café-naïve.txt\n", encoding="utf-8")
    env = c_locale_env()
    script = "import sys; from experiment_config import load_config; print(ascii(load_config([sys.argv[1]]).data.path))"
    r = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == ascii("café-naïve.txt")
