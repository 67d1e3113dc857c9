"""Launching a study's runs: a run recorded as trained is scored, not trained again; a Slurm job does
what the local launcher does for its run (in its work folder, with the job's own environment); the
shared data is prepared once, reporting through the caller's log; prepare_data.py's command line."""

import json
import os
import sys
from pathlib import Path
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


def _mini_study(tmp_path, seeds: list[int]):
    """mini.yaml, a study of two arms (TID off, random TID) over `seeds`, and the --set items that put every
    output under tmp_path."""
    path = tmp_path / "mini.yaml"
    arms = {"baseline": {"runner": "run_tid.py", "set": {"tid.method": "none"}},
            "random": {"runner": "run_tid.py", "set": {"tid.method": "random"}}}
    path.write_text(yaml.safe_dump({"seeds": seeds, "arms": arms}))
    outputs = [f"data_dir={tmp_path / 'data'}", f"tokenizer_dir={tmp_path / 'tok'}",
               f"checkpoint_dir={tmp_path / 'ck'}", f"log_dir={tmp_path / 'logs'}"]
    return path, outputs


@pytest.fixture
def resolved(tmp_path, monkeypatch):
    """A two-arm study resolved with every output under tmp_path (nothing is trained)."""
    monkeypatch.chdir(REPO)
    path, outputs = _mini_study(tmp_path, seeds=[1])
    s = study.load_study(path)
    s.out_dir = tmp_path / "study"
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


def test_a_slurm_job_asks_for_the_resources_partition_account_and_setup_configured(tmp_path, monkeypatch):
    """On a cluster (an `srun` on PATH), the sbatch parameters are the launcher settings: time, GPUs, CPUs,
    memory, partition, account, the setup line; the ones left at None are left to the cluster."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = study_slurm.SlurmConfig(partition="gpu", account="lab", mem_gb=32, setup="source .venv/bin/activate",
                                  gpus_per_run=2, cpus_per_run=4, time_limit_min=60)
    executor = study_slurm._executor(cfg, tmp_path / "jobs")
    assert executor.cluster == "slurm"
    assert executor._executor.parameters == {"time": 60, "nodes": 1, "ntasks_per_node": 1, "gpus_per_node": 2,
                                             "cpus_per_task": 4, "mem": "32GB", "partition": "gpu",
                                             "account": "lab", "setup": ["source .venv/bin/activate"]}
    default = study_slurm._executor(study_slurm.SlurmConfig(), tmp_path / "jobs2")
    assert default._executor.parameters == {"time": 240, "nodes": 1, "ntasks_per_node": 1, "gpus_per_node": 1,
                                            "cpus_per_task": 8}


@pytest.mark.parametrize("settings, refused", [
    ({"cpus_per_run": 0}, "launcher.cpus_per_run must be positive, got 0"),
    ({"time_limit_min": 0}, "launcher.time_limit_min must be positive, got 0"),
    ({"poll_s": 0.0}, "launcher.poll_s must be positive, got 0.0"),
    ({"gpus_per_run": -1}, "launcher.gpus_per_run must be >= 0"),
    ({"mem_gb": 0}, "launcher.mem_gb positive"),
    ({"mem_gb": -4}, "launcher.mem_gb positive"),
    ({"executor": "pbs"}, "launcher.executor: 'pbs' is not one of \\['slurm', 'local', 'debug'\\]"),
    ({"gpus_per_run": 0, "mem_gb": 1, "cpus_per_run": 1, "time_limit_min": 1, "poll_s": 0.1}, None),
    ({"mem_gb": 0.5}, None),
])
def test_launcher_settings_out_of_range_are_refused_by_key(settings, refused):
    if refused is None:
        assert study_slurm.SlurmConfig(**settings).mem_gb == settings["mem_gb"]
    else:
        with pytest.raises(study_runner.ConfigError, match=refused):
            study_slurm.SlurmConfig(**settings)


# ----------------------------------------------------------------------------- workers, records and states

@pytest.mark.parametrize("gpus, cpus, parallel, expected", [
    (["3", "7"], 16, 3, [{"CUDA_VISIBLE_DEVICES": g} for g in ("3", "7", "3")]),   # one GPU each, round robin
    ([], 8, 3, [{"OMP_NUM_THREADS": "2"}] * 3),                                       # a share of the threads
    ([], 2, 3, [{"OMP_NUM_THREADS": "1"}] * 3),                                       # at least one
    ([], None, 2, [{"OMP_NUM_THREADS": "1"}] * 2),                                    # cpu_count unknown
    ([], 8, 1, [{}]),                                                                 # alone: the machine's default
])
def test_each_worker_gets_one_gpu_or_a_share_of_the_cpu_threads(monkeypatch, gpus, cpus, parallel, expected):
    monkeypatch.setattr(study_runner, "_visible_gpus", lambda: gpus)
    monkeypatch.setattr(study_runner.os, "cpu_count", lambda: cpus)
    assert study_runner._slots(parallel) == expected


@pytest.mark.parametrize("parallel", [0, -1])
def test_parallel_below_one_is_refused_by_name(parallel):
    with pytest.raises(study_runner.ConfigError, match=f"--parallel must be >= 1, got {parallel}"):
        study_runner._slots(parallel)


@pytest.mark.parametrize("available, visible, count, expected", [
    (False, "0,1", 2, []),                        # no CUDA: no GPU, whatever the variable says
    (True, "2,5", 8, ["2", "5"]),                 # the ones the user made visible, as they named them
    (True, None, 3, ["0", "1", "2"]),             # all of them
    (True, "", 2, ["0", "1"]),                    # an empty variable counts as unset
])
def test_visible_gpus_follow_cuda_visible_devices(monkeypatch, available, visible, count, expected):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert study_runner._visible_gpus() == expected


def test_a_runs_record_names_what_was_run_and_its_state(resolved):
    """runs/<name>.json: the run, its arm and seed, the stage reached, and the runner command's parts."""
    s, runs = resolved
    run = runs[1]
    study_runner._write_record(run, "trained")
    record = json.loads((s.dir / "runs" / f"{run.name}.json").read_text())
    assert record == {"run": run.name, "arm": "random", "seed": 1, "state": "trained", "runner": "run_tid.py",
                      "configs": run.configs, "set": run.sets}
    assert study_runner.run_state(run) == "trained" and study_runner.run_state(runs[0]) == "new"


