"""run_study.py --launcher slurm through submitit's local executor (each job a process here): the local
launcher's report, jobs found again after the launching process dies (none submitted twice), and a run
whose job was killed submitted again and resumed from its last.pt."""

import json
import subprocess
import sys

import pytest

import study
import study_runner
import study_slurm
from conftest import REPO, run_cli, run_cli_out
from test_study import TINY, _in_process, _study_file

submitit = pytest.importorskip("submitit")

ARMS = {"baseline": {"runner": "run_tid.py", "set": {"tid.method": "none"}},
        "random": {"runner": "run_tid.py", "set": {"tid.method": "random"}}}
SLURM = ["--launcher", "slurm", "--set", "launcher.executor=local", "--set", "launcher.gpus_per_run=0",
         "--set", "launcher.cpus_per_run=1", "--set", "launcher.poll_s=0.2", "--set", "launcher.time_limit_min=10"]


class LauncherDied(Exception):
    """Stands for the launching process dying after it submitted the jobs."""


def _argv(tmp_path, path: str, name: str) -> list[str]:
    """The study on the shared data, with its checkpoints, logs and report under tmp_path/name."""
    sets = [*TINY, f"data_dir={tmp_path / 'data'}", f"tokenizer_dir={tmp_path / 'tok'}",
            f"checkpoint_dir={tmp_path / name / 'ck'}", f"log_dir={tmp_path / name / 'logs'}"]
    return ["--study", path, "--config", "configs/quickstart.yaml", "--out", str(tmp_path / name / "out"),
            *(a for s in sets for a in ("--set", s))]


def _shape(out_dir) -> dict:
    """What the report holds, without the numbers: arms, rows and columns of summary.json and summary.md."""
    report = json.loads((out_dir / "summary.json").read_text())
    tables = [(line.count("|"), line.split("|")[1].strip())          # columns and the row's label
              for line in (out_dir / "summary.md").read_text().splitlines() if line.startswith("|")]
    return {"keys": sorted(report), "arms": {a: sorted(m) for a, m in report["arms"].items()},
            "runs": [(r["arm"], r["seed"], sorted(r)) for r in report["runs"]],
            "comparisons": {a: sorted(c) for a, c in report["comparisons"].items()}, "md": tables}


@pytest.fixture
def submissions(monkeypatch) -> list[str]:
    """The run name of every job submitted."""
    names, submit = [], submitit.AutoExecutor.submit

    def counted(self, fn, study, run, workdir):
        names.append(run.name)
        return submit(self, fn, study, run, workdir)

    monkeypatch.setattr(submitit.AutoExecutor, "submit", counted)
    return names


def test_jobs_are_found_again_after_the_launcher_dies_and_the_report_is_the_local_ones(
        tmp_path, monkeypatch, capsys, submissions):
    monkeypatch.chdir(REPO)
    path = _study_file(tmp_path, ARMS)
    with monkeypatch.context() as m:
        m.setattr(study_runner, "_call", _in_process)
        assert run_cli(study_runner.main, _argv(tmp_path, path, "local"), capsys)[0] == 0

    argv = [*_argv(tmp_path, path, "slurm"), *SLURM]
    with monkeypatch.context() as m:
        m.setattr(study_slurm, "_wait", lambda *a: (_ for _ in ()).throw(LauncherDied()))
        with pytest.raises(LauncherDied):
            study_runner.main(argv)
    first = sorted(submissions)
    assert len(first) == 2 and len(set(first)) == 2
    records = sorted((tmp_path / "slurm/out/jobs").glob("*.json"))
    assert [json.loads(p.read_text())["run"] for p in records] == first

    code, err, out = run_cli_out(study_runner.main, argv, capsys)
    assert code == 0, err
    assert sorted(submissions) == first                                 # no job submitted twice
    assert out.count("found again") + out.count("already finished") >= 1
    assert _shape(tmp_path / "slurm/out") == _shape(tmp_path / "local/out")
    report = json.loads((tmp_path / "slurm/out/summary.json").read_text())
    assert [r["final_step"] for r in report["runs"]] == [4, 4]



