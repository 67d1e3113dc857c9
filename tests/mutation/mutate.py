"""Mutation-test modules one at a time, each time-boxed, and record the scores (called by run.sh).

    python tests/mutation/mutate.py [--max-seconds S] [--phase before|after] MODULE|PACKAGE ...
    python tests/mutation/mutate.py MODULE --functions f Class.method   # only these functions' mutants
    python tests/mutation/mutate.py --list

Each module gets its own work copy, .mutation/<module>/ (git-ignored), whose [tool.mutmut] mutates that
module only and runs the test files modules.toml maps it to; mutmut keeps every verdict in that copy's
mutants/, so a run stopped by --max-seconds (SIGINT, as Ctrl-C) resumes where it stopped; the first run
of a module also maps its tests to functions (mutmut's stats, kept for the next runs; not in the box).
A copy that holds verdicts keeps the test selection it was first run with (mutmut drops every verdict when
the selection changes): recheck.py runs its survivors against the files mapped since. Scores go to scores.json and
progress.md (scores.py).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scores  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORK = REPO / ".mutation"
GRACE_SECONDS = 120  # after SIGINT, mutmut stops its workers and saves; then it is killed


def load_map() -> dict:
    """modules.toml: {"slow": [node ids], "keep_by_module": {module: [node ids]}, "frames": [node ids],
    "tests": {module: [test file stems]}}."""
    return tomllib.loads((HERE / "modules.toml").read_text(encoding="utf-8"))


def module_path(module: str) -> str:
    """The file of a dotted module name: models.lora -> models/lora.py, models -> models/__init__.py."""
    stem = module.replace(".", "/")
    return f"{stem}.py" if (REPO / f"{stem}.py").is_file() else f"{stem}/__init__.py"


def expand(names: list[str], known: list[str]) -> list[str]:
    """Module names as given, a package name standing for its mapped modules; unknown names exit 2."""
    out = []
    for name in names:
        matches = [m for m in known if m == name or m.startswith(name + ".")]
        if not matches:
            print(f"error: no module {name!r} in tests/mutation/modules.toml; add it there with its test files "
                  f"(known: {', '.join(known)})", file=sys.stderr)
            sys.exit(2)
        out += [m for m in matches if m not in out]
    return out


def selection(module: str, mapping: dict, tests: list[str]) -> list[str]:
    """pytest's selection for `module`'s mutants: the test files `tests` (stems), less modules.toml's slow
    tests (node-id prefixes, pytest --deselect) other than those the module keeps, and less its tests of
    stack frames (which mutmut's trampolines add to)."""
    keep = set(mapping.get("keep_by_module", {}).get(module, []))
    left_out = [t for t in mapping["slow"] if t not in keep] + mapping.get("frames", [])
    return [f"tests/{t}.py" for t in tests] + [a for t in left_out for a in ("--deselect", t)]


def run_selection(dest: Path) -> list[str] | None:
    """The test selection in the copy's [tool.mutmut] (None before its first run)."""
    pyproject = dest / "pyproject.toml"
    if not pyproject.is_file():
        return None
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["mutmut"].get("pytest_add_cli_args_test_selection")


def kept_selection(dest: Path, module: str, wanted: list[str], previous: list[str] | None) -> list[str]:
    """`wanted`, unless the copy holds verdicts: then `previous`, the selection they were reached with (said if
    it differs)."""
    if previous is None or all(code is NOT_RUN for code in exit_codes(meta_path(dest, module)).values()):
        return wanted
    if previous != wanted:
        print(f"mutation: {module}: its copy keeps the test selection it has verdicts from: {' '.join(previous)}; "
              f"python tests/mutation/recheck.py checks the survivors against the others", flush=True)
    return previous


def write_config(dest: Path, module: str, chosen: list[str]) -> None:
    """Rewrite the copy's [tool.mutmut]: mutate `module` only, run the tests of the selection `chosen`."""
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    settings = tomllib.loads(text)["tool"]["mutmut"]
    settings["only_mutate"] = [module_path(module)]
    settings["pytest_add_cli_args_test_selection"] = chosen
    head, _, rest = text.partition("[tool.mutmut]\n")
    tail = rest[rest.find("\n[") + 1:] if "\n[" in rest else ""
    body = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())  # JSON strings are TOML strings
    pyproject.write_text(f"{head}[tool.mutmut]\n{body}\n{tail}", encoding="utf-8")


