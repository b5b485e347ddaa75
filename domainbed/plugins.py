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
    before it is read; code that treats it as a plain list sees the plugins' names.
    Writing to it (a plugin's registration) does not load anything."""

    __hash__ = None  # a list is unhashable; the comparisons below must not change that

    def __radd__(self, other: list) -> list:
        ensure_loaded()
        return list(other) + list(list.__iter__(self))


# Every way of reading a list, each loading the plugins first.
READS = ("__contains__", "__iter__", "__len__", "__getitem__", "__reversed__", "__repr__",
         "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__mul__",
         "__rmul__", "index", "count", "copy")


def _loading_first(name: str):
    read = getattr(list, name)

    def method(self, *args: Any):
        ensure_loaded()
        return read(self, *args)
    method.__name__ = name
    return method


for _name in READS:
    setattr(PluginNames, _name, _loading_first(_name))


if __name__ == "__main__":
    print("\n".join(load_plugins()) or "no plugins", file=sys.stdout)
