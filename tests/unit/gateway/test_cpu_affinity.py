"""server.cpu_affinity: which CPUs each worker slot gets, and the words for a bad setting."""

from __future__ import annotations

import pytest

from gateway.cpu_affinity import describe, worker_cpus


def test_none_leaves_placement_to_the_kernel() -> None:
    assert worker_cpus("none", 4, {0, 1}) is None


def test_auto_deals_the_available_cpus_one_per_worker_in_order() -> None:
    assert worker_cpus("auto", 2, {3, 1}) == (frozenset({1}), frozenset({3}))


def test_more_workers_than_cpus_wrap_round() -> None:
    assert worker_cpus("auto", 5, {0, 1}) == tuple(frozenset({slot % 2}) for slot in range(5))


def test_a_list_is_dealt_out_the_same_way() -> None:
    assert worker_cpus((2, 0), 3, {0, 1, 2}) == (
        frozenset({2}),
        frozenset({0}),
        frozenset({2}),
    )


def test_cpus_this_process_may_not_use_are_named() -> None:
    with pytest.raises(ValueError) as caught:
        worker_cpus((0, 5, 7), 2, {0, 1, 2, 3})
    assert str(caught.value) == "CPU 5,7: not available to this process (it may run on 0-3)"


def test_describe_writes_ranges_as_the_kernel_does() -> None:
    assert describe({0, 1, 2, 3, 6, 8, 9}) == "0-3,6,8-9"
    assert describe(()) == "none"
