"""Tests for domainbed.hparams_registry: upstream's seeding rule, defaults, hooks, --hparams."""
import itertools
import json
import math

import numpy as np
import pytest

from domainbed import algorithms, datasets, hparams_registry
from domainbed.lib import misc


@pytest.fixture
def clean_hooks(monkeypatch):
    """An empty hook list for the test; the real one comes back afterwards."""
    hooks = []
    monkeypatch.setattr(hparams_registry, "_HOOKS", hooks)
    return hooks


# --------------------------------------------------------------------------- golden values

GOLDEN = {
    # reference 2.2: hparams seed 1, trial 0 -> random_seed seed_hash(1, 0)
    "PACS": dict(lr=2.7028930742148706e-05, weight_decay=0.00044832883881609976,
                 batch_size=39, resnet_dropout=0.5, groupdro_eta=0.01297606872689568),
    "ColoredMNIST": dict(lr=0.00011906162909279594, weight_decay=0.0,
                         batch_size=372, resnet_dropout=0.5, groupdro_eta=0.01297606872689568),
}


@pytest.mark.parametrize("dataset", sorted(GOLDEN))
def test_golden_random_values_groupdro(dataset):
    random_seed = misc.seed_hash(1, 0)
    assert random_seed == 785910682
    hp = hparams_registry.random_hparams("GroupDRO", dataset, random_seed)
    for key, value in GOLDEN[dataset].items():
        assert hp[key] == value, key  # exact, not approximate
    assert type(hp["batch_size"]) is int


def test_golden_values_do_not_depend_on_algorithm_for_shared_names():
    erm = hparams_registry.random_hparams("ERM", "PACS", misc.seed_hash(1, 0))
    for key in ("lr", "weight_decay", "batch_size", "resnet_dropout"):
        assert erm[key] == GOLDEN["PACS"][key]
    assert "groupdro_eta" not in erm


# --------------------------------------------------------------------------- defaults

@pytest.mark.parametrize("dataset, lr, batch_size", [
    ("Debug28", 1e-3, 64),
    ("DebugAttr28", 1e-3, 64),
    ("Debug224", 5e-5, 32),
    ("SomePluginDataset", 5e-5, 32),  # any other name gets the large-image values
])
def test_default_hparams_erm(dataset, lr, batch_size):
    hp = hparams_registry.default_hparams("ERM", dataset)
    assert hp["lr"] == lr
    assert hp["batch_size"] == batch_size
    assert hp["weight_decay"] == 0.0
    assert hp["nonlinear_classifier"] is False
    assert hp["class_balanced"] is False
    assert hp["resnet_dropout"] == 0.0
    assert "groupdro_eta" not in hp


@pytest.mark.parametrize("dataset", ["Debug28", "Debug224"])
def test_default_hparams_groupdro_adds_eta(dataset):
    erm = hparams_registry.default_hparams("ERM", dataset)
    dro = hparams_registry.default_hparams("GroupDRO", dataset)
    assert dro["groupdro_eta"] == 0.01
    assert set(dro) - set(erm) == {"groupdro_eta"}
    assert {k: v for k, v in dro.items() if k != "groupdro_eta"} == erm


def test_random_large_image_weight_decay_is_drawn_small_is_zero():
    for seed in range(1, 6):
        assert hparams_registry.random_hparams("ERM", "Debug28", seed)["weight_decay"] == 0.0
        assert 1e-6 <= hparams_registry.random_hparams("ERM", "Debug224", seed)["weight_decay"] <= 1e-2


# --------------------------------------------------------------------------- every pair

PAIRS = list(itertools.product(algorithms.ALGORITHMS, datasets.DATASETS))


def _is_plain_scalar(v):
    return isinstance(v, (bool, int, float, str)) and not (isinstance(v, float) and math.isnan(v))


@pytest.mark.parametrize("algorithm, dataset", PAIRS)
def test_random_hparams_deterministic_and_comparable(algorithm, dataset):
    for seed in (0, misc.seed_hash(1, 0)):
        a = hparams_registry.random_hparams(algorithm, dataset, seed)
        b = hparams_registry.random_hparams(algorithm, dataset, seed)
        assert a.keys() == b.keys()
        for k in a:
            assert _is_plain_scalar(a[k]), (k, a[k], type(a[k]))
            assert a[k] == b[k], k
        json.dumps(a)  # train.py writes hparams into results.jsonl
        assert set(a) == set(hparams_registry.default_hparams(algorithm, dataset))
    json.dumps(hparams_registry.default_hparams(algorithm, dataset))


def test_random_hparams_change_with_seed():
    values = {hparams_registry.random_hparams("ERM", "Debug224", s)["lr"] for s in range(5)}
    assert len(values) == 5


# --------------------------------------------------------------------------- hooks