def test_a_run_whose_job_was_killed_is_submitted_again_and_resumes(tmp_path, monkeypatch, capsys, submissions):
    """Through the debug executor (each job in this process, the commands too, as tests/test_study.py runs them)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(study_runner, "_call", _in_process)
    argv = [*_argv(tmp_path, _study_file(tmp_path, ARMS), "slurm"), *SLURM, "--set", "launcher.executor=debug"]
    assert run_cli(study_runner.main, argv, capsys)[0] == 0
    report = json.loads((tmp_path / "slurm/out/summary.json").read_text())
    first, second = (r["run"] for r in report["runs"])
    assert sorted(submissions) == sorted([first, second])

    # as if the second run's job had been killed after step 2: last.pt from step 2, no record of finishing
    (tmp_path / "slurm/out/runs" / f"{second}.json").unlink()
    ckpt = tmp_path / "slurm/ck" / second
    (ckpt / "last.pt").write_bytes((ckpt / "step_2.pt").read_bytes())
    code, err, out = run_cli_out(study_runner.main, argv, capsys)
    assert code == 0, err
    assert sorted(submissions) == sorted([first, second, second])       # the killed run only, once more
    assert "1 of 2 runs already finished: reused" in out
    log = (tmp_path / "slurm/out/runs" / f"{second}.log").read_text()
    assert log.count("--resume") == 1 and "resumed from step 2" in log
    assert [r["final_step"] for r in json.loads((tmp_path / "slurm/out/summary.json").read_text())["runs"]] == [4, 4]


def test_a_recorded_local_job_is_waited_for_while_its_process_lives(tmp_path):
    job = subprocess.Popen(["sleep", "60"])  # stands for a job's controller process
    record = {"run": "r", "job_id": str(job.pid), "executor": "local", "folder": str(tmp_path)}
    try:
        assert study_slurm._found_again(record).job_id == str(job.pid)
    finally:
        job.kill()
        job.wait()
    assert study_slurm._found_again(record) is None                      # killed: submitted again
    assert study_slurm._found_again({**record, "executor": "debug"}) is None


def test_launcher_settings_are_checked_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    path = _study_file(tmp_path, ARMS, launcher={"partition": "gpu", "gpus": 2})
    argv = _argv(tmp_path, path, "x")
    code, err = run_cli(study_runner.main, [*argv, "--launcher", "slurm"], capsys)
    assert code == 2 and err.strip() == ("error: unknown config key 'launcher.gpus'; valid keys here: executor, "
                                         "partition, account, gpus_per_run, cpus_per_run, mem_gb, time_limit_min, "
                                         "setup, poll_s")
    path = _study_file(tmp_path, ARMS, launcher={"partition": "gpu"})
    code, err = run_cli(study_runner.main, [*_argv(tmp_path, path, "x"), "--launcher", "slurm",
                                            "--set", "launcher.executor=cloud"], capsys)
    assert code == 2 and err.strip() == "error: launcher.executor: 'cloud' is not one of ['slurm', 'local', 'debug']"
    code, err = run_cli(study_runner.main, [*_argv(tmp_path, path, "x"), "--set", "launcher.partition=a"], capsys)
    assert code == 2 and err.strip() == "error: --set launcher.partition=a: launcher.* settings are for --launcher slurm"
    code, err = run_cli(study_runner.main, [*_argv(tmp_path, path, "x"), "--launcher", "slurm", "--parallel", "2"],
                        capsys)
    assert code == 2 and "--parallel is for --launcher local" in err
    cfg = study_slurm.slurm_config(study.load_study(path), ["launcher.time_limit_min=30"])
    assert (cfg.partition, cfg.time_limit_min, cfg.executor) == ("gpu", 30, "slurm")
    assert not (tmp_path / "data").exists()                            # nothing prepared


def test_without_submitit_one_line_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setitem(sys.modules, "submitit", None)
    code, err = run_cli(study_runner.main, [*_argv(tmp_path, _study_file(tmp_path, ARMS), "x"), *SLURM], capsys)
    assert code == 2 and err.strip() == 'error: --launcher slurm needs submitit: pip install -e ".[cluster]"'
