"""Resumable runs: a run killed with SIGKILL at a random moment and relaunched ends with the
records and weights of the uninterrupted run; folders of other runs are refused; finished
work is never retrained or deleted."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from domainbed import algorithms, hparams_registry
from domainbed.lib import resume, run_folder
from domainbed.lib.fast_data_loader import InfiniteDataLoader
from domainbed.scripts import sweep, train

UNTIMED = ("step_time", "mem_gb")  # wall-clock figures differ between any two runs


def debug_argv(output_dir, algorithm="GroupDRO", seed=3, steps=60, freq=10):
    return ["--dataset", "Debug28", "--algorithm", algorithm, "--test_envs", "0",
            "--steps", str(steps), "--checkpoint_freq", str(freq), "--seed", str(seed),
            "--hparams_seed", "1", "--hparams", '{"batch_size": 8}',
            "--output_dir", str(output_dir)]


# A tiny Spawrious-layout challenge (16 px images, 12 per cell, the Lite CNN), registered by a
# launcher script the way a plugin registers datasets, so that it trains in a subprocess.
TINY_SPAWRIOUS = textwrap.dedent("""
    import sys
    from domainbed import datasets
    from domainbed.scripts import train
    from ex2l_domainbed.datasets.spawrious import SpawriousM2M_hard

    class TinySpawriousM2M_hard(SpawriousM2M_hard):
        BASE_COUNT, IMAGE_SIZE, FEATURIZER, N_WORKERS = 12, 16, "lite_cnn", 1

    datasets.register_dataset("TinySpawriousM2M_hard", TinySpawriousM2M_hard)
    sys.exit(train.main(sys.argv[1:]))
""")


def spawrious_command(tmp_path, output_dir, workers=1):
    from spawrious_fixture import make_spawrious_tree
    data = tmp_path / "data"
    if not data.exists():
        make_spawrious_tree(data, per_cell=12, size=16, pools=("0",), extras=False)
    script = tmp_path / "tiny_train.py"
    script.write_text(TINY_SPAWRIOUS.replace("N_WORKERS = 12, 16, \"lite_cnn\", 1",
                                             f"N_WORKERS = 12, 16, \"lite_cnn\", {workers}"))
    return [sys.executable, str(script), "--dataset", "TinySpawriousM2M_hard",
            "--algorithm", "EX2L", "--test_envs", "0", "--steps", "40", "--checkpoint_freq", "8",
            "--seed", "5", "--hparams", '{"batch_size": 8}', "--data_dir", str(data),
            "--output_dir", str(output_dir)]


def run(command):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def kill_at_random_moment(command, output_dir, rng, n_checkpoints):
    """Start the run and SIGKILL it after a random number of records plus a random fraction
    of a checkpoint interval, so the kill lands anywhere, mostly between checkpoints. The
    interval is measured between two records, never from the start (which includes the
    imports and can outlast the rest of the run)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = rng.randint(1, n_checkpoints - 2)
    results = os.path.join(output_dir, "results.jsonl")
    seen, last_change, interval = 0, None, None
    while proc.poll() is None:
        count = len(open(results).readlines()) if os.path.exists(results) else 0
        if count != seen:
            if last_change is not None:
                interval = time.time() - last_change
            seen, last_change = count, time.time()
        if seen >= target and interval is not None:
            time.sleep(rng.random() * interval)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not run_folder.is_done(output_dir)


