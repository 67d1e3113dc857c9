"""The family record: everything the rest of the repo knows about a model family, in one place.

Each family file (gpt.py, falcon.py, condor.py) ends with its records, `register(Family(...))`;
models/__init__.py imports the family files, so `FAMILIES` is complete once `models` is imported.
Nothing outside a family's own file branches on its name: the trainer, modelskv, convert and the
logs ask the record.

Adding a family: a new file in models/ with its model class (usually a GPT subclass overriding
`make_block`) and its `register(...)` call, and one import line in models/__init__.py.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str                   # the preset name, model.preset
    model: type                 # the training class; modelskv derives the cached class from it
    defaults: dict = field(default_factory=dict)  # what differs from the ModelConfig defaults
    # what Hugging Face and Meta models lack to compute this config, or None (export allowed)
    missing_in_hf: Callable[[Any], str | None] = lambda cfg: None
    # the config's distinguishing choices, in words, for the run log (after positions, norm, MLP)
    describe: Callable[[Any], list[str]] = lambda cfg: []
    # inference: the config the cached model runs with (e.g. MoE capacity that drops nothing)
    for_inference: Callable[[Any], Any] = lambda cfg: cfg
    # config keys only this family reads; any other family refuses a non-default value
    own_keys: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


def family_of(preset: str) -> Family:
    """The record of model.preset, or a ValueError listing the known presets."""
    if preset not in FAMILIES:
        raise ValueError(f"model.preset: unknown preset {preset!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[preset]
