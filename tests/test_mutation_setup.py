"""The mutation-testing setup (tests/mutation/) covers the tree: every module with code is mapped to test files
that exist, and the scores table counts verdicts as mutmut reports them. (The mutation runs are not CI.)"""

import ast
import json
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "mutation"))
import scores  # noqa: E402
from mutate import expand, module_path, mutant_globs  # noqa: E402

MAP = tomllib.loads((REPO / "tests" / "mutation" / "modules.toml").read_text(encoding="utf-8"))
# measurements and entry points: the benchmarks print numbers, the runners call generic_runner.main
NOT_MUTATED = ("benchmarks.", "perplexity-runners.", "run_", "tests.")
MEASURED_BENCHMARK_CODE = ("benchmarks.common", "benchmarks.synthetic")


def _modules_with_functions() -> set[str]:
    out = set()
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0].startswith(".") or rel.parts[0] in ("tests", "build") or "egg-info" in rel.parts[0]:
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        has_code = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(tree))
        if has_code and (not name.startswith(NOT_MUTATED) or name in MEASURED_BENCHMARK_CODE):
            out.add(name)
    return out


def test_every_module_with_code_is_mapped_to_existing_test_files():
    mapped = set(MAP["tests"])
    assert _modules_with_functions() - mapped == set()
    for module, tests in MAP["tests"].items():
        assert (REPO / module_path(module)).is_file(), module
        assert tests and all((REPO / "tests" / f"{t}.py").is_file() for t in tests), (module, tests)


def test_every_mapped_module_is_copied_into_the_mutation_run():
    settings = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    for module in MAP["tests"]:
        path = module_path(module)
        assert any(path == p or path.startswith(p + "/") for p in settings["source_paths"]), module


def test_a_package_name_stands_for_its_mapped_modules():
    known = ["models", "models.lora", "models.falcon", "modelskv.cache"]
    assert expand(["models"], known) == ["models", "models.lora", "models.falcon"]
    assert expand(["models.lora", "models"], known) == ["models.lora", "models", "models.falcon"]
    assert module_path("models") == "models/__init__.py" and module_path("models.lora") == "models/lora.py"


def test_scores_count_each_verdict_once_and_equivalents_apart():
    found = {"m.a__mutmut_1": "killed", "m.a__mutmut_2": "survived", "m.a__mutmut_3": "survived",
             "m.b__mutmut_1": "timeout", "m.b__mutmut_2": "not checked", "m.b__mutmut_3": "caught by type check",
             "m.b__mutmut_4": "no tests", "m.b__mutmut_5": "segfault", "m.b__mutmut_6": "check was interrupted by user"}
    row = scores.counts(found, {"m.a__mutmut_3": "only the block size changes"})
    assert row == {"mutants": 9, "killed": 2, "survived": 2, "equivalent": 1, "survivors left": 1, "timeouts": 1,
                   "no tests": 1, "not run": 2, "other": 1, "survivors": ["m.a__mutmut_2", "m.a__mutmut_3"]}


def test_progress_names_what_has_not_run_and_why_survivors_are_equivalent():
    row = {**scores.counts({"m.f__mutmut_1": "survived", "m.f__mutmut_2": "killed"}, {}), "seconds": 120,
           "date": "2026-01-01 10:00", "commit": "abc1234"}
    after = {**row, "killed": 2, "survived": 0, "survivors left": 0, "survivors": []}
    text = scores.progress_markdown({"m": {"before": row, "after": after}}, {"x.y__mutmut_1": "same behaviour"},
                                    ["m", "other"])
    assert "| m | before | 2 | 1 | 1 | 0 | 1 | 0 | 0 | 0 | 0 | 2 | 2026-01-01 10:00 | abc1234 |" in text
    assert "| m | after | 2 | 2 | 0 | 0 | 0 |" in text
    assert "## Not run yet\n\nother\n" in text and "- `x.y__mutmut_1`: same behaviour" in text
    assert "m.f__mutmut_1" not in text.split("## Survivors left")[1]  # the latest phase killed it


def test_only_argparse_documentation_text_counts_as_cosmetic():
    """cosmetic.doc_only: a mutant that rewrites or drops help/metavar/description text changes nothing
    computed; one that also touches a default, a type or an exit code is not cosmetic."""
    from cosmetic import doc_only

    def diff(before: str, after: str) -> str:
        return "".join(f"-{line}\n" for line in before.splitlines()) + "".join(f"+{line}\n" for line in after.splitlines())

    add = 'p.add_argument("--n", type=int, default=5, metavar="N",\n    help="how many")'
    assert doc_only(diff(add, 'p.add_argument("--n", type=int, default=5, metavar="N",\n    help="XXhow manyXX")')) == "help"
    assert doc_only(diff(add, 'p.add_argument("--n", type=int, default=5, help="how many")')) == "metavar"
    assert doc_only(diff(add, 'p.add_argument("--n", type=int, default=5, metavar="N",\n    )')) == "help"
    assert doc_only(diff('P(description=f"Train {x}.")', "P(description=None)")) == "description"
    assert doc_only(diff(add, 'p.add_argument("--n", type=int, default=6, metavar="N",\n    help="how many")')) is None
    assert doc_only(diff(add, 'p.add_argument("--n", type=float, default=5, metavar="N",\n    help="x")')) is None
    assert doc_only(diff('exit_with("stopped", 130)', 'exit_with("stopped", 131)')) is None
    assert doc_only(diff(add, add)) is None


