"""Tests for domainbed.lib.misc: seeds, splits, class weights, accuracy, group metrics, rows."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from domainbed.lib import misc

torch.set_num_threads(1)


# --------------------------------------------------------------------------- seed_hash

@pytest.mark.parametrize("args, expected", [
    ((1, 0), 785910682),
    ((0, 0), 894182419),
    ((0, 1), 1514274641),
    (("VLCS", "ERM", [1, 2], 1, 0), 360234358),
])
def test_seed_hash_golden_values(args, expected):
    assert misc.seed_hash(*args) == expected


def test_seed_hash_is_an_int_below_2_31_and_depends_on_order():
    h = misc.seed_hash(785910682, "lr")
    assert isinstance(h, int) and 0 <= h < 2 ** 31
    assert misc.seed_hash(0, 1) != misc.seed_hash(1, 0)


# --------------------------------------------------------------------------- split_dataset

def _indexed_dataset(n):
    return TensorDataset(torch.arange(n), torch.arange(n) % 2)


def test_split_dataset_sizes_and_partition():
    ds = _indexed_dataset(16)
    first, rest = misc.split_dataset(ds, 3, seed=123)
    assert len(first) == 3 and len(rest) == 13
    assert sorted(first.keys + rest.keys) == list(range(16))
    assert not set(first.keys) & set(rest.keys)
    # Items are the underlying items at the recorded positions.
    for split in (first, rest):
        for i in range(len(split)):
            assert int(split[i][0]) == split.keys[i]


def test_split_dataset_is_upstreams_seeded_permutation():
    ds = _indexed_dataset(20)
    first, rest = misc.split_dataset(ds, 4, seed=misc.seed_hash(0, 1))
    keys = list(range(20))
    np.random.RandomState(misc.seed_hash(0, 1)).shuffle(keys)
    assert first.keys == keys[:4] and rest.keys == keys[4:]


def test_split_dataset_is_deterministic_and_seed_dependent():
    ds = _indexed_dataset(50)
    a1, b1 = misc.split_dataset(ds, 10, seed=5)
    a2, b2 = misc.split_dataset(ds, 10, seed=5)
    a3, _ = misc.split_dataset(ds, 10, seed=6)
    assert a1.keys == a2.keys and b1.keys == b2.keys
    assert a1.keys != a3.keys


def test_split_dataset_edge_sizes():
    ds = _indexed_dataset(5)
    empty, everything = misc.split_dataset(ds, 0, seed=0)
    assert len(empty) == 0 and len(everything) == 5
    whole, none = misc.split_dataset(ds, 5, seed=0)
    assert len(whole) == 5 and len(none) == 0
    with pytest.raises(AssertionError):
        misc.split_dataset(ds, 6, seed=0)


# --------------------------------------------------------------------------- class weights

def test_make_weights_for_balanced_classes_upstream_case():
    dataset = [("A", 0), ("B", 1), ("C", 0), ("D", 2), ("E", 3), ("F", 0)]
    w = misc.make_weights_for_balanced_classes(dataset)
    assert w.shape == (6,)
    assert float(w.sum()) == pytest.approx(1.0)
    assert w[0] == w[2] == w[5]
    assert w[1] == w[3] == w[4]
    assert float(3 * w[0]) == pytest.approx(float(w[1]))
    # 1 / (count[y] * n_classes): 1/(3*4) and 1/(1*4).
    assert float(w[0]) == pytest.approx(1 / 12)
    assert float(w[1]) == pytest.approx(1 / 4)


def test_make_weights_accepts_tensor_labels_and_classes_sum_equally():
    ds = TensorDataset(torch.zeros(10, 2), torch.tensor([0] * 7 + [1] * 3))
    w = misc.make_weights_for_balanced_classes(ds)
    assert float(w[:7].sum()) == pytest.approx(0.5)
    assert float(w[7:].sum()) == pytest.approx(0.5)


class _ListedSamples(torch.utils.data.Dataset):
    """Lists its samples as (path, y); loading an item would mean decoding an image."""

    def __init__(self, labels):
        self.samples = [(f"img{i}.png", y) for i, y in enumerate(labels)]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        raise AssertionError("labels must come from .samples, not from loading items")


def test_balanced_weights_read_listed_samples_without_loading_items():
    ds = _ListedSamples([0, 0, 0, 1, 2, 2])
    w = misc.make_weights_for_balanced_classes(ds)
    assert float(w[0]) == pytest.approx(1 / 9) and float(w[3]) == pytest.approx(1 / 3)
    split, rest = misc.split_dataset(ds, 3, seed=0)
    expected = [ds.samples[k][1] for k in split.keys]
    assert misc.labels_of(split) == expected
    assert float(misc.make_weights_for_balanced_classes(split).sum()) == pytest.approx(1.0)


# --------------------------------------------------------------------------- accuracy

class _FixedPredictor(nn.Module):
    """predict(x) returns x itself as logits; records the mode it was called in."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def predict(self, x):
        self.modes.append(self.training)
        return x


