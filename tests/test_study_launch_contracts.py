"""Launching a study's runs: a run recorded as trained is scored, not trained again; a Slurm job does
what the local launcher does for its run (in its work folder, with the job's own environment); the
shared data is prepared once, reporting through the caller's log; prepare_data.py's command line."""

import json
import os
import sys
from types import SimpleNamespace

import pytest
import yaml

import prepare_data
import study
import study_runner
import study_slurm
from conftest import REPO, run_cli_out

TINY = ["data.source=builtin", "data.train_rows=300", "data.val_rows=20", "data.heldout_rows=12",
        "tokenizer.kind=bpe", "tokenizer.vocab_size=300", "model.context=32", "model.d_model=32", "model.n_layers=1",
        "model.n_heads=2", "model.d_ff=64", "train.max_steps=4", "train.batch_size=2", "train.precision=fp32"]


@pytest.fixture
def resolved(tmp_path, monkeypatch):
    """A two-arm study resolved with every output under tmp_path (nothing is trained)."""
    monkeypatch.chdir(REPO)
    path = tmp_path / "mini.yaml"
    arms = {"baseline": {"runner": "run_tid.py", "set": {"tid.method": "none"}},
            "random": {"runner": "run_tid.py", "set": {"tid.method": "random"}}}
    path.write_text(yaml.safe_dump({"seeds": [1], "arms": arms}))
    s = study.load_study(path)
    s.out_dir = tmp_path / "study"
    outputs = [f"data_dir={tmp_path / 'data'}", f"tokenizer_dir={tmp_path / 'tok'}",
               f"checkpoint_dir={tmp_path / 'ck'}", f"log_dir={tmp_path / 'logs'}"]
    runs = study.resolve_runs(s, ["configs/quickstart.yaml"], [*TINY, *outputs])
    (s.dir / "runs").mkdir(parents=True)
    return s, runs


class _Commands:
    """Stands in for subprocess.Popen in study_runner: records each command and its environment, exits
    with the status `fail` gives the command (0 by default)."""

    def __init__(self, fail=lambda cmd: 0):
        self.calls, self.fail = [], fail

    def __call__(self, cmd, stdout=None, stderr=None, env=None):
        self.calls.append((cmd, env, os.getcwd()))
        rc = self.fail(cmd)
        return type("Child", (), {"wait": lambda _self: rc})()

    def kinds(self):
        return ["score" if "perplexity-runners/run_perplexity.py" in cmd else "train" for cmd, _, _ in self.calls]


def test_a_trained_run_whose_scoring_failed_is_scored_again_not_retrained(resolved, monkeypatch):
    """Training succeeded, scoring failed (no checkpoint files here: training is stood in for): the
    next attempt only scores, at last.pt and best.pt, and the run ends as scored."""
    s, runs = resolved
    run = runs[0]
    first = _Commands(fail=lambda cmd: 1 if "run_perplexity.py" in " ".join(cmd) else 0)
    monkeypatch.setattr(study_runner.subprocess, "Popen", first)
    with pytest.raises(study_runner.StudyRunError, match="scoring"):
        study_runner.train_and_score(s, run, {}, set())
    assert first.kinds() == ["train", "score"]
    assert study_runner.run_state(run) == "trained"
    again = _Commands()
    monkeypatch.setattr(study_runner.subprocess, "Popen", again)
    study_runner.train_and_score(s, run, {}, set())
    assert again.kinds() == ["score", "score"]
    assert [cmd[cmd.index("--ckpt") + 1].rsplit("/", 1)[1] for cmd, _, _ in again.calls] == ["last.pt", "best.pt"]
    assert study_runner.run_state(run) == "scored"


def test_a_slurm_job_trains_and_scores_its_run_in_the_work_folder(resolved, monkeypatch, tmp_path):
    """run_job (what a submitted job runs) = the local launcher's train_and_score of that run, from the
    work folder, with the job's environment as it is (nothing added), leaving no child behind."""
    s, runs = resolved
    work = tmp_path / "work"
    work.mkdir()
    commands = _Commands()
    monkeypatch.setattr(study_runner.subprocess, "Popen", commands)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert study_slurm.run_job(s, runs[1], str(work)) == runs[1].name
    assert commands.kinds() == ["train", "score", "score"]
    assert all(env == dict(os.environ) and cwd == str(work) for _, env, cwd in commands.calls)
    assert commands.calls[0][0][:2] == [sys.executable, "run_tid.py"]
    assert study_runner.run_state(runs[1]) == "scored"


def test_the_shared_data_is_prepared_once_reporting_to_the_callers_log(resolved):
    s, runs = resolved
    said = []
    data = study_runner.prepare_once(runs, log=said.append)
    assert any(str(data.dir) in str(line) for line in said)
    assert data.dir.is_dir() and str(data.dir).startswith(runs[0].cfg.data_dir)


