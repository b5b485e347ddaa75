"""Command launchers: `fn(commands: list[str]) -> None`, each command a shell string.

`local` runs them one after another, `dummy` only prints them, `multi_gpu` runs one
per visible GPU, `parallel` runs N at once on this machine (DOMAINBED_PARALLEL_JOBS;
one GPU per job, or a share of the CPU threads), and `slurm` submits them as a job array
through submitit (`submitit_state` reads back a job's scheduler state). More can be
added to REGISTRY by a plugin.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

from domainbed.lib.misc import UserInputError

Launcher = Callable[[list[str]], None]


def _env_with_current_python() -> dict[str, str]:
    """Environment in which `python` means this interpreter (e.g. an unactivated .venv)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def local_launcher(commands: list[str]) -> None:
    """Launch commands serially on the local machine."""
    env = _env_with_current_python()
    for cmd in commands:
        subprocess.call(cmd, shell=True, env=env)


def dummy_launcher(commands: list[str]) -> None:
    """Doesn't run anything; instead, prints each command. Useful for testing."""
    for cmd in commands:
        print(f"Dummy launcher: {cmd}")


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu != ""]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def _require_gpus() -> list[str]:
    gpus = _visible_gpus()
    if not gpus:
        raise UserInputError(
            "multi_gpu launcher found no GPU (CUDA_VISIBLE_DEVICES is empty or no CUDA device "
            "is visible). Use --command_launcher local on a machine without GPUs.")
    return gpus


def multi_gpu_launcher(commands: list[str]) -> None:
    """Launch commands on the local machine, one at a time per visible GPU."""
    print("WARNING: using experimental multi_gpu_launcher.")
    gpus = _require_gpus()
    env = _env_with_current_python()
    pending = list(commands)
    procs_by_gpu: list[subprocess.Popen | None] = [None] * len(gpus)
    while pending:
        for idx, gpu in enumerate(gpus):
            proc = procs_by_gpu[idx]
            if (proc is None or proc.poll() is not None) and pending:
                cmd = pending.pop(0)
                procs_by_gpu[idx] = subprocess.Popen(
                    f"CUDA_VISIBLE_DEVICES={gpu} {cmd}", shell=True, env=env)
        time.sleep(1)
    for proc in procs_by_gpu:
        if proc is not None:
            proc.wait()


def _parallel_jobs_from_env() -> int | None:
    """DOMAINBED_PARALLEL_JOBS as an int >= 1, None if unset; checked before any folder exists."""
    value = os.environ.get("DOMAINBED_PARALLEL_JOBS", "").strip()
    if not value:
        return None
    try:
        n_jobs = int(value)
    except ValueError:
        n_jobs = 0
    if n_jobs < 1:
        raise UserInputError(
            f"DOMAINBED_PARALLEL_JOBS must be an integer >= 1 (got {value!r}), "
            "e.g. DOMAINBED_PARALLEL_JOBS=4.")
    return n_jobs


def _output_dir_of(cmd: str) -> str | None:
    """The command's --output_dir (where train.py tees out.txt/err.txt), if it has one."""
    try:
        tokens = shlex.split(cmd)
    except ValueError:
        return None
    for i, token in enumerate(tokens):
        if token == "--output_dir" and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith("--output_dir="):
            return token.split("=", 1)[1]
    return None


def _last_line(path: str) -> str | None:
    """The last non-empty line of a log file, to show why a job failed."""
    try:
        with open(path, errors="replace") as f:
            return _last_of(f)
    except OSError:
        return None


def _last_of(stream) -> str | None:
    lines = [line.strip() for line in stream if line.strip()]
    return lines[-1] if lines else None


def _failure_line(cmd: str, returncode: int, stderr_tail: str | None = None) -> str:
    """One line saying which job failed, where its log is, and the last line it printed to
    stderr in this attempt (else its err.txt's, which an earlier attempt may have written)."""
    out_dir = _output_dir_of(cmd)
    if out_dir is None:
        return f"[parallel] failed (exit {returncode}): {cmd}" + (
            f": {stderr_tail}" if stderr_tail else "")
    err = os.path.join(out_dir, "err.txt")
    last = stderr_tail or _last_line(err)
    return f"[parallel] failed (exit {returncode}): {out_dir}; see {err}" + (
        f": {last}" if last else "")


