"""Waterbirds and CelebA as subpopulation benchmarks, and Waterbirds-Lite, a generated stand-in.

Both real datasets come with fixed splits, mapped onto the environments ``["train", "val",
"test"]`` (split codes 0, 1, 2 in their files): train on environment 0, select on environment 1
(``VALIDATION_ENVS``, never trained on) and report environment 2, the only test environment
(``FIXED_TEST_ENVS``). Run them with ``--test_envs 2 --holdout_fraction 0``. Each environment
yields ``(x, y, a)`` and lists its ``samples`` as ``(path, y, a)``; a group is ``(y, a)``.

- ``Waterbirds`` (Sagawa et al., 2020): ``waterbird_complete95_forest2water2/metadata.csv`` with
  columns img_id, img_filename, y, split, place (y: landbird 0, waterbird 1; place = ``a``: land 0,
  water 1) and the images at ``img_filename`` below that folder. ``--data_dir`` names that folder
  or its parent.
- ``CelebA`` (Liu et al., 2015; the task of Sagawa et al.): ``[celeba/]img_align_celeba/*.jpg``,
  ``list_attr_celeba.txt`` and ``list_eval_partition.txt``; y = Blond_Hair, a = Male.
  ``--data_dir`` names the folder holding them or its parent holding ``celeba/``.
- ``WaterbirdsLite``: Waterbirds' loader on data made by ``waterbirds_lite`` (generated into
  ``--data_dir`` on first use), with 64-pixel images and the plugin's small CNN.

Every listed image must exist when the dataset is built (one directory listing per folder, so
the check costs no more than a few ``os.scandir`` calls even for CelebA's 202,599 files); images
are decoded only when indexed. Bad files raise ``SubpopDataError`` with one line naming the file
and the fix.
"""
from __future__ import annotations

import csv
import os
from typing import Callable, Iterable

from PIL import Image

from domainbed.datasets import MultipleDomainDataset
from domainbed.lib.misc import UserInputError
from ex2l_domainbed.backbones import LITE_CNN
from ex2l_domainbed.datasets import generated
from ex2l_domainbed.datasets.spawrious import SpawriousEnvironment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ["train", "val", "test"]  # split code = index = environment

WATERBIRDS_FOLDER = "waterbird_complete95_forest2water2"  # the folder the released archive holds
WATERBIRDS_METADATA = "metadata.csv"
WATERBIRDS_COLUMNS = ("img_id", "img_filename", "y", "split", "place")  # the real file adds
# place_filename; extra columns are allowed
WATERBIRDS_URL = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz"

CELEBA_FOLDER = "celeba"
CELEBA_IMAGES = "img_align_celeba"
CELEBA_ATTRIBUTES = "list_attr_celeba.txt"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_LABEL, CELEBA_GROUP = "Blond_Hair", "Male"
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"

Sample = tuple[str, int, int]  # (path, y, a)


class SubpopDataError(UserInputError):
    """Waterbirds or CelebA data on disk is missing, malformed or incomplete; the message says
    which file and how to fix it."""


# ----------------------------------------------------------------------------------------------
# Images and transforms


