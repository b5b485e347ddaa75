"""collect_results: upstream's text layout byte for byte, plus the WGA, markdown and LaTeX outputs.

The end-to-end sweep is generated so that each selection method picks a
different (hparams_seed, step) and the expected tables can be read off by hand:
the test-env accuracy of a single-test-env run is
    base[algorithm] + CHOICE[(hparams_seed, step)] + 0.1 * test_env + 0.02 * trial_seed
so every cell is a mean over two trials, "mean +/- 0.7" (err = 100 * 0.01 / sqrt 2).
"""
import json
import os

import pytest

from domainbed.lib import reporting
from domainbed.scripts import collect_results
from domainbed.scripts.collect_results import format_mean, print_table

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IID = "training-domain validation set"
LOO = "leave-one-domain-out cross-validation"
ORACLE = "test-domain validation set (oracle)"
WGV = "training-domain worst-group validation set"

BASE = {"ERM": 0.3, "GroupDRO": 0.4}
# (hparams_seed, step index) -> what decides each method's choice
OUT_ACC = {(0, 0): 0.6, (0, 1): 0.7, (1, 0): 0.8, (1, 1): 0.5}  # IID -> (1,0); oracle -> (0,1)
PAIR_IN_ACC = {(0, 0): 0.9, (0, 1): 0.4, (1, 0): 0.3, (1, 1): 0.2}  # LOO -> (0,0)
OUT_WGA = {(0, 0): 0.3, (0, 1): 0.3, (1, 0): 0.3, (1, 1): 0.6}  # worst-group validation -> (1,1)
CHOICE = {(1, 0): 0.0, (0, 0): 0.05, (0, 1): 0.10, (1, 1): 0.15}
TEST_ENV_SETS = [[0], [1], [2], [0, 1], [0, 2], [1, 2]]


def make_record(algorithm, dataset, test_envs, trial_seed, hparams_seed, step, env_values):
    args = {"algorithm": algorithm, "checkpoint_freq": None, "data_dir": "/data",
            "dataset": dataset, "holdout_fraction": 0.2, "hparams": None,
            "hparams_seed": hparams_seed, "output_dir": f"out/{algorithm}_{trial_seed}",
            "save_model_every_checkpoint": False, "seed": 0, "skip_model_save": False,
            "steps": None, "task": "domain_generalization", "test_envs": test_envs,
            "trial_seed": trial_seed, "uda_holdout_fraction": 0}
    return {"args": args, "epoch": step / 10, "hparams": {"lr": 10.0 ** -hparams_seed},
            "loss": 0.5, "mem_gb": 1.0, "step": step, "step_time": 0.1, **env_values}


def env_values(test_envs, h, s, test_acc, with_wga):
    values = {}
    for i in range(3):
        if len(test_envs) == 1:
            values[f"env{i}_in_acc"] = test_acc if i == test_envs[0] else 0.5
        else:
            values[f"env{i}_in_acc"] = PAIR_IN_ACC[(h, s)]
        values[f"env{i}_out_acc"] = OUT_ACC[(h, s)]
        if with_wga:
            values[f"env{i}_in_wga"] = values[f"env{i}_in_acc"] - 0.2
            values[f"env{i}_out_wga"] = OUT_WGA[(h, s)]
    return values


def write_run(root, name, records, tail=""):
    os.makedirs(root / name)
    with open(root / name / "results.jsonl", "w") as f:
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records) + tail)


