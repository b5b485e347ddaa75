"""EX2L inside an upstream DomainBed checkout, without editing any of its files.

Upstream DomainBed (facebookresearch/DomainBed) has no registration API: it resolves
names through module globals (`get_algorithm_class` returns `globals()[name]` of
`domainbed.algorithms`), lists algorithms in the module-level list `ALGORITHMS`, and
builds hparams in `hparams_registry._hparams`, which `default_hparams` and
`random_hparams` look up at call time. `register_upstream()` patches exactly those, in
place and idempotently:

- `domainbed.algorithms.EX2L` is set, so `get_algorithm_class("EX2L")` resolves;
- "EX2L" is inserted into `algorithms.ALGORITHMS` right after "GroupDRO" (appended if
  GroupDRO is absent), in the same list object (the sweep's `--algorithms` default and
  upstream's test parametrisation hold that very object), never twice;
- `hparams_registry._hparams` is wrapped once: the wrapper calls the original, then
  `ex2l_hparams(algorithm, dataset, define)`, where `define` draws each random value
  from a fresh `np.random.RandomState(misc.seed_hash(random_seed, name))` with upstream's
  own `misc.seed_hash`, as upstream's `_hparam` does, so the EX2L values of a
  random search are the ones upstream itself would draw. A name that is already
  defined raises.

Names are resolved in every process (sweep, each training subprocess, the collector),
so something must call this in each of them: `ex2l_domainbed.plugin.register()` in
your own script, or the wrapper entry points `python -m ex2l_domainbed.upstream.train`,
`.sweep` (which also makes every launcher run `.train` instead of
`domainbed.scripts.train`) and `.collect_results` (docs/upstream.md).

Not registered, on purpose:

- Datasets. Upstream checkouts since June 2023 already ship the six `Spawrious*`
  classes; they are left untouched. This package's own Spawrious classes are not
  registered there: they import helpers that only this project's harness has, and they
  yield (x, y, attribute) triples, which upstream's training loop (it unpacks pairs)
  cannot take. The Spawrious-Lite datasets are not registered either: they name the
  `lite_cnn` featurizer, which only this harness's featurizer registry can build.

Inside upstream, EX2L receives (x, y) pairs, so its confounder head predicts the
training-environment index (EX2L does so whenever it is built without
`num_attributes`, which upstream's train.py never passes).
"""
from __future__ import annotations

import functools
import runpy
from typing import Any, Callable, MutableSequence, Optional

ALGORITHM_NAME = "EX2L"
INSERT_AFTER = "GroupDRO"
# Set on our `_hparams` wrapper; a wrapper made by someone else with functools.wraps
# copies it, and `__wrapped__` chains are followed, so we never wrap twice.
HPARAMS_MARKER = "_ex2l_domainbed_hparams_hook"


class HparamClashError(ValueError):
    """An EX2L hparam name that DomainBed (or another plugin) already defines."""


def insert_after(names: MutableSequence[str], name: str, after: str) -> None:
    """Put `name` into `names` in place right after `after` (at the end when `after` is
    absent); do nothing when it is already there."""
    if name in names:
        return
    if after in names:
        names.insert(names.index(after) + 1, name)
    else:
        names.append(name)


def is_wrapped(fn: Callable) -> bool:
    """True when `fn`, or any function it wraps (via `__wrapped__`), is our hparams hook."""
    seen = set()
    while fn is not None and id(fn) not in seen:
        if getattr(fn, HPARAMS_MARKER, False):
            return True
        seen.add(id(fn))
        fn = getattr(fn, "__wrapped__", None)
    return False


def wrap_hparams(original: Callable, hook: Callable, seed_hash: Callable[..., int]) -> Callable:
    """An `_hparams(algorithm, dataset, random_seed)` that returns `original`'s dict plus
    the `(default, random)` pairs that `hook(algorithm, dataset, define)` defines, each
    random value drawn from `RandomState(seed_hash(random_seed, name))`."""
    import numpy as np

    @functools.wraps(original)
    def _hparams(algorithm: str, dataset: str, random_seed: Any) -> dict:
        hparams = original(algorithm, dataset, random_seed)

        def define(name: str, default: Any, random_fn: Callable, **accepted: Any) -> None:
            # `accepted` (low, high, choices) is for registries that check values; upstream
            # checks none, and EX2L checks its own when it is built.
            if name in hparams:
                raise HparamClashError(
                    f"hparam {name!r} for {algorithm} on {dataset} is already defined "
                    f"(default {hparams[name][0]!r}); ex2l_domainbed cannot redefine it.")
            random_state = np.random.RandomState(seed_hash(random_seed, name))
            hparams[name] = (default, random_fn(random_state))

        hook(algorithm, dataset, define)
        return hparams

    setattr(_hparams, HPARAMS_MARKER, True)
    return _hparams


def run_registered(target: str, prepare: Optional[Callable[[], None]] = None) -> None:
    """Register EX2L, run `prepare` (if any), then run module `target` as `python -m target`
    would: as `__main__`, with this process's command-line arguments and exit status.

    The wrapper entry points (`.train`, `.sweep`, `.collect_results`) are this call with
    their own target. The plugin is imported here, not at module level, so importing this
    package loads nothing of the harness or of upstream.
    """
    from ex2l_domainbed.plugin import register
    register()
    if prepare is not None:
        prepare()
    runpy.run_module(target, run_name="__main__", alter_sys=True)


def register_upstream() -> None:
    """Register EX2L, its formulations and their hparams into the imported upstream
    `domainbed` (idempotent)."""
    from domainbed import algorithms, hparams_registry
    from domainbed.lib import misc
    from ex2l_domainbed.algorithm import EX2L, ex2l_hparams
    from ex2l_domainbed.formulations import FORMULATIONS

    previous = INSERT_AFTER
    for name, cls in {ALGORITHM_NAME: EX2L, **FORMULATIONS}.items():
        setattr(algorithms, name, cls)
        insert_after(algorithms.ALGORITHMS, name, previous)
        previous = name
    if not is_wrapped(hparams_registry._hparams):
        hparams_registry._hparams = wrap_hparams(
            hparams_registry._hparams, ex2l_hparams, misc.seed_hash)
