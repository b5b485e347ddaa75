"""The six Spawrious challenges (O2O/M2M x easy/medium/hard) as attribute-aware DomainBed datasets.

Layout on disk (the released archives): ``<data_dir>/spawrious224/<pool>/<location>/<class>/*.png``
with pool folders ``0`` and ``1``. ``--data_dir`` may name the ``spawrious224`` folder itself
(upstream DomainBed's convention) or its parent (every other DomainBed dataset's convention).

Environments are ``["Test", "SC_group_1", "SC_group_2"]``: environment 0 is the out-of-distribution
test set, so train with ``--test_envs 0``. Each environment yields ``(x, y, a)``: the image tensor, the
class id (index in ``CLASSES``, alphabetical) and the location id (index in ``LOCATIONS``, which is
*not* alphabetical: desert, jungle, dirt, mountain, snow, beach). A group is ``(y, a)``.

Which images each environment holds follows the authors' code (upstream DomainBed and the
``spawrious`` pip package), with base count ``T = 3168`` images per (pool, location, class) cell:

- O2O: training environment k (k = 0, 1 -> environment k + 1) reads pool folder ``k``; each class
  takes ``int(0.97 T)`` (env 1) or ``int(0.87 T)`` (env 2) images from its spurious location and
  ``T`` minus that from the shared filler location. The test environment holds every image of each
  class's test location, from both pools.
- M2M: pool ``0`` only, ``T`` images per class and training environment, with the two classes of
  each class group swapping backgrounds between the environments; the test environment holds every
  image of the two test locations of each class.

Deliberate differences from the authors' loaders:

- Files are taken in natural order of their names (``x_2.png`` before ``x_10.png``), not in the
  filesystem-dependent ``os.listdir`` order, so the same images are selected on every machine.
- A cell with fewer images than its limit, a missing folder, an unreadable image or a non-RGB image
  is an error (``SpawriousDataError``) at construction time, instead of a silently smaller
  environment or a crash mid-training.
- Environments also yield the location id ``a`` (upstream DomainBed yields only ``(x, y)``).

Known discrepancy, paper vs code (aengusl/spawrious issue #2): the paper's description of M2M-Hard
has no bulldog on dirt, yet the code's ``m2m_hard`` trains bulldog on dirt; a third-party
re-implementation calls "M2M-Hard" what the code names ``m2m_medium``. We match the code for all six
names (the tables in ``CHALLENGES``), as the authors' own experiment fork does.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image
from torch.utils.data import Dataset

from domainbed.datasets import MultipleDomainDataset
from domainbed.lib.misc import UserInputError

CLASSES = ["bulldog", "corgi", "dachshund", "labrador"]  # label id = index
LOCATIONS = ["desert", "jungle", "dirt", "mountain", "snow", "beach"]  # attribute id = index
# The order of class rows in an environment, and of positions in the challenge lists.
CLASS_BLOCK_ORDER = ["bulldog", "dachshund", "labrador", "corgi"]
BASE_COUNT = 3168
TREE_FOLDER = "spawrious224"  # the folder the released archives unpack to
POOLS = ["0", "1"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # lower case only, as the authors' loaders

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_HEADER_CHECK_THREADS = 16


class SpawriousDataError(UserInputError):
    """The Spawrious data on disk is missing, incomplete or unreadable; the message says how to fix it."""


@dataclass(frozen=True)
class Challenge:
    """One challenge's specification lists, positions in ``CLASS_BLOCK_ORDER``.

    ``kind`` is "o2o" or "m2m". O2O: ``group[c]`` is class c's spurious location, ``test[c]`` its test
    location, ``filler`` the shared filler location. M2M: ``group`` is (g0, g1, g2, g3), ``test`` is
    (t0, t1, t2, t3), ``filler`` is None.
    """

    kind: str
    group: tuple[str, ...]
    test: tuple[str, ...]
    filler: str | None


@dataclass(frozen=True)
class Cell:
    """Images of one (pool, location, class) folder; ``limit`` None means every image."""

    pool: str
    location: str
    cls: str
    limit: int | None


CHALLENGES: dict[str, Challenge] = {
    "o2o_easy": Challenge("o2o", ("desert", "jungle", "dirt", "snow"),
                          ("dirt", "snow", "desert", "jungle"), "beach"),
    "o2o_medium": Challenge("o2o", ("mountain", "beach", "dirt", "jungle"),
                            ("jungle", "dirt", "beach", "snow"), "desert"),
    "o2o_hard": Challenge("o2o", ("jungle", "mountain", "snow", "desert"),
                          ("mountain", "snow", "desert", "jungle"), "beach"),
    "m2m_easy": Challenge("m2m", ("desert", "mountain", "dirt", "jungle"),
                          ("dirt", "jungle", "mountain", "desert"), None),
    "m2m_medium": Challenge("m2m", ("beach", "snow", "mountain", "desert"),
                            ("desert", "mountain", "beach", "snow"), None),
    "m2m_hard": Challenge("m2m", ("dirt", "jungle", "snow", "beach"),
                          ("snow", "beach", "dirt", "jungle"), None),
}

# M2M: for each class, its own position in CLASS_BLOCK_ORDER, then its class-group partner's
# (bulldog-dachshund, labrador-corgi). Both the group and the test lists are indexed by these:
# training env k takes the class's background from group[positions[k]], the test env takes both
# test[positions[0]] and test[positions[1]], so the partners swap backgrounds between envs.
_M2M_OWN_THEN_PARTNER = {
    "bulldog": (0, 1), "dachshund": (1, 0), "labrador": (2, 3), "corgi": (3, 2)}


def o2o_counts(base_count: int) -> list[int]:
    """Spurious images per class in O2O training envs 1 and 2: ``[int(0.97 T), int(0.87 T)]``.

    Integer arithmetic; equal to the authors' float expression for every T up to 200,000.
    """
    return [base_count * 97 // 100, base_count * 87 // 100]


def challenge_cells(challenge_name: str, base_count: int = BASE_COUNT) -> list[list[Cell]]:
    """The cells of each environment (0 = Test, 1 = SC_group_1, 2 = SC_group_2), in row order."""
    try:
        spec = CHALLENGES[challenge_name]
    except KeyError:
        raise ValueError(f"Unknown Spawrious challenge {challenge_name!r}; "
                         f"known: {', '.join(CHALLENGES)}") from None
    pos = {c: i for i, c in enumerate(CLASS_BLOCK_ORDER)}
    if spec.kind == "o2o":
        counts = o2o_counts(base_count)
        test = [Cell(pool, spec.test[pos[c]], c, None)
                for c in CLASS_BLOCK_ORDER for pool in POOLS]
        train = []
        for k, count in enumerate(counts):
            cells = [Cell(POOLS[k], spec.group[pos[c]], c, count) for c in CLASS_BLOCK_ORDER]
            cells += [Cell(POOLS[k], spec.filler, c, base_count - count) for c in CLASS_BLOCK_ORDER]
            train.append(cells)
        return [test] + train
    if spec.kind == "m2m":
        positions = _M2M_OWN_THEN_PARTNER
        test = [Cell("0", spec.test[t], c, None) for c in CLASS_BLOCK_ORDER for t in positions[c]]
        train = [[Cell("0", spec.group[positions[c][k]], c, base_count) for c in CLASS_BLOCK_ORDER]
                 for k in range(2)]
        return [test] + train
    raise ValueError(f"Unknown challenge kind {spec.kind!r}")


# ----------------------------------------------------------------------------------------------
# Files on disk

def download_hint(data_dir: str) -> str:
    return f"python -m domainbed.scripts.download --dataset spawrious --data_dir {data_dir}"


def resolve_root(data_dir: str) -> str:
    """The ``spawrious224`` folder, given either that folder or its parent (trailing slash allowed).

    The folder itself is recognised by a pool folder ``0`` or ``1`` inside it.
    """
    path = os.path.normpath(os.path.expanduser(str(data_dir)))
    if any(os.path.isdir(os.path.join(path, pool)) for pool in POOLS):
        return path
    nested = os.path.join(path, TREE_FOLDER)
    if os.path.isdir(nested):
        return nested
    raise SpawriousDataError(
        f"Spawrious data not found at {data_dir!r}: expected images at "
        f"{os.path.join(path, 'spawrious224', '0', '<location>', '<class>', '*.png')} "
        f"(--data_dir may name the folder that holds spawrious224/ or spawrious224/ itself). "
        f"Download it with: {download_hint(path)}")


def _natural_key(name: str):
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def list_images(folder: str) -> list[str]:
    """File names in ``folder`` ending in .png, .jpg or .jpeg (lower case), in natural order.

    Natural order compares digit runs as numbers (``x_2.png`` before ``x_10.png``), ties broken by
    the full name, so the first ``limit`` files are the same on every machine (the authors' loaders
    use unsorted ``os.listdir`` order, which depends on the filesystem). Other files are ignored.
    """
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.name.endswith(IMAGE_EXTENSIONS) and e.is_file()]
    return sorted(names, key=_natural_key)


def _corrupt_message(path: str, exc: BaseException) -> str:
    return (f"Spawrious image {path} is corrupt or unreadable ({type(exc).__name__}: {exc}). "
            f"Re-download the dataset (or that file) to fix it.")


def _mode_message(path: str, mode: str) -> str:
    return (f"Spawrious image {path} has mode {mode!r}, but the loader expects RGB images. "
            f"Re-download the dataset, or convert the file to RGB (e.g. "
            f"PIL.Image.open(p).convert('RGB').save(p)).")


def _header_problem(path: str) -> str | None:
    """None when ``path`` opens as an RGB image (header only, nothing decoded), else a message."""
    try:
        with Image.open(path) as im:
            mode = im.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return _corrupt_message(path, exc)
    if mode != "RGB":
        return _mode_message(path, mode)
    return None


def load_rgb_image(path: str) -> Image.Image:
    """Decode ``path``; an unreadable file or a non-RGB image raises SpawriousDataError naming it."""
    try:
        im = Image.open(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise SpawriousDataError(_corrupt_message(path, exc)) from exc
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        im.close()
        raise SpawriousDataError(_corrupt_message(path, exc)) from exc
    if im.mode != "RGB":
        im.close()
        raise SpawriousDataError(_mode_message(path, im.mode))
    return im


def build_transforms(image_size: int):
    """(train, eval) transforms of the authors' DomainBed classes, resizing to image_size."""
    from torchvision import transforms as T  # lazy: keeps importing this module cheap

    size = (image_size, image_size)
    normalize = T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    train = T.Compose([
        T.Resize(size),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.3, 0.3, 0.3, 0.3),
        T.RandomGrayscale(),
        T.ToTensor(),
        normalize,
    ])
    evaluate = T.Compose([T.Resize(size), T.ToTensor(), normalize])
    return train, evaluate


