"""End-to-end tests of `python -m domainbed.scripts.train` on the Debug datasets.

The runs that train are subprocesses (a whole `python -m` run: exit status, console,
files); they are all started together (two at a time) by one module fixture, and each
test waits for the runs it reads. Bad input is checked by calling `train.main(argv)` in
this process (`run_main`): the same exit status and message, without an interpreter start.
"""
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import run_python_module

from domainbed import algorithms, hparams_registry
from domainbed.lib import misc
from domainbed.scripts import train

TRAIN = "domainbed.scripts.train"
FAST = ["--hparams", '{"batch_size": 8}', "--steps", "3", "--checkpoint_freq", "1"]
UPSTREAM_ARGS = {
    "algorithm", "checkpoint_freq", "data_dir", "dataset", "holdout_fraction", "hparams",
    "hparams_seed", "output_dir", "save_model_every_checkpoint", "seed", "skip_model_save",
    "steps", "task", "test_envs", "trial_seed", "uda_holdout_fraction"}
ENV_ACC_KEYS = {f"env{i}_{s}_acc" for i in range(3) for s in ("in", "out")}
CHECKPOINT_KEYS = {"args", "model_input_shape", "model_num_classes", "model_num_domains",
                   "model_hparams", "model_dict"}

# name -> train arguments for one in-process run each (its own --output_dir); all but
# the last are bad input
BAD_INPUTS = {
    "unknown_algorithm": ["--dataset", "Debug28", "--algorithm", "GroupDR0", *FAST],
    "unknown_dataset": ["--dataset", "Debug29", *FAST],
    "malformed_hparams": ["--dataset", "Debug28", "--hparams", '{"batch_size": 8', "--steps", "3"],
    "unknown_hparam": ["--dataset", "Debug28", "--hparams", '{"lrr": 0.1}', "--steps", "3"],
    "test_env_out_of_range": ["--dataset", "Debug28", *FAST, "--test_envs", "5"],
    "output_dir_is_file": ["--dataset", "Debug28", *FAST],
    "zero_steps": ["--dataset", "Debug28", "--hparams", '{"batch_size": 8}', "--steps", "0"],
    "default_batch_too_big": ["--dataset", "Debug28", "--steps", "3"],
    # Adam moves every weight by ~lr on step 0, so the loss is NaN by step 1.
    "nan_loss": ["--dataset", "Debug28", "--hparams", '{"batch_size": 8, "lr": 1e30}',
                 "--steps", "5", "--checkpoint_freq", "1"],
    # domain adaptation: the test env's uda split has int(13 * 0.2) = 2 examples < 8
    "uda_split_too_small": ["--dataset", "Debug28", *FAST, "--task", "domain_adaptation",
                            "--uda_holdout_fraction", "0.2"],
    "uda_fraction_out_of_range": ["--dataset", "Debug28", *FAST, "--uda_holdout_fraction", "2"],
    # accepted by the argument checks; the out-splits are then empty
    "holdout_zero": ["--dataset", "Debug28", *FAST, "--holdout_fraction", "0",
                     "--skip_model_save"],
}


def _train(out_dir, *args):
    return run_python_module(TRAIN, "--output_dir", out_dir, *args, cwd=out_dir.parent)


def _snapshot(out_dir):
    """The folder's files (name -> bytes); {} when there is no folder."""
    return ({p.name: p.read_bytes() for p in out_dir.iterdir() if p.is_file()}
            if out_dir.is_dir() else {})


def _train_in_sequence(out_dir, *arg_lists):
    """Run train several times into one folder; after each run snapshot the folder's files."""
    results, snapshots = [], []
    for args in arg_lists:
        results.append(_train(out_dir, *args))
        snapshots.append(_snapshot(out_dir))
    return results, snapshots


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_runs")
    jobs = {
        # first, as the longest: a run, then a relaunch with other seeds (refused), then
        # the same run again (nothing to do)
        "relaunch": (_train_in_sequence, root / "relaunch",
                     ["--dataset", "Debug28", *FAST, "--skip_model_save", "--seed", "0"],
                     ["--dataset", "Debug28", *FAST, "--skip_model_save", "--seed", "1",
                      "--hparams_seed", "1"],
                     ["--dataset", "Debug28", *FAST, "--skip_model_save", "--seed", "0"]),
        "hparams_seed": (_train, root / "hparams_seed", "--dataset", "Debug28", *FAST,
                         "--skip_model_save", "--seed", "1", "--hparams_seed", "1"),
        "erm": (_train, root / "erm", "--dataset", "Debug28", *FAST,
                "--save_model_every_checkpoint"),
        "erm_again": (_train, root / "erm_again", "--dataset", "Debug28", *FAST,
                      "--skip_model_save"),
        "attr_groupdro": (_train, root / "attr_groupdro", "--dataset", "DebugAttr28",
                          "--algorithm", "GroupDRO", *FAST),
    }
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(fn, out_dir, *args)
               for name, (fn, out_dir, *args) in jobs.items()}
    dirs = {name: job[1] for name, job in jobs.items()}

    class Runs:
        root_dir = root

        def __getitem__(self, name):
            return futures[name].result(), dirs[name]

    yield Runs()
    pool.shutdown(wait=True)


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _records(path):
    text = path.read_text()
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert all(line for line in lines)
    return [json.loads(line) for line in lines], lines


