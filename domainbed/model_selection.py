"""Model selection: pick one checkpoint per hparams run, then one run per sweep.

The three upstream methods keep upstream's names and tie-breaking. Every
method can report its test number as average accuracy (`metric="acc"`, reads
`env{t}_in_acc`) or worst-group accuracy (`metric="wga"`, reads
`env{t}_in_wga`); the metric never changes which checkpoint or run is picked.
A test number whose key is missing is None, and so is `sweep_acc` then.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional

import numpy as np

from domainbed.lib.query import Q

METRICS = ("acc", "wga")
METRIC_NAMES = {"acc": "accuracy", "wga": "worst-group accuracy"}

RunAcc = Optional[dict]


def get_test_records(records: Q) -> Q:
    """Records of runs with a single test env (leave-one-out adds two-env runs)."""
    return records.filter(lambda r: len(r["args"]["test_envs"]) == 1)


def _n_envs(record: dict) -> int:
    """Environments counted as env0, env1, ... up to the first missing `_out_acc` key."""
    for i in itertools.count():
        if f"env{i}_out_acc" not in record:
            return i
    raise AssertionError("unreachable")


def _test_value(record: dict, test_env: int, metric: str) -> Optional[float]:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    return record.get(f"env{test_env}_in_{metric}")


class SelectionMethod:
    """Abstract: subclasses define `name` and `run_acc`; all methods are classmethods."""

    name = "abstract"

    def __init__(self):
        raise TypeError("selection methods are used through their classmethods")

    @classmethod
    def run_acc(cls, run_records: Q, metric: str = "acc") -> RunAcc:
        """{'val_acc', 'test_acc'} of the chosen checkpoint of one run, or None."""
        raise NotImplementedError

    @classmethod
    def hparams_accs(cls, records: Q, metric: str = "acc") -> Q:
        """(run_acc, run_records) per hparams seed, best val_acc first.

        Among equal val_acc the later run comes first (upstream sorts then reverses).
        """
        accs = (records.group("args.hparams_seed")
                .map(lambda _, run_records: (cls.run_acc(run_records, metric), run_records))
                .filter(lambda x: x[0] is not None)
                .sorted(key=lambda x: x[0]["val_acc"]))
        return Q(accs[::-1])

    @classmethod
    def sweep_acc(cls, records: Q, metric: str = "acc") -> Optional[float]:
        """Test number of the best run, or None when no run qualifies."""
        accs = cls.hparams_accs(records, metric)
        if len(accs):
            return accs[0][0]["test_acc"]
        return None


class OracleSelectionMethod(SelectionMethod):
    """Select on the test env's holdout, at the last checkpoint (no early stopping)."""

    name = "test-domain validation set (oracle)"

    @classmethod
    def run_acc(cls, run_records: Q, metric: str = "acc") -> RunAcc:
        run_records = get_test_records(run_records)
        if not len(run_records):
            return None
        test_env = run_records[0]["args"]["test_envs"][0]
        chosen = run_records.sorted(key=lambda r: r["step"])[-1]
        return {"val_acc": chosen[f"env{test_env}_out_acc"],
                "test_acc": _test_value(chosen, test_env, metric)}


class IIDAccuracySelectionMethod(SelectionMethod):
    """Early-stop on the mean holdout accuracy of the training envs."""

    name = "training-domain validation set"

    @classmethod
    def checkpoint_acc(cls, record: dict, metric: str = "acc") -> RunAcc:
        """{'val_acc', 'test_acc'} of one checkpoint's record under this method."""
        test_env = record["args"]["test_envs"][0]
        val_accs = [record[f"env{i}_out_acc"] for i in range(_n_envs(record)) if i != test_env]
        val_acc = float(np.mean(val_accs)) if val_accs else float("nan")  # one-env dataset
        return {"val_acc": val_acc,
                "test_acc": _test_value(record, test_env, metric)}

    @classmethod
    def run_acc(cls, run_records: Q, metric: str = "acc") -> RunAcc:
        step_accs = (get_test_records(run_records)
                     .map(lambda record: cls.checkpoint_acc(record, metric))
                     .filter_not_none())
        if not len(step_accs):
            return None
        return step_accs.argmax("val_acc")