def test_recheck_marks_killed_survivors_in_the_copy_and_keeps_the_rest(tmp_path):
    """recheck.mark_killed writes a killed survivor's verdict into mutmut's meta file; the other survivors
    and the mutants not run keep theirs, and the after phase counts from that file."""
    from mutate import meta_path
    from recheck import mark_killed, survivors

    meta = meta_path(tmp_path, "m")
    meta.parent.mkdir(parents=True)
    codes = {"m.f__mutmut_1": 0, "m.f__mutmut_2": 0, "m.f__mutmut_3": 0, "m.f__mutmut_4": 1, "m.f__mutmut_5": None}
    meta.write_text(json.dumps({"exit_code_by_key": codes, "hash_by_function_name": {"f": "h"}}))
    assert survivors(tmp_path, "m") == ["m.f__mutmut_1", "m.f__mutmut_2", "m.f__mutmut_3"]
    mark_killed(tmp_path, "m", {"m.f__mutmut_1": True, "m.f__mutmut_2": False})
    assert survivors(tmp_path, "m") == ["m.f__mutmut_2", "m.f__mutmut_3"]
    saved = json.loads(meta.read_text())
    assert saved["hash_by_function_name"] == {"f": "h"}
    assert saved["exit_code_by_key"] == codes | {"m.f__mutmut_1": 1}


def test_recheck_takes_the_unreached_mutants_only_when_asked(tmp_path):
    """A copy's "no tests" mutants (mutmut's 33) are re-checked with unreached=True, beside the survivors."""
    from mutate import NO_TESTS, meta_path
    from recheck import survivors

    meta = meta_path(tmp_path, "m")
    meta.parent.mkdir(parents=True)
    codes = {"m.f__mutmut_1": 0, "m.f__mutmut_2": NO_TESTS, "m.f__mutmut_3": 1, "m.f__mutmut_4": None}
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    assert survivors(tmp_path, "m") == ["m.f__mutmut_1"]
    assert survivors(tmp_path, "m", unreached=True) == ["m.f__mutmut_1", "m.f__mutmut_2"]


def test_equivalents_of_a_changed_function_are_stale_and_dropped(tmp_path, monkeypatch):
    """A re-run renumbers a changed function's mutants: its listed equivalents are stale (other functions',
    other modules' and new functions' are not), and drop_equivalents removes exactly those lines."""
    import mutate

    before = {"x_f": "h1", "xǁCǁm": "h2", "x_g": "h3"}
    after = {"x_f": "h1", "xǁCǁm": "h9", "x_g": "h3", "x_new": "h4"}
    listed = {"m.x_f__mutmut_1": "a", "m.xǁCǁm__mutmut_2": "b", "m.xǁCǁm__mutmut_12": "c", "m.x_new__mutmut_1": "d",
              "other.xǁCǁm__mutmut_2": "e", "m.x_g__mutmut_3": "f"}
    stale = mutate.stale_equivalents("m", before, after, listed)
    assert stale == ["m.xǁCǁm__mutmut_12", "m.xǁCǁm__mutmut_2"]
    monkeypatch.setattr(mutate, "HERE", tmp_path)
    (tmp_path / "equivalent.toml").write_text("# reasons\n" + "".join(f'"{n}" = "{r}"\n' for n, r in listed.items()),
                                              encoding="utf-8")
    mutate.drop_equivalents(stale)
    kept = tomllib.loads((tmp_path / "equivalent.toml").read_text(encoding="utf-8"))
    assert kept == {n: r for n, r in listed.items() if n not in stale}


def test_functions_name_mutmuts_globs_for_functions_and_methods():
    """A function f is mutmut's x_f, a method C.m its xǁCǁm; each numbered mutant matches the glob."""
    import fnmatch
    globs = mutant_globs("generic_runner", ["Trainer.train_step", "train"])
    assert globs == ["generic_runner.xǁTrainerǁtrain_step__mutmut_*", "generic_runner.x_train__mutmut_*"]
    assert fnmatch.fnmatch("generic_runner.xǁTrainerǁtrain_step__mutmut_12", globs[0])
    assert not fnmatch.fnmatch("generic_runner.xǁTrainerǁtrain_step_extra__mutmut_1", globs[0])
    assert not fnmatch.fnmatch("generic_runner.x_train_step__mutmut_1", globs[1])



def test_each_slow_test_left_out_names_tests_that_exist():
    """Every node-id prefix in `slow`, keep_by_module and `frames` is a test function of an existing file."""
    for node in [*MAP["slow"], *MAP["frames"], *(n for kept in MAP["keep_by_module"].values() for n in kept)]:
        path, _, name = node.partition("::")
        source = (REPO / path).read_text(encoding="utf-8")
        assert name.startswith("test_") and f"def {name}" in source, node
    assert all(n in MAP["slow"] for kept in MAP["keep_by_module"].values() for n in kept)


