"""Probes of the Lite study: variants of EX2L that differ only in fixed hparams (not a test).

The study's table (the baselines and the registered formulations) is the sweep definition
`sweeps/lite.toml`, run by `ex2l_domainbed.reproduce` and read by `benchmarks.lite_accuracy`.
A definition cannot hold two rows of one algorithm, so the probes of the investigation (one
algorithm, several fixed settings: docs/lite_study.md) keep this small launcher: for each
dataset and variant, `--n_hparams` hparam settings (seed 0 = the defaults, then upstream-style
random draws) x `--trials` trials, every run trained with `domainbed.scripts.train` (test
environment 0, a checkpoint model saved every 100 steps). Selection uses training-domain
validation only: in each run the checkpoint with the best mean validation accuracy of the
training environments, then the hparam setting with the best mean over trials. Reported: test
AA and WGA (mean +- sample sd), validation accuracy, the training-batch diagnostics at the
chosen checkpoints and, with `--analyse`, what the maps do on test images.

    OMP_NUM_THREADS=1 python -m benchmarks.lite_probes --variants EX2L-features-l3 --n_hparams 1

Runs are cached in `--out_dir` (a finished run is not retrained); the table and the JSON
(`benchmarks/results/<device>/lite_probes.json`) are rebuilt from them every time.
"""
from __future__ import annotations

import argparse
import os
import time

from benchmarks import common, lite_accuracy
from ex2l_domainbed import formulations

DATASETS = ["SpawriousLiteM2M_hard", "SpawriousLiteO2O_easy"]
# The pieces the probes combine (docs/lite_study.md); the formulations define them.
# separate: the confounder is honest and reads detached features;
SEPARATE = {**formulations.HONEST, "ex2l_confounder_grad": False}
# features: also the label map's weights are constants, so the penalty changes features only;
# cond: the confounder predicts the location given the class; clr10: it learns 10x faster.
FEATURES = formulations.FEATURES
COND = formulations.EX2L_Conditional.FIXED_HPARAMS
CLR10 = {"ex2l_confounder_lr_mult": 10.0}

# label -> (algorithm, fixed hparams). The study's main variants are registered formulations
# now (ex2l_domainbed/formulations.py; EX2L-features-clr10 is EX2L_FeaturesFast); these are the
# probes of the investigation, fixed settings: run them with --variants ... --n_hparams 1
# (defaults plus these fixed values). l = lambda, b = beta.
L3, L10 = {"ex2l_lambda": 3.0}, {"ex2l_lambda": 10.0}
PROBES = {
    # the first prototype's best setting, literal and with the honest confounder
    "EX2L-l10-b0.1": ("EX2L_Literal", {**L10, "ex2l_beta": 0.1}),
    "EX2L-honest-l10-b0.1": ("EX2L_Literal", {**L10, "ex2l_beta": 0.1, "ex2l_detach_confounder": True}),
    # an honest confounder that reads the features without shaping them, and learns first
    "EX2L-honest-cg0-w300-l3": ("EX2L_Literal", {**L3, **SEPARATE, "ex2l_warmup_steps": 300}),
    "EX2L-honest-cg0-w300-l10": ("EX2L_Literal", {**L10, **SEPARATE, "ex2l_warmup_steps": 300}),
    # a signed overlap: Pearson rewards a label map that is high where the confounder map
    # is low ("look where the confounder is not")
    "EX2L-separate-pearson-l1": ("EX2L_Literal", {**SEPARATE, "ex2l_overlap": "pearson"}),
    "EX2L-separate-pearson-l3": ("EX2L_Literal", {**L3, **SEPARATE, "ex2l_overlap": "pearson"}),
    "EX2L-features-l3": ("EX2L_Literal", {**L3, **FEATURES}),
    "EX2L-features-l10": ("EX2L_Literal", {**L10, **FEATURES}),
    # every class explained: evidence against a class counts as much as evidence for one
    "EX2L-allclass-l3": ("EX2L_Literal", {**L3, **SEPARATE, "ex2l_target": "all"}),
    "EX2L-allclass-features-l3": ("EX2L_Literal", {**L3, **FEATURES, "ex2l_target": "all"}),
    "EX2L-features-cond-l3": ("EX2L_Literal", {**L3, **COND}),
    # controls: beta 0 leaves the (detached, out-of-featurizer) confounder head at its random
    # initialisation, so the penalty is against the map of an untrained head
    "EX2L-features-l3-b0": ("EX2L_Literal", {**L3, **FEATURES, "ex2l_beta": 0.0}),
    "EX2L-features-cond-l3-b0": ("EX2L_Literal", {**L3, **COND, "ex2l_beta": 0.0}),
    # the confounder head with a 10x learning rate (beta cannot speed it up under Adam)
    "EX2L-features-l3-clr10": ("EX2L_Literal", {**L3, **FEATURES, **CLR10}),
    "EX2L-features-cond-l3-clr10": ("EX2L_Literal", {**L3, **COND, **CLR10}),
}
# The first path ablation (docs/lite_study.md), of one probe: one map alone carries the
# features-only penalty into the features, the other is held constant in the overlap. The
# ablation of the recommended formulation is the sweep definition sweeps/lite_ablation.toml.
ABLATION_BASE = "EX2L-features-l3"
PROBES.update({f"{ABLATION_BASE}-via-{path}":
               ("EX2L_Literal", {**PROBES[ABLATION_BASE][1], "ex2l_penalty_path": path})
               for path in ("label", "confounder")})
