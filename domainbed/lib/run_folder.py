"""What a run's output folder holds, and what may safely be done with it.

A folder is *done* (a `done` marker), *running* (a live train.py holds its lock),
*resumable* (a resume checkpoint from a checkpoint step) or holds only the traces of an
attempt that cannot be resumed. Finished work (`done`, model files, the records of earlier
attempts kept as `results.jsonl.previousN`) is never removed by anything here.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from typing import Any, Iterator, Optional

from domainbed.lib.misc import UserInputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking, runs are not guarded
    fcntl = None

RESULTS = "results.jsonl"
DONE = "done"
RESUME = "resume.pkl"
LOCK = "train.lock"
SUBMITIT = "submitit.json"  # written by the slurm launcher into a queued job's folder
HELD = (errno.EACCES, errno.EAGAIN)  # what lockf raises when another process holds the lock
LOCK_TRIES = 5  # a status probe holds the lock for an instant: retry before refusing


class RunInProgress(UserInputError):
    """Another train.py is writing into this folder."""


def path(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, name)


def is_done(output_dir: str) -> bool:
    return os.path.exists(path(output_dir, DONE))


def is_resumable(output_dir: str) -> bool:
    return os.path.exists(path(output_dir, RESUME))


def was_started(output_dir: str) -> bool:
    """A train.py has entered the folder: it holds more than a queued job's record (a folder
    made for a job that has not run yet is empty, or holds only `submitit.json`)."""
    return os.path.isdir(output_dir) and any(name != SUBMITIT for name in os.listdir(output_dir))


def is_finished_work(name: str) -> bool:
    """Files that hold finished work: never deleted by `delete_incomplete`."""
    return (name == DONE or name.startswith(RESULTS + ".previous")
            or (name.startswith("model") and name.endswith(".pkl")))


@contextlib.contextmanager
def training_lock(output_dir: str) -> Iterator[None]:
    """Hold the folder's lock while training, so two processes never train into one folder.

    The operating system releases the lock when the process dies, even by SIGKILL, so a
    killed run never leaves a stale lock behind. It is a POSIX record lock (`lockf`), which
    forked processes (data-loader workers, which outlive a killed parent for a few seconds)
    do not inherit; it does not guard against the same process.
    """
    if fcntl is None:
        yield
        return
    with open(path(output_dir, LOCK), "a") as handle:
        locked = _acquire(handle, output_dir)
        try:
            yield
        finally:
            if locked:
                fcntl.lockf(handle, fcntl.LOCK_UN)


def _acquire(handle, output_dir: str) -> bool:
    """Take the lock (True), or go on unguarded where the filesystem has no locks (False)."""
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in HELD:
                print(f"warning: no lock on {output_dir} ({os.strerror(exc.errno)}): this "
                      "filesystem has no working locks, so nothing stops two processes from "
                      "training into the folder.", file=sys.stderr)
                return False
            time.sleep(0.2 * (attempt + 1))
    raise RunInProgress(
        f"another train.py is running into {output_dir} (it holds {LOCK}); wait for it to "
        "finish, or stop it first. Nothing was changed.")


def is_running(output_dir: str) -> bool:
    """True while another process's train.py holds the folder's lock (on this machine or a
    shared disk with working locks)."""
    lock_path = path(output_dir, LOCK)
    if fcntl is None or not os.path.exists(lock_path):
        return False
    try:
        with open(lock_path, "a") as handle:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                return exc.errno in HELD
            fcntl.lockf(handle, fcntl.LOCK_UN)
    except OSError:  # e.g. a read-only folder: nobody can be training into it from here
        return False
    return False


def read_records(output_dir: str) -> list[dict[str, Any]]:
    """The folder's results.jsonl records; a torn last line (a killed write) is skipped."""
    records = []
    results_path = path(output_dir, RESULTS)
    if not os.path.exists(results_path):
        return records
    with open(results_path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def last_step(output_dir: str) -> Optional[int]:
    """The step of the last record in results.jsonl, or None."""
    records = read_records(output_dir)
    return records[-1].get("step") if records else None


def recorded_args(output_dir: str) -> Optional[dict[str, Any]]:
    """The train arguments the folder's records were written with, or None."""
    records = read_records(output_dir)
    return records[0].get("args") if records and isinstance(records[0], dict) else None


def keep_records_through(output_dir: str, step: int) -> int:
    """Drop results.jsonl lines after `step` (written after the resume checkpoint); rewrite
    the file atomically; return how many were dropped."""
    records = read_records(output_dir)
    kept = [r for r in records if r.get("step", -1) <= step]
    results_path = path(output_dir, RESULTS)
    with open(results_path + ".tmp", "w") as f:
        for record in kept:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    os.replace(results_path + ".tmp", results_path)
    return len(records) - len(kept)


def differing_args(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the train arguments that differ (the output folder itself may move)."""
    keys = (set(saved) | set(current)) - {"output_dir"}
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def clear_unresumable(output_dir: str) -> list[str]:
    """Remove what an incomplete, unresumable attempt left; keep finished work.

    Returns the removed paths. A folder no train.py entered (a job that never ran) goes
    whole; otherwise the folder's lock is held while clearing (a job starting meanwhile
    waits or is refused) and the lock file stays, so the folder still counts as started and
    `launch` reruns it.
    """
    if not was_started(output_dir):
        removed = [path(output_dir, name) for name in sorted(os.listdir(output_dir))]
        for full in removed:
            os.remove(full)
        os.rmdir(output_dir)
        return removed + [output_dir + os.sep]
    removed = []
    with training_lock(output_dir):
        for name in sorted(os.listdir(output_dir)):
            full = path(output_dir, name)
            if is_finished_work(name) or name == LOCK or os.path.isdir(full):
                continue
            os.remove(full)
            removed.append(full)
    return removed
