"""EX2L inside an upstream DomainBed checkout: `ex2l_domainbed.upstream`.

Upstream's code is not here, so `tests/upstream_standin.py` generates a minimal checkout
with upstream's module names and registries (no `register_algorithm`, no
`domainbed.plugins`). In-process tests swap it in for this project's `domainbed` (and
put everything back); subprocess tests run from its root with it first on PYTHONPATH,
as a user inside an upstream checkout would, and check which `domainbed` was imported.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from upstream_standin import standin_env, write_standin

REPO = Path(__file__).resolve().parents[1]
# Modules bound to whichever `domainbed` was importable when they were imported.
REBOUND = ("ex2l_domainbed.algorithm", "ex2l_domainbed.formulations", "ex2l_domainbed.plugin",
           "ex2l_domainbed.upstream")


def _seed_hash(*args) -> int:
    """Upstream's rule, written out here independently of the stand-in and the plugin."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory) -> Path:
    return write_standin(tmp_path_factory.mktemp("upstream") / "DomainBed")


def _swappable() -> list[str]:
    return [name for name in sys.modules
            if name.split(".")[0] == "domainbed"
            or any(name == m or name.startswith(m + ".") for m in REBOUND)]


@pytest.fixture
def upstream(standin_root):
    """Import the stand-in as `domainbed` in this process; restore everything afterwards."""
    saved = {name: sys.modules.pop(name) for name in _swappable()}
    import ex2l_domainbed
    attrs = [m.rsplit(".", 1)[1] for m in REBOUND]
    saved_attrs = {a: getattr(ex2l_domainbed, a) for a in attrs if hasattr(ex2l_domainbed, a)}
    sys.path.insert(0, str(standin_root))
    importlib.invalidate_caches()
    try:
        import domainbed
        assert Path(domainbed.__file__).is_relative_to(standin_root), domainbed.__file__
        yield standin_root
    finally:
        sys.path.remove(str(standin_root))
        for name in _swappable():
            del sys.modules[name]
        sys.modules.update(saved)
        for a in attrs:
            if a in saved_attrs:
                setattr(ex2l_domainbed, a, saved_attrs[a])
            elif hasattr(ex2l_domainbed, a):
                delattr(ex2l_domainbed, a)
        importlib.invalidate_caches()


def _ex2l_random_fns() -> dict:
    from ex2l_domainbed.algorithm import define_ex2l
    fns = {}
    define_ex2l(lambda name, default, fn, **accepted: fns.__setitem__(name, (default, fn)))
    return fns


# ---------------------------------------------------------------------------------------
# In process


