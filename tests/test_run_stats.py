"""Statistics declare how they combine: means average every report, sums add them."""

import pytest
import torch

from run_stats import Stat, StepRecord, combine, read_back, values
from runtime import Stopwatch


def test_means_average_every_report_and_sums_add():
    total = {}
    for dropped, seconds in ((0.1, 1.0), (0.3, 2.0), (0.5, 4.0)):
        total = combine(total, {"dropped": Stat.mean(torch.tensor(dropped)), "score_time": Stat.sum(seconds)})
    out = values(total)
    assert out["dropped"].item() == pytest.approx(0.3) and out["score_time"] == 7.0
    assert total["dropped"].count == 3


def test_a_key_reported_later_joins_and_kinds_do_not_mix():
    total = combine({"a": Stat.mean(1.0)}, {"b": Stat.mean(5.0)})
    assert values(combine(total, {"a": Stat.mean(3.0)})) == {"a": 2.0, "b": 5.0}
    with pytest.raises(ValueError, match="mean statistic with a sum"):
        Stat.mean(1.0) + Stat.sum(1.0)


def test_read_back_returns_each_records_numbers_in_order():
    cpu = torch.device("cpu")
    records = []
    for step in (1, 2):
        with Stopwatch(cpu) as clock:
            pass
        stats = {"z": Stat.mean(torch.tensor(float(step))), "a": Stat.sum(2.0 * step) + Stat.sum(1.0)}
        records.append(StepRecord(step, 0.1 * step, torch.tensor(3.0 * step), torch.tensor(4.0 * step), stats, clock))
    rows = read_back(records)
    assert [(r["step"], r["lr"], r["loss"], r["grad_norm"]) for r in rows] == [(1, 0.1, 3.0, 4.0), (2, 0.2, 6.0, 8.0)]
    assert [r["stats"] for r in rows] == [{"a": 3.0, "z": 1.0}, {"a": 5.0, "z": 2.0}]
    assert all(r["dt"] >= 0 for r in rows)
