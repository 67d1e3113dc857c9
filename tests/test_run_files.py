"""run_files: a run's outputs are exactly its checkpoints and logs, claiming them refuses or deletes only
those, and the run's locks keep a second writer out."""

import pytest

from experiment_config import RunConfig, TrainConfig
from fileio import LockedError, exclusive_lock
from run_files import TrainingError, claim_outputs, run_lock, run_locks, run_outputs, run_paths


def _cfg(tmp_path, name="r1", checkpoints=True) -> RunConfig:
    return RunConfig(run_name=name, checkpoint_dir=str(tmp_path / "ckpt"), log_dir=str(tmp_path / "logs"),
                     train=TrainConfig(checkpoints=checkpoints))


def _touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _outputs_of(tmp_path, name):
    """The files a run called `name` writes, written out by hand."""
    ckpt, logs = tmp_path / "ckpt" / name, tmp_path / "logs"
    return [ckpt / "last.pt", ckpt / "best.pt", ckpt / "step_20.pt", ckpt / "step_100.pt",
            logs / "losses" / f"{name}.pkl", logs / "times" / f"{name}.pkl", logs / "csv" / f"{name}.csv"]


def test_paths_of_a_run(tmp_path):
    paths = run_paths(_cfg(tmp_path))
    assert paths == {"dir": tmp_path / "ckpt" / "r1", "last": tmp_path / "ckpt" / "r1" / "last.pt",
                     "best": tmp_path / "ckpt" / "r1" / "best.pt"}


def test_outputs_are_the_runs_checkpoints_and_logs_only(tmp_path):
    mine = [_touch(p) for p in _outputs_of(tmp_path, "r1")]
    others = [_touch(p) for p in _outputs_of(tmp_path, "r2")]
    others.append(_touch(tmp_path / "ckpt" / "r1" / "notes.txt"))
    assert sorted(run_outputs(_cfg(tmp_path))) == sorted(mine)
    (tmp_path / "ckpt" / "r1" / "best.pt").unlink()
    assert sorted(run_outputs(_cfg(tmp_path))) == sorted(p for p in mine if p.name != "best.pt")


def test_logs_count_as_outputs_without_a_checkpoint_folder(tmp_path):
    log = _touch(tmp_path / "logs" / "csv" / "r1.csv")
    assert run_outputs(_cfg(tmp_path)) == [log]


def test_existing_outputs_are_refused_naming_the_ways_on(tmp_path):
    mine = [_touch(p) for p in _outputs_of(tmp_path, "r1")]
    with pytest.raises(TrainingError, match="'r1' already has outputs .*--resume .*--force .*--run-name"):
        claim_outputs(_cfg(tmp_path), resume=False, force=False)
    assert all(p.is_file() for p in mine)


def test_force_deletes_the_runs_outputs_and_nothing_else(tmp_path):
    mine = [_touch(p) for p in _outputs_of(tmp_path, "r1")]
    others = [_touch(p) for p in _outputs_of(tmp_path, "r2")] + [_touch(tmp_path / "ckpt" / "r1" / "notes.txt")]
    replaced = claim_outputs(_cfg(tmp_path), resume=False, force=True)
    assert all(p.is_file() for p in mine)  # deleted by the caller once the new run passed its checks
    assert sorted(replaced) == sorted(mine)
    assert all(p.is_file() for p in others)


def test_resume_keeps_the_outputs_and_needs_last(tmp_path):
    logs = [_touch(p) for p in _outputs_of(tmp_path, "r1")[4:]]
    with pytest.raises(TrainingError, match="--resume: no checkpoint at .*last.pt"):
        claim_outputs(_cfg(tmp_path), resume=True, force=False)
    last = _touch(tmp_path / "ckpt" / "r1" / "last.pt")
    claim_outputs(_cfg(tmp_path), resume=True, force=True)
    assert last.is_file() and all(p.is_file() for p in logs)


def test_a_new_run_starts_on_an_empty_folder(tmp_path):
    claim_outputs(_cfg(tmp_path), resume=False, force=False)  # nothing there: nothing refused


def test_temporaries_of_the_runs_files_are_removed_and_others_kept(tmp_path):
    stale = [_touch(tmp_path / "ckpt" / "r1" / ".last.pt.abc.tmp"), _touch(tmp_path / "logs" / "csv" / ".r1.csv.k2.tmp"),
             _touch(tmp_path / "logs" / "losses" / ".r1.pkl.x.tmp")]
    kept = [_touch(tmp_path / "ckpt" / "r2" / ".last.pt.abc.tmp"), _touch(tmp_path / "logs" / "csv" / ".r2.csv.k2.tmp")]
    claim_outputs(_cfg(tmp_path), resume=False, force=False)
    assert not any(p.exists() for p in stale)
    assert all(p.is_file() for p in kept)


def test_locks_sit_in_the_log_and_checkpoint_folders(tmp_path):
    assert run_locks(_cfg(tmp_path)) == [tmp_path / "logs" / ".locks" / "r1.lock", tmp_path / "ckpt" / ".locks" / "r1.lock"]
    assert run_locks(_cfg(tmp_path, checkpoints=False)) == [tmp_path / "logs" / ".locks" / "r1.lock"]


def test_the_writer_holds_every_lock_for_the_run(tmp_path):
    cfg = _cfg(tmp_path)
    with run_lock(cfg, held_here=True):
        for path in run_locks(cfg):
            with pytest.raises(LockedError):
                with exclusive_lock(path):
                    pass
    for path in run_locks(cfg):  # released when the run ends
        with exclusive_lock(path):
            pass


def test_a_rank_that_does_not_write_holds_no_lock(tmp_path):
    cfg = _cfg(tmp_path)
    with run_lock(cfg, held_here=False):
        for path in run_locks(cfg):
            with exclusive_lock(path):
                pass


@pytest.mark.parametrize("which", [0, 1])
def test_a_run_whose_lock_is_held_is_refused(tmp_path, which):
    cfg = _cfg(tmp_path)
    with exclusive_lock(run_locks(cfg)[which]):
        with pytest.raises(TrainingError, match="'r1' is already being trained .*held by process .*--run-name"):
            with run_lock(cfg, held_here=True):
                pass
