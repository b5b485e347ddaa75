"""collect_results and list_top_hparams on bad input: one readable line, exit 2, nothing lost.

Bad results.jsonl lines are reported once each (file and line number) and the
good runs' tables stay byte for byte those of tests/test_collect_results.py;
the exit status is then 0, since those tables are complete. A folder that is
not a sweep is an `error:` line, exit status 2, and no results file written.
"""
import json
import os

import pytest
from test_collect_results import EXPECTED_TEXT, make_record, make_sweep, write_run
from test_list_top_hparams import write_sweep

from domainbed.lib import reporting
from domainbed.scripts import collect_results, list_top_hparams

SUMMARY_FIX = ("repair or delete those results.jsonl files, or rerun those runs, "
               "then collect again.")


def results_path(root, run):
    return str(root / run / "results.jsonl")


def good_record(**changes):
    record = make_record("ERM", "Debug28", [0], 0, 0, 0,
                         {f"env{i}_{split}_acc": 0.5 for i in range(3) for split in ("in", "out")})
    record.update(changes)
    return record


def drop(record, dotted):
    """`record` without the key `dotted` ("args.trial_seed" or "step")."""
    record = json.loads(json.dumps(record))
    *parents, last = dotted.split(".")
    target = record
    for key in parents:
        target = target[key]
    del target[last]
    return record


def add_bad_runs(root, missing_key="args.trial_seed"):
    """Next to make_sweep's truncated and malformed lines: a good run gets two non-object
    lines, and a run from 'another version' mixes a record missing `missing_key` with one
    that would be usable (the whole run must go, or it would change a table)."""
    with open(root / "ERM_0_0_0" / "results.jsonl", "a") as f:
        f.write("[1, 2]\nNaN\n")
    write_run(root, "another_version", [good_record(), drop(good_record(step=100), missing_key)])


# --- collect_results over a sweep with bad lines ---------------------------------------

def test_bad_lines_are_reported_once_and_every_good_table_is_printed(tmp_path, run_main):
    make_sweep(tmp_path)
    add_bad_runs(tmp_path)
    result = run_main(collect_results.main, "--input_dir", tmp_path)
    assert result.returncode == 0
    assert result.stdout == EXPECTED_TEXT
    assert (tmp_path / "results.txt").read_text() == EXPECTED_TEXT
    erm = results_path(tmp_path, "ERM_0_0_0")
    old = results_path(tmp_path, "another_version")
    expected = [  # runs in sorted order
        f"WARNING: {erm}:3: skipping line that is not a JSON object (it is a list)",
        f"WARNING: {erm}:4: skipping line that is not a JSON object (it is a number)",
        f"WARNING: {old}:2: unusable record: no args.trial_seed",
        f"WARNING: {old}: skipping the whole run: 1 of 2 records unusable (written by "
        f"another version?); a part of a run would select the wrong checkpoint",
        f"WARNING: {results_path(tmp_path, 'myalg')}:3: skipping truncated last line "
        f"(no newline: its run stopped while writing it)",
        f"WARNING: {results_path(tmp_path, 'unregistered_dataset')}:2: skipping malformed "
        f"JSON line (Expecting value)",
        f"WARNING: the tables leave out 4 damaged lines and 1 unusable run (listed above); "
        f"{SUMMARY_FIX}",
    ]
    assert result.stderr.splitlines() == expected  # each once, the summary last
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


@pytest.mark.parametrize("missing_key", ["args.test_envs", "env0_out_acc", "step"])
def test_a_record_missing_a_key_skips_its_run(tmp_path, run_main, missing_key):
    make_sweep(tmp_path)
    add_bad_runs(tmp_path, missing_key)
    result = run_main(collect_results.main, "--input_dir", tmp_path)
    assert result.returncode == 0 and result.stdout == EXPECTED_TEXT
    assert (f"{results_path(tmp_path, 'another_version')}:2: unusable record: "
            f"no {missing_key}\n") in result.stderr


@pytest.mark.parametrize("change, problem", [
    ({"step": "100"}, "step is a string, not a number"),
    ({"env1_in_acc": None}, "env1_in_acc is null, not a number"),
    ({"env2_in_wga": "high"}, "env2_in_wga is a string, not a number"),
])
def test_a_value_of_the_wrong_type_makes_a_record_unusable(change, problem):
    assert reporting.record_problem(good_record(**change)) == problem


