"""Waterbirds-Lite: a generated, low-resolution Waterbirds in the real layout.

Two silhouettes in random colours, a plain ellipse ("landbird") and the same ellipse with a notch
cut into one end ("waterbird"), are painted on random grey-scale crops of scikit-image's bundled
photographs, two per place family ("land", "water"), and written as
``<out>/waterbird_complete95_forest2water2/<class folder>/<class>_<img_id>.png`` with the real
``metadata.csv`` (img_id, img_filename, y, split, place, place_filename), so the real
``Waterbirds`` loader reads it. Every split has the real dataset's group counts
(``GROUP_COUNTS``: 4,795 / 1,199 / 5,794 images), times ``--scale`` (each group keeps at least
one image).

    python -m ex2l_domainbed.datasets.waterbirds_lite --out DIR [--size 64] [--scale 1]

Generation is deterministic: every image draws from its own generator seeded with
(seed, split, y, place, n). The folder is written to a temporary place and renamed into place
when complete, with a marker file (``waterbirds_lite.json``) recording the arguments; a
half-written folder is never used.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

from ex2l_domainbed.datasets import generated, shapes
from ex2l_domainbed.datasets.spawrious_lite import load_source
from ex2l_domainbed.datasets.subpop import (
    WATERBIRDS_FOLDER,
    WATERBIRDS_METADATA,
    Waterbirds,
)

# The real Waterbirds' images per (y, place) group in each split (Sagawa et al., 2020).
GROUP_COUNTS: dict[int, dict[tuple[int, int], int]] = {
    0: {(0, 0): 3498, (0, 1): 184, (1, 0): 56, (1, 1): 1057},
    1: {(0, 0): 467, (0, 1): 466, (1, 0): 133, (1, 1): 133},
    2: {(0, 0): 2255, (0, 1): 2255, (1, 0): 642, (1, 1): 642},
}
CLASSES = Waterbirds.CLASSES  # y = index
PLACES = Waterbirds.ATTRIBUTES  # place = index
CLASS_FOLDERS = ["001.Landbird", "002.Waterbird"]  # CUB-style "<number>.<name>" folders

def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + (v / 0.55) ** 2 <= 1


def _notched_ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _ellipse(u, v) & ~((u > 0.3) & (np.abs(v) < 0.2))


# The classes differ by a detail (the notch), as birds do, while the places differ by their
# whole texture: the background is the easier feature, which makes it the shortcut (the
# calibration in benchmarks/waterbirds_baselines.py; triangle vs ring was too easy).
SILHOUETTES: dict[str, shapes.Mask] = {"landbird": _ellipse, "waterbird": _notched_ellipse}
# Two scikit-image pictures per place family, none of them seen by the Lite backbone's
# pretraining (weights/lite_backbone.pt.json lists its backgrounds).
PLACE_SOURCES = {"land": ("grass", "gravel"), "water": ("immunohistochemistry", "brick")}
COLUMNS = ["img_id", "img_filename", "y", "split", "place", "place_filename"]

DEFAULT_SIZE = 64
DEFAULT_SCALE = 1.0
DEFAULT_SEED = 0
MARKER = "waterbirds_lite.json"
LABEL = "Waterbirds-Lite"
GENERATOR_VERSION = 1
RADIUS_AT_64 = (8.0, 13.0)  # silhouette radius range (half the long axis) in pixels at 64x64


def group_counts(scale: float = DEFAULT_SCALE) -> dict[int, dict[tuple[int, int], int]]:
    """GROUP_COUNTS times ``scale``, rounded, at least one image per group."""
    return {split: {g: max(1, round(n * scale)) for g, n in groups.items()}
            for split, groups in GROUP_COUNTS.items()}


def image_rng(seed: int, split: int, y: int, place: int, n: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, y, place, n])


def make_image(sources: list[np.ndarray], cls: str, size: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, int]:
    """One image (HxWx3 uint8) of class ``cls`` on a crop of one of ``sources`` (its index is
    returned too)."""
    k = int(rng.integers(len(sources)))
    background = shapes.random_crop(sources[k], size, rng)
    scale = size / 64.0
    radius = (RADIUS_AT_64[0] * scale, RADIUS_AT_64[1] * scale)
    alpha = shapes.rasterize(SILHOUETTES[cls], size, rng, radius)
    return shapes.to_uint8(shapes.compose(background, alpha, rng)), k


def marker_for(size: int, scale: float, seed: int) -> dict:
    return {"generator": "ex2l_domainbed.datasets.waterbirds_lite", "version": GENERATOR_VERSION,
            "size": size, "scale": scale, "seed": seed, "radius_at_64": list(RADIUS_AT_64),
            "silhouettes": {k: f.__name__.strip("_") for k, f in SILHOUETTES.items()},
            "sources": {k: list(v) for k, v in PLACE_SOURCES.items()}}


def read_marker(folder: str) -> dict | None:
    return generated.read_marker(folder, MARKER)


def _write_folder(folder: str, size: int, scale: float, seed: int, progress: bool) -> None:
    from PIL import Image
    from tqdm import tqdm

    sources = {place: [load_source(name) for name in PLACE_SOURCES[place]] for place in PLACES}
    counts = group_counts(scale)
    for name in CLASS_FOLDERS:
        os.makedirs(os.path.join(folder, name))
    bar = tqdm(total=sum(sum(g.values()) for g in counts.values()), desc="Waterbirds-Lite",
               unit="img", disable=not progress, file=sys.stderr, mininterval=1.0)
    img_id = 0
    with open(os.path.join(folder, WATERBIRDS_METADATA), "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for split, groups in counts.items():
            for (y, place), count in groups.items():
                cls, place_name = CLASSES[y], PLACES[place]
                for n in range(count):
                    img_id += 1
                    image, k = make_image(sources[place_name], cls, size,
                                          image_rng(seed, split, y, place, n))
                    name = f"{CLASS_FOLDERS[y]}/{cls}_{img_id:05d}.png"
                    Image.fromarray(image).save(os.path.join(folder, name), compress_level=1)
                    writer.writerow([img_id, name, y, split, place,
                                     f"/{PLACE_SOURCES[place_name][k]}/{n:05d}"])
                bar.update(count)
    bar.close()


def generate(out: str, size: int = DEFAULT_SIZE, scale: float = DEFAULT_SCALE,
             seed: int = DEFAULT_SEED, progress: bool = True) -> str:
    """Write ``<out>/waterbird_complete95_forest2water2`` unless identical data is already
    there; return its path (safe from several processes at once: `generated.generate_once`)."""
    if size < 8 or not 0 < scale <= 1:
        raise ValueError(f"size must be >= 8 and scale in (0, 1] (got {size}, {scale})")
    return generated.generate_once(
        out, WATERBIRDS_FOLDER, marker_for(size, scale, seed),
        lambda folder: _write_folder(folder, size, scale, seed, progress), LABEL, MARKER)


def _check_existing(target: str, wanted: dict) -> None:
    generated.check_existing(target, wanted, LABEL, MARKER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help=f"folder that will hold {WATERBIRDS_FOLDER}/")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                        help="fraction of the real group counts (0 < scale <= 1)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    return generated.generator_main(
        parser, argv, lambda args: generate(args.out, args.size, args.scale, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())

