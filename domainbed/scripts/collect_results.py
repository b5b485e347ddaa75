"""Print a sweep's results tables (upstream's layout, byte for byte, for accuracy).

Text output is written to input_dir/results.txt too (results.tex with --latex,
results.md with --markdown), once the whole report is built and through a
rename, so the file is never left partial. When records carry worst-group
accuracy (`env{i}_in_wga`), upstream's blocks are followed by the worst-group
validation method's accuracy tables and then, for every method, the same
tables with worst-group accuracy as the test number.

Bad lines in results.jsonl files are skipped with one warning each on stderr
(see domainbed.lib.reporting for which skip a line and which a whole run) and
a summary line at the end; the exit status stays 0, as the other runs' tables
are complete. A path that is not a sweep folder, or a sweep none of whose
records is usable, is an `error:` line and exit status 2, and writes nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np

from domainbed import algorithms, datasets, model_selection
from domainbed.lib import misc, reporting
from domainbed.lib.query import Q
from domainbed.plugins import load_plugins

UPSTREAM_METHODS = [
    model_selection.IIDAccuracySelectionMethod,
    model_selection.LeaveOneOutSelectionMethod,
    model_selection.OracleSelectionMethod,
]
WGA_METHODS = UPSTREAM_METHODS + [model_selection.WorstGroupValidationSelectionMethod]


def format_mean(data: Sequence[float], latex: bool) -> tuple[Optional[float], Optional[float], str]:
    """Mean and standard error (population std / sqrt n) in percent, plus the cell text."""
    if len(data) == 0:
        return None, None, "X"
    values = list(data)
    mean = 100 * np.mean(values)
    err = 100 * np.std(np.array(values) / np.sqrt(len(values)))
    if latex:
        return mean, err, "{:.1f} $\\pm$ {:.1f}".format(mean, err)
    return mean, err, "{:.1f} +/- {:.1f}".format(mean, err)


def _markdown_cell(x: Any) -> str:
    return str(x).replace("|", "\\|")


def print_table(table: list[list[Any]], header_text: str, row_labels: Sequence[str],
                col_labels: Sequence[str], colwidth: int = 10, latex: bool = True,
                markdown: bool = False) -> None:
    """Print one table; mutates `table` (inserts labels) as upstream does."""
    print("")
    if markdown:
        print(f"### {header_text}")
        print("")
        print("| " + " | ".join(_markdown_cell(c) for c in col_labels) + " |")
        print("|" + "---|" * len(col_labels))
        for label, row in zip(row_labels, table):
            print("| " + " | ".join(_markdown_cell(c) for c in [label, *row]) + " |")
        return
    if latex:
        print("\\begin{center}")
        print("\\adjustbox{max width=\\textwidth}{%")
        print("\\begin{tabular}{l" + "c" * len(table[0]) + "}")
        print("\\toprule")
    else:
        print("--------", header_text)
    for row, label in zip(table, row_labels):
        row.insert(0, label)
    if latex:
        col_labels = ["\\textbf{" + str(c).replace("%", "\\%") + "}" for c in col_labels]
    table.insert(0, list(col_labels))
    for r, row in enumerate(table):
        misc.print_row(row, colwidth=colwidth, latex=latex)
        if latex and r == 0:
            print("\\midrule")
    if latex:
        print("\\bottomrule")
        print("\\end{tabular}}")
        print("\\end{center}")


def _avg_cell(means: list[Optional[float]]) -> str:
    """Mean of the per-column means, "X" if any is missing (or there are none)."""
    if not means or None in means:
        return "X"
    return "{:.1f}".format(sum(means) / len(means))


def _algorithm_order(records: Q) -> list[str]:
    """Registered algorithms in ALGORITHMS order, then unknown ones as first seen."""
    names = records.select("args.algorithm").unique()
    return ([n for n in algorithms.ALGORITHMS if n in names] +
            [n for n in names if n not in algorithms.ALGORITHMS])


def _dataset_order(records: Q) -> list[str]:
    """Registered datasets in DATASETS order; unregistered ones are dropped (upstream)."""
    names = records.select("args.dataset").unique()
    return [d for d in datasets.DATASETS if d in names]


def print_results_tables(records: Q, selection_method, latex: bool, metric: str = "acc",
                         markdown: bool = False) -> None:
    """Per-dataset tables and the averages table for one selection method and metric."""
    suffix = "" if metric == "acc" else f", metric: {model_selection.METRIC_NAMES[metric]}"
    grouped = (reporting.get_grouped_records(records)
               .map(lambda g: {**g, "sweep_acc": selection_method.sweep_acc(g["records"], metric)})
               .filter(lambda g: g["sweep_acc"] is not None))
    alg_names = _algorithm_order(records)
    dataset_names = _dataset_order(records)

    for dataset in dataset_names:
        if latex:
            print()
            print("\\subsubsection{{{}}}".format(dataset))
        env_names = datasets.get_dataset_class(dataset).ENVIRONMENTS
        table = []
        for algorithm in alg_names:
            row, means = [], []
            for test_env in range(len(env_names)):
                trial_accs = (grouped
                              .filter_equals("dataset, algorithm, test_env",
                                             (dataset, algorithm, test_env))
                              .select("sweep_acc"))
                mean, _, text = format_mean(trial_accs, latex)
                row.append(text)
                means.append(mean)
            table.append(row + [_avg_cell(means)])
        header_text = (f"Dataset: {dataset}, model selection method: "
                       f"{selection_method.name}{suffix}")
        print_table(table, header_text, alg_names, ["Algorithm", *env_names, "Avg"],
                    colwidth=20, latex=latex, markdown=markdown)

    if latex:
        print()
        print("\\subsubsection{Averages}")
    table = []
    for algorithm in alg_names:
        row, means = [], []
        for dataset in dataset_names:
            trial_averages = (grouped
                              .filter_equals("algorithm, dataset", (algorithm, dataset))
                              .group("trial_seed")
                              .map(lambda trial_seed, group: group.select("sweep_acc").mean()))
            mean, _, text = format_mean(trial_averages, latex)
            row.append(text)
            means.append(mean)
        table.append(row + [_avg_cell(means)])
    header_text = f"Averages, model selection method: {selection_method.name}{suffix}"
    print_table(table, header_text, alg_names, ["Algorithm", *dataset_names, "Avg"],
                colwidth=25, latex=latex, markdown=markdown)


def print_method_block(records: Q, method, metric: str, latex: bool, markdown: bool) -> None:
    """One method's tables, under a section heading in LaTeX and markdown."""
    title = f"Model selection: {method.name}"
    if metric != "acc":
        title += f", metric: {model_selection.METRIC_NAMES[metric]}"
    if latex:
        print()
        print("\\subsection{{{}}}".format(title))
    elif markdown:
        print()
        print(f"## {title}")
    print_results_tables(records, method, latex, metric=metric, markdown=markdown)