@pytest.mark.parametrize("leftover", ["checkpoint folder", "losses/{}.pkl", "times/{}.pkl", "csv/{}.csv"])
def test_any_output_without_a_checkpoint_to_resume_is_stale(resolved, leftover):
    """A run with outputs but no last.pt is 'stale' (retrained with --force); last.pt makes it 'partial'
    (resumed); a record says 'trained' or 'scored' whatever else is there, and any other recorded state
    falls back to the files."""
    s, runs = resolved
    run = runs[0]
    ckpt = Path(run.cfg.checkpoint_dir) / run.name
    if leftover == "checkpoint folder":
        ckpt.mkdir(parents=True)
    else:
        path = Path(run.cfg.log_dir) / leftover.format(run.name)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        other = path.with_name("other-" + path.name)
        path.rename(other)
        assert study_runner.run_state(run) == "new"                      # another run's file: not this one's
        other.rename(path)
    assert study_runner.run_state(run) == "stale"
    assert study_runner.train_command(run)[-1] == "--force"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "last.pt").write_bytes(b"")
    assert study_runner.run_state(run) == "partial" and study_runner.train_command(run)[-1] == "--resume"
    study_runner._write_record(run, "running")
    assert study_runner.run_state(run) == "partial"
    for state in ("trained", "scored"):
        study_runner._write_record(run, state)
        assert study_runner.run_state(run) == state