def test_accuracy_multiclass_counts_argmax_and_restores_train_mode():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0],
                           [5.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 1, 0, 0, 2])  # correct: yes, yes, no, yes, no
    net = _FixedPredictor()
    net.train()
    acc = misc.accuracy(net, DataLoader(TensorDataset(logits, y), batch_size=2), None, "cpu")
    assert isinstance(acc, float)
    assert acc == pytest.approx(3 / 5)
    assert net.modes and not any(net.modes)  # predict ran in eval mode
    assert net.training  # train() called again at the end


def test_accuracy_single_logit_is_binary_threshold_at_zero():
    logits = torch.tensor([[1.0], [-1.0], [2.0], [-3.0]])
    y = torch.tensor([1, 1, 0, 0])  # correct: yes, no, no, yes
    acc = misc.accuracy(_FixedPredictor(), DataLoader(TensorDataset(logits, y), batch_size=4),
                        None, "cpu")
    assert acc == pytest.approx(0.5)


def test_accuracy_weighted():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    acc = misc.accuracy(_FixedPredictor(), DataLoader(TensorDataset(logits, y), batch_size=3),
                        weights, "cpu")
    assert acc == pytest.approx(0.5 / 1.0)


# --------------------------------------------------------------------------- groups

def _group_loader():
    # predictions from one-hot logits over 2 classes
    pred = torch.tensor([0, 0, 1, 1, 1, 0, 0, 1, 1])
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 1])
    a = torch.tensor([0, 1, 1, 0, 0, 0, 1, 1, 1])
    logits = nn.functional.one_hot(pred, 2).float()
    return DataLoader(TensorDataset(logits, y, a), batch_size=4)


def test_evaluate_with_groups_counts_per_y_a():
    acc, counts = misc.evaluate(_FixedPredictor(), _group_loader(), None, "cpu", with_groups=True)
    # (y, a): hits / total
    # (0,0): idx0 correct -> 1/1
    # (0,1): idx1 correct, idx2 wrong, idx7 wrong -> 1/3
    # (1,0): idx3 correct, idx4 correct, idx5 wrong -> 2/3
    # (1,1): idx6 wrong, idx8 correct -> 1/2
    assert acc == pytest.approx(5 / 9)
    assert {k: (float(c), int(t)) for k, (c, t) in counts.items()} == {
        (0, 0): (1.0, 1), (0, 1): (1.0, 3), (1, 0): (2.0, 3), (1, 1): (1.0, 2)}
    accs = misc.group_accuracies(counts)
    assert set(accs) == {"y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1"}
    assert accs["y=0,a=0"] == pytest.approx(1.0)
    assert accs["y=0,a=1"] == pytest.approx(1 / 3)
    assert accs["y=1,a=0"] == pytest.approx(2 / 3)
    assert accs["y=1,a=1"] == pytest.approx(0.5)
    assert misc.worst_group_accuracy(counts) == pytest.approx(1 / 3)


def test_evaluate_without_groups_returns_plain_accuracy_even_on_triples():
    acc = misc.evaluate(_FixedPredictor(), _group_loader(), None, "cpu")
    assert acc == pytest.approx(5 / 9)


def test_evaluate_with_groups_on_pairs_gives_no_groups():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    acc, counts = misc.evaluate(_FixedPredictor(), DataLoader(TensorDataset(logits, y)),
                                None, "cpu", with_groups=True)
    assert acc == pytest.approx(0.5)
    assert counts == {}


def test_worst_group_accuracy_ignores_empty_groups_and_is_nan_without_groups():
    assert misc.worst_group_accuracy({(0, 0): (3, 4), (1, 1): (0, 0), (0, 1): (1, 2)}) == 0.5
    assert math.isnan(misc.worst_group_accuracy({}))
    assert misc.group_accuracies({(1, 0): (0, 0), (0, 0): (1, 4)}) == {"y=0,a=0": 0.25}


# --------------------------------------------------------------------------- print_row

def test_print_row_text_format(capsys):
    misc.print_row(["a", 1.5, 3, "averyveryverylongstring", np.float32(0.25)], colwidth=10)
    out = capsys.readouterr().out
    assert out == ("a         " + "  " + "1.50000000" + "  " + "3         " + "  "
                   + "averyveryv" + "  " + "0.25000000" + " \n")


def test_print_row_default_colwidth_is_10_and_floats_have_10_decimals(capsys):
    misc.print_row([0.5, np.float64(2.0), np.int64(7)], colwidth=14)
    misc.print_row(["x"])
    out = capsys.readouterr().out.split("\n")
    assert out[0] == "0.5000000000" + " " * 4 + "2.0000000000" + " " * 4 + "7" + " " * 13 + " "
    assert out[1] == "x" + " " * 9 + " "


def test_print_row_latex(capsys):
    misc.print_row(["Algo", 0.5], colwidth=6, latex=True)
    assert capsys.readouterr().out == "Algo   & 0.5000 \\\\\n"
