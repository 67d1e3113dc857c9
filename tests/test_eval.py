"""Task evaluation: metrics against hand-computed values and their packages, task builders, the eval.run CLI."""

import difflib
import json
import math

import pytest
import sacrebleu

from conftest import tiny_run_config
from eval import tasks
from eval.metrics import accuracy, bleu, compute, edit_similarity, rouge_l, sari, sari_sentence
from eval.run import main, runtime_stats
from generic_runner import train


# ----------------------------------------------------------------------------- metrics

def test_accuracy_is_exact_match_and_empty_scores_zero():
    assert accuracy(["park", " dog ", "", "cat"], ["park", "dog", "", "hat"]) == pytest.approx(50.0)
    assert accuracy(["b"], [["a", "b"]]) == 100.0  # any of several references


def test_bleu_by_hand_and_as_sacrebleu():
    # BLEU-1: all 3 unigrams match, brevity penalty exp(1 - 6/3)
    assert bleu(["the cat sat"], ["the cat sat on the mat"], max_order=1) == pytest.approx(100 * math.exp(-1), abs=1e-9)
    # BLEU-4: n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    by_hand = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu([hyp], [ref]) == pytest.approx(by_hand, abs=1e-9)
    assert bleu([hyp], [ref]) == pytest.approx(sacrebleu.sentence_bleu(hyp, [ref]).score, abs=1e-9)
    # BLEU-1 of the same pair: unigram precision 5/6 alone (with "effective order", a hypothesis of
    # fewer than 4 tokens would score the same under BLEU-1 and BLEU-4, so this pair tells them apart)
    assert bleu([hyp], [ref], max_order=1) == pytest.approx(100 * 5 / 6, abs=1e-9)
    assert compute(["bleu-1", "bleu-4"], [hyp], [ref]) == pytest.approx({"bleu-1": 100 * 5 / 6, "bleu-4": by_hand})
    assert bleu([ref, ""], [ref, ref]) == pytest.approx(50.0)  # mean over items; empty = 0


