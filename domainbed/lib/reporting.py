"""Load a sweep's `results.jsonl` files and group them the way selection methods expect.

A bad line never stops the report and never goes unmentioned; each skip is one
`WARNING: <file>:<line>: ...` line on stderr, and `SkipLog` counts them so the
script can end with one summary line. Two kinds of bad line are told apart:

* a damaged line (cut short by a killed run, not JSON, not UTF-8, or JSON that
  is not an object) is a failed write of one record: that line is skipped and
  the run's other records are kept, as each of them was written whole;
* a well-formed record that lacks a key the tables need, or holds a value of
  the wrong type, means the file was written by another version or tool: the
  whole run is skipped, because selecting among only some of its checkpoints
  would put a wrong number in the tables.

A last line without its newline is kept when it parses as a whole JSON object
(an object cannot parse unless its closing brace was written).
"""
from __future__ import annotations

import collections
import json
import os
import re
import sys
from typing import Any, Callable, Optional

import tqdm

from domainbed.lib.misc import UserInputError
from domainbed.lib.query import Q

_WGA_KEY = re.compile(r"^env\d+_(in|out)_wga$")
_TEST_WGA_KEY = re.compile(r"^env\d+_in_wga$")
RESULTS_FILE = "results.jsonl"
RUN_LOGS = ("out.txt", "err.txt")  # written by train.py as soon as a run starts


def _warn(message: str) -> None:
    """Warn on stderr without garbling the progress bar."""
    tqdm.tqdm.write(f"WARNING: {message}", file=sys.stderr)


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class SkipLog:
    """What `load_records` left out: warns as it goes, counts for the closing summary."""

    def __init__(self) -> None:
        self.lines = 0
        self.runs = 0

    def __bool__(self) -> bool:
        return bool(self.lines or self.runs)

    def line(self, path: str, lineno: int, reason: str) -> None:
        _warn(f"{path}:{lineno}: skipping {reason}")
        self.lines += 1

    def run(self, path: str, reason: str) -> None:
        _warn(f"{path}: skipping the whole run: {reason}")
        self.runs += 1

    def summary(self) -> str:
        """One line naming what the tables leave out and how to get it back in."""
        parts = []
        if self.lines:
            parts.append(f"{self.lines} damaged line{'s' if self.lines != 1 else ''}")
        if self.runs:
            parts.append(f"{self.runs} unusable run{'s' if self.runs != 1 else ''}")
        return (f"WARNING: the tables leave out {' and '.join(parts)} (listed above); repair "
                f"or delete those results.jsonl files, or rerun those runs, then collect again.")


# --- what a usable record is ------------------------------------------------------------

_MISSING = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_env_list(value: Any) -> bool:
    return (isinstance(value, list) and all(_is_int(v) for v in value)
            and len(set(value)) == len(value))


# key -> (check, what it must be); the keys grouping and every selection method read
_REQUIRED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "args.algorithm": (_is_str, "a string"),
    "args.dataset": (_is_str, "a string"),
    "args.trial_seed": (_is_int, "an integer"),
    "args.hparams_seed": (_is_int, "an integer"),
    "args.test_envs": (_is_env_list, "a list of distinct integers"),
    "step": (_is_number, "a number"),
    "env0_out_acc": (_is_number, "a number"),
}


def json_kind(value: Any) -> str:
    """How JSON would name `value`'s type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _lookup(record: dict, dotted: str) -> Any:
    value: Any = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def env_count(record: dict) -> int:
    """Envs env0, env1, ... up to the first missing `_out_acc` (as model_selection counts)."""
    n = 0
    while f"env{n}_out_acc" in record:
        n += 1
    return n


def _env_problems(record: dict) -> list[str]:
    """Per-env accuracies the selection methods read, and test envs they can be read for."""
    n_envs = env_count(record)
    problems = []
    for i in range(n_envs):
        for key in (f"env{i}_in_acc", f"env{i}_out_acc"):
            value = record.get(key, _MISSING)
            if value is _MISSING:
                problems.append(f"no {key}")
            elif not _is_number(value):
                problems.append(f"{key} is {json_kind(value)}, not a number")
    for key, value in record.items():
        if _WGA_KEY.match(key) and value is not None and not _is_number(value):
            problems.append(f"{key} is {json_kind(value)}, not a number")
    outside = [t for t in record["args"]["test_envs"] if not 0 <= t < n_envs]
    if outside:
        problems.append(f"args.test_envs names env {outside[0]}, but the record has "
                        f"accuracies for envs 0 to {n_envs - 1} only")
    return problems


def record_problem(record: dict) -> Optional[str]:
    """Why the tables cannot use `record` (a JSON object), or None when they can."""
    problems = []
    for key, (check, expected) in _REQUIRED.items():
        value = _lookup(record, key)
        if value is _MISSING:
            problems.append(f"no {key}")
        elif not check(value):
            problems.append(f"{key} is {json_kind(value)}, not {expected}")
    if not problems:
        problems = _env_problems(record)
    return "; ".join(problems) if problems else None


# --- reading one run ---------------------------------------------------------------------

def _parse_line(raw: bytes, cut_short: bool) -> tuple[Optional[dict], Optional[str]]:
    """(record, None), (None, why it is skipped), or (None, None) for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "malformed line (not UTF-8 text)"
    if not text.strip():
        return None, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if cut_short:
            return None, "truncated last line (no newline: its run stopped while writing it)"
        return None, f"malformed JSON line ({exc.msg})"
    if not isinstance(value, dict):
        return None, f"line that is not a JSON object (it is {json_kind(value)})"
    return value, None


