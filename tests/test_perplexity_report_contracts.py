"""What a user reads from saved perplexity results, pinned character for character (the text is the contract):
the printed report of one pass (packed or not, with skipped rows or none), the comparison table of several
saved results (JSON summaries and a seed-style pickle-only result, "-" for what a result lacks), and what
load_result makes of a pickle without its JSON (or of nothing at all)."""

import json
import math
import pickle
import re

import pytest

from perplexity.results import compare_table, load_result, report

# ----------------------------------------------------------------------------- report

# A text file's pass (not packed) with rows skipped; numbers with thousands, and decimals where 3 vs 4 shows.
TEXT_PASS = {
    "source": "notes.txt", "run": "tiny", "step": 1200, "packed": False,
    "rows": 12345, "tokens": 1234567, "bytes": 4567890,
    "skipped": {"empty or not text": 1000, "invalid UTF-8": 234},
    "mean": 23.45678, "median": 20.1, "corpus_ppl": 21.98765, "loss": 3.090512,
    "bits_per_token": 4.458761, "bpb": 1.234567,
    "seconds": 12.3456, "rows_per_s": 1234.56, "tokens_per_s": 100004.6,
    "device": "cpu", "dtype": "float32",
}

# A packed pass (counts blocks, no seed note, nothing skipped); a mean above 1000 shows no separator.
PACKED_PASS = {
    "source": "val packed", "run": "big", "step": 50000, "packed": True,
    "rows": 64, "tokens": 65536, "bytes": 262144,
    "mean": 1234.5, "median": 7.25, "corpus_ppl": 8.0, "loss": 2.0794415,
    "bits_per_token": 3.0, "bpb": 0.75,
    "seconds": 2.0, "rows_per_s": 32.0, "tokens_per_s": 32768.0,
    "device": "cuda", "dtype": "bfloat16",
}


def test_report_of_a_text_file_pass_with_skipped_rows():
    """Rows as the unit; the mean flagged as the seed's aggregate; the skipped rows summed, reasons in order."""
    assert report(TEXT_PASS).splitlines() == [
        # headline: source, run, step (no separator), rows, tokens, bytes (separators), the skipped rows
        "notes.txt of tiny (step 1200): 12,345 rows, 1,234,567 scored tokens, 4,567,890 bytes; "
        "1,234 rows skipped (empty or not text, invalid UTF-8)",
        # label (22 wide) + value (12 wide, 3 decimals) + the seed note
        "  mean per-row ppl            23.457   (the seed's aggregate)",
        "  median per-row ppl          20.100",
        # corpus ppl (3 decimals), the loss (4 decimals)
        "  corpus ppl                  21.988   exp(total NLL / total tokens) = exp(3.0905)",
        # bits (4 decimals)
        "  bits per token              4.4588   (loss / ln 2)",
        "  bits per byte               1.2346",
        # rows, seconds (2 decimals), rows/s (separator, 1 decimal), tokens/s (separator, 0 decimals)
        "  12,345 rows in 12.35s: 1,234.6 rows/s, 100,005 tokens/s on cpu (float32)",
    ]


def test_report_of_a_packed_pass():
    """Blocks as the unit; no seed note (its aggregate is over rows); no skipped part."""
    assert report(PACKED_PASS).splitlines() == [
        "val packed of big (step 50000): 64 blocks, 65,536 scored tokens, 262,144 bytes",
        "  mean per-block ppl        1234.500",
        "  median per-block ppl         7.250",
        "  corpus ppl                   8.000   exp(total NLL / total tokens) = exp(2.0794)",
        "  bits per token              3.0000   (loss / ln 2)",
        "  bits per byte               0.7500",
        "  64 blocks in 2.00s: 32.0 blocks/s, 32,768 tokens/s on cuda (bfloat16)",
    ]


@pytest.mark.parametrize("skipped", [{}, None])
def test_report_without_skipped_rows_says_nothing_of_them(skipped):
    """A text file with nothing skipped (an empty count, or none saved) ends the headline at the bytes."""
    first = report({**TEXT_PASS, "skipped": skipped}).splitlines()[0]
    assert first == "notes.txt of tiny (step 1200): 12,345 rows, 1,234,567 scored tokens, 4,567,890 bytes"


# ----------------------------------------------------------------------------- load_result


def _write_pkl(log_dir, name, ppl):
    out = log_dir / "perplexity-losses"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.pkl").write_bytes(pickle.dumps(ppl))


