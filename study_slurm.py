"""A study's runs as SLURM jobs through submitit: `run_study.py --launcher slurm`.

    python run_study.py --study configs/studies/tid.yaml --launcher slurm --set launcher.partition=gpu

Each run not finished yet is one job, and the job runs what the local launcher runs for it
(study_runner.train_and_score: the runner's command line, then the perplexity runner's), from the
folder the study was started in. The study waits, with a progress bar, until every job has ended,
then writes the same report as the local launcher. Resuming after the launching process died: the
id of each job is written (atomically) to studies/<name>/jobs/<run>.json right after it is
submitted, so the next launch waits for the jobs still queued or running instead of submitting
them again; finished runs are reused, and a run whose job ended without finishing it (killed,
timed out, failed) is submitted again and resumes from its last.pt. A job that fails does not stop
the others. Settings: the study file's `launcher:` block, then `--set launcher.KEY=VALUE`
(SlurmConfig). Needs submitit: pip install -e ".[cluster]".
"""

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

import study_runner
from experiment_config import ConfigError, section_from
from fileio import atomic_write, process_alive
from study import Run, Study

EXECUTORS = ("slurm", "local", "debug")


@dataclass
class SlurmConfig:
    executor: str = "slurm"         # slurm (sbatch) | local (each job a process on this machine) | debug (in this process)
    partition: str | None = None    # sbatch --partition; None: the cluster's default
    account: str | None = None      # sbatch --account
    gpus_per_run: int = 1           # GPUs of each run's job (one node, one task)
    cpus_per_run: int = 8           # CPU cores of each run's job
    mem_gb: float | None = None     # memory of each job; None: the partition's default
    time_limit_min: int = 240       # each job's limit; a run it stops resumes from last.pt at the next launch
    setup: str | None = None        # shell line run before each SLURM job, e.g. "source .venv/bin/activate"
    poll_s: float = 30.0            # seconds between looks at the jobs' states

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ConfigError(f"launcher.executor: {self.executor!r} is not one of {list(EXECUTORS)}")
        for key in ("cpus_per_run", "time_limit_min", "poll_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"launcher.{key} must be positive, got {getattr(self, key)}")
        if self.gpus_per_run < 0 or (self.mem_gb is not None and self.mem_gb <= 0):
            raise ConfigError("launcher.gpus_per_run must be >= 0 and launcher.mem_gb positive (or null)")


def slurm_config(study: Study, sets: list[str]) -> SlurmConfig:
    """The study file's `launcher:` block, then the `--set launcher.KEY=VALUE` items."""
    _submitit()  # a missing package fails here, before anything is prepared
    return section_from(SlurmConfig, study.launcher, sets, "launcher.")


def run_job(study: Study, run: Run, workdir: str) -> str:
    """What a run's job does: the local launcher's training and scoring of that run."""
    os.chdir(workdir)  # the runners' and the perplexity runner's paths are relative to it
    study_runner.train_and_score(study, run, {}, set())
    return run.name


def execute_on_slurm(study: Study, runs: list[Run], cfg: SlurmConfig, log=print) -> None:
    """Submit a job per run not finished (or find its job again), wait for all; a failed run raises
    StudyRunError naming its log once every job has ended."""
    todo = [r for r in runs if study_runner.run_state(r) != "scored"]
    if len(todo) < len(runs):
        log(f"{len(runs) - len(todo)} of {len(runs)} runs already finished: reused")
    if not todo:
        return
    (study.dir / "runs").mkdir(parents=True, exist_ok=True)
    jobs_dir = study.dir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    executor = None
    jobs = {}
    for run in todo:
        job = _found_again(_job_record(study, run))
        if job is not None:
            log(f"  {run.name}: job {job.job_id} found again, still queued or running")
        else:
            executor = executor or _executor(cfg, jobs_dir)
            executor.update_parameters(name=run.name)
            job = executor.submit(run_job, study, run, os.getcwd())
            atomic_write(_record_path(study, run), json.dumps({"run": run.name, "job_id": job.job_id,
                                                               "executor": cfg.executor, "folder": str(jobs_dir)}))
            log(f"  {run.name}: submitted as job {job.job_id} ({cfg.executor})")
        jobs[run.name] = (run, job)
    _wait(study, jobs, cfg.poll_s)


def _wait(study: Study, jobs: dict, poll_s: float) -> None:
    """Poll until every job has ended; the bar counts the runs scored."""
    pending, failed = dict(jobs), []
    bar = tqdm(total=len(jobs), desc=f"study {study.name} (jobs)", unit="run", dynamic_ncols=True)
    try:
        while pending:
            for name, (run, job) in list(pending.items()):
                if not _ended(job):
                    continue
                del pending[name]
                if study_runner.run_state(run) == "scored":
                    bar.update(1)
                    tqdm.write(f"  {name}: trained and scored (job {job.job_id})")
                else:
                    failed.append(f"{name} (job {job.job_id}, {job.state}: see {study.dir / 'runs' / name}.log "
                                  f"and {job.paths.stderr})")
            if pending:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        tqdm.write("jobs still queued or running are left to the scheduler; the next launch waits for them")
        raise
    finally:
        bar.close()
    if failed:
        raise study_runner.StudyRunError(f"{len(failed)} of {len(jobs)} runs did not finish: {'; '.join(failed)}. "
                                         "Their jobs are submitted again, resuming from last.pt, at the next launch")


def _record_path(study: Study, run: Run) -> Path:
    return study.dir / "jobs" / f"{run.name}.json"


def _job_record(study: Study, run: Run) -> dict | None:
    path = _record_path(study, run)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:  # written atomically, so only a hand-edited file; submit again
        return None


def _found_again(record: dict | None):
    """The submitit job of a record while it is queued or running, else None (the run is submitted again)."""
    if record is None or record["executor"] == "debug":  # a debug job lived in the launching process
        return None
    submitit = _submitit()
    job_class = submitit.SlurmJob if record["executor"] == "slurm" else submitit.LocalJob
    job = job_class(folder=Path(record["folder"]) / "%j", job_id=record["job_id"])
    return None if _ended(job) else job


def _ended(job) -> bool:
    """Whether a job is over. A local job found again from its record has no process handle: its
    controller's process id tells whether it still runs."""
    if job.state == "NO PROCESS AND NO RESULT":
        return not process_alive(int(job.job_id))
    return job.done()


def _executor(cfg: SlurmConfig, jobs_dir: Path):
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=jobs_dir / "%j", cluster=cfg.executor)
    executor.update_parameters(timeout_min=cfg.time_limit_min, nodes=1, tasks_per_node=1,
                               gpus_per_node=cfg.gpus_per_run, cpus_per_task=cfg.cpus_per_run, mem_gb=cfg.mem_gb,
                               slurm_partition=cfg.partition, slurm_account=cfg.account,
                               slurm_setup=[cfg.setup] if cfg.setup else None)
    return executor


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError('--launcher slurm needs submitit: pip install -e ".[cluster]"') from None
    return submitit
