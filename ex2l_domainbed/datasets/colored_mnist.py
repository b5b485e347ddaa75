"""ColoredMNIST with the colour as its attribute, read from MNIST's files on disk.

The construction is upstream DomainBed's (the 70,000 train + test images pooled, shuffled
with a fixed seed, dealt out to "+90%", "+80%", "-90%"; 25% label noise; colour flips 0.1,
0.2, 0.9), written down with its seeds in `colour_digits`, which also holds the offline
stand-in ColoredDigitsLite. Environments yield (x, y, a), a the colour (0 red, 1 green).

The files are torchvision's on-disk layout, what ``torchvision.datasets.MNIST(root=D,
download=False)`` reads: ``D/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
(a file's ``.gz`` is read where the plain file is absent). ``--data_dir`` may name D,
``D/MNIST`` or ``D/MNIST/raw``. Get them with

    python -m domainbed.scripts.download --dataset mnist --data_dir D

The files are parsed as idx data (header checked, nothing executed); a missing or corrupt
file is a `ColoredMNISTDataError` naming it and that command.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from domainbed.lib.misc import UserInputError
from ex2l_domainbed.datasets.colour_digits import (
    ENVIRONMENTS,
    ColoredDigitsLite,
    ColouredDigitsBenchmark,
)

RAW_FOLDER = os.path.join("MNIST", "raw")  # torchvision.datasets.MNIST's, under its root
SPLIT_FILES = {  # torchvision's names: (images, labels) of the train and test splits
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # idx: unsigned bytes, 3 and 1 dimensions
IMAGE_SIDE = 28


class ColoredMNISTDataError(UserInputError):
    """MNIST's files are missing or unreadable; the message names the file and the fix."""


def download_command(root: str) -> str:
    return f"python -m domainbed.scripts.download --dataset mnist --data_dir {root}"


def _all_names() -> list[str]:
    return [name for pair in SPLIT_FILES.values() for name in pair]


def _has_files(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name + ext))
               for name in _all_names() for ext in ("", ".gz"))


def resolve_raw(data_dir: str) -> tuple[str, str]:
    """(the folder holding the idx files, the --data_dir to give the download command).

    --data_dir may name the folder holding MNIST/ (torchvision's root), MNIST/ or MNIST/raw/.
    """
    path = os.path.normpath(os.path.expanduser(str(data_dir)))
    nested = os.path.join(path, RAW_FOLDER)
    for raw in (nested, os.path.join(path, "raw"), path):
        if os.path.isdir(raw) and _has_files(raw):
            in_layout = (os.sep + raw).endswith(os.sep + RAW_FOLDER)
            return raw, (os.path.dirname(os.path.dirname(raw)) or ".") if in_layout else path
    if os.path.isdir(nested):  # the folder is there, every file is missing
        return nested, path
    raise ColoredMNISTDataError(
        f"MNIST not found at {data_dir!r}: expected torchvision's layout "
        f"{os.path.join(nested, SPLIT_FILES['train'][0])} (--data_dir may name the folder that "
        f"holds MNIST/, MNIST/ or MNIST/raw/). Download it with: {download_command(path)}")


def _read(raw: str, name: str, root: str) -> tuple[bytes, str]:
    """The bytes of `name` (or of `name`.gz) in `raw`, and the path read."""
    path = os.path.join(raw, name)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read(), path
    if os.path.isfile(path + ".gz"):
        try:
            with gzip.open(path + ".gz", "rb") as f:
                return f.read(), path + ".gz"
        except (OSError, EOFError, zlib.error) as exc:
            raise ColoredMNISTDataError(_corrupt(path + ".gz", f"not a readable gzip file: {exc}",
                                                 root)) from None
    raise ColoredMNISTDataError(
        f"MNIST file {path} is missing ({raw} needs {', '.join(_all_names())}). Download the "
        f"missing files with: {download_command(root)}")


def _corrupt(path: str, why: str, root: str) -> str:
    return (f"MNIST file {path} is corrupt ({why}); delete it and download it again with: "
            f"{download_command(root)}")


def read_idx(data: bytes, magic: int, path: str, root: str) -> np.ndarray:
    """An idx file's uint8 array, after checking its magic number and sizes."""
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ColoredMNISTDataError(_corrupt(path, f"{len(data)} bytes, shorter than its header",
                                             root))
    found, *dims = struct.unpack(f">{1 + ndim}i", data[:header])
    if found != magic:
        raise ColoredMNISTDataError(_corrupt(path, f"magic number {found}, expected {magic}", root))
    if ndim == 3 and tuple(dims[1:]) != (IMAGE_SIDE, IMAGE_SIDE):
        raise ColoredMNISTDataError(_corrupt(path, f"images of {dims[1]}x{dims[2]} pixels, "
                                                   f"expected {IMAGE_SIDE}x{IMAGE_SIDE}", root))
    size = int(np.prod(dims)) if min(dims) >= 0 else -1
    if len(data) - header != size:
        raise ColoredMNISTDataError(_corrupt(
            path, f"{len(data) - header} data bytes where its header announces {size}", root))
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's train then test images (uint8 [n, 28, 28]) and digits, pooled."""
    raw, root = resolve_raw(data_dir)
    images, digits = [], []
    for image_name, label_name in SPLIT_FILES.values():
        x, x_path = _read(raw, image_name, root)
        y, y_path = _read(raw, label_name, root)
        x = read_idx(x, IMAGES_MAGIC, x_path, root)
        y = read_idx(y, LABELS_MAGIC, y_path, root)
        if len(x) != len(y):
            raise ColoredMNISTDataError(_corrupt(
                y_path, f"{len(y)} labels for the {len(x)} images of {x_path}", root))
        if len(y) and y.max() > 9:
            raise ColoredMNISTDataError(_corrupt(y_path, f"label {int(y.max())}, not a digit 0-9",
                                                 root))
        images.append(x)
        digits.append(y.astype(np.int64))
    return np.concatenate(images), np.concatenate(digits)


class ColoredMNIST(ColouredDigitsBenchmark):
    """Upstream DomainBed's ColoredMNIST (5001 steps, checkpoint every 100), with the colour
    as its attribute and environments fixed by seed (see `colour_digits`)."""

    ENVIRONMENTS = ENVIRONMENTS
    N_STEPS = 5001
    CHECKPOINT_FREQ = 100

    def pooled_images(self, root) -> tuple[np.ndarray, np.ndarray]:
        if root is None or str(root) == "":
            raise ColoredMNISTDataError(
                "ColoredMNIST needs --data_dir, the folder that holds MNIST/raw/; get it with: "
                + download_command("D"))
        return read_mnist(root)


DATASETS: dict[str, type] = {"ColoredMNIST": ColoredMNIST, "ColoredDigitsLite": ColoredDigitsLite}
