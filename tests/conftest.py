"""Shared test helpers.

`run_module` (a session fixture) is the callable
`run_module(module, *args, env=None, cwd=None)`: it runs `python -m module args`
in a subprocess with OMP_NUM_THREADS=1 and returns the CompletedProcess (text,
captured output). Outside fixtures, `from conftest import run_python_module`.
"""
import os
import subprocess
import sys

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
