"""Sweep: upstream's job hashing, command strings, states and launch/delete flow.

`sweep.main` runs in this process (`run_main`); one launch is a real `python -m` run that
trains its job in a subprocess through the local launcher.
"""
import json
import os
import shlex

import pytest
from conftest import run_python_module

from domainbed.scripts import sweep, train

GOLDEN_TRAIN_ARGS = {
    "algorithm": "ERM", "data_dir": "/checkpoint/dlp/datasets_new", "dataset": "VLCS",
    "holdout_fraction": 0.2, "hparams_seed": 1, "seed": 360234358, "steps": 1001,
    "task": "domain_generalization", "test_envs": [1, 2], "trial_seed": 0,
}


def test_golden_output_dir_hash(tmp_path):
    job = sweep.Job(GOLDEN_TRAIN_ARGS, str(tmp_path))
    assert job.output_dir == os.path.join(str(tmp_path), "0657090f9a83ff76efe083a104fde93a")


def test_job_command_and_states(tmp_path):
    job = sweep.Job({"foo": "bar", "envs": [1, 2], "n": 3, "path": "a b"}, str(tmp_path))
    assert job.command_str == (
        "python -m domainbed.scripts.train --envs 1 2 --foo bar --n 3 "
        f"--output_dir {job.output_dir} --path 'a b'")
    assert job.state == sweep.Job.NOT_LAUNCHED
    sweep.Job.launch([job], lambda commands: None)
    assert sweep.Job({"foo": "bar", "envs": [1, 2], "n": 3, "path": "a b"},
                     str(tmp_path)).state == sweep.Job.INCOMPLETE
    sweep.Job.delete([job])
    assert not os.path.exists(job.output_dir)
    os.makedirs(job.output_dir)
    with open(os.path.join(job.output_dir, "done"), "w") as f:
        f.write("done")
    assert sweep.Job({"foo": "bar", "envs": [1, 2], "n": 3, "path": "a b"},
                     str(tmp_path)).state == sweep.Job.DONE


def _args_list(**overrides):
    kwargs = dict(n_trials=2, dataset_names=["Debug28"], algorithms=["ERM"], n_hparams_from=0,
                  n_hparams=3, steps=None, data_dir="/tmp", task="domain_generalization",
                  holdout_fraction=0.2, single_test_envs=False, hparams=None)
    kwargs.update(overrides)
    return sweep.make_args_list(**kwargs)


def test_make_args_list_matches_upstream_enumeration():
    args_list = _args_list()
    assert len(args_list) == 36  # 2 trials x 3 hparams x (3 single + 3 pairs)
    assert [a["test_envs"] for a in args_list[:18:3]] == [[0], [0, 1], [0, 2], [1], [1, 2], [2]]
    first = args_list[0]
    assert "steps" not in first and "hparams" not in first
    assert first["seed"] == sweep.misc.seed_hash("Debug28", "ERM", [0], 0, 0)


def test_single_and_fixed_test_envs():
    assert len(_args_list(single_test_envs=True)) == 2 * 3 * 3
    fixed = _args_list(test_envs=[0], steps=5, hparams='{"lr": 0.1}')
    assert len(fixed) == 2 * 3
    assert all(a["test_envs"] == [0] and a["steps"] == 5 and a["hparams"] == '{"lr": 0.1}'
               for a in fixed)


def _sweep_args(tmp_path, command, *extra):
    return (command, "--datasets", "Debug28", "--algorithms", "ERM",
            "--data_dir", tmp_path / "data", "--output_dir", tmp_path / "sweep",
            "--skip_confirmation", *extra)