def test_a_new_run_is_trained_with_exactly_the_studys_configs_and_sets(resolved):
    s, runs = resolved
    run = runs[1]
    cmd = study_runner.train_command(run)
    assert cmd[:2] == [sys.executable, "run_tid.py"]
    configs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--config"]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert configs == run.configs and sets == run.sets
    assert {'tid.method="random"', "seed=1", "model.d_model=32"} <= set(sets)
    assert cmd[-2:] == ["--run-name", run.name]


@pytest.mark.parametrize("key, value, filled", [
    ("model.vocab_size", 300, True), ("model.vocab_size", None, True),
    ("train.max_steps", None, True), ("train.epochs", None, True),
    ("train.max_steps", 4, False), ("train.epochs", 2, False), ("model.d_model", None, False),
])
def test_only_the_keys_the_trainer_resolves_from_the_data_are_left_out_of_the_check(key, value, filled):
    assert study_runner.filled_by_trainer(key, value) is filled


def test_a_run_trained_with_other_values_than_the_study_resolved_is_named_with_the_keys(resolved, monkeypatch):
    """check_trained_configs compares each run's logged config with the study's: the vocab size (which the
    trainer fills in) may differ; any other key that differs names the run, the key and the fix."""
    import dataclasses

    import train_logs
    s, runs = resolved
    logged = {r.name: dataclasses.replace(r.cfg, model=dataclasses.replace(r.cfg.model, vocab_size=300))
              for r in runs}
    monkeypatch.setattr(train_logs, "load_losses",
                        lambda name, log_dir: {"meta": {"config": study.to_dict(logged[name])}})
    study_runner.check_trained_configs(runs)
    bad = runs[1]
    logged[bad.name] = dataclasses.replace(bad.cfg, train=dataclasses.replace(bad.cfg.train, lr=0.5))
    with pytest.raises(study_runner.StudyRunError,
                       match=f"run {bad.name} trained with other values of \\['train.lr'\\] than the study resolved; "
                             f"delete its outputs \\(checkpoints/{bad.name}"):
        study_runner.check_trained_configs(runs)
    assert runs[0].cfg.train.max_steps == 4                       # set by the study: checked like any other key
    logged[bad.name] = dataclasses.replace(bad.cfg, train=dataclasses.replace(bad.cfg.train, max_steps=5))
    with pytest.raises(study_runner.StudyRunError, match="other values of \\['train.max_steps'\\]"):
        study_runner.check_trained_configs(runs)


def test_the_launcher_named_gets_the_runs_with_its_own_settings(resolved, monkeypatch):
    """local: execute with --parallel, and no launcher.* settings; slurm: execute_on_slurm with the settings
    slurm_config read, one run per job (no --parallel). Nothing runs until the launch is called."""
    s, runs = resolved
    calls = []
    monkeypatch.setattr(study_runner, "execute", lambda st, rs, parallel: calls.append(("local", st, rs, parallel)))
    monkeypatch.setattr(study_slurm, "slurm_config", lambda st, sets: ("settings", st, tuple(sets)))
    monkeypatch.setattr(study_slurm, "execute_on_slurm", lambda st, rs, cfg: calls.append(("slurm", st, rs, cfg)))
    local = study_runner._launcher("local", s, [], 3)
    slurm = study_runner._launcher("slurm", s, ["launcher.partition=a"], 1)
    assert calls == []
    local(s, runs)
    slurm(s, runs)
    assert calls == [("local", s, runs, 3), ("slurm", s, runs, ("settings", s, ("launcher.partition=a",)))]
    with pytest.raises(study_runner.ConfigError,
                       match="--set launcher.partition=a: launcher.\\* settings are for --launcher slurm"):
        study_runner._launcher("local", s, ["launcher.partition=a"], 1)
    for parallel in (2, 3):
        with pytest.raises(study_runner.ConfigError, match="--parallel is for --launcher local"):
            study_runner._launcher("slurm", s, [], parallel)


