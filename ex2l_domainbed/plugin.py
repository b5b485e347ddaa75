"""Registers the plugin's datasets (and, later, algorithms) into the harness.

The harness calls `register()` through the `domainbed.plugins` entry point in every
process (sweep, train subprocesses, collect_results), so registration must be cheap and
idempotent.
"""
from __future__ import annotations


def register() -> None:
    """Add the six Spawrious and six Spawrious-Lite datasets and Lite's hparams (idempotent)."""
    from domainbed import datasets, hparams_registry
    from ex2l_domainbed.datasets import spawrious, spawrious_lite

    for name, cls in {**spawrious.SPAWRIOUS_DATASETS, **spawrious_lite.LITE_DATASETS}.items():
        datasets.register_dataset(name, cls)
    hparams_registry.register_hparams_hook(spawrious_lite.lite_hparams)
