"""Logged statistics, each declaring how repeated values combine.

A statistic is reported once per layer, micro-batch or validation batch and logged once per step
or evaluation. Each value says how its repeats combine: `Stat.mean(x)` (load, drop ratios,
losses: the average of everything reported) or `Stat.sum(x)` (seconds spent: the total).

    stats = combine(stats, {"moe_dropped": Stat.mean(dropped), "tid_score_time": Stat.sum(clock)})
    values = {k: s.value for k, s in stats.items()}    # tensors, floats or Stopwatches
"""

from dataclasses import dataclass
from typing import Any

import torch

from runtime import Stopwatch, fetch


@dataclass(frozen=True)
class Stat:
    """A running statistic: `total` of `count` reports (a tensor, a float or anything with +)."""
    total: Any
    count: int = 1
    how: str = "mean"           # mean: total / count | sum: total

    @staticmethod
    def mean(value) -> "Stat":
        return Stat(value, 1, "mean")

    @staticmethod
    def sum(value) -> "Stat":
        return Stat(value, 1, "sum")

    def __add__(self, other: "Stat") -> "Stat":
        if other.how != self.how:
            raise ValueError(f"cannot combine a {self.how} statistic with a {other.how} one")
        return Stat(self.total + other.total, self.count + other.count, self.how)

    @property
    def value(self):
        """The combined value: the mean of the reports, or their sum."""
        return self.total / self.count if self.how == "mean" else self.total


def combine(total: dict[str, Stat], new: dict[str, Stat]) -> dict[str, Stat]:
    """Key by key: reports of the same statistic add up (and count), new keys join."""
    out = dict(total)
    for key, stat in new.items():
        out[key] = out[key] + stat if key in out else stat
    return out


def values(stats: dict[str, Stat]) -> dict[str, Any]:
    """The combined value of each statistic."""
    return {key: stat.value for key, stat in stats.items()}


@dataclass
class StepRecord:
    """One optimizer step's results, still on the device until `read_back`."""
    step: int
    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor
    stats: dict[str, Stat]
    clock: Stopwatch


def read_back(records: list[StepRecord]) -> list[dict]:
    """The numbers of `records` on the host with one device-to-host copy, as rows of step, lr, loss,
    grad_norm, dt (the step's seconds) and stats (combined values)."""
    keys = [sorted(r.stats) for r in records]
    flat = [v for r, ks in zip(records, keys) for v in (r.loss, r.grad_norm, r.clock, *(r.stats[k].value for k in ks))]
    numbers = iter(fetch(flat))
    return [{"step": r.step, "lr": r.lr, "loss": next(numbers), "grad_norm": next(numbers), "dt": next(numbers),
             "stats": {k: next(numbers) for k in ks}} for r, ks in zip(records, keys)]
