"""Grad-CAM figures: label-head and confounder-head maps of ERM and EX2L, per test group.

    python -m ex2l_domainbed.viz --sweep_dir demo/sweep --data_dir data/spawrious_lite \
        --out demo/gradcam.png

For each algorithm the run with the best training-domain validation accuracy (at its last
checkpoint, whose model.pkl is the one saved) is loaded. Each row is one test group
(class, location) with a few of its test images; for each image the figure shows the
image, then ERM's label map, then EX2L's label map and EX2L's confounder map, overlaid.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np
import torch

from domainbed.lib.misc import UserInputError

ALGORITHMS = ("ERM", "EX2L")


class NoRunFound(FileNotFoundError):
    """The sweep folder has no finished run of an algorithm the figure needs."""


def best_run(sweep_dir: str, algorithm: str) -> str:
    """The finished run of `algorithm` with the best training-domain validation accuracy."""
    from domainbed.model_selection import IIDAccuracySelectionMethod

    best, best_val = None, -1.0
    for name in sorted(os.listdir(sweep_dir)):
        run = os.path.join(sweep_dir, name)
        if not (os.path.exists(os.path.join(run, "done"))
                and os.path.exists(os.path.join(run, "model.pkl"))):
            continue
        with open(os.path.join(run, "results.jsonl")) as f:
            last = json.loads(f.readlines()[-1])
        if last["args"]["algorithm"] != algorithm:
            continue
        val = IIDAccuracySelectionMethod.checkpoint_acc(last)["val_acc"]
        if val > best_val:
            best, best_val = run, val
    if best is None:
        raise NoRunFound(f"no finished {algorithm} run with a model.pkl in {sweep_dir}; "
                         f"run the sweep with --algorithms {' '.join(ALGORITHMS)} first")
    return best


def load_model(run: str):
    from domainbed import algorithms
    saved = algorithms.load_checkpoint(os.path.join(run, "model.pkl"))
    return algorithms.from_checkpoint(saved).eval(), saved


def pick_examples(samples: Sequence[tuple], per_group: int) -> dict:
    """(y, a) -> the first `per_group` test samples of that group, in file order."""
    groups: dict = {}
    for path, y, a in samples:
        if len(groups.setdefault((y, a), [])) < per_group:
            groups[(y, a)].append((path, y, a))
    return dict(sorted(groups.items()))


def draw(groups: dict, models: dict, transform, out: str, class_names, location_names) -> None:
    """One row per group; per image: the image, ERM label, EX2L label, EX2L confounder."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ex2l_domainbed.datasets.spawrious import load_rgb_image
    from ex2l_domainbed.explain import head_maps

    panels = ["image", "ERM: label map", "EX2L: label map", "EX2L: confounder map"]
    per_group = max(len(v) for v in groups.values())
    cols = per_group * len(panels)
    fig, axes = plt.subplots(len(groups), cols, figsize=(1.6 * cols, 1.7 * len(groups)),
                             squeeze=False)
    for row, ((y, a), items) in enumerate(groups.items()):
        images = [load_rgb_image(p) for p, _, _ in items]
        x = torch.stack([transform(im) for im in images])
        yt, at = torch.tensor([y] * len(items)), torch.tensor([a] * len(items))
        erm, ex2l = head_maps(models["ERM"], x, yt, at), head_maps(models["EX2L"], x, yt, at)
        for i, image in enumerate(images):
            shown = np.asarray(image.convert("RGB"))
            maps = [None, erm.label[i], ex2l.label[i], ex2l.nuisance[i]]
            for j, (title, m) in enumerate(zip(panels, maps)):
                ax = axes[row][i * len(panels) + j]
                ax.imshow(shown)
                if m is not None:
                    ax.imshow(m.numpy(), cmap="jet", alpha=0.5,
                              vmin=0, vmax=max(float(m.max()), 1e-12))
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(title, fontsize=7)
            axes[row][0].set_ylabel(f"{class_names[y]}\n@ {location_names[a]}", fontsize=7)
    fig.suptitle("Grad-CAM on test images: where ERM and EX2L look (label head: true class; "
                 "confounder head: true location)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)


def make_figure(sweep_dir: str, data_dir: str, out: str, per_group: int = 2) -> str:
    from domainbed import datasets
    from domainbed.plugins import load_plugins
    from ex2l_domainbed.datasets.spawrious import CLASSES, LOCATIONS

    load_plugins()
    models, saved = {}, None
    for name in ALGORITHMS:
        models[name], saved = load_model(best_run(sweep_dir, name))
    args = saved["args"]
    dataset = datasets.get_dataset_class(args["dataset"])(data_dir, args["test_envs"],
                                                           saved["model_hparams"])
    test_env = dataset[args["test_envs"][0]]
    draw(pick_examples(test_env.samples, per_group), models, test_env.transform, out,
         CLASSES, LOCATIONS)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep_dir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--out", default="demo/gradcam.png")
    parser.add_argument("--per_group", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        print(make_figure(args.sweep_dir, args.data_dir, args.out, args.per_group))
    except (NoRunFound, FileNotFoundError, UserInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
