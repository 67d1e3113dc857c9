"""log.tensorboard=true: the event files read back (tensorboard's own reader) equal the CSV, after a resume too."""

import csv
import shutil
import sys

import pytest

import generic_runner
from conftest import REPO, run_cli, tiny_run_config, tiny_sets
from run_files import run_outputs
from train_logs import RunLogger

pytest.importorskip("tensorboard")

# a mixture of experts with TID, so the CSV has MoE and TID columns; read back every 3 steps (groups of rows)
SETS = ["model.preset=falcon", "model.n_experts=4", "tid.method=random", "tid.p_start=0.2", "tid.p_end=0.2",
        "train.log_every=3", "log.tensorboard=true"]


def _csv_scalars(path) -> dict[str, dict[int, float]]:
    """{column: {step: value}} of every numeric cell of the CSV (empty cells and words left out)."""
    out: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for column, cell in row.items():
                if column == "step" or not cell:
                    continue
                try:
                    value = float(cell)
                except ValueError:  # e.g. tid_drop = high
                    continue
                out.setdefault(column, {})[int(row["step"])] = value
    return out


def _tag(column: str) -> str:
    if column.startswith("val_"):
        return "val/" + column[len("val_"):]
    return "train/" + (column[len("train_"):] if column.startswith("train_") else column)


def _event_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (restarts purged), every event kept."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_events_equal_csv(root, run: str) -> dict:
    expected = _csv_scalars(root / "logs" / "csv" / f"{run}.csv")
    events = _event_scalars(root / "logs" / "tensorboard" / run)
    assert set(events) == {_tag(c) for c in expected}
    for column, by_step in expected.items():
        got = events[_tag(column)]
        assert [s for s, _ in got] == sorted(by_step), column          # each step once, in order
        for step, value in got:                                        # events hold float32
            assert value == pytest.approx(by_step[step], rel=1e-6, abs=1e-30, nan_ok=True), (column, step)
    return expected


def test_events_equal_the_csv_for_every_scalar_column(tmp_path):
    cfg = tiny_run_config(tmp_path, SETS)
    generic_runner.train(cfg)
    expected = _assert_events_equal_csv(tmp_path, cfg.run_name)
    for column in ("train_loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_bpb"):
        assert len(expected[column]) == (10 if not column.startswith("val_") else 2), column  # evals at 5, 10
    # TID's realised ratio and timing, the MoE statistics in training and at evaluation
    assert {"tid_drop_ratio", "tid_score_time", "moe_balance_l0", "moe_dropped", "aux_loss",
            "val_moe_balance_l1"} <= set(expected)
    assert any(p.name.startswith("events.out.tfevents.") for p in run_outputs(cfg))  # --force deletes them too


def test_a_resumed_run_shows_each_step_once_with_the_resumed_values(tmp_path):
    """As after kill -9 at step 10 with last.pt from step 5: the resumed run logs 6..10 again, with other
    learning rates (a longer schedule), and TensorBoard must show those, once each."""
    cfg = tiny_run_config(tmp_path, [*SETS, "train.keep_every=5"])
    generic_runner.train(cfg)
    ckpt = tmp_path / "checkpoints" / cfg.run_name
    shutil.copy(ckpt / "step_5.pt", ckpt / "last.pt")
    first_lr = _csv_scalars(tmp_path / "logs" / "csv" / f"{cfg.run_name}.csv")["lr"]
    generic_runner.train(tiny_run_config(tmp_path, [*SETS, "train.keep_every=5", "train.max_steps=12"]), resume=True)
    expected = _assert_events_equal_csv(tmp_path, cfg.run_name)
    assert sorted(expected["lr"]) == list(range(1, 13))
    assert expected["lr"][8] != pytest.approx(first_lr[8])              # the values are the resumed run's
    assert len(list((tmp_path / "logs" / "tensorboard" / cfg.run_name).iterdir())) == 2


def test_logged_steps_are_on_disk_when_save_returns(tmp_path):
    """save() runs before last.pt is written: a kill -9 right after must not lose the events it covers."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "logs" / "tensorboard" / "r"))
    logger = RunLogger("r", tmp_path / "logs", {}, tensorboard=writer)
    for step in (1, 2, 3):
        logger.log_step(step, 4.0 / step, 1e-3 * step, 0.5 + step, 0.25, 64, float(step), {"moe_balance": 0.1 * step})
    logger.log_eval(3, 2.5, 1.25, {"moe_balance": 0.7})
    logger.save()
    expected = _assert_events_equal_csv(tmp_path, "r")                 # read while the writer is still open
    assert expected["val_moe_balance"] == {3: 0.7} and len(expected["train_loss"]) == 3
    writer.close()


def test_without_tensorboard_installed_one_line_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    argv = [a for s in [*tiny_sets(tmp_path), "train.max_steps=2", "log.tensorboard=true"] for a in ("--set", s)]
    code, err = run_cli(lambda a: generic_runner.main(str(REPO / "configs" / "baseline.yaml"), a), argv, capsys)
    assert code == 2
    assert "Traceback" not in err                                       # above it: data preparation's progress bars
    assert err.strip().splitlines()[-1] == ('error: log.tensorboard=true needs TensorBoard: pip install -e '
                                            '".[tensorboard]" (or log.tensorboard=false)')