def prepare(module: str, mapping: dict, tests: list[str]) -> Path:
    """Refresh the module's work copy from the working tree and run `tests` there; return its path.
    A copy with verdicts keeps the test selection it was run with, whatever `tests` says (see the docstring)."""
    import unwrap  # libcst, from the mutation extra: the setup's own test runs without it

    dest = WORK / module
    previous = run_selection(dest)
    chosen = kept_selection(dest, module, selection(module, mapping, tests), previous)
    unwrap.main(str(dest))
    shared = REPO.parent / "shared"
    if shared.is_dir() and not (dest / "shared").exists():
        (dest / "shared").symlink_to(shared)  # tests find reference data at <repo>/../shared from mutants/tests
    write_config(dest, module, chosen)
    (dest / "tree-commit").write_text(scores.commit())  # the scores name the tree the run used
    # mutmut keeps its map of tests to functions between runs; a map made for another selection would
    # make it reset every verdict, so it maps anew then
    if previous != chosen:
        (dest / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    return dest


def mutant_globs(module: str, functions: list[str]) -> list[str]:
    """mutmut's names for the mutants of `functions` in `module`: f -> module.x_f__mutmut_*,
    Class.method -> module.xǁClassǁmethod__mutmut_*."""
    def glob(function: str) -> str:
        owner, _, name = function.rpartition(".")
        return f"{module}.{f'xǁ{owner}ǁ{name}' if owner else f'x_{name}'}__mutmut_*"
    return [glob(f) for f in functions]


def run_mutmut(dest: Path, max_seconds: float, max_setup_seconds: float, children: int,
               only: list[str] = ()) -> float:
    """Run mutmut in `dest`: its setup (mutants, mapping tests to functions, a clean run) for at most
    `max_setup_seconds`, then the mutants (those matching `only`, mutmut's name globs, if given) for at
    most `max_seconds`, stopping cleanly (SIGINT, as Ctrl-C) so that every verdict reached is kept.
    Returns the seconds spent on mutants.

    Each mutant's pytest session makes a base temp folder that pytest never deletes (mutmut's children exit
    without running atexit, so its lock file stays): a long run filled tens of GB of the system's temp folder.
    The run gets a temp folder of its own, emptied when it ends."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy must be what tests import
    env["OMP_NUM_THREADS"] = "1"
    tmp = dest.parent / f"{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    env["TMPDIR"] = str(tmp)
    try:
        return _run_mutmut(dest, env, max_seconds, max_setup_seconds, children, only)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_mutmut(dest: Path, env: dict, max_seconds: float, max_setup_seconds: float, children: int,
                only: list[str]) -> float:
    proc = subprocess.Popen(["mutmut", "run", "--max-children", str(children), *only], cwd=dest, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=_child_setup)
    testing = threading.Event()
    threading.Thread(target=_echo, args=(proc.stdout, testing), daemon=True).start()
    start = time.monotonic()
    while proc.poll() is None and not testing.wait(1):
        if time.monotonic() - start > max_setup_seconds:
            print(f"mutation: {dest.name}: setup took over {max_setup_seconds:.0f} s, stopping", flush=True)
            _stop(proc)
            return 0.0
    start = time.monotonic()
    try:
        proc.wait(timeout=max_seconds)
    except subprocess.TimeoutExpired:
        print(f"mutation: {dest.name}: {max_seconds:.0f} s reached, stopping (results so far are kept)", flush=True)
        _stop(proc)
    return time.monotonic() - start


def _child_setup() -> None:
    """Niceness for mutmut, and SIGINT back to its default: a shell's background job ignores it, and a
    Python started so never turns it into KeyboardInterrupt, mutmut's cue to stop and save."""
    os.nice(int(os.environ.get("NICE", "15")))
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _echo(stream, testing: threading.Event) -> None:
    """Copy mutmut's output through; set `testing` once it starts on the mutants."""
    seen = b""
    while chunk := stream.read1(4096):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        seen = (seen + chunk)[-200:]
        if b"Running mutation testing" in seen:
            testing.set()


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


SURVIVED, NOT_RUN, NO_TESTS = 0, None, 33  # mutmut's exit codes in its .meta files


def meta_path(dest: Path, module: str) -> Path:
    """mutmut's verdicts for `module` in the work copy `dest`."""
    return dest / "mutants" / f"{module_path(module)}.meta"


def exit_codes(meta: Path) -> dict:
    """Mutant name -> mutmut's exit code (None: not run); empty when the copy has no mutants yet."""
    return json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"] if meta.exists() else {}


def function_hashes(dest: Path, module: str) -> dict[str, str]:
    """mutmut's hash of each function's source, by mangled name (x_f, xǁClassǁmethod); empty before a run."""
    meta = meta_path(dest, module)
    return json.loads(meta.read_text(encoding="utf-8"))["hash_by_function_name"] if meta.exists() else {}


def stale_equivalents(module: str, before: dict[str, str], after: dict[str, str], equivalent: dict) -> list[str]:
    """Listed equivalents of `module` in functions whose source changed between two runs: mutmut numbers a
    changed function's mutants afresh, so those names may now stand for other changes."""
    changed = {f for f, h in after.items() if f in before and before[f] != h}
    prefix = module + "."
    return sorted(name for name in equivalent
                  if name.startswith(prefix) and name[len(prefix):].rpartition("__mutmut_")[0] in changed)


def drop_equivalents(names: list[str]) -> None:
    """Remove `names` from equivalent.toml (git keeps their reasons), so that they count as survivors again."""
    path = HERE / "equivalent.toml"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(l for l in lines if l.partition(" = ")[0].strip('"') not in names), encoding="utf-8")


