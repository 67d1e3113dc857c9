"""dataset_definitions.sources and config: documents exactly as a hand split of the bytes gives them, the rows
skipped by reason, and every config range check at its edge."""

import json
from collections import Counter

import pytest

from dataset_definitions.config import DataConfig, TokenizerConfig
from dataset_definitions.sources import BUILTIN_TRAIN_ROWS, DataError, _builtin_total, iter_records, iter_rows
from dataset_definitions.stories import stories


def test_a_delimiter_across_the_read_boundary_splits_like_bytes_split(tmp_path):
    sep = "<|endoftext|>"
    docs = ["a" * ((1 << 20) - 5), "second ünïcode", "", "third", "  ", ""]  # the first separator straddles 1 MB
    data = sep.join(docs).encode("utf-8") + b"\xff\xfe bad" + sep.encode() + b"last" + sep.encode()
    (tmp_path / "t.txt").write_bytes(data)
    skipped = Counter()
    rows = list(iter_rows(DataConfig(source="text", path=str(tmp_path / "t.txt"), delimiter=sep), skipped))
    reference = []
    for part in data.split(sep.encode())[:-1]:  # the trailing separator ends "last"; no empty document after it
        try:
            text = part.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue
        if text:
            reference.append(text)
    assert rows == reference and rows[-1] == "last"
    assert skipped == Counter({"invalid UTF-8": 1, "empty or not text": 2})


def test_lines_are_documents_and_a_limit_stops_early(tmp_path):
    (tmp_path / "t.txt").write_text(" one \n\ntwo\nthree", encoding="utf-8")
    cfg = DataConfig(source="text", path=str(tmp_path / "t.txt"))
    assert list(iter_rows(cfg, Counter())) == ["one", "two", "three"]
    assert list(iter_rows(cfg, Counter(), limit=2)) == ["one", "two"]


def test_jsonl_rows_skip_bad_lines_by_reason(tmp_path):
    lines = [json.dumps({"body": "one", "x": 1}), "", "{not json", json.dumps([1, 2]), json.dumps({"other": "no body"}),
             json.dumps({"body": 7}), json.dumps({"body": "two"})]
    (tmp_path / "d.jsonl").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")
    skipped = Counter()
    cfg = DataConfig(source="jsonl", path=str(tmp_path / "d.jsonl"), text_field="body")
    assert list(iter_rows(cfg, skipped)) == ["one", "two"]
    assert skipped == Counter({"invalid JSON": 2, "empty or not text": 2, "invalid UTF-8": 1})
    records = list(iter_records(cfg, Counter()))
    assert records[0] == {"body": "one", "x": 1} and len(records) == 4


def test_a_wrong_field_name_is_named_on_the_first_record(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"story": "x", "id": 1}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl has no field 'text'; its fields are \['id', 'story'\]"):
        list(iter_rows(DataConfig(source="jsonl", path=str(tmp_path / "d.jsonl")), Counter()))


def test_missing_files_and_record_sources_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="data file .*nope.txt not found"):
        list(iter_rows(DataConfig(source="text", path=str(tmp_path / "nope.txt")), Counter()))
    with pytest.raises(DataError, match="records need data.source=jsonl or hf, got text"):
        list(iter_records(DataConfig(source="text", path="x"), Counter()))


def test_builtin_rows_are_the_corpus_in_order():
    cfg = DataConfig(source="builtin", seed=3, train_rows=4, val_rows=2, heldout_rows=1)
    assert _builtin_total(cfg) == 7 and _builtin_total(DataConfig(val_rows=2, heldout_rows=1)) == 3 + BUILTIN_TRAIN_ROWS
    assert list(iter_rows(cfg, Counter())) == [s.strip() for s in stories(7, seed=3)]
    assert list(iter_rows(cfg, Counter(), limit=3)) == [s.strip() for s in stories(3, seed=3)]


@pytest.mark.parametrize("kwargs", [dict(val_rows=0, heldout_rows=0), dict(train_rows=1), dict(stride=1),
                                    dict(dedup_threshold=1.0), dict(dedup_ngram=1), dict(packing="pad"),
                                    dict(source="hf", name="x"), dict(dedup="near")])
def test_data_values_at_the_edge_are_accepted(kwargs):
    DataConfig(**kwargs)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(val_rows=-1), "data.val_rows must be >= 0"), (dict(heldout_rows=-1), "data.heldout_rows must be >= 0"),
    (dict(train_rows=0), "data.train_rows must be positive"), (dict(stride=0), "data.stride must be positive"),
    (dict(dedup_threshold=0.0), r"data.dedup_threshold must be in \(0, 1\]"),
    (dict(dedup_threshold=1.01), "data.dedup_threshold"), (dict(dedup_ngram=0), "data.dedup_ngram must be positive"),
    (dict(packing="stack"), "data.packing: 'stack'"), (dict(dedup="fuzzy"), "data.dedup: 'fuzzy'"),
    (dict(source="jsonl"), "data.source=jsonl needs data.path"), (dict(source="hf"), "data.source=hf needs data.name"),
])
def test_data_values_past_the_edge_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        DataConfig(**kwargs)


