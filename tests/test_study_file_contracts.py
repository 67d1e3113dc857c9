"""The study file, rule by rule: each check refuses the input that breaks it alone, with an error naming
the file, the key and the fix; absent optional fields take their documented defaults; and the helpers
the study leans on (runner discovery, the run hash, the token budget) keep their contracts."""

import re
from dataclasses import replace

import pytest
import yaml

import study
from experiment_config import ConfigError, RunConfig

ARMS = {"baseline": {"runner": "run_tid.py"}, "other": {"runner": "run_tid.py", "set": {"tid.method": "entropy"}}}


def _file(tmp_path, **d):
    """A study file mini.yaml holding `d` (keys in the order given)."""
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _refusal(path) -> str:
    with pytest.raises(ConfigError) as e:
        study.load_study(path)
    return str(e.value)


# ----------------------------------------------------------------------------- reading the fields

def test_a_missing_study_file_says_where_studies_live(tmp_path):
    """The error names the file as a study file and where study files live."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as e:
        study.load_study(path)
    assert str(e.value) == (f"study file {path} not found "
                            "(studies live in configs/studies/, e.g. configs/studies/tid.yaml)")


def test_absent_optional_fields_take_their_defaults(tmp_path):
    """Only `arms` given: seeds 1, 2, 3, the first arm in the file is the reference, no configs, sets,
    launcher settings or description, and every held-out row (heldout_rows None)."""
    path = _file(tmp_path, arms={"zeta": {"runner": "run_tid.py"}, "alpha": {"runner": "run_tid.py"}})
    s = study.load_study(path)
    assert (s.name, s.path, s.reference, s.seeds) == ("mini", path, "zeta", [1, 2, 3])
    assert (s.configs, s.sets, s.launcher, s.description, s.heldout_rows) == ([], [], {}, "", None)
    assert [(a.name, a.runner, a.sets) for a in s.arms] == [("zeta", "run_tid.py", []), ("alpha", "run_tid.py", [])]


def test_given_fields_are_read_as_written(tmp_path):
    """Every optional field given is what the study holds; the description loses surrounding whitespace."""
    path = _file(tmp_path, description="\n  Entropy against no dropping.  \n\n", configs=["configs/quickstart.yaml"],
                 set=["train.max_steps=300"], seeds=[7, 3], reference="other", heldout_rows=500,
                 launcher={"partition": "gpu", "time": "02:00:00"}, arms=ARMS)
    s = study.load_study(path)
    assert s.description == "Entropy against no dropping."
    assert (s.configs, s.sets, s.seeds, s.reference) == (["configs/quickstart.yaml"], ["train.max_steps=300"], [7, 3],
                                                         "other")
    assert s.heldout_rows == 500 and s.launcher == {"partition": "gpu", "time": "02:00:00"}
    assert s.arm("other").sets == ['tid.method="entropy"']


# ----------------------------------------------------------------------------- arms

@pytest.mark.parametrize("arms", [{"baseline": {"runner": "run_tid.py"}}, None, ["baseline", "other"]],
                         ids=["one arm", "no arms", "a list"])
def test_a_study_needs_a_mapping_of_at_least_two_arms(tmp_path, arms):
    """Nothing to compare with fewer than two arms; a list of names is not a mapping to runners."""
    path = _file(tmp_path, arms=arms)
    assert _refusal(path) == f"study file {path}: 'arms' must map at least two arm names to {{runner, set}}"


@pytest.mark.parametrize("spec", ["run_tid.py", {"set": {"tid.method": "entropy"}},
                                  {"runner": "run_tid.py", "sets": {"tid.method": "entropy"}}],
                         ids=["not a mapping", "no runner", "an unknown key"])
def test_an_arm_is_a_mapping_with_a_runner_and_nothing_but_set(tmp_path, spec):
    """Each of the three breaks alone is refused (a misspelt `sets:` would silently drop the arm's overrides)."""
    path = _file(tmp_path, arms={"baseline": {"runner": "run_tid.py"}, "other": spec})
    assert _refusal(path) == (f"study file {path}: arm 'other' must be a mapping with 'runner' (e.g. run_tid.py) "
                              "and optionally 'set' (key: value overrides)")


def test_arm_names_may_hold_underscores_and_hyphens(tmp_path):
    """Letters, digits, '_' and '-' in any mix make an arm name."""
    names = ["no_drop", "entropy-low", "A1_b-2"]
    s = study.load_study(_file(tmp_path, arms={n: {"runner": "run_tid.py"} for n in names}))
    assert [a.name for a in s.arms] == names


@pytest.mark.parametrize("name", ["a.b", "a b", "a/b", "β", "_", "-", "_-"])
def test_other_arm_names_are_refused(tmp_path, name):
    """Any other character is refused (non-ASCII letters too: run names are ASCII), and so is a name with no
    letter or digit at all."""
    path = _file(tmp_path, arms={"baseline": {"runner": "run_tid.py"}, name: {"runner": "run_tid.py"}})
    assert _refusal(path) == (f"study file {path}: arm name {name!r} must be ASCII letters, digits, '-' or '_', "
                              "with at least one letter or digit")


def test_a_runner_given_as_dot_slash_is_the_project_runner(tmp_path):
    """"./run_tid.py" is the project's run_tid.py, stored by its file name."""
    s = study.load_study(_file(tmp_path, arms={"a": {"runner": "./run_tid.py"}, "b": {"runner": "run_tid.py"}}))
    assert [a.runner for a in s.arms] == ["run_tid.py", "run_tid.py"]


@pytest.mark.parametrize("runner", ["sub/run_tid.py", "run_nope.py", "run_study.py"],
                         ids=["a path to a runner's name", "no such runner", "a run_ script that is no runner"])
def test_a_runner_must_be_one_of_the_project_runners_in_its_root(tmp_path, runner):
    """Only the root's run_*.py scripts that call main(default_config=...) train an arm; the error lists them."""
    path = _file(tmp_path, arms={"baseline": {"runner": "run_tid.py"}, "other": {"runner": runner}})
    message = _refusal(path)
    assert message.startswith(f"study file {path}: arm 'other': runner {runner!r} is not one of the project's "
                              f"runners {study.project_runners()}")
    assert message.endswith("(the run_*.py scripts in its root)") and "'run_tid.py'" in message


def test_project_runners_are_the_scripts_passing_a_constant_default_config(tmp_path, monkeypatch):
    """A runner is a root run_*.py calling main(default_config="..."), whatever other keywords the call has;
    its default config is that string. A main() call without default_config makes no runner."""
    (tmp_path / "run_plain.py").write_text('main(default_config="configs/a.yaml")\n')
    (tmp_path / "run_more.py").write_text('main(name="more", default_config="configs/b.yaml")\n')
    (tmp_path / "run_helper.py").write_text("main(verbose=True)\n")
    monkeypatch.setattr(study, "PROJECT_ROOT", tmp_path)
    assert study.project_runners() == ["run_more.py", "run_plain.py"]
    assert study.runner_default_config("run_more.py") == "configs/b.yaml"


# ----------------------------------------------------------------------------- lists, seeds, held-out rows

@pytest.mark.parametrize("where, key", [("configs", "configs"), ("set", "set"), ("arm", "arms.other.set")])
def test_a_string_where_a_list_belongs_names_the_file_and_the_key(tmp_path, where, key):
    """`configs`, `set` and an arm's `set` given as one string (a common slip) name the key in full."""
    arms = {"baseline": {"runner": "run_tid.py"}, "other": {"runner": "run_tid.py", "set": "tid.method=entropy"}}
    fields = {"arms": arms} if where == "arm" else {where: "train.max_steps=3", "arms": ARMS}
    path = _file(tmp_path, **fields)
    assert _refusal(path) == f"study file {path}: '{key}' must be a list of strings"


@pytest.mark.parametrize("seeds", [3, [], [1, 1], [1, "2"], [1, True]],
                         ids=["a number", "empty", "a repeat", "a string", "a boolean"])
def test_seeds_must_be_a_list_of_distinct_integers(tmp_path, seeds):
    """Each break alone is refused, with an example of a good list."""
    path = _file(tmp_path, seeds=seeds, arms=ARMS)
    assert _refusal(path) == f"study file {path}: 'seeds' must be a list of distinct integers, e.g. [1, 2, 3]"


@pytest.mark.parametrize("rows", [0, -5, 2.5, "all", True])
def test_heldout_rows_must_be_a_positive_integer(tmp_path, rows):
    """Zero, negative, fractional, text or true/false row counts are refused; leaving the key out means all rows."""
    path = _file(tmp_path, heldout_rows=rows, arms=ARMS)
    assert _refusal(path) == (f"study file {path}: heldout_rows must be a positive integer "
                              "(or left out: all rows)")


def test_one_heldout_row_is_enough(tmp_path):
    """1 is the smallest count accepted."""
    assert study.load_study(_file(tmp_path, heldout_rows=1, arms=ARMS)).heldout_rows == 1


@pytest.mark.parametrize("study_sets, cli_sets", [(["seed=4"], []), ([], ["seed = 4"])],
                         ids=["in the study file", "on the command line"])
def test_the_seed_is_set_only_by_the_seeds_list(tmp_path, study_sets, cli_sets):
    """`seed` in the study's `set` or in --set alone is refused: the study runs every seed in `seeds`."""
    s = study.load_study(_file(tmp_path, set=study_sets, arms=ARMS))
    with pytest.raises(ConfigError, match=r"^--set seed: a study runs every seed in its 'seeds' list; change that"):
        study.resolve_runs(s, [], cli_sets)


# ----------------------------------------------------------------------------- run hash and budget

def _changed_config(tmp_path) -> RunConfig:
    cfg = RunConfig(data_dir=str(tmp_path / "data"))
    return replace(cfg, train=replace(cfg.train, lr=1e-3, max_steps=7), model=replace(cfg.model, d_ff=96))


def test_the_run_hash_is_eight_hex_digits(tmp_path):
    """The hash that ends a run's name is 8 lower-case hex digits."""
    assert re.fullmatch(r"[0-9a-f]{8}", study.config_hash(_changed_config(tmp_path)))


def test_the_run_hash_does_not_depend_on_the_order_of_the_keys(tmp_path, monkeypatch):
    """The same keys and values listed in another order are the same run: the same hash."""
    cfg = _changed_config(tmp_path)
    before = study.config_hash(cfg)
    real = study.compared
    monkeypatch.setattr(study, "compared", lambda c: dict(reversed(real(c).items())))
    assert study.config_hash(cfg) == before


def test_the_token_budget_is_steps_times_batch_times_accumulation_times_context():
    """max_steps x batch_size x grad_accum x model.context tokens; None (and the epochs in words) when
    train.epochs sets the length."""
    cfg = RunConfig()
    cfg = replace(cfg, train=replace(cfg.train, max_steps=10, batch_size=4, grad_accum=3),
                  model=replace(cfg.model, context=16))
    assert study.tokens_budget(cfg) == 1920 and study.budget(cfg) == "1,920 tokens"
    by_epochs = replace(cfg, train=replace(cfg.train, max_steps=None, epochs=2.5))
    assert study.tokens_budget(by_epochs) is None and study.budget(by_epochs) == "2.5 epochs"
