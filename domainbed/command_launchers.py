"""Command launchers: `fn(commands: list[str]) -> None`, each command a shell string.

`local` runs them one after another, `dummy` only prints them, `multi_gpu` runs one
per visible GPU, and `slurm` submits them as a job array through submitit. More can
be added to REGISTRY by a plugin.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
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
    print(f"Submitted {len(jobs)} jobs to {executor.cluster}: "
          + " ".join(shlex.quote(str(job.job_id)) for job in jobs))
    if executor.cluster != "slurm":
        failed = [job.job_id for job in jobs if job.result() != 0]
        if failed:
            print(f"{len(failed)} jobs exited non-zero: {' '.join(map(str, failed))}")


# Checks a sweep runs before it creates any job folder, so a launcher that cannot run
# fails without leaving Incomplete jobs behind.
multi_gpu_launcher.preflight = _require_gpus
slurm_launcher.preflight = _require_submitit_cluster

REGISTRY: dict[str, Launcher] = {
    "local": local_launcher,
    "dummy": dummy_launcher,
    "multi_gpu": multi_gpu_launcher,
    "slurm": slurm_launcher,
}

try:
    from domainbed import facebook  # an internal cluster hook, as upstream allows
    facebook.register_command_launchers(REGISTRY)
except ImportError:
    pass
