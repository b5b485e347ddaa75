"""The `parallel` launcher (N jobs at once, threads or GPUs shared out) and submitit records.

Jobs are tiny `python` scripts that log when they ran and what they saw, so the tests
check concurrency, the per-job environment and the failure report without training; one
test runs a real Debug28 sweep through it.
"""
import _thread
import json
import shlex
import signal
import threading
import time

import pytest

from domainbed import command_launchers
from domainbed.scripts import sweep

JOB_SCRIPT = """\
import json, os, sys, time
log, mode = sys.argv[1], sys.argv[2]
start = time.time()
if mode == "hang":
    with open(log + ".pid", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(30)
time.sleep(0.5)
with open(log, "w") as f:
    json.dump({"start": start, "end": time.time(), "omp": os.environ.get("OMP_NUM_THREADS"),
               "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
sys.exit(3 if mode == "fail" else 0)
"""


@pytest.fixture
def job(tmp_path):
    """`job(name, mode="ok", output_dir=None)`: a command that logs to tmp_path/name.json."""
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)

    def make(name, mode="ok", output_dir=None):
        cmd = f"python {shlex.quote(str(script))} {shlex.quote(str(tmp_path / name))}.json {mode}"
        return cmd + (f" --output_dir {shlex.quote(str(output_dir))}" if output_dir else "")
    return make


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("DOMAINBED_PARALLEL_JOBS", raising=False)
    monkeypatch.setattr(command_launchers, "_usable_cpus", lambda: 4)


def _logs(tmp_path, names):
    return [json.loads((tmp_path / f"{n}.json").read_text()) for n in names]


