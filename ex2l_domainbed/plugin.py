"""Registers the plugin (EX2L, the Spawrious datasets, their hparams) into a harness.

This harness calls `register()` through the `domainbed.plugins` entry point in every
process (sweep, train subprocesses, collect_results), so registration must be cheap and
idempotent. When the importable `domainbed` is an upstream DomainBed checkout instead,
`register()` hands over to `ex2l_domainbed.upstream`, which patches upstream's module
registries in place without editing its files.
"""
from __future__ import annotations


def is_this_harness() -> bool:
    """True when `domainbed` is this project's harness (it has the registration API)."""
    from domainbed import algorithms
    return hasattr(algorithms, "register_algorithm")


def register() -> None:
    """Add EX2L (after ERM and GroupDRO) and its formulations, the AttributeDANN baseline and
    the group-aware baselines, the Lite backbone, the datasets (Spawrious, Spawrious-Lite,
    ColoredMNIST, the subpopulation benchmarks, their stand-ins) and their hparams
    (idempotent)."""
    if not is_this_harness():
        from ex2l_domainbed import upstream
        upstream.register_upstream()
        return
    from domainbed import algorithms, datasets, hparams_registry, networks
    from ex2l_domainbed.algorithm import EX2L, ex2l_hparams
    from ex2l_domainbed.backbones import BACKBONES
    from ex2l_domainbed.baselines import AttributeDANN, adversary_hparams
    from ex2l_domainbed.datasets import colored_mnist, colour_digits, spawrious, spawrious_lite, subpop
    from ex2l_domainbed.formulations import FORMULATIONS
    from ex2l_domainbed.group_baselines import GROUP_BASELINES, group_baseline_hparams

    for name, builder in BACKBONES.items():
        networks.register_featurizer(name)(builder)
    for name, cls in {**spawrious.SPAWRIOUS_DATASETS, **spawrious_lite.LITE_DATASETS,
                      **colored_mnist.DATASETS, **subpop.DATASETS}.items():
        datasets.register_dataset(name, cls)
    hparams_registry.register_hparams_hook(spawrious_lite.lite_hparams)
    hparams_registry.register_hparams_hook(subpop.waterbirds_lite_hparams)
    colour_digits.use_small_image_hparams()
    after = "GroupDRO" if "GroupDRO" in algorithms.ALGORITHMS else None
    algorithms.register_algorithm("EX2L", EX2L, after=after)
    previous = "EX2L"
    for name, cls in FORMULATIONS.items():
        algorithms.register_algorithm(name, cls, after=previous)
        previous = name
    hparams_registry.register_hparams_hook(ex2l_hparams)
    algorithms.register_algorithm("AttributeDANN", AttributeDANN, after=previous)
    hparams_registry.register_hparams_hook(adversary_hparams)
    previous = "AttributeDANN"
    for name, cls in GROUP_BASELINES.items():
        algorithms.register_algorithm(name, cls, after=previous)
        previous = name
    hparams_registry.register_hparams_hook(group_baseline_hparams)
