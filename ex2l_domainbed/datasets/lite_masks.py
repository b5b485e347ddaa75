"""Foreground masks of Spawrious-Lite images: where the dog (the silhouette) is.

Every Lite image is drawn from its own random generator, keyed by (seed, pool, location,
class, n), so its foreground alpha can be regenerated exactly from the file's path and the
data's marker file; nothing extra needs to be stored in the Spawrious layout. The masks let
one ask whether a Grad-CAM map sits on the object or on the background.

    python -m ex2l_domainbed.datasets.lite_masks --data_dir data/spawrious_lite
    # -> data/spawrious_lite/spawrious224_masks.npz: relative path -> uint8 alpha (0..255)
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys

import numpy as np

from ex2l_domainbed.datasets import spawrious_lite
from ex2l_domainbed.datasets.spawrious import TREE_FOLDER

NAME = re.compile(r"^(?P<location>[a-z]+)_(?P<cls>[a-z]+)_(?P<n>\d+)\.png$")
MASKS_FILE = "spawrious224_masks.npz"


class NotALiteImage(ValueError):
    """A path that is not an image of a Spawrious-Lite tree."""


def parse_image_path(path: str) -> tuple[str, str, str, str, int]:
    """`(tree, pool, location, class, n)` of `<tree>/<pool>/<location>/<class>/<loc>_<cls>_<n>.png`."""
    path = os.path.abspath(path)
    cls_dir, filename = os.path.split(path)
    loc_dir, cls = os.path.split(cls_dir)
    pool_dir, location = os.path.split(loc_dir)
    tree, pool = os.path.split(pool_dir)
    match = NAME.match(filename)
    if (match is None or match["location"] != location or match["cls"] != cls
            or pool not in spawrious_lite.POOLS):
        raise NotALiteImage(f"{path} is not a Spawrious-Lite image path "
                            "(<tree>/<pool>/<location>/<class>/<location>_<class>_<n>.png)")
    return tree, pool, location, cls, int(match["n"])


@functools.lru_cache(maxsize=None)
def _source(location: str) -> np.ndarray:
    return spawrious_lite.load_source(spawrious_lite.LOCATION_SOURCES[location])


@functools.lru_cache(maxsize=16)
def _marker(tree: str) -> dict:
    marker = spawrious_lite.read_marker(tree)
    if marker is None:
        raise NotALiteImage(f"{tree} has no {spawrious_lite.MARKER}: not Spawrious-Lite data")
    return marker


def regenerate(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The image (HxWx3 uint8) and its foreground alpha (HxW float32 in [0, 1]) at `path`."""
    tree, pool, location, cls, n = parse_image_path(path)
    marker = _marker(tree)
    rng = spawrious_lite.image_rng(int(marker["seed"]), pool, location, cls, n)
    return spawrious_lite.make_image(_source(location), cls, int(marker["size"]), rng)


def foreground_mask(path: str) -> np.ndarray:
    """The foreground alpha (HxW float32 in [0, 1]) of the Lite image at `path`."""
    return regenerate(path)[1]


def write_masks(data_dir: str, out: str | None = None) -> str:
    """Write every image's mask to an .npz side file next to the tree; return its path."""
    tree = os.path.join(data_dir, TREE_FOLDER)
    _marker(tree)
    masks = {}
    for pool, location, cls in spawrious_lite.cells():
        folder = os.path.join(tree, pool, location, cls)
        for name in sorted(os.listdir(folder)):
            rel = os.path.join(pool, location, cls, name)
            masks[rel] = np.round(foreground_mask(os.path.join(folder, name)) * 255).astype(np.uint8)
    out = out or os.path.join(data_dir, MASKS_FILE)
    tmp = out + ".tmp.npz"
    np.savez_compressed(tmp, **masks)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="folder holding spawrious224/ (Lite)")
    parser.add_argument("--out", default=None, help=f"default: <data_dir>/{MASKS_FILE}")
    args = parser.parse_args(argv)
    try:
        print(write_masks(args.data_dir, args.out))
    except (NotALiteImage, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