def _read_run(results_path: str, log: SkipLog) -> list[dict]:
    """Usable records of one run; see the module docstring for what is skipped."""
    try:
        with open(results_path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as exc:
        log.run(results_path, f"cannot read it ({exc.strerror or exc})")
        return []
    if lines[-1] == b"":  # the file ends with a newline, as every complete write does
        lines.pop()
        last_cut_short = False
    else:
        last_cut_short = True
    records, unusable = [], []
    for lineno, raw in enumerate(lines, start=1):
        record, reason = _parse_line(raw, last_cut_short and lineno == len(lines))
        if reason is not None:
            log.line(results_path, lineno, reason)
        elif record is not None:
            problem = record_problem(record)
            if problem is None:
                records.append(record)
            else:
                unusable.append((lineno, problem))
    if unusable:
        for lineno, problem in unusable:
            _warn(f"{results_path}:{lineno}: unusable record: {problem}")
        log.run(results_path, f"{len(unusable)} of {len(unusable) + len(records)} records "
                              f"unusable (written by another version?); a part of a run "
                              f"would select the wrong checkpoint")
        return []
    return records


def load_records(path: str, log: Optional[SkipLog] = None) -> Q:
    """All usable records of `path/<run>/results.jsonl`; entries without that file are ignored.

    Runs are read in sorted order so that ties between runs break the same way
    on every filesystem. What is skipped is warned about and counted in `log`.
    """
    log = log if log is not None else SkipLog()
    records = []
    progress = tqdm.tqdm(run_dirs(path), ncols=80, leave=False, file=sys.stderr,
                         disable=not _is_terminal(sys.stderr))  # no bar in logs
    for entry in progress:
        records.extend(_read_run(os.path.join(path, entry, RESULTS_FILE), log))
    return Q(records)


# --- what a sweep folder is ---------------------------------------------------------------

def run_dirs(path: str) -> list[str]:
    """Sorted names of the entries of `path` that hold a results.jsonl (the runs)."""
    return [entry for entry in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, entry, RESULTS_FILE))]


def started_runs(path: str) -> list[str]:
    """Sorted names of the folders of `path` with a run's logs but no results.jsonl yet."""
    return [entry for entry in sorted(os.listdir(path))
            if not os.path.isfile(os.path.join(path, entry, RESULTS_FILE))
            and any(os.path.isfile(os.path.join(path, entry, log)) for log in RUN_LOGS)]


def check_sweep_dir(path: str) -> None:
    """Raise UserInputError unless `path` is a sweep folder: one folder per run in it."""
    hint = "Pass the sweep's --output_dir."
    if not os.path.exists(path):
        raise UserInputError(f"--input_dir {path} does not exist. {hint}")
    if not os.path.isdir(path):
        raise UserInputError(f"--input_dir {path} is a file, not a folder. {hint}")
    if os.path.isfile(os.path.join(path, RESULTS_FILE)):
        parent = os.path.dirname(os.path.abspath(path))
        raise UserInputError(f"{path} is a single run (it has {RESULTS_FILE}); pass its "
                             f"parent, the sweep folder {parent}.")
    if not run_dirs(path) and not started_runs(path):
        what = "is empty; it holds" if not os.listdir(path) else "holds"
        raise UserInputError(f"{path} {what} no run folders "
                             f"({os.path.join(path, '<hash>', RESULTS_FILE)}). {hint}")


def get_grouped_records(records: Q) -> Q:
    """Group by (trial_seed, dataset, algorithm, test_env), once per test env of a record.

    A record with two test envs lands in two groups; leave-one-out needs that.
    """
    groups: dict = collections.defaultdict(list)
    for record in records:
        args = record["args"]
        for test_env in args["test_envs"]:
            key = (args["trial_seed"], args["dataset"], args["algorithm"], test_env)
            groups[key].append(record)
    return Q([
        {"trial_seed": trial_seed, "dataset": dataset, "algorithm": algorithm,
         "test_env": test_env, "records": Q(group)}
        for (trial_seed, dataset, algorithm, test_env), group in groups.items()
    ])


def has_wga(records: Q) -> bool:
    """True when any record carries a test-side worst-group accuracy (`env{i}_in_wga`)."""
    return any(_TEST_WGA_KEY.match(key) for record in records for key in record)
