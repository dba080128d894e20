"""The merge operators, on plain data: merged shard streams equal one sorted/aggregated whole.

Pure (no database): hypothesis partitions random rows over random shards, lets each "shard"
sort or pre-aggregate its part as a database would, and checks the merge against the answer
computed over all rows at once.
"""

from __future__ import annotations

import decimal
import functools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardalchemy.merge import (
    Aggregate,
    AggregateSlot,
    Compute,
    Concatenate,
    Distinct,
    Filter,
    Limit,
    MergeSort,
    PadSpaceText,
    Sort,
    SortKey,
    as_is,
    pad_space,
    run,
)

SCALE = decimal.Decimal("1e-20")
values = st.one_of(st.none(), st.integers(-5, 5))
rows = st.lists(st.tuples(values, values, st.integers(0, 10**6)), max_size=40)
shard_counts = st.integers(1, 5)
key_specs = st.lists(
    st.tuples(st.integers(0, 2), st.booleans(), st.booleans()), min_size=1, max_size=3
)


def reference_compare(specs: list[tuple[int, bool, bool]], left: Any, right: Any) -> int:
    """SQL's ORDER BY, written out as a comparison (not the operators' key functions)."""
    for index, descending, nulls_first in specs:
        a, b = left[index], right[index]
        if a is None and b is None:
            continue
        if a is None or b is None:
            a_first = (a is None) == nulls_first
            return -1 if a_first else 1
        if a != b:
            smaller = -1 if a < b else 1
            return -smaller if descending else smaller
    return 0


def partition(data: list[Any], shards: int) -> list[list[Any]]:
    return [data[index::shards] for index in range(shards)]


@settings(max_examples=200, deadline=None)
@given(rows, shard_counts, key_specs, st.integers(0, 10), st.one_of(st.none(), st.integers(0, 10)))
def test_merge_sort_then_limit_is_the_global_top_k(data, shards, specs, offset, limit) -> None:
    keys = tuple(
        SortKey(index, descending, nulls_first) for index, descending, nulls_first in specs
    )
    # every shard sorts its rows as the database would and returns its first limit+offset
    compare = functools.cmp_to_key(functools.partial(reference_compare, specs))
    per_shard = [sorted(part, key=compare) for part in partition(data, shards)]
    if limit is not None:
        per_shard = [part[: limit + offset] for part in per_shard]
    merged = list(run(MergeSort(keys), [Limit(limit, offset)], [iter(p) for p in per_shard]))
    expected = sorted(data, key=compare)
    expected = expected[offset : None if limit is None else offset + limit]
    # ties may come in any order; the sort keys of the rows must agree position by position
    assert [tuple(row[i] for i, *_ in specs) for row in merged] == [
        tuple(row[i] for i, *_ in specs) for row in expected
    ]
    assert len(merged) == len(expected)


def sql_aggregates(group: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """count(*), count(v), sum(v), min(v), max(v), avg(v) of one group, as SQL defines them."""
    present = [row[1] for row in group if row[1] is not None]
    total = sum(present) if present else None
    average = decimal.Decimal(total) / decimal.Decimal(len(present)) if present else None
    return (
        len(group),
        len(present),
        total,
        min(present) if present else None,
        max(present) if present else None,
        average,
        len(set(present)),
    )


def shard_partials(part: list[tuple[Any, ...]], grouped: bool) -> list[tuple[Any, ...]]:
    """What each shard returns for the per-shard statement of the aggregate plan.

    Layout: group, count(*), count(v), sum(v), min(v), max(v), avg(v) [shard's own],
    count(distinct v) [ignored], then hidden: sum(v), count(v), v (distinct value key).
    Count-distinct is pushed down as an extra group key, so a shard returns one row per
    (group, distinct v).
    """
    subgroups: dict[Any, list[tuple[Any, ...]]] = {}
    for row in part:
        subgroups.setdefault((row[0] if grouped else None, row[1]), []).append(row)
    if not grouped and not part:
        return []
    out = []
    for (group, value), members in subgroups.items():
        count, count_v, total, low, high, _, _ = sql_aggregates(members)
        # as PostgreSQL's AVG of integers: a numeric with a scale of its own
        shard_avg = (
            (decimal.Decimal(total) / decimal.Decimal(count_v)).quantize(SCALE) if count_v else None
        )
        out.append(
            (group, count, count_v, total, low, high, shard_avg, None, total, count_v, value)
        )
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), values), max_size=40),
    shard_counts,
    st.booleans(),
)
def test_reaggregated_partials_equal_the_aggregates_of_all_rows(data, shards, grouped) -> None:
    operator = Aggregate(
        group=(0,) if grouped else (),
        slots=(
            AggregateSlot("count", 1, (1,)),
            AggregateSlot("count", 2, (2,)),
            AggregateSlot("sum", 3, (3,)),
            AggregateSlot("min", 4, (4,)),
            AggregateSlot("max", 5, (5,)),
            AggregateSlot("avg", 6, (8, 9, 6)),
            AggregateSlot("count_distinct", 7, (10, 7)),
        ),
        scalar=not grouped,
        width=11,
    )
    streams = [iter(shard_partials(part, grouped)) for part in partition(data, shards)]
    merged = {row[0]: row[1:8] for row in run(Concatenate(), [operator], streams)}
    groups: dict[Any, list[Any]] = {}
    for row in data:
        groups.setdefault(row[0] if grouped else None, []).append(row)
    if not grouped:
        groups.setdefault(None, [])
    expected = {group: sql_aggregates(members) for group, members in groups.items()}
    assert merged.keys() == expected.keys()
    for group, values_ in expected.items():
        *exact, average, distinct = values_
        got = merged[group]
        assert list(got[:5]) == exact
        assert got[6] == distinct
        if average is None:
            assert got[5] is None
        else:
            assert abs(got[5] - average) <= SCALE