def _max_overlap(logs):
    events = sorted([(r["start"], 1) for r in logs] + [(r["end"], -1) for r in logs])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def test_runs_n_jobs_at_once_and_shares_the_threads(tmp_path, job, cpu_only, monkeypatch, capsys):
    monkeypatch.setenv("DOMAINBED_PARALLEL_JOBS", "2")
    names = [f"j{i}" for i in range(4)]
    command_launchers.parallel_launcher([job(n) for n in names])
    logs = _logs(tmp_path, names)
    assert _max_overlap(logs) == 2
    assert {r["omp"] for r in logs} == {str(max(1, 4 // 2))}
    out = capsys.readouterr().out
    assert "[parallel] 0/4 done, 2 running, 0 failed, 2 waiting" in out
    assert "[parallel] finished 4 jobs in" in out and "4 done, 0 failed" in out


def test_failure_names_the_folder_and_the_last_err_line(tmp_path, job, cpu_only, monkeypatch,
                                                        capsys):
    monkeypatch.setenv("DOMAINBED_PARALLEL_JOBS", "2")
    out_dir = tmp_path / "sweep" / "abc123"
    out_dir.mkdir(parents=True)
    (out_dir / "err.txt").write_text("Traceback ...\nValueError: boom\n\n")
    command_launchers.parallel_launcher(
        [job("ok0"), job("bad", "fail", out_dir), job("ok1")])
    assert len(_logs(tmp_path, ["ok0", "bad", "ok1"])) == 3
    out = capsys.readouterr().out
    assert (f"failed (exit 3): {out_dir}; see {out_dir / 'err.txt'}: ValueError: boom"
            in out)
    assert "[parallel] 2/3 done, 0 running, 1 failed, 0 waiting" in out
    assert "2 done, 1 failed" in out


@pytest.mark.parametrize("value", ["zero", "0"])
def test_bad_parallel_jobs_fails_in_preflight(monkeypatch, value):
    monkeypatch.setenv("DOMAINBED_PARALLEL_JOBS", value)
    with pytest.raises(command_launchers.UserInputError,
                       match=r"DOMAINBED_PARALLEL_JOBS must be an integer >= 1.*=4"):
        command_launchers.parallel_launcher.preflight()


def test_gpu_mode_gives_each_job_one_free_gpu(tmp_path, job, monkeypatch):
    monkeypatch.setattr(command_launchers, "_visible_gpus", lambda: ["0", "1"])
    monkeypatch.setenv("DOMAINBED_PARALLEL_JOBS", "3")  # capped at the 2 GPUs
    names = [f"g{i}" for i in range(4)]
    command_launchers.parallel_launcher([job(n) for n in names])
    logs = _logs(tmp_path, names)
    assert all(r["gpu"] in ("0", "1") for r in logs)
    assert _max_overlap(logs) == 2
    for a in logs:
        for b in logs:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["gpu"] != b["gpu"]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ctrl_c_stops_running_jobs_and_reraises(tmp_path, job, cpu_only, capsys):
    # Ctrl-C raises KeyboardInterrupt here, whatever handler an earlier test left installed
    # (submitit's local executor, for one, installs its own)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupted_launch(tmp_path, job, capsys)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted_launch(tmp_path, job, capsys):
    out_dir = tmp_path / "sweep" / "hanging"
    out_dir.mkdir(parents=True)
    pid_file = tmp_path / "hang.json.pid"

    def interrupt_once_started():
        while not pid_file.exists():
            time.sleep(0.05)
        _thread.interrupt_main()
    threading.Thread(target=interrupt_once_started, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        command_launchers.parallel_launcher([job("hang", "hang", out_dir)])
    assert time.monotonic() - start < 15
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5  # a signalled process takes a moment to go
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    out = capsys.readouterr().out
    assert "interrupted: stopped 1 running jobs" in out and str(out_dir) in out


def test_sweep_with_parallel_launcher(tmp_path, run_main, monkeypatch):
    monkeypatch.setenv("DOMAINBED_PARALLEL_JOBS", "2")
    result = run_main(sweep.main, "launch", "--command_launcher", "parallel",
                      "--datasets", "Debug28", "--algorithms", "ERM", "--steps", "3",
                      "--n_hparams", "1", "--n_trials", "2", "--test_envs", "0",
                      "--hparams", '{"batch_size": 8}',
                      "--skip_confirmation", "--data_dir", tmp_path,
                      "--output_dir", tmp_path / "sweep")
    assert result.returncode == 0, result.stderr
    job_dirs = list((tmp_path / "sweep").iterdir())
    assert len(job_dirs) == 2
    assert all((d / "done").exists() for d in job_dirs)
    assert "2 done, 0 failed" in result.stdout


def test_slurm_launcher_records_submitit_job(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINBED_SUBMITIT_CLUSTER", "local")
    monkeypatch.setenv("DOMAINBED_SLURM_LOGS", str(tmp_path / "logs"))
    out_dir = tmp_path / "job"
    out_dir.mkdir()
    command_launchers.slurm_launcher([f"true --output_dir {shlex.quote(str(out_dir))}"])
    record = json.loads((out_dir / "submitit.json").read_text())
    assert record["cluster"] == "local"
    assert record["folder"] == str(tmp_path / "logs")
    assert record["job_id"]
    assert command_launchers.submitit_state(str(out_dir)) == "local"


def test_submitit_state_reads_hand_written_and_corrupt_records(tmp_path):
    good, corrupt, missing = (tmp_path / n for n in ("good", "corrupt", "missing"))
    good.mkdir()
    corrupt.mkdir()
    (good / "submitit.json").write_text(
        json.dumps({"job_id": "123", "folder": str(tmp_path), "cluster": "debug"}))
    (corrupt / "submitit.json").write_text('{"job_id": "12')
    assert command_launchers.submitit_state(str(good)) == "local"
    assert command_launchers.submitit_state(str(corrupt)) is None
    assert command_launchers.submitit_state(str(missing)) is None


def test_a_job_failing_before_its_logs_shows_its_own_stderr(tmp_path, cpu_only, monkeypatch,
                                                            capsys):
    """An error printed before train.py tees its logs (e.g. bad input) is not lost, and an
    err.txt left by an earlier attempt does not stand in for it."""
    monkeypatch.setenv("DOMAINBED_PARALLEL_JOBS", "1")
    out_dir = tmp_path / "abc"
    out_dir.mkdir()
    (out_dir / "err.txt").write_text("an earlier attempt's last line\n")
    cmd = (f"python -c \"import sys; print('error: this attempt', file=sys.stderr); "
           f"sys.exit(2)\" --output_dir {shlex.quote(str(out_dir))}")
    command_launchers.parallel_launcher([cmd])
    out = capsys.readouterr().out
    assert f"failed (exit 2): {out_dir}; see {out_dir / 'err.txt'}: error: this attempt" in out
