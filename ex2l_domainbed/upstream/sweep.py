"""`python -m ex2l_domainbed.upstream.sweep launch ...`: DomainBed's
`domainbed.scripts.sweep` with EX2L registered, in the sweep and in every job.

The sweep hard-codes `python -m domainbed.scripts.train` in each job's command and runs
it in a fresh process, where nothing has registered EX2L. So besides registering here,
every launcher in `domainbed.command_launchers.REGISTRY` is wrapped (in place, once) to
run `-m ex2l_domainbed.upstream.train` instead, which registers and then runs the same
train script with the same arguments. Output directories do not change: their names
hash the training arguments, not the command. (A launcher added to REGISTRY after this
wrapper ran is not rewritten.)

Works with an upstream checkout and with this project's harness, where the rewrite is
harmless (its train script loads the plugin by itself).
"""
from __future__ import annotations

import functools
import re
from typing import Callable, MutableMapping, Optional

from ex2l_domainbed.upstream import run_registered

TARGET = "domainbed.scripts.sweep"
TRAIN_MODULE = "domainbed.scripts.train"
WRAPPED_TRAIN_MODULE = "ex2l_domainbed.upstream.train"
LAUNCHER_MARKER = "_ex2l_domainbed_rewrites_train"

_TRAIN_MODULE_ARG = re.compile(r"(-m\s+)" + re.escape(TRAIN_MODULE) + r"(?=\s|$)")


def rewrite_command(command: str) -> str:
    """`... -m domainbed.scripts.train --a b` -> `... -m ex2l_domainbed.upstream.train --a b`."""
    return _TRAIN_MODULE_ARG.sub(lambda m: m.group(1) + WRAPPED_TRAIN_MODULE, command)


def wrap_launcher(launcher: Callable) -> Callable:
    """A launcher that rewrites each command, then hands the list to `launcher`."""
    if getattr(launcher, LAUNCHER_MARKER, False):
        return launcher

    @functools.wraps(launcher)  # keeps attributes such as the harness's `preflight`
    def launch(commands, *args, **kwargs):
        return launcher([rewrite_command(c) for c in commands], *args, **kwargs)

    setattr(launch, LAUNCHER_MARKER, True)
    return launch


def wrap_launchers(registry: Optional[MutableMapping[str, Callable]] = None) -> None:
    """Wrap every launcher of `registry` (default: DomainBed's REGISTRY) in place, once."""
    if registry is None:
        from domainbed.command_launchers import REGISTRY as registry
    for name, launcher in list(registry.items()):
        registry[name] = wrap_launcher(launcher)


def main() -> None:
    run_registered(TARGET, prepare=wrap_launchers)


if __name__ == "__main__":
    main()