def test_scalar_aggregate_over_no_rows_still_answers_one_row() -> None:
    slots = (AggregateSlot("count", 0, (0,)), AggregateSlot("sum", 1, (1,)))
    operator = Aggregate((), slots, scalar=True, width=2)
    # each shard of an ungrouped aggregate answers one row, even over no rows
    assert list(operator.apply([(0, None), (0, None)])) == [(0, None)]
    # ... unless a pushed-down DISTINCT value grouped its rows: then no shard answers
    assert list(operator.apply([])) == [(0, None)]


def test_average_takes_the_type_and_scale_of_the_shards_own_average() -> None:
    slot = AggregateSlot("avg", 0, (1, 2, 0))
    operator = Aggregate((), (slot,), True)
    decimals = [(decimal.Decimal("1.5000"), 3, 2), (decimal.Decimal("2.0000"), 2, 1)]
    # (hidden partial columns keep the first row's values: only slots are merged)
    assert list(operator.apply(decimals)) == [(decimal.Decimal("1.6667"), 3, 2)]
    floats = [(1.5, 3, 2), (2.0, 2, 1)]
    assert next(iter(operator.apply(floats)))[0] == 5 / 3


def test_sort_with_a_limit_keeps_only_the_top() -> None:
    keys = (SortKey(0, descending=True, nulls_first=False),)
    data = [(3,), (None,), (7,), (1,)]
    assert list(Sort(keys, top=2).apply(data)) == [(7,), (3,)]
    assert list(Sort(keys).apply(data)) == [(7,), (3,), (1,), (None,)]


def test_distinct_compares_as_the_database_does() -> None:
    operator = Distinct((0,), (pad_space,))
    assert list(operator.apply([("a",), ("a  ",), ("b",)])) == [("a",), ("b",)]


def test_pad_space_text_orders_as_a_padded_comparison() -> None:
    assert PadSpaceText("a") == PadSpaceText("a   ")
    assert hash(PadSpaceText("a")) == hash(PadSpaceText("a "))
    # padded with spaces, 'a' is 'a ', which sorts after 'a\t' (code point 9 < 32)
    assert PadSpaceText("a\t") < PadSpaceText("a")
    assert PadSpaceText("a") < PadSpaceText("ab")


def test_merge_sort_is_lazy() -> None:
    pulled: list[int] = []

    def stream(start: int) -> Any:
        for value in range(start, 1000, 2):
            pulled.append(value)
            yield (value,)

    merged = run(MergeSort((SortKey(0),)), [Limit(3, 0)], [stream(0), stream(1)])
    assert list(merged) == [(0,), (1,), (2,)]
    assert len(pulled) < 10  # one row ahead per shard, not every row


@pytest.mark.parametrize(
    ("total", "count", "postgresql_says"),
    [  # what PostgreSQL 15 answers for avg() of such values (numeric division's own scale)
        (5, 3, "1.6666666666666667"),
        (decimal.Decimal("100004.00"), 3, "33334.666666666667"),
        (1, 3, "0.33333333333333333333"),
        (123456789013, 2, "61728394506.50000000"),
        (decimal.Decimal("0.003"), 2, "0.00150000000000000000"),
    ],
)
def test_a_postgresql_average_has_postgresqls_scale(total: Any, count: int, postgresql_says: str):
    slot = AggregateSlot("avg", 0, (1, 2, 0), division="postgresql")
    row = (decimal.Decimal("1.0"), total, count)  # the shard's own AVG only lends its type
    (merged,) = Aggregate((), (slot,), scalar=True).apply([row])
    assert str(merged[0]) == postgresql_says