def test_scoring_uses_the_studys_heldout_rows_and_a_failure_names_the_step_and_the_log(resolved, monkeypatch):
    """The held-out rows are the study's (the run's data.heldout_rows where the study sets none); a failed
    step's error names it ("training <run>", "scoring <run> (last.pt)") and the run's log file; a run
    recorded as scored is only scored again, never retrained."""
    s, runs = resolved
    run = runs[0]
    log_path = s.dir / "runs" / f"{run.name}.log"
    cmd = study_runner.score_command(run, None)
    assert cmd == study_runner.score_command(run, None, "last") and cmd[cmd.index("--rows") + 1] == "12"
    s.heldout_rows = 7
    for step, match in (("run_tid.py", f"training {run.name} failed \\(exit 1\\): see {log_path}"),
                        ("run_perplexity.py", f"scoring {run.name} \\(last.pt\\) failed \\(exit 1\\): see {log_path}")):
        commands = _Commands(fail=lambda cmd: int(step in " ".join(cmd)))
        monkeypatch.setattr(study_runner.subprocess, "Popen", commands)
        with pytest.raises(study_runner.StudyRunError, match=match):
            study_runner.train_and_score(s, run, {}, set())
    study_runner._write_record(run, "scored")
    commands = _Commands()
    monkeypatch.setattr(study_runner.subprocess, "Popen", commands)
    study_runner.train_and_score(s, run, {}, set())
    assert commands.kinds() == ["score", "score"]
    assert [cmd[cmd.index("--rows") + 1] for cmd, _, _ in commands.calls] == ["7", "7"]


# ----------------------------------------------------------------------------- run_study.py's command line

@pytest.fixture
def study_cli(tmp_path, monkeypatch):
    """run_study.py's main with the work stood in for: returns (argv, calls); calls records what main handed
    to each stage, and calls["raise"] is what the launch raises (None: the runs finish)."""
    import signal

    import study_report
    monkeypatch.chdir(REPO)
    path, outputs = _mini_study(tmp_path, seeds=[1, 2])
    calls = {"raise": None}

    def launcher(name, st, sets, parallel):
        calls["launcher"] = (name, st.name, sets, parallel, st.out_dir)

        def launch(st2, runs):
            calls["launched"] = [r.name for r in runs]
            if calls["raise"]:
                raise calls["raise"]
        return launch

    def write_report(st, runs, differences, command, out_dir):
        calls["report"] = (command, out_dir, sorted(differences))
        return {"comparisons": {"random": {"verdict": "no detectable difference", "delta_nll": -0.01234},
                                "other": {"verdict": "better", "delta_nll": -0.5}}}
    monkeypatch.setattr(study_runner, "_launcher", launcher)
    monkeypatch.setattr(study_runner, "prepare_once", lambda runs: calls.setdefault("prepared", len(runs)))
    monkeypatch.setattr(study_runner, "check_trained_configs", lambda runs: calls.setdefault("checked", len(runs)))
    monkeypatch.setattr(study_report, "write_report", write_report)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: calls.setdefault("signal", (signum, handler)))
    argv = ["--study", str(path), "--config", "configs/quickstart.yaml",
            *(a for s in [*TINY, *outputs] for a in ("--set", s))]
    return argv, calls


def test_run_study_hands_each_stage_its_part_of_the_command_line(study_cli, capsys, tmp_path):
    """launcher.* settings go to the launcher, the rest to every arm; the report gets the command to rerun
    it and the folder; stdout says what is compared and ends with the verdicts; SIGTERM stops as Ctrl-C."""
    import signal
    argv, calls = study_cli
    code, err, out = run_cli_out(study_runner.main, [*argv, "--set", "launcher.partition=a", "--launcher", "slurm",
                                                     "--parallel", "1", "--out", str(tmp_path / "report")], capsys)
    assert (code, err) == (0, "")
    assert calls["launcher"] == ("slurm", "mini", ["launcher.partition=a"], 1, tmp_path / "report")
    assert len(calls["launched"]) == 4 and calls["prepared"] == calls["checked"] == 4
    assert not any("launcher" in name for name in calls["launched"])
    command, out_dir, arms = calls["report"]
    assert command == " ".join(["python run_study.py --study", argv[1], "--config configs/quickstart.yaml",
                                *(f"--set {s}" for s in argv[5::2]), "--set launcher.partition=a"])
    assert out_dir == tmp_path / "report" and arms == ["baseline", "random"]
    assert calls["signal"] == (signal.SIGTERM, study_runner._interrupt)
    lines = out.splitlines()
    assert lines[0].startswith("study mini: 2 arms x 2 seeds [1, 2], reference 'baseline', ")
    assert lines[1] == "  random: tid.method='random'"
    assert lines[-1] == (f"study mini done: {tmp_path / 'report' / 'summary.md'}, summary.json, figures/. "
                         "Against baseline: random: no detectable difference (-0.0123 nats/token); "
                         "other: better (-0.5000 nats/token)")


