"""A definition's jobs: exactly `domainbed.scripts.sweep`'s, one sweep per algorithm.

For algorithm A the jobs are those of `sweep launch --algorithms A --hparams HP` with the
definition's other arguments, HP being A's fixed hparams as sorted JSON (no --hparams when
it has none), so every job has the folder (hash) and command that sweep.py gives it.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from domainbed.lib import run_folder
from domainbed.lib.misc import UserInputError
from domainbed.scripts import sweep
from ex2l_domainbed.reproduce.definition import Definition


def hparams_json(definition: Definition, algorithm: str) -> str | None:
    """The --hparams string sweep.py would be given for `algorithm`."""
    fixed = definition.fixed_hparams(algorithm)
    return json.dumps(fixed, sort_keys=True) if fixed else None


def train_args(definition: Definition, algorithm: str, data_dir: str) -> list[dict]:
    d = definition
    return sweep.make_args_list(
        n_trials=d.n_trials, dataset_names=d.datasets, algorithms=[algorithm],
        n_hparams_from=d.n_hparams_from, n_hparams=d.n_hparams, steps=d.steps,
        data_dir=data_dir, task=d.task, holdout_fraction=d.holdout_fraction,
        single_test_envs=d.single_test_envs, hparams=hparams_json(d, algorithm),
        test_envs=d.test_envs, checkpoint_freq=d.checkpoint_freq,
        save_model_every_checkpoint=d.save_model_every_checkpoint)


def make_jobs(definition: Definition, data_dir: str, output_dir: str) -> list[sweep.Job]:
    """Every job, algorithm by algorithm in the definition's order (creates nothing)."""
    return [sweep.Job(args, output_dir) for alg in definition.algorithms
            for args in train_args(definition, alg, data_dir)]


def job_hparams(train_args: dict) -> dict[str, Any]:
    """The hparams the job will train with (train.py's own rule)."""
    from domainbed.scripts import train
    return train.choose_hparams(argparse.Namespace(**{"hparams": None, **train_args}))


def stale_hparams(job: sweep.Job) -> list[str]:
    """For a finished job, the hparams its records hold with other values than this code
    gives the job now (a default changed since it ran: the folder hash does not see it)."""
    if job.state != sweep.Job.DONE:
        return []
    records = run_folder.read_records(job.output_dir)
    recorded = records[0].get("hparams") if records and isinstance(records[0], dict) else None
    if not isinstance(recorded, dict):
        return []
    now = json.loads(json.dumps(job_hparams(job.train_args)))  # as results.jsonl writes them
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))


def check_not_stale(jobs: list[sweep.Job], output_dir: str) -> None:
    """Refuse a folder whose finished runs were trained with other hparams than the same jobs
    get now: their rows would mix two methods under one name."""
    stale = [(j, names) for j in jobs if (names := stale_hparams(j))]
    if stale:
        job, names = stale[0]
        raise UserInputError(
            f"{len(stale)} finished runs in {output_dir} were trained with other hparams than "
            f"this code gives the same jobs (e.g. {job.output_dir}: {', '.join(names[:3])}; "
            f"a default changed since they ran); launch into a new --output_dir (nothing was "
            f"deleted).")


def counts(jobs: list[sweep.Job]) -> str:
    """sweep.py's summary line."""
    n = {state: sum(j.state == state for j in jobs)
         for state in (sweep.Job.DONE, sweep.Job.INCOMPLETE, sweep.Job.NOT_LAUNCHED)}
    return (f"{len(jobs)} jobs: {n[sweep.Job.DONE]} done, {n[sweep.Job.INCOMPLETE]} incomplete, "
            f"{n[sweep.Job.NOT_LAUNCHED]} not launched.")


# Slurm states of a job that is queued or will still run (submitit prints e.g. "RUNNING").
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING",
               "SUSPENDED"}


def scheduler_state(job: sweep.Job) -> str | None:
    """The Slurm/submitit state of a job the slurm launcher submitted, where known."""
    if job.state == sweep.Job.NOT_LAUNCHED:
        return None
    from domainbed import command_launchers
    lookup = getattr(command_launchers, "submitit_state", None)
    return lookup(job.output_dir) if lookup is not None else None


def is_live(scheduler: str | None) -> bool:
    return bool(scheduler) and scheduler.split()[0] in LIVE_STATES


def state_of(job: sweep.Job, scheduler: str | None = None) -> str:
    """done, running, queued, not started, incomplete (last step, resumable or not), or not
    launched."""
    if job.state == sweep.Job.DONE:
        stale = stale_hparams(job)
        return f"done (stale: other {', '.join(stale)} than this code gives)" if stale else "done"
    if job.state == sweep.Job.NOT_LAUNCHED:
        return "not launched"
    step = run_folder.last_step(job.output_dir)
    at = f"last recorded step {step}" if step is not None else "no record yet"
    if job.running:
        return f"running ({at})"
    if is_live(scheduler):
        return f"queued ({at}; the scheduler will run it)"
    if not job.started:
        return ("launched, not started (queued, or it never ran: delete_incomplete clears it "
                "for launch to start it again)")
    if run_folder.is_resumable(job.output_dir):
        return f"incomplete ({at}; resumable: launch resumes it)"
    return f"incomplete ({at}; not resumable: launch restarts it)"


def status_line(job: sweep.Job) -> str:
    a = job.train_args
    info = (f"{a['dataset']} {a['algorithm']} test_envs={a['test_envs']} "
            f"hparams_seed={a['hparams_seed']} trial_seed={a['trial_seed']}")
    scheduler = scheduler_state(job)
    line = f"{state_of(job, scheduler)}: {job.output_dir} ({info})"
    return line + (f" [scheduler: {scheduler}]" if scheduler else "")


def to_launch(jobs: list[sweep.Job]) -> list[sweep.Job]:
    """sweep.py's launchable jobs, less those the scheduler still holds (no double submit)."""
    return [j for j in sweep.launchable(jobs) if not is_live(scheduler_state(j))]


def incomplete(jobs: list[sweep.Job]) -> list[sweep.Job]:
    return [j for j in jobs if j.state == sweep.Job.INCOMPLETE]
