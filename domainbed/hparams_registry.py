"""Hyperparameters: defaults and seeded random-search values, upstream's rules.

Each hparam draws its random value from its own `RandomState(seed_hash(random_seed,
name))`, so adding or removing other hparams never changes a given hparam's value.
Plugins add their algorithms' hparams with `register_hparams_hook`.

Every hparam is typed: bool, int, float or str, as its default and its search draw (see
`kind_of`), optionally with a range (`low`, `high`, inclusive) or a set of `choices`, so a
`--hparams` value of the wrong
kind ("no" for a bool, true for a number, 8.5 for a batch size) is refused before any work
instead of silently running another experiment.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from domainbed import datasets, networks
from domainbed.lib import misc
from domainbed.plugins import ensure_loaded

# Datasets that get the small-image lr / batch size / weight decay. A plugin may
# append its own small-image datasets (upstream keeps this list local).
SMALL_IMAGES = ["Debug28", "DebugAttr28", "RotatedMNIST", "ColoredMNIST"]

RandomFn = Callable[[np.random.RandomState], Any]
DefineFn = Callable[..., None]
HparamsHook = Callable[[str, str, DefineFn], None]
_HOOKS: list[HparamsHook] = []


class HparamsError(misc.UserInputError, ValueError):
    """A bad --hparams value: malformed JSON, not an object, an unknown key, a wrong type."""


Choices = Union[Sequence[Any], Callable[[], Sequence[Any]]]  # a callable: known at call time


@dataclass(frozen=True)
class HparamSpec:
    """What values an hparam takes: its type, and an inclusive range or a set of choices."""

    kind: Optional[type]  # bool, int, float or str; None: any value (a None or list default)
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[Choices] = None

    def problem(self, value: Any) -> Optional[str]:
        """Why `value` does not fit, or None. bool is not a number here (JSON true is not 1),
        an int is a float, a float is not an int."""
        if self.kind is None:
            return None
        if self.kind is bool:
            fits = isinstance(value, bool)
        elif self.kind is int:
            fits = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            fits = isinstance(value, self.kind)
        if not fits:
            return f"must be {_KIND_NAMES[self.kind]}"
        if self.kind is float and not _finite(value):
            return "must be a finite number"
        if self.low is not None and value < self.low:
            return f"must be >= {self.low}" + (f" and <= {self.high}" if self.high is not None
                                                  else "")
        if self.high is not None and value > self.high:
            return f"must be <= {self.high}" + (f" and >= {self.low}" if self.low is not None
                                                   else "")
        choices = self.choices() if callable(self.choices) else self.choices
        if choices is not None and value not in choices:
            return f"must be one of {', '.join(map(str, choices))}"
        return None


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _finite(value: float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too large for a float
        return False


def kind_of(default: Any, random_value: Any) -> Optional[type]:
    """An hparam's type, from its default and one random draw: an int default whose search
    draws floats (upstream's ANDMask `tau`) is a float; None, lists and dicts are unchecked."""
    values = (default, random_value)
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return bool
    if any(isinstance(v, (bool, np.bool_)) for v in values):
        return None
    if all(isinstance(v, numbers.Integral) for v in values):
        return int
    if all(isinstance(v, numbers.Real) for v in values):
        return float
    if all(isinstance(v, str) for v in values):
        return str
    return None


def plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (JSON and safe checkpoint loading want
    those; `r.choice` returns numpy scalars)."""
    return value.item() if isinstance(value, np.generic) else value


def register_hparams_hook(hook: HparamsHook) -> None:
    """Add `hook(algorithm, dataset, define)`; it calls `define(name, default, random_fn)`.

    `define(..., replace=True)` overrides an existing hparam (e.g. a dataset's lr); the
    keywords `low`, `high` (inclusive) and `choices` declare the values it accepts.
    Registering the same hook twice is a no-op, so plugins' register() stays idempotent.
    """
    if hook not in _HOOKS:
        _HOOKS.append(hook)


def _hparams(algorithm: str, dataset: str, random_seed: int) -> dict[str, tuple[Any, Any]]:
    """Return {name: (default, random value)} for this algorithm, dataset and seed."""
    return {name: (default, value) for name, (default, value, _) in
            _definitions(algorithm, dataset, random_seed).items()}


def hparam_specs(algorithm: str, dataset: str) -> dict[str, HparamSpec]:
    """{name: HparamSpec} of every hparam of this algorithm on this dataset."""
    return {name: spec for name, (_, _, spec) in _definitions(algorithm, dataset, 0).items()}


def _definitions(algorithm: str, dataset: str, random_seed: int
                 ) -> dict[str, tuple[Any, Any, HparamSpec]]:
    """{name: (default, random value, spec)}: upstream's definitions, then the hooks'."""
    ensure_loaded()  # a plugin's hparams exist once it has registered its hook
    hparams: dict[str, tuple[Any, Any, HparamSpec]] = {}

    def _hparam(name: str, default_val: Any, random_val_fn: RandomFn, replace: bool = False,
                *, low: Optional[float] = None, high: Optional[float] = None,
                choices: Optional[Choices] = None) -> None:
        if not replace:
            assert name not in hparams, f"hparam '{name}' defined twice"
        random_state = np.random.RandomState(misc.seed_hash(random_seed, name))
        default_val, random_val = plain(default_val), plain(random_val_fn(random_state))
        if replace and name in hparams:  # a replaced value keeps the range it had
            old = hparams[name][2]
            low = old.low if low is None else low
            high = old.high if high is None else high
            choices = old.choices if choices is None else choices
        spec = HparamSpec(kind_of(default_val, random_val), low, high, choices)
        # (choices may depend on what plugins registered, so defaults meet type and range)
        assert HparamSpec(spec.kind, low, high).problem(default_val) is None, \
            f"hparam '{name}': default {default_val!r} outside its own range"
        hparams[name] = (default_val, random_val, spec)

    # Shared by all algorithms (upstream's classic set, plus our backbone switches).
    _hparam("data_augmentation", True, lambda r: True)
    _hparam("resnet18", False, lambda r: False)
    _hparam("resnet_dropout", 0.0, lambda r: r.choice([0.0, 0.1, 0.5]), low=0.0, high=1.0)
    _hparam("class_balanced", False, lambda r: False)
    # Sample every (label, attribute) group equally (attribute-aware datasets only).
    _hparam("group_balanced", False, lambda r: False)
    # Upstream disables nonlinear classifiers in the random search; so do we.
    _hparam("nonlinear_classifier", False, lambda r: bool(r.choice([False, False])))
    # Frozen BatchNorm statistics: the classic DomainBed and Spawrious-era setting.
    _hparam("freeze_bn", True, lambda r: True)
    _hparam("pretrained", True, lambda r: True)
    _hparam("pretrained_path", "", lambda r: "")
    # The backbone by name (networks.FEATURIZERS); "auto" means upstream's shape rules.
    featurizer = dataset_featurizer(dataset)
    _hparam("featurizer", featurizer, lambda r: featurizer,
            choices=lambda: [networks.AUTO, *sorted(networks.FEATURIZERS)])

    # Algorithm-specific hparams.
    if algorithm == "GroupDRO":
        _hparam("groupdro_eta", 1e-2, lambda r: 10 ** r.uniform(-3, -1), low=0.0)

    # Dataset-dependent hparams, defined after the algorithm block as upstream does.
    if dataset in SMALL_IMAGES:
        _hparam("lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5), low=0.0)
        _hparam("weight_decay", 0.0, lambda r: 0.0, low=0.0)
        _hparam("batch_size", 64, lambda r: int(2 ** r.uniform(3, 9)), low=1)
    else:
        _hparam("lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5), low=0.0)
        _hparam("weight_decay", 0.0, lambda r: 10 ** r.uniform(-6, -2), low=0.0)
        _hparam("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5.5)), low=1)

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
    specs = hparam_specs(algorithm, dataset) if algorithm else {}
    for key, value in overrides.items():
        problem = specs[key].problem(value) if key in specs else None
        if problem:
            where = f" for {algorithm} on {dataset}"
            raise HparamsError(
                f"hparam {key}={value!r} in --hparams{where} {problem} (without --hparams it "
                f"would be {hparams[key]!r}). Pass e.g. --hparams "
                f"'{{\"{key}\": {json.dumps(hparams[key])}}}'.")
    hparams.update(overrides)
    return hparams
