"""An in-process `train.main` puts `sys.stdout` and `sys.stderr` back when it ends.

train tees both streams into the run's `out.txt` and `err.txt`; a caller that runs several
trainings in one process (tests, benchmarks) must get its own streams back, and the log
files closed, whether the run finished or failed.
"""
import sys

from domainbed.scripts import train

FAST = ["--dataset", "Debug28", "--hparams", '{"batch_size": 8}', "--steps", "2",
        "--checkpoint_freq", "1", "--skip_model_save"]


def test_streams_restored_after_a_finished_run(tmp_path):
    stdout, stderr = sys.stdout, sys.stderr
    out_dir = tmp_path / "run"
    assert train.main([*FAST, "--output_dir", str(out_dir)]) == 0
    assert sys.stdout is stdout and sys.stderr is stderr
    out = (out_dir / "out.txt").read_text()
    assert "HParams:" in out and "env0_in_acc" in out and "step" in out  # the printed table
    assert (out_dir / "done").read_text() == "done"
    print("after the run")  # goes to the caller's stream, not into out.txt
    assert "after the run" not in (out_dir / "out.txt").read_text()


def test_streams_restored_and_error_logged_after_a_failed_run(tmp_path, capsys):
    stdout, stderr = sys.stdout, sys.stderr
    out_dir = tmp_path / "run"
    # the default batch size (64) exceeds Debug28's training splits: fails inside the tee
    assert train.main(["--dataset", "Debug28", "--steps", "2",
                       "--output_dir", str(out_dir)]) == 2
    assert sys.stdout is stdout and sys.stderr is stderr
    message = capsys.readouterr().err
    assert message.startswith("error:") and "batch_size" in message
    assert message in (out_dir / "err.txt").read_text()
    assert not (out_dir / "done").exists()
