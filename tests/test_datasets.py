"""Tests for domainbed.datasets (Debug datasets, registry) and lib.fast_data_loader."""
import collections

import pytest
import torch
from torch.utils.data import TensorDataset

from domainbed import datasets, hparams_registry
from domainbed.lib.fast_data_loader import FastDataLoader, InfiniteDataLoader

torch.set_num_threads(1)

SHAPES = {"Debug28": (3, 28, 28), "Debug224": (3, 224, 224), "DebugAttr28": (3, 28, 28)}




def test_debug_datasets_are_listed():
    for name in SHAPES:
        assert name in datasets.DATASETS


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_debug_dataset_shapes(name):
    hparams = hparams_registry.default_hparams("ERM", name)
    cls = datasets.get_dataset_class(name)
    dataset = cls("/nonexistent", [0], hparams)  # positional (root, test_envs, hparams)
    assert isinstance(dataset, datasets.MultipleDomainDataset)
    assert len(dataset) == datasets.num_environments(name) == len(cls.ENVIRONMENTS) == 3
    assert tuple(dataset.input_shape) == SHAPES[name]
    assert dataset.num_classes == 2
    assert cls.N_STEPS == 5001 and cls.CHECKPOINT_FREQ == 100
    for i in range(len(dataset)):
        env = dataset[i]
        assert env is dataset.datasets[i]
        assert len(env) == 16
        item = env[0]
        assert tuple(item[0].shape) == SHAPES[name]
        assert item[0].dtype == torch.float32
        ys = torch.stack([env[j][1] for j in range(len(env))])
        assert ys.dtype == torch.int64
        assert set(ys.tolist()) <= {0, 1}


def test_debug28_yields_pairs_without_attributes():
    dataset = datasets.Debug28(None, [], {})
    assert not datasets.has_attributes(dataset)
    assert len(dataset[0][0]) == 2


def test_debug_attr28_yields_triples_and_has_attributes():
    dataset = datasets.DebugAttr28(None, [], {})
    assert datasets.has_attributes(dataset)
    assert len(dataset.ATTRIBUTES) == 2
    for env in dataset:
        items = [env[j] for j in range(len(env))]
        assert all(len(it) == 3 for it in items)
        attrs = {int(it[2]) for it in items}
        assert attrs <= set(range(len(dataset.ATTRIBUTES)))


@pytest.mark.parametrize("name", ["Debug29", "debug28", "Spawrious"])
def test_get_dataset_class_unknown(name):
    with pytest.raises(NotImplementedError) as info:
        datasets.get_dataset_class(name)
    msg = str(info.value)
    assert msg.startswith(f"Dataset not found: {name}")
    for known in datasets.DATASETS:
        assert known in msg


@pytest.mark.parametrize("name, closest", [("Debug29", "Debug28"), ("debug28", "Debug28")])
def test_get_dataset_class_unknown_names_closest(name, closest):
    with pytest.raises(NotImplementedError, match=f"Did you mean '{closest}'"):
        datasets.get_dataset_class(name)


@pytest.mark.parametrize("name", ["TensorDataset", "torch", "DATASETS", "has_attributes"])
def test_get_dataset_class_rejects_globals_that_are_not_datasets(name):
    with pytest.raises(NotImplementedError):
        datasets.get_dataset_class(name)
    with pytest.raises(NotImplementedError):
        datasets.num_environments(name)


def test_register_dataset_idempotent_and_in_place(restore_datasets):
    the_list = datasets.DATASETS

    class MyData(datasets.Debug):
        INPUT_SHAPE = (3, 28, 28)
        ENVIRONMENTS = ["a", "b", "c", "d"]

    datasets.register_dataset("MyData", MyData)
    datasets.register_dataset("MyData", MyData)
    assert datasets.DATASETS is the_list
    assert the_list.count("MyData") == 1
    assert datasets.get_dataset_class("MyData") is MyData
    assert datasets.num_environments("MyData") == 4
    assert vars(datasets)["MyData"] is MyData  # how train.py resolves names upstream


# --------------------------------------------------------------------------- loaders

def _items(n):
    return TensorDataset(torch.arange(n), torch.arange(n) % 2)


def test_infinite_loader_yields_exact_batches_forever():
    loader = InfiniteDataLoader(_items(10), None, batch_size=4, num_workers=0)
    it = iter(loader)
    seen = collections.Counter()
    for _ in range(30):  # far more items than the dataset has
        x, y = next(it)
        assert x.shape == (4,) and y.shape == (4,)
        seen.update(x.tolist())
    assert set(seen) <= set(range(10))
    assert len(seen) == 10  # sampling with replacement still reaches every item
    with pytest.raises(ValueError):
        len(loader)


def test_infinite_loader_with_weights_samples_only_weighted_items():
    weights = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    it = iter(InfiniteDataLoader(_items(6), weights, batch_size=3, num_workers=0))
    for _ in range(10):
        x, _ = next(it)
        assert x.shape == (3,)
        assert set(x.tolist()) <= {2, 4}


def test_infinite_loader_with_batch_equal_to_dataset_size():
    x, _ = next(iter(InfiniteDataLoader(_items(5), None, batch_size=5, num_workers=0)))
    assert x.shape == (5,)


def test_infinite_loader_rejects_split_smaller_than_batch():
    with pytest.raises(ValueError, match="13.*64|fewer"):
        InfiniteDataLoader(_items(13), None, batch_size=64, num_workers=0)


@pytest.mark.parametrize("n, batch_size, n_batches", [(10, 4, 3), (8, 4, 2), (3, 64, 1)])
def test_fast_loader_covers_each_item_once(n, batch_size, n_batches):
    loader = FastDataLoader(_items(n), batch_size=batch_size, num_workers=0)
    assert len(loader) == n_batches
    for _ in range(2):  # every pass is complete
        batches = [x.tolist() for x, _ in loader]
        assert len(batches) == n_batches
        assert all(len(b) <= batch_size for b in batches)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))


def test_fast_loader_yields_triples_from_attribute_datasets():
    ds = TensorDataset(torch.arange(6), torch.zeros(6, dtype=torch.long), torch.ones(6))
    batches = list(FastDataLoader(ds, batch_size=4, num_workers=0))
    assert all(len(b) == 3 for b in batches)
    assert sorted(i for b in batches for i in b[0].tolist()) == list(range(6))


def test_fast_loader_over_an_empty_split_yields_nothing():
    """An empty split (e.g. --holdout_fraction 0) is one pass of zero batches, not a crash."""
    loader = FastDataLoader(_items(0), batch_size=64, num_workers=0)
    assert len(loader) == 0
    assert list(loader) == []
