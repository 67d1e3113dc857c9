#!/usr/bin/env bash
# Mutation testing with mutmut, module by module (a developer's check, not part of CI).
#
#     pip install -e ".[test,mutation]"
#     tests/mutation/run.sh --list                               # the modules and the test files of each
#     tests/mutation/run.sh fileio run_files --max-seconds 600   # each module time-boxed (default 900 s)
#     tests/mutation/run.sh generators                           # a package: each of its mapped modules
#     tests/mutation/run.sh --phase after tid                    # scores go to "after" (tests added since)
#     tests/mutation/run.sh generic_runner --functions Trainer.train_step   # only these functions' mutants
#     tests/mutation/run.sh --phase after --remap visualizations.attention   # tests mapped anew: unreached mutants run
#     MAX_CHILDREN=2 NICE=10 tests/mutation/run.sh tid           # parallel workers (default 1), niceness (15)
#
# Modules and their tests are mapped in tests/mutation/modules.toml; shared mutmut settings are in
# pyproject.toml [tool.mutmut]. Each module runs in its own copy, .mutation/<module>/ (git-ignored), in
# which no-grad decorators are written as `with` blocks (unwrap.py): mutmut leaves decorated functions
# alone. A time-boxed run stops cleanly and keeps its verdicts; running the module again continues (on the
# test files the copy was first run with: mutmut would drop every verdict if the list changed).
# Scores go to tests/mutation/scores.json and progress.md; list equivalent mutants, each with its reason,
# in tests/mutation/equivalent.toml, then `python tests/mutation/scores.py` rewrites progress.md (a re-run
# drops the listed equivalents of a function whose source changed: mutmut numbers its mutants afresh);
# `python tests/mutation/cosmetic.py MODULE` lists survivors that only change argparse help text there.
# `python tests/mutation/recheck.py MODULE --tests STEM ... --record` re-checks the copy's survivors against
# new test files, one pytest run per mutant in the module's work copy, and records the after phase (with
# --unreached also the mutants no test reached in the copy's own, older, test selection).
# From .mutation/<module>: `mutmut results` lists the survivors, `mutmut show NAME` shows one change.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -c "import mutmut" 2>/dev/null || { echo "error: mutmut is not installed: pip install -e \".[mutation]\"" >&2; exit 2; }
exec python tests/mutation/mutate.py "$@"