def records(output_dir):
    with open(os.path.join(output_dir, "results.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in UNTIMED and k != "args"}
                for line in f]


def weights(output_dir):
    return torch.load(os.path.join(output_dir, "model.pkl"), weights_only=True)["model_dict"]


def assert_same_run(a, b):
    ra, rb = records(a), records(b)
    steps = [r["step"] for r in rb]
    assert steps == sorted(set(steps)), f"each checkpoint step once: {steps}"
    assert ra == rb
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert not os.path.exists(os.path.join(b, run_folder.RESUME))  # gone once done


@pytest.mark.parametrize("algorithm", ["ERM", "GroupDRO"])
def test_sigkill_and_resume_on_debug28_match_the_uninterrupted_run(tmp_path, algorithm):
    rng = random.Random(f"{algorithm}-{os.getpid()}")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    command = [sys.executable, "-m", "domainbed.scripts.train"]
    assert run(command + debug_argv(whole, algorithm)).returncode == 0
    kill_at_random_moment(command + debug_argv(killed, algorithm), str(killed), rng,
                          n_checkpoints=7)
    resumed = run(command + debug_argv(killed, algorithm))
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming after the checkpoint of step" in resumed.stdout
    assert_same_run(str(whole), str(killed))


@pytest.mark.parametrize("workers", [0, 1])
def test_sigkill_and_resume_on_a_spawrious_layout_with_augmentation(tmp_path, workers):
    """EX2L (its step counter is a buffer) on images with random augmentation (training
    environments are also evaluated with it, as upstream), loaded in the main process (the
    global generators, which the checkpoint saves) or by a worker (the transforms keyed by
    the stream); evaluation reads the items in the same order at every pass."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(spawrious_command(tmp_path, whole, workers)).returncode == 0
    kill_at_random_moment(spawrious_command(tmp_path, killed, workers), str(killed),
                          random.Random(os.getpid()), n_checkpoints=6)
    resumed = run(spawrious_command(tmp_path, killed, workers))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(str(whole), str(killed))
    assert any(key.endswith("update_count") for key in weights(str(killed)))


def test_resume_checkpoint_holds_only_tensors_and_plain_data(tmp_path):
    hparams = hparams_registry.default_hparams("GroupDRO", "Debug28")
    algorithm = algorithms.GroupDRO((1, 28, 28), 2, 2, hparams)
    path = str(tmp_path / "resume.pkl")
    resume.save(path, step=5, algorithm=algorithm, loader_positions=[6, 6],
                args={"seed": 3}, hparams={"lr": 1e-3})
    state = torch.load(path, weights_only=True)
    assert state["step"] == 5 and state["loader_positions"] == [6, 6]
    assert set(state["optimizers"]) == {"optimizer"}


def test_a_stream_started_at_k_continues_the_stream(tmp_path):
    data = torch.utils.data.TensorDataset(torch.arange(50).float(), torch.arange(50))
    for workers in (0, 1):
        whole = iter(InfiniteDataLoader(data, None, 4, workers, seed=7))
        batches = [next(whole)[1].tolist() for _ in range(8)]
        later = InfiniteDataLoader(data, None, 4, workers, seed=7, start=5)
        it = iter(later)
        assert [next(it)[1].tolist() for _ in range(3)] == batches[5:]
        assert later.position == 8
    other = iter(InfiniteDataLoader(data, None, 4, 0, seed=8))
    assert next(other)[1].tolist() != batches[0]


def test_a_finished_run_is_not_retrained(tmp_path, run_main):
    out = tmp_path / "run"
    argv = debug_argv(out, steps=12, freq=5)
    assert run_main(train.main, *argv).returncode == 0
    before = {name: (out / name).read_bytes() for name in ("results.jsonl", "model.pkl")}
    again = run_main(train.main, *argv)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert run_folder.is_done(str(out))
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not list(out.glob("results.jsonl.previous*"))


@pytest.mark.parametrize("done", [True, False])
def test_a_folder_of_other_arguments_is_refused(tmp_path, run_main, done):
    out = tmp_path / "run"
    argv = debug_argv(out, steps=12 if done else 40, freq=5)
    if done:
        assert run_main(train.main, *argv).returncode == 0
    else:  # an incomplete folder: its records and a resume checkpoint, no done marker
        assert run_main(train.main, *argv).returncode == 0
        os.remove(out / "done")
        resume.save(str(out / run_folder.RESUME), step=5,
                    algorithm=torch.nn.Linear(1, 1), loader_positions=[6],
                    args=json.loads((out / "results.jsonl").read_text().splitlines()[0])["args"],
                    hparams={})
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run_main(train.main, *debug_argv(out, seed=4, steps=12 if done else 40, freq=5))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "seed: 3 there, 4 now" in result.stderr
    assert "own --output_dir" in result.stderr and "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot


def test_a_running_folder_is_refused(tmp_path, run_main):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # another process trains into the folder (holds its lock)
        [sys.executable, "-c", "import sys, time\nfrom domainbed.lib import run_folder\n"
         "with run_folder.training_lock(sys.argv[1]):\n    print('locked', flush=True)\n"
         "    time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert run_folder.is_running(str(out))
        result = run_main(train.main, *debug_argv(out, steps=12, freq=5))
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2 and "another train.py is running" in result.stderr
    assert not run_folder.is_running(str(out))
    assert sorted(p.name for p in out.iterdir()) == [run_folder.LOCK]


def sweep_argv(tmp_path, command):
    return [command, "--datasets", "Debug28", "--algorithms", "ERM", "--test_envs", "0",
            "--n_hparams", "1", "--n_trials", "1", "--steps", "12", "--checkpoint_freq", "5",
            "--hparams", '{"batch_size": 8}', "--data_dir", str(tmp_path),
            "--output_dir", str(tmp_path / "sweep"), "--command_launcher", "local",
            "--skip_confirmation"]


def test_delete_incomplete_keeps_finished_work_and_resumable_runs(tmp_path, run_main):
    """The old data loss: a finished job's records were moved aside by a rerun that was then
    killed, and delete_incomplete removed the folder with them. Now nothing finished goes."""
    assert run_main(sweep.main, *sweep_argv(tmp_path, "launch")).returncode == 0
    (job_dir,) = (tmp_path / "sweep").iterdir()
    # What such a rerun used to leave: the finished records aside, no done marker.
    os.replace(job_dir / "results.jsonl", job_dir / "results.jsonl.previous1")
    os.remove(job_dir / "done")
    finished = (job_dir / "results.jsonl.previous1").read_bytes()
    result = run_main(sweep.main, *sweep_argv(tmp_path, "delete_incomplete"))
    assert result.returncode == 0
    assert str(job_dir / "out.txt") in result.stdout and "kept" in result.stdout
    assert (job_dir / "results.jsonl.previous1").read_bytes() == finished
    assert (job_dir / "model.pkl").exists() and not (job_dir / "out.txt").exists()

    # A resumable job is kept whole, and `launch` resumes it.
    resumable = tmp_path / "resumable"
    argv = sweep_argv(resumable, "launch")
    assert run_main(sweep.main, *argv).returncode == 0
    (job_dir,) = (resumable / "sweep").iterdir()
    os.remove(job_dir / "done")
    first = json.loads((job_dir / "results.jsonl").read_text().splitlines()[0])
    resume.save(str(job_dir / run_folder.RESUME), step=0, algorithm=torch.nn.Linear(1, 1),
                loader_positions=[1], args=first["args"], hparams=first["hparams"])
    listing = sorted(p.name for p in job_dir.iterdir())
    result = run_main(sweep.main, *sweep_argv(resumable, "delete_incomplete"))
    assert "resumable after step 11" in result.stdout
    assert sorted(p.name for p in job_dir.iterdir()) == listing
    jobs = [sweep.Job(a, str(resumable / "sweep")) for a in sweep.make_args_list(
        1, ["Debug28"], ["ERM"], 0, 1, 12, str(resumable), "domain_generalization", 0.2, False,
        '{"batch_size": 8}', test_envs=[0], checkpoint_freq=5)]
    assert [j.output_dir for j in sweep.launchable(jobs)] == [str(job_dir)]


def test_an_interrupted_launch_leaves_no_empty_folders_behind(tmp_path, run_main, monkeypatch):
    """Ctrl-C during a launch: the jobs that never started must not look queued, so that
    rerunning the command launches them (the started one resumes)."""
    from domainbed import command_launchers

    def interrupted(commands):  # starts the first job, then the user presses Ctrl-C
        first = commands[0].split("--output_dir ")[1].split(" ")[0]
        open(os.path.join(first, run_folder.LOCK), "w").close()
        raise KeyboardInterrupt
    monkeypatch.setitem(command_launchers.REGISTRY, "interrupted", interrupted)
    argv = sweep_argv(tmp_path, "launch")
    argv[argv.index("--n_trials") + 1] = "3"
    argv[argv.index("--command_launcher") + 1] = "interrupted"
    result = run_main(sweep.main, *argv)
    assert result.returncode == 130 and "rerun the same command" in result.stderr
    left = list((tmp_path / "sweep").iterdir())
    assert len(left) == 1 and (left[0] / run_folder.LOCK).exists()
    argv[argv.index("--command_launcher") + 1] = "dummy"
    again = run_main(sweep.main, *argv)
    assert again.stdout.count("Dummy launcher:") == 3


def test_a_resume_checkpoint_train_cannot_use_is_one_line_naming_the_file(tmp_path, run_main):
    out = tmp_path / "run"
    argv = debug_argv(out, steps=12, freq=5)
    assert run_main(train.main, *argv).returncode == 0
    os.remove(out / "done")
    first = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    # another version's state: a model of another shape
    resume.save(str(out / run_folder.RESUME), step=5, algorithm=torch.nn.Linear(1, 1),
                loader_positions=[6, 6], args=first["args"], hparams=first["hparams"])
    result = run_main(train.main, *argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{out / run_folder.RESUME} does not fit this GroupDRO" in result.stderr
    assert "remove it to restart the run from step 0" in result.stderr
    (out / run_folder.RESUME).write_bytes(b"not a checkpoint")
    result = run_main(train.main, *argv)
    assert result.returncode == 2 and "is not a readable resume checkpoint" in result.stderr


def test_a_cleared_folder_that_keeps_finished_work_is_launched_again(tmp_path, run_main):
    """delete_incomplete keeps model files and earlier records but clears the rest: the job
    must then be relaunchable, not stuck as "launched, not started"."""
    assert run_main(sweep.main, *sweep_argv(tmp_path, "launch")).returncode == 0
    (job_dir,) = (tmp_path / "sweep").iterdir()
    os.remove(job_dir / "done")
    os.remove(job_dir / "results.jsonl")  # killed before its first record: nothing resumable
    assert run_main(sweep.main, *sweep_argv(tmp_path, "delete_incomplete")).returncode == 0
    assert (job_dir / "model.pkl").exists()
    jobs = [sweep.Job(a, str(tmp_path / "sweep")) for a in sweep.make_args_list(
        1, ["Debug28"], ["ERM"], 0, 1, 12, str(tmp_path), "domain_generalization", 0.2, False,
        '{"batch_size": 8}', test_envs=[0], checkpoint_freq=5)]
    assert [j.output_dir for j in sweep.launchable(jobs)] == [str(job_dir)]
    assert run_main(sweep.main, *sweep_argv(tmp_path, "launch")).returncode == 0
    assert (job_dir / "done").exists()


def test_a_filesystem_without_locks_trains_unguarded_with_a_warning(tmp_path, monkeypatch,
                                                                   capsys):
    import errno
    import fcntl

    def no_locks(handle, flags):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with run_folder.training_lock(str(tmp_path)):
        pass
    assert "no working locks" in capsys.readouterr().err
    assert not run_folder.is_running(str(tmp_path))
