"""Evaluation cost: images per second of one evaluation batch (featurizer + linear head).

train.py evaluates every split of every environment at each checkpoint, in batches of
`EVAL_BATCH_SIZE` (64), with the model in eval mode and no gradients; this times exactly that
forward pass, on random images (decoding and loading them is not timed). The sweep estimate of
`python -m ex2l_domainbed.reproduce` copies these figures (ex2l_domainbed/reproduce/estimate.py).

    OMP_NUM_THREADS=1 python -m benchmarks.eval_pass --device cpu --warmup 1 --rounds 3
    python -m benchmarks.eval_pass --device cuda

Models, built by name through the harness's featurizer registry (hparam `featurizer`):
`resnet` (ResNet-50 at 224x224, randomly initialised: the time does not depend on the weights,
and ImageNet weights are never downloaded) and `lite_cnn` (LiteCNN at 64x64 with
Spawrious-Lite's defaults, its shipped weights included).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

from benchmarks import common
from domainbed import networks
from domainbed.scripts.train import EVAL_BATCH_SIZE

NUM_CLASSES = 4
MODELS = {"resnet": 224, "lite_cnn": 64}  # featurizer name -> image size


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        parents=[common.measure_options(), common.round_options(warmup=3, rounds=20)])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch_size", type=int, default=EVAL_BATCH_SIZE,
                        help="images per evaluation batch (train.py's EVAL_BATCH_SIZE)")
    return common.parse_args(parser, argv, "eval_pass")


def hparams_for(model: str) -> dict:
    """Registry defaults: Spawrious-Lite's for `lite_cnn`; for `resnet` Debug224's, as
    ResNet-50 without ImageNet weights (nothing to download)."""
    from domainbed import hparams_registry
    if model == "lite_cnn":
        hp = hparams_registry.default_hparams("ERM", "SpawriousLiteM2M_hard")
    else:
        hp = hparams_registry.default_hparams("ERM", "Debug224")
        hp.update(resnet18=False, pretrained=False, pretrained_path="")
    hp["featurizer"] = model
    return hp


def build(model: str, device: torch.device) -> nn.Module:
    """Featurizer + linear head in eval mode, as an algorithm's `predict` runs it."""
    from ex2l_domainbed.plugin import register
    register()  # lite_cnn and Lite's defaults (idempotent)
    size = MODELS[model]
    featurizer = networks.Featurizer((3, size, size), hparams_for(model))
    head = networks.Classifier(featurizer.n_outputs, NUM_CLASSES)
    return nn.Sequential(featurizer, head).to(device).eval()


def bench_model(model: str, args, device: torch.device) -> dict:
    size = MODELS[model]
    torch.manual_seed(args.seed)
    network = build(model, device)
    x = torch.randn(args.batch_size, 3, size, size, device=device)

    def forward():
        with torch.no_grad():
            network(x)
    t0 = time.time()
    times = common.interleaved_rounds({model: forward}, common.Timer(device), args.warmup,
                                      args.rounds)[model]
    stats = common.timing_stats(times)
    ms_per_image = stats["median_ms"] / args.batch_size
    print(f"  [{model}] {args.rounds} rounds after {args.warmup} warm-up ({time.time() - t0:.0f} s)",
          flush=True)
    return {"image_size": size, "batch_size": args.batch_size,
            "parameters_bytes": sum(p.numel() * p.element_size() for p in network.parameters()),
            "ms_per_image": ms_per_image, "images_per_s": 1e3 / ms_per_image, **stats}


def print_table(results: dict) -> None:
    head = f"{'model':<10} {'px':>4} {'batch':>5} {'median ms':>10} {'IQR ms':>17} " \
           f"{'ms/image':>9} {'images/s':>9}"
    print("\n" + head + "\n" + "-" * len(head))
    for model, r in results.items():
        iqr = f"{r['q25_ms']:.1f}-{r['q75_ms']:.1f}"
        print(f"{model:<10} {r['image_size']:>4} {r['batch_size']:>5} {r['median_ms']:>10.1f} "
              f"{iqr:>17} {r['ms_per_image']:>9.3f} {r['images_per_s']:>9.0f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = common.prepare(args)
    print(f"eval_pass: {machine.describe()}; batch {args.batch_size}, warm-up {args.warmup}, "
          f"rounds {args.rounds}; eval mode, no_grad, random images")
    results = {model: bench_model(model, args, machine.device) for model in args.models}
    print_table(results)
    settings = {**machine.settings(), "models": args.models, "batch_size": args.batch_size,
                "num_classes": NUM_CLASSES, "warmup_rounds": args.warmup,
                "rounds": args.rounds, "seed": args.seed}
    common.write_json(args.out, {"benchmark": "eval_pass", "settings": settings,
                                 "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
