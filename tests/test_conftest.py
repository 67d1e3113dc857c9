"""The shared-data fixtures: a missing reference file skips a test locally and fails it under CI."""

import pytest

import conftest


@pytest.mark.parametrize("ci, outcome", [(None, pytest.skip.Exception), ("", pytest.skip.Exception),
                                         ("false", pytest.skip.Exception), ("true", pytest.fail.Exception),
                                         ("1", pytest.fail.Exception)])
def test_missing_shared_data_skips_locally_and_fails_in_ci(tmp_path, monkeypatch, ci, outcome):
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "no-shared-data")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    # BaseException: a skip where a failure is due must fail this test, not skip it
    with pytest.raises(BaseException, match="tokenizers/llama/tokenizer.model") as raised:
        conftest._shared("tokenizers/llama/tokenizer.model")
    assert type(raised.value) is outcome


def test_present_shared_data_is_returned(tmp_path, monkeypatch):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.setenv("CI", "true")
    assert conftest._shared("text/a.txt") == tmp_path / "text" / "a.txt"
