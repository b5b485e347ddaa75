"""Load a sweep's `results.jsonl` files and group them the way selection methods expect."""
from __future__ import annotations

import collections
import json
import os
import re
import sys

import tqdm

from domainbed.lib.query import Q


_WGA_KEY = re.compile(r"^env\d+_in_wga$")


def _warn(message: str) -> None:
    """Warn on stderr without garbling the progress bar."""
    tqdm.tqdm.write(f"WARNING: {message}", file=sys.stderr)


def _read_jsonl(results_path: str) -> list[dict]:
    """Records of one run; tolerates what a killed or corrupted run leaves behind.

    Every complete line ends with a newline. A last line without one is a
    write cut short, and a line that is not JSON is corrupt: both are skipped
    with a warning instead of aborting the whole report.
    """
    records = []
    with open(results_path) as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.endswith("\n"):
            _warn(f"{results_path}:{lineno}: skipping truncated last line (no newline)")
            continue
        try:
            records.append(json.loads(line[:-1]))
        except json.JSONDecodeError as exc:
            _warn(f"{results_path}:{lineno}: skipping malformed JSON line ({exc.msg})")
    return records


def load_records(path: str) -> Q:
    """All records of `path/<run>/results.jsonl`; entries without that file are ignored.

    Runs are read in sorted order so that ties between runs break the same way
    on every filesystem.
    """
    records = []
    for entry in tqdm.tqdm(sorted(os.listdir(path)), ncols=80, leave=False, file=sys.stderr):
        results_path = os.path.join(path, entry, "results.jsonl")
        try:
            records.extend(_read_jsonl(results_path))
        except OSError:  # not a run folder (e.g. results.txt), or no results yet
            pass
    return Q(records)


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
    return any(_WGA_KEY.match(key) for record in records for key in record)