def test_new_hparam_from_hook_leaves_others_unchanged(clean_hooks):
    seed = misc.seed_hash(3, 1)
    before = hparams_registry.random_hparams("GroupDRO", "PACS", seed)

    def hook(algorithm, dataset, define):
        define("aaa_first", 1.0, lambda r: r.uniform(0, 1))
        define("zzz_last", 2, lambda r: int(r.randint(0, 100)))

    hparams_registry.register_hparams_hook(hook)
    after = hparams_registry.random_hparams("GroupDRO", "PACS", seed)
    assert set(after) == set(before) | {"aaa_first", "zzz_last"}
    assert {k: after[k] for k in before} == before
    # The new hparam draws from its own RandomState(seed_hash(random_seed, name)).
    expected = np.random.RandomState(misc.seed_hash(seed, "aaa_first")).uniform(0, 1)
    assert after["aaa_first"] == expected
    assert hparams_registry.default_hparams("ERM", "Debug28")["zzz_last"] == 2


def test_hook_receives_algorithm_and_dataset(clean_hooks):
    seen = []

    def hook(algorithm, dataset, define):
        seen.append((algorithm, dataset))
        if algorithm == "MyAlg":
            define("my_alg_param", 0.5, lambda r: 0.25)

    hparams_registry.register_hparams_hook(hook)
    assert hparams_registry.default_hparams("MyAlg", "Debug28")["my_alg_param"] == 0.5
    assert hparams_registry.random_hparams("MyAlg", "Debug28", 7)["my_alg_param"] == 0.25
    assert "my_alg_param" not in hparams_registry.default_hparams("ERM", "Debug28")
    assert ("MyAlg", "Debug28") in seen and ("ERM", "Debug28") in seen


def test_register_hparams_hook_is_idempotent(clean_hooks):
    calls = []

    def hook(algorithm, dataset, define):
        calls.append(1)
        define("only_once", 1, lambda r: 1)  # would fail as "defined twice" if run twice

    hparams_registry.register_hparams_hook(hook)
    hparams_registry.register_hparams_hook(hook)
    assert hparams_registry._HOOKS == [hook]
    assert hparams_registry.default_hparams("ERM", "Debug28")["only_once"] == 1
    assert len(calls) == 1


def test_define_twice_without_replace_fails(clean_hooks):
    hparams_registry.register_hparams_hook(lambda a, d, define: define("lr", 0.1, lambda r: 0.1))
    with pytest.raises(AssertionError, match="lr"):
        hparams_registry.default_hparams("ERM", "Debug28")


def test_define_replace_overrides_default_and_random(clean_hooks):
    def hook(algorithm, dataset, define):
        if dataset == "PACS":
            define("lr", 0.123, lambda r: 10 ** r.uniform(-4.5, -2.5), replace=True)

    hparams_registry.register_hparams_hook(hook)
    assert hparams_registry.default_hparams("ERM", "PACS")["lr"] == 0.123
    # Same name, same seed, same draw as the small-image rule: ColoredMNIST's golden lr.
    assert (hparams_registry.random_hparams("ERM", "PACS", misc.seed_hash(1, 0))["lr"]
            == GOLDEN["ColoredMNIST"]["lr"])
    assert hparams_registry.default_hparams("ERM", "VLCS")["lr"] == 5e-5


# --------------------------------------------------------------------------- --hparams parsing

def test_parse_hparams_json_valid():
    assert hparams_registry.parse_hparams_json('{"lr": 1e-4, "batch_size": 8}') == {
        "lr": 1e-4, "batch_size": 8}


@pytest.mark.parametrize("text", ['{"lr": 1e-4', "lr=0.1", "", "{'lr': 0.1}"])
def test_parse_hparams_json_malformed(text):
    with pytest.raises(hparams_registry.HparamsError) as info:
        hparams_registry.parse_hparams_json(text)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, misc.UserInputError)
    assert "--hparams" in str(info.value) and "JSON" in str(info.value)


@pytest.mark.parametrize("text, kind", [("[1, 2]", "list"), ("3", "int"), ("null", "NoneType"),
                                        ('"lr"', "str")])
def test_parse_hparams_json_not_an_object(text, kind):
    with pytest.raises(hparams_registry.HparamsError, match="object") as info:
        hparams_registry.parse_hparams_json(text)
    assert kind in str(info.value)


def test_apply_overrides_updates_in_place():
    hp = hparams_registry.default_hparams("ERM", "Debug28")
    out = hparams_registry.apply_overrides(hp, {"lr": 0.5, "batch_size": 8})
    assert out is hp
    assert hp["lr"] == 0.5 and hp["batch_size"] == 8


def test_apply_overrides_unknown_key_names_closest_and_changes_nothing():
    hp = hparams_registry.default_hparams("ERM", "Debug28")
    original = dict(hp)
    with pytest.raises(hparams_registry.HparamsError) as info:
        hparams_registry.apply_overrides(hp, {"batch_size": 8, "lrr": 0.1}, "ERM", "Debug28")
    msg = str(info.value)
    assert "'lrr'" in msg
    assert "Did you mean 'lr'?" in msg
    assert "ERM" in msg and "Debug28" in msg
    assert hp == original  # no partial update


def test_apply_overrides_unknown_key_with_nothing_close():
    hp = hparams_registry.default_hparams("ERM", "Debug28")
    with pytest.raises(hparams_registry.HparamsError, match="'qqqqqqqq'") as info:
        hparams_registry.apply_overrides(hp, {"qqqqqqqq": 1})
    assert "Did you mean" not in str(info.value)
    assert "batch_size" in str(info.value)  # lists the valid ones
