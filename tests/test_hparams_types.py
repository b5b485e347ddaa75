"""Typed hparams: every registered hparam has a type (its default's) and, where it has one,
a range or a set of choices; --hparams values are checked against them before any work."""
import json

import pytest

from domainbed import hparams_registry
from domainbed.hparams_registry import HparamsError, HparamSpec
from domainbed.plugins import load_plugins
from domainbed.scripts import sweep, train

load_plugins()

# (algorithm, --hparams, a phrase of the message): each once ran another experiment than
# the one asked for (a truthy string, true as 1.0) or failed with a traceback.
BAD = [
    ("ERM", {"data_augmentation": "no"}, "data_augmentation='no' in --hparams for ERM on "
                                         "Debug28 must be true or false"),
    ("EX2L", {"ex2l_confounder_grad": "false"}, "ex2l_confounder_grad='false'"),
    ("ERM", {"lr": True}, "lr=True in --hparams for ERM on Debug28 must be a number"),
    ("ERM", {"lr": "fast"}, "lr='fast'"),
    ("ERM", {"lr": -1}, "lr=-1 in --hparams for ERM on Debug28 must be >= 0.0"),
    ("ERM", {"batch_size": 0}, "batch_size=0 in --hparams for ERM on Debug28 must be >= 1"),
    ("ERM", {"batch_size": -1}, "must be >= 1"),
    ("ERM", {"batch_size": 8.5}, "batch_size=8.5 in --hparams for ERM on Debug28 must be an "
                                 "integer"),
    ("ERM", {"batch_size": "8"}, "must be an integer"),
    ("ERM", {"resnet_dropout": 1.5}, "must be <= 1.0"),
    ("ERM", {"featurizer": "resnt"}, "must be one of auto, "),
    ("EX2L", {"ex2l_lambda": "big"}, "ex2l_lambda='big'"),
    ("EX2L", {"ex2l_lambda": -0.5}, "must be >= 0.0"),
    ("EX2L", {"ex2l_overlap": "dice"}, "must be one of cosine, pearson, soft_iou"),
    ("EX2L", {"ex2l_warmup_steps": 1.5}, "must be an integer"),
    ("AttributeDANN", {"adv_lambda": False}, "must be a number"),
]


@pytest.mark.parametrize("algorithm, overrides, phrase", BAD)
def test_train_refuses_before_any_work(algorithm, overrides, phrase, tmp_path, run_main):
    out = tmp_path / "run"
    res = run_main(train.main, "--dataset", "Debug28", "--algorithm", algorithm,
                   "--output_dir", out, "--steps", 1, "--hparams", json.dumps(overrides))
    assert res.returncode == 2, res.stderr
    assert phrase in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing written: not even the folder


@pytest.mark.parametrize("algorithm, overrides, phrase", BAD[:4])
def test_sweep_refuses_before_any_job(algorithm, overrides, phrase, tmp_path, run_main):
    res = run_main(sweep.main, "launch", "--algorithms", algorithm, "--datasets", "Debug28",
                   "--data_dir", tmp_path, "--output_dir", tmp_path / "sweep",
                   "--command_launcher", "dummy", "--n_hparams", 1, "--n_trials", 1,
                   "--single_test_envs", "--skip_confirmation", "--hparams", json.dumps(overrides))
    assert res.returncode == 2 and phrase in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("overrides", [
    {"lr": 1}, {"lr": 0.01}, {"batch_size": 8}, {"data_augmentation": False},
    {"resnet_dropout": 0.5}, {"featurizer": "mnist_cnn"}, {"pretrained_path": "/x.pth"},
])
def test_good_values_pass(overrides):
    hp = hparams_registry.default_hparams("ERM", "Debug28")
    assert hparams_registry.apply_overrides(hp, overrides, "ERM", "Debug28")[
        next(iter(overrides))] == next(iter(overrides.values()))


def test_every_registered_hparam_has_a_type_that_its_values_meet():
    for algorithm in ("ERM", "GroupDRO", "EX2L", "AttributeDANN"):
        for dataset in ("Debug28", "Debug224", "SpawriousLiteM2M_hard", "SpawriousM2M_hard"):
            specs = hparams_registry.hparam_specs(algorithm, dataset)
            assert set(specs) == set(hparams_registry.default_hparams(algorithm, dataset))
            for seed in range(4):
                values = hparams_registry.random_hparams(algorithm, dataset, seed)
                for name, value in values.items():
                    assert specs[name].problem(value) is None, (algorithm, dataset, name, value)


def test_spec_rules():
    assert HparamSpec(float).problem(3) is None            # an int is a number
    assert HparamSpec(int).problem(3.0) == "must be an integer"
    assert HparamSpec(float).problem(float("nan")) == "must be a finite number"
    assert HparamSpec(bool).problem(1) == "must be true or false"
    assert HparamSpec(str, choices=lambda: ["a", "b"]).problem("c") == "must be one of a, b"


def test_types_follow_what_the_search_draws(clean_registry_hooks):
    """An int default with a float search is a float (upstream's ANDMask tau); None and
    list defaults are not type-checked; numpy draws are stored as Python numbers."""
    def hook(algorithm, dataset, define):
        define("toy_tau", 1, lambda r: r.uniform(0.5, 1.0))
        define("toy_none", None, lambda r: None)
        define("toy_list", [1, 2], lambda r: [1, 2])
        define("toy_choice", 0.0, lambda r: r.choice([0.0, 0.5]))
    hparams_registry.register_hparams_hook(hook)
    hp = hparams_registry.default_hparams("ERM", "Debug28")
    hparams_registry.apply_overrides(hp, {"toy_tau": 0.7, "toy_none": "x", "toy_list": [3]},
                                     "ERM", "Debug28")
    assert type(hparams_registry.random_hparams("ERM", "Debug28", 3)["toy_choice"]) is float
    with pytest.raises(HparamsError, match="toy_tau='a' .* must be a number"):
        hparams_registry.apply_overrides(hp, {"toy_tau": "a"}, "ERM", "Debug28")


def test_a_replaced_hparam_keeps_its_range():
    """Lite replaces lr and batch_size with its own values; their ranges stay."""
    hp = hparams_registry.default_hparams("ERM", "SpawriousLiteM2M_hard")
    for bad in ({"lr": -1}, {"batch_size": 0}, {"weight_decay": -5.0}):
        with pytest.raises(HparamsError, match="must be >="):
            hparams_registry.apply_overrides(dict(hp), bad, "ERM", "SpawriousLiteM2M_hard")


def test_an_int_too_large_for_a_float_is_refused():
    hp = hparams_registry.default_hparams("ERM", "Debug28")
    with pytest.raises(HparamsError, match="must be a finite number"):
        hparams_registry.apply_overrides(hp, {"lr": 10 ** 400}, "ERM", "Debug28")


def test_a_plugin_declares_its_own(clean_registry_hooks):
    def hook(algorithm, dataset, define):
        define("toy_depth", 2, lambda r: 3, low=1, high=4)
    hparams_registry.register_hparams_hook(hook)
    hp = hparams_registry.default_hparams("ERM", "Debug28")
    with pytest.raises(HparamsError, match="toy_depth=5 .* must be <= 4"):
        hparams_registry.apply_overrides(hp, {"toy_depth": 5}, "ERM", "Debug28")


@pytest.fixture
def clean_registry_hooks(monkeypatch):
    monkeypatch.setattr(hparams_registry, "_HOOKS", list(hparams_registry._HOOKS))
