"""Mutation scores per module: scores.json (written after each run) and the progress.md table made from it.

    python tests/mutation/scores.py                          # rewrite progress.md from scores.json
    python tests/mutation/scores.py --record MODULE --phase before   # re-read a work copy's verdicts

A module's verdicts are read from its work copy, .mutation/<module>/mutants/<file>.meta (mutmut's). A
survivor named in equivalent.toml (mutant name = reason) counts as equivalent, not as a survivor left.
"""

import argparse
import fcntl
import json
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCORES = HERE / "scores.json"
PROGRESS = HERE / "progress.md"
EQUIVALENT = HERE / "equivalent.toml"
# mutmut's verdicts, grouped into the columns of the table
COLUMN = {"killed": "killed", "caught by type check": "killed", "survived": "survived", "timeout": "timeouts",
          "no tests": "no tests", "not checked": "not run", "check was interrupted by user": "not run"}
COLUMNS = ("mutants", "killed", "survived", "equivalent", "survivors left", "timeouts", "no tests", "not run", "other")


def load() -> dict:
    return json.loads(SCORES.read_text(encoding="utf-8")) if SCORES.exists() else {}


def equivalents() -> dict[str, str]:
    return tomllib.loads(EQUIVALENT.read_text(encoding="utf-8")) if EQUIVALENT.exists() else {}


def verdicts(dest: Path, module: str) -> dict[str, str]:
    """Mutant name -> mutmut's verdict, from the work copy `dest` of `module`."""
    from mutmut.stats import status_by_exit_code  # the mutation extra; only needed to read a run

    from mutate import module_path
    meta = dest / "mutants" / f"{module_path(module)}.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def counts(found: dict[str, str], equivalent: dict[str, str]) -> dict:
    """The table's columns from mutant -> verdict; survivors are listed by name."""
    by_column = Counter(COLUMN.get(v, "other") for v in found.values())
    survivors = sorted(name for name, v in found.items() if v == "survived")
    n_equivalent = sum(name in equivalent for name in survivors)
    row = {c: by_column.get(c, 0) for c in COLUMNS}
    row.update({"mutants": len(found), "equivalent": n_equivalent, "survivors left": len(survivors) - n_equivalent})
    return row | {"survivors": survivors}


def commit() -> str:
    """HEAD's short hash, with "+changes" when the working tree (other than this folder) differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!tests/mutation"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+changes" if dirty else "")


def record(module: str, phase: str, dest: Path, seconds: float) -> None:
    """Store `module`'s verdicts in `dest` as its `phase` scores."""
    row = counts(verdicts(dest, module), equivalents())
    tree = dest / "tree-commit"
    row |= {"seconds": round(seconds), "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "commit": tree.read_text() if tree.exists() else commit()}
    store(module, phase, row)


def store(module: str, phase: str, row: dict) -> None:
    """Write `row` as `module`'s `phase` scores in scores.json (two runs may finish at once: a lock)."""
    (REPO / ".mutation").mkdir(exist_ok=True)
    with open(REPO / ".mutation" / "scores.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        all_scores = load()
        all_scores.setdefault(module, {})[phase] = row
        tmp = SCORES.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(all_scores, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(SCORES)


def survivors(module: str, phase: str) -> list[str]:
    return load().get(module, {}).get(phase, {}).get("survivors", [])


def summary(module: str, phase: str) -> str:
    row = load()[module][phase]
    return ", ".join(f"{row[c]} {c}" for c in COLUMNS if row[c] or c in ("mutants", "killed", "survived"))


def progress_markdown(all_scores: dict, equivalent: dict[str, str], modules: list[str]) -> str:
    """progress.md: the scores table, the modules not run yet, the equivalent mutants, the survivors left."""
    lines = ["# Mutation testing: progress", "",
             "Written by `python tests/mutation/scores.py` from scores.json and equivalent.toml (do not edit).",
             "Run a module with `tests/mutation/run.sh MODULE --max-seconds 900`; `before` is the run on the",
             "tests as they were, `after` the module's verdicts once tests were added: its survivors re-checked",
             "against the new test files (recheck.py), and mutants a time box had not reached run since",
             "(`run.sh --phase after`). `not run` counts mutants no run reached; `commit` is the tree last used.", "",
             "## Scores", "",
             "| module | phase | " + " | ".join(COLUMNS) + " | minutes | date (UTC) | commit |",
             "|" + " --- |" * (len(COLUMNS) + 5)]
    for module in sorted(all_scores):
        for phase in ("before", "after"):
            row = all_scores[module].get(phase)
            if row:  # equivalents listed since the run count as such
                n_equivalent = sum(name in equivalent for name in row["survivors"])
                row = row | {"equivalent": n_equivalent, "survivors left": len(row["survivors"]) - n_equivalent}
                cells = [str(row[c]) for c in COLUMNS] + [f"{row['seconds'] / 60:.0f}", row["date"], row["commit"]]
                lines.append(f"| {module} | {phase} | " + " | ".join(cells) + " |")
    unrun = [m for m in modules if m not in all_scores]
    lines += ["", "## Not run yet", "", ", ".join(unrun) if unrun else "(none)", "",
              "## Equivalent mutants", ""]
    lines += [f"- `{name}`: {reason}" for name, reason in sorted(equivalent.items())] or ["(none listed)"]
    lines += ["", "## Survivors left (latest phase; `mutmut show NAME` in .mutation/MODULE)", ""]
    for module in sorted(all_scores):
        row = all_scores[module].get("after") or all_scores[module]["before"]
        left = [name for name in row["survivors"] if name not in equivalent]
        if left:
            lines.append(f"- {module}: " + ", ".join(f"`{name}`" for name in left))
    return "\n".join(lines) + "\n"


def write_progress() -> None:
    modules = list(tomllib.loads((HERE / "modules.toml").read_text(encoding="utf-8"))["tests"])
    PROGRESS.write_text(progress_markdown(load(), equivalents(), modules), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", metavar="MODULE", help="re-read MODULE's verdicts from its work copy")
    parser.add_argument("--phase", choices=("before", "after"), default="before")
    args = parser.parse_args(argv)
    if args.record:
        dest = REPO / ".mutation" / args.record
        if not dest.is_dir():
            sys.exit(f"error: no work copy {dest.name} under .mutation/; run tests/mutation/run.sh {args.record} first")
        record(args.record, args.phase, dest, load().get(args.record, {}).get(args.phase, {}).get("seconds", 0))
    write_progress()


if __name__ == "__main__":
    main()
