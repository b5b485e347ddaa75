"""The Lite study's diagnostics: what the standard tables do not show (not a test).

The study is a sweep definition (`sweeps/lite.toml`: six challenges, the baselines and every
EX2L formulation), run and tabulated by the standard scripts:

    python -m ex2l_domainbed.reproduce launch lite --data_dir data/spawrious_lite \\
        --output_dir runs/lite --command_launcher parallel
    python -m ex2l_domainbed.reproduce collect lite --data_dir data/spawrious_lite \\
        --output_dir runs/lite

This reads the same folder. For each (dataset, algorithm) it takes the checkpoints that
collect_results' training-domain validation chooses (per trial the hparams seed, and in its
run the checkpoint, with the best mean validation accuracy of the training environments) and
reports there, over trials: test AA and WGA, and the training-batch diagnostics that show how
the penalty is met (confounder or adversary accuracy, map mass, all-zero maps); with
`--analyse` also what the maps do on test images (`benchmarks.lite_maps`, which reads the
`model_step<N>.pkl` files that the definition's `save_model_every_checkpoint` keeps):

    python -m benchmarks.lite_accuracy --sweep_dir runs/lite --data_dir data/spawrious_lite

Variants of one algorithm studied on the way (probes, the path ablation), which a definition
cannot hold as rows of their own, are in `benchmarks.lite_probes`.
"""
from __future__ import annotations

import argparse
import sys

import torch

from benchmarks import common
from domainbed import model_selection
from domainbed.lib import reporting
from domainbed.lib.misc import UserInputError
from domainbed.lib.query import Q

SELECTION = model_selection.IIDAccuracySelectionMethod
DIAGNOSTICS = ["confounder_acc", "adversary_acc", "overlap", "label_map_mass",
               "confounder_map_mass", "label_map_zero_frac", "confounder_map_zero_frac"]


def chosen_checkpoints(records: Q, selection=SELECTION) -> list[dict]:
    """Per trial, the record of the checkpoint that `selection` chooses (collect_results'
    rule: per trial the best hparams seed, in its run the best checkpoint)."""
    chosen = []
    for _, trial_records in records.group("args.trial_seed"):
        ranked = selection.hparams_accs(trial_records)
        if not len(ranked):
            continue
        _, run_records = ranked[0]
        scored = model_selection.get_test_records(run_records).filter(
            lambda r: selection.checkpoint_acc(r) is not None)
        chosen.append(scored.argmax(lambda r: selection.checkpoint_acc(r)["val_acc"]))
    return chosen


def trial_row(record: dict, selection=SELECTION) -> dict:
    """The chosen checkpoint's validation score under `selection`, test AA and WGA."""
    row = {"val": selection.checkpoint_acc(record)["val_acc"],
           "aa": selection.checkpoint_acc(record, "acc")["test_acc"],
           "wga": selection.checkpoint_acc(record, "wga")["test_acc"],
           "step": record["step"], "dir": record["args"]["output_dir"],
           "hparams_seed": record["args"]["hparams_seed"]}
    row.update({k: record[k] for k in DIAGNOSTICS if k in record})
    return row


def summarise(trials: list[dict]) -> dict:
    summary = {"n": len(trials), "hparams_seeds": [t["hparams_seed"] for t in trials]}
    for key in ["val", "aa", "wga", *DIAGNOSTICS]:
        values = [t[key] for t in trials if t.get(key) is not None]
        if len(values) == len(trials):
            summary[key] = common.mean_sd(values)
    summary["trials"] = trials
    return summary


def build_table(sweep_dir: str, selection=SELECTION) -> dict[tuple[str, str], dict]:
    records = reporting.load_records(sweep_dir)
    table = {}
    for (dataset, algorithm), group in records.group("args.dataset, args.algorithm"):
        trials = [trial_row(r, selection) for r in chosen_checkpoints(group, selection)]
        if trials:
            table[dataset, algorithm] = summarise(trials)
    return table


def label_width(table: dict) -> int:
    """Width of the algorithm column: the longest algorithm (or variant) label."""
    return max([14, *(len(algorithm) for _, algorithm in table)])


def print_table(table: dict, count: tuple[str, str] = ("n", "n"),
                title: str = "Chosen checkpoints (training-domain validation)") -> None:
    """One row per (dataset, algorithm): `count` is (header, row key) of the small column."""
    width = label_width(table)
    header = (f"{'dataset':<24} {'algorithm':<{width}} {count[0]:>2}  {'val':>13}  "
              f"{'test AA':>13}  {'test WGA':>13}  {'conf/adv acc':>13}  {'label mass':>13}")
    print(f"\n{title}, mean ± sd over trials")
    print(header + "\n" + "-" * len(header))
    for (dataset, algorithm), row in table.items():
        cells = [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in ("val", "aa", "wga")]
        for key in (("confounder_acc", "adversary_acc"), ("label_map_mass",)):
            value = next((row[k] for k in key if k in row), None)
            cells.append(f"{value[0]:.3f} ± {value[1]:.3f}" if value else f"{'-':>13}")
        print(f"{dataset:<24} {algorithm:<{width}} {row[count[1]]:>2}  " + "  ".join(cells))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep_dir", required=True,
                        help="the --output_dir of `reproduce launch lite` (or any Lite sweep)")
    parser.add_argument("--data_dir", default="data/spawrious_lite",
                        help="the Lite data (for --analyse)")
    parser.add_argument("--analyse", action="store_true",
                        help="also measure the maps of the chosen checkpoints on test images")
    parser.add_argument("--out", default=None,
                        help="JSON output (default: results/<device>/lite_accuracy.json)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reporting.check_sweep_dir(args.sweep_dir)
    except UserInputError as exc:
        print(f"error: {exc}".replace("--input_dir", "--sweep_dir"), file=sys.stderr)
        return 2
    table = build_table(args.sweep_dir)
    if args.analyse:
        from benchmarks import lite_maps
        for row in table.values():
            row["maps"] = lite_maps.analyse_trials(row["trials"], args.data_dir)
    print_table(table)
    if args.analyse:
        lite_maps.print_table(table, label_width(table))
    result = {"benchmark": "lite_accuracy", "selection": SELECTION.name,
              "sweep_dir": args.sweep_dir,
              "table": {f"{d}/{a}": row for (d, a), row in table.items()}}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    common.write_json(args.out or common.default_out("lite_accuracy", device), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
