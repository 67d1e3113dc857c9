"""A run's files: every output folder is checked writable before any work (the checkpoint folder only
when checkpoints are written), and the outputs a run owns include its TensorBoard event files."""

import pytest

from experiment_config import RunConfig, TrainConfig
from run_files import TrainingError, check_output_dirs, claim_outputs, run_outputs


def _cfg(tmp_path, checkpoints=True, **dirs) -> RunConfig:
    places = {"log_dir": str(tmp_path / "logs"), "checkpoint_dir": str(tmp_path / "ck"), **dirs}
    return RunConfig(run_name="r", train=TrainConfig(checkpoints=checkpoints), **places)


@pytest.fixture
def a_file(tmp_path):
    """A plain file where a folder is asked for: no folder can be made there."""
    path = tmp_path / "taken"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("key", ["log_dir", "checkpoint_dir"])
def test_an_output_folder_that_is_a_file_is_refused_naming_its_key(tmp_path, a_file, key):
    with pytest.raises(TrainingError, match=rf"^{key}={a_file}: .* is a file, not a folder"):
        check_output_dirs(_cfg(tmp_path, **{key: str(a_file)}))


def test_the_checkpoint_folder_is_not_checked_when_no_checkpoint_is_written(tmp_path, a_file):
    """train.checkpoints=false writes nothing under checkpoint_dir: a bad one is no reason to refuse
    (and no folder is made there)."""
    check_output_dirs(_cfg(tmp_path, checkpoints=False, checkpoint_dir=str(a_file / "sub")))
    check_output_dirs(_cfg(tmp_path, checkpoints=False, checkpoint_dir=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists() and (tmp_path / "logs").is_dir()


def test_tensorboard_events_are_outputs_of_the_run(tmp_path):
    """logs/tensorboard/<run>/events.out.tfevents.* belong to the run: listed as its outputs, so a
    new run of that name is refused and --force replaces them; files beside them are not the run's."""
    cfg = _cfg(tmp_path)
    events = tmp_path / "logs" / "tensorboard" / "r"
    events.mkdir(parents=True)
    event = events / "events.out.tfevents.1700000000.host.1.0"
    event.write_bytes(b"\x00")
    (events / "notes.txt").write_text("mine")
    assert run_outputs(cfg) == [event]
    with pytest.raises(TrainingError, match="already has outputs"):
        claim_outputs(cfg, resume=False, force=False)
    assert claim_outputs(cfg, resume=False, force=True) == [event]