def remap(dest: Path, module: str) -> int:
    """Make mutmut map tests to functions again on the copy's next run, and run the mutants it found no test
    for (tests written since may reach them); the other verdicts stay. Returns how many were reset."""
    meta = meta_path(dest, module)
    unreached = [name for name, code in exit_codes(meta).items() if code == NO_TESTS]
    if unreached:
        set_exit_codes(meta, dict.fromkeys(unreached, NOT_RUN))
    (dest / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    return len(unreached)


def set_exit_codes(meta: Path, codes: dict) -> None:
    data = json.loads(meta.read_text(encoding="utf-8"))
    data["exit_code_by_key"].update(codes)
    meta.write_text(json.dumps(data), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="dotted module names or packages from modules.toml")
    parser.add_argument("--max-seconds", type=float, default=900,
                        help="time box for each module's mutants (default 900)")
    parser.add_argument("--max-setup-seconds", type=float, default=1800,
                        help="time box for each module's setup: mutmut maps tests to functions (default 1800)")
    parser.add_argument("--phase", choices=("before", "after"), default="before",
                        help="where the scores go: before (the tests as they were) or after (tests added since)")
    parser.add_argument("--functions", nargs="+", default=[], metavar="NAME",
                        help="run only these functions' mutants (f or Class.method; one module)")
    parser.add_argument("--remap", action="store_true",
                        help="map tests to functions anew first: mutants no test reached before are run")
    parser.add_argument("--list", action="store_true", help="print each module with its test files")
    args = parser.parse_args(argv)
    mapping = load_map()
    known = list(mapping["tests"])
    if args.list:
        for module in known:
            print(f"{module}: {' '.join(mapping['tests'][module])}")
        return
    if not args.modules:
        parser.error("name at least one module (--list shows them)")
    modules = expand(args.modules, known)
    if args.functions and len(modules) != 1:
        parser.error("--functions needs exactly one module")
    children = int(os.environ.get("MAX_CHILDREN", "1"))
    for module in modules:
        dest = prepare(module, mapping, mapping["tests"][module])
        if args.remap:
            print(f"mutation: {module}: tests mapped anew; {remap(dest, module)} mutants without a test before will run",
                  flush=True)
        hashes = function_hashes(dest, module)
        seconds = run_mutmut(dest, args.max_seconds, args.max_setup_seconds, children,
                             mutant_globs(module, args.functions))
        stale = stale_equivalents(module, hashes, function_hashes(dest, module), scores.equivalents())
        if stale:
            drop_equivalents(stale)
            print(f"mutation: {module}: {len(stale)} listed equivalents are in functions whose source changed, and "
                  f"their mutants were renumbered: removed from equivalent.toml; judge them again: {' '.join(stale)}")
        scores.record(module, args.phase, dest, seconds)
        print(f"mutation: {module}: {scores.summary(module, args.phase)}", flush=True)
    scores.write_progress()


if __name__ == "__main__":
    main()
