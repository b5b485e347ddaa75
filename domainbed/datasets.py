"""Datasets: the `MultipleDomainDataset` contract, the Debug datasets, and the registry.

A dataset is built as `Cls(root, test_envs, hparams)` and indexed by environment;
each environment is a torch Dataset yielding `(x, y)`. An attribute-aware dataset
also sets `ATTRIBUTES` (the names of its nuisance attribute's values) and its
environments yield `(x, y, a)`; a group is the pair `(y, a)`.
A subpopulation benchmark (fixed train / validation / test splits instead of domains) maps
its splits onto environments: `VALIDATION_ENVS` are never trained on (model selection reads
them) and `FIXED_TEST_ENVS` are the only test environments it accepts.
Plugins add datasets with `register_dataset`.
"""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from domainbed.lib.misc import UnknownNameError, unknown_name_message
from domainbed.plugins import PluginNames, ensure_loaded

DATASETS: list[str] = PluginNames([
    "Debug28",
    "Debug224",
    "DebugAttr28",
    "DebugSubpop28",
])


def get_dataset_class(dataset_name: str) -> type:
    """Return the dataset class with the given name."""
    ensure_loaded()
    cls = globals().get(dataset_name)
    if not (isinstance(cls, type) and issubclass(cls, MultipleDomainDataset)
            and cls.ENVIRONMENTS):  # base classes have no environments
        raise UnknownNameError(unknown_name_message("Dataset", dataset_name, DATASETS))
    return cls


def num_environments(dataset_name: str) -> int:
    return len(get_dataset_class(dataset_name).ENVIRONMENTS)


def register_dataset(name: str, cls: type) -> None:
    """Make `cls` resolvable as `name` and list it in DATASETS (idempotent, in place)."""
    globals()[name] = cls
    if name not in DATASETS:
        DATASETS.append(name)


def training_envs(dataset, test_envs) -> list[int]:
    """The environments a run trains on: neither test nor validation environments."""
    held_out = set(test_envs) | set(getattr(dataset, "VALIDATION_ENVS", ()))
    return [i for i in range(len(dataset.ENVIRONMENTS)) if i not in held_out]


def has_attributes(dataset) -> bool:
    """True when the dataset's environments yield `(x, y, a)`."""
    return bool(getattr(dataset, "ATTRIBUTES", None))


class MultipleDomainDataset:
    N_STEPS = 5001           # Default, subclasses may override
    CHECKPOINT_FREQ = 100    # Default, subclasses may override
    N_WORKERS = 8            # Default, subclasses may override
    ENVIRONMENTS: list[str] | None = None
    INPUT_SHAPE: tuple | None = None
    ATTRIBUTES: list[str] | None = None   # set by attribute-aware datasets
    FEATURIZER: str | None = None   # a backbone's name in networks.FEATURIZERS; None: by shape
    NEEDS_DATA_DIR = True   # train.py refuses to run it without --data_dir
    VALIDATION_ENVS: tuple[int, ...] = ()  # evaluated for model selection, never trained on
    FIXED_TEST_ENVS: tuple[int, ...] | None = None  # the only test envs it accepts
    ENVIRONMENT_SIZES: tuple[int, ...] | None = None  # items per env, known without the data

    def __getitem__(self, index: int):
        return self.datasets[index]

    def __len__(self) -> int:
        return len(self.datasets)


class Debug(MultipleDomainDataset):
    """Three environments of 16 random images with random binary labels."""

    N_WORKERS = 0  # in-memory tensors: worker processes would only add start-up time
    NEEDS_DATA_DIR = False  # generated in memory

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = 2
        self.datasets = []
        for _ in [0, 1, 2]:
            self.datasets.append(
                TensorDataset(
                    torch.randn(16, *self.INPUT_SHAPE),
                    torch.randint(0, self.num_classes, (16,)),
                )
            )


class Debug28(Debug):
    INPUT_SHAPE = (3, 28, 28)
    ENVIRONMENTS = ["0", "1", "2"]


class Debug224(Debug):
    INPUT_SHAPE = (3, 224, 224)
    ENVIRONMENTS = ["0", "1", "2"]


class DebugAttr28(Debug):
    """Debug28 with a binary nuisance attribute per image, to exercise group metrics.

    The attribute is spuriously tied to the label in environments 1 and 2 and
    independent of it in environment 0, the way Spawrious' test environment is.
    """

    INPUT_SHAPE = (3, 28, 28)
    ENVIRONMENTS = ["0", "1", "2"]
    ATTRIBUTES = ["plain", "striped"]

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        agree = [0.5, 0.9, 0.8]
        for i, env in enumerate(self.datasets):
            x, y = env.tensors
            a = torch.where(torch.rand(len(y)) < agree[i], y, 1 - y)
            x = x + a.view(-1, 1, 1, 1).float()  # the attribute is visible in the image
            self.datasets[i] = TensorDataset(x, y, a)


class DebugSubpop28(DebugAttr28):
    """DebugAttr28 as a subpopulation benchmark: fixed train / validation / test splits.

    The way Waterbirds and CelebA map onto environments: train on environment 0, select
    on environment 1 (never trained on), report environment 2, the only test environment.
    """

    ENVIRONMENTS = ["train", "val", "test"]
    VALIDATION_ENVS = (1,)
    FIXED_TEST_ENVS = (2,)