def _write_json(log_dir, name, summary):
    out = log_dir / "perplexity-losses"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(summary))


def test_a_pickle_only_result_gives_the_numbers_of_its_list(tmp_path):
    """The seed's logs (a list of per-row perplexities, no JSON): rows, their mean, their median (of an even
    count: the middle two averaged), and the source marked "pkl only"."""
    _write_pkl(tmp_path, "seed", [1.5, 2.5, 4.0, 8.0])
    assert load_result("seed", tmp_path) == {"name": "seed", "rows": 4, "mean": 4.0, "median": 3.25,
                                             "source": "pkl only"}


def test_an_empty_pickle_gives_nan_mean_and_median(tmp_path):
    _write_pkl(tmp_path, "empty", [])
    r = load_result("empty", tmp_path)
    assert sorted(r) == ["mean", "median", "name", "rows", "source"]
    assert r["name"] == "empty" and r["rows"] == 0 and r["source"] == "pkl only"
    assert math.isnan(r["mean"]) and math.isnan(r["median"])


def test_a_missing_result_names_its_folder_and_what_to_run(tmp_path):
    out = tmp_path / "perplexity-losses"
    message = f"no perplexity results named 'nope' in {out} (run run_perplexity.py first)"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
        load_result("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
        compare_table(["nope"], tmp_path)


# ----------------------------------------------------------------------------- compare_table

HEADER = (
    "name                    "  # name, 24 wide, left
    " source          "  # source, 16 wide, left
    "    rows"  # rows, 7 wide, right
    "     tokens"  # tokens, 10 wide
    "  mean ppl"  # mean ppl, 9 wide
    "    median"  # median, 9 wide
    " corpus ppl"  # corpus ppl, 10 wide
    "     bpb"  # bpb, 7 wide
    "   rows/s"  # rows/s, 8 wide
)


def test_compare_table_of_json_and_pickle_only_results(tmp_path):
    # a full summary whose source is longer than the column (cut at 16 characters)
    _write_json(tmp_path, "tiny-notes", {
        "name": "tiny-notes", "source": "data/corpora/notes_2024.txt", "rows": 12345, "tokens": 1234567,
        "mean": 1234.5678, "median": 20.1, "corpus_ppl": 21.98765, "bpb": 1.234567, "rows_per_s": 1234.56})
    # an old summary without source, tokens or rows/s
    _write_json(tmp_path, "old-run", {"name": "old-run", "rows": 800, "mean": 9.87654, "median": 9.5,
                                      "corpus_ppl": 9.1, "bpb": 0.98765})
    # the seed's pickle: only rows, mean, median
    _write_pkl(tmp_path, "seed", [1.5, 2.5, 4.0, 8.0])

    tiny_notes = (
        "tiny-notes              "  # name
        " data/corpora/not"  # source, first 16 characters
        "  12,345"  # rows, separators
        "  1,234,567"  # tokens, separators
        "  1234.568"  # mean ppl, 3 decimals, no separator
        "    20.100"  # median, 3 decimals
        "     21.988"  # corpus ppl, 3 decimals
        "  1.2346"  # bpb, 4 decimals
        "  1,234.6"  # rows/s, separator, 1 decimal
    )
    old_run = (
        "old-run                 "  # name
        " -               "  # source: none saved
        "     800"  # rows
        "          -"  # tokens: none saved
        "     9.877"  # mean ppl
        "     9.500"  # median
        "      9.100"  # corpus ppl
        "  0.9877"  # bpb
        "        -"  # rows/s: none saved
    )
    seed = (
        "seed                    "  # name
        " pkl only        "  # source
        "       4"  # rows
        "          -"  # tokens
        "     4.000"  # mean ppl: of the list
        "     3.250"  # median: of the list
        "          -"  # corpus ppl
        "       -"  # bpb
        "        -"  # rows/s
    )
    assert compare_table(["tiny-notes", "old-run", "seed"], tmp_path).split("\n") == [
        HEADER,
        "-" * 108,  # dashes as long as the header
        tiny_notes,
        old_run,
        seed,
    ]
    assert len(HEADER) == 108


def test_compare_table_reads_logs_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_pkl(tmp_path / "logs", "seed", [2.0])
    assert compare_table(["seed"]) == compare_table(["seed"], tmp_path / "logs")
