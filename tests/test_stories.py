"""Tests for the built-in story corpus: determinism, distinctness, and the form of every story."""

import re

from dataset_definitions.stories import BOYS, GIRLS, PET_BOYS, PET_GIRLS, stories, story

MIN_WORDS, MAX_WORDS = 60, 200
SAMPLE = list(stories(2000, seed=0))  # shared by the form tests; about 50 ms to build


def test_story_is_deterministic():
    assert story(3, 17) == story(3, 17)
    assert story(3, 17) != story(3, 18)
    # Known answer: the corpus must not drift silently (a changed word list changes every run's data).
    assert story(0, 0).split("\n")[0] == (
        "Once upon a time, in a small town, there lived a brave owl named Daisy. "
        "She liked to dance in the sun every day. Her best friend was a happy boy named Tom.")


def test_seeds_give_different_corpora():
    a, b = list(stories(200, seed=0)), list(stories(200, seed=1))
    assert sum(x != y for x, y in zip(a, b)) >= 195
    assert len(set(a) & set(b)) <= 5


def test_stories_matches_story():
    assert list(stories(50, seed=2, start=1000)) == [story(2, i) for i in range(1000, 1050)]
    assert list(stories(0, seed=2, start=7)) == []


def test_consecutive_stories_are_distinct():
    n = 20_000
    assert len(set(stories(n, seed=0))) == n


def test_story_form():
    for s in SAMPLE:
        assert s and s.isascii()
        assert s[0].isupper() and s[-1] in '.!?"'
        assert re.search(r'[.!?]"?$', s)
        assert "  " not in s and "\n\n" not in s and "{" not in s and "}" not in s
        assert s.count('"') % 2 == 0  # every quote is closed
        assert not re.search(r"\ba [aeiou]", s, re.IGNORECASE)  # "an apple", never "a apple"
        assert not re.search(r"\ban [^aeiou\s]", s, re.IGNORECASE)
        assert not re.search(r"[.!?] [a-z]", s)  # sentences start with a capital
        for paragraph in s.split("\n"):
            assert paragraph[0].isupper() or paragraph[0] == '"'
        assert MIN_WORDS <= len(s.split()) <= MAX_WORDS


def test_pronouns_agree():
    # With only she-characters and no dad, "he" can refer to no one (and likewise the other way).
    she, he = set(GIRLS + PET_GIRLS), set(BOYS + PET_BOYS)
    for s in SAMPLE:
        names = re.findall(r"named (\w+)", s)
        assert len(names) == 2
        if set(names) <= she and "dad" not in s:
            assert not re.search(r"\b(he|him|his|himself)\b", s, re.IGNORECASE)
        if set(names) <= he and "mom" not in s:
            assert not re.search(r"\b(she|her|herself)\b", s, re.IGNORECASE)
        for kind, name in re.findall(r"\b(girl|boy) named (\w+)", s):
            assert name in (GIRLS if kind == "girl" else BOYS)


def test_corpus_has_dialogue():
    assert sum('"' in s for s in SAMPLE) >= 0.5 * len(SAMPLE)