def test_tokenizer_values():
    TokenizerConfig(vocab_size=1)
    TokenizerConfig(kind="llama", path="tok.model")
    for kwargs, needle in ((dict(vocab_size=0), "vocab_size must be positive"), (dict(kind="llama"), "needs tokenizer.path"),
                           (dict(kind="chars"), "tokenizer.kind: 'chars'")):
        with pytest.raises(ValueError, match=needle):
            TokenizerConfig(**kwargs)


# ----------------------------------------------------------------------------- Hugging Face datasets, offline

def _hf_json(tmp_path, records) -> DataConfig:
    """An hf source through the `json` builder on a local file (no hub): the user's data.name=json route."""
    path = tmp_path / "hf.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return DataConfig(source="hf", name="json", path=str(path), text_field="body")


def test_an_hf_source_streams_the_field_of_each_record_in_order_and_whole_records_on_request(tmp_path):
    pytest.importorskip("datasets")
    records = [{"body": "  first ", "n": 1}, {"body": "", "n": 2}, {"body": "third", "n": 3}]
    cfg = _hf_json(tmp_path, records)
    skipped = Counter()
    assert list(iter_rows(cfg, skipped)) == ["first", "third"] and skipped == Counter({"empty or not text": 1})
    assert list(iter_records(cfg, Counter())) == records
    with pytest.raises(DataError, match=r"dataset 'json' has no field 'text'; its fields are \['body', 'n'\]"):
        list(iter_rows(DataConfig(source="hf", name="json", path=cfg.path), Counter()))


def test_an_hf_source_that_cannot_load_names_the_dataset_the_split_and_the_offline_ways(tmp_path):
    """A split the dataset lacks (or any loading error): one DataError with the dataset, the split, the
    error's first line, and the local alternatives."""
    pytest.importorskip("datasets")
    cfg = _hf_json(tmp_path, [{"body": "x"}])
    cfg.split = "validation"
    with pytest.raises(DataError) as e:
        list(iter_rows(cfg, Counter()))
    message = str(e.value)
    assert message.startswith("could not load Hugging Face dataset 'json' (split 'validation'): ")
    assert message.endswith("Offline? Point data.name at a local dataset folder, or use data.source=text/jsonl "
                            "with data.path") and "\n" not in message


@pytest.mark.parametrize("error, shown", [(ConnectionError(), "ConnectionError"),
                                          (OSError("first line\nsecond line"), "first line")])
def test_an_hf_loading_error_shows_its_first_line_or_its_type(monkeypatch, error, shown):
    datasets = pytest.importorskip("datasets")
    seen = {}

    def load_dataset(name, config_name, data_files, split, streaming):
        seen.update(name=name, config_name=config_name, data_files=data_files, split=split, streaming=streaming)
        raise error
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = DataConfig(source="hf", name="org/set", config_name="sub", path="*.parquet", split="test")
    with pytest.raises(DataError, match=rf"^could not load Hugging Face dataset 'org/set' \(split 'test'\): {shown}\. "):
        list(iter_records(cfg, Counter()))
    assert seen == {"name": "org/set", "config_name": "sub", "data_files": "*.parquet", "split": "test",
                    "streaming": True}


def test_without_the_datasets_package_an_hf_source_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"data.source=hf needs the `datasets` package: pip install datasets"):
        list(iter_rows(DataConfig(source="hf", name="x"), Counter()))


def test_jsonl_records_go_on_past_blank_bad_and_non_utf8_lines(tmp_path):
    """A blank line, bad JSON or invalid UTF-8 in the middle skips that line only: every later record is read."""
    good = [{"text": f"doc {i}"} for i in range(3)]
    data = (json.dumps(good[0]) + "\n\n   \n").encode() + b"\xff\xfe\n" + (json.dumps(good[1]) + "\n{bad\n").encode() \
        + (json.dumps(good[2]) + "\n").encode()
    (tmp_path / "d.jsonl").write_bytes(data)
    skipped = Counter()
    assert list(iter_records(DataConfig(source="jsonl", path=str(tmp_path / "d.jsonl")), skipped)) == good
    assert skipped == Counter({"invalid UTF-8": 1, "invalid JSON": 1})


def test_every_bad_row_is_counted_and_a_last_document_without_a_separator_is_checked_too(tmp_path):
    """Two invalid-UTF-8 documents count 2, the second being the last one, with no newline after it; two lines
    of bad JSON count 2."""
    (tmp_path / "t.txt").write_bytes(b"ok\n\xff one\nfine\n\xfe two")
    skipped = Counter()
    assert list(iter_rows(DataConfig(source="text", path=str(tmp_path / "t.txt")), skipped)) == ["ok", "fine"]
    assert skipped == Counter({"invalid UTF-8": 2})
    lines = b'{"text": "a"}\n{bad\n\xff\n{"text": "b"}\n{worse\n\xfe\n'
    (tmp_path / "d.jsonl").write_bytes(lines)
    skipped = Counter()
    assert list(iter_rows(DataConfig(source="jsonl", path=str(tmp_path / "d.jsonl")), skipped)) == ["a", "b"]
    assert skipped == Counter({"invalid JSON": 2, "invalid UTF-8": 2})
