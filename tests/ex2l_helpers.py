"""Build an algorithm on a Debug dataset and draw its minibatches (shared by the EX2L tests)."""
import torch

from domainbed import algorithms, datasets, hparams_registry
from domainbed.plugins import load_plugins

load_plugins()


def build(name="EX2L_Literal", dataset_name="Debug28", num_attributes=None, seed=0, **overrides):
    hparams = hparams_registry.default_hparams(name, dataset_name)
    hparams.update(overrides)
    dataset = datasets.get_dataset_class(dataset_name)("", [], hparams)
    torch.manual_seed(seed)
    cls = algorithms.get_algorithm_class(name)
    kwargs = {"num_attributes": num_attributes} if num_attributes else {}
    return cls(dataset.input_shape, dataset.num_classes, len(dataset), hparams, **kwargs), dataset


def batches(dataset, n=8, with_attributes=False):
    out = []
    for env in dataset:
        items = [env[i] for i in range(n)]
        cols = 3 if with_attributes else 2
        out.append(tuple(torch.stack([torch.as_tensor(it[j]) for it in items]) for j in range(cols)))
    return out