class SpawriousEnvironment(Dataset):
    """One environment: ``samples`` is a list of (path, class_id, location_id); items are (x, y, a).

    Images are read by ``load`` (a subclass may name its own reader and errors).
    """

    load = staticmethod(lambda path: load_rgb_image(path))

    def __init__(self, samples: list[tuple[str, int, int]], transform=None):
        super().__init__()
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, y, a = self.samples[index]
        image = self.load(path)
        try:
            x = self.transform(image) if self.transform is not None else image
        finally:
            if self.transform is not None:
                image.close()
        return x, y, a


# ----------------------------------------------------------------------------------------------
# Datasets

class SpawriousBenchmark(MultipleDomainDataset):
    """Base class of the six challenges; a subclass sets ``CHALLENGE`` (a key of ``CHALLENGES``).

    Construction steps a subclass may override or configure:

    - ``prepare_root(root) -> str``: turn ``--data_dir`` into the ``spawrious224`` folder (default:
      ``resolve_root``). It may also set ``self.base_count`` and ``self.image_size`` (initialised
      from ``BASE_COUNT`` and ``IMAGE_SIZE`` before it runs), e.g. from a metadata file.
    - ``environment_cells() -> list[list[Cell]]``: the cells of each environment.
    - ``make_transforms() -> (train, eval)``.
    - ``DATASET_LABEL``: the name used in error messages (default: the class name).
    """

    ENVIRONMENTS = ["Test", "SC_group_1", "SC_group_2"]
    ATTRIBUTES = LOCATIONS
    CLASSES = CLASSES
    num_classes = 4
    CHALLENGE: str | None = None
    BASE_COUNT = BASE_COUNT
    IMAGE_SIZE = 224
    DATASET_LABEL: str | None = None

    def __init__(self, root, test_envs, hparams):
        super().__init__()  # test_envs is ignored, as upstream
        self.base_count = type(self).BASE_COUNT
        self.image_size = type(self).IMAGE_SIZE
        if root is None or str(root) == "":  # train.py's --data_dir has no default
            raise SpawriousDataError(
                f"{self.dataset_label} needs --data_dir: the folder that holds (or, for "
                "Spawrious-Lite, will hold) spawrious224/, e.g. --data_dir data/spawrious_lite.")
        self.root = self.prepare_root(root)
        size = self.image_size
        self.input_shape = (3, size, size)
        self.num_classes = len(self.CLASSES)

        env_samples = self.collect_samples(self.environment_cells())
        self.check_image_headers([path for samples in env_samples for path, _, _ in samples])

        train_transform, eval_transform = self.make_transforms()
        augment = bool(hparams.get("data_augmentation", False))
        self.datasets = [
            SpawriousEnvironment(samples, train_transform if (i > 0 and augment) else eval_transform)
            for i, samples in enumerate(env_samples)]

    # -- steps a subclass may override ---------------------------------------------------------
    @property
    def dataset_label(self) -> str:
        return self.DATASET_LABEL or type(self).__name__

    def prepare_root(self, root) -> str:
        return resolve_root(root)

    def environment_cells(self) -> list[list[Cell]]:
        return challenge_cells(self.CHALLENGE, self.base_count)

    def make_transforms(self):
        return build_transforms(self.image_size)

    def fix_hint(self) -> str:
        """How to get complete data; a generated variant overrides this."""
        return download_hint(os.path.dirname(self.root))

    # -- shared machinery ----------------------------------------------------------------------
    def collect_samples(self, env_cells: list[list[Cell]]) -> list[list[tuple[str, int, int]]]:
        """List every cell's files (checking folders and counts) into (path, y, a) per env."""
        listed: dict[str, list[str]] = {}
        problems = []
        for cells in env_cells:
            for cell in cells:
                folder = os.path.join(self.root, cell.pool, cell.location, cell.cls)
                if folder not in listed:
                    listed[folder] = list_images(folder) if os.path.isdir(folder) else None
                files = listed[folder]
                need = 1 if cell.limit is None else cell.limit
                if files is None:
                    problems.append(f"{folder} is missing")
                elif len(files) < need:
                    what = "at least 1" if cell.limit is None else str(need)
                    problems.append(
                        f"{folder} has {len(files)} images, {self.dataset_label} needs {what}")
        if problems:
            more = (f" ({len(problems) - 1} more problem(s) like it: "
                    f"{'; '.join(problems[1:4])}{'; ...' if len(problems) > 4 else ''})"
                    if len(problems) > 1 else "")
            raise SpawriousDataError(
                f"{problems[0]}{more}. The Spawrious data under {self.root} is incomplete: complete "
                f"the download (or regenerate the data) with: {self.fix_hint()}")

        env_samples = []
        for cells in env_cells:
            samples = []
            for cell in cells:
                folder = os.path.join(self.root, cell.pool, cell.location, cell.cls)
                files = listed[folder] if cell.limit is None else listed[folder][:cell.limit]
                y, a = CLASSES.index(cell.cls), LOCATIONS.index(cell.location)
                samples.extend((os.path.join(folder, name), y, a) for name in files)
            env_samples.append(samples)
        return env_samples

    def check_image_headers(self, paths: list[str]) -> None:
        """Open (without decoding) every selected file; report the first bad one, in order."""
        if len(paths) > 20000:  # threads only pay off on slow (network) disks
            with ThreadPoolExecutor(_HEADER_CHECK_THREADS) as pool:
                results = list(pool.map(_header_problem, paths, chunksize=256))
        else:
            results = [_header_problem(p) for p in paths]
        problems = [r for r in results if r is not None]
        if problems:
            more = (f" ({len(problems) - 1} other selected file(s) of {self.dataset_label} are "
                    f"also unreadable or not RGB.)" if len(problems) > 1 else "")
            raise SpawriousDataError(problems[0] + more)


class SpawriousO2O_easy(SpawriousBenchmark):
    CHALLENGE = "o2o_easy"


class SpawriousO2O_medium(SpawriousBenchmark):
    CHALLENGE = "o2o_medium"


class SpawriousO2O_hard(SpawriousBenchmark):
    CHALLENGE = "o2o_hard"


class SpawriousM2M_easy(SpawriousBenchmark):
    CHALLENGE = "m2m_easy"


class SpawriousM2M_medium(SpawriousBenchmark):
    CHALLENGE = "m2m_medium"


class SpawriousM2M_hard(SpawriousBenchmark):
    CHALLENGE = "m2m_hard"


SPAWRIOUS_DATASETS: dict[str, type[SpawriousBenchmark]] = {
    cls.__name__: cls for cls in (
        SpawriousO2O_easy, SpawriousO2O_medium, SpawriousO2O_hard,
        SpawriousM2M_easy, SpawriousM2M_medium, SpawriousM2M_hard)
}
