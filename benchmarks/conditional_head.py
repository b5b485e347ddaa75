"""Why does EX2L's conditional confounder head not learn? (not a test)

`EX2L_Conditional`'s confounder predicts the location *given the class* (a softmax over the
locations seen with the sample's class); in the Lite study its training loss stayed at the
entropy of the within-class prior all run, while an offline probe read the location from the
same features. This fits the same masked linear head, offline, on frozen pooled features of
the training environments' images, so that the head, its optimiser and the features can be
told apart:

- features: ERM's final model (nothing pushed the location out of them) and EX2L_Conditional's
  checkpoints (the penalty may have);
- fits: the head exactly as EX2L trains it (Adam, lr 1e-3, batch 64, 600 steps, raw pooled
  features), the same at lr 1e-2, on standardised features, with each (class, location)
  group weighted equally, and L-BFGS on standardised features (the study's probe).

Each fit reports its final loss on the fit split against the within-class prior's entropy
(a head that learned nothing sits at it) and its accuracy on a held-out 30%, plain and
group-balanced (mean over (class, location) groups: the prior alone scores 1 / locations per
class). The runs (trial 0) are trained with the harness's `train` (test environment 0, defaults,
`--save_model_every_checkpoint`) and reused from `--out_dir`.

    OMP_NUM_THREADS=1 python -m benchmarks.conditional_head --jobs 2      # ~10 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import common

DATASETS = ["SpawriousLiteM2M_hard", "SpawriousLiteO2O_easy"]
# label -> (algorithm, fixed hparams). The two controls train the same head in the same loop
# with the penalty off, and with the penalty kept out of the confounder map's path into the
# features (only the label map carries it): if the head learns in those, the penalty is what
# stops it.
RUNS = {"ERM": ("ERM", {}),
        "EX2L_Conditional": ("EX2L_Conditional", {}),
        "EX2L_Conditional lambda 0": ("EX2L_Conditional", {"ex2l_lambda": 0.0}),
        "EX2L_Conditional label path": ("EX2L_Conditional", {"ex2l_penalty_path": "label"})}
STEPS = {"ERM": [599], "EX2L_Conditional": [100, 300, 599]}  # checkpoints whose features are read
HOLDOUT = 0.3
FEATURE_BATCH = 256


# --- the fits ---------------------------------------------------------------------------------

def blocked_mask(y: torch.Tensor, a: torch.Tensor, n_classes: int, n_attrs: int) -> torch.Tensor:
    """[classes, attributes] true where the pair never occurs: EX2L's co-occurrence rule."""
    seen = torch.zeros(n_classes, n_attrs, dtype=torch.bool)
    seen[y, a] = True
    return ~seen


def masked_logits(head: torch.nn.Linear, z: torch.Tensor, blocked_rows: torch.Tensor):
    return head(z) + blocked_rows.float() * -1e4