def test_rouge_l_by_hand():
    # LCS "the cat sat" = 3: precision 3/3, recall 3/6, F = 2/3
    assert rouge_l(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(200 / 3)
    assert rouge_l(["The Cat, sat!"], [["dog", "the cat sat"]]) == pytest.approx(100.0)  # best reference
    assert rouge_l(["   "], ["the cat"]) == 0.0


def test_edit_similarity_by_hand_and_as_difflib():
    # kitten / sitting: 4 characters in common, 2 * 4 / (6 + 7)
    assert edit_similarity(["kitten"], ["sitting"]) == pytest.approx(800 / 13)
    for a, b in [("kitten", "sitting"), ("Once upon a time", "Once upon a dime"), ("abc", "xyz")]:
        assert edit_similarity([a], [b]) == pytest.approx(100 * difflib.SequenceMatcher(None, a, b).ratio())
    assert edit_similarity([""], [""]) == 0.0


def test_sari_by_hand():
    """source "a b c", prediction "a b d", reference "a d c", worked out from Xu et al. (2016):

    n=1: keep {a,b} of which the reference keeps {a}: P=1/2, R=1/2 (it keeps a, c) -> F=1/2;
         deleted {c}, which the reference keeps -> P_del=0; added {d}, wanted {d} -> F_add=1.
    n=2: kept {"a b"}, not in the reference -> P=0, nothing to keep -> R=1, F=0; deleted {"b c"},
         good -> P_del=1; added {"b d"}, wanted {"a d", "d c"} -> F_add=0.
    n=3: nothing kept or to keep -> F=1; deleted "a b c" -> P_del=1; added "a b d", wanted "a d c" -> 0.
    n=4: no 4-grams: 1, 1, 1.
    SARI = ((1/2+0+1+1)/4 + (0+1+1+1)/4 + (1+0+0+1)/4) / 3 = 0.625
    """
    assert sari_sentence("a b c", "a b d", ["a d c"]) == pytest.approx(0.625)
    assert sari(["a b c"], ["a b d"], ["a d c"]) == pytest.approx(62.5)
    assert sari(["a b c"], ["a b c"], [["a b c", "a b c"]]) == pytest.approx(100.0)  # 0/0 counts as 1
    assert sari(["a b c", "a b c"], ["", "a b d"], ["a d c", "a d c"]) == pytest.approx(31.25)  # empty = 0


def test_sari_matches_the_evaluate_package_documented_example():
    """The example in the docstring of `evaluate`'s sari metric (Hugging Face), 26.953601953601954."""
    sources = ["About 95 species are currently accepted ."]
    predictions = ["About 95 you now get in ."]
    references = [["About 95 species are currently known .", "About 95 species are now accepted .",
                   "95 species are now accepted ."]]
    assert sari(sources, predictions, references) == pytest.approx(26.953601953601954, abs=1e-9)


def test_compute_by_name_and_every_metric_gives_zero_for_empty_predictions():
    names = ["accuracy", "bleu-1", "bleu-4", "rouge-L", "edit_sim", "sari"]
    scores = compute(names, ["", " "], ["the cat sat", "a dog"], sources=["the cat sat", "a dog"])
    assert scores == dict.fromkeys(names, 0.0)
    assert compute(names, ["the cat sat"], ["the cat sat"], sources=["the cat"])["accuracy"] == 100.0
    with pytest.raises(ValueError):
        compute(["bleu-7"], ["x"], ["x"])
    with pytest.raises(ValueError):
        compute(["sari"], ["x"], ["x"])  # no sources


# ----------------------------------------------------------------------------- tasks

ROWS = ["Tom had a red ball. He liked to play with it every day in the big park. The sun was warm.",
        "Short one.",
        "Lily saw a small bird. It sang a happy song for her! She smiled at the bird."]


def test_story_continuation_prompts_are_row_starts_and_labels_the_true_continuation():
    task = tasks.story_continuation(ROWS, limit=5, prompt_words=5, reference_words=6)
    assert task.prompts == ["Tom had a red ball.", "Lily saw a small bird."]
    assert task.labels == ["He liked to play with it", "It sang a happy song for"]
    assert task.postprocess(" He liked it a lot and more words", task.labels[0]) == "He liked it a lot and"
    assert tasks.story_continuation(ROWS, limit=1, prompt_words=5).prompts == ["Tom had a red ball."]


def test_cloze_drops_the_last_word_and_scores_the_first_generated_word():
    task = tasks.cloze(ROWS, limit=10, seed=0)
    assert len(task.prompts) == 2 and task.greedy and task.metrics == ("accuracy",)
    for prompt, label in zip(task.prompts, task.labels):
        words = prompt.split()
        assert label.isalpha() and label == label.lower() and len(words) >= 3
        assert any(f"{prompt} " in row or prompt in row for row in ROWS)
    assert task.postprocess(" Park. Then they", "park") == "park"
    assert task.postprocess("", "park") == ""


def test_dialogue_task_from_the_shipped_example_and_turn_cutting():
    task = tasks.dialogue(tasks.DEFAULT_DIALOGUE_FILE, limit=3)
    assert len(task.prompts) == 3 and all(p.endswith("Assistant:") and "Human:" in p for p in task.prompts)
    assert task.labels[0].startswith("Once upon a time")
    assert tasks.until_next_turn(" Hello there.\n\nHuman: more", None) == "Hello there."
    assert tasks.until_next_turn(" Hi Human: x", None) == "Hi"


def test_task_file_layouts_and_errors(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text('{"prompt": "2+2=", "answer": "4"}\n\n{"prompt": "Say hi", "label": ["hi", "hello"], '
                 '"source": "hey"}\n', encoding="utf-8")
    task = tasks.from_jsonl(f, limit=10, metrics=("accuracy", "sari"))
    assert task.name == "qa" and task.labels == ["4", ["hi", "hello"]] and task.sources == ["2+2=", "hey"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n', encoding="utf-8")
    with pytest.raises(Exception, match="needs"):
        tasks.from_jsonl(bad, 10)
    with pytest.raises(FileNotFoundError):
        tasks.from_jsonl(tmp_path / "none.jsonl", 10)


def test_runtime_stats():
    r = runtime_stats([1.0, 2.0, 3.0, 4.0], new_tokens=20, batch_size=1, max_gen_len=8, temperature=0.0)
    assert r["mean_s"] == 2.5 and r["median_s"] == 2.5 and r["tokens_per_s"] == 2.0
    assert r["p5_s"] == pytest.approx(1.15) and r["p95_s"] == pytest.approx(3.85)
    assert r["std_s"] == pytest.approx(math.sqrt(1.25))


# ----------------------------------------------------------------------------- the harness

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    train(tiny_run_config(tmp, ["train.max_steps=20", "train.lr=3e-3"]))
    return str(tmp / "checkpoints/tiny/last.pt")


def test_eval_run_writes_trace_keys_for_every_task(ckpt, tmp_path, capsys):
    task_file = tmp_path / "simplify.jsonl"
    task_file.write_text('{"prompt": "Tom saw a big dog", "answer": "Tom saw a dog"}\n', encoding="utf-8")
    out = tmp_path / "eval.json"
    argv = ["--ckpt", ckpt, "--tasks", "story_continuation,cloze,dialogue,simplify", "--task-file", str(task_file),
            "--metrics", "bleu-1,sari,edit_sim", "--limit", "3", "--out", str(out), "--device", "cpu", "--seed", "1"]
    main(argv)
    table = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert set(doc["tasks"]) == {"story_continuation", "cloze", "dialogue", "simplify"}
    for name, result in doc["tasks"].items():
        assert {"prompts", "results", "labels", "eval", "runtime"} <= set(result), name
        n = len(result["prompts"])
        assert n == len(result["results"]) == len(result["labels"]) and 1 <= n <= 3
        assert all(0 <= v <= 100 for v in result["eval"].values())
        assert {"mean_s", "median_s", "p5_s", "p95_s", "std_s", "tokens_per_s"} <= set(result["runtime"])
        assert name in table
    assert set(doc["tasks"]["story_continuation"]["eval"]) == {"bleu-1", "bleu-4", "rouge-L"}
    assert set(doc["tasks"]["cloze"]["eval"]) == {"accuracy"} and doc["tasks"]["cloze"]["runtime"]["temperature"] == 0
    assert set(doc["tasks"]["simplify"]["eval"]) == {"bleu-1", "sari", "edit_sim"}
    assert doc["settings"]["temperature"] == 0.6 and doc["settings"]["top_p"] == 0.9
    # the same seed gives the same samples
    main([*argv[:-4], "--out", str(tmp_path / "again.json"), "--device", "cpu", "--seed", "1"])
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["tasks"]["story_continuation"]["results"] == doc["tasks"]["story_continuation"]["results"]


def test_eval_run_bad_input_is_one_line(ckpt, tmp_path, capsys):
    for argv, expected in [
        (["--ckpt", str(tmp_path / "nope.pt")], "not found"),
        (["--ckpt", ckpt, "--tasks", "translation"], "unknown task"),
        (["--ckpt", ckpt, "--tasks", "dialogue", "--dialogue-file", str(tmp_path / "hh.jsonl")], "not found"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 1 and err.startswith("error:") and expected in err and len(err.splitlines()) == 1