# ----------------------------------------------------------------------------- prepare_data.py

def test_prepare_data_cli_builds_from_config_files_alone(tmp_path, monkeypatch, capsys):
    """No --set given: the config files alone say what to prepare (runner default + --config)."""
    monkeypatch.chdir(REPO)
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "tokenizer_dir": str(tmp_path / "tok"),
        "data": {"source": "builtin", "train_rows": 100, "val_rows": 10, "heldout_rows": 10},
        "tokenizer": {"kind": "bpe", "vocab_size": 300}, "model": {"context": 32}}))
    code, err, out = run_cli_out(prepare_data.main, ["--config", str(overlay)], capsys)
    assert code == 0, err
    assert list((tmp_path / "data" / "processed").glob("*/meta.json"))


def test_prepare_data_defaults_to_the_quickstart_overlay_and_maps_errors_to_exit_codes(monkeypatch, capsys):
    """Without --config the runner's default config and configs/quickstart.yaml are merged (the README's
    quickstart data); --force and --verify reach prepare_run_data; a bad config exits 2, bad data 1."""
    seen = []
    monkeypatch.setattr(prepare_data, "load_config", lambda files, sets: seen.append((files, sets)) or "cfg")
    monkeypatch.setattr(prepare_data, "prepare_run_data", lambda cfg, **options: seen.append((cfg, options)))
    assert run_cli_out(prepare_data.main, [], capsys)[0] == 0
    assert seen == [(["configs/baseline.yaml", "configs/quickstart.yaml"], []),
                    ("cfg", {"force": False, "verify": False})]
    seen.clear()
    argv = ["--base", "configs/tid.yaml", "--config", "a.yaml", "--config", "b.yaml", "--set", "seed=3", "--force",
            "--verify"]
    assert run_cli_out(prepare_data.main, argv, capsys)[0] == 0
    assert seen == [(["configs/tid.yaml", "a.yaml", "b.yaml"], ["seed=3"]), ("cfg", {"force": True, "verify": True})]
    for error, code in [(prepare_data.ConfigError("bad key"), 2), (prepare_data.DataError("no rows"), 1)]:
        def fail(cfg, error=error, **options):
            raise error
        monkeypatch.setattr(prepare_data, "prepare_run_data", fail)
        got, err, _ = run_cli_out(prepare_data.main, [], capsys)
        assert (got, err.strip()) == (code, f"error: {error}")


