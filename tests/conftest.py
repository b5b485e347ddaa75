"""Shared test helpers.

`run_main` (a fixture) is the callable `run_main(main, *args)`: it calls a script's
`main(argv)` in this process and returns a `MainResult` (returncode, stdout, stderr), as
`python -m` would have exited and printed. Tests of error messages and exit codes use it:
no interpreter start, no re-import. Outside fixtures, `from conftest import call_main`.

`run_module` (a session fixture) is the callable
`run_module(module, *args, env=None, cwd=None)`: it runs `python -m module args`
in a subprocess with OMP_NUM_THREADS=1 and returns the CompletedProcess (text,
captured output). Only for what needs the process boundary: a whole `python -m` run's
exit status, launched subprocesses, plugin discovery in a fresh interpreter. Outside
fixtures, `from conftest import run_python_module`.
"""
import os
import subprocess
import sys
from typing import NamedTuple

import pytest

# Triton kernels run in its CPU interpreter in tests (on CPU tensors, GPU or not). Triton reads
# this variable when a kernel is defined, so it is set before any test module imports one.
os.environ.setdefault("TRITON_INTERPRET", "1")


def run_python_module(module, *args, env=None, cwd=None, timeout=300):
    """Run `sys.executable -m module args` on one thread; return the CompletedProcess.

    `env` adds to (or overrides) the current environment.
    """
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run_module():
    return run_python_module


class MainResult(NamedTuple):
    """What an in-process `main(argv)` call gave: the exit status and the captured output."""

    returncode: int
    stdout: str
    stderr: str


def call_main(main, *args) -> int:
    """Call a script's `main(argv)` here, as `python -m` would run it; return the exit status.

    A `SystemExit` (argparse's usage errors, `parser.error`) gives its status, as it would
    for the process; any other exception propagates and fails the test (in a process it
    would be a traceback). `sys.stdout` and `sys.stderr` are put back afterwards even if
    `main` replaced them and did not restore them.
    """
    saved = sys.stdout, sys.stderr
    try:
        try:
            status = main([str(a) for a in args])
        except SystemExit as exc:
            status = exc.code
    finally:
        sys.stdout, sys.stderr = saved
    if status is None:
        return 0
    if isinstance(status, int):
        return status
    print(status, file=sys.stderr)  # what Python does with sys.exit("message")
    return 1


@pytest.fixture
def run_main(capfd):
    """`run_main(main, *args)`: `call_main` with stdout and stderr captured, both what goes
    through `sys.stdout`/`sys.stderr` and what is written to file descriptors 1 and 2."""
    def run(main, *args) -> MainResult:
        capfd.readouterr()  # drop what the test printed before
        status = call_main(main, *args)
        out, err = capfd.readouterr()
        return MainResult(status, out, err)
    return run


def _restoring(module, list_name):
    """Put a registry list (in place) and the module's globals back after a test."""
    registry = getattr(module, list_name)
    saved_list = list(registry)
    saved_names = set(vars(module))
    yield
    registry[:] = saved_list
    for name in set(vars(module)) - saved_names:
        delattr(module, name)


@pytest.fixture
def restore_algorithms():
    from domainbed import algorithms
    yield from _restoring(algorithms, "ALGORITHMS")


@pytest.fixture
def restore_datasets():
    from domainbed import datasets
    yield from _restoring(datasets, "DATASETS")