def make_sweep(root, with_wga=False):
    """100 records: Debug28 x {ERM, GroupDRO} x 2 trials x 6 test-env sets x 2 hparams x 2
    checkpoints, one unregistered algorithm's run and one unregistered dataset's run."""
    for algorithm, base in BASE.items():
        for trial in (0, 1):
            for test_envs in TEST_ENV_SETS:
                for h in (0, 1):
                    records = []
                    for s in (0, 1):
                        test_acc = base + CHOICE[(h, s)] + 0.1 * test_envs[0] + 0.02 * trial
                        values = env_values(test_envs, h, s, test_acc, with_wga)
                        records.append(make_record(algorithm, "Debug28", test_envs, trial, h,
                                                   100 * s, values))
                    name = f"{algorithm}_{trial}_{h}_{''.join(map(str, test_envs))}"
                    write_run(root, name, records)
    # No WGA keys, single test env 0 only, one trial; its killed run left half a line.
    myalg = [make_record("MyAlg", "Debug28", [0], 0, 0, 100 * s,
                         {**{f"env{i}_in_acc": 0.25 for i in range(3)},
                          **{f"env{i}_out_acc": 0.6 + 0.1 * s for i in range(3)}})
             for s in (0, 1)]
    write_run(root, "myalg", myalg, tail='{"args": {"algori')
    other = [make_record("ERM", "NotADataset", [0], 0, 0, s, {"env0_in_acc": 0.9,
                                                              "env0_out_acc": 0.9})
             for s in (0, 1)]
    write_run(root, "unregistered_dataset", other[:1])
    with open(root / "unregistered_dataset" / "results.jsonl", "a") as f:
        f.write("this is not json\n" + json.dumps(other[1]) + "\n")
    (root / "results.txt").write_text("a stray file is not a run\n")
    os.makedirs(root / "run_without_results")


# --- expected output, written from the format spec -----------------------------------

def row(width, *cells):
    """Upstream row: each cell left-justified to width, two-space separator, one trailing space."""
    return "  ".join(cell.ljust(width) for cell in cells) + " \n"


def pm(mean):
    return f"{mean} +/- 0.7"


def method_block(method, per_env, averages, suffix=""):
    text = f"\n-------- Dataset: Debug28, model selection method: {method}{suffix}\n"
    text += row(20, "Algorithm", "0", "1", "2", "Avg")
    for algorithm, cells in per_env.items():
        text += row(20, algorithm, *cells)
    text += f"\n-------- Averages, model selection method: {method}{suffix}\n"
    text += row(25, "Algorithm", "Debug28", "Avg")
    for algorithm, cells in averages.items():
        text += row(25, algorithm, *cells)
    return text


EXPECTED_TEXT = (
    "Total records: 100\n"
    + method_block(
        IID,
        {"ERM": [pm("31.0"), pm("41.0"), pm("51.0"), "41.0"],
         "GroupDRO": [pm("41.0"), pm("51.0"), pm("61.0"), "51.0"],
         "MyAlg": ["25.0 +/- 0.0", "X", "X", "X"]},
        {"ERM": [pm("41.0"), "41.0"], "GroupDRO": [pm("51.0"), "51.0"],
         "MyAlg": ["25.0 +/- 0.0", "25.0"]})
    + method_block(
        LOO,
        {"ERM": [pm("36.0"), pm("46.0"), pm("56.0"), "46.0"],
         "GroupDRO": [pm("46.0"), pm("56.0"), pm("66.0"), "56.0"],
         "MyAlg": ["X", "X", "X", "X"]},
        {"ERM": [pm("46.0"), "46.0"], "GroupDRO": [pm("56.0"), "56.0"], "MyAlg": ["X", "X"]})
    + method_block(
        ORACLE,
        {"ERM": [pm("41.0"), pm("51.0"), pm("61.0"), "51.0"],
         "GroupDRO": [pm("51.0"), pm("61.0"), pm("71.0"), "61.0"],
         "MyAlg": ["25.0 +/- 0.0", "X", "X", "X"]},
        {"ERM": [pm("51.0"), "51.0"], "GroupDRO": [pm("61.0"), "61.0"],
         "MyAlg": ["25.0 +/- 0.0", "25.0"]})
)


def shifted_block(method, erm_env0, suffix=""):
    """A block where every ERM cell is `erm_env0` + 10 per test env, GroupDRO 10 higher,
    and MyAlg (no WGA keys, not selectable) all X."""
    def cells(start):
        return [pm(f"{start:.1f}"), pm(f"{start + 10:.1f}"), pm(f"{start + 20:.1f}"),
                f"{start + 10:.1f}"]
    return method_block(
        method,
        {"ERM": cells(erm_env0), "GroupDRO": cells(erm_env0 + 10), "MyAlg": ["X"] * 4},
        {"ERM": [pm(f"{erm_env0 + 10:.1f}"), f"{erm_env0 + 10:.1f}"],
         "GroupDRO": [pm(f"{erm_env0 + 20:.1f}"), f"{erm_env0 + 20:.1f}"],
         "MyAlg": ["X", "X"]},
        suffix)


