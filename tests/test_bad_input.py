"""The bad-input catalogue: every known bad input of every script, in one table.

Each row is (script, arguments, expected exit status, phrases of the message). Every case
must end in one `error:` line naming the problem and the fix, the expected non-zero exit
(2 for bad input), no traceback and nothing written. Rows are added here whenever a new bad
input is handled, so the catalogue cannot regress.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_list_top_hparams import write_sweep

from domainbed import algorithms
from domainbed.plugins import load_plugins
from domainbed.scripts import collect_results, download, list_top_hparams, sweep, train
from ex2l_domainbed.reproduce import cli as reproduce

load_plugins()


def _train(tmp: Path, *extra: str) -> list[str]:
    return ["--dataset", "Debug28", "--algorithm", "ERM", "--steps", "1",
            "--output_dir", str(tmp / "run"), *extra]


def _sweep(tmp: Path, *extra: str) -> list[str]:
    return ["launch", "--datasets", "Debug28", "--algorithms", "ERM", "--data_dir", str(tmp),
            "--output_dir", str(tmp / "run"), "--command_launcher", "dummy", "--n_hparams", "1",
            "--n_trials", "1", "--skip_confirmation", *extra]


def _hp(**overrides) -> str:
    return json.dumps(overrides)


def _below_a_file(tmp: Path) -> list[str]:
    (tmp / "file").write_text("keep me")
    return ["--output_dir", str(tmp / "file" / "sub")]


def _folder(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


def _run_folder(tmp: Path) -> Path:
    run = _folder(tmp, "run_abc")
    (run / "results.jsonl").write_text("{}\n")
    return run


def _top(tmp: Path, algorithm: str, test_env: str) -> list[str]:
    write_sweep(_folder(tmp, "sweep"))
    return ["--input_dir", str(tmp / "sweep"), "--dataset", "Debug28", "--algorithm", algorithm,
            "--test_env", test_env]


def _definition(tmp: Path, text: str) -> list[str]:
    """`reproduce launch --dry_run` of a small definition holding `text` after its [sweep]."""
    path = tmp / "tiny.toml"
    path.write_text('[sweep]\ndatasets = ["Debug28"]\ntest_envs = [0]\n' + text)
    return ["launch", str(path), "--data_dir", str(tmp / "data"), "--output_dir",
            str(tmp / "out"), "--dry_run"]


def _other_run(tmp: Path) -> list[str]:
    """A folder that holds another run's records (seed 1), relaunched with seed 2."""
    run = _folder(tmp, "run")
    args = vars(train.build_parser().parse_args(_train(tmp, "--seed", "1")))
    (run / "results.jsonl").write_text(json.dumps({"args": args, "step": 0}) + "\n")
    return _train(tmp, "--seed", "2")


