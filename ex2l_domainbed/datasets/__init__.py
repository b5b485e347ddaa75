"""Datasets of the eX2L plugin: the six Spawrious challenges (`spawrious`), attribute-aware.

Importing this package is cheap: torchvision is only imported when a dataset builds its transforms.
"""
from ex2l_domainbed.datasets.spawrious import (  # noqa: F401  (re-exports)
    CHALLENGES,
    CLASSES,
    LOCATIONS,
    SPAWRIOUS_DATASETS,
    SpawriousBenchmark,
    SpawriousDataError,
)
