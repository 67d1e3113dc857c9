"""Copy the repo to DEST with every @torch.no_grad() / @torch.inference_mode() decorator written as a
`with` block around the function body (same behaviour), so that mutmut, which leaves decorated functions
alone, mutates them too.

    python tests/mutation/unwrap.py DEST
"""

import shutil
import sys
from pathlib import Path

import libcst as cst

REPO = Path(__file__).resolve().parents[2]
SKIP = (".git", ".venv", "mutants", ".mutation", "data", "checkpoints", "logs", "__pycache__", "*.egg-info",
        ".pytest_cache", "wandb", "results")
GRAD_MODES = ("no_grad", "inference_mode")


class Unwrap(cst.CSTTransformer):
    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        keep, modes = [], []
        for d in updated.decorators:
            call = d.decorator
            if (isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute)
                    and isinstance(call.func.value, cst.Name) and call.func.value.value == "torch"
                    and call.func.attr.value in GRAD_MODES):
                modes.append(call)
            else:
                keep.append(d)
        if not modes:
            return updated
        body = updated.body
        for call in modes:
            body = cst.IndentedBlock(body=[cst.With(items=[cst.WithItem(call)], body=body)])
        return updated.with_changes(decorators=keep, body=body)


def main(dest: str) -> None:
    dest = Path(dest)  # refreshed in place: mutmut's results in DEST/mutants are kept for the next run
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*SKIP), dirs_exist_ok=True)
    for path in dest.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        if "@torch." in source:
            path.write_text(cst.parse_module(source).visit(Unwrap()).code, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
