"""Task metrics against their maintained packages called directly (sacrebleu, rouge-score,
rapidfuzz), on several items with several references per item where the best match is not the
first reference, at the documented level: every metric scores each item, then averages the items
(sentence level, not corpus BLEU)."""

import pytest
import sacrebleu
from rapidfuzz.distance import Indel
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from eval.metrics import accuracy, bleu, compute, edit_similarity, rouge_l, sari

PREDICTIONS = ["the small cat sat on the red mat today",
               "a dog ran quickly to the old park gate",
               "she smiled at the little bird in the tree"]
# per item: a poor first reference, then the one the prediction matches best
REFERENCES = [["a bird flew over the house", "the small cat sat on the mat today", "the cat sat"],
              ["the sun is warm", "my dog ran to the park", "a dog ran quickly to the park gate"],
              ["he cried", "she smiled at the bird in the tall tree"]]


def sentence_bleu(prediction: str, references: list[str], order: int) -> float:
    return BLEU(max_ngram_order=order, effective_order=True).sentence_score(prediction, references).score


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_the_references_tell_first_only_and_best_apart():
    """Scoring against the first reference alone gives a visibly different number for every metric."""
    for p, refs in zip(PREDICTIONS, REFERENCES):
        assert sacrebleu.sentence_bleu(p, refs[:1]).score + 10 < sacrebleu.sentence_bleu(p, refs).score
        assert Indel.normalized_similarity(p, refs[0]) + 0.2 < max(Indel.normalized_similarity(p, r) for r in refs)


@pytest.mark.parametrize("order", [1, 4])
def test_bleu_is_the_mean_of_sacrebleu_sentence_scores_over_all_references(order):
    expected = mean(sentence_bleu(p, refs, order) for p, refs in zip(PREDICTIONS, REFERENCES))
    assert bleu(PREDICTIONS, REFERENCES, max_order=order) == pytest.approx(expected, abs=1e-9)
    assert compute([f"bleu-{order}"], PREDICTIONS, REFERENCES)[f"bleu-{order}"] == pytest.approx(expected, abs=1e-9)


def test_bleu_is_sentence_level_not_corpus_level():
    """A short perfect item and a long poor one: the mean of sentence scores is far from corpus BLEU."""
    predictions = ["the cat sat on the mat", "one two three four five six seven eight nine ten eleven twelve"]
    references = ["the cat sat on the mat", "one two three 4 five six 7 eight nine 10 eleven twelve"]
    expected = mean(sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(predictions, references))
    assert bleu(predictions, references) == pytest.approx(expected, abs=1e-9)
    assert abs(expected - sacrebleu.corpus_bleu(predictions, [references]).score) > 5


def test_rouge_l_is_the_best_rouge_score_f_measure_over_the_references():
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = mean(max(scorer.score(r, p)["rougeL"].fmeasure for r in refs) for p, refs in zip(PREDICTIONS, REFERENCES))
    assert rouge_l(PREDICTIONS, REFERENCES) == pytest.approx(100 * expected, abs=1e-9)
    first_only = mean(scorer.score(refs[0], p)["rougeL"].fmeasure for p, refs in zip(PREDICTIONS, REFERENCES))
    assert 100 * first_only + 20 < rouge_l(PREDICTIONS, REFERENCES)


def test_edit_similarity_is_the_best_indel_similarity_over_the_references():
    expected = mean(max(Indel.normalized_similarity(p, r) for r in refs) for p, refs in zip(PREDICTIONS, REFERENCES))
    assert edit_similarity(PREDICTIONS, REFERENCES) == pytest.approx(100 * expected, abs=1e-9)


def test_accuracy_accepts_any_reference_and_averages_items():
    predictions = ["Paris", "blue ", "seven", "cat"]
    references = [["London", "Paris"], ["red", "green", "blue"], "six", ["dog", "hat", "cat"]]
    assert accuracy(predictions, references) == pytest.approx(75.0)


def test_empty_predictions_count_zero_in_the_mean():
    preds = [PREDICTIONS[0], "  ", PREDICTIONS[2]]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    best = [max(scorer.score(r, p)["rougeL"].fmeasure for r in refs) for p, refs in zip(preds, REFERENCES)]
    assert rouge_l(preds, REFERENCES) == pytest.approx(100 * (best[0] + best[2]) / 3, abs=1e-9)
    assert bleu(preds, REFERENCES) == pytest.approx(
        (sentence_bleu(preds[0], REFERENCES[0], 4) + sentence_bleu(preds[2], REFERENCES[2], 4)) / 3, abs=1e-9)


@pytest.mark.parametrize("metric", [accuracy, bleu, rouge_l])
def test_no_items_score_zero(metric):
    assert metric([], []) == 0.0


def test_sari_uses_every_reference():
    """SARI counts n-grams over all references (order does not matter); the better second reference
    raises the score above the first alone."""
    source = "the old man walked slowly to the small shop"
    prediction = "the man walked to the shop"
    refs = ["an old man went to a store", "the man walked to the shop"]
    both, first = sari([source], [prediction], [refs]), sari([source], [prediction], [refs[:1]])
    assert both > first + 10
    assert sari([source], [prediction], [refs[::-1]]) == pytest.approx(both, abs=1e-9)
    assert sari([source], [prediction], [refs[1:]]) > both                 # the matching reference alone


def test_sari_lowercases_its_tokens_and_nothing_more():
    """SARI compares lowercased 13a tokens (EASSE's convention): case does not matter, but lowercasing is not
    case folding: "straße" and "strasse" stay different words (upper-casing would merge them)."""
    source, reference = "Die lange Straße war leer .", "Die Straße war leer ."
    same = sari([source], ["die STRASSE war leer ."], [[reference]])
    exact = sari([source], ["DIE straße WAR leer ."], [[reference]])
    assert exact == pytest.approx(sari([source], [reference], [[reference]]), abs=1e-12)   # case ignored
    assert same < exact                                                                    # ss is not ß
