"""Tests for domainbed.algorithms: upstream's TestAlgorithms contract on CPU, ERM, GroupDRO, lookup.

Debug224 is not parametrized here: a ResNet on 224x224 inputs takes several seconds per
algorithm on one CPU thread (networks are tested in test_networks.py).
"""
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import algorithms, datasets, hparams_registry
from domainbed.plugins import load_plugins

torch.set_num_threads(1)
load_plugins()  # plugin algorithms (EX2L) must meet the same contract, as in upstream's tests


def make_minibatches(dataset, batch_size):
    """Upstream helpers.make_minibatches: the first batch_size items of each env."""
    minibatches = []
    for env in dataset:
        x = torch.stack([env[i][0] for i in range(batch_size)])
        y = torch.stack([torch.as_tensor(env[i][1]) for i in range(batch_size)])
        minibatches.append((x, y))
    return minibatches


def requires_attributes(algorithm_name):
    return getattr(algorithms.get_algorithm_class(algorithm_name), "REQUIRES_ATTRIBUTES", False)


def build(algorithm_name, dataset_name="Debug28", **overrides):
    """The algorithm as train.py builds it; one that needs groups gets an attribute-aware
    Debug dataset (the same images with an attribute) and its number of attribute values."""
    torch.manual_seed(0)
    if requires_attributes(algorithm_name) and dataset_name == "Debug28":
        dataset_name = "DebugAttr28"
    hparams = hparams_registry.default_hparams(algorithm_name, dataset_name)
    hparams.update(overrides)
    dataset = datasets.get_dataset_class(dataset_name)("", [], hparams)
    cls = algorithms.get_algorithm_class(algorithm_name)
    extra = algorithms.attribute_kwargs(cls, dataset) if requires_attributes(algorithm_name) else {}
    algorithm = cls(dataset.input_shape, dataset.num_classes, len(dataset), hparams, **extra)
    return algorithm, dataset, hparams


def contract_minibatches(algorithm_name, dataset, batch_size):
    """Upstream's (x, y) minibatches; (x, y, a) for an algorithm that needs groups."""
    if not requires_attributes(algorithm_name):
        return make_minibatches(dataset, batch_size)
    return [tuple(torch.stack([torch.as_tensor(env[i][j]) for i in range(batch_size)])
                  for j in range(3)) for env in dataset]




# --------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("algorithm_name", algorithms.ALGORITHMS)
def test_init_update_predict(algorithm_name):
    algorithm, dataset, _ = build(algorithm_name)
    assert isinstance(algorithm, nn.Module)
    minibatches = contract_minibatches(algorithm_name, dataset, 8)
    for _ in range(3):
        out = algorithm.update(minibatches)
        assert isinstance(out, dict) and out
        for key, value in out.items():
            assert isinstance(key, str)
            assert type(value) is float, (key, type(value))
    algorithm.eval()
    with torch.no_grad():
        assert algorithm.predict(minibatches[0][0]).shape == (8, dataset.num_classes) == (8, 2)


@pytest.mark.parametrize("algorithm_name", algorithms.ALGORITHMS)
def test_update_accepts_attribute_triples(algorithm_name):
    algorithm, dataset, _ = build(algorithm_name, "DebugAttr28")
    minibatches = []
    for env in dataset:
        items = [env[i] for i in range(8)]
        minibatches.append(tuple(torch.stack([torch.as_tensor(it[j]) for it in items])
                                 for j in range(3)))
    assert all(len(mb) == 3 for mb in minibatches)
    for _ in range(2):
        out = algorithm.update(minibatches)
        assert isinstance(out["loss"], float)
    assert algorithm.predict(minibatches[0][0]).shape == (8, 2)


@pytest.mark.parametrize("algorithm_name", algorithms.ALGORITHMS)
def test_update_copes_with_single_class_batches(algorithm_name):
    algorithm, dataset, _ = build(algorithm_name)
    minibatches = [(x, torch.zeros_like(y), *rest)
                   for x, y, *rest in contract_minibatches(algorithm_name, dataset, 8)]
    for _ in range(3):
        out = algorithm.update(minibatches)
        assert all(torch.isfinite(torch.tensor(v)) for v in out.values())


# --------------------------------------------------------------------------- ERM