def test_wrong_args_are_named():
    record = good_record()
    record["args"].update(test_envs=[0, 0], trial_seed=True)
    assert reporting.record_problem(record) == (
        "args.trial_seed is a boolean, not an integer; "
        "args.test_envs is a list, not a list of distinct integers")
    record["args"].update(test_envs=[5], trial_seed=0)
    assert reporting.record_problem(record) == (
        "args.test_envs names env 5, but the record has accuracies for envs 0 to 2 only")
    assert reporting.record_problem({"args": [1]}).startswith("no args.algorithm")


def test_last_line_without_newline(tmp_path, capsys):
    """A whole object is kept (its closing brace was written); a cut-short one is not."""
    write_run(tmp_path, "whole", [good_record()], tail=json.dumps(good_record(step=100)))
    write_run(tmp_path, "cut", [good_record()], tail=json.dumps(good_record(step=100))[:-1])
    log = reporting.SkipLog()
    records = reporting.load_records(str(tmp_path), log)
    assert [r["step"] for r in records] == [0, 0, 100]
    assert capsys.readouterr().err == (
        f"WARNING: {results_path(tmp_path, 'cut')}:2: skipping truncated last line "
        f"(no newline: its run stopped while writing it)\n")
    assert (log.lines, log.runs) == (1, 0)


def test_blank_and_non_utf8_lines(tmp_path, capsys):
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "results.jsonl").write_bytes(
        (json.dumps(good_record()) + "\n\n").encode() + b"\xff{}\n")
    assert len(reporting.load_records(str(tmp_path))) == 1
    assert capsys.readouterr().err == (
        f"WARNING: {results_path(tmp_path, 'run')}:3: skipping malformed line "
        f"(not UTF-8 text)\n")


# --- results.txt is never partial ------------------------------------------------------

def test_a_failure_while_building_the_report_leaves_results_txt_alone(tmp_path, monkeypatch):
    make_sweep(tmp_path)

    def half_report(*args, **kwargs):
        print("Total records: 100")
        raise RuntimeError("boom")

    monkeypatch.setattr(collect_results, "print_report", half_report)
    with pytest.raises(RuntimeError):
        collect_results.main(["--input_dir", str(tmp_path)])
    assert (tmp_path / "results.txt").read_text() == "a stray file is not a run\n"


def test_a_failed_write_is_one_error_line_and_keeps_the_old_file(tmp_path, run_main,
                                                                 monkeypatch):
    make_sweep(tmp_path)

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(collect_results.os, "replace", no_space)
    result = run_main(collect_results.main, "--input_dir", tmp_path)
    assert result.returncode == 2
    assert result.stdout == EXPECTED_TEXT
    assert result.stderr.splitlines()[-1] == (
        f"error: could not write {tmp_path / 'results.txt'} (No space left on device); the "
        f"tables above are complete. Make room or make {tmp_path} writable, then collect again.")
    assert (tmp_path / "results.txt").read_text() == "a stray file is not a run\n"
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


# --- folders that are not a sweep ------------------------------------------------------

def assert_error(result, message, folder):
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"error: {message}\n"
    assert not {"results.txt", "results.md"} & set(os.listdir(folder))


def test_empty_folder(tmp_path, run_main):
    result = run_main(collect_results.main, "--input_dir", tmp_path)
    assert_error(result, f"{tmp_path} is empty; it holds no run folders "
                         f"({tmp_path}/<hash>/results.jsonl). Pass the sweep's --output_dir.",
                 tmp_path)


def test_folder_without_runs(tmp_path, run_main):
    (tmp_path / "notes.txt").write_text("")
    os.makedirs(tmp_path / "MNIST")
    result = run_main(collect_results.main, "--input_dir", tmp_path, "--markdown")
    assert_error(result, f"{tmp_path} holds no run folders ({tmp_path}/<hash>/results.jsonl). "
                         f"Pass the sweep's --output_dir.", tmp_path)


def test_a_run_folder_instead_of_the_sweep(tmp_path, run_main):
    write_run(tmp_path, "abc123", [good_record()])
    run = tmp_path / "abc123"
    result = run_main(collect_results.main, "--input_dir", run)
    assert_error(result, f"{run} is a single run (it has results.jsonl); pass its parent, "
                         f"the sweep folder {tmp_path}.", run)