WGA = ", metric: worst-group accuracy"
EXPECTED_WGA_PART = (
    shifted_block(WGV, 46.0)
    + shifted_block(IID, 11.0, WGA)
    + shifted_block(LOO, 16.0, WGA)
    + shifted_block(ORACLE, 21.0, WGA)
    + shifted_block(WGV, 26.0, WGA)
)


def test_row_helper_matches_spec_literally():
    assert row(20, "Algorithm", "C") == "Algorithm" + " " * 11 + "  " + "C" + " " * 19 + " \n"


# --- unit tests ----------------------------------------------------------------------

def test_format_mean():
    mean, err, text = format_mean([0.1, 0.2, 0.3], latex=False)
    assert mean == pytest.approx(20.0) and err == pytest.approx(4.714045, abs=1e-6)
    assert text == "20.0 +/- 4.7"
    assert format_mean([0.1, 0.2, 0.3], latex=True)[2] == "20.0 $\\pm$ 4.7"
    assert format_mean([], latex=False) == (None, None, "X")


def test_print_table_text(capsys):
    table = [["1", "2"], ["3", "4"]]
    print_table(table, "Header text", ["R1", "VeryLongRowLabel"], ["", "C1", "C2"],
                colwidth=10, latex=False)
    assert capsys.readouterr().out == (
        "\n"
        "-------- Header text\n"
        + " " * 10 + "  " + "C1" + " " * 8 + "  " + "C2" + " " * 8 + " \n"
        + "R1" + " " * 8 + "  " + "1" + " " * 9 + "  " + "2" + " " * 9 + " \n"
        + "VeryLongRo" + "  " + "3" + " " * 9 + "  " + "4" + " " * 9 + " \n"
    )


def test_print_table_latex(capsys):
    table = [["1", "2"], ["3", "4"]]
    print_table(table, "Header text", ["R1", "R2"], ["", "C1", "C2"], colwidth=10, latex=True)
    assert capsys.readouterr().out == (
        "\n"
        "\\begin{center}\n"
        "\\adjustbox{max width=\\textwidth}{%\n"
        "\\begin{tabular}{lcc}\n"
        "\\toprule\n"
        "\\textbf{}  & \\textbf{C1 & \\textbf{C2 \\\\\n"
        "\\midrule\n"
        "R1         & 1          & 2          \\\\\n"
        "R2         & 3          & 4          \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}}\n"
        "\\end{center}\n"
    )


def test_print_table_latex_escapes_percent(capsys):
    print_table([["1"]], "h", ["R"], ["A", "100%"], colwidth=20, latex=True)
    assert "\\textbf{100\\%}" in capsys.readouterr().out


def test_print_table_markdown(capsys):
    print_table([["1", "a|b"]], "Header", ["R1"], ["Algorithm", "C1", "C2"],
                colwidth=10, latex=False, markdown=True)
    assert capsys.readouterr().out == (
        "\n### Header\n\n| Algorithm | C1 | C2 |\n|---|---|---|\n| R1 | 1 | a\\|b |\n")


def test_load_records_skips_bad_lines_and_non_runs(tmp_path, capsys):
    make_sweep(tmp_path)
    records = reporting.load_records(str(tmp_path))
    err = capsys.readouterr().err
    assert len(records) == 100
    assert f"{tmp_path / 'myalg' / 'results.jsonl'}:3: skipping truncated" in err
    assert f"{tmp_path / 'unregistered_dataset' / 'results.jsonl'}:2: skipping malformed" in err


def test_grouped_records_put_pair_runs_in_two_groups(tmp_path):
    make_sweep(tmp_path)
    groups = reporting.get_grouped_records(reporting.load_records(str(tmp_path)))
    group = groups.filter_equals("trial_seed, dataset, algorithm, test_env",
                                 (0, "Debug28", "ERM", 1))[0]
    envs = sorted(tuple(r["args"]["test_envs"]) for r in group["records"])
    assert envs == [(0, 1)] * 4 + [(1,)] * 4 + [(1, 2)] * 4
    assert set(group) == {"trial_seed", "dataset", "algorithm", "test_env", "records"}


# --- end to end ----------------------------------------------------------------------

