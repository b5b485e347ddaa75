"""The offline fits of benchmarks/conditional_head.py, on features where the answer is known."""
import math

import torch

from benchmarks import conditional_head as ch


def synthetic(n=600, offset=0.0, seed=0):
    """Two classes; class 0 sees locations {0, 1}, class 1 sees {2, 3}; feature 0 carries the
    location within the class, feature 1 the class, the rest is noise (plus `offset`)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    within = torch.randint(2, (n,), generator=g)
    a = 2 * y + within
    z = torch.randn(n, 8, generator=g) * 0.3 + offset
    z[:, 0] += 2.0 * within - 1.0
    z[:, 1] += 2.0 * y - 1.0
    return z, y, a


def test_prior_entropy_is_the_within_class_entropy():
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    a = torch.tensor([0, 0, 0, 1, 2, 2])
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(ch.prior_entropy(y, a), 4 / 6 * h0, rel_tol=1e-6)


def test_group_weights_give_each_group_the_same_total():
    y = torch.tensor([0, 0, 0, 1, 1, 0])
    a = torch.tensor([0, 0, 0, 1, 0, 1])
    w = ch.group_weights(y, a)
    totals = {(int(c), int(t)): float(w[(y == c) & (a == t)].sum())
              for c, t in {(0, 0), (0, 1), (1, 0), (1, 1)}}
    assert max(totals.values()) - min(totals.values()) < 1e-6


def test_a_masked_head_never_predicts_a_location_its_class_never_had():
    z, y, a = synthetic()
    blocked = ch.blocked_mask(y, a, 2, 4)
    assert blocked.tolist() == [[False, False, True, True], [True, True, False, False]]
    head = torch.nn.Linear(8, 4)
    pred = ch.masked_logits(head, z, blocked[y]).argmax(1)
    assert torch.equal(pred // 2, y)


def test_probe_reads_a_decodable_location_and_reports_the_prior():
    z, y, a = synthetic(offset=0.0)
    row = ch.probe(z, y, a, n_attrs=4)
    assert math.isclose(row["prior_entropy"], math.log(2), rel_tol=0.02)
    assert row["prior_balanced_acc"] == 0.5
    for name, fit in row["fits"].items():
        assert fit["held_balanced_acc"] > 0.9, name
        assert fit["fit_loss"] < 0.5 * row["prior_entropy"], name
