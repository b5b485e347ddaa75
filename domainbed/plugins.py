"""Plugin discovery: every entry point in the `domainbed.plugins` group is called once.

A plugin's `register()` adds its algorithms, datasets and hparams to the harness's
registries. Harness modules that resolve names (train, sweep, collect_results,
list_top_hparams) call `load_plugins()` first, so plugins exist in every process,
the sweep's training subprocesses included.
"""
from __future__ import annotations

import sys
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "domainbed.plugins"
_loaded: list[str] = []


def load_plugins() -> list[str]:
    """Call each plugin's register function (once per process); return their names."""
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
    return list(_loaded)


if __name__ == "__main__":
    print("\n".join(load_plugins()) or "no plugins", file=sys.stdout)