def test_run_study_defaults_run_locally_one_at_a_time_into_the_studys_folder(study_cli, capsys):
    argv, calls = study_cli
    code, err, out = run_cli_out(study_runner.main, argv[:2], capsys)   # no --config, no --set: quickstart's runs
    assert code == 0
    assert calls["launcher"] == ("local", "mini", [], 1, None)
    assert calls["report"][0] == f"python run_study.py --study {argv[1]}"
    code, err, _ = run_cli_out(study_runner.main, [*argv[:2], "--parallel", "2"], capsys)
    assert code == 0 and calls["launcher"][3] == 2


@pytest.mark.parametrize("error, code, says", [
    (study_runner.ConfigError("bad key"), 2, "error: bad key\n"),
    (study_runner.StudyRunError("training x failed"), 1,
     "error: training x failed; rerun the same command to continue\n"),
    ("DataError", 1, "error: no rows; rerun the same command to continue\n"),
    (FileNotFoundError("logs/x.pkl"), 1, "error: logs/x.pkl; delete that file and the run's <run>.json"),
    ("UnsafeFileError", 1, "error: crafted; delete that file"),
    (KeyboardInterrupt(), 130, "interrupted: finished runs are kept; rerun the same command to continue\n"),
])
def test_run_study_maps_each_failure_to_its_exit_status_and_one_line(study_cli, capsys, error, code, says):
    from dataset_definitions.sources import DataError
    from fileio import UnsafeFileError
    argv, calls = study_cli
    named = {"DataError": DataError("no rows"), "UnsafeFileError": UnsafeFileError("crafted")}
    calls["raise"] = named.get(error, error)
    got, err, _ = run_cli_out(study_runner.main, argv, capsys)
    assert got == code and err.startswith(says) and err.count("\n") == 1
    assert "report" not in calls


@pytest.mark.parametrize("argv, says", [
    ([], "the following arguments are required: --study"),
    (["--study", "x.yaml", "--launcher", "SLURM"], "argument --launcher: invalid choice: 'SLURM'"),
    (["--study", "x.yaml", "--parallel", "two"], "argument --parallel: invalid int value: 'two'"),
])
def test_run_study_refuses_a_bad_command_line_by_argparse(argv, says, capsys):
    code, err, _ = run_cli_out(study_runner.main, argv, capsys)
    assert code == 2 and says in err


def test_run_study_help_documents_its_options(capsys):
    code, _, out = run_cli_out(study_runner.main, ["--help"], capsys)
    assert code == 0
    out = " " + " ".join(out.split()) + " "                # each phrase whole, between spaces
    for phrase in ("Train and compare a study's arms over its seeds.", "--study FILE", "configs/studies/NAME.yaml",
                   "--config FILE", "YAML overlay on every arm (after the study's configs); repeatable",
                   "--set KEY=VALUE", "override for every arm, e.g. --set data.source=text (repeatable)",
                   "--parallel PARALLEL", "runs at once (one GPU each where there are several)",
                   "--out DIR", "report folder (default studies/NAME)", "--launcher {local,slurm}",
                   "local: subprocesses here (default); slurm: one submitit job per run (--set launcher.*)"):
        assert f" {phrase} " in out, phrase
