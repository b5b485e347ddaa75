"""Hyperparameters: defaults and seeded random-search values, upstream's rules.

Each hparam draws its random value from its own `RandomState(seed_hash(random_seed,
name))`, so adding or removing other hparams never changes a given hparam's value.
Plugins add their algorithms' hparams with `register_hparams_hook`.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from domainbed import datasets, networks
from domainbed.lib import misc

# Datasets that get the small-image lr / batch size / weight decay. A plugin may
# append its own small-image datasets (upstream keeps this list local).
SMALL_IMAGES = ["Debug28", "DebugAttr28", "RotatedMNIST", "ColoredMNIST"]

RandomFn = Callable[[np.random.RandomState], Any]
DefineFn = Callable[..., None]
HparamsHook = Callable[[str, str, DefineFn], None]
_HOOKS: list[HparamsHook] = []


class HparamsError(misc.UserInputError, ValueError):
    """A bad --hparams value: malformed JSON, not an object, or an unknown key."""


def register_hparams_hook(hook: HparamsHook) -> None:
    """Add `hook(algorithm, dataset, define)`; it calls `define(name, default, random_fn)`.

    `define(..., replace=True)` overrides an existing hparam (e.g. a dataset's lr).
    Registering the same hook twice is a no-op, so plugins' register() stays idempotent.
    """
    if hook not in _HOOKS:
        _HOOKS.append(hook)


def _hparams(algorithm: str, dataset: str, random_seed: int) -> dict[str, tuple[Any, Any]]:
    """Return {name: (default, random value)} for this algorithm, dataset and seed."""
    hparams: dict[str, tuple[Any, Any]] = {}

    def _hparam(name: str, default_val: Any, random_val_fn: RandomFn, replace: bool = False) -> None:
        if not replace:
            assert name not in hparams, f"hparam '{name}' defined twice"
        random_state = np.random.RandomState(misc.seed_hash(random_seed, name))
        hparams[name] = (default_val, random_val_fn(random_state))

    # Shared by all algorithms (upstream's classic set, plus our backbone switches).
    _hparam("data_augmentation", True, lambda r: True)
    _hparam("resnet18", False, lambda r: False)
    _hparam("resnet_dropout", 0.0, lambda r: r.choice([0.0, 0.1, 0.5]))
    _hparam("class_balanced", False, lambda r: False)
    # Upstream disables nonlinear classifiers in the random search; so do we.
    _hparam("nonlinear_classifier", False, lambda r: bool(r.choice([False, False])))
    # Frozen BatchNorm statistics: the classic DomainBed and Spawrious-era setting.
    _hparam("freeze_bn", True, lambda r: True)
    _hparam("pretrained", True, lambda r: True)
    _hparam("pretrained_path", "", lambda r: "")
    # The backbone by name (networks.FEATURIZERS); "auto" means upstream's shape rules.
    featurizer = dataset_featurizer(dataset)
    _hparam("featurizer", featurizer, lambda r: featurizer)

    # Algorithm-specific hparams.
    if algorithm == "GroupDRO":
        _hparam("groupdro_eta", 1e-2, lambda r: 10 ** r.uniform(-3, -1))

    # Dataset-dependent hparams, defined after the algorithm block as upstream does.
    if dataset in SMALL_IMAGES:
        _hparam("lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5))
        _hparam("weight_decay", 0.0, lambda r: 0.0)
        _hparam("batch_size", 64, lambda r: int(2 ** r.uniform(3, 9)))
    else:
        _hparam("lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5))
        _hparam("weight_decay", 0.0, lambda r: 10 ** r.uniform(-6, -2))
        _hparam("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5.5)))

    for hook in _HOOKS:
        hook(algorithm, dataset, _hparam)
    return hparams


def dataset_featurizer(dataset: str) -> str:
    """The featurizer a registered dataset names (its `FEATURIZER`), else "auto"."""
    try:
        cls = datasets.get_dataset_class(dataset)
    except misc.UnknownNameError:  # hparams of a dataset this process has not registered
        return networks.AUTO
    return getattr(cls, "FEATURIZER", None) or networks.AUTO


def default_hparams(algorithm: str, dataset: str) -> dict[str, Any]:
    return {a: b for a, (b, c) in _hparams(algorithm, dataset, 0).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict[str, Any]:
    return {a: c for a, (b, c) in _hparams(algorithm, dataset, seed).items()}


def parse_hparams_json(text: str) -> dict[str, Any]:
    """Parse the --hparams JSON string into a dict, with a readable error."""
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HparamsError(
            f"--hparams is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}. "
            "Pass a JSON object, e.g. --hparams '{\"lr\": 1e-4}'."
        ) from None
    if not isinstance(overrides, dict):
        raise HparamsError(
            f"--hparams must be a JSON object, got {type(overrides).__name__}: {text!r}. "
            "Pass e.g. --hparams '{\"lr\": 1e-4}'."
        )
    return overrides


def apply_overrides(hparams: dict[str, Any], overrides: dict[str, Any],
                    algorithm: str = "", dataset: str = "") -> dict[str, Any]:
    """Update `hparams` with `overrides`; an unknown key is an error naming the closest one."""
    unknown = [k for k in overrides if k not in hparams]
    if unknown:
        key = unknown[0]
        close = misc.closest_name(key, list(hparams))
        hint = f" Did you mean '{close}'?" if close else ""
        where = f" for {algorithm} on {dataset}" if algorithm else ""
        raise HparamsError(
            f"Unknown hparam '{key}' in --hparams{where}.{hint} "
            f"Valid hparams: {', '.join(sorted(hparams))}."
        )
    hparams.update(overrides)
    return hparams
