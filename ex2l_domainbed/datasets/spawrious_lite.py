"""Spawrious-Lite: a generated, low-resolution Spawrious in the real directory layout.

Four silhouettes (one per Spawrious class), in random colours, are painted on random
grey-scale crops of six real photographs and textures shipped inside scikit-image (one
source per location), and
written as `<out>/spawrious224/{0,1}/<location>/<class>/<location>_<class>_<n>.png`,
so the real Spawrious loading code and challenge tables run unchanged on it.

    python -m ex2l_domainbed.datasets.spawrious_lite --out DIR [--size 64] [--per_cell 400]

Generation is deterministic: every image draws from its own generator seeded with
(seed, pool, location, class, n), so the same arguments give the same bytes. The tree is
written to a temporary folder and renamed into place when complete, with a marker file
(`spawrious_lite.json`) recording the arguments; a half-written tree is never used.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Iterator, Sequence

import numpy as np

from ex2l_domainbed.backbones import LITE_CNN, LiteCNN
from ex2l_domainbed.datasets import generated, shapes
from ex2l_domainbed.datasets.spawrious import (
    CLASSES,
    LOCATIONS,
    POOLS,
    TREE_FOLDER,
    SpawriousBenchmark,
    SpawriousDataError,
    SpawriousM2M_easy,
    SpawriousM2M_hard,
    SpawriousM2M_medium,
    SpawriousO2O_easy,
    SpawriousO2O_hard,
    SpawriousO2O_medium,
)

# One scikit-image picture per location (all load offline from the wheel).
LOCATION_SOURCES = {
    "dirt": "gravel",
    "jungle": "grass",
    "snow": "brick",
    "beach": "immunohistochemistry",
    "desert": "chelsea",
    "mountain": "rocket",
}

DEFAULT_SIZE = 64
DEFAULT_PER_CELL = 400
DEFAULT_SEED = 0
MARKER = "spawrious_lite.json"
LABEL = "Spawrious-Lite"
GENERATOR_VERSION = 1
RADIUS_AT_64 = (10.0, 16.0)  # foreground radius range in pixels at 64x64


def load_source(name: str) -> np.ndarray:
    """A scikit-image sample picture in grey (luma, repeated to HxWx3 uint8).

    Backgrounds carry texture but no colour: with the two colour photographs left in colour,
    "colour or grey" alone told the location groups apart and became the shortcut (the
    calibration history in docs/spawrious.md has the numbers).
    """
    import skimage.data

    return shapes.as_gray_rgb_uint8(getattr(skimage.data, name)())


def image_rng(seed: int, pool: str, location: str, cls: str, n: int) -> np.random.Generator:
    return np.random.default_rng(
        [seed, POOLS.index(pool), LOCATIONS.index(location), CLASSES.index(cls), n]
    )


def make_image(source: np.ndarray, cls: str, size: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """One Lite image (HxWx3 uint8) and its foreground alpha (HxW float32)."""
    background = shapes.random_crop(source, size, rng)
    scale = size / 64.0
    radius = (RADIUS_AT_64[0] * scale, RADIUS_AT_64[1] * scale)
    alpha = shapes.rasterize(shapes.LITE_SHAPES[cls], size, rng, radius,
                             shapes.BOUNDS.get(cls, 1.0))
    return shapes.to_uint8(shapes.compose(background, alpha, rng)), alpha


def cells(pools: Sequence[str] = POOLS) -> Iterator[tuple[str, str, str]]:
    for pool in pools:
        for location in LOCATIONS:
            for cls in CLASSES:
                yield pool, location, cls


def marker_for(size: int, per_cell: int, seed: int) -> dict:
    return {
        "generator": "ex2l_domainbed.datasets.spawrious_lite",
        "version": GENERATOR_VERSION,
        "size": size,
        "per_cell": per_cell,
        "seed": seed,
        "pools": POOLS,
        "sources": LOCATION_SOURCES,
        "backgrounds": "grey",
    }


def read_marker(spawrious224: str) -> dict | None:
    return generated.read_marker(spawrious224, MARKER)


def _write_tree(root: str, size: int, per_cell: int, seed: int, progress: bool) -> None:
    from PIL import Image
    from tqdm import tqdm

    sources = {loc: load_source(name) for loc, name in LOCATION_SOURCES.items()}
    total = len(POOLS) * len(LOCATIONS) * len(CLASSES) * per_cell
    bar = tqdm(total=total, desc="Spawrious-Lite", unit="img", disable=not progress,
               file=sys.stderr, mininterval=1.0)
    for pool, location, cls in cells():
        folder = os.path.join(root, pool, location, cls)
        os.makedirs(folder)
        for n in range(per_cell):
            rng = image_rng(seed, pool, location, cls, n)
            image, _ = make_image(sources[location], cls, size, rng)
            Image.fromarray(image).save(
                os.path.join(folder, f"{location}_{cls}_{n}.png"), compress_level=6)
        bar.update(per_cell)
    bar.close()


def generate(out: str, size: int = DEFAULT_SIZE, per_cell: int = DEFAULT_PER_CELL,
             seed: int = DEFAULT_SEED, progress: bool = True) -> str:
    """Write `<out>/spawrious224` unless an identical tree is already there; return its path
    (safe from several processes at once: `generated.generate_once`)."""
    if size < 8 or per_cell < 1:
        raise ValueError(f"size must be >= 8 and per_cell >= 1 (got {size}, {per_cell})")
    return generated.generate_once(
        out, TREE_FOLDER, marker_for(size, per_cell, seed),
        lambda tree: _write_tree(tree, size, per_cell, seed, progress), LABEL, MARKER)


def _check_existing(target: str, wanted: dict) -> None:
    generated.check_existing(target, wanted, LABEL, MARKER)


# ----------------------------------------------------------------------------------------------
# The six Lite datasets: the real loader and challenge tables on generated data


class SpawriousLiteBenchmark(SpawriousBenchmark):
    """A Spawrious challenge on Spawrious-Lite data (generated into --data_dir when absent).

    Image size and per-cell count come from the data's marker file (IMAGE_SIZE and
    BASE_COUNT are only what first-use generation makes). Training length and the backbone
    recipe are part of Lite's calibration (see `lite_hparams`).
    """

    N_STEPS = 600
    CHECKPOINT_FREQ = 100
    N_WORKERS = 0  # 64x64 PNGs decode in ~0.1 ms; worker processes would cost more
    FEATURIZER = LITE_CNN  # low-resolution images: the plugin's small CNN, not a ResNet
    IMAGE_SIZE = DEFAULT_SIZE
    BASE_COUNT = DEFAULT_PER_CELL

    def prepare_root(self, root) -> str:
        root = os.path.normpath(os.path.expanduser(str(root)))
        tree = generated.locate_or_generate(
            root, TREE_FOLDER,
            lambda: generate(root, size=self.IMAGE_SIZE, per_cell=self.BASE_COUNT),
            "Spawrious-Lite", SpawriousDataError)
        marker = read_marker(tree)
        if marker is None:
            raise SpawriousDataError(
                f"{tree} is not Spawrious-Lite data (no {MARKER}); it may be real Spawrious. "
                f"Give {self.dataset_label} its own --data_dir (it is generated there on first "
                "use), or point the Spawrious* datasets at real data.")
        self.base_count = int(marker["per_cell"])
        self.image_size = int(marker["size"])
        return tree

    def fix_hint(self) -> str:
        parent = os.path.dirname(self.root)
        return (f"remove {self.root} and run python -m ex2l_domainbed.datasets.spawrious_lite "
                f"--out {parent}")


class SpawriousLiteO2O_easy(SpawriousLiteBenchmark):
    """SpawriousO2O_easy's challenge table on Spawrious-Lite data."""
    CHALLENGE = SpawriousO2O_easy.CHALLENGE


