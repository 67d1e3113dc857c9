"""cli: a user error ends as one "error: ..." line on stderr and the exit status its kind is mapped to."""

import pytest

from cli import exit_with, run_or_exit


def _raises(e):
    def fn():
        raise e
    return fn


def test_exit_with_prints_one_line_and_exits_with_the_code(capsys):
    with pytest.raises(SystemExit) as stop:
        exit_with("error: no such file (pass --ckpt PATH)", 3)
    assert stop.value.code == 3
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", "error: no such file (pass --ckpt PATH)\n")


@pytest.mark.parametrize("error, code", [(KeyError("k"), 2), (ValueError("bad value"), 2), (FileNotFoundError("gone"), 1),
                                         (RuntimeError("late"), 5)])
def test_the_first_listed_kind_of_the_error_gives_the_status(capsys, error, code):
    codes = {(KeyError, ValueError): 2, OSError: 1, Exception: 5}
    with pytest.raises(SystemExit) as stop:
        run_or_exit(_raises(error), codes)
    assert stop.value.code == code
    assert capsys.readouterr().err == f"error: {error}\n"


def test_an_error_listed_twice_takes_the_first_code(capsys):
    with pytest.raises(SystemExit) as stop:
        run_or_exit(_raises(FileNotFoundError("x")), {FileNotFoundError: 2, OSError: 1})
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        run_or_exit(_raises(FileNotFoundError("x")), {OSError: 1, FileNotFoundError: 2})
    assert stop.value.code == 1


def test_success_returns_and_unlisted_errors_propagate(capsys):
    ran = []
    assert run_or_exit(lambda: ran.append(1), {ValueError: 2}) is None and ran == [1]
    with pytest.raises(TypeError, match="not listed"):
        run_or_exit(_raises(TypeError("not listed")), {ValueError: 2})
    assert capsys.readouterr().err == ""
