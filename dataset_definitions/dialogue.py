"""Dialogue rows in the Anthropic HH-RLHF layout, for evaluation prompts and instruction tuning.

Each record has `chosen` (and usually `rejected`) transcripts of the form
"\\n\\nHuman: ...\\n\\nAssistant: ...". The prompt is everything up to the last "Assistant:" turn;
the response is what follows it. Records come through the same sources as training text:

    dialogues = iter_dialogues(DataConfig(source="jsonl", path="hh.jsonl"))
    dialogues = iter_dialogues(DataConfig(source="hf", name="Anthropic/hh-rlhf", split="test"))
"""

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from dataset_definitions.config import DataConfig
from dataset_definitions.sources import DataError, iter_records

ASSISTANT = "\n\nAssistant:"


@dataclass
class Dialogue:
    prompt: str               # the conversation so far, ending with "Assistant:"
    chosen: str               # the preferred final response
    rejected: str | None      # the dispreferred one, when the record has it


def split_last_turn(transcript: str) -> tuple[str, str]:
    """Split a transcript into (prompt ending with 'Assistant:', final response)."""
    cut = transcript.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError("transcript has no '\\n\\nAssistant:' turn")
    cut += len(ASSISTANT)
    return transcript[:cut], transcript[cut:].strip()


def iter_dialogues(cfg: DataConfig, limit: int | None = None, skipped: Counter | None = None) -> Iterator[Dialogue]:
    """Yield up to `limit` dialogues; records without an Assistant turn or a response are skipped and counted."""
    skipped = skipped if skipped is not None else Counter()
    records = iter_records(cfg, skipped)
    first = next(records, None)
    if first is None:
        return
    if "chosen" not in first:
        raise DataError(f"dialogue records need a 'chosen' field; these have {sorted(first)}")
    out = (d for r in itertools.chain([first], records) if (d := _to_dialogue(r, skipped)) is not None)
    yield from itertools.islice(out, limit)


def _to_dialogue(record: dict, skipped: Counter) -> Dialogue | None:
    try:
        prompt, chosen = split_last_turn(record.get("chosen") or "")
    except ValueError:
        skipped["no Assistant turn"] += 1
        return None
    if not chosen:
        skipped["empty response"] += 1
        return None
    rejected = record.get("rejected")
    if rejected:
        rejected = split_last_turn(rejected)[1] if ASSISTANT in rejected else rejected.strip()
    return Dialogue(prompt, chosen, rejected or None)