class SpawriousLiteO2O_medium(SpawriousLiteBenchmark):
    """SpawriousO2O_medium's challenge table on Spawrious-Lite data."""
    CHALLENGE = SpawriousO2O_medium.CHALLENGE


class SpawriousLiteO2O_hard(SpawriousLiteBenchmark):
    """SpawriousO2O_hard's challenge table on Spawrious-Lite data."""
    CHALLENGE = SpawriousO2O_hard.CHALLENGE


class SpawriousLiteM2M_easy(SpawriousLiteBenchmark):
    """SpawriousM2M_easy's challenge table on Spawrious-Lite data."""
    CHALLENGE = SpawriousM2M_easy.CHALLENGE


class SpawriousLiteM2M_medium(SpawriousLiteBenchmark):
    """SpawriousM2M_medium's challenge table on Spawrious-Lite data."""
    CHALLENGE = SpawriousM2M_medium.CHALLENGE


class SpawriousLiteM2M_hard(SpawriousLiteBenchmark):
    """SpawriousM2M_hard's challenge table on Spawrious-Lite data."""
    CHALLENGE = SpawriousM2M_hard.CHALLENGE


# In the order of SPAWRIOUS_DATASETS (the test checks the pairing).
LITE_DATASETS: dict[str, type[SpawriousLiteBenchmark]] = {
    cls.__name__: cls for cls in (
        SpawriousLiteO2O_easy, SpawriousLiteO2O_medium, SpawriousLiteO2O_hard,
        SpawriousLiteM2M_easy, SpawriousLiteM2M_medium, SpawriousLiteM2M_hard)
}


def lite_hparams(algorithm: str, dataset: str, define) -> None:
    """Lite's calibrated defaults (hparams-registry hook).

    The pretrained backbone with its first 3 blocks frozen, lr 1e-3 and 600 steps put ERM
    in Spawrious' regime (high training-domain accuracy, a large worst-group gap);
    `benchmarks/lite_baselines.py` guards this calibration (docs/spawrious.md).
    """
    if dataset in LITE_DATASETS:
        define_lite_recipe(define)


def define_lite_recipe(define) -> None:
    """The recipe of the Lite stand-ins (Spawrious-Lite, WaterbirdsLite): their backbone,
    pretrained, its first 3 blocks frozen, no augmentation, lr 1e-3, batch 32."""
    from ex2l_domainbed.datasets.lite_backbone import DEFAULT_PATH

    define("pretrained_path", DEFAULT_PATH, lambda r: DEFAULT_PATH, replace=True)
    define("lite_freeze_blocks", 3, lambda r: 3, low=0, high=len(LiteCNN.WIDTHS))
    define("data_augmentation", False, lambda r: False, replace=True)
    define("lr", 1e-3, lambda r: 10 ** r.uniform(-3.5, -2.5), replace=True)
    define("weight_decay", 0.0, lambda r: 10 ** r.uniform(-6, -3), replace=True)
    define("batch_size", 32, lambda r: int(2 ** r.uniform(4, 6)), replace=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder that will hold spawrious224/")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    parser.add_argument("--per_cell", type=int, default=DEFAULT_PER_CELL,
                        help="images per (pool, location, class) cell")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    return generated.generator_main(
        parser, argv, lambda args: generate(args.out, args.size, args.per_cell, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())