def print_report(records: Q, latex: bool = False, markdown: bool = False) -> None:
    """The whole report for already loaded records."""
    if latex:
        print("\\documentclass{article}")
        print("\\usepackage{booktabs}")
        print("\\usepackage{adjustbox}")
        print("\\begin{document}")
        print("\\section{Full DomainBed results}")
        print("% Total records:", len(records))
    elif markdown:
        print("# Full DomainBed results")
        print()
        print("Total records:", len(records))
    else:
        print("Total records:", len(records))

    if len(records):
        blocks = [(method, "acc") for method in UPSTREAM_METHODS]
        if reporting.has_wga(records):
            blocks.append((model_selection.WorstGroupValidationSelectionMethod, "acc"))
            blocks += [(method, "wga") for method in WGA_METHODS]
        if any(record.get("validation_envs") for record in records):  # subpopulation data
            blocks += [(model_selection.ValidationWorstGroupSelectionMethod, metric)
                       for metric in ("acc", "wga")]
        for method, metric in blocks:
            print_method_block(records, method, metric, latex, markdown)

    if latex:
        print("\\end{document}")


def render_report(records: Q, latex: bool = False, markdown: bool = False) -> str:
    """The whole report as text, built before anything is printed or written."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_report(records, latex=latex, markdown=markdown)
    return buffer.getvalue()


def print_text(text: str) -> None:
    """Print the report; a reader that stopped early (`| head`) must not cost the file."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # so the exit-time flush fails no more
        os.dup2(devnull, sys.stdout.fileno())


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: old or complete, never
    partial. A failure is a UserInputError naming the folder to fix."""
    tmp_path = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp_path, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)
        raise misc.UserInputError(
            f"could not write {path} ({exc.strerror or exc}); the tables above are complete. "
            f"Make room or make {os.path.dirname(path) or '.'} writable, then collect "
            f"again.") from exc


def results_file_name(args: argparse.Namespace) -> str:
    """Upstream's file name for the chosen output style."""
    if args.latex:
        return "results.tex"
    if args.markdown:
        return "results.md"
    return "results.txt"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Domain generalization testbed")
    parser.add_argument("--input_dir", required=True)
    style = parser.add_mutually_exclusive_group()
    style.add_argument("--latex", action="store_true")
    style.add_argument("--markdown", action="store_true",
                       help="GitHub markdown tables, written to results.md")
    return parser.parse_args(argv)


def collect(args: argparse.Namespace) -> None:
    """Load, report, write; raises UserInputError for input that has no report to give."""
    reporting.check_sweep_dir(args.input_dir)
    log = reporting.SkipLog()
    records = reporting.load_records(args.input_dir, log)
    if not len(records) and log:
        raise misc.UserInputError(
            f"no usable record in {args.input_dir}: every results.jsonl line was skipped "
            f"(listed above). Repair or delete those files, or rerun those runs.")
    text = render_report(records, latex=args.latex, markdown=args.markdown)
    print_text(text)
    write_atomically(os.path.join(args.input_dir, results_file_name(args)), text)
    if log:
        print(log.summary(), file=sys.stderr)
    elif not len(records):
        print(f"note: no run in {args.input_dir} has written a record yet; each run writes "
              f"results.jsonl at its first checkpoint (one that failed before then says why "
              f"in its err.txt).", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    load_plugins()
    return misc.exit_status(lambda: collect(args))


if __name__ == "__main__":
    sys.exit(main())