def test_end_to_end_text_matches_upstream_layout(tmp_path, run_module):
    make_sweep(tmp_path)
    result = run_module("domainbed.scripts.collect_results", "--input_dir", tmp_path,
                        cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == EXPECTED_TEXT
    assert (tmp_path / "results.txt").read_text() == EXPECTED_TEXT
    assert "Traceback" not in result.stderr


def test_wga_tables_follow_the_unchanged_upstream_part(tmp_path, capsys):
    make_sweep(tmp_path, with_wga=True)
    collect_results.main(["--input_dir", str(tmp_path)])
    assert capsys.readouterr().out == EXPECTED_TEXT + EXPECTED_WGA_PART


def test_markdown(tmp_path, capsys):
    make_sweep(tmp_path, with_wga=True)
    collect_results.main(["--input_dir", str(tmp_path), "--markdown"])
    out = capsys.readouterr().out
    assert out.startswith(
        "# Full DomainBed results\n\nTotal records: 100\n\n"
        f"## Model selection: {IID}\n\n"
        f"### Dataset: Debug28, model selection method: {IID}\n\n"
        "| Algorithm | 0 | 1 | 2 | Avg |\n"
        "|---|---|---|---|---|\n"
        "| ERM | 31.0 +/- 0.7 | 41.0 +/- 0.7 | 51.0 +/- 0.7 | 41.0 |\n"
        "| GroupDRO | 41.0 +/- 0.7 | 51.0 +/- 0.7 | 61.0 +/- 0.7 | 51.0 |\n"
        "| MyAlg | 25.0 +/- 0.0 | X | X | X |\n\n"
        f"### Averages, model selection method: {IID}\n\n"
        "| Algorithm | Debug28 | Avg |\n"
        "|---|---|---|\n"
        "| ERM | 41.0 +/- 0.7 | 41.0 |\n")
    assert f"\n## Model selection: {WGV}, metric: worst-group accuracy\n" in out
    assert f"\n### Averages, model selection method: {WGV}{WGA}\n" in out
    assert (tmp_path / "results.md").read_text() == out


def test_latex(tmp_path, capsys):
    make_sweep(tmp_path)
    collect_results.main(["--input_dir", str(tmp_path), "--latex"])
    out = capsys.readouterr().out
    assert out.startswith(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{adjustbox}\n"
        "\\begin{document}\n\\section{Full DomainBed results}\n% Total records: 100\n"
        f"\n\\subsection{{Model selection: {IID}}}\n"
        "\n\\subsubsection{Debug28}\n"
        "\n\\begin{center}\n\\adjustbox{max width=\\textwidth}{%\n"
        "\\begin{tabular}{lcccc}\n\\toprule\n"
        + " & ".join(c.ljust(20) for c in ["\\textbf{Algorithm}", "\\textbf{0}", "\\textbf{1}",
                                           "\\textbf{2}", "\\textbf{Avg}"]) + " \\\\\n"
        "\\midrule\n"
        + " & ".join(c.ljust(20) for c in ["ERM", "31.0 $\\pm$ 0.7", "41.0 $\\pm$ 0.7",
                                           "51.0 $\\pm$ 0.7", "41.0"]) + " \\\\\n")
    assert "\n\\subsubsection{Averages}\n" in out
    assert out.count("\\subsection{") == 3 and "worst-group" not in out
    assert out.endswith("\\end{center}\n\\end{document}\n")
    assert (tmp_path / "results.tex").read_text() == out
    assert not (tmp_path / "results.txt").read_text().startswith("Total")  # untouched stray


def test_zero_records(tmp_path, capsys):
    os.makedirs(tmp_path / "empty_run")
    (tmp_path / "empty_run" / "out.txt").write_text("")  # started, no checkpoint yet
    collect_results.main(["--input_dir", str(tmp_path)])
    assert capsys.readouterr().out == "Total records: 0\n"
    collect_results.main(["--input_dir", str(tmp_path), "--latex"])
    assert capsys.readouterr().out.endswith("% Total records: 0\n\\end{document}\n")


def test_bad_input_dir_is_a_clean_usage_error(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for bad, problem in ((tmp_path / "missing", "does not exist"),
                         (tmp_path / "file", "is a file, not a folder")):
        assert collect_results.main(["--input_dir", str(bad)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.strip().splitlines()[-1] == (
            f"error: --input_dir {bad} {problem}. Pass the sweep's --output_dir.")
    assert not (tmp_path / "missing").exists()