def group_weights(y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per-sample weights that give every (class, attribute) group the same total."""
    keys = y * (int(a.max()) + 1) + a
    counts = torch.bincount(keys).float()
    w = 1.0 / counts[keys]
    return w / w.mean()


def fit_adam(z, y, a, blocked, *, lr: float, steps: int = 600, batch: int = 64,
             balanced: bool = False, seed: int = 0) -> torch.nn.Linear:
    """The head as EX2L trains it: Adam on minibatches of (frozen) features."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(z.shape[1], blocked.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    weights = group_weights(y, a) if balanced else torch.ones(len(y))
    for _ in range(steps):
        idx = torch.randint(len(y), (batch,), generator=gen)
        loss = F.cross_entropy(masked_logits(head, z[idx], blocked[y[idx]]), a[idx],
                               reduction="none")
        loss = (loss * weights[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def fit_lbfgs(z, y, a, blocked, weight_decay: float = 1e-3) -> torch.nn.Linear:
    """The study's probe: full-batch L-BFGS with a little L2 (on standardised features)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(z.shape[1], blocked.shape[1])
    opt = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(masked_logits(head, z, blocked[y]), a)
        loss = loss + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def prior_entropy(y: torch.Tensor, a: torch.Tensor) -> float:
    """H(a | y) in nats: the loss of a head that knows only the class."""
    total = 0.0
    for c in y.unique():
        counts = torch.bincount(a[y == c]).float()
        p = counts[counts > 0] / counts.sum()
        total += float((y == c).float().mean()) * float(-(p * p.log()).sum())
    return total


def scores(head, z, y, a, blocked) -> dict[str, float]:
    with torch.no_grad():
        logits = masked_logits(head, z, blocked[y])
        loss = float(F.cross_entropy(logits, a))
        right = (logits.argmax(1) == a).float()
    keys = y * (int(a.max()) + 1) + a
    balanced = float(np.mean([float(right[keys == k].mean()) for k in keys.unique()]))
    return {"loss": loss, "acc": float(right.mean()), "balanced_acc": balanced}


def standardise(fit: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = fit.mean(0), fit.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (fit, *others)]


# name -> (on standardised features?, the fit)
FITS: dict[str, tuple[bool, Callable]] = {
    "adam lr1e-3 (EX2L's)": (False, lambda z, y, a, b: fit_adam(z, y, a, b, lr=1e-3)),
    "adam lr1e-2": (False, lambda z, y, a, b: fit_adam(z, y, a, b, lr=1e-2)),
    "adam lr1e-3 balanced": (False, lambda z, y, a, b: fit_adam(z, y, a, b, lr=1e-3,
                                                                balanced=True)),
    "adam lr1e-3 standardised": (True, lambda z, y, a, b: fit_adam(z, y, a, b, lr=1e-3)),
    "lbfgs standardised": (True, fit_lbfgs),
}


def probe(features: torch.Tensor, y: torch.Tensor, a: torch.Tensor, n_attrs: int) -> dict:
    """Every fit of FITS on one set of features: a 70/30 split, the scores of each."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(len(y) * (1 - HOLDOUT))
    fit_i, held_i = perm[:cut], perm[cut:]
    n_classes = int(y.max()) + 1
    blocked = blocked_mask(y[fit_i], a[fit_i], n_classes, n_attrs)
    raw = (features[fit_i], features[held_i])
    std = standardise(*raw)
    spread = features.std(0)
    out = {"prior_entropy": prior_entropy(y[fit_i], a[fit_i]),
           "prior_balanced_acc": float(np.mean([1.0 / int((~blocked[c]).sum())
                                                for c in y[held_i].tolist()])),
           "feature_mean_over_sd": float((features.mean(0).abs() / spread.clamp_min(1e-6))
                                         .median()),
           "fits": {}}
    for name, (standardised, fit) in FITS.items():
        z_fit, z_held = std if standardised else raw
        head = fit(z_fit, y[fit_i], a[fit_i], blocked)
        out["fits"][name] = {"fit_loss": scores(head, z_fit, y[fit_i], a[fit_i], blocked)["loss"],
                             **{f"held_{k}": v for k, v in
                                scores(head, z_held, y[held_i], a[held_i], blocked).items()}}
    return out


# --- runs and features ------------------------------------------------------------------------

def run_dir(args, dataset: str, label: str) -> str:
    return os.path.join(args.out_dir, f"{dataset}-{label.replace(' ', '-')}-trial0")


def train(job: tuple[str, str], args) -> tuple[float, bool]:
    dataset, label = job
    algorithm, hparams = RUNS[label]
    out = run_dir(args, dataset, label)
    argv = common.training_args(dataset, algorithm, args.data_dir, out, 0, 0, hparams,
                                extra=["--save_model_every_checkpoint"])
    return common.train_once(out, argv, args.threads)


def in_training(run: str) -> list[dict]:
    """The confounder's loss and accuracy on training batches, per checkpoint interval."""
    with open(os.path.join(run, "results.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [{"step": r["step"], "loss_confounder": r["loss_confounder"],
             "confounder_acc": r["confounder_acc"]} for r in records]


def training_features(run: str, step: int, data_dir: str):
    """Pooled features, classes and locations of every image of the training environments."""
    from domainbed import algorithms, datasets
    from ex2l_domainbed.datasets.spawrious import load_rgb_image
    from ex2l_domainbed.plugin import register

    register()
    saved = algorithms.load_checkpoint(os.path.join(run, f"model_step{step}.pkl"))
    model = algorithms.from_checkpoint(saved).eval()
    args = saved["args"]
    data = datasets.get_dataset_class(args["dataset"])(data_dir, args["test_envs"],
                                                       saved["model_hparams"])
    feats, ys, attrs = [], [], []
    for env in datasets.training_envs(data, args["test_envs"]):
        samples, transform = data[env].samples, data[env].transform
        for start in range(0, len(samples), FEATURE_BATCH):
            chunk = samples[start:start + FEATURE_BATCH]
            x = torch.stack([transform(load_rgb_image(p)) for p, _, _ in chunk])
            with torch.no_grad():
                feats.append(model.featurizer(x))
            ys += [c for _, c, _ in chunk]
            attrs += [loc for _, _, loc in chunk]
    return torch.cat(feats), torch.tensor(ys), torch.tensor(attrs), len(data.ATTRIBUTES)


def print_training(curves: dict, priors: dict) -> None:
    print("\nIn training: the confounder's CE on training batches (mean over each interval) "
          "against the within-class prior's entropy")
    for (dataset, label), curve in curves.items():
        losses = " ".join(f"{c['step']}:{c['loss_confounder']:.3f}" for c in curve)
        print(f"  {dataset:<22} {label:<28} prior H {priors[dataset]:.3f}  {losses}")


def print_table(rows: list[dict]) -> None:
    header = (f"{'dataset':<22} {'features':<22} {'fit':<25} {'fit loss':>8} {'prior H':>7} "
              f"{'held acc':>8} {'held bal.':>9} {'prior bal.':>10}")
    print(header + "\n" + "-" * len(header))
    for row in rows:
        for name, fit in row["fits"].items():
            print(f"{row['dataset']:<22} {row['features']:<22} {name:<25} {fit['fit_loss']:>8.3f} "
                  f"{row['prior_entropy']:>7.3f} {fit['held_acc']:>8.3f} "
                  f"{fit['held_balanced_acc']:>9.3f} {row['prior_balanced_acc']:>10.3f}")
        print(f"{'':<22} {'':<22} (median |feature mean| / sd: "
              f"{row['feature_mean_over_sd']:.2f})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     parents=[common.training_options("runs/conditional_head")])
    args = common.parse_args(parser, argv, "conditional_head")
    common.ensure_lite_data(args.data_dir)
    t0 = time.time()
    jobs = [(d, label) for d in DATASETS for label in RUNS]
    for job, (secs, ran) in common.in_parallel(lambda job: train(job, args), jobs, args.jobs):
        print(f"  done {job[0]} {job[1]} ({secs:.0f} s{'' if ran else ', cached'})", flush=True)
    torch.set_num_threads(args.threads)
    rows = []
    for dataset, label in jobs:
        for step in STEPS.get(label, []):
            z, y, a, n_attrs = training_features(run_dir(args, dataset, label), step,
                                                 args.data_dir)
            rows.append({"dataset": dataset, "features": f"{label} step {step}",
                         "n_images": len(y), **probe(z, y, a, n_attrs)})
    print_table(rows)
    curves = {(d, label): in_training(run_dir(args, d, label)) for d, label in jobs
              if RUNS[label][0] != "ERM"}
    priors = {r["dataset"]: r["prior_entropy"] for r in rows}
    print_training(curves, priors)
    common.write_json(args.out, {"benchmark": "conditional_head", "threads": args.threads,
                                 "seconds": round(time.time() - t0, 1), "rows": rows,
                                 "in_training": {f"{d} / {label}": c
                                                 for (d, label), c in curves.items()},
                                 "holdout": HOLDOUT, "steps": STEPS,
                                 "runs": {k: list(v) for k, v in RUNS.items()}})
    return 0 if all(math.isfinite(r["prior_entropy"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
