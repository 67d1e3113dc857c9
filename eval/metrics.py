"""Task metrics, TRACE style: one score per task, the mean over items, on a 0-100 scale.

    from eval.metrics import compute
    compute(["bleu-1", "rouge-L"], predictions=["the cat sat"], references=["the cat sat on the mat"])
    # {'bleu-1': 36.79..., 'rouge-L': 66.66...}

Every metric scores each item, then averages over all items; an empty (or whitespace-only)
prediction scores 0 whatever the metric would say (TRACE's rule: it never helps to say nothing).
A reference is a string or a list of strings (several references).

- accuracy   exact match of the stripped strings (tasks normalise first, e.g. cloze: one lowercase word).
- bleu-1/4   sacrebleu sentence BLEU (13a tokenizer, exp smoothing, effective order), max n-gram
             order 1 or 4: BLEU-1 is clipped unigram precision times the brevity penalty.
- rouge-L    rouge-score's ROUGE-L F-measure (its tokenizer: lowercase, ASCII letters and digits only,
             so text in other scripts scores 0), best over the references.
- edit_sim   rapidfuzz fuzz.ratio: normalised InDel similarity 100 * (1 - distance / (len_a + len_b)),
             the same number as difflib.SequenceMatcher.ratio() and fuzzywuzzy's ratio; best over references.
- sari       SARI (Xu et al. 2016) as `evaluate`'s "sari" computes it, implemented below.

Why SARI is implemented here: `evaluate.load("sari")` downloads its script from the Hugging Face
hub (fails offline), torchmetrics has no SARI, and EASSE is not on PyPI. `sari_sentence` follows
Xu et al. (2016, TACL 4:401-415), eq. (1)-(6): for n = 1..4, F1 of kept n-grams, precision of
deleted n-grams, F1 of added n-grams; SARI = (F_keep + P_del + F_add) / 3, each averaged over n.
It takes the conventions of the tensor2tensor SARI that `evaluate` uses: source and prediction
n-gram counts are multiplied by the number of references, the keep recall divides by the kept
counts the references allow, and 0/0 counts as 1 (so an exact match of the source and the
references scores 100). Text is lowercased and tokenized with sacrebleu's 13a tokenizer first,
as `evaluate` does. tests/test_eval.py checks hand-computed values and `evaluate`'s documented example.
"""

from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache

from sacrebleu.metrics import BLEU

Reference = str | Sequence[str]


def _refs(reference: Reference) -> list[str]:
    return [reference] if isinstance(reference, str) else list(reference)


def _mean_nonempty(predictions: Sequence[str], score: Callable[[int, str], float]) -> float:
    """Mean of score(i, prediction) over all items; empty predictions count 0."""
    if not predictions:
        return 0.0
    return sum(score(i, p) if p.strip() else 0.0 for i, p in enumerate(predictions)) / len(predictions)


