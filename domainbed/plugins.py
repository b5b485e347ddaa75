"""Plugin discovery: every entry point in the `domainbed.plugins` group is called once.

A plugin's `register()` adds its algorithms, datasets, backbones and hparams to the harness's
registries. The registries load installed plugins on their first lookup (`ensure_loaded`),
so a notebook or a user script sees the same names as the CLI without calling anything
first; the scripts also call `load_plugins()` up front, so plugins exist in every process,
the sweep's training subprocesses included.
"""
from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "domainbed.plugins"
_loaded: list[str] = []
_state = {"loading": False, "scanned": False}


def load_plugins() -> list[str]:
    """Call each plugin's register function (once per process); return their names."""
    if _state["loading"]:  # a plugin's register() is looking names up: no recursion
        return list(_loaded)
    _state["loading"] = True
    try:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in _loaded:
                continue
            try:
                register = ep.load()
                register()
            except Exception as exc:  # a broken plugin must not hide which one it is
                raise RuntimeError(
                    f"DomainBed plugin '{ep.name}' ({ep.value}) failed to register: {exc!r}. "
                    f"Fix or uninstall that package."
                ) from exc
            _loaded.append(ep.name)
    finally:
        _state["loading"] = False
    _state["scanned"] = True
    return list(_loaded)


def ensure_loaded() -> None:
    """Load the installed plugins unless that was done in this process (cheap when done)."""
    if not _state["scanned"]:
        load_plugins()


class PluginNames(list):
    """A registry's list of names (`ALGORITHMS`, `DATASETS`) that loads the installed plugins
    before it is first read; code that treats it as a plain list sees the plugins' names."""

    def __contains__(self, name: object) -> bool:
        ensure_loaded()
        return super().__contains__(name)

    def __iter__(self):
        ensure_loaded()
        return super().__iter__()

    def __len__(self) -> int:
        ensure_loaded()
        return super().__len__()

    def __getitem__(self, index: Any):
        ensure_loaded()
        return super().__getitem__(index)

    def __eq__(self, other: object) -> bool:
        ensure_loaded()
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        ensure_loaded()
        return super().__ne__(other)

    def __lt__(self, other: list) -> bool:
        ensure_loaded()
        return super().__lt__(other)

    def __le__(self, other: list) -> bool:
        ensure_loaded()
        return super().__le__(other)

    def __gt__(self, other: list) -> bool:
        ensure_loaded()
        return super().__gt__(other)

    def __ge__(self, other: list) -> bool:
        ensure_loaded()
        return super().__ge__(other)

    def __add__(self, other: list) -> list:
        ensure_loaded()
        return super().__add__(other)

    def __radd__(self, other: list) -> list:
        ensure_loaded()
        return list(other) + list(super().__iter__())

    def __mul__(self, n: int) -> list:
        ensure_loaded()
        return super().__mul__(n)

    __rmul__ = __mul__

    def __reversed__(self):
        ensure_loaded()
        return super().__reversed__()

    __hash__ = None  # a list is unhashable; defining __eq__ must not change that

    def __repr__(self) -> str:
        ensure_loaded()
        return super().__repr__()

    def index(self, *args: Any) -> int:
        ensure_loaded()
        return super().index(*args)

    def count(self, name: object) -> int:
        ensure_loaded()
        return super().count(name)

    def copy(self) -> list:
        ensure_loaded()
        return list(super().__iter__())


if __name__ == "__main__":
    print("\n".join(load_plugins()) or "no plugins", file=sys.stdout)