def _usable_cpus() -> int:
    """The CPUs this process may use (its affinity: a Slurm or container allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _stop(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """SIGTERM each job's process group (the shell and train.py), then kill what remains.

    The whole group is signalled even once the shell is gone: train.py may outlive it.
    """
    def signal_all(sig: int) -> None:
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_all(signal.SIGKILL)
    for proc in procs:
        proc.wait()


def parallel_launcher(commands: list[str]) -> None:
    """Run up to N commands at once on this machine; report failures instead of raising.

    N is DOMAINBED_PARALLEL_JOBS, else one per visible GPU, else the usable CPUs. With GPUs
    each job gets one free GPU (CUDA_VISIBLE_DEVICES), so N is capped at their number;
    without, the CPU threads are shared out (OMP/MKL_NUM_THREADS) unless OMP_NUM_THREADS
    is already set. Job output stays out of the terminal: train.py tees it into its
    --output_dir, and a failed job's last stderr line is shown.
    """
    gpus = _visible_gpus()
    cpus = _usable_cpus()
    n_jobs = _parallel_jobs_from_env() or len(gpus) or cpus
    if gpus:
        n_jobs = min(n_jobs, len(gpus))
    base_env = _env_with_current_python()
    if not gpus and "OMP_NUM_THREADS" not in os.environ:
        threads = str(max(1, cpus // n_jobs))
        base_env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)

    waiting = list(commands)
    running: dict[subprocess.Popen, tuple[str, str | None]] = {}  # proc -> (cmd, gpu)
    free_gpus = list(gpus)
    n_done = n_failed = 0
    start = time.monotonic()

    def progress() -> None:
        print(f"[parallel] {n_done}/{len(commands)} done, {len(running)} running, "
              f"{n_failed} failed, {len(waiting)} waiting", flush=True)

    try:
        while waiting or running:
            changed = False
            for proc in [p for p in running if p.poll() is not None]:
                cmd, gpu, stderr = running.pop(proc)
                if gpu is not None:
                    free_gpus.append(gpu)
                if proc.returncode == 0:
                    n_done += 1
                else:
                    n_failed += 1
                    stderr.seek(0)
                    tail = _last_of(line.decode(errors="replace") for line in stderr)
                    print(_failure_line(cmd, proc.returncode, tail), flush=True)
                stderr.close()
                changed = True
            while waiting and len(running) < n_jobs:
                cmd = waiting.pop(0)
                env = dict(base_env)
                gpu = free_gpus.pop(0) if gpus else None
                if gpu is not None:
                    env["CUDA_VISIBLE_DEVICES"] = gpu
                # own process group: Ctrl-C reaches only us, and _stop can signal the shell
                # and train.py together
                stderr = tempfile.TemporaryFile()  # what fails before train.py's own logs
                proc = subprocess.Popen(cmd, shell=True, env=env, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=stderr)
                running[proc] = (cmd, gpu, stderr)
                changed = True
            if changed:
                progress()
            else:
                time.sleep(0.1)
    except KeyboardInterrupt:
        interrupted = list(running.values())
        _stop(list(running))
        print(f"[parallel] interrupted: stopped {len(interrupted)} running jobs; they are "
              "incomplete and resume when relaunched:", flush=True)
        for cmd, *_ in interrupted:
            print(f"  {_output_dir_of(cmd) or cmd}", flush=True)
        raise
    print(f"[parallel] finished {len(commands)} jobs in {time.monotonic() - start:.1f}s: "
          f"{n_done} done, {n_failed} failed", flush=True)


def run_shell_command(cmd: str) -> int:
    """Run one command inside a submitit job; its exit status is the job's result."""
    return subprocess.call(cmd, shell=True, env=_env_with_current_python())


def _slurm_parameters() -> dict:
    """submitit parameters from DOMAINBED_SLURM_* environment variables (None = unset)."""
    def env_int(name: str) -> int | None:
        value = os.environ.get(name)
        return int(value) if value else None
    return {
        "timeout_min": env_int("DOMAINBED_SLURM_TIME_MIN") or 24 * 60,
        "gpus_per_node": env_int("DOMAINBED_SLURM_GPUS"),
        "cpus_per_task": env_int("DOMAINBED_SLURM_CPUS") or 8,
        "mem_gb": env_int("DOMAINBED_SLURM_MEM_GB"),
        "slurm_partition": os.environ.get("DOMAINBED_SLURM_PARTITION") or None,
        "slurm_array_parallelism": env_int("DOMAINBED_SLURM_ARRAY_PARALLELISM") or 256,
        "name": "domainbed",
    }