def test_prepare_data_help_documents_its_options(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    code, _, out = run_cli_out(prepare_data.main, ["--help"], capsys)
    assert code == 0
    for phrase in ("Prepare (tokenize, pack, cache) the data of a config.", "the runner's default config, merged first",
                   "--set KEY=VALUE", "override a key", "YAML config; repeat to overlay"):
        assert phrase in out, phrase


# ----------------------------------------------------------------------------- execute and its commands

def test_execute_reuses_scored_runs_and_trains_the_rest_one_at_a_time_by_default(resolved, monkeypatch):
    """Runs already scored are skipped with one line saying how many; the others go to train_and_score with
    the worker's environment and the set of live children; the default is one run at a time."""
    s, runs = resolved
    scored = {runs[0].name}
    monkeypatch.setattr(study_runner, "run_state", lambda r: "scored" if r.name in scored else "new")
    calls, logged = [], []
    monkeypatch.setattr(study_runner, "train_and_score",
                        lambda st, run, env, children: calls.append((run.name, env, type(children))))
    study_runner.execute(s, runs, log=logged.append)
    assert logged == [f"1 of {len(runs)} runs already finished: reused"]
    assert calls == [(r.name, study_runner._slots(1)[0], set) for r in runs[1:]]
    logged.clear()
    scored.clear()
    study_runner.execute(s, runs, log=logged.append)                # nothing finished: nothing to say
    assert logged == [] and len(calls) == 2 * len(runs) - 1


def test_a_failed_run_stops_the_study_after_the_running_ones_were_stopped_and_waited_for(resolved, monkeypatch):
    """With two workers, the first failure raises; the run still going is terminated (its child), and
    execute returns only after that worker has finished (nothing left running behind the caller's back)."""
    import threading
    import time
    s, runs = resolved
    monkeypatch.setattr(study_runner, "run_state", lambda r: "new")
    finished, started = [], threading.Event()

    class Child:
        terminated = False

        def terminate(self):
            self.terminated = True
    child = Child()

    def train_and_score(st, run, env, children):
        if run is runs[0]:
            children.add(child)
            started.set()
            time.sleep(0.5)
            finished.append(run.name)
        else:
            started.wait(5)
            raise study_runner.StudyRunError("boom")
    monkeypatch.setattr(study_runner, "train_and_score", train_and_score)
    with pytest.raises(study_runner.StudyRunError, match="boom"):
        study_runner.execute(s, runs[:2], parallel=2, log=lambda *a: None)
    assert child.terminated and finished == [runs[0].name]


def test_call_logs_the_command_then_its_output_and_tracks_the_child_while_it_runs(tmp_path):
    """_call writes "$ <command>", then the child's stdout and stderr into the run's log; the child is in
    `children` exactly while it runs; a non-zero exit is a StudyRunError naming the step and the log."""
    class Tracking(set):
        def __init__(self):
            super().__init__()
            self.seen = []

        def add(self, item):
            self.seen.append(("add", item))
            super().add(item)

        def discard(self, item):
            self.seen.append(("discard", item))
            super().discard(item)
    code = "import os, sys; print('out', os.environ['PROBE']); sys.stdout.flush(); print('err', file=sys.stderr)"
    cmd = [sys.executable, "-c", code]
    log_path = tmp_path / "run.log"
    children = Tracking()
    with open(log_path, "w") as out:
        study_runner._call(cmd, {"PROBE": "42"}, out, log_path, "training", children)
    lines = log_path.read_text().splitlines()
    assert lines[0] == "$ " + " ".join(cmd) and sorted(lines[1:]) == ["err", "out 42"]
    [(op1, child), (op2, same)] = children.seen
    assert (op1, op2) == ("add", "discard") and child is same and child is not None and not children
    with open(log_path, "a") as out, pytest.raises(study_runner.StudyRunError,
                                                   match=f"scoring failed \\(exit 3\\): see {log_path}"):
        study_runner._call([sys.executable, "-c", "raise SystemExit(3)"], {}, out, log_path, "scoring", set())


class _Executor:
    """Stands in for submitit's executor: records each job's name and submission; job ids 100, 101, ..."""

    def __init__(self):
        self.names, self.submitted = [], []

    def update_parameters(self, name):
        self.names.append(name)

    def submit(self, fn, study, run, workdir):
        self.submitted.append((fn, run.name, workdir))
        return type("Job", (), {"job_id": str(100 + len(self.submitted) - 1)})()


@pytest.mark.parametrize("n_scored", [0, 1])
def test_each_unfinished_run_is_one_job_named_after_it_and_recorded(resolved, monkeypatch, n_scored):
    """execute_on_slurm: runs already scored are reused (said once, only when there are some); each other
    run is submitted as a job of its own name, run_job(study, run, cwd), its id recorded in jobs/<run>.json;
    one executor for all; then every job is waited for."""
    s, runs = resolved
    scored = {r.name for r in runs[:n_scored]}
    executors, waited, lines = [], [], []
    monkeypatch.setattr(study_slurm, "_executor", lambda cfg, d: executors.append(_Executor()) or executors[-1])
    monkeypatch.setattr(study_slurm, "_wait", lambda st, jobs, poll: waited.append(sorted(jobs)))
    monkeypatch.setattr(study_runner, "run_state", lambda run: "scored" if run.name in scored else "new")
    todo = [r.name for r in runs if r.name not in scored]
    study_slurm.execute_on_slurm(s, runs, study_slurm.SlurmConfig(executor="local"), log=lines.append)
    (ex,) = executors
    assert ex.names == todo and [(fn, name) for fn, name, _ in ex.submitted] == [(study_slurm.run_job, n) for n in todo]
    assert all(workdir == os.getcwd() for _, _, workdir in ex.submitted) and waited == [sorted(todo)]
    records = {p.stem: json.loads(p.read_text()) for p in (s.dir / "jobs").glob("*.json")}
    assert records == {n: {"run": n, "job_id": str(100 + i), "executor": "local", "folder": str(s.dir / "jobs")}
                       for i, n in enumerate(todo)}
    assert [line for line in lines if "submitted" in line] == [f"  {n}: submitted as job {100 + i} (local)"
                                                               for i, n in enumerate(todo)]
    reused = [line for line in lines if "already finished" in line]
    assert reused == ([f"1 of {len(runs)} runs already finished: reused"] if scored else [])


class _Job:
    """A scheduler job that ends at its `ends_at`-th look."""

    def __init__(self, job_id, ends_at, state="COMPLETED"):
        self.job_id, self.ends_at, self.state, self.looks = job_id, ends_at, state, 0

    def done(self):
        self.looks += 1
        return self.looks >= self.ends_at


def test_waiting_reports_each_job_when_it_ends_not_after_those_submitted_before_it(resolved, monkeypatch, capsys):
    """_wait looks at every pending job at each poll: a job that ends first is reported first, whatever the
    order of submission; the bar counts the runs scored out of all."""
    s, runs = resolved
    monkeypatch.setattr(study_runner, "run_state", lambda run: "scored")
    polls = []
    monkeypatch.setattr(study_slurm.time, "sleep", polls.append)
    jobs = {runs[0].name: (runs[0], _Job("11", ends_at=3)), runs[1].name: (runs[1], _Job("12", ends_at=1))}
    study_slurm._wait(s, jobs, poll_s=7.5)
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"  {runs[1].name}: trained and scored (job 12)",
                                    f"  {runs[0].name}: trained and scored (job 11)"]
    assert polls == [7.5, 7.5] and jobs[runs[1].name][1].looks == 1             # never looked at once ended
    assert f"study {s.name} (jobs)" in out.err and "2/2" in out.err


