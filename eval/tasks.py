"""Evaluation tasks: prompts, labels, the metrics that score them, and how a generation becomes a prediction.

Built-in tasks, made for models trained here:
  story_continuation  prompt = the first `prompt_words` words of a held-out row, label = the next
                      `reference_words` words; the prediction is the generation's first as many
                      words as the label has; BLEU-1, BLEU-4, ROUGE-L.
  cloze               prompt = a held-out sentence without its last word, label = that word; the
                      prediction is the first generated word (lowercase, outer punctuation
                      stripped, as the label); accuracy; always greedy.
  dialogue            HH-RLHF-style records (`chosen`/`rejected` transcripts): prompt = the
                      conversation up to the last "Assistant:", label = the chosen response; the
                      prediction stops where the model starts a new turn; BLEU-1/4, ROUGE-L, edit similarity.
A task file (jsonl, TRACE's layout) has one record per item: "prompt" and "answer" (or "label" /
"reference"; a string or a list of references), optionally "source" (the text SARI compares
against; default: the prompt).
"""

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dataset_definitions.config import DataConfig
from dataset_definitions.dialogue import iter_dialogues
from dataset_definitions.sources import DataError

DEFAULT_DIALOGUE_FILE = Path(__file__).parent / "task_data" / "hh_example.jsonl"
FILE_METRICS = ("accuracy", "bleu-1", "bleu-4", "rouge-L", "edit_sim")
_SENTENCE = re.compile(r"[^.!?]+[.!?]")
_TURN = re.compile(r"\n\s*(Human|Assistant)\s*:|\bHuman:")


def keep(generation: str, label) -> str:
    """The generation itself, stripped."""
    return generation.strip()


def word(text: str) -> str:
    """A word lowercased, with outer punctuation stripped ("Park." -> "park")."""
    return text.strip().lower().strip(".,!?;:\"'()[]{}")


def first_word(generation: str, label=None) -> str:
    """The first word of a generation, normalised as `word`."""
    words = generation.split()
    return word(words[0]) if words else ""


def first_words(generation: str, label: str) -> str:
    """The generation's first len(label.split()) words, so a continuation is compared at the label's length."""
    return " ".join(generation.split()[:len(label.split())])


def until_next_turn(generation: str, label=None) -> str:
    """The assistant's reply: the generation up to a new "Human:"/"Assistant:" turn."""
    match = _TURN.search(generation)
    return (generation[:match.start()] if match else generation).strip()


@dataclass
class Task:
    name: str
    prompts: list[str]
    labels: list                          # per item a string, or a list of reference strings
    metrics: tuple[str, ...]              # names in eval.metrics.METRICS
    sources: list[str] | None = None      # for SARI: the texts being rewritten
    max_gen_len: int = 48                 # new tokens per prompt (capped at half the context)
    greedy: bool = False                  # decode greedily whatever --temperature says
    postprocess: Callable[[str, object], str] = keep   # (generation, label) -> prediction

    def __post_init__(self):
        if len(self.prompts) != len(self.labels):
            raise ValueError(f"task {self.name}: {len(self.prompts)} prompts for {len(self.labels)} labels")
        if not self.prompts:
            raise DataError(f"task {self.name} has no items")


def story_continuation(rows: Sequence[str], limit: int, prompt_words: int = 16, reference_words: int = 24) -> Task:
    """Continue held-out rows: prompt = first prompt_words words, label = the next reference_words words;
    generates up to 2 * reference_words tokens (room for words split into several)."""
    prompts, labels = [], []
    for row in rows:
        words = row.split()
        if len(words) < prompt_words + 4:  # too short to leave a continuation worth scoring
            continue
        prompts.append(" ".join(words[:prompt_words]))
        labels.append(" ".join(words[prompt_words:prompt_words + reference_words]))
        if len(prompts) == limit:
            break
    return Task("story_continuation", prompts, labels, ("bleu-1", "bleu-4", "rouge-L"),
                max_gen_len=2 * reference_words, postprocess=first_words)


def cloze(rows: Sequence[str], limit: int, seed: int = 0, min_words: int = 4) -> Task:
    """Last-word prediction: per held-out row one sentence (picked with `seed`) whose last word is alphabetic;
    decoded greedily, at most 8 tokens, and the first word scored."""
    rng = random.Random(seed)
    prompts, labels = [], []
    for row in rows:
        candidates = []
        for sentence in _SENTENCE.findall(row):
            words = sentence.split()
            if len(words) >= min_words and word(words[-1]).isalpha():
                candidates.append(words)
        if not candidates:
            continue
        words = rng.choice(candidates)
        prompts.append(" ".join(words[:-1]))
        labels.append(word(words[-1]))
        if len(prompts) == limit:
            break
    return Task("cloze", prompts, labels, ("accuracy",), max_gen_len=8, greedy=True, postprocess=first_word)


def dialogue(path: str | Path, limit: int) -> Task:
    """HH-RLHF-style records: the chosen response is the reference."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--dialogue-file {path} not found")
    skipped: Counter = Counter()
    items = list(iter_dialogues(DataConfig(source="jsonl", path=str(path)), limit, skipped))
    if not items:
        raise DataError(f"--dialogue-file {path} has no usable dialogues" + (f" (skipped: {dict(skipped)})" if skipped else ""))
    return Task("dialogue", [d.prompt for d in items], [d.chosen for d in items],
                ("bleu-1", "bleu-4", "rouge-L", "edit_sim"), max_gen_len=64, postprocess=until_next_turn)


def from_jsonl(path: str | Path, limit: int, metrics: Sequence[str] = FILE_METRICS) -> Task:
    """A task file: records with "prompt" and "answer"/"label"/"reference" (and optionally "source")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--task-file {path} not found")
    prompts, labels, sources = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"--task-file {path} line {n} is not JSON: {e.msg}") from None
            label = next((record[k] for k in ("answer", "label", "reference") if k in record), None) \
                if isinstance(record, dict) else None
            if label is None or "prompt" not in record:
                raise DataError(f"--task-file {path} line {n} needs \"prompt\" and \"answer\" (or \"label\"/\"reference\")")
            prompts.append(str(record["prompt"]))
            labels.append(label if isinstance(label, list) else str(label))
            sources.append(str(record.get("source", record["prompt"])))
            if len(prompts) == limit:
                break
    return Task(path.stem, prompts, labels, tuple(metrics), sources=sources)


BUILTIN = ("story_continuation", "cloze", "dialogue")