def test_register_in_process(upstream):
    from domainbed import algorithms, datasets, hparams_registry
    from ex2l_domainbed.plugin import is_this_harness, register

    assert not is_this_harness()
    names = algorithms.ALGORITHMS
    erm_default = hparams_registry.default_hparams("ERM", "Debug28")
    erm_random = hparams_registry.random_hparams("ERM", "Debug28", 7)

    register()
    register()
    assert algorithms.ALGORITHMS is names
    from ex2l_domainbed.formulations import FORMULATIONS
    assert names == ["ERM", "IRM", "GroupDRO", "EX2L", *FORMULATIONS, "Mixup"]
    fast = hparams_registry.default_hparams("EX2L_FeaturesFast", "Debug28")
    assert fast["ex2l_confounder_lr_mult"] == 10.0 and fast["ex2l_detach_label"] is True
    from ex2l_domainbed.algorithm import EX2L
    assert algorithms.get_algorithm_class("EX2L") is EX2L
    assert issubclass(EX2L, algorithms.Algorithm)  # upstream's base class, not ours
    assert hparams_registry._hparams.__wrapped__.__module__ == "domainbed.hparams_registry"
    assert not hasattr(hparams_registry._hparams.__wrapped__, "__wrapped__")  # wrapped once

    # EX2L's hparams: defaults, and random values by upstream's per-name seeding rule.
    fns = _ex2l_random_fns()
    default = hparams_registry.default_hparams("EX2L_Literal", "Debug28")
    assert {k: default[k] for k in fns} == {k: d for k, (d, _) in fns.items()}
    from ex2l_domainbed.formulation_values import DEFAULT_FORMULATION, FORMULATION_VALUES
    chosen = hparams_registry.default_hparams("EX2L", "Debug28")  # the default formulation
    assert chosen == {**default, **FORMULATION_VALUES[DEFAULT_FORMULATION]}
    assert default["lr"] == erm_default["lr"]  # upstream's own keys still there
    for seed in (0, 3, 12345):
        drawn = hparams_registry.random_hparams("EX2L_Literal", "Debug28", seed)
        for name, (_, fn) in fns.items():
            assert drawn[name] == fn(np.random.RandomState(_seed_hash(seed, name))), name
    drawn = hparams_registry.random_hparams("EX2L", "Debug28", 3)
    assert drawn["ex2l_lambda"] == 10 ** np.random.RandomState(
        _seed_hash(3, "ex2l_lambda")).uniform(-1, 1)
    # Other algorithms are untouched.
    assert hparams_registry.default_hparams("ERM", "Debug28") == erm_default
    assert hparams_registry.random_hparams("ERM", "Debug28", 7) == erm_random

    # Upstream's TestAlgorithms contract (CPU): 3 envs, pairs of 8, random labels.
    torch.manual_seed(0)
    dataset = datasets.Debug28("", [], default)
    algorithm = algorithms.get_algorithm_class("EX2L")(
        dataset.input_shape, dataset.num_classes, len(dataset), default)
    assert not algorithm.confounder_is_attribute  # confounder = environment index
    minibatches = [(env.tensors[0][:8], env.tensors[1][:8]) for env in dataset]
    for _ in range(3):
        out = algorithm.update(minibatches)
        assert out and all(isinstance(v, float) and np.isfinite(v) for v in out.values())
        assert {"overlap", "confounder_acc"} <= set(out)
    algorithm.eval()
    assert algorithm.predict(minibatches[0][0]).shape == (8, 2)


def test_helpers():
    from ex2l_domainbed.upstream import HparamClashError, insert_after, wrap_hparams
    from ex2l_domainbed.upstream.sweep import rewrite_command, wrap_launchers

    names = ["ERM", "IRM"]
    insert_after(names, "EX2L", "GroupDRO")
    insert_after(names, "EX2L", "GroupDRO")
    assert names == ["ERM", "IRM", "EX2L"]

    def clashing(algorithm, dataset, seed):
        return {"ex2l_lambda": (1.0, 1.0)}
    with pytest.raises(HparamClashError, match="ex2l_lambda"):
        wrap_hparams(clashing, _ex2l_hparams_hook(), _seed_hash)("EX2L", "Debug28", 0)

    cmd = "python -m domainbed.scripts.train --algorithm EX2L --output_dir 'a b'"
    assert rewrite_command(cmd) == (
        "python -m ex2l_domainbed.upstream.train --algorithm EX2L --output_dir 'a b'")
    assert rewrite_command("python -m domainbed.scripts.train_x") == (
        "python -m domainbed.scripts.train_x")

    seen = []

    def local(commands):
        seen.extend(commands)
    local.preflight = "kept"
    registry = {"local": local}
    wrap_launchers(registry)
    wrapped = registry["local"]
    wrap_launchers(registry)
    assert registry["local"] is wrapped and wrapped.preflight == "kept"
    wrapped([cmd])
    assert seen == [rewrite_command(cmd)]


def _ex2l_hparams_hook():
    """A hook that defines EX2L's hparams whichever `domainbed` is imported."""
    from ex2l_domainbed.algorithm import define_ex2l
    return lambda algorithm, dataset, define: define_ex2l(define)


# ---------------------------------------------------------------------------------------
# Subprocesses inside the stand-in checkout


def _run(root, module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=root,
                          env=standin_env(root), capture_output=True, text=True, timeout=120)


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "results.jsonl").read_text().splitlines()]