def test_erm_loss_is_mean_cross_entropy_and_params_move():
    algorithm, dataset, _ = build("ERM")
    minibatches = make_minibatches(dataset, 8)
    all_x = torch.cat([x for x, _ in minibatches])
    all_y = torch.cat([y for _, y in minibatches])
    with torch.no_grad():
        expected = F.cross_entropy(algorithm.predict(all_x), all_y).item()
    before = [p.detach().clone() for p in algorithm.parameters()]
    out = algorithm.update(minibatches)
    assert out["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert any(not torch.equal(b, p) for b, p in zip(before, algorithm.parameters()))


def test_erm_state_dict_layout_is_upstreams():
    algorithm, _, _ = build("ERM")
    keys = set(algorithm.state_dict())
    assert any(k.startswith("featurizer.") for k in keys)
    assert any(k.startswith("classifier.") for k in keys)
    assert any(k.startswith("network.0.") for k in keys)
    assert any(k.startswith("network.1.") for k in keys)
    assert not any("optimizer" in k for k in keys)


# --------------------------------------------------------------------------- GroupDRO

def _per_env_losses(algorithm, minibatches):
    with torch.no_grad():
        return torch.stack([F.cross_entropy(algorithm.predict(x), y) for x, y in minibatches])


@pytest.mark.parametrize("eta", [0.01, 1.0])
def test_groupdro_q_is_exponentiated_gradient(eta):
    algorithm, dataset, _ = build("GroupDRO", groupdro_eta=eta)
    assert algorithm.q.numel() == 0
    minibatches = make_minibatches(dataset, 8)

    losses1 = _per_env_losses(algorithm, minibatches)
    out = algorithm.update(minibatches)
    q1 = torch.softmax(eta * losses1, 0)
    assert algorithm.q.shape == (3,)
    assert torch.allclose(algorithm.q, q1, rtol=1e-5, atol=1e-7)
    assert out["loss"] == pytest.approx(float(torch.dot(q1, losses1)), rel=1e-5)

    losses2 = _per_env_losses(algorithm, minibatches)
    algorithm.update(minibatches)
    q2 = q1 * torch.exp(eta * losses2)
    q2 = q2 / q2.sum()
    assert torch.allclose(algorithm.q, q2, rtol=1e-5, atol=1e-7)


def test_groupdro_q_weights_the_worst_env_most():
    algorithm, dataset, _ = build("GroupDRO", groupdro_eta=1.0)
    minibatches = make_minibatches(dataset, 8)
    losses = _per_env_losses(algorithm, minibatches)
    algorithm.update(minibatches)
    assert int(algorithm.q.argmax()) == int(losses.argmax())
    assert float(algorithm.q.sum()) == pytest.approx(1.0)


def test_groupdro_state_dict_round_trip_into_fresh_instance():
    algorithm, dataset, hparams = build("GroupDRO", groupdro_eta=1.0)
    minibatches = make_minibatches(dataset, 8)
    for _ in range(2):
        algorithm.update(minibatches)
    assert "q" in algorithm.state_dict()
    buffer = io.BytesIO()
    torch.save(algorithm.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)

    fresh = algorithms.GroupDRO(dataset.input_shape, dataset.num_classes, len(dataset), hparams)
    assert fresh.q.numel() == 0
    fresh.load_state_dict(state)  # upstream raises a size mismatch here
    assert torch.equal(fresh.q, algorithm.q)
    assert "q" in dict(fresh.named_buffers())  # still a registered buffer
    algorithm.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.predict(minibatches[0][0]), algorithm.predict(minibatches[0][0]))

    # Training continues from the restored weights: the next q is the same in both.
    algorithm.train()
    fresh.train()
    algorithm.update(minibatches)
    fresh.update(minibatches)
    assert torch.allclose(fresh.q, algorithm.q)


# --------------------------------------------------------------------------- lookup / registration

def test_get_algorithm_class_known():
    assert algorithms.get_algorithm_class("ERM") is algorithms.ERM
    assert algorithms.get_algorithm_class("GroupDRO") is algorithms.GroupDRO
    assert issubclass(algorithms.GroupDRO, algorithms.ERM)
    assert issubclass(algorithms.ERM, algorithms.Algorithm)


@pytest.mark.parametrize("name, closest", [
    ("GroupDR0", "GroupDRO"), ("erm", "ERM"), ("groupdro", "GroupDRO")])
def test_get_algorithm_class_unknown_names_closest_and_lists_known(name, closest):
    with pytest.raises(NotImplementedError) as info:
        algorithms.get_algorithm_class(name)
    msg = str(info.value)
    assert msg.startswith(f"Algorithm not found: {name}")
    assert f"'{closest}'" in msg
    for known in algorithms.ALGORITHMS:
        assert known in msg


@pytest.mark.parametrize("name", ["networks", "torch", "F", "ALGORITHMS", "get_algorithm_class"])
def test_get_algorithm_class_rejects_module_globals_that_are_not_algorithms(name):
    with pytest.raises(NotImplementedError):
        algorithms.get_algorithm_class(name)


def test_register_algorithm_idempotent_and_in_place(restore_algorithms):
    the_list = algorithms.ALGORITHMS

    class MyAlg(algorithms.ERM):
        pass

    algorithms.register_algorithm("MyAlg", MyAlg)
    algorithms.register_algorithm("MyAlg", MyAlg)
    assert algorithms.ALGORITHMS is the_list
    assert the_list.count("MyAlg") == 1
    assert the_list[-1] == "MyAlg"
    assert algorithms.get_algorithm_class("MyAlg") is MyAlg


def test_register_algorithm_after(restore_algorithms):
    class A(algorithms.ERM):
        pass

    class B(algorithms.ERM):
        pass

    algorithms.register_algorithm("AlgA", A, after="ERM")
    algorithms.register_algorithm("AlgB", B, after="ERM")
    assert algorithms.ALGORITHMS[:4] == ["ERM", "AlgB", "AlgA", "GroupDRO"]
    # Registering again does not move it.
    algorithms.register_algorithm("AlgA", A, after="GroupDRO")
    assert algorithms.ALGORITHMS.index("AlgA") == 2


def test_upstream_style_setattr_plugin_resolves(restore_algorithms):
    class Plain(algorithms.ERM):
        pass

    algorithms.PlainPlugin = Plain
    assert algorithms.get_algorithm_class("PlainPlugin") is Plain