def _sorted_everywhere(line):
    """True when every JSON object in the line has its keys in sorted order."""
    ok = []
    json.loads(line, object_pairs_hook=lambda pairs: ok.append(
        [k for k, _ in pairs] == sorted(k for k, _ in pairs)) or dict(pairs))
    return all(ok)


# --------------------------------------------------------------------------- a normal run

def test_results_jsonl_has_every_upstream_key(runs):
    result, out_dir = runs["erm"]
    _ok(result)
    records, lines = _records(out_dir / "results.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]  # checkpoint_freq 1, last step = steps - 1
    expected = ENV_ACC_KEYS | {"args", "epoch", "hparams", "mem_gb", "step", "step_time", "loss"}
    hparams = hparams_registry.default_hparams("ERM", "Debug28")
    hparams["batch_size"] = 8
    for record, line in zip(records, lines):
        assert set(record) == expected
        assert _sorted_everywhere(line)
        assert set(record["args"]) == UPSTREAM_ARGS
        assert record["args"]["hparams"] == '{"batch_size": 8}'
        assert record["args"]["test_envs"] == [0]
        assert record["args"]["steps"] == 3
        assert record["hparams"] == hparams
        assert type(record["step"]) is int
        for key in ENV_ACC_KEYS:
            assert 0.0 <= record[key] <= 1.0
        assert isinstance(record["loss"], float) and record["loss"] > 0
        assert record["step_time"] > 0 and record["mem_gb"] >= 0
        # in-splits hold 13 of 16 examples: steps_per_epoch = 13 / 8
        assert record["epoch"] == pytest.approx(record["step"] * 8 / 13)


def test_done_and_console_output(runs):
    result, out_dir = runs["erm"]
    _ok(result)
    assert (out_dir / "done").read_text() == "done"
    out = (out_dir / "out.txt").read_text()
    assert "env0_in_acc" in out and "HParams:" in out and "Args:" in out
    assert "env0_in_acc" in result.stdout
    assert (out_dir / "err.txt").exists()


def test_model_pkl_has_upstream_keys_and_reloads(runs):
    result, out_dir = runs["erm"]
    _ok(result)
    saved = torch.load(out_dir / "model.pkl", weights_only=True)
    assert set(saved) == CHECKPOINT_KEYS
    assert tuple(saved["model_input_shape"]) == (3, 28, 28)
    assert saved["model_num_classes"] == 2
    assert saved["model_num_domains"] == 2
    assert saved["args"]["algorithm"] == "ERM"
    cls = algorithms.get_algorithm_class(saved["args"]["algorithm"])
    fresh = cls(saved["model_input_shape"], saved["model_num_classes"],
                saved["model_num_domains"], saved["model_hparams"])
    fresh.load_state_dict(saved["model_dict"])
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved["model_dict"][k]), k
    assert not list(out_dir.glob("*.tmp"))
    # --save_model_every_checkpoint: one file per checkpoint, same layout
    assert sorted(p.name for p in out_dir.glob("model_step*.pkl")) == [
        "model_step0.pkl", "model_step1.pkl", "model_step2.pkl"]
    step1 = torch.load(out_dir / "model_step1.pkl", weights_only=True)
    assert set(step1) == CHECKPOINT_KEYS
    assert not all(torch.equal(v, saved["model_dict"][k]) for k, v in step1["model_dict"].items())


def test_same_seeds_give_identical_results(runs):
    (first, dir1), (second, dir2) = runs["erm"], runs["erm_again"]
    _ok(first)
    _ok(second)
    records1, _ = _records(dir1 / "results.jsonl")
    records2, _ = _records(dir2 / "results.jsonl")
    assert len(records1) == len(records2) == 3
    for r1, r2 in zip(records1, records2):
        for key in ENV_ACC_KEYS | {"loss", "epoch", "step", "hparams"}:
            assert r1[key] == r2[key], key
    assert not (dir2 / "model.pkl").exists()  # --skip_model_save
    assert (dir2 / "done").read_text() == "done"


