"""Calibration benchmark for Waterbirds-Lite: does it sit in Waterbirds' regime?

Trains ERM and a group-balanced oracle (ERM with `group_balanced: true`, every (y, place) group
drawn equally often) on WaterbirdsLite with its default hparams, `--trials` trials each, through
the harness's own `train` script with `--test_envs 2 --holdout_fraction 0`. Each run's
checkpoint is chosen by the validation split's worst-group accuracy
(`model_selection.ValidationWorstGroupSelectionMethod`, the subpopulation protocol). Prints the
test split's AA and WGA (mean +/- sample sd over trials), checks the calibration targets (ERM has
a clear gap between AA and WGA; the oracle closes most of it), and writes JSON.

    OMP_NUM_THREADS=1 python -m benchmarks.waterbirds_baselines --data_dir data/waterbirds_lite

Finished runs are reused when the command is run again with the same --out_dir. Waterbirds-Lite
is generated into --data_dir first when absent. Each training process registers
Waterbirds-Lite's hparams hook itself (this module's `--train` entry), so the calibration does
not depend on the plugin registering it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks import common

DATASET = "WaterbirdsLite"
TEST_ENV = 2
# name -> (algorithm, fixed hparams)
VARIANTS = {
    "ERM": ("ERM", {}),
    "ERM+group_balanced": ("ERM", {"group_balanced": True}),
}
TRAINER = ("-m", "benchmarks.waterbirds_baselines", "--train")


def register_hook() -> None:
    from domainbed.plugins import load_plugins

    load_plugins()  # registers WaterbirdsLite and its hparams


def run_dir(out_dir: str, variant: str, trial: int) -> str:
    return os.path.join(out_dir, f"{DATASET}-{variant.replace('+', '-')}-trial{trial}")


def train_one(job: tuple, args) -> tuple[str, float, bool]:
    variant, trial = job
    algorithm, hparams = VARIANTS[variant]
    out = run_dir(args.out_dir, variant, trial)
    argv = common.training_args(DATASET, algorithm, args.data_dir, out, 0, trial,
                                {**hparams, **args.hparams}, test_env=TEST_ENV,
                                extra=["--holdout_fraction", "0"])  # the splits whole
    seconds, ran = common.train_once(out, argv, args.threads, entry=TRAINER)
    return out, seconds, ran


def summarise(out: str) -> dict:
    """The checkpoint with the best validation-split WGA (the first, on ties): its val WGA and
    test AA and WGA."""
    from domainbed.lib.query import Q
    from domainbed.model_selection import ValidationWorstGroupSelectionMethod as Method

    with open(os.path.join(out, "results.jsonl")) as f:
        records = Q([json.loads(line) for line in f if line.strip()])
    best = records.argmax(lambda r: Method.checkpoint_acc(r)["val_acc"])
    return {"val_wga": Method.checkpoint_acc(best)["val_acc"],
            "aa": Method.checkpoint_acc(best, "acc")["test_acc"],
            "wga": Method.checkpoint_acc(best, "wga")["test_acc"], "selected_step": best["step"]}


def check_targets(table: dict) -> list[tuple[str, bool]]:
    """ERM's AA - WGA gap is at least 0.10; the oracle's is under half of ERM's, with a higher
    WGA."""
    erm, oracle = table.get("ERM"), table.get("ERM+group_balanced")
    checks = []
    if erm:
        gap = erm["aa"][0] - erm["wga"][0]
        checks.append((f"ERM test AA - WGA >= 0.10 ({gap:.3f})", gap >= 0.10))
    if erm and oracle:
        gap, oracle_gap = erm["aa"][0] - erm["wga"][0], oracle["aa"][0] - oracle["wga"][0]
        checks.append((f"oracle AA - WGA < half of ERM's ({oracle_gap:.3f} vs {gap / 2:.3f})",
                       oracle_gap < gap / 2))
        checks.append((f"oracle WGA > ERM WGA ({oracle['wga'][0]:.3f} vs {erm['wga'][0]:.3f})",
                       oracle["wga"][0] > erm["wga"][0]))
    return checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     parents=[common.training_options("runs/waterbirds_baselines")])
    parser.set_defaults(data_dir="data/waterbirds_lite")
    parser.add_argument("--hparams", type=json.loads, default={},
                        help="JSON hparams for every run (to explore a calibration)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = common.parse_args(parser, argv, "waterbirds_baselines")

    from ex2l_domainbed.datasets import subpop, waterbirds_lite
    t0 = time.time()
    if not os.path.isdir(os.path.join(args.data_dir, subpop.WATERBIRDS_FOLDER)):
        waterbirds_lite.generate(args.data_dir)  # once, up front, not racing in the first runs
    generation_seconds = time.time() - t0
    jobs = [(v, t) for v in args.variants for t in range(args.trials)]
    print(f"{len(jobs)} runs, {args.jobs} at a time, torch threads per run: {args.threads}")
    seconds: dict[str, list[float]] = {}
    for (v, t), (_, secs, ran) in common.in_parallel(lambda job: train_one(job, args), jobs,
                                                      args.jobs):
        seconds.setdefault(v, []).append(secs)
        print(f"  done {v} trial {t} ({secs:.0f} s{'' if ran else ', cached'})", flush=True)

    table, per_trial = {}, {}
    for v in args.variants:
        rows = [summarise(run_dir(args.out_dir, v, t)) for t in range(args.trials)]
        per_trial[v] = rows
        table[v] = {k: common.mean_sd(r[k] for r in rows) for k in ("val_wga", "aa", "wga")}

    header = (f"{'dataset':<15} {'variant':<19} {'n':>2}  {'val WGA':>13}  {'test AA':>13}  "
              f"{'test WGA':>13}")
    print("\n" + header + "\n" + "-" * len(header))
    for v, row in table.items():
        cells = "  ".join(f"{m:.3f} ± {s:.3f}" for m, s in (row["val_wga"], row["aa"], row["wga"]))
        print(f"{DATASET:<15} {v:<19} {args.trials:>2}  {cells}")
    checks = check_targets(table)
    common.print_targets(
        checks, "Calibration targets (selection by the validation split's worst-group accuracy)")
    result = common.calibration_json(
        "waterbirds_baselines", args, t0, seconds, table, per_trial, checks, dataset=DATASET,
        selection="validation-split worst-group accuracy", test_envs=[TEST_ENV],
        holdout_fraction=0,
        variants={v: {"algorithm": a, "hparams": h} for v, (a, h) in VARIANTS.items()
                  if v in args.variants},
        generation_seconds=round(generation_seconds, 1))
    common.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--train"]:
        register_hook()
        from domainbed.scripts import train
        raise SystemExit(train.main(sys.argv[2:]))
    raise SystemExit(main())
