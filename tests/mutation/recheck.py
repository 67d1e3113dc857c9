"""Re-check a module's surviving mutants against test files, one pytest run per mutant, and record "after".

    python tests/mutation/recheck.py MODULE --tests test_new_a [test_new_b ...] [-k EXPR] [--record]

Runs in the module's work copy, .mutation/MODULE/mutants/ (made by its mutation run, run.sh): the test files
are copied in, pass once unmutated, then run once per mutant that survived there (mutmut's verdicts in the
copy) with mutmut's MUTANT_UNDER_TEST set to it (no test-to-function map: each file runs whole). Faster than
a mutmut re-run where only a few survivors are left, and it checks the very mutants that survived, on the
source they were made from. A test of behaviour the source gained since (a fix) fails unmutated there: leave
it out with -k, or re-run the module with run.sh instead. With --record each killed survivor is marked killed
in the copy and the copy's verdicts become the module's "after" phase. Survivors listed in equivalent.toml
are not re-run (they stay survivors, counted as equivalent). --unreached also checks the mutants mutmut found
no test for: a copy keeps the test selection it first ran with, which may predate the tests that reach them
(those not killed stay unreached).
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scores  # noqa: E402
from mutate import NO_TESTS, SURVIVED, exit_codes, meta_path, set_exit_codes  # noqa: E402

KILLED = 1  # mutmut's exit code for a mutant a test failed on


def pytest_args(tests: list[str], k: str | None) -> list[str]:
    args = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *(f"tests/{t}.py" for t in tests)]
    return args + (["-k", k] if k else [])


def recheck(module: str, tests: list[str], k: str | None = None, jobs: int = 2,
            unreached: bool = False) -> dict[str, bool]:
    """Survivor name (other than the listed equivalents) -> whether the tests kill it (fail with it in place)."""
    copy = scores.REPO / ".mutation" / module / "mutants"
    if not copy.is_dir():
        sys.exit(f"error: no work copy {copy.parent.name} under .mutation/: run tests/mutation/run.sh {module} first")
    for t in tests:
        shutil.copy(scores.REPO / "tests" / f"{t}.py", copy / "tests" / f"{t}.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    args = pytest_args(tests, k)
    clean = subprocess.run(args, cwd=copy, env=env | {"MUTANT_UNDER_TEST": ""}, capture_output=True, text=True)
    if clean.returncode != 0:
        print(clean.stdout[-3000:], file=sys.stderr)
        sys.exit(f"error: {' '.join(tests)} fail on {module}'s unmutated copy: leave those tests out with -k, "
                 f"or re-run the module (run.sh) if its source changed since")

    def check(name: str) -> bool:
        run = subprocess.run(args, cwd=copy, env=env | {"MUTANT_UNDER_TEST": name}, capture_output=True, text=True)
        print(f"{'killed  ' if run.returncode else 'survived'} {name}", flush=True)
        return run.returncode != 0

    # listed equivalents survive by their reason: not re-run
    equivalent = scores.equivalents()
    names = [name for name in survivors(copy.parent, module, unreached) if name not in equivalent]
    with ThreadPoolExecutor(jobs) as pool:
        return dict(zip(names, pool.map(check, names)))


def survivors(dest: Path, module: str, unreached: bool = False) -> list[str]:
    """The mutants that survived in the work copy `dest` (mutmut's verdicts), and with `unreached` those no
    test reached, sorted."""
    wanted = {SURVIVED, NO_TESTS} if unreached else {SURVIVED}
    return sorted(name for name, code in exit_codes(meta_path(dest, module)).items() if code in wanted)


def mark_killed(dest: Path, module: str, killed: dict[str, bool]) -> None:
    """Write each killed survivor's verdict into the copy, as mutmut would (a later mutmut run keeps it)."""
    set_exit_codes(meta_path(dest, module), {name: KILLED for name, dead in killed.items() if dead})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module")
    parser.add_argument("--tests", nargs="+", required=True, metavar="STEM", help="test files, e.g. test_losses")
    parser.add_argument("-k", default=None, help="pytest -k expression to select tests")
    parser.add_argument("--record", action="store_true", help="store the verdicts as the module's after phase")
    parser.add_argument("--jobs", type=int, default=2, help="mutants checked at once (default 2)")
    parser.add_argument("--unreached", action="store_true",
                        help="also the mutants no test reached in the copy's own selection")
    args = parser.parse_args(argv)
    start = time.monotonic()
    killed = recheck(args.module, args.tests, args.k, args.jobs, args.unreached)
    print(f"recheck: {args.module}: {sum(killed.values())} of {len(killed)} survivors killed by {' '.join(args.tests)}")
    if args.record:
        dest = scores.REPO / ".mutation" / args.module
        mark_killed(dest, args.module, killed)
        (dest / "tree-commit").write_text(scores.commit())
        scores.record(args.module, "after", dest, time.monotonic() - start)
        scores.write_progress()


if __name__ == "__main__":
    main()