def test_dummy_launcher_end_to_end(tmp_path, run_main):
    def _sweep(command, *extra):
        return run_main(sweep.main, *_sweep_args(tmp_path, command, *extra))
    args = ("--command_launcher", "dummy", "--n_hparams", "1", "--n_trials", "1")
    first = _sweep("launch", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("Dummy launcher:") == 6
    again = _sweep("launch", *args)
    assert again.stdout.count("Dummy launcher:") == 0
    assert "6 jobs: 0 done, 6 incomplete, 0 not launched." in again.stdout
    deleted = _sweep("delete_incomplete", *args)
    assert "Deleted 6 jobs!" in deleted.stdout
    relaunched = _sweep("launch", *args)
    assert relaunched.stdout.count("Dummy launcher:") == 6


def _records(job_dir):
    with open(os.path.join(job_dir, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_local_launcher_trains_and_relaunch_recovers_a_killed_job(tmp_path, run_main):
    args = ("--command_launcher", "local", "--n_hparams", "1", "--n_trials", "1",
            "--single_test_envs", "--test_envs", "0", "--steps", "2",
            "--hparams", '{"batch_size": 8}')

    def _sweep(command, *extra):  # in this process; the local launcher still spawns train
        return run_main(sweep.main, *_sweep_args(tmp_path, command, *extra))
    # the first launch is a whole `python -m` run: its exit status is the process's
    result = run_python_module("domainbed.scripts.sweep", *_sweep_args(tmp_path, "launch", *args))
    assert result.returncode == 0, result.stderr
    (job_dir,) = [p for p in (tmp_path / "sweep").iterdir()]
    assert (job_dir / "done").read_text() == "done"
    assert [r["step"] for r in _records(job_dir)] == [0, 1]

    # Simulate a job killed mid-run: records cut short, no done marker.
    (job_dir / "done").unlink()
    with open(job_dir / "results.jsonl") as f:
        first_line = f.readline()
    (job_dir / "results.jsonl").write_text(first_line + '{"step": 1, "env0_in')
    status = _sweep("launch", *args)
    assert "1 jobs: 0 done, 1 incomplete, 0 not launched." in status.stdout
    assert _sweep("delete_incomplete", *args).returncode == 0
    assert _sweep("launch", *args).returncode == 0
    assert (job_dir / "done").exists()
    assert [r["step"] for r in _records(job_dir)] == [0, 1]


@pytest.mark.parametrize("extra, needle", [
    (("--algorithms", "ERMM"), "Algorithm not found: ERMM. Did you mean 'ERM'?"),
    (("--datasets", "Debug29"), "Dataset not found: Debug29"),
    (("--hparams", '{"lr": '), "--hparams is not valid JSON"),
    (("--hparams", '{"batchsize": 8}'), "Did you mean 'batch_size'?"),
    (("--test_envs", "3"), "--test_envs 3 is out of range for Debug28"),
    (("--command_launcher", "nope"), "Unknown --command_launcher 'nope'"),
])
def test_bad_input_fails_before_creating_jobs(tmp_path, run_main, extra, needle):
    base = {"--datasets": "Debug28", "--algorithms": "ERM", "--command_launcher": "dummy"}
    base.update(dict(zip(extra[::2], extra[1::2])))
    flat = [x for kv in base.items() for x in kv]
    result = run_main(sweep.main, "launch", *flat, "--data_dir", "/tmp",
                      "--output_dir", tmp_path / "sweep", "--skip_confirmation")
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_multi_gpu_launcher_without_gpus_is_an_error(monkeypatch):
    from domainbed import command_launchers
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(command_launchers.UserInputError, match="no GPU"):
        command_launchers.multi_gpu_launcher(["true"])


def test_slurm_launcher_runs_array_with_submitit_local_executor(tmp_path, monkeypatch):
    from domainbed import command_launchers
    monkeypatch.setenv("DOMAINBED_SUBMITIT_CLUSTER", "local")
    monkeypatch.setenv("DOMAINBED_SLURM_LOGS", str(tmp_path / "logs"))
    marks = [tmp_path / f"mark{i}" for i in range(2)]
    command_launchers.slurm_launcher([f"echo ran > {m}" for m in marks])
    assert all(m.read_text().strip() == "ran" for m in marks)


def test_slurm_launcher_without_slurm_is_an_error(monkeypatch, tmp_path):
    from domainbed import command_launchers
    monkeypatch.delenv("DOMAINBED_SUBMITIT_CLUSTER", raising=False)
    monkeypatch.setenv("DOMAINBED_SLURM_LOGS", str(tmp_path / "logs"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(command_launchers.UserInputError, match="no Slurm cluster"):
        command_launchers.slurm_launcher(["true"])


def test_launcher_that_cannot_run_fails_before_creating_jobs(tmp_path, run_main, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    result = run_main(sweep.main, "launch", "--datasets", "Debug28",
                      "--algorithms", "ERM", "--command_launcher", "multi_gpu",
                      "--data_dir", "/tmp", "--output_dir", tmp_path / "sweep",
                      "--skip_confirmation")
    assert result.returncode == 2
    assert "multi_gpu launcher found no GPU" in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_save_model_every_checkpoint_reaches_train_as_a_flag():
    (plain,) = sweep.make_args_list(1, ["Debug28"], ["ERM"], 0, 1, 3, "d", "domain_generalization",
                                    0.2, False, None, test_envs=[0])
    (saving,) = sweep.make_args_list(1, ["Debug28"], ["ERM"], 0, 1, 3, "d",
                                     "domain_generalization", 0.2, False, None, test_envs=[0],
                                     save_model_every_checkpoint=True)
    assert "save_model_every_checkpoint" not in plain  # upstream's hashes stay
    job = sweep.Job(saving, "out")
    argv = shlex.split(job.command_str)[3:]
    assert train.build_parser().parse_args(argv).save_model_every_checkpoint is True
