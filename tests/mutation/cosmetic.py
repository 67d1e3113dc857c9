"""List the survivors whose only change is argparse's documentation text as equivalent mutants.

    python tests/mutation/cosmetic.py MODULE ...

A mutant that only rewrites, or drops, the help=, metavar= or description= text of an argparse call changes
what --help prints and nothing the program computes. For each survivor of MODULE's latest phase (read from
its work copy .mutation/MODULE/ with `mutmut show`), the removed and added lines are compared with those
texts taken out; where they are then the same, the mutant is added to equivalent.toml with that reason.
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scores  # noqa: E402

DOC_TEXT = re.compile(r"""\b(help|metavar|description)=(None|f?"(?:[^"\\]|\\.)*"|f?'(?:[^'\\]|\\.)*')""")
REASON = "argparse {} text only: changes what --help prints, nothing the program computes"


def doc_only(diff: str) -> str | None:
    """The keyword (help, metavar, description) if the diff changes only argparse documentation text."""
    removed = "".join(line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---"))
    added = "".join(line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
    if not removed or removed == added:
        return None
    before, after = set(DOC_TEXT.findall(removed)), set(DOC_TEXT.findall(added))
    changed = {keyword for keyword, _ in before ^ after}

    def strip(text: str) -> str:
        return re.sub(r"[\s,]", "", DOC_TEXT.sub("", text))
    return "/".join(sorted(changed)) if changed and strip(removed) == strip(added) else None


def main(modules: list[str]) -> None:
    equivalent = scores.equivalents()
    new = {}
    for module in modules:
        row = scores.load().get(module, {})
        latest = row.get("after") or row.get("before") or {}
        dest = scores.REPO / ".mutation" / module
        for name in latest.get("survivors", []):
            if name in equivalent:
                continue
            diff = subprocess.run(["mutmut", "show", name], cwd=dest, capture_output=True, text=True).stdout
            kind = doc_only(diff)
            if kind:
                new[name] = REASON.format(kind)
    if new:
        with open(scores.EQUIVALENT, "a", encoding="utf-8") as f:
            f.writelines(f'"{name}" = "{reason}"\n' for name, reason in sorted(new.items()))
        tomllib.loads(scores.EQUIVALENT.read_text(encoding="utf-8"))  # still valid TOML
    print(f"cosmetic: {len(new)} survivors listed as equivalent (argparse documentation text)")
    scores.write_progress()


if __name__ == "__main__":
    main(sys.argv[1:])