# id -> (main, argv(tmp), exit status, phrases)
CATALOGUE = {
    # --- train: names, JSON, ranges (handled before; kept here so they cannot regress)
    "train/unknown algorithm": (train.main, lambda t: _train(t) + ["--algorithm", "ERMM"], 2,
                                ["Algorithm not found: ERMM", "Did you mean 'ERM'"]),
    "train/unknown dataset": (train.main, lambda t: _train(t) + ["--dataset", "Debug29"], 2,
                              ["Dataset not found: Debug29"]),
    "train/malformed --hparams": (train.main, lambda t: _train(t, "--hparams", '{"lr": '), 2,
                                  ["--hparams is not valid JSON"]),
    "train/misspelled hparam": (train.main, lambda t: _train(t, "--hparams", _hp(lrr=1e-3)), 2,
                                ["Unknown hparam 'lrr'", "Did you mean 'lr'"]),
    "train/test env out of range": (train.main, lambda t: _train(t, "--test_envs", "5"), 2,
                                    ["--test_envs 5 is out of range"]),
    "train/zero steps": (train.main, lambda t: _train(t, "--steps", "0"), 2,
                         ["--steps must be a positive integer"]),
    # --- train: the experiment would have silently differed from what was asked
    "train/string for a bool": (train.main, lambda t: _train(
        t, "--hparams", _hp(data_augmentation="no")), 2,
        ["data_augmentation='no'", "must be true or false"]),
    "train/bool for a number": (train.main, lambda t: _train(t, "--hparams", _hp(lr=True)), 2,
                                ["lr=True", "must be a number"]),
    "train/EX2L string for a bool": (train.main, lambda t: _train(
        t, "--algorithm", "EX2L", "--hparams", _hp(ex2l_confounder_grad="false")), 2,
        ["ex2l_confounder_grad='false'", "must be true or false"]),
    "train/duplicate test envs": (train.main, lambda t: _train(t, "--test_envs", "0", "0"), 2,
                                  ["--test_envs 0 0 names environment 0 more than once"]),
    "train/Lite without --data_dir": (train.main, lambda t: [
        "--dataset", "SpawriousLiteM2M_hard", "--algorithm", "ERM", "--steps", "1",
        "--output_dir", str(t / "run")], 2, ["SpawriousLiteM2M_hard needs --data_dir"]),
    # --- train: once a traceback
    "train/batch size 0": (train.main, lambda t: _train(t, "--hparams", _hp(batch_size=0)), 2,
                           ["batch_size=0", "must be >= 1"]),
    "train/batch size -1": (train.main, lambda t: _train(t, "--hparams", _hp(batch_size=-1)), 2,
                            ["batch_size=-1", "must be >= 1"]),
    "train/batch size 8.5": (train.main, lambda t: _train(t, "--hparams", _hp(batch_size=8.5)),
                             2, ["batch_size=8.5", "must be an integer"]),
    "train/batch size '8'": (train.main, lambda t: _train(t, "--hparams", _hp(batch_size="8")),
                             2, ["batch_size='8'", "must be an integer"]),
    "train/lr 'fast'": (train.main, lambda t: _train(t, "--hparams", _hp(lr="fast")), 2,
                        ["lr='fast'", "must be a number"]),
    "train/lr -1": (train.main, lambda t: _train(t, "--hparams", _hp(lr=-1)), 2,
                    ["lr=-1", "must be >= 0"]),
    "train/EX2L lambda 'big'": (train.main, lambda t: _train(
        t, "--algorithm", "EX2L", "--hparams", _hp(ex2l_lambda="big")), 2,
        ["ex2l_lambda='big'", "must be a number"]),
    "train/output dir below a file": (train.main, lambda t: _train(t) + _below_a_file(t), 2,
                                      ["is below the file", "file"]),
    # --- sweep
    "sweep/duplicate test envs": (sweep.main, lambda t: _sweep(t, "--test_envs", "0", "0"), 2,
                                  ["names environment 0 more than once"]),
    "sweep/string for a bool": (sweep.main, lambda t: _sweep(
        t, "--hparams", _hp(data_augmentation="no")), 2, ["must be true or false"]),
    "sweep/output dir below a file": (sweep.main, lambda t: _sweep(t) + _below_a_file(t), 2,
                                      ["is below the file"]),
    "sweep/unknown launcher": (sweep.main, lambda t: _sweep(t, "--command_launcher", "nope"), 2,
                               ["Unknown --command_launcher 'nope'"]),
    "sweep/checkpoint freq 0": (sweep.main, lambda t: _sweep(t, "--checkpoint_freq", "0"), 2,
                                ["--checkpoint_freq must be a positive integer"]),
    # --- train: a folder is one run
    "train/a folder of other arguments": (train.main, _other_run, 2,
                                          ["holds a run with other arguments", "seed: 1 there",
                                           "own --output_dir"]),
    "train/a group baseline without groups": (train.main, lambda t: _train(
        t, "--algorithm", "JTT"), 2, ["JTT needs a dataset with an attribute", "Debug28"]),
    "sweep/a group baseline without groups": (sweep.main, lambda t: _sweep(
        t, "--algorithms", "ERM", "GroupBalancedERM"), 2, ["GroupBalancedERM needs a dataset"]),
    # --- reproduce (more in test_reproduce.py)
    "reproduce/unknown definition": (reproduce.main, lambda t: [
        "launch", "spawrious_m2m_hardd", "--data_dir", str(t), "--output_dir", str(t / "o")], 2,
        ["spawrious_m2m_hardd", "spawrious_m2m_hard"]),
    "reproduce/misspelled key": (reproduce.main, lambda t: _definition(
        t, "n_trial = 3\n[algorithms.ERM]\n"), 2, ["'n_trial'", "did you mean 'n_trials'"]),
    "reproduce/unregistered algorithm": (reproduce.main, lambda t: _definition(
        t, "[algorithms.ERMM]\n"), 2, ["Algorithm not found: ERMM"]),
    "reproduce/hparam the algorithm does not take": (reproduce.main, lambda t: _definition(
        t, "[algorithms.ERM]\nex2l_lambda = 3.0\n"), 2, ["ex2l_lambda"]),
    # --- the collector and list_top_hparams (more in test_collect_robust.py)
    "collect/empty folder": (collect_results.main, lambda t: [
        "--input_dir", str(_folder(t, "empty"))], 2, ["holds no run folders",
                                                       "Pass the sweep's --output_dir"]),
    "collect/a run folder": (collect_results.main, lambda t: [
        "--input_dir", str(_run_folder(t))], 2, ["is a single run", "pass its parent"]),
    "collect/missing folder": (collect_results.main, lambda t: ["--input_dir", str(t / "nope")],
                               2, ["does not exist"]),
    "top/misspelled algorithm": (list_top_hparams.main, lambda t: _top(t, "ERMM", "0"), 2,
                                 ["Algorithm not found: ERMM", "Did you mean 'ERM'"]),
    "top/test env out of range": (list_top_hparams.main, lambda t: _top(t, "ERM", "7"), 2,
                                  ["--test_env 7 is out of range"]),
    # --- the download (more in test_download_errors.py)
    "download/not a URL": (download.main, lambda t: [
        "--dataset", "spawrious", "--data_dir", str(t / "data"), "--url", "notaurl"], 2,
        ["--url 'notaurl' is not a valid download URL"]),
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_bad_input_is_one_line_and_nothing_is_written(case, tmp_path, run_main):
    main, argv, status, phrases = CATALOGUE[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = argv(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))  # the case's fixtures
    result = run_main(main, *args)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == made, "wrote files"
    assert not (tmp_path / "None").exists() and before <= made


class InterruptedERM(algorithms.ERM):
    """ERM whose second step is interrupted, as Ctrl-C would: a registered algorithm."""

    def update(self, minibatches, unlabeled=None):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 2:
            raise KeyboardInterrupt
        return super().update(minibatches, unlabeled)


def test_ctrl_c_during_training_says_how_to_relaunch(tmp_path, run_main, restore_algorithms):
    algorithms.register_algorithm("InterruptedERM", InterruptedERM)
    out = tmp_path / "run"
    result = run_main(train.main, "--dataset", "Debug28", "--algorithm", "InterruptedERM",
                      "--steps", "3", "--checkpoint_freq", "1", "--output_dir", out,
                      "--hparams", _hp(batch_size=8), "--skip_model_save")
    assert result.returncode == 130
    assert "Traceback" not in result.stderr
    assert "interrupted" in result.stderr and "relaunch the same command" in result.stderr
    assert not (out / "done").exists()
    records = (out / "results.jsonl").read_text().splitlines()
    assert len(records) == 1  # the finished checkpoint is kept
    assert "interrupted" in (out / "err.txt").read_text()


class _Payload:
    """Unpickling this would create a file: the proof that a load ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_carrying_a_pickled_object_is_refused(tmp_path, run_main):
    import torch

    from ex2l_domainbed import viz

    run = tmp_path / "sweep" / "run"
    run.mkdir(parents=True)
    out = tmp_path / "train"
    assert run_main(train.main, "--dataset", "Debug28", "--algorithm", "EX2L", "--steps", "1",
                    "--hparams_seed", "1", "--hparams", _hp(batch_size=8),
                    "--output_dir", out).returncode == 0
    good = algorithms.load_checkpoint(str(out / "model.pkl"))  # what train.py writes loads,
    assert algorithms.from_checkpoint(good).predict(torch.zeros(1, 3, 28, 28)).shape == (1, 2)
    # ... and so does one from the previous version: a numpy scalar among the random hparams,
    # and no ex2l_penalty_path or featurizer (they take their defaults)
    import numpy as np
    old = {**good, "model_hparams": {k: v for k, v in good["model_hparams"].items()
                                     if k not in ("ex2l_penalty_path", "featurizer")}}
    old["model_hparams"]["resnet_dropout"] = np.float64(old["model_hparams"]["resnet_dropout"])
    torch.save(old, tmp_path / "old.pkl")
    rebuilt = algorithms.from_checkpoint(algorithms.load_checkpoint(str(tmp_path / "old.pkl")))
    assert rebuilt.hparams["ex2l_penalty_path"] == "both"
    marker = tmp_path / "code_ran"
    torch.save({**good, "args": {**good["args"], "note": _Payload(str(marker))}},
               run / "model.pkl")
    with pytest.raises(algorithms.UnsafeCheckpoint, match="holds pickled Python objects"):
        viz.load_model(str(run))
    assert not marker.exists()
    (run / "model.pkl").write_bytes(b"not a checkpoint")
    with pytest.raises(train.misc.UserInputError, match="not a readable checkpoint"):
        algorithms.load_checkpoint(str(run / "model.pkl"))


class _CorruptImages(__import__("torch").utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise train.misc.UserInputError(f"image {index} is corrupt: remove it and rerun")


def test_an_error_in_a_loader_worker_is_one_line():
    """torch re-raises a worker's exception with the worker's traceback as its text."""
    import torch

    loader = torch.utils.data.DataLoader(_CorruptImages(), num_workers=1)
    with pytest.raises(train.misc.UserInputError) as info:
        next(iter(loader))
    assert "Traceback" in str(info.value)  # what the user saw before
    assert train.describe_failure(info.value) == "error: image 0 is corrupt: remove it and rerun\n"
