"""ColoredMNIST's construction on any set of square digit images, and ColoredDigitsLite, the
offline stand-in that applies it to scikit-learn's handwritten digits.

The construction (upstream DomainBed's `ColoredMNIST`, so accuracies compare with its tables):

1. The pooled images are shuffled and dealt out to the three environments in turn
   (environment i takes positions i, i + 3, i + 6, ... of the shuffled order, as upstream's
   ``images[i::3]``).
2. In environment i, the binary label is ``y = (digit < 5)``, flipped with probability 0.25
   (label noise), and the colour is ``c = y``, flipped with probability ``e_i``:
   e = 0.1, 0.2, 0.9 for "+90%", "+80%", "-90%" (the colour agrees with the label 90%,
   80% and 10% of the time).
3. The image is 2xHxW (2x28x28 for MNIST), float in 0..1: the digit (pixel / 255) in channel c and zeros in
   channel 1 - c (upstream stacks [img, img] and zeroes channel 1 - c). Channel 0 is red,
   channel 1 green; the attribute ``a`` is the colour, ``ATTRIBUTES = ["red", "green"]``.

Randomness (deliberately not upstream's: upstream draws from torch's global generator,
seeded by the run's ``--seed``, so its environments change from run to run). Here every draw
comes from numpy's legacy ``RandomState``, whose streams numpy promises never to change
(NEP 19), seeded with fixed integer lists, so the environments are identical on every
machine and in every run:

- the shuffle: ``RandomState([SEED, 0]).permutation(n)``, SEED = 0;
- environment i: ``r = RandomState([SEED, 1, i])``; first ``r.random_sample(n) < 0.25``
  (the label flips), then ``r.random_sample(n) < e_i`` (the colour flips);
- ColoredDigitsLite's shifts of environment i: ``RandomState([SEED, 2, i])`` (below).

ColoredDigitsLite: the 1,797 8x8 digits of ``sklearn.datasets.load_digits()`` (values
0..16, shipped inside scikit-learn, so nothing is downloaded), upsampled bilinearly
(``torch.nn.functional.interpolate``) to 10x10 and centred in a 14x14 frame with a 2 px
border: MNIST's proportions (digits size-normalised to 20x20 and centred in 28x28) at half
its side, which is still more pixels than the 8x8 originals hold, and a quarter of the
network's work per image (a run takes minutes on one CPU thread, not a quarter of an hour).
The border lets the shifts below move a digit without cutting it. After step 1, each
environment's 599 digits are used ``COPIES`` = 4 times, each copy shifted by a random
(dy, dx) in -1..1 px (zeros shifted in), so each environment holds 2,396 images (7,188 in
all), and steps 2 and 3 draw label noise and colour for every copy independently. Copies of
one digit stay in one environment, so no test image is a shifted training image (inside an
environment the harness's holdout split may separate copies of one digit, which makes
training-domain validation accuracy a little optimistic). It is built in memory at
construction (well under a second once scikit-learn is imported).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from domainbed import hparams_registry
from domainbed.datasets import MultipleDomainDataset

SEED = 0
ENVIRONMENTS = ["+90%", "+80%", "-90%"]
COLOUR_FLIP = (0.1, 0.2, 0.9)  # probability that the colour is not the label, per environment
LABEL_NOISE = 0.25
ATTRIBUTES = ["red", "green"]  # the colour: the channel that holds the digit
INPUT_SHAPE = (2, 28, 28)  # ColoredMNIST's
_SHUFFLE, _COLOUR, _SHIFT = 0, 1, 2  # the streams of the seed lists in the docstring

LITE_SHAPE = (2, 14, 14)  # the stand-in's: its digits hold 8x8 pixels of information
DIGIT_SIZE = 10  # the stand-in's digits, as MNIST's in proportion: 20/28 of the frame, centred
COPIES = 4
MAX_SHIFT = 1


def _rng(stream: int, env: int | None = None) -> np.random.RandomState:
    return np.random.RandomState([SEED, stream] + ([] if env is None else [env]))


def deal(n: int, n_envs: int = len(ENVIRONMENTS)) -> list[np.ndarray]:
    """Indices of n pooled images per environment: shuffled, then dealt out in turn."""
    order = _rng(_SHUFFLE).permutation(n)
    return [order[i::n_envs] for i in range(n_envs)]


def colour(digits: np.ndarray, env: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy binary labels, colours) of environment `env`'s digits, as int64 arrays."""
    rng = _rng(_COLOUR, env)
    n = len(digits)
    labels = (np.asarray(digits) < 5) ^ (rng.random_sample(n) < LABEL_NOISE)
    colours = labels ^ (rng.random_sample(n) < COLOUR_FLIP[env])
    return labels.astype(np.int64), colours.astype(np.int64)