def _require_submitit_cluster() -> str:
    """The submitit cluster to use: DOMAINBED_SUBMITIT_CLUSTER, else Slurm if sbatch exists."""
    cluster = os.environ.get("DOMAINBED_SUBMITIT_CLUSTER") or None
    if cluster is None and shutil.which("sbatch") is None:
        raise UserInputError(
            "slurm launcher: no Slurm cluster found (sbatch is not on PATH). Run the sweep on a "
            "Slurm login node, or set DOMAINBED_SUBMITIT_CLUSTER=local to run the jobs here.")
    return cluster or "slurm"


def slurm_launcher(commands: list[str]) -> None:
    """Submit the commands as one Slurm job array with submitit.

    Settings come from DOMAINBED_SLURM_{PARTITION,TIME_MIN,GPUS,CPUS,MEM_GB,
    ARRAY_PARALLELISM}; logs go to DOMAINBED_SLURM_LOGS (default `slurm_logs`).
    DOMAINBED_SUBMITIT_CLUSTER=local runs the array on this machine and waits for it
    (what the tests do); on a Slurm cluster the launcher returns once jobs are queued.
    """
    import submitit

    if not commands:
        return
    cluster = _require_submitit_cluster()
    executor = submitit.AutoExecutor(
        folder=os.environ.get("DOMAINBED_SLURM_LOGS", "slurm_logs"), cluster=cluster)
    params = _slurm_parameters()
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    jobs = executor.map_array(run_shell_command, commands)
    _record_submitit_jobs(commands, jobs, str(executor.folder), executor.cluster)
    print(f"Submitted {len(jobs)} jobs to {executor.cluster}: "
          + " ".join(shlex.quote(str(job.job_id)) for job in jobs))
    if executor.cluster != "slurm":
        failed = [job.job_id for job in jobs if job.result() != 0]
        if failed:
            print(f"{len(failed)} jobs exited non-zero: {' '.join(map(str, failed))}")


def _record_submitit_jobs(commands: list[str], jobs: list, folder: str, cluster: str) -> None:
    """Write <output_dir>/submitit.json per job, so its scheduler state can be looked up."""
    for cmd, job in zip(commands, jobs):
        out_dir = _output_dir_of(cmd)
        if not out_dir or not os.path.isdir(out_dir):
            continue
        record = {"job_id": str(job.job_id), "folder": os.path.abspath(folder),
                  "cluster": cluster}
        path = os.path.join(out_dir, "submitit.json")
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)  # atomic: a reader never sees half a file


def submitit_state(output_dir: str) -> str | None:
    """The scheduler's state of the job recorded in <output_dir>/submitit.json.

    "local" for a non-Slurm cluster; None when there is no (readable) record or submitit
    is not installed. Never raises: it is for status reports.
    """
    try:
        with open(os.path.join(output_dir, "submitit.json")) as f:
            record = json.load(f)
        job_id, folder, cluster = record["job_id"], record["folder"], record["cluster"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        import submitit
    except ImportError:
        return None
    if cluster != "slurm":
        return "local"
    try:
        return str(submitit.SlurmJob(folder=folder, job_id=str(job_id)).state)
    except Exception:  # sacct missing or failing: no state rather than a crash
        return None


# Checks a sweep runs before it creates any job folder, so a launcher that cannot run
# fails without leaving Incomplete jobs behind.
multi_gpu_launcher.preflight = _require_gpus
slurm_launcher.preflight = _require_submitit_cluster
parallel_launcher.preflight = _parallel_jobs_from_env

REGISTRY: dict[str, Launcher] = {
    "local": local_launcher,
    "dummy": dummy_launcher,
    "multi_gpu": multi_gpu_launcher,
    "parallel": parallel_launcher,
    "slurm": slurm_launcher,
}

try:
    from domainbed import facebook  # an internal cluster hook, as upstream allows
    facebook.register_command_launchers(REGISTRY)
except ImportError:
    pass