def test_runs_that_did_not_finish_are_named_with_their_logs_after_every_job_ended(resolved, monkeypatch, capsys):
    """_wait reports every run whose job ended without a score in one error, each with its job, the job's state,
    its run log and the job's stderr; the bar counts the scored runs only."""
    s, runs = resolved
    monkeypatch.setattr(study_runner, "run_state", lambda run: "scored" if run is runs[0] else "trained")
    monkeypatch.setattr(study_slurm.time, "sleep", lambda seconds: None)
    jobs = {}
    for i, (name, run, state) in enumerate([("a", runs[0], "COMPLETED"), ("b", runs[1], "FAILED"),
                                            ("c", runs[1], "TIMEOUT")]):
        job = _Job(str(20 + i), ends_at=1 + i, state=state)
        job.paths = SimpleNamespace(stderr=f"jobs/{20 + i}_0_log.err")
        jobs[name] = (run, job)
    with pytest.raises(study_runner.StudyRunError) as e:
        study_slurm._wait(s, jobs, poll_s=1)
    failed = [f"{name} (job {20 + i}, {state}: see {s.dir / 'runs' / name}.log and jobs/{20 + i}_0_log.err)"
              for i, name, state in [(1, "b", "FAILED"), (2, "c", "TIMEOUT")]]
    assert str(e.value) == (f"2 of 3 runs did not finish: {'; '.join(failed)}. Their jobs are submitted again, "
                            "resuming from last.pt, at the next launch")
    bar = capsys.readouterr().err
    assert "1/3" in bar and "2/3" not in bar and "3/3" not in bar


def test_an_interrupted_wait_leaves_the_jobs_to_the_scheduler_and_says_so(resolved, monkeypatch, capsys):
    s, runs = resolved

    def interrupted(job):
        raise KeyboardInterrupt
    monkeypatch.setattr(study_slurm, "_ended", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study_slurm._wait(s, {runs[0].name: (runs[0], _Job("1", ends_at=1))}, poll_s=1)
    assert capsys.readouterr().out == ("jobs still queued or running are left to the scheduler; the next launch "
                                       "waits for them\n")


@pytest.mark.parametrize("executor, kind", [("slurm", "SlurmJob"), ("local", "LocalJob")])
def test_a_recorded_job_is_found_again_as_its_schedulers_kind_of_job_while_it_runs(monkeypatch, executor, kind):
    """_found_again: a record of a Slurm job comes back as submitit's SlurmJob, of a local one as its LocalJob,
    in the record's folder under its id; once that job has ended, None (the run is submitted again)."""
    def job_class(name):
        return lambda folder, job_id: SimpleNamespace(kind=name, folder=folder, job_id=job_id)
    jobs = SimpleNamespace(SlurmJob=job_class("SlurmJob"), LocalJob=job_class("LocalJob"))
    monkeypatch.setattr(study_slurm, "_submitit", lambda: jobs)
    monkeypatch.setattr(study_slurm, "_ended", lambda job: False)
    record = {"executor": executor, "folder": "studies/s/jobs", "job_id": "42"}
    job = study_slurm._found_again(record)
    assert (job.kind, str(job.folder), job.job_id) == (kind, "studies/s/jobs/%j", "42")
    monkeypatch.setattr(study_slurm, "_ended", lambda job: True)
    assert study_slurm._found_again(record) is None


def test_the_executor_is_the_scheduler_named_not_the_one_submitit_would_guess(tmp_path):
    """launcher.executor picks submitit's cluster ("debug" runs jobs in this process; auto-detection would pick
    local here), with the time limit and the resources per run."""
    pytest.importorskip("submitit")
    debug = study_slurm._executor(study_slurm.SlurmConfig(executor="debug"), tmp_path / "a")
    assert debug.cluster == "debug"
    local = study_slurm._executor(study_slurm.SlurmConfig(executor="local", time_limit_min=30, gpus_per_run=0,
                                                          cpus_per_run=2), tmp_path / "b")
    assert local.cluster == "local"
    assert local._executor.parameters == {"timeout_min": 30, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0,
                                          "cpus_per_task": 2}
