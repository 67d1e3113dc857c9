"""The perplexity command lines and their input handling: the documented defaults and choices of
run_perplexity.py and run_text_perplexity.py, --delimiter escapes, --rows limits, the note for a short
split, and the check that the data cache was encoded with the checkpoint's tokenizer (each of kind,
sha256, vocab size), done without printing on stdout (where the report goes)."""

from types import SimpleNamespace

import pytest
import torch

from conftest import prepare_run, tiny_run_config
from dataset_definitions.sources import DataError
from perplexity import runner


def _parse(text_file, argv):
    return runner._parser(text_file=text_file).parse_args(argv)


# ----------------------------------------------------------------------------- loading

@pytest.mark.parametrize("training_model", [False, True])
def test_load_scorer_asks_for_fp32_weights_and_a_one_position_cache_and_keeps_what_it_was_given(monkeypatch,
                                                                                                 training_model):
    """load_scorer: the weights stay fp32 (scoring autocasts to dtype) and the unused cache is one position; the
    device, quantization and model class go to load_model as given; the logits are the inference model's
    forward_full or the training model's logits; compile wraps that NLL function once, with fixed shapes."""
    asked, compiled = [], []
    vocab, x, y = 5, torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]])
    logits = torch.randn(1, 3, vocab)

    class Model:
        def __call__(self, tokens):
            return SimpleNamespace(logits=logits * 2)

        def forward_full(self, tokens):
            return logits

    def load_model(ckpt, **options):
        asked.append((ckpt, options))
        return SimpleNamespace(model=Model(), run_config=lambda: "the config", tokenizer="the tokenizer",
                               device=torch.device("cpu"), step=7)
    monkeypatch.setattr(runner, "load_model", load_model)
    monkeypatch.setattr(runner.torch, "compile", lambda fn, **options: compiled.append((fn, options)) or fn)
    expected = logits * 2 if training_model else logits

    plain = runner.load_scorer("a.pt", **({"training_model": True} if training_model else {}))  # the defaults
    assert asked == [("a.pt", dict(max_batch=1, max_seq_len=1, device="auto", dtype="fp32", quantize=None,
                                   training_model=training_model))]
    assert (plain.cfg, plain.tokenizer, plain.device, plain.dtype, plain.step, plain.compiled) == (
        "the config", "the tokenizer", torch.device("cpu"), torch.float32, 7, False) and compiled == []
    assert torch.equal(plain.logits_fn(x), expected)
    reference = torch.nn.functional.cross_entropy(expected.transpose(1, 2), y, reduction="none")
    torch.testing.assert_close(plain.nll_fn(x, y), reference)

    asked.clear()
    fast = runner.load_scorer("b.pt", device="cpu", dtype="bf16", training_model=training_model, quantize="int8",
                              compile=True)
    assert asked == [("b.pt", dict(max_batch=1, max_seq_len=1, device="cpu", dtype="fp32", quantize="int8",
                                   training_model=training_model))]
    assert fast.dtype == torch.bfloat16 and fast.compiled and fast.step == 7
    assert len(compiled) == 1 and compiled[0][1] == {"dynamic": False} and compiled[0][0] is fast.nll_fn
    torch.testing.assert_close(fast.nll_fn(x, y), reference)


# ----------------------------------------------------------------------------- command lines

def test_run_perplexity_defaults_and_choices():
    """The defaults the package docstring and help give: held-out rows, 10000 of them, stride and batch
    chosen from the checkpoint (None here), auto device and dtype, results under logs/."""
    a = _parse(False, [])
    assert (a.split, a.packed, a.compare, a.rows, a.batch_size, a.stride) == (
        "heldout", False, None, 10_000, None, None)
    assert (a.compile, a.device, a.dtype, a.quantize, a.log_dir, a.quiet) == (
        False, "auto", "auto", None, "logs", False)
    b = _parse(False, ["--split", "val", "--packed", "--compile", "--batch-size", "8", "--stride", "3",
                       "--rows", "7", "--quantize", "int8", "--compare", "run1", "run2", "run3"])
    assert (b.split, b.packed, b.compile, b.batch_size, b.stride, b.rows) == ("val", True, True, 8, 3, 7)
    assert b.quantize == "int8" and b.compare == ["run1", "run2", "run3"]
    assert _parse(False, ["--split", "heldout"]).split == "heldout"


