"""Does EX2L help? ERM, GroupDRO, AttributeDANN and EX2L on Spawrious-Lite (not a test).

DomainBed's protocol, small: for each dataset and algorithm, `--n_hparams` hparam settings
(seed 0 = the defaults, then upstream-style random draws) x `--trials` trials, every run
trained with `domainbed.scripts.train` (test environment 0, a checkpoint model saved every
100 steps). Selection uses training-domain validation only: in each run the checkpoint with
the best mean validation accuracy of the training environments, then the hparam setting with
the best mean over trials. The test environment never chooses anything. Reported: test AA
and WGA (mean +- sample sd over the chosen setting's trials), validation accuracy, and at the
chosen checkpoints the training-batch diagnostics (confounder/adversary accuracy, map mass)
plus, with `--analyse`, what the maps do on test images (`lite_maps.py`).

    OMP_NUM_THREADS=1 python benchmarks/lite_accuracy.py --jobs 2   # 144 runs of 45-85 s each
    OMP_NUM_THREADS=1 python benchmarks/lite_accuracy.py --analyse           # + map analysis

Runs are cached in `--out_dir` (a finished run is not retrained); the table and
`benchmarks/results/lite_accuracy.json` are rebuilt from them every time.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench_common import write_json  # noqa: E402
from lite_baselines import mean_sd  # noqa: E402

DATASETS = ["SpawriousLiteM2M_hard", "SpawriousLiteO2O_easy"]
# The EX2L formulations, as fixed hparams (docs/lite_study.md):
# separate: the confounder is honest and reads detached features;
SEPARATE = {"ex2l_detach_confounder": True, "ex2l_confounder_grad": False}
# features: also the label map's weights are constants, so the penalty changes features only;
FEATURES = {**SEPARATE, "ex2l_detach_label": True}
# cond: the confounder predicts the location given the class; clr10: it learns 10x faster.
COND = {**FEATURES, "ex2l_conditional_confounder": True}
CLR10 = {"ex2l_confounder_lr_mult": 10.0}

# label -> (algorithm, fixed hparams): the default table.
VARIANTS = {
    "ERM": ("ERM", {}),
    "GroupDRO": ("GroupDRO", {}),
    "AttributeDANN": ("AttributeDANN", {}),
    "EX2L": ("EX2L", {}),
    "EX2L-honest": ("EX2L", {"ex2l_detach_confounder": True}),
    "EX2L-features": ("EX2L", FEATURES),
    "EX2L-features-clr10": ("EX2L", {**FEATURES, **CLR10}),
    "EX2L-features-cond": ("EX2L", COND),
}
# Probes for the investigation (not in the default table), fixed settings; run them with
# --variants ... --n_hparams 1 (defaults plus these fixed values). l = lambda, b = beta.
L3, L10 = {"ex2l_lambda": 3.0}, {"ex2l_lambda": 10.0}
PROBES = {
    # the first prototype's best setting, literal and with the honest confounder
    "EX2L-l10-b0.1": ("EX2L", {**L10, "ex2l_beta": 0.1}),
    "EX2L-honest-l10-b0.1": ("EX2L", {**L10, "ex2l_beta": 0.1, "ex2l_detach_confounder": True}),
    # an honest confounder that reads the features without shaping them, and learns first
    "EX2L-honest-cg0-w300-l3": ("EX2L", {**L3, **SEPARATE, "ex2l_warmup_steps": 300}),
    "EX2L-honest-cg0-w300-l10": ("EX2L", {**L10, **SEPARATE, "ex2l_warmup_steps": 300}),
    # a signed overlap: Pearson rewards a label map that is high where the confounder map
    # is low ("look where the confounder is not")
    "EX2L-separate-pearson-l1": ("EX2L", {**SEPARATE, "ex2l_overlap": "pearson"}),
    "EX2L-separate-pearson-l3": ("EX2L", {**L3, **SEPARATE, "ex2l_overlap": "pearson"}),
    "EX2L-features-l3": ("EX2L", {**L3, **FEATURES}),
    "EX2L-features-l10": ("EX2L", {**L10, **FEATURES}),
    # every class explained: evidence against a class counts as much as evidence for one
    "EX2L-allclass-l3": ("EX2L", {**L3, **SEPARATE, "ex2l_target": "all"}),
    "EX2L-allclass-features-l3": ("EX2L", {**L3, **FEATURES, "ex2l_target": "all"}),
    "EX2L-features-cond-l3": ("EX2L", {**L3, **COND}),
    # controls: beta 0 leaves the (detached, out-of-featurizer) confounder head at its random
    # initialisation, so the penalty is against the map of an untrained head
    "EX2L-features-l3-b0": ("EX2L", {**L3, **FEATURES, "ex2l_beta": 0.0}),
    "EX2L-features-cond-l3-b0": ("EX2L", {**L3, **COND, "ex2l_beta": 0.0}),
    # the confounder head with a 10x learning rate (beta cannot speed it up under Adam)
    "EX2L-features-l3-clr10": ("EX2L", {**L3, **FEATURES, **CLR10}),
    "EX2L-features-cond-l3-clr10": ("EX2L", {**L3, **COND, **CLR10}),
}
# The separated formulation under the same random search as the others.
SEARCHES = {
    "EX2L-separate": ("EX2L", SEPARATE),
    "EX2L-separate-w300": ("EX2L", {**SEPARATE, "ex2l_warmup_steps": 300}),
    "EX2L-separate-iou": ("EX2L", {**SEPARATE, "ex2l_overlap": "soft_iou"}),
}
ALL_VARIANTS = {**VARIANTS, **PROBES, **SEARCHES}
# label -> the command-line prefix that trains it (another script may add entries that patch
# the algorithm before calling the trainer, e.g. lite_ablation.py)
TRAIN_ENTRY: dict[str, list[str]] = {}
DIAGNOSTICS = ["confounder_acc", "adversary_acc", "overlap", "label_map_mass",
               "confounder_map_mass", "label_map_zero_frac", "confounder_map_zero_frac"]


def run_dir(out_dir: str, dataset: str, label: str, hparams_seed: int, trial: int) -> str:
    return os.path.join(out_dir, f"{dataset}-{label}-h{hparams_seed}-t{trial}")


def train_one(job: tuple, args) -> tuple[str, float, bool]:
    """Train one run unless it is done; return (folder, seconds, whether it ran)."""
    from domainbed.lib import misc

    dataset, label, hparams_seed, trial = job
    algorithm, fixed = ALL_VARIANTS[label]
    out = run_dir(args.out_dir, dataset, label, hparams_seed, trial)
    if os.path.exists(os.path.join(out, "done")):
        return out, 0.0, False
    entry = TRAIN_ENTRY.get(label, ["-m", "domainbed.scripts.train"])
    cmd = [sys.executable, *entry, "--dataset", dataset,
           "--algorithm", algorithm, "--test_envs", "0", "--data_dir", args.data_dir,
           "--output_dir", out, "--hparams_seed", str(hparams_seed), "--trial_seed", str(trial),
           "--seed", str(misc.seed_hash(dataset, algorithm, [0], hparams_seed, trial)),
           "--save_model_every_checkpoint"]
    if fixed:
        cmd += ["--hparams", json.dumps(fixed)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, cwd=os.path.dirname(HERE))
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({out}):\n{proc.stderr[-2000:]}")
    return out, time.time() - t0, True


def selected_checkpoint(out: str) -> dict:
    """Training-domain validation inside one run: the first checkpoint with the best val."""
    from domainbed.lib.query import Q
    from domainbed.model_selection import IIDAccuracySelectionMethod as IID

    with open(os.path.join(out, "results.jsonl")) as f:
        records = Q([json.loads(line) for line in f if line.strip()])
    best = max(records, key=lambda r: IID.checkpoint_acc(r)["val_acc"])
    row = {"val": IID.checkpoint_acc(best)["val_acc"], "aa": best["env0_in_acc"],
           "wga": best["env0_in_wga"], "step": best["step"], "dir": out,
           "hparams": best["hparams"]}
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
            summary[key] = mean_sd([r[key] for r in trials])
    summary["trials"] = trials
    return summary


def print_table(table: dict) -> None:
    header = (f"{'dataset':<24} {'algorithm':<14} {'h':>2}  {'val':>13}  {'test AA':>13}  "
              f"{'test WGA':>13}  {'conf/adv acc':>13}")
    print("\n" + header + "\n" + "-" * len(header))
    for (dataset, label), row in table.items():
        cells = [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in ("val", "aa", "wga")]
        conf = row.get("confounder_acc") or row.get("adversary_acc")
        cells.append(f"{conf[0]:.3f} ± {conf[1]:.3f}" if conf else f"{'-':>13}")
        print(f"{dataset:<24} {label:<14} {row['hparams_seed']:>2}  " + "  ".join(cells))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="data/spawrious_lite")
    parser.add_argument("--out_dir", default="runs/lite_accuracy")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "lite_accuracy.json"))
    parser.add_argument("--datasets", nargs="*", default=DATASETS)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS),
                        choices=list(ALL_VARIANTS))
    parser.add_argument("--n_hparams", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--analyse", action="store_true",
                        help="also measure the maps of the chosen checkpoints on test images")
    args = parser.parse_args(argv)

    from ex2l_domainbed.datasets import spawrious_lite
    if not os.path.isdir(os.path.join(args.data_dir, "spawrious224")):
        spawrious_lite.generate(args.data_dir)
    jobs = [(d, v, hs, t) for d in args.datasets for v in args.variants
            for hs in range(args.n_hparams) for t in range(args.trials)]
    print(f"{len(jobs)} runs, {args.jobs} at a time, torch threads per run: {args.threads}",
          flush=True)
    t0, seconds = time.time(), []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(train_one, job, args): job for job in jobs}
        for fut in concurrent.futures.as_completed(futures):
            out, secs, ran = fut.result()
            if ran:
                seconds.append(secs)
                print(f"  done {os.path.basename(out)} ({secs:.0f} s)", flush=True)
    print(f"training: {time.time() - t0:.0f} s wall, {len(seconds)} runs trained")

    table = {(d, v): select(args, d, v) for d in args.datasets for v in args.variants}
    if args.analyse:
        import lite_maps
        for (d, v), row in table.items():
            row["maps"] = lite_maps.analyse_trials(row["trials"], args.data_dir)
    print_table(table)
    if args.analyse:
        lite_maps.print_table(table)
    import torch
    result = {"benchmark": "lite_accuracy", "selection": "training-domain validation",
              "n_hparams": args.n_hparams, "trials": args.trials, "threads_per_run": args.threads,
              "parallel_runs": args.jobs, "torch": torch.__version__,
              "variants": {k: {"algorithm": a, "fixed_hparams": h}
                           for k, (a, h) in ALL_VARIANTS.items() if k in args.variants},
              "table": {f"{d}/{v}": row for (d, v), row in table.items()}}
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