def _check_ex2l_run(output_dir: Path, root: Path) -> None:
    assert (output_dir / "done").read_text() == "done"
    records = _records(output_dir)
    assert records and records[-1]["args"]["algorithm"] == "EX2L"
    for record in records:
        assert Path(record["domainbed_file"]).is_relative_to(root)
        assert record["foreign_modules"] == []  # nothing from this project's harness
        assert {"overlap", "confounder_acc", "loss"} <= set(record)
        assert "ex2l_lambda" in record["hparams"]


def test_sweep_wrapper_trains_ex2l_in_jobs(standin_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = _run(standin_root, "ex2l_domainbed.upstream.sweep", "launch",
                "--algorithms", "ERM", "EX2L", "--datasets", "Debug28",
                "--data_dir", tmp_path / "data", "--output_dir", sweep_dir,
                "--command_launcher", "local", "--n_hparams", 1, "--n_trials", 1,
                "--steps", 2, "--skip_confirmation")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"domainbed: {standin_root / 'domainbed'}" in proc.stdout
    assert "Algorithm not found" not in proc.stderr, proc.stderr
    runs = {_records(d)[-1]["args"]["algorithm"]: d for d in sweep_dir.iterdir()}
    assert set(runs) == {"ERM", "EX2L"}, proc.stdout + proc.stderr
    assert (runs["ERM"] / "done").exists()
    _check_ex2l_run(runs["EX2L"], standin_root)

    proc = _run(standin_root, "ex2l_domainbed.upstream.collect_results", "--input_dir", sweep_dir)
    assert proc.returncode == 0, proc.stderr
    assert "Algorithms: ERM EX2L" in proc.stdout
    assert f"domainbed: {standin_root / 'domainbed'}" in proc.stdout


def test_plain_upstream_train_does_not_know_ex2l(standin_root, tmp_path):
    proc = _run(standin_root, "domainbed.scripts.train", "--algorithm", "EX2L",
                "--dataset", "Debug28", "--steps", 1, "--output_dir", tmp_path / "out")
    assert f"domainbed: {standin_root / 'domainbed'}" in proc.stdout
    assert proc.returncode != 0
    assert "Algorithm not found: EX2L" in proc.stderr


def test_train_wrapper(standin_root, tmp_path):
    out = tmp_path / "out"
    proc = _run(standin_root, "ex2l_domainbed.upstream.train", "--algorithm", "EX2L",
                "--dataset", "Debug28", "--steps", 2, "--hparams_seed", 1,
                "--test_envs", 2, "--output_dir", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"domainbed: {standin_root / 'domainbed'}" in proc.stdout
    _check_ex2l_run(out, standin_root)
    # Random search: EX2L's values follow upstream's seeding rule in the train process too.
    fns = _ex2l_random_fns()
    hparams = _records(out)[-1]["hparams"]
    seed = _seed_hash(1, 0)  # train.py: random_hparams(..., seed_hash(hparams_seed, trial_seed))
    from ex2l_domainbed.algorithm import EX2L
    for name, (_, fn) in fns.items():  # EX2L's default formulation keeps its values fixed
        expected = EX2L.FIXED_HPARAMS.get(name, fn(np.random.RandomState(_seed_hash(seed, name))))
        assert hparams[name] == expected, name


# ---------------------------------------------------------------------------------------
# The wrappers also run against this project's harness


def test_sweep_wrapper_with_this_harness(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ex2l_domainbed.upstream.sweep", "launch",
         "--algorithms", "EX2L", "--datasets", "Debug28", "--data_dir", str(tmp_path / "data"),
         "--output_dir", str(tmp_path / "sweep"), "--command_launcher", "dummy",
         "--n_hparams", "1", "--n_trials", "1", "--single_test_envs", "--skip_confirmation"],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("Dummy launcher:")]
    assert len(lines) == 3
    assert all("-m ex2l_domainbed.upstream.train " in line and "--algorithm EX2L" in line
               for line in lines), lines


def test_train_wrapper_with_this_harness(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "ex2l_domainbed.upstream.train", "--algorithm", "EX2L",
         "--dataset", "Debug28", "--steps", "1", "--hparams", '{"batch_size": 8}',
         "--output_dir", str(out), "--skip_model_save"],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = _records(out)[-1]
    assert record["args"]["algorithm"] == "EX2L" and "overlap" in record
    assert (out / "done").exists()
