"""List one (dataset, algorithm, test env)'s hparams runs, best first, per selection method.

Helps to see which hparams won a sweep and where their output folders are.
When records carry worst-group accuracy, the worst-group validation method
is listed too.

A dataset or algorithm that the input folder's records do not hold, a test env
outside the dataset's range, or records of one hparams seed that disagree on
hparams (two sweeps in one folder) is an `error:` line naming the fix, and exit
status 2, before anything is listed. Bad results.jsonl lines are skipped as in
collect_results.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from domainbed import algorithms, datasets, model_selection
from domainbed.lib import misc, reporting
from domainbed.lib.query import Q
from domainbed.plugins import load_plugins

SELECTION_METHODS = [
    model_selection.IIDAccuracySelectionMethod,
    model_selection.LeaveOneOutSelectionMethod,
    model_selection.OracleSelectionMethod,
]


class MixedSweepError(misc.UserInputError, ValueError):
    """Records of one hparams seed disagree on hparams (a ValueError, as it used to be)."""


def _hparams(record: dict) -> dict:
    hparams = record.get("hparams")
    return hparams if isinstance(hparams, dict) else {}


def print_top_hparams(groups: Q, selection_method) -> None:
    """For each trial, each run's selected accuracies, hparams and output dirs."""
    print(f"Model selection: {selection_method.name}")
    for group in groups:
        print(f"trial_seed: {group['trial_seed']}")
        for run_acc, run_records in selection_method.hparams_accs(group["records"]):
            print(f"\t{run_acc}")
            print("\t\thparams:")
            for k, v in sorted(_hparams(run_records[0]).items()):
                print(f"\t\t\t{k}: {v}")
            print("\t\toutput_dirs:")
            output_dirs = run_records.select(lambda r: r["args"].get("output_dir"))
            for output_dir in output_dirs.filter_not_none().unique():
                print(f"\t\t\t{output_dir}")


def check_hparams_agree(groups: Q) -> None:
    """Raise MixedSweepError when one hparams seed's records hold different hparams."""
    for group in groups:
        for hparams_seed, run_records in group["records"].group("args.hparams_seed"):
            if any(_hparams(r) != _hparams(run_records[0]) for r in run_records):
                raise MixedSweepError(
                    f"records of hparams_seed {hparams_seed} (trial_seed "
                    f"{group['trial_seed']}) disagree on hparams; the input folder mixes "
                    f"sweeps. Pass one sweep's --output_dir.")


def _check_name(kind: str, name: str, present: list[str], also_known: list[str],
                where: str, scope: str = "") -> None:
    """Raise unless `name` is among the names `present` in the records.

    A name that is known (`also_known`: registered, or in other records) gets the names
    the records have; any other name gets the closest known one as well.
    """
    if name in present:
        return
    noun = kind.lower()
    if name in also_known:
        raise misc.UserInputError(
            f"{where} holds no records of {noun} {name}{scope}; the {noun}s it holds{scope} "
            f"are: {', '.join(present)}.")
    known = present + [n for n in dict.fromkeys(also_known) if n not in present]
    raise misc.UnknownNameError(misc.unknown_name_message(kind, name, known))


def _dataset_env_count(dataset: str, records: Q) -> int:
    """Environments of `dataset`: its registered class's, else the most any record has."""
    if dataset in datasets.DATASETS:
        return datasets.num_environments(dataset)
    return max(reporting.env_count(r) for r in records)


def check_selection(records: Q, args: argparse.Namespace) -> None:
    """Raise UserInputError unless the records hold the asked dataset, algorithm and test env."""
    where = args.input_dir
    _check_name("Dataset", args.dataset, list(records.select("args.dataset").unique()),
                list(datasets.DATASETS), where)
    of_dataset = records.filter_equals("args.dataset", args.dataset)
    _check_name("Algorithm", args.algorithm, list(of_dataset.select("args.algorithm").unique()),
                list(records.select("args.algorithm").unique()) + list(algorithms.ALGORITHMS),
                where, scope=f" on {args.dataset}")
    n_envs = _dataset_env_count(args.dataset, of_dataset)
    if not 0 <= args.test_env < n_envs:
        raise misc.UserInputError(
            f"--test_env {args.test_env} is out of range: {args.dataset} has {n_envs} "
            f"environments, so --test_env must be 0 to {n_envs - 1}.")
    runs = of_dataset.filter_equals("args.algorithm", args.algorithm)
    test_envs = sorted({t for r in runs for t in r["args"]["test_envs"]})
    if args.test_env not in test_envs:
        raise misc.UserInputError(
            f"no run of {args.algorithm} on {args.dataset} in {where} has test env "
            f"{args.test_env}; the test envs there are: {', '.join(map(str, test_envs))}.")


def list_top_hparams(args: argparse.Namespace) -> None:
    """Check the input, then print every selection method's listing."""
    reporting.check_sweep_dir(args.input_dir)
    log = reporting.SkipLog()
    records = reporting.load_records(args.input_dir, log)
    if not len(records):
        raise misc.UserInputError(
            f"no usable record in {args.input_dir} (a sweep whose runs have not reached "
            f"their first checkpoint, or whose results.jsonl lines were all skipped).")
    check_selection(records, args)
    groups = reporting.get_grouped_records(records).filter(
        lambda g: (g["dataset"] == args.dataset and g["algorithm"] == args.algorithm
                   and g["test_env"] == args.test_env))
    check_hparams_agree(groups)
    print("Total records:", len(records))
    methods = list(SELECTION_METHODS)
    if reporting.has_wga(records):
        methods.append(model_selection.WorstGroupValidationSelectionMethod)
    for selection_method in methods:
        print_top_hparams(groups, selection_method)
    if log:
        print(log.summary(), file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Domain generalization testbed")
    parser.add_argument("--input_dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--algorithm", required=True)
    parser.add_argument("--test_env", type=int, required=True)
    args = parser.parse_args(argv)
    load_plugins()
    return misc.exit_status(lambda: list_top_hparams(args))


if __name__ == "__main__":
    sys.exit(main())