class WorstGroupValidationSelectionMethod(IIDAccuracySelectionMethod):
    """Early-stop on the worst training-env holdout worst-group accuracy.

    For attribute-aware datasets (records with `env{i}_out_wga`); a checkpoint
    missing any training env's value (or holding NaN: no groups) is skipped.
    """

    name = "training-domain worst-group validation set"

    @classmethod
    def checkpoint_acc(cls, record: dict, metric: str = "acc") -> RunAcc:
        """{'val_acc', 'test_acc'} of one checkpoint, or None when a training env lacks WGA."""
        test_env = record["args"]["test_envs"][0]
        val_wgas = [record.get(f"env{i}_out_wga")
                    for i in range(_n_envs(record)) if i != test_env]
        if not val_wgas or any(v is None or math.isnan(v) for v in val_wgas):
            return None
        return {"val_acc": float(min(val_wgas)),
                "test_acc": _test_value(record, test_env, metric)}


class ValidationWorstGroupSelectionMethod(IIDAccuracySelectionMethod):
    """Early-stop on the worst-group accuracy of the validation split, the protocol of
    subpopulation benchmarks (Waterbirds, CelebA; SubpopBench and BalancingGroups select so).

    Their records name the validation environments (`validation_envs`, written by train.py
    for a dataset with `VALIDATION_ENVS`); the value is the lowest `env{v}_in_wga` among them
    (run them with --holdout_fraction 0, so the in-split is the whole validation split).
    Records without validation environments have none.
    """

    name = "validation-split worst-group accuracy"

    @classmethod
    def checkpoint_acc(cls, record: dict, metric: str = "acc") -> RunAcc:
        envs = record.get("validation_envs")
        if not envs:
            return None
        wgas = [record.get(f"env{v}_in_wga") for v in envs]
        if any(v is None or math.isnan(v) for v in wgas):
            return None
        test_env = record["args"]["test_envs"][0]
        return {"val_acc": float(min(wgas)), "test_acc": _test_value(record, test_env, metric)}


class LeaveOneOutSelectionMethod(SelectionMethod):
    """Validate on each held-out training env in turn, using the two-test-env runs."""

    name = "leave-one-domain-out cross-validation"

    @classmethod
    def _step_acc(cls, records: Q, metric: str = "acc") -> RunAcc:
        """One step's records: exactly one single-env run plus a {t, v} run per v != t."""
        test_records = get_test_records(records)
        if len(test_records) != 1:
            return None
        test_env = test_records[0]["args"]["test_envs"][0]
        n_envs = _n_envs(records[0])
        val_accs: dict[int, float] = {}
        for record in records.filter(lambda r: len(r["args"]["test_envs"]) == 2):
            val_env = (set(record["args"]["test_envs"]) - {test_env}).pop()
            val_accs[val_env] = record[f"env{val_env}_in_acc"]
        if any(v not in val_accs for v in range(n_envs) if v != test_env):
            return None
        total = sum(val_accs[v] for v in range(n_envs) if v != test_env)
        val_acc = total / (n_envs - 1) if n_envs > 1 else float("nan")  # as upstream's 0/0
        return {"val_acc": float(val_acc),
                "test_acc": _test_value(test_records[0], test_env, metric)}

    @classmethod
    def run_acc(cls, run_records: Q, metric: str = "acc") -> RunAcc:
        step_accs = (run_records.group("step")
                     .map(lambda step, step_records: cls._step_acc(step_records, metric))
                     .filter_not_none())
        if not len(step_accs):
            return None
        return step_accs.argmax("val_acc")
