"""How every command ends on a user error: one line on stderr and an exit status (2 bad input, 1 the rest)."""

import sys
from typing import Callable, NoReturn


def exit_with(message: str, code: int) -> NoReturn:
    """Print `message` as one line on stderr and exit with `code`."""
    print(message, file=sys.stderr)
    sys.exit(code)


def run_or_exit(fn: Callable[[], object], codes: dict[type | tuple[type, ...], int]) -> None:
    """Run `fn`; an exception listed in `codes` (first match wins) becomes "error: ..." and that exit status."""
    try:
        fn()
    except tuple(t for key in codes for t in (key if isinstance(key, tuple) else (key,))) as e:
        code = next(c for key, c in codes.items() if isinstance(e, key))
        exit_with(f"error: {e}", code)
