"""Subpopulation benchmarks in the harness: fixed train / validation / test splits mapped onto
environments (the validation one never trained on), selection on the validation split's
worst group, and group-balanced sampling."""
import json
from collections import Counter

import pytest
import torch

from domainbed import algorithms, datasets, model_selection
from domainbed.lib import misc, reporting
from domainbed.scripts import collect_results, sweep, train

FAST = ["--hparams", '{"batch_size": 4}', "--steps", "3", "--checkpoint_freq", "1"]


def subpop_argv(out, *extra):
    return ["--dataset", "DebugSubpop28", "--algorithm", "ERM", "--test_envs", "2",
            "--holdout_fraction", "0", "--output_dir", str(out), *FAST, *extra]


def test_training_envs_leave_out_the_validation_split():
    cls = datasets.get_dataset_class("DebugSubpop28")
    assert datasets.training_envs(cls, [2]) == [0]
    assert datasets.training_envs(datasets.get_dataset_class("DebugAttr28"), [2]) == [0, 1]


def test_a_subpop_run_trains_on_train_only_and_records_its_validation_env(tmp_path, run_main):
    out = tmp_path / "run"
    assert run_main(train.main, *subpop_argv(out)).returncode == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {tuple(r["validation_envs"]) for r in records} == {(1,)}
    assert all("env1_in_wga" in r and "env2_in_wga" in r for r in records)
    saved = algorithms.load_checkpoint(str(out / "model.pkl"))
    assert saved["model_num_domains"] == 1  # the validation split is not a training domain


@pytest.mark.parametrize("test_envs", [["1"], ["0"], ["1", "2"]])
def test_other_test_envs_are_refused(tmp_path, run_main, test_envs):
    argv = subpop_argv(tmp_path / "run")
    argv[argv.index("--test_envs") + 1:argv.index("--test_envs") + 2] = test_envs
    result = run_main(train.main, *argv)
    assert result.returncode == 2
    assert "fixed splits (0: train, 1: val, 2: test): use --test_envs 2" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_sweep_runs_the_fixed_test_env_only(tmp_path, run_main):
    result = run_main(sweep.main, "launch", "--datasets", "DebugSubpop28", "--algorithms", "ERM",
                      "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "s"),
                      "--command_launcher", "dummy", "--n_hparams", "1", "--n_trials", "1",
                      "--skip_confirmation")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Dummy launcher:") == 1 and "--test_envs 2" in result.stdout
    refused = run_main(sweep.main, "launch", "--datasets", "DebugSubpop28", "--test_envs", "0",
                       "--algorithms", "ERM", "--data_dir", str(tmp_path), "--output_dir",
                       str(tmp_path / "t"), "--command_launcher", "dummy", "--skip_confirmation")
    assert refused.returncode == 2 and "use --test_envs 2" in refused.stderr


def _record(step, val_wga, test_acc, hparams_seed=0):
    return {"args": {"test_envs": [2], "hparams_seed": hparams_seed, "trial_seed": 0,
                     "dataset": "DebugSubpop28", "algorithm": "ERM"},
            "step": step, "validation_envs": [1],
            "env0_in_acc": 0.9, "env0_out_acc": 0.9, "env1_in_acc": 0.8, "env1_out_acc": 0.8,
            "env1_in_wga": val_wga, "env2_in_acc": test_acc, "env2_out_acc": test_acc,
            "env2_in_wga": test_acc - 0.1}


def test_selection_reads_the_validation_splits_worst_group():
    from domainbed.lib.query import Q
    method = model_selection.ValidationWorstGroupSelectionMethod
    run = Q([_record(0, 0.2, 0.9), _record(1, 0.6, 0.5), _record(2, 0.4, 0.7)])
    assert method.run_acc(run) == {"val_acc": 0.6, "test_acc": 0.5}
    assert method.run_acc(run, "wga")["test_acc"] == pytest.approx(0.4)
    no_val = {k: v for k, v in _record(0, 0.2, 0.9).items() if k != "validation_envs"}
    assert method.checkpoint_acc(no_val) is None


def test_collect_results_adds_the_validation_split_tables(tmp_path, run_main):
    out = tmp_path / "sweep" / "run"
    assert run_main(train.main, *subpop_argv(out)).returncode == 0
    report = collect_results.render_report(reporting.load_records(str(tmp_path / "sweep")))
    assert "model selection method: validation-split worst-group accuracy" in report
    assert report.count("validation-split worst-group accuracy") >= 2  # acc and wga tables


def test_group_balanced_weights_draw_every_group_equally():
    env = datasets.get_dataset_class("DebugAttr28")(None, [0], {})[1]
    weights = misc.make_weights_for_balanced_groups(env)
    groups = misc.groups_of(env)
    mass = Counter()
    for g, w in zip(groups, weights.tolist()):
        mass[g] += w
    assert len(mass) >= 3 and max(mass.values()) == pytest.approx(min(mass.values()))
    assert weights.sum().item() == pytest.approx(1.0)


def test_group_balanced_sampling_reaches_the_loaders(tmp_path, run_main):
    out = tmp_path / "run"
    argv = ["--dataset", "DebugAttr28", "--algorithm", "ERM", "--output_dir", str(out),
            "--hparams", '{"batch_size": 4, "group_balanced": true}', "--steps", "2"]
    assert run_main(train.main, *argv).returncode == 0
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["hparams"]["group_balanced"] is True
    argv[1] = "Debug28"
    refused = run_main(train.main, *argv[:-1], "1", "--output_dir", str(tmp_path / "r"))
    assert refused.returncode == 2 and "group_balanced needs groups" in refused.stderr


def test_balancing_weights_follow_the_hparams():
    assert train.balancing_weights({"class_balanced": False}) is None
    assert train.balancing_weights({"class_balanced": True}) is \
        misc.make_weights_for_balanced_classes
    assert train.balancing_weights({"class_balanced": True, "group_balanced": True}) is \
        misc.make_weights_for_balanced_groups
    assert torch.is_tensor(misc.make_weights_for_balanced_classes(
        datasets.get_dataset_class("Debug28")(None, [0], {})[0]))
