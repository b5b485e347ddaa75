"""A tiny query library over lists of records (upstream's `Q`).

Selection methods and the results scripts express their grouping and
filtering with it, so its ordering and NaN rules decide which run wins.
"""
from __future__ import annotations

import inspect
import json
import warnings
from typing import Any, Callable, Iterable, Union

import numpy as np

Selector = Union[str, Callable[[Any], Any]]


def make_selector_fn(selector: Selector) -> Callable[[Any], Any]:
    """Turn "a", "a.b" (nested) or "a, b" (tuple) into a getter; pass functions through.

    Keys are stripped, so "dataset, algorithm" works.
    """
    if isinstance(selector, str):
        if "," in selector:
            parts = [make_selector_fn(part) for part in selector.split(",")]
            return lambda obj: tuple(part(obj) for part in parts)
        if "." in selector:
            keys = [key.strip() for key in selector.split(".")]

            def nested(obj):
                for key in keys:
                    obj = obj[key]
                return obj

            return nested
        key = selector.strip()
        return lambda obj: obj[key]
    if callable(selector):
        return selector
    raise TypeError(f"a selector must be a str or a function, not {type(selector).__name__}")


def hashable(obj: Any) -> Any:
    """`obj` itself if hashable, else a stable JSON string of it (for dict/list keys)."""
    try:
        hash(obj)
        return obj
    except TypeError:
        return json.dumps({"_": obj}, sort_keys=True)


def _nan_as_neg_inf(value: Any) -> Any:
    if isinstance(value, (float, np.floating)) and np.isnan(value):
        return float("-inf")
    return value


class Q:
    """An immutable-looking list with group/map/filter/argmax helpers."""

    def __init__(self, list_: Iterable[Any]):
        self._list = list(list_)

    def __len__(self) -> int:
        return len(self._list)

    def __getitem__(self, key):
        return self._list[key]

    def __eq__(self, other) -> bool:
        if isinstance(other, Q):
            return self._list == other._list
        return self._list == other

    def __str__(self) -> str:
        return str(self._list)

    def __repr__(self) -> str:
        return repr(self._list)

    def _append(self, item: Any) -> None:
        self._list.append(item)

    def group(self, selector: Selector) -> "Q":
        """Q of (group_value, Q of members) pairs, sorted by the (hashable) group value."""
        selector = make_selector_fn(selector)
        groups: dict = {}
        for item in self._list:
            value = selector(item)
            key = hashable(value)
            if key not in groups:
                groups[key] = (value, Q([]))
            groups[key][1]._append(item)
        return Q([groups[key] for key in sorted(groups)])

    def group_map(self, selector: Selector, fn: Callable) -> "Q":
        return self.group(selector).map(fn)

    def map(self, fn: Callable) -> "Q":
        """Apply fn; items are tuple-unpacked when fn takes several parameters."""
        if len(inspect.signature(fn).parameters) > 1:
            return Q([fn(*item) for item in self._list])
        return Q([fn(item) for item in self._list])

    def select(self, selector: Selector) -> "Q":
        selector = make_selector_fn(selector)
        return Q([selector(item) for item in self._list])

    def min(self) -> Any:
        return min(self._list)

    def max(self) -> Any:
        return max(self._list)

    def sum(self) -> Any:
        return sum(self._list)

    def len(self) -> int:
        return len(self._list)

    def mean(self) -> float:
        """Mean as a float; NaN (without a warning) when empty."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.mean(self._list))

    def std(self) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.std(self._list))

    def mean_std(self) -> tuple[float, float]:
        return (self.mean(), self.std())

    def argmax(self, selector: Selector) -> Any:
        """The item with the largest selected value; the first one on ties."""
        selector = make_selector_fn(selector)
        return max(self._list, key=selector)

    def filter(self, fn: Callable[[Any], bool]) -> "Q":
        return Q([item for item in self._list if fn(item)])

    def filter_equals(self, selector: Selector, value: Any) -> "Q":
        selector = make_selector_fn(selector)
        return self.filter(lambda item: selector(item) == value)

    def filter_not_none(self) -> "Q":
        return Q([item for item in self._list if item is not None])

    def filter_not_nan(self) -> "Q":
        return Q([item for item in self._list if not np.isnan(item)])

    def flatten(self) -> "Q":
        return Q([inner for outer in self._list for inner in outer])

    def unique(self) -> "Q":
        """Distinct items in first-seen order (unhashable items compared via JSON)."""
        seen = set()
        result = []
        for item in self._list:
            key = hashable(item)
            if key not in seen:
                seen.add(key)
                result.append(item)
        return Q(result)

    def sorted(self, key: Callable[[Any], Any] | None = None) -> "Q":
        """Stable ascending sort; NaN floats sort as -inf."""
        if key is None:
            key = lambda item: item  # noqa: E731
        return Q(sorted(self._list, key=lambda item: _nan_as_neg_inf(key(item))))
