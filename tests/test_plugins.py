"""Plugin discovery through the `domainbed.plugins` entry-point group, in every process."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import run_python_module as run_module

TOY_SITE = Path(__file__).parent / "fixtures" / "toy_plugin_site"


def _env_with(*paths):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + [env.get("PYTHONPATH", "")])
    return env


def test_toy_plugin_registers_algorithm_and_hparams_once():
    code = (
        "from domainbed.plugins import load_plugins\n"
        "from domainbed import algorithms, hparams_registry\n"
        "load_plugins(); load_plugins()\n"
        "print(algorithms.ALGORITHMS)\n"
        "print(hparams_registry.default_hparams('ToyERM', 'Debug28')['toy_scale'])\n"
        "print('toy_scale' in hparams_registry.default_hparams('ERM', 'Debug28'))\n")
    result = subprocess.run([sys.executable, "-c", code], env=_env_with(TOY_SITE),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    algos, scale, leaked = result.stdout.strip().splitlines()
    assert algos.count("'ToyERM'") == 1
    assert algos.index("'GroupDRO'") < algos.index("'ToyERM'")
    assert scale == "2.0" and leaked == "False"


def test_sweep_trains_a_plugin_algorithm_in_subprocesses(tmp_path):
    result = run_module(
        "domainbed.scripts.sweep", "launch", "--datasets", "Debug28", "--algorithms", "ToyERM",
        "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "sweep"),
        "--command_launcher", "local", "--n_hparams_from", "1", "--n_hparams", "2",
        "--n_trials", "1", "--test_envs", "0", "--steps", "2",
        "--hparams", '{"batch_size": 8}', "--skip_confirmation",
        env=_env_with(TOY_SITE))
    assert result.returncode == 0, result.stderr
    (job_dir,) = list((tmp_path / "sweep").iterdir())
    assert (job_dir / "done").exists()
    records = [json.loads(line) for line in (job_dir / "results.jsonl").read_text().splitlines()]
    random_scale = records[0]["hparams"]["toy_scale"]
    assert 1.0 <= random_scale <= 3.0 and random_scale != 2.0  # hparams_seed 1: a random value
    assert all(r["toy_scale"] == random_scale for r in records)


def test_unknown_plugin_algorithm_without_the_plugin_is_a_clear_error(tmp_path):
    result = run_module("domainbed.scripts.train", "--dataset", "Debug28",
                        "--algorithm", "ToyERM", "--output_dir", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "Algorithm not found: ToyERM" in result.stderr
    assert not (tmp_path / "out" / "done").exists()


def test_broken_plugin_names_itself(tmp_path):
    site = tmp_path / "site"
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[domainbed.plugins]\nbroken = no_such_module:register\n")
    result = run_module("domainbed.scripts.train", "--dataset", "Debug28",
                        "--output_dir", str(tmp_path / "out"), env=_env_with(site))
    assert result.returncode != 0
    assert "plugin 'broken'" in result.stderr and "no_such_module" in result.stderr