def _check(predictions: Sequence[str], references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def accuracy(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Percent of predictions equal (after strip) to a reference.

    Args:
        predictions: one string per item.
        references: one string (or list of accepted strings) per item.
    Returns:
        0-100.
    """
    _check(predictions, references)
    return 100 * _mean_nonempty(
        predictions, lambda i, p: float(p.strip() in {r.strip() for r in _refs(references[i])}))


@lru_cache(maxsize=None)
def _bleu(max_order: int) -> BLEU:
    return BLEU(max_ngram_order=max_order, effective_order=True)


def bleu(predictions: Sequence[str], references: Sequence[Reference], max_order: int = 4) -> float:
    """Mean sentence BLEU (sacrebleu) with n-grams up to max_order (1 = BLEU-1, 4 = BLEU-4).

    Args:
        predictions: one string per item.
        references: one string (or list of references) per item.
        max_order: the largest n-gram order.
    Returns:
        0-100.
    """
    _check(predictions, references)
    scorer = _bleu(max_order)
    return _mean_nonempty(predictions, lambda i, p: scorer.sentence_score(p, _refs(references[i])).score)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer  # imported here: only tasks that use ROUGE need the package
    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Mean ROUGE-L F-measure (rouge-score), the best over each item's references.

    Returns:
        0-100.
    """
    _check(predictions, references)
    scorer = _rouge()
    return 100 * _mean_nonempty(
        predictions, lambda i, p: scorer.score_multi(_refs(references[i]), p)["rougeL"].fmeasure)


def edit_similarity(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Mean normalised InDel similarity (rapidfuzz fuzz.ratio), the best over each item's references.

    Returns:
        0-100.
    """
    from rapidfuzz import fuzz

    _check(predictions, references)
    return _mean_nonempty(predictions, lambda i, p: max(fuzz.ratio(p, r) for r in _refs(references[i])))


# ----------------------------------------------------------------------------- SARI

def _sari_tokens(text: str) -> list[str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(text.lower()).split()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _sari_ngram(source: Counter, prediction: Counter, references: Counter, n_refs: int) -> tuple[float, float, float]:
    """(F1 keep, precision delete, F1 add) for one n-gram order; `references` sums the references' counts."""
    # counts of source and prediction are scaled by the number of references, so a gram that k of
    # r references keep is "good" k/r of the time
    src = Counter({g: c * n_refs for g, c in source.items()})
    pred = Counter({g: c * n_refs for g, c in prediction.items()})

    kept = src & pred                        # grams the system kept
    kept_good = kept & references            # ... and the references kept
    kept_wanted = src & references           # grams the references kept
    p_keep = sum(kept_good[g] / kept[g] for g in kept_good) / len(kept) if kept else 1.0
    r_keep = sum(kept_good.values()) / sum(kept_wanted.values()) if kept_wanted else 1.0

    deleted = src - pred                     # grams the system deleted
    deleted_good = deleted - references      # ... beyond what the references kept
    p_del = sum(deleted_good[g] / deleted[g] for g in deleted_good) / len(deleted) if deleted else 1.0

    added = set(prediction) - set(source)    # additions are counted as types, not tokens
    added_good = added & set(references)
    added_wanted = set(references) - set(source)
    p_add = len(added_good) / len(added) if added else 1.0
    r_add = len(added_good) / len(added_wanted) if added_wanted else 1.0
    return _f1(p_keep, r_keep), p_del, _f1(p_add, r_add)


def sari_sentence(source: str, prediction: str, references: Sequence[str]) -> float:
    """SARI of one prediction (0-1) given its source and references (see the module docstring)."""
    if not references:
        raise ValueError("SARI needs at least one reference")
    s, p = _sari_tokens(source), _sari_tokens(prediction)
    refs = [_sari_tokens(r) for r in references]
    keep = delete = add = 0.0
    for n in range(1, 5):
        ref_counts = sum((_ngrams(r, n) for r in refs), Counter())
        k, d, a = _sari_ngram(_ngrams(s, n), _ngrams(p, n), ref_counts, len(refs))
        keep, delete, add = keep + k / 4, delete + d / 4, add + a / 4
    return (keep + delete + add) / 3


def sari(sources: Sequence[str], predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Mean sentence SARI.

    Args:
        sources: the text each prediction rewrites.
        predictions: one string per item.
        references: one string (or list of references) per item.
    Returns:
        0-100.
    """
    _check(predictions, references)
    _check(predictions, sources)
    return 100 * _mean_nonempty(predictions, lambda i, p: sari_sentence(sources[i], p, _refs(references[i])))


# ----------------------------------------------------------------------------- by name

METRICS: dict[str, Callable] = {
    "accuracy": accuracy,
    "bleu-1": lambda p, r: bleu(p, r, max_order=1),
    "bleu-4": lambda p, r: bleu(p, r, max_order=4),
    "rouge-L": rouge_l,
    "edit_sim": edit_similarity,
    "sari": sari,
}


def compute(names: Sequence[str], predictions: Sequence[str], references: Sequence[Reference],
            sources: Sequence[str] | None = None) -> dict[str, float]:
    """Each named metric over the items (sources: for SARI, the texts being rewritten).

    Args:
        names: metric names, keys of METRICS.
        predictions, references: one per item.
        sources: needed by "sari".
    Returns:
        {name: score (0-100)} in the order of `names`.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")
    out = {}
    for name in names:
        if name == "sari":
            if sources is None:
                raise ValueError("the sari metric needs the source texts")
            out[name] = sari(sources, predictions, references)
        else:
            out[name] = METRICS[name](predictions, references)
    return out
