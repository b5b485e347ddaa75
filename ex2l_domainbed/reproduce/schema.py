"""The keys a sweep definition file may hold, and the type of each.

Checked file by file, before files are merged (`extends`), so a typo or a wrong type is
reported in the file that holds it, with the closest valid key.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from domainbed.lib.misc import UserInputError


@dataclass(frozen=True)
class Kind:
    """A value's expected type: its name in messages and the test."""

    name: str
    fits: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _list_of(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(test(x) for x in v)


INT = Kind("an integer", _is_int)
NUMBER = Kind("a number", _is_number)
STR = Kind("a string", lambda v: isinstance(v, str))
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
STRS = Kind("a list of strings", _list_of(lambda v: isinstance(v, str)))
INTS = Kind("a list of integers", _list_of(_is_int))
TABLE = Kind("a table", lambda v: isinstance(v, dict))
TABLES = Kind("a list of tables ([[...]])", _list_of(lambda v: isinstance(v, dict)))
MEAN_SD = Kind("a number or [mean, sd]",
               lambda v: _is_number(v) or (_list_of(_is_number)(v) and 1 <= len(v) <= 2))
HPARAM = Kind("true or false, a number or a string",
              lambda v: isinstance(v, (bool, str)) or _is_number(v))

TOP = {"extends": STR, "title": STR, "sweep": TABLE, "hparams": TABLE, "algorithms": TABLE,
       "published": TABLES}
SWEEP = {"datasets": STRS, "test_envs": INTS, "single_test_envs": BOOL, "n_hparams": INT,
         "n_hparams_from": INT, "n_trials": INT, "steps": INT, "checkpoint_freq": INT,
         "save_model_every_checkpoint": BOOL,
         "holdout_fraction": NUMBER, "task": STR, "selection": STRS}
PUBLISHED = {"dataset": STR, "algorithm": STR, "aa": MEAN_SD, "wga": MEAN_SD, "source": STR}
PUBLISHED_REQUIRED = ("dataset", "algorithm", "aa", "source")


def check_keys(table: Mapping[str, Any], schema: Mapping[str, Kind], where: str,
               path: str) -> None:
    """Every key known to `schema`, every value of its kind; else one UserInputError."""
    for key, value in table.items():
        kind = schema.get(key)
        if kind is None:
            raise UserInputError(unknown_key_message(key, list(schema), where, path))
        check_value(key, value, kind, where, path)


def check_value(key: str, value: Any, kind: Kind, where: str, path: str) -> None:
    if not kind.fits(value):
        raise UserInputError(
            f"{key} in {where} of {path} must be {kind.name}, got {value!r} "
            f"({type(value).__name__}).")


def unknown_key_message(key: str, valid: list[str], where: str, path: str, what: str = "key",
                        valid_label: str = "Valid keys") -> str:
    """One line naming the unknown key, the closest valid one (difflib) and all of them."""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    return f"unknown {what} '{key}' in {where} of {path}{hint} {valid_label}: {', '.join(valid)}."


def check_file(raw: Mapping[str, Any], path: str) -> None:
    """One file's keys and types at every level (hparam names are checked later, against
    the registry, once files are merged)."""
    check_keys(raw, TOP, "the top level", path)
    check_keys(raw.get("sweep", {}), SWEEP, "[sweep]", path)
    for key, value in raw.get("hparams", {}).items():
        check_value(key, value, HPARAM, "[hparams]", path)
    for name, table in raw.get("algorithms", {}).items():
        where = f"[algorithms.{name}]"
        if not isinstance(table, dict):
            raise UserInputError(
                f"algorithms.{name} in {path} must be a table: write {where} on a line of its "
                f"own, followed by that algorithm's fixed hparams (none is fine).")
        for key, value in table.items():
            check_value(key, value, HPARAM, where, path)
    for i, entry in enumerate(raw.get("published", []), start=1):
        where = f"[[published]] entry {i}"
        check_keys(entry, PUBLISHED, where, path)
        missing = [k for k in PUBLISHED_REQUIRED if k not in entry]
        if missing:
            raise UserInputError(f"{where} of {path} lacks {', '.join(missing)} (it needs "
                                 f"{', '.join(PUBLISHED_REQUIRED)}; wga is optional).")


def mean_sd(value: Any) -> tuple[float, float | None]:
    """A MEAN_SD value as (mean, sd or None)."""
    if isinstance(value, list):
        return float(value[0]), (float(value[1]) if len(value) > 1 else None)
    return float(value), None