def test_relaunch_into_a_finished_run_never_retrains_it(runs):
    """A folder is one run: other arguments are refused, the same ones find it done; the
    finished records stay where they are either way."""
    ((first, other, same), snapshots), _ = runs["relaunch"]
    _ok(first)
    assert other.returncode == 2
    assert "holds a run with other arguments" in _one_error_line(other)
    assert "seed: 0 there, 1 now" in other.stderr
    _ok(same)
    assert "nothing to do" in same.stdout
    assert snapshots[0] == snapshots[1] == snapshots[2]
    records = [json.loads(line) for line in snapshots[2]["results.jsonl"].decode().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert not any(name.startswith("results.jsonl.previous") for name in snapshots[2])
    assert snapshots[2]["done"] == b"done"


def test_relaunch_of_an_unfinished_attempt_sets_its_records_aside(runs, run_main, tmp_path):
    """An attempt without a resume checkpoint (e.g. killed before this version) restarts."""
    _, relaunch_dir = runs["relaunch"]
    out_dir = tmp_path / "attempt"
    shutil.copytree(relaunch_dir, out_dir)
    os.remove(out_dir / "done")
    before = (out_dir / "results.jsonl").read_bytes()
    args = ["--dataset", "Debug28", *FAST, "--skip_model_save", "--seed", "0"]
    result = run_main(train.main, "--output_dir", out_dir, *args)
    assert result.returncode == 0, result.stderr
    assert (out_dir / "results.jsonl.previous1").read_bytes() == before
    assert (out_dir / "done").exists()


def test_hparams_seed_gives_upstreams_random_hparams(runs):
    (second, out_dir) = runs["hparams_seed"]
    _ok(second)
    record = json.loads((out_dir / "results.jsonl").read_text().splitlines()[0])
    expected = hparams_registry.random_hparams("ERM", "Debug28", 785910682)  # seed_hash(1, 0)
    expected["batch_size"] = 8
    assert record["hparams"] == expected
    assert record["hparams"]["lr"] == 0.00011906162909279594  # reference 2.2 golden value


def test_failed_relaunch_leaves_finished_run_intact(runs, run_main, tmp_path):
    """Bad input found on relaunch must not delete `done` or move the finished records aside."""
    ((first, *_), snapshots), relaunch_dir = runs["relaunch"]
    _ok(first)
    out_dir = tmp_path / "relaunch"
    shutil.copytree(relaunch_dir, out_dir)  # the finished run
    before = _snapshot(out_dir)
    assert before == snapshots[-1]
    # the default batch size (64) exceeds Debug28's splits: found only after loading data
    third = run_main(train.main, "--output_dir", out_dir, "--dataset", "Debug28",
                     "--steps", "3", "--skip_model_save")
    assert "holds a run with other arguments" in _one_error_line(third)
    after = _snapshot(out_dir)
    assert after.get("done") == b"done"
    assert after.get("results.jsonl") == before["results.jsonl"]
    assert "results.jsonl.previous2" not in after


# --------------------------------------------------------------------------- attributes

def test_attribute_dataset_adds_group_keys_and_no_fake_env_keys(runs):
    result, out_dir = runs["attr_groupdro"]
    _ok(result)
    records, lines = _records(out_dir / "results.jsonl")
    assert records[-1]["step"] == 2
    for record, line in zip(records, lines):
        assert _sorted_everywhere(line)
        env_acc = {k for k in record if re.fullmatch(r"env\d+_(in|out)_acc", k)}
        assert env_acc == ENV_ACC_KEYS
        assert not {k for k in record if re.search(r"env\d+_(in|out)_acc", k)} - ENV_ACC_KEYS
        for i in range(3):
            for split in ("in", "out"):
                groups = record[f"env{i}_{split}_group_acc"]
                assert isinstance(groups, dict) and groups
                assert all(re.fullmatch(r"y=[01],a=[01]", g) for g in groups)
                assert all(0.0 <= v <= 1.0 for v in groups.values())
                wga = record[f"env{i}_{split}_wga"]
                assert wga == pytest.approx(min(groups.values()))
                assert wga <= record[f"env{i}_{split}_acc"] + 1e-12
        extra = set(record) - ENV_ACC_KEYS - {
            "args", "epoch", "hparams", "mem_gb", "step", "step_time", "loss"}
        assert extra == {f"env{i}_{s}_{kind}" for i in range(3) for s in ("in", "out")
                         for kind in ("wga", "group_acc")}


def test_groupdro_model_pkl_reloads_into_fresh_instance(runs):
    result, out_dir = runs["attr_groupdro"]
    _ok(result)
    saved = torch.load(out_dir / "model.pkl", weights_only=True)
    assert set(saved) == CHECKPOINT_KEYS
    assert saved["model_dict"]["q"].shape == (2,)
    fresh = algorithms.GroupDRO(saved["model_input_shape"], saved["model_num_classes"],
                                saved["model_num_domains"], saved["model_hparams"])
    fresh.load_state_dict(saved["model_dict"])
    assert torch.equal(fresh.q, saved["model_dict"]["q"])
    assert float(fresh.q.sum()) == pytest.approx(1.0)


# --------------------------------------------------------------------------- bad input

def _train_bad_input(run_main, tmp_path, name):
    """Run `train.main` in this process on BAD_INPUTS[name]; return (result, output_dir)."""
    if name == "output_dir_is_file":
        out_dir = tmp_path / "a_file"
        out_dir.write_text("keep me")
    else:
        out_dir = tmp_path / name
    return run_main(train.main, "--output_dir", out_dir, *BAD_INPUTS[name]), out_dir


def _one_error_line(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    return lines[0]


@pytest.mark.parametrize("name, needles", [
    ("unknown_algorithm", ["GroupDR0", "'GroupDRO'", "ERM"]),
    ("unknown_dataset", ["Debug29", "'Debug28'"]),
    ("malformed_hparams", ["--hparams", "JSON"]),
    ("unknown_hparam", ["'lrr'", "'lr'"]),
    ("test_env_out_of_range", ["--test_envs", "5", "3 environments"]),
    ("output_dir_is_file", ["--output_dir", "a_file"]),
    ("zero_steps", ["--steps", "0"]),
    ("default_batch_too_big", ["environment 1", "13", "64"]),
])
def test_bad_input_one_line_error_no_done(run_main, tmp_path, name, needles):
    result, out_dir = _train_bad_input(run_main, tmp_path, name)
    assert result.returncode == 2  # bad input
    message = _one_error_line(result)
    for needle in needles:
        assert needle in message, (needle, message)
    if name == "output_dir_is_file":
        assert out_dir.read_text() == "keep me"
    else:
        assert not (out_dir / "done").exists()
        assert not (out_dir / "model.pkl").exists()


def test_nan_loss_stops_with_the_step_and_no_done(run_main, tmp_path):
    result, out_dir = _train_bad_input(run_main, tmp_path, "nan_loss")
    assert result.returncode == 1  # a diverged run, not bad input (2)
    message = _one_error_line(result)
    assert re.search(r"\bnan\b", message, re.IGNORECASE)
    match = re.search(r"step (\d+)", message)
    assert match, message
    step = int(match.group(1))
    assert 0 <= step < 5
    assert not (out_dir / "done").exists()
    assert not (out_dir / "model.pkl").exists()
    # Records written before the divergence are all finite and precede that step.
    if (out_dir / "results.jsonl").exists():
        records, _ = _records(out_dir / "results.jsonl")
        assert all(r["step"] < step for r in records)


@pytest.mark.parametrize("name, needles", [
    ("uda_split_too_small", ["2", "8"]),
    ("uda_fraction_out_of_range", ["--uda_holdout_fraction", "2"]),
])
def test_bad_domain_adaptation_input_one_line_error(run_main, tmp_path, name, needles):
    result, out_dir = _train_bad_input(run_main, tmp_path, name)
    assert result.returncode == 2  # bad input
    message = _one_error_line(result)
    for needle in needles:
        assert needle in message, (needle, message)
    assert not (out_dir / "done").exists()


def test_holdout_fraction_zero_runs_or_is_refused_cleanly(run_main, tmp_path):
    """--holdout_fraction 0 passes the argument checks, so it must either train or be one error line."""
    result, out_dir = _train_bad_input(run_main, tmp_path, "holdout_zero")
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if result.returncode == 0:
        assert (out_dir / "done").read_text() == "done"
    else:
        assert "--holdout_fraction" in _one_error_line(result)


@pytest.mark.parametrize("dataset, algorithm", [
    ("Debug", "ERM"),                    # base class of the Debug datasets, no ENVIRONMENTS
    ("MultipleDomainDataset", "ERM"),    # the abstract base
    ("Debug28", "Algorithm"),            # the abstract base: update() raises NotImplementedError
])
def test_validate_args_rejects_abstract_base_classes(dataset, algorithm):
    """Names that resolve to a base class must be a readable input error, not a crash later."""
    args = train.build_parser().parse_args(["--dataset", dataset, "--algorithm", algorithm])
    with pytest.raises(misc.UserInputError):
        train.validate_args(args)