@pytest.mark.parametrize("argv", [["--split", "train"], ["--split", "HELDOUT"], ["--batch-size", "eight"],
                                  ["--quantize", "int4"], ["--packed", "yes"]])
def test_run_perplexity_refuses_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(False, argv)
    assert e.value.code == 2 and argv[0] in capsys.readouterr().err


def test_run_text_perplexity_requires_the_text_file(capsys):
    with pytest.raises(SystemExit) as e:
        _parse(True, ["--ckpt", "x.pt"])
    assert e.value.code == 2 and "--text-file" in capsys.readouterr().err
    a = _parse(True, ["--text-file", "t.txt"])
    assert (a.text_file, a.delimiter, a.rows, a.stride) == ("t.txt", None, 10_000, None)
    assert not hasattr(a, "split") and not hasattr(a, "compare")


def test_each_command_says_what_it_scores_and_help_gives_the_defaults():
    """--help: the description names what is scored; the options whose defaults depend on the run say so."""
    text, rows = runner._parser(text_file=True), runner._parser(text_file=False)
    assert "Perplexity of a checkpoint on a text file" in text.description
    assert "held-out rows" in rows.description and "text file" not in rows.description
    phrases = {"--ckpt": "checkpoint path", "--rows": "default 10000", "--batch-size": "16 on CPU",
               "--stride": "default: context // 2", "--compile": "torch.compile", "--split": "never training rows",
               "--packed": "val loss", "--compare": "table of saved results", "--log-dir": "perplexity-losses",
               "--text-file": "one row per line", "--delimiter": "default: newline"}
    helps = {o: a.help for p in (text, rows) for a in p._actions for o in a.option_strings}
    for option, phrase in phrases.items():
        assert phrase in (helps[option] or ""), option


# ----------------------------------------------------------------------------- rows

@pytest.mark.parametrize("typed, sep", [("\\n\\n", "\n\n"), ("\\t", "\t"), ("<|endoftext|>", "<|endoftext|>")])
def test_delimiter_escapes_as_a_shell_user_types_them(tmp_path, typed, sep):
    """'\\n\\n' and '\\t' typed in a shell arrive as backslash sequences: they split at blank lines / tabs."""
    path = tmp_path / "t.txt"
    path.write_text(sep.join(["first row here", "second one", "third"]), encoding="utf-8")
    texts, _ = runner._read_text_file(str(path), typed, 100)
    assert [t.strip() for t in texts] == ["first row here", "second one", "third"]


def test_rows_limits_the_text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(f"row {i}" for i in range(10)), encoding="utf-8")
    texts, _ = runner._read_text_file(str(path), None, 3)
    assert texts == ["row 0", "row 1", "row 2"]


@pytest.mark.parametrize("n, limit, noted", [(3, 3, False), (3, 5, True), (5, 3, False)])
def test_a_note_only_when_the_split_has_fewer_rows_than_asked(capsys, n, limit, noted):
    data = SimpleNamespace(rows=lambda split: [f"r{i}" for i in range(n)], dir="d")
    assert runner._split_rows(data, "heldout", limit) == [f"r{i}" for i in range(min(n, limit))]
    assert ("fewer than --rows" in capsys.readouterr().err) == noted


# ----------------------------------------------------------------------------- the data's tokenizer

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cfg = tiny_run_config(tmp_path_factory.mktemp("ppl_data"))
    return cfg, prepare_run(cfg, log=lambda *a: None)


def _scorer(cfg, spec):
    return SimpleNamespace(cfg=cfg, tokenizer=SimpleNamespace(spec=lambda: spec))


def test_the_checkpoints_tokenizer_finds_its_data_silently(prepared, capsys):
    """Nothing on stdout: the report printed after it is the command's output."""
    cfg, data = prepared
    got = runner.prepared_data(_scorer(cfg, dict(data.meta["tokenizer"])))
    assert got.dir == data.dir
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("key, value", [("kind", "gpt2"), ("sha256", "0" * 64), ("vocab_size", 999)])
def test_a_data_cache_of_another_tokenizer_is_refused(prepared, key, value):
    cfg, data = prepared
    spec = {**data.meta["tokenizer"], key: value}
    with pytest.raises(DataError, match="encoded with another tokenizer"):
        runner.prepared_data(_scorer(cfg, spec))
