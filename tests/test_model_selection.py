"""Selection methods: upstream's golden cases, tie-breaking, and the worst-group additions."""
import math

import pytest

from domainbed import model_selection as ms
from domainbed.lib.query import Q


def make_record(test_envs, step=0, hparams_seed=0, n_envs=3, **values):
    """A record with every env at 0.0 unless given, e.g. env1_out_acc=0.5."""
    record = {
        "args": {"test_envs": list(test_envs), "hparams_seed": hparams_seed, "trial_seed": 0,
                 "dataset": "Debug28", "algorithm": "ERM"},
        "step": step,
    }
    for i in range(n_envs):
        record[f"env{i}_in_acc"] = 0.0
        record[f"env{i}_out_acc"] = 0.0
    record.update(values)
    return record


def loo_step(step, test_acc, val_in_accs, skip=None, hparams_seed=0):
    """Records of one leave-one-out step with test env 0: one single run plus {0, v} runs."""
    records = [make_record([0], step, hparams_seed, env0_in_acc=test_acc)]
    for v, acc in val_in_accs.items():
        if v != skip:
            records.append(make_record([0, v], step, hparams_seed, **{f"env{v}_in_acc": acc}))
    return records


# --- upstream golden cases ---------------------------------------------------------

def test_iid_picks_best_checkpoint():
    records = Q([
        make_record([0], 0, env0_in_acc=0.1, env1_out_acc=0.5, env2_out_acc=0.6),
        make_record([0], 1, env0_in_acc=0.3, env1_out_acc=0.5, env2_out_acc=1.0),
    ])
    assert ms.IIDAccuracySelectionMethod.run_acc(records) == {"val_acc": 0.75, "test_acc": 0.3}


def test_iid_ignores_test_env_and_two_env_records():
    records = Q([
        make_record([0], 0, env0_in_acc=0.2, env0_out_acc=1.0, env1_out_acc=0.4, env2_out_acc=0.4),
        make_record([0, 1], 0, env0_in_acc=0.9, env2_out_acc=1.0),
    ])
    assert ms.IIDAccuracySelectionMethod.run_acc(records) == {"val_acc": 0.4, "test_acc": 0.2}
    assert ms.IIDAccuracySelectionMethod.run_acc(Q(records[1:])) is None


def test_leave_one_out_golden_and_missing_pair():
    records = Q(loo_step(0, 0.1, {1: 0.5, 2: 0.6}) + loo_step(1, 0.9, {1: 0.2, 2: 0.2}))
    assert ms.LeaveOneOutSelectionMethod.run_acc(records) == {"val_acc": 0.55, "test_acc": 0.1}
    incomplete = Q(loo_step(0, 0.1, {1: 0.5, 2: 0.6}, skip=2))
    assert ms.LeaveOneOutSelectionMethod.run_acc(incomplete) is None


def test_leave_one_out_needs_exactly_one_single_env_record_per_step():
    records = Q(loo_step(0, 0.1, {1: 0.5, 2: 0.6}) + [make_record([0], 0, env0_in_acc=0.7)])
    assert ms.LeaveOneOutSelectionMethod.run_acc(records) is None


def test_oracle_picks_last_step():
    records = Q([
        make_record([0], 5, env0_in_acc=0.9, env0_out_acc=0.9),
        make_record([0], 10, env0_in_acc=0.2, env0_out_acc=0.3),
        make_record([0], 1, env0_in_acc=0.8, env0_out_acc=0.8),
    ])
    assert ms.OracleSelectionMethod.run_acc(records) == {"val_acc": 0.3, "test_acc": 0.2}


def test_sweep_acc_of_nothing_is_none():
    for method in (ms.IIDAccuracySelectionMethod, ms.LeaveOneOutSelectionMethod,
                   ms.OracleSelectionMethod, ms.WorstGroupValidationSelectionMethod):
        assert method.sweep_acc(Q([])) is None
        assert method.sweep_acc(Q([]), metric="wga") is None


def test_methods_cannot_be_instantiated():
    with pytest.raises(TypeError):
        ms.IIDAccuracySelectionMethod()


def test_names_are_upstreams():
    assert ms.IIDAccuracySelectionMethod.name == "training-domain validation set"
    assert ms.LeaveOneOutSelectionMethod.name == "leave-one-domain-out cross-validation"
    assert ms.OracleSelectionMethod.name == "test-domain validation set (oracle)"
    assert (ms.WorstGroupValidationSelectionMethod.name
            == "training-domain worst-group validation set")


# --- ranking of hparams runs ---------------------------------------------------------

def run(hparams_seed, val, test):
    return make_record([0], 0, hparams_seed, env0_in_acc=test, env1_out_acc=val, env2_out_acc=val)


