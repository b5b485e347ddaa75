"""Choose EX2L's default formulation from a search sweep, by training-domain validation only.

The search is a sweep definition (`sweeps/lite_default.toml`: the candidates and ERM on the six
Spawrious-Lite challenges, two hparams seeds, 3 trials); this reads its folder:

    python -m benchmarks.choose_default --sweep_dir runs/lite

Why worst-group validation: the training environments' holdout carries the training
correlation, so its *accuracy* rewards reading the location as much as reading the object
(ERM has the best holdout accuracy on every Lite challenge). The same holdout's worst-group
accuracy (the attribute the method needs anyway) does tell them apart, and it is still
training-domain data. So per trial the hparams seed and checkpoint are chosen as
`WorstGroupValidationSelectionMethod` chooses them, and that choice's holdout worst-group
accuracy is the trial's score. The default is the candidate with the best mean score over the
challenges. Each candidate's margin over the reference (ERM) on every challenge is printed
too: on Lite, ERM's holdout worst-group accuracy is the highest (its shortcut works on data
that carries the training correlation), so the margins say how much of the training
distribution a candidate gives up, not whether it helps at test. Test AA and WGA are printed
beside, as reports; the choice never reads them.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from benchmarks import common, lite_accuracy
from domainbed import model_selection
from domainbed.lib import reporting
from domainbed.lib.misc import UserInputError

SELECTION = model_selection.WorstGroupValidationSelectionMethod


def choose(table: dict, reference: str, candidates: list[str]) -> dict:
    """Rank `candidates` by their mean validation score over the datasets that every one of
    them and `reference` ran (the module docstring says why this score)."""
    algorithms = [reference, *candidates]
    datasets = sorted({d for d, _ in table
                       if all((d, a) in table for a in algorithms)})
    if not datasets:
        raise UserInputError(f"no dataset holds runs of {reference} and of every candidate "
                             f"({', '.join(candidates)}); run the search first")
    ranking = []
    for algorithm in candidates:
        margins = {d: table[d, algorithm]["val"][0] - table[d, reference]["val"][0]
                   for d in datasets}
        ranking.append({
            "algorithm": algorithm,
            "mean_score": float(np.mean([table[d, algorithm]["val"][0] for d in datasets])),
            "margins": margins, "worst_dataset": min(datasets, key=margins.get)})
    ranking.sort(key=lambda r: r["mean_score"], reverse=True)
    return {"datasets": datasets, "ranking": ranking, "default": ranking[0]["algorithm"],
            "reference_mean_score": float(np.mean([table[d, reference]["val"][0]
                                                   for d in datasets]))}


def print_choice(table: dict, reference: str, choice: dict) -> None:
    algorithms = [reference, *(r["algorithm"] for r in choice["ranking"])]
    width = max(len(a) for a in algorithms)
    print(f"\nScore: training-domain holdout worst-group accuracy ({SELECTION.name}), "
          "mean ± sd over trials; test AA / WGA beside it, reported only")
    for dataset in choice["datasets"]:
        print(f"\n{dataset}")
        for algorithm in algorithms:
            row = table[dataset, algorithm]
            print(f"  {algorithm:<{width}}  score {row['val'][0]:.3f} ± {row['val'][1]:.3f}"
                  f"  test AA {row['aa'][0]:.3f} ± {row['aa'][1]:.3f}"
                  f"  WGA {row['wga'][0]:.3f} ± {row['wga'][1]:.3f}"
                  f"  hparams seeds {row['hparams_seeds']}")
    print(f"\nRanking by mean score ({reference}: {choice['reference_mean_score']:.3f})")
    for r in choice["ranking"]:
        print(f"  {r['algorithm']:<{width}}  mean score {r['mean_score']:.3f}  worst margin "
              f"over {reference} {r['margins'][r['worst_dataset']]:+.3f} ({r['worst_dataset']})")
    print(f"\nDefault: {choice['default']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep_dir", required=True, help="the search's --output_dir")
    parser.add_argument("--reference", default="ERM", help="the algorithm not to harm")
    parser.add_argument("--candidates", nargs="+", default=None,
                        help="default: every EX2L formulation in the sweep folder")
    parser.add_argument("--out", default=None,
                        help="JSON output (default: results/<device>/choose_default.json)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reporting.check_sweep_dir(args.sweep_dir)
        table = lite_accuracy.build_table(args.sweep_dir, SELECTION)
        candidates = args.candidates or sorted(
            {a for _, a in table if a.startswith("EX2L") and a != args.reference})
        if not candidates:
            raise UserInputError(f"{args.sweep_dir} holds no EX2L runs; give --candidates")
        choice = choose(table, args.reference, candidates)
    except UserInputError as exc:
        print(f"error: {exc}".replace("--input_dir", "--sweep_dir"), file=sys.stderr)
        return 2
    print_choice(table, args.reference, choice)
    result = {"benchmark": "choose_default", "selection": SELECTION.name,
              "sweep_dir": args.sweep_dir, "reference": args.reference, **choice,
              "table": {f"{d}/{a}": row for (d, a), row in table.items()
                        if d in choice["datasets"]}}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    common.write_json(args.out or common.default_out("choose_default", device), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