class ColouredDigits(Dataset):
    """One environment: items (x, y, a), x the 2xHxW image with the digit in channel a.

    Images are kept as uint8 digits and coloured when an item is read (a quarter of the
    memory of float images). ``samples`` lists (index, y, a) so the harness reads labels and
    groups without building images; ``digits`` keeps each image's digit class (0-9).
    """

    def __init__(self, images: np.ndarray, digits: np.ndarray, env: int):
        super().__init__()
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        self.digits = np.asarray(digits, dtype=np.int64)
        labels, colours = colour(self.digits, env)
        self.labels, self.colours = labels.tolist(), colours.tolist()
        self.samples = list(zip(range(len(labels)), self.labels, self.colours))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        a = self.colours[index]
        x = torch.zeros((len(ATTRIBUTES),) + tuple(self.images.shape[1:]))
        x[a] = self.images[index].float().div_(255.0)
        return x, self.labels[index], a


class ColouredDigitsBenchmark(MultipleDomainDataset):
    """Base of the ColoredMNIST-style datasets; a subclass supplies the pooled images.

    ``pooled_images(root) -> (uint8 [n, H, W], digit classes [n])`` gives the images
    (H x W as INPUT_SHAPE);
    ``expand(images, digits, env)`` may turn an environment's share into more images
    (the stand-in's shifted copies). The ``data_augmentation`` hparam is ignored, as in
    upstream's MNIST datasets.
    """

    ENVIRONMENTS = None  # a base class: not a dataset
    INPUT_SHAPE = INPUT_SHAPE
    ATTRIBUTES = ATTRIBUTES
    FEATURIZER = "mnist_cnn"
    N_WORKERS = 0  # in memory: worker processes would only add start-up time
    num_classes = 2

    def __init__(self, root, test_envs, hparams):
        super().__init__()  # test_envs is ignored, as upstream
        images, digits = self.pooled_images(root)
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = 2
        self.datasets = []
        for env, keys in enumerate(deal(len(images))):
            env_images, env_digits = self.expand(images[keys], digits[keys], env)
            self.datasets.append(ColouredDigits(env_images, env_digits, env))

    def pooled_images(self, root) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def expand(self, images: np.ndarray, digits: np.ndarray, env: int
               ) -> tuple[np.ndarray, np.ndarray]:
        return images, digits


# ----------------------------------------------------------------------------------------------
# The stand-in


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as MNIST-like 14x14 uint8 images, and their classes."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn takes a second to import

    bunch = load_digits()
    small = torch.from_numpy(bunch.images).float().div_(16.0)[:, None]  # [n, 1, 8, 8], 0..1
    big = torch.nn.functional.interpolate(small, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear",
                                          align_corners=False)
    border = (LITE_SHAPE[1] - DIGIT_SIZE) // 2
    framed = torch.nn.functional.pad(big[:, 0], (border,) * 4)
    images = framed.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).numpy()
    return images, np.asarray(bunch.target, dtype=np.int64)


def shifted_copies(images: np.ndarray, copies: int, env: int) -> np.ndarray:
    """`copies` shifted versions of each image (adjacent), each moved by a random
    (dy, dx) in -MAX_SHIFT..MAX_SHIFT with zeros shifted in."""
    m = MAX_SHIFT
    repeated = np.repeat(images, copies, axis=0)
    shifts = _rng(_SHIFT, env).randint(-m, m + 1, size=(len(repeated), 2))
    padded = np.pad(repeated, ((0, 0), (m, m), (m, m)))
    height, width = images.shape[1:]
    out = np.empty_like(repeated)
    for k, (dy, dx) in enumerate(shifts):
        out[k] = padded[k, m - dy:m - dy + height, m - dx:m - dx + width]
    return out


class ColoredDigitsLite(ColouredDigitsBenchmark):
    """ColoredMNIST's environments on scikit-learn's digits (see the module docstring):
    offline, in memory, 2,396 images per environment."""

    ENVIRONMENTS = ENVIRONMENTS
    INPUT_SHAPE = LITE_SHAPE
    NEEDS_DATA_DIR = False
    # Under group-balanced sampling (the oracle) the shape is learned by step 200-400 at the
    # default lr 1e-3, colour within ~25; later checkpoints memorise the noisy labels, which
    # model selection sees (docs/benchmarks.md, the calibration).
    N_STEPS = 1001
    CHECKPOINT_FREQ = 100

    def pooled_images(self, root) -> tuple[np.ndarray, np.ndarray]:
        return sklearn_digits()  # root is not used: nothing is read from disk

    def expand(self, images: np.ndarray, digits: np.ndarray, env: int
               ) -> tuple[np.ndarray, np.ndarray]:
        return shifted_copies(images, COPIES, env), np.repeat(digits, COPIES)


SMALL_IMAGE_DATASETS: Sequence[str] = ("ColoredDigitsLite",)


def use_small_image_hparams() -> None:
    """Give the stand-in ColoredMNIST's hparams (lr 1e-3, batch 64, no weight decay; the
    harness already lists ColoredMNIST); idempotent."""
    for name in SMALL_IMAGE_DATASETS:
        if name not in hparams_registry.SMALL_IMAGES:
            hparams_registry.SMALL_IMAGES.append(name)
