"""The query library: selection methods depend on its ordering and NaN rules."""
import math
import warnings

import numpy as np
import pytest

from domainbed.lib.query import Q, hashable, make_selector_fn


def test_selector_forms():
    obj = {"a": {"b": 1}, "c": 2, "d": 3}
    assert make_selector_fn("c")(obj) == 2
    assert make_selector_fn("a.b")(obj) == 1
    assert make_selector_fn("c,d")(obj) == (2, 3)
    assert make_selector_fn("a.b,c")(obj) == (1, 2)
    assert make_selector_fn("c, d")(obj) == (2, 3)  # spaces around keys are ignored
    assert make_selector_fn(lambda o: o["d"] * 2)(obj) == 6


def test_selector_rejects_other_types():
    with pytest.raises(TypeError):
        make_selector_fn(3)


def test_hashable():
    assert hashable(5) == 5
    assert hashable((1, "x")) == (1, "x")
    assert hashable({"b": 1, "a": [2]}) == '{"_": {"a": [2], "b": 1}}'
    assert hashable([1, 2]) == '{"_": [1, 2]}'


def test_equality_len_items_and_str():
    q = Q([1, 2, 3])
    assert q == Q([1, 2, 3])
    assert q == [1, 2, 3]
    assert q != [1, 2]
    assert len(q) == 3 and q.len() == 3
    assert q[1] == 2 and q[1:] == [2, 3]
    assert str(q) == "[1, 2, 3]" and repr(q) == "[1, 2, 3]"


def test_group_sorts_by_key_and_keeps_member_order():
    q = Q([{"k": 2, "v": "a"}, {"k": 1, "v": "b"}, {"k": 2, "v": "c"}])
    groups = q.group("k")
    assert [key for key, _ in groups] == [1, 2]
    assert groups[1][1].select("v") == ["a", "c"]
    assert isinstance(groups[1][1], Q)


def test_group_by_unhashable_values():
    q = Q([{"h": {"lr": 1}}, {"h": {"lr": 2}}, {"h": {"lr": 1}}])
    groups = q.group("h")
    assert [key for key, _ in groups] == [{"lr": 1}, {"lr": 2}]
    assert [len(members) for _, members in groups] == [2, 1]


def test_group_map_and_map_unpacking():
    q = Q([{"k": 1, "v": 10}, {"k": 1, "v": 20}, {"k": 3, "v": 5}])
    assert q.group_map("k", lambda k, g: (k, g.select("v").sum())) == [(1, 30), (3, 5)]
    assert Q([(1, 2), (3, 4)]).map(lambda a, b: a + b) == [3, 7]
    assert Q([(1, 2), (3, 4)]).map(lambda pair: pair[0]) == [1, 3]


def test_aggregates():
    q = Q([3, 1, 2])
    assert (q.min(), q.max(), q.sum()) == (1, 3, 6)
    assert q.mean() == 2.0 and isinstance(q.mean(), float)
    assert q.std() == pytest.approx(np.std([3, 1, 2]))
    assert q.mean_std() == (q.mean(), q.std())


def test_mean_std_of_empty_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(Q([]).mean())
        assert math.isnan(Q([]).std())


def test_argmax_first_maximum_wins():
    q = Q([{"a": 1, "id": 0}, {"a": 3, "id": 1}, {"a": 3, "id": 2}])
    assert q.argmax("a")["id"] == 1
    assert q.argmax(lambda r: -r["a"])["id"] == 0


def test_filters():
    q = Q([{"a": 1, "b": 2}, {"a": 1, "b": 3}, {"a": 2, "b": 2}])
    assert q.filter(lambda r: r["b"] == 2).select("a") == [1, 2]
    assert q.filter_equals("a", 1).select("b") == [2, 3]
    assert q.filter_equals("a, b", (1, 3)) == [{"a": 1, "b": 3}]
    assert Q([1, None, 0, None]).filter_not_none() == [1, 0]
    assert Q([1.0, float("nan"), 2.0]).filter_not_nan() == [1.0, 2.0]


def test_flatten_and_unique():
    assert Q([[1, 2], [], [3]]).flatten() == [1, 2, 3]
    assert Q([3, 1, 3, 2, 1]).unique() == [3, 1, 2]
    assert Q([{"x": 1}, {"x": 2}, {"x": 1}]).unique() == [{"x": 1}, {"x": 2}]


def test_sorted_nan_first_and_stable():
    q = Q([2.0, float("nan"), 1.0])
    result = q.sorted()
    assert math.isnan(result[0]) and result[1:] == [1.0, 2.0]
    pairs = Q([("a", 1), ("b", 0), ("c", 1)])
    assert pairs.sorted(key=lambda p: p[1]).select(lambda p: p[0]) == ["b", "a", "c"]
    assert Q([np.float64("nan"), np.float64(-5.0)]).sorted()[1] == -5.0