# The separated formulation under the same random search as the others.
SEARCHES = {
    "EX2L-separate": ("EX2L_Literal", SEPARATE),
    "EX2L-separate-w300": ("EX2L_Literal", {**SEPARATE, "ex2l_warmup_steps": 300}),
    "EX2L-separate-iou": ("EX2L_Literal", {**SEPARATE, "ex2l_overlap": "soft_iou"}),
}
ALL_VARIANTS = {**PROBES, **SEARCHES}
DIAGNOSTICS = ["confounder_acc", "adversary_acc", "overlap", "label_map_mass",
               "confounder_map_mass", "label_map_zero_frac", "confounder_map_zero_frac"]


def run_dir(out_dir: str, dataset: str, label: str, hparams_seed: int, trial: int) -> str:
    return os.path.join(out_dir, f"{dataset}-{label}-h{hparams_seed}-t{trial}")


def train_one(job: tuple, args) -> tuple[str, float, bool]:
    """Train one run unless it is done; return (folder, seconds, whether it ran)."""
    dataset, label, hparams_seed, trial = job
    algorithm, fixed = ALL_VARIANTS[label]
    out = run_dir(args.out_dir, dataset, label, hparams_seed, trial)
    argv = common.training_args(dataset, algorithm, args.data_dir, out, hparams_seed, trial,
                                fixed)
    seconds, ran = common.train_once(out, [*argv, "--save_model_every_checkpoint"],
                                     args.threads)
    return out, seconds, ran


def selected_checkpoint(out: str) -> dict:
    """The run's checkpoint chosen by training-domain validation, with its diagnostics."""
    best, scores = common.select_checkpoint(out)
    row = {**scores, "step": best["step"], "dir": out, "hparams": best["hparams"]}
    row.update({k: best[k] for k in DIAGNOSTICS if k in best})
    return row


def select(args, dataset: str, label: str) -> dict:
    """Pick the hparam setting with the best mean validation accuracy over its trials."""
    settings = []
    for hs in range(args.n_hparams):
        trials = [selected_checkpoint(run_dir(args.out_dir, dataset, label, hs, t))
                  for t in range(args.trials)]
        settings.append((sum(r["val"] for r in trials) / len(trials), hs, trials))
    val, hs, trials = max(settings, key=lambda s: (s[0], -s[1]))
    summary = {"hparams_seed": hs, "n": len(trials),
               "mean_val_per_setting": [round(s[0], 4) for s in settings]}
    for key in ["val", "aa", "wga", *DIAGNOSTICS]:
        if all(key in r for r in trials):
            summary[key] = common.mean_sd([r[key] for r in trials])
    summary["trials"] = trials
    return summary


def build_parser(description: str) -> argparse.ArgumentParser:
    """This study's options."""
    parser = argparse.ArgumentParser(
        description=description, parents=[common.training_options("runs/lite_accuracy")])
    # (runs/lite_accuracy: the cache of the runs made before the probes moved here)
    parser.add_argument("--datasets", nargs="*", default=DATASETS)
    parser.add_argument("--variants", nargs="*", default=list(PROBES),
                        choices=list(ALL_VARIANTS))
    parser.add_argument("--n_hparams", type=int, default=3)
    parser.add_argument("--analyse", action="store_true",
                        help="also measure the maps of the chosen checkpoints on test images")
    return parser


def run(args: argparse.Namespace, benchmark: str) -> int:
    """Train what is missing, select, print the table(s) and write `args.out`."""
    common.ensure_lite_data(args.data_dir)
    jobs = [(d, v, hs, t) for d in args.datasets for v in args.variants
            for hs in range(args.n_hparams) for t in range(args.trials)]
    print(f"{len(jobs)} runs, {args.jobs} at a time, torch threads per run: {args.threads}",
          flush=True)
    t0, seconds = time.time(), []
    for _, (out, secs, ran) in common.in_parallel(lambda job: train_one(job, args), jobs,
                                                   args.jobs):
        if ran:
            seconds.append(secs)
            print(f"  done {os.path.basename(out)} ({secs:.0f} s)", flush=True)
    print(f"training: {time.time() - t0:.0f} s wall, {len(seconds)} runs trained")

    table = {(d, v): select(args, d, v) for d in args.datasets for v in args.variants}
    if args.analyse:
        from benchmarks import lite_maps
        for row in table.values():
            row["maps"] = lite_maps.analyse_trials(row["trials"], args.data_dir)
    lite_accuracy.print_table(table, count=("h", "hparams_seed"),
                              title="Chosen setting (best mean validation over its trials)")
    if args.analyse:
        lite_maps.print_table(table, lite_accuracy.label_width(table))
    import torch
    result = {"benchmark": benchmark, "selection": "training-domain validation",
              "n_hparams": args.n_hparams, "trials": args.trials, "threads_per_run": args.threads,
              "parallel_runs": args.jobs, "torch": torch.__version__,
              "variants": {k: {"algorithm": a, "fixed_hparams": h}
                           for k, (a, h) in ALL_VARIANTS.items() if k in args.variants},
              "table": {f"{d}/{v}": row for (d, v), row in table.items()}}
    common.write_json(args.out, result)
    return 0


def main(argv=None) -> int:
    parser = build_parser(__doc__.split("\n\n")[0])
    return run(common.parse_args(parser, argv, "lite_probes"), "lite_probes")


if __name__ == "__main__":
    raise SystemExit(main())