def test_hparams_accs_descending_later_first_on_ties():
    records = Q([run(0, 0.5, 0.1), run(1, 0.7, 0.2), run(2, 0.5, 0.3), run(3, 0.6, 0.4)])
    accs = ms.IIDAccuracySelectionMethod.hparams_accs(records)
    assert [r[0]["args"]["hparams_seed"] for _, r in accs] == [1, 3, 2, 0]
    assert ms.IIDAccuracySelectionMethod.sweep_acc(records) == 0.2


def test_nan_val_acc_ranks_last():
    records = Q([run(0, float("nan"), 0.9), run(1, 0.1, 0.2)])
    assert ms.IIDAccuracySelectionMethod.sweep_acc(records) == 0.2


# --- worst-group accuracy as the test metric -----------------------------------------

def test_wga_metric_reports_chosen_checkpoints_wga():
    """Selection still uses accuracy; only the reported number changes."""
    records = Q([
        make_record([0], 0, env0_in_acc=0.1, env0_in_wga=0.05, env1_out_acc=0.5,
                    env2_out_acc=0.6, env0_out_acc=0.9),
        make_record([0], 1, env0_in_acc=0.3, env0_in_wga=0.25, env1_out_acc=0.5,
                    env2_out_acc=1.0, env0_out_acc=0.4),
    ])
    iid = ms.IIDAccuracySelectionMethod
    assert iid.run_acc(records, metric="wga") == {"val_acc": 0.75, "test_acc": 0.25}
    assert iid.run_acc(records, "acc") == {"val_acc": 0.75, "test_acc": 0.3}
    assert ms.OracleSelectionMethod.sweep_acc(records, metric="wga") == 0.25


def test_wga_metric_for_leave_one_out():
    records = Q(loo_step(0, 0.1, {1: 0.5, 2: 0.6}) + loo_step(1, 0.9, {1: 0.2, 2: 0.2}))
    records[0]["env0_in_wga"] = 0.07
    assert ms.LeaveOneOutSelectionMethod.run_acc(records, metric="wga") == {
        "val_acc": 0.55, "test_acc": 0.07}


def test_wga_metric_missing_key_gives_none():
    records = Q([make_record([0], 0, env0_in_acc=0.1)])
    assert ms.IIDAccuracySelectionMethod.run_acc(records, metric="wga")["test_acc"] is None
    assert ms.IIDAccuracySelectionMethod.sweep_acc(records, metric="wga") is None
    assert ms.OracleSelectionMethod.sweep_acc(records, metric="wga") is None


def test_unknown_metric_is_an_error():
    with pytest.raises(ValueError, match="metric"):
        ms.OracleSelectionMethod.run_acc(Q([make_record([0])]), metric="f1")


# --- worst-group validation selection ------------------------------------------------

def wgv_record(step, test_acc, out_wgas, hparams_seed=0, **extra):
    values = {f"env{i}_out_wga": v for i, v in out_wgas.items()}
    return make_record([0], step, hparams_seed, env0_in_acc=test_acc, **values, **extra)


def test_worst_group_validation_uses_min_over_training_envs():
    method = ms.WorstGroupValidationSelectionMethod
    records = Q([
        # higher mean, but env2 is worse: min 0.3
        wgv_record(0, 0.1, {0: 1.0, 1: 0.9, 2: 0.3}, env1_out_acc=0.9, env2_out_acc=0.9),
        # min 0.5; the test env's own 0.0 is ignored
        wgv_record(1, 0.2, {0: 0.0, 1: 0.5, 2: 0.6}, env0_in_wga=0.15),
    ])
    assert method.run_acc(records) == {"val_acc": 0.5, "test_acc": 0.2}
    assert method.run_acc(records, metric="wga") == {"val_acc": 0.5, "test_acc": 0.15}
    assert ms.IIDAccuracySelectionMethod.run_acc(records)["test_acc"] == 0.1


def test_worst_group_validation_skips_checkpoints_without_keys():
    method = ms.WorstGroupValidationSelectionMethod
    no_wga = Q([make_record([0], 0, env0_in_acc=0.4, env1_out_acc=0.9)])
    assert method.run_acc(no_wga) is None
    assert method.sweep_acc(no_wga) is None
    partial = Q([wgv_record(0, 0.1, {1: 0.9}), wgv_record(1, 0.2, {1: 0.3, 2: 0.3}),
                 wgv_record(2, 0.3, {1: 0.8, 2: float("nan")})])
    assert method.run_acc(partial) == {"val_acc": 0.3, "test_acc": 0.2}


def test_worst_group_validation_ranks_runs():
    method = ms.WorstGroupValidationSelectionMethod
    records = Q([wgv_record(0, 0.1, {1: 0.4, 2: 0.4}, hparams_seed=0),
                 wgv_record(0, 0.2, {1: 0.6, 2: 0.7}, hparams_seed=1),
                 make_record([0, 1], 0, 1, env1_in_acc=1.0)])
    assert method.sweep_acc(records) == 0.2
    assert [r[0]["args"]["hparams_seed"] for _, r in method.hparams_accs(records)] == [1, 0]
    assert math.isclose(method.hparams_accs(records)[1][0]["val_acc"], 0.4)