def test_a_selection_leaves_out_exactly_the_slow_tests_a_module_does_not_keep():
    """selection: the module's test files, then --deselect for each slow node id it does not keep (pytest
    drops only node ids that start with one: nothing else named like them, unlike -k's substrings)."""
    from mutate import selection

    mapping = {"slow": ["tests/test_a.py::test_cli_x", "tests/test_b.py::test_compiled"],
               "keep_by_module": {"own": ["tests/test_a.py::test_cli_x"]}}
    assert selection("m", mapping, ["test_a", "test_c"]) == [
        "tests/test_a.py", "tests/test_c.py", "--deselect", "tests/test_a.py::test_cli_x",
        "--deselect", "tests/test_b.py::test_compiled"]
    assert selection("own", mapping, ["test_a"]) == ["tests/test_a.py", "--deselect", "tests/test_b.py::test_compiled"]
    mapping["frames"] = ["tests/test_a.py::test_stacklevel"]                    # left out of every module's run
    assert selection("own", mapping, ["test_a"]) == ["tests/test_a.py", "--deselect", "tests/test_b.py::test_compiled",
                                                     "--deselect", "tests/test_a.py::test_stacklevel"]


def test_a_copy_with_verdicts_keeps_the_selection_they_were_reached_with(tmp_path, capsys):
    """kept_selection: no copy yet, or one whose mutants have not run -> the wanted selection; a copy with a
    verdict -> the selection in its [tool.mutmut] (run_selection; mutmut would reset every verdict), said when
    it differs."""
    from mutate import kept_selection, meta_path, run_selection

    wanted, old = ["tests/test_a.py", "--deselect", "tests/test_a.py::test_slow"], ["tests/test_a.py", "-k", "not cli"]
    assert kept_selection(tmp_path, "m", wanted, run_selection(tmp_path)) == wanted
    (tmp_path / "pyproject.toml").write_text(f"[tool.mutmut]\npytest_add_cli_args_test_selection = {json.dumps(old)}\n")
    meta = meta_path(tmp_path, "m")
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": {"m.f__mutmut_1": None}}))
    assert kept_selection(tmp_path, "m", wanted, run_selection(tmp_path)) == wanted
    meta.write_text(json.dumps({"exit_code_by_key": {"m.f__mutmut_1": None, "m.f__mutmut_2": 1}}))
    capsys.readouterr()
    assert kept_selection(tmp_path, "m", wanted, run_selection(tmp_path)) == old
    assert "keeps the test selection it has verdicts from: tests/test_a.py -k not cli" in capsys.readouterr().out
    assert kept_selection(tmp_path, "m", old, run_selection(tmp_path)) == old and capsys.readouterr().out == ""


def test_remap_runs_the_mutants_no_test_reached_and_keeps_every_other_verdict(tmp_path):
    """remap: mutants mutmut found no test for (33) become not run, other verdicts stay, and the test map is
    dropped so that mutmut maps the tests written since."""
    from mutate import exit_codes, meta_path, remap

    meta = meta_path(tmp_path, "m")
    meta.parent.mkdir(parents=True)
    codes = {"m.f__mutmut_1": 33, "m.f__mutmut_2": 1, "m.f__mutmut_3": 0, "m.g__mutmut_1": 33, "m.g__mutmut_2": None}
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    (tmp_path / "mutants" / "mutmut-stats.json").write_text("{}")
    assert remap(tmp_path, "m") == 2
    assert exit_codes(meta) == codes | {"m.f__mutmut_1": None, "m.g__mutmut_1": None}
    assert not (tmp_path / "mutants" / "mutmut-stats.json").exists()


def test_each_mutmut_run_has_a_temp_folder_of_its_own_emptied_when_it_ends(tmp_path, monkeypatch):
    """mutmut's children leave their pytest base-temp folders behind: a run's TMPDIR is a folder beside the copy,
    emptied of a previous run's leftovers before it starts and removed when it ends, even by an error."""
    import mutate

    dest = tmp_path / "m"
    leftover = tmp_path / "m.tmp" / "pytest-of-someone"
    leftover.mkdir(parents=True)
    seen = []

    def run(dest_, env, *args):
        folder = Path(env["TMPDIR"])
        seen.append((folder, sorted(folder.iterdir())))
        (folder / "pytest-of-someone").mkdir()
        if len(seen) == 2:
            raise KeyboardInterrupt
        return 1.5
    monkeypatch.setattr(mutate, "_run_mutmut", run)
    assert mutate.run_mutmut(dest, 10, 10, 1) == 1.5
    assert seen == [(tmp_path / "m.tmp", [])] and not (tmp_path / "m.tmp").exists()
    with pytest.raises(KeyboardInterrupt):
        mutate.run_mutmut(dest, 10, 10, 1)
    assert not (tmp_path / "m.tmp").exists()