# -- the operators as plain data (explain --json) ----------------------------------------------

transforms = st.sampled_from([as_is, pad_space])
sort_keys = st.builds(
    SortKey,
    index=st.integers(0, 20),
    descending=st.booleans(),
    nulls_first=st.booleans(),
    transform=transforms,
    label=st.text(max_size=10),
)
slots = st.builds(
    AggregateSlot,
    kind=st.sampled_from(["count", "sum", "min", "max", "avg", "any", "count_distinct"]),
    index=st.integers(0, 20),
    sources=st.lists(st.integers(0, 20), max_size=3).map(tuple),
    transform=transforms,
    label=st.text(max_size=10),
    division=st.sampled_from(["like", "postgresql"]),
)


@st.composite
def aggregates(draw: Any) -> Aggregate:
    group = tuple(draw(st.lists(st.integers(0, 20), max_size=3)))
    return Aggregate(
        group,
        tuple(draw(st.lists(slots, max_size=3))),
        scalar=not group,
        group_transforms=tuple(draw(transforms) for _ in group),
        group_labels=tuple(draw(st.text(max_size=5)) for _ in group),
    )


@st.composite
def computes(draw: Any) -> Compute:
    indices = draw(st.lists(st.integers(0, 20), max_size=3))
    return Compute(
        tuple((index, lambda row: None) for index in indices),
        tuple(draw(st.text(max_size=5)) for _ in indices),
    )


@st.composite
def distincts(draw: Any) -> Distinct:
    indices = tuple(draw(st.lists(st.integers(0, 20), max_size=3)))
    return Distinct(indices, tuple(draw(transforms) for _ in indices))


operators = st.one_of(
    st.just(Concatenate()),
    st.builds(MergeSort, st.lists(sort_keys, min_size=1, max_size=3).map(tuple)),
    aggregates(),
    computes(),
    st.builds(Filter, st.just(lambda row: True), st.text(max_size=20)),
    st.builds(
        Sort, st.lists(sort_keys, min_size=1, max_size=3).map(tuple), st.none() | st.integers(0, 99)
    ),
    distincts(),
    st.builds(Limit, st.none() | st.integers(0, 99), st.integers(0, 99)),
)


@settings(max_examples=300, deadline=None)
@given(operators, st.lists(st.just({"operator": "Route", "children": []}), max_size=1))
def test_every_operator_describes_itself_as_json_data(operator: Any, children: list[Any]) -> None:
    description = operator.description(children)
    assert json.loads(json.dumps(description)) == description  # plain data, JSON values only
    assert description["operator"] == operator.describe().split()[0] == type(operator).__name__
    assert description["children"] == children
    names = list(description)
    assert (names[0], names[-1]) == ("operator", "children")


def test_operator_descriptions_name_their_parameters() -> None:
    key = SortKey(2, descending=True, nulls_first=False, transform=pad_space, label="cities.name")
    assert MergeSort((key,)).description() == {
        "operator": "MergeSort",
        "keys": [
            {
                "column": 2,
                "label": "cities.name",
                "descending": True,
                "nulls_first": False,
                "compare": "pad_space",
            }
        ],
        "children": [],
    }
    assert Sort((key,), top=5).description()["top"] == 5
    assert Limit(None, 3).description() == {
        "operator": "Limit",
        "limit": None,
        "offset": 3,
        "children": [],
    }
    average = AggregateSlot("avg", 1, (3, 4, 1), label="avg(x)", division="postgresql")
    aggregate = Aggregate((0,), (average,), scalar=False, group_labels=("g",))
    assert aggregate.description() == {
        "operator": "Aggregate",
        "aggregates": [
            {
                "kind": "avg",
                "column": 1,
                "sources": [3, 4, 1],
                "label": "avg(x)",
                "compare": "as_is",
                "division": "postgresql",
            }
        ],
        "group_by": [{"column": 0, "label": "g", "compare": "as_is"}],
        "scalar": False,
        "children": [],
    }
    assert Distinct((0, 5), (as_is, pad_space)).description()["columns"] == [
        {"column": 0, "compare": "as_is"},
        {"column": 5, "compare": "pad_space"},
    ]
    assert Filter(lambda row: True, "HAVING count(*) > 2").description()["predicate"] == (
        "HAVING count(*) > 2"
    )
    compute = Compute(((3, lambda row: None),), ("max(x) - min(x)",))
    assert compute.description()["columns"] == [{"column": 3, "label": "max(x) - min(x)"}]
    assert Concatenate().description() == {"operator": "Concatenate", "children": []}