def test_a_sweep_whose_every_line_is_bad(tmp_path, run_main):
    write_run(tmp_path, "run", [], tail="[1, 2]\n")
    result = run_main(collect_results.main, "--input_dir", tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"error: no usable record in {tmp_path}: every results.jsonl line was skipped "
        f"(listed above). Repair or delete those files, or rerun those runs.")
    assert os.listdir(tmp_path) == ["run"]


def test_a_sweep_before_its_first_checkpoint(tmp_path, run_main):
    os.makedirs(tmp_path / "abc123")
    (tmp_path / "abc123" / "err.txt").write_text("")
    result = run_main(collect_results.main, "--input_dir", tmp_path)
    assert result.returncode == 0
    assert result.stdout == "Total records: 0\n"
    assert result.stderr.startswith(f"note: no run in {tmp_path} has written a record yet;")


def test_python_m_exits_2_without_a_traceback(tmp_path, run_module):
    result = run_module("domainbed.scripts.collect_results", "--input_dir", tmp_path / "nope")
    assert result.returncode == 2
    assert result.stderr == (f"error: --input_dir {tmp_path / 'nope'} does not exist. "
                             f"Pass the sweep's --output_dir.\n")


# --- list_top_hparams ------------------------------------------------------------------

def list_top(run_main, root, dataset="Debug28", algorithm="ERM", test_env=0):
    return run_main(list_top_hparams.main, "--input_dir", root, "--dataset", dataset,
                    "--algorithm", algorithm, "--test_env", test_env)


@pytest.mark.parametrize("flag, value, message", [
    ("dataset", "debug82", "Dataset not found: debug82. Did you mean 'Debug28'?"),
    ("algorithm", "ERN", "Algorithm not found: ERN. Did you mean 'ERM'?"),
    ("dataset", "Debug224", "{root} holds no records of dataset Debug224; the datasets it "
                            "holds are: Debug28."),
    ("algorithm", "GroupDRO", "{root} holds no records of algorithm GroupDRO on Debug28; the "
                              "algorithms it holds on Debug28 are: ERM."),
    ("test_env", 3, "--test_env 3 is out of range: Debug28 has 3 environments, so "
                    "--test_env must be 0 to 2."),
    ("test_env", -1, "--test_env -1 is out of range: Debug28 has 3 environments, so "
                     "--test_env must be 0 to 2."),
])
def test_list_top_hparams_bad_selection(tmp_path, run_main, flag, value, message):
    write_sweep(tmp_path)
    result = list_top(run_main, tmp_path, **{flag: value})
    assert result.returncode == 2 and result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith("error: " + message.format(root=tmp_path))


def test_list_top_hparams_test_env_without_runs(tmp_path, run_main):
    write_sweep(tmp_path)
    for run in ("ERM_h0_02", "ERM_h1_02"):
        os.remove(tmp_path / run / "results.jsonl")
    result = list_top(run_main, tmp_path, test_env=2)
    assert result.returncode == 2
    assert result.stderr == (f"error: no run of ERM on Debug28 in {tmp_path} has test env 2; "
                             f"the test envs there are: 0, 1.\n")


def test_list_top_hparams_on_a_run_folder(tmp_path, run_main):
    write_sweep(tmp_path)
    result = list_top(run_main, tmp_path / "ERM_h0_0")
    assert result.returncode == 2
    assert result.stderr == (f"error: {tmp_path / 'ERM_h0_0'} is a single run (it has "
                             f"results.jsonl); pass its parent, the sweep folder {tmp_path}.\n")


def test_list_top_hparams_skips_bad_lines(tmp_path, run_main):
    write_sweep(tmp_path)
    with open(tmp_path / "ERM_h0_0" / "results.jsonl", "a") as f:
        f.write("null\n")
    result = list_top(run_main, tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("Total records: 12\n")
    assert result.stderr.splitlines() == [
        f"WARNING: {results_path(tmp_path, 'ERM_h0_0')}:3: skipping line that is not a JSON "
        f"object (it is null)",
        f"WARNING: the tables leave out 1 damaged line (listed above); {SUMMARY_FIX}",
    ]