def load_image(path: str) -> Image.Image:
    """Decode ``path`` as RGB (as SubpopBench and Sagawa et al. do); an unreadable file raises
    SubpopDataError naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise SubpopDataError(f"image {path} is corrupt or unreadable ({type(exc).__name__}: "
                              f"{exc}); re-download the dataset (or that file).") from exc


def _normalize():
    from torchvision import transforms as T  # lazy: keeps importing this module cheap
    return [T.ToTensor(), T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]


def augment_transform(size: int, ratio: tuple[float, float]):
    """Sagawa et al.'s training augmentation: a random resized crop (70-100% of the area) and a
    horizontal flip."""
    from torchvision import transforms as T
    return T.Compose([T.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=ratio),
                      T.RandomHorizontalFlip(), *_normalize()])


def waterbirds_transforms(size: int = 224):
    """(train, eval) of Sagawa et al. (``cub_dataset.py``), also SubpopBench's eval: resize to a
    square 256/224 times the crop, centre-crop; training crops at random (ratio 3:4 to 4:3)."""
    from torchvision import transforms as T
    resized = size * 256 // 224
    evaluate = T.Compose([T.Resize((resized, resized)), T.CenterCrop(size), *_normalize()])
    return augment_transform(size, (0.75, 4 / 3)), evaluate


def celeba_transforms(size: int = 224):
    """(train, eval) of Sagawa et al. (``celebA_dataset.py``), also SubpopBench's eval: the
    central 178x178 square (CelebA's aligned images are 178 wide), resized; training crops at
    random with ratio 1 to 4:3 (the images are taller than wide)."""
    from torchvision import transforms as T
    evaluate = T.Compose([T.CenterCrop(178), T.Resize(size), *_normalize()])
    return augment_transform(size, (1.0, 4 / 3)), evaluate


class SubpopEnvironment(SpawriousEnvironment):
    """One split: ``samples`` is a list of (path, y, a); items are (x, y, a)."""

    load = staticmethod(lambda path: load_image(path))


# ----------------------------------------------------------------------------------------------
# The shared construction


def missing_files(paths: Iterable[str]) -> list[str]:
    """The paths that are not files, in order, from one directory listing per folder."""
    listed: dict[str, set[str] | None] = {}
    missing = []
    for path in paths:
        folder, name = os.path.split(path)
        if folder not in listed:
            try:
                with os.scandir(folder) as entries:
                    listed[folder] = {e.name for e in entries if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                listed[folder] = None
        names = listed[folder]
        if names is None or name not in names:
            missing.append(path)
    return missing


def _int_field(value: str, where: str, column: str, allowed: dict[int, str] | None,
               hint: str) -> int:
    """``value`` as an int (one of ``allowed``, whose values name them), else a one-line error."""
    try:
        number = int(value)
    except ValueError:
        raise SubpopDataError(f"{where}: {column} is {value!r}, not an integer; {hint}") from None
    if allowed is not None and number not in allowed:
        expected = ", ".join(f"{k} ({v})" for k, v in allowed.items())
        raise SubpopDataError(f"{where}: {column} is {number}, expected one of {expected}; {hint}")
    return number


def _relative_path(value: str, where: str, column: str, hint: str) -> str:
    """A listed file name, which must stay inside the dataset's folder."""
    parts = value.replace("\\", "/").split("/")
    if not value or os.path.isabs(value) or ".." in parts:
        raise SubpopDataError(f"{where}: {column} {value!r} is not a path inside the dataset's "
                              f"folder; {hint}")
    return value


class SubpopBenchmark(MultipleDomainDataset):
    """Fixed train / val / test splits as environments (see the module's docstring).

    A subclass provides ``prepare_root(root) -> folder`` (which may set ``self.image_size``),
    ``read_samples() -> list of (path, y, a, split)`` (checked rows, paths absolute),
    ``make_transforms() -> (train, eval)`` and ``fix_hint()`` (how to get complete data).
    """

    ENVIRONMENTS = SPLITS
    VALIDATION_ENVS = (1,)
    FIXED_TEST_ENVS = (2,)
    INPUT_SHAPE = (3, 224, 224)
    IMAGE_SIZE = 224
    CLASSES: list[str] = []
    ATTRIBUTES: list[str] = []
    num_classes = 2
    N_WORKERS = 8

    def __init__(self, root, test_envs, hparams):
        super().__init__()  # test_envs is ignored: the test split is fixed
        self.image_size = type(self).IMAGE_SIZE
        if root is None or str(root) == "":
            raise SubpopDataError(f"{self.label} needs --data_dir: the folder that holds its "
                                  f"data; {self.fix_hint()}")
        self.root = self.prepare_root(os.path.normpath(os.path.expanduser(str(root))))
        rows = self.read_samples()
        missing = missing_files(path for path, _, _, _ in rows)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise SubpopDataError(f"{missing[0]}{more} is listed by {self.label}'s files under "
                                  f"{self.root} but missing; {self.fix_hint()}")
        by_split: list[list[Sample]] = [[] for _ in SPLITS]
        for path, y, a, split in rows:
            by_split[split].append((path, y, a))
        for split, samples in enumerate(by_split):
            if not samples:
                raise SubpopDataError(f"{self.label}'s files under {self.root} list no image of "
                                      f"split {split} ({SPLITS[split]}); {self.fix_hint()}")
        self.input_shape = (3, self.image_size, self.image_size)
        self.num_classes = len(self.CLASSES)
        train, evaluate = self.make_transforms()
        augment = bool(hparams.get("data_augmentation", False))
        self.datasets = [SubpopEnvironment(samples, train if (i == 0 and augment) else evaluate)
                         for i, samples in enumerate(by_split)]

    @property
    def label(self) -> str:
        return type(self).__name__

    def prepare_root(self, root: str) -> str:
        raise NotImplementedError

    def read_samples(self) -> list[tuple[str, int, int, int]]:
        raise NotImplementedError

    def make_transforms(self):
        raise NotImplementedError

    def fix_hint(self) -> str:
        raise NotImplementedError


def _require_folder(root: str, label: str, hint: str) -> None:
    if not os.path.exists(root):
        raise SubpopDataError(f"{label} data not found: --data_dir {root} does not exist; {hint}")
    if not os.path.isdir(root):
        raise SubpopDataError(f"--data_dir {root} is a file, not a folder; {hint}")


# ----------------------------------------------------------------------------------------------
# Waterbirds


class Waterbirds(SubpopBenchmark):
    """Waterbirds (CUB birds pasted on Places backgrounds): y = bird type, a = place."""

    CLASSES = ["landbird", "waterbird"]
    ATTRIBUTES = ["land", "water"]
    # SubpopBench's Waterbirds: 5,001 steps (its default), a checkpoint every 300 steps.
    N_STEPS = 5001
    CHECKPOINT_FREQ = 300
    ENVIRONMENT_SIZES = (4795, 1199, 5794)  # the released splits (for cost estimates)

    def prepare_root(self, root: str) -> str:
        _require_folder(root, self.label, self.fix_hint())
        if os.path.isfile(os.path.join(root, WATERBIRDS_METADATA)):
            return root
        nested = os.path.join(root, WATERBIRDS_FOLDER)
        if os.path.isdir(nested):
            return nested
        raise SubpopDataError(
            f"{self.label} data not found under {root}: expected "
            f"{os.path.join(root, WATERBIRDS_FOLDER, WATERBIRDS_METADATA)} (--data_dir may name "
            f"{WATERBIRDS_FOLDER}/ or its parent); {self.fix_hint()}")

    def fix_hint(self) -> str:
        return (f"download {WATERBIRDS_URL} and unpack it into --data_dir (it holds "
                f"{WATERBIRDS_FOLDER}/{WATERBIRDS_METADATA} and the images).")

    def make_transforms(self):
        return waterbirds_transforms(self.image_size)

    def read_samples(self) -> list[tuple[str, int, int, int]]:
        path = os.path.join(self.root, WATERBIRDS_METADATA)
        hint = self.fix_hint()
        if not os.path.isfile(path):
            raise SubpopDataError(f"{path} is missing; {hint}")
        classes = dict(enumerate(self.CLASSES))
        places = dict(enumerate(self.ATTRIBUTES))
        splits = dict(enumerate(SPLITS))
        rows = []
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            absent = [c for c in WATERBIRDS_COLUMNS if c not in header]
            if absent:
                raise SubpopDataError(
                    f"{path}: the header line lacks the column(s) {', '.join(absent)} (expected "
                    f"{','.join(WATERBIRDS_COLUMNS)}, ...); {hint}")
            col = {c: header.index(c) for c in WATERBIRDS_COLUMNS}
            for line, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                where = f"{path} line {line}"
                if len(fields) != len(header):
                    raise SubpopDataError(f"{where} has {len(fields)} fields, the header has "
                                          f"{len(header)} ({','.join(header)}); {hint}")
                _int_field(fields[col["img_id"]], where, "img_id", None, hint)
                name = _relative_path(fields[col["img_filename"]], where, "img_filename", hint)
                y = _int_field(fields[col["y"]], where, "y", classes, hint)
                split = _int_field(fields[col["split"]], where, "split", splits, hint)
                a = _int_field(fields[col["place"]], where, "place", places, hint)
                rows.append((os.path.join(self.root, name), y, a, split))
        return rows


# ----------------------------------------------------------------------------------------------
# CelebA


class CelebA(SubpopBenchmark):
    """CelebA as in Sagawa et al.: y = Blond_Hair, a = Male."""

    CLASSES = ["not_blond", "blond"]
    ATTRIBUTES = ["female", "male"]
    # SubpopBench's CelebA: 30,001 steps, a checkpoint every 1,000 steps.
    N_STEPS = 30001
    CHECKPOINT_FREQ = 1000
    ENVIRONMENT_SIZES = (162770, 19867, 19962)  # list_eval_partition.txt (for cost estimates)

    def prepare_root(self, root: str) -> str:
        _require_folder(root, self.label, self.fix_hint())
        nested = os.path.join(root, CELEBA_FOLDER)
        if os.path.isdir(nested) and not os.path.exists(os.path.join(root, CELEBA_ATTRIBUTES)):
            root = nested
        for name in (CELEBA_ATTRIBUTES, CELEBA_PARTITION, CELEBA_IMAGES):
            if not os.path.exists(os.path.join(root, name)):
                raise SubpopDataError(
                    f"{os.path.join(root, name)} is missing (--data_dir may name the folder "
                    f"holding {CELEBA_IMAGES}/, {CELEBA_ATTRIBUTES} and {CELEBA_PARTITION}, or "
                    f"its parent holding {CELEBA_FOLDER}/); {self.fix_hint()}")
        return root

    def fix_hint(self) -> str:
        return (f"download {CELEBA_IMAGES}.zip (unzipped), {CELEBA_ATTRIBUTES} and "
                f"{CELEBA_PARTITION} from {CELEBA_URL} into one folder.")

    def make_transforms(self):
        return celeba_transforms(self.image_size)

    def read_samples(self) -> list[tuple[str, int, int, int]]:
        attributes = self._read_attributes(os.path.join(self.root, CELEBA_ATTRIBUTES))
        partition = self._read_partition(os.path.join(self.root, CELEBA_PARTITION))
        unsplit = [name for name in attributes if name not in partition]
        unlabelled = [name for name in partition if name not in attributes]
        for names, lacking, listing in ((unsplit, CELEBA_PARTITION, CELEBA_ATTRIBUTES),
                                        (unlabelled, CELEBA_ATTRIBUTES, CELEBA_PARTITION)):
            if names:
                more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
                raise SubpopDataError(
                    f"{names[0]}{more} is listed in {os.path.join(self.root, listing)} but not "
                    f"in {os.path.join(self.root, lacking)}; {self.fix_hint()}")
        folder = os.path.join(self.root, CELEBA_IMAGES)
        return [(os.path.join(folder, name), y, a, partition[name])
                for name, (y, a) in attributes.items()]

    def _read_attributes(self, path: str) -> dict[str, tuple[int, int]]:
        """image -> (y, a) from the attribute file: a count, the 40 names, then a row each."""
        hint = self.fix_hint()
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        if len(lines) < 2:
            raise SubpopDataError(f"{path} has {len(lines)} line(s); it should start with the "
                                  f"image count and the attribute names; {hint}")
        count = _int_field(lines[0].strip(), f"{path} line 1", "the image count", None, hint)
        names = lines[1].split()
        for wanted in (CELEBA_LABEL, CELEBA_GROUP):
            if wanted not in names:
                raise SubpopDataError(f"{path} line 2 (the attribute names) lacks {wanted}; {hint}")
        iy, ia = names.index(CELEBA_LABEL), names.index(CELEBA_GROUP)
        signs = {1: "yes", -1: "no"}
        out: dict[str, tuple[int, int]] = {}
        for line, text in enumerate(lines[2:], start=3):
            fields = text.split()
            if not fields:
                continue
            where = f"{path} line {line}"
            if len(fields) != len(names) + 1:
                raise SubpopDataError(f"{where} has {len(fields)} fields, expected {len(names) + 1}"
                                      f" (an image name and {len(names)} attributes); {hint}")
            name = _relative_path(fields[0], where, "the image name", hint)
            values = [_int_field(v, where, n, signs, hint) for n, v in zip(names, fields[1:])]
            out[name] = (int(values[iy] == 1), int(values[ia] == 1))
        if count != len(out):
            raise SubpopDataError(f"{path} line 1 says {count} images but {len(out)} rows follow; "
                                  f"{hint}")
        return out

    def _read_partition(self, path: str) -> dict[str, int]:
        hint = self.fix_hint()
        splits = dict(enumerate(SPLITS))
        out: dict[str, int] = {}
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                fields = text.split()
                if not fields:
                    continue
                where = f"{path} line {line}"
                if len(fields) != 2:
                    raise SubpopDataError(f"{where} has {len(fields)} fields, expected 2 (an image "
                                          f"name and its split); {hint}")
                out[fields[0]] = _int_field(fields[1], where, "split", splits, hint)
        return out


# ----------------------------------------------------------------------------------------------
# Waterbirds-Lite: the real loader on generated data


class WaterbirdsLite(Waterbirds):
    """Waterbirds' loader on Waterbirds-Lite data (``waterbirds_lite``), generated into
    --data_dir on first use; the image size comes from the data's marker file."""

    IMAGE_SIZE = 64
    INPUT_SHAPE = (3, 64, 64)
    FEATURIZER = LITE_CNN  # low-resolution images: the plugin's small CNN, not a ResNet
    N_WORKERS = 0  # 64x64 PNGs decode in ~0.1 ms; worker processes would cost more
    N_STEPS = 600  # Lite's calibration (see waterbirds_lite_hparams)
    CHECKPOINT_FREQ = 100

    def prepare_root(self, root: str) -> str:
        from ex2l_domainbed.datasets import waterbirds_lite

        folder = generated.locate_or_generate(
            root, WATERBIRDS_FOLDER, lambda: waterbirds_lite.generate(root, size=self.IMAGE_SIZE),
            "Waterbirds-Lite", SubpopDataError)
        marker = waterbirds_lite.read_marker(folder)
        if marker is None:
            raise SubpopDataError(
                f"{folder} is not Waterbirds-Lite data (no {waterbirds_lite.MARKER}); it may be "
                f"real Waterbirds. Give {self.label} its own --data_dir (it is generated there on "
                "first use), or use the dataset Waterbirds for real data.")
        self.image_size = int(marker["size"])
        return folder

    def fix_hint(self) -> str:
        if not hasattr(self, "root"):  # no --data_dir yet
            return "e.g. --data_dir data/waterbirds_lite (generated there on first use)."
        parent = os.path.dirname(self.root)
        return (f"remove {self.root} and run python -m ex2l_domainbed.datasets.waterbirds_lite "
                f"--out {parent}")

    def make_transforms(self):
        """The images are generated at their final size: evaluation only normalises (no
        resize-and-crop, which would cut off silhouettes at the border); augmentation, when
        asked for, is Waterbirds' own."""
        from torchvision import transforms as T
        return waterbirds_transforms(self.image_size)[0], T.Compose(_normalize())


LITE_NAMES = ("WaterbirdsLite",)


def waterbirds_lite_hparams(algorithm: str, dataset: str,
                            define: Callable[..., None]) -> None:
    """Waterbirds-Lite's calibrated defaults (hparams-registry hook): Spawrious-Lite's recipe,
    the pretrained Lite backbone with its first 3 blocks frozen, lr 1e-3, batch 32, no
    augmentation; ``benchmarks/waterbirds_baselines.py`` guards the calibration."""
    if dataset in LITE_NAMES:
        from ex2l_domainbed.datasets.spawrious_lite import define_lite_recipe
        define_lite_recipe(define)


DATASETS: dict[str, type[SubpopBenchmark]] = {
    cls.__name__: cls for cls in (Waterbirds, CelebA, WaterbirdsLite)}

