"""List one (dataset, algorithm, test env)'s hparams runs, best first, per selection method.

Helps to see which hparams won a sweep and where their output folders are.
When records carry worst-group accuracy, the worst-group validation method
is listed too.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from domainbed import model_selection
from domainbed.lib import reporting
from domainbed.lib.query import Q
from domainbed.plugins import load_plugins

SELECTION_METHODS = [
    model_selection.IIDAccuracySelectionMethod,
    model_selection.LeaveOneOutSelectionMethod,
    model_selection.OracleSelectionMethod,
]


def print_top_hparams(groups: Q, selection_method) -> None:
    """For each trial, each run's selected accuracies, hparams and output dirs."""
    print(f"Model selection: {selection_method.name}")
    for group in groups:
        print(f"trial_seed: {group['trial_seed']}")
        for run_acc, run_records in selection_method.hparams_accs(group["records"]):
            print(f"\t{run_acc}")
            hparams = run_records[0]["hparams"]
            if any(r["hparams"] != hparams for r in run_records):
                raise ValueError(
                    f"records of hparams_seed {run_records[0]['args']['hparams_seed']} "
                    f"disagree on hparams; the input folder mixes sweeps")
            print("\t\thparams:")
            for k, v in sorted(hparams.items()):
                print(f"\t\t\t{k}: {v}")
            print("\t\toutput_dirs:")
            for output_dir in run_records.select("args.output_dir").unique():
                print(f"\t\t\t{output_dir}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Domain generalization testbed")
    parser.add_argument("--input_dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--algorithm", required=True)
    parser.add_argument("--test_env", type=int, required=True)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.input_dir):
        parser.error(f"--input_dir {args.input_dir!r} is not an existing directory")
    load_plugins()

    records = reporting.load_records(args.input_dir)
    print("Total records:", len(records))
    groups = reporting.get_grouped_records(records).filter(
        lambda g: (g["dataset"] == args.dataset and g["algorithm"] == args.algorithm
                   and g["test_env"] == args.test_env))
    methods = list(SELECTION_METHODS)
    if reporting.has_wga(records):
        methods.append(model_selection.WorstGroupValidationSelectionMethod)
    for selection_method in methods:
        print_top_hparams(groups, selection_method)


if __name__ == "__main__":
    main()
