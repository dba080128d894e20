"""Strategies: shard-key value -> bucket -> shard. Pure, no database."""

from __future__ import annotations

import collections
import datetime
import decimal
import itertools
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardalchemy import Function, Hash, Lookup, Range, ShardMapError, Strategy
from shardalchemy.sharding.strategies import as_strategy, stable_hash, stable_key_bytes

# -- Lookup ---------------------------------------------------------------------------------


def test_lookup_maps_known_values_and_unknown_to_none() -> None:
    lookup = Lookup({"Asia": "asia", "Europe": "europe"})
    assert lookup.shard_for("Asia") == "asia"
    assert lookup.shard_for("Europe") == "europe"
    assert lookup.shard_for("Mars") is None
    assert lookup.shard_for(None) is None
    assert lookup.shard_names() == frozenset({"asia", "europe"})


def test_lookup_default_catches_unknown_values_and_is_a_shard_name() -> None:
    lookup = Lookup({"Asia": "asia"}, default="rest")
    assert lookup.shard_for("Asia") == "asia"
    assert lookup.shard_for("Mars") == "rest"
    assert lookup.shard_names() == frozenset({"asia", "rest"})


def test_lookup_with_only_a_default_sends_everything_there() -> None:
    lookup = Lookup({}, default="only")
    assert lookup.shard_for(12) == "only"
    assert lookup.shard_names() == frozenset({"only"})


@pytest.mark.parametrize("default", [None, "rest"])
def test_lookup_unhashable_value_maps_to_no_shard(default: str | None) -> None:
    lookup = Lookup({"Asia": "asia"}, default=default)
    assert lookup.shard_for(["Asia"]) is None
    assert lookup.shard_for({"Asia": 1}) is None


def test_lookup_needs_an_entry_or_a_default() -> None:
    with pytest.raises(ShardMapError, match="at least one value -> shard"):
        Lookup({})


def test_lookup_copies_its_mapping() -> None:
    mapping = {"Asia": "asia"}
    lookup = Lookup(mapping)
    mapping["Europe"] = "europe"
    assert lookup.shard_for("Europe") is None


def test_lookup_equal_python_values_share_an_entry() -> None:
    # 1 == True == 1.0 as dict keys; a lookup follows Python equality
    lookup = Lookup({1: "one"})
    assert lookup.shard_for(True) == "one"
    assert lookup.shard_for(decimal.Decimal(1)) == "one"


# -- stable_hash: golden values --------------------------------------------------------------

# (value, canonical encoding, stable_hash, bucket of Hash(buckets=1024)).  These are literal
# on purpose: a change of encoding or hash function moves every row to another bucket, which
# is a data migration, so it must show up here as a failing test.
GOLDEN = [
    (0, b"i:0", 6226301479349672795, 859),
    (1, b"i:1", 4770456274757230457, 889),
    (-1, b"i:-1", 1338615369692400243, 627),
    (42, b"i:42", 14721610516537373462, 790),
    (2**63, b"i:9223372036854775808", 15963173816590150837, 181),
    ("", b"s:", 14508870311617631174, 966),
    ("Tokyo", b"s:Tokyo", 2920824434920699774, 894),
    ("日本", b"s:\xe6\x97\xa5\xe6\x9c\xac", 4519514631661685817, 57),
    (b"\x00\xff", b"b:\x00\xff", 7007790017539419008, 896),
    (uuid.UUID(int=0), b"u:" + bytes(16), 7097922283108586578, 82),
    (
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        b"u:\x124Vx\x124Vx\x124Vx\x124Vx",
        5751082133991255403,
        363,
    ),
    (datetime.date(2020, 1, 1), b"t:2020-01-01", 15244331673224831254, 278),
    (datetime.datetime(2020, 1, 1, 12, 30), b"t:2020-01-01T12:30:00", 9794919146195104416, 672),
    (
        datetime.datetime(2020, 1, 1, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=9))),
        b"t:2020-01-01T03:00:00+00:00",  # aware datetimes as the UTC instant
        7326758731698399181,
        973,
    ),
    (datetime.time(23, 59, 59), b"t:23:59:59", 14896530882743278321, 753),
    (decimal.Decimal("1.50"), b"d:1.5", 11484960214959849451, 1003),
    ((1, "a"), b"(i:1,s:a)", 5494320530912889047, 215),
]


@pytest.mark.parametrize(
    ("value", "encoding", "hashed", "bucket"), GOLDEN, ids=[repr(g[0]) for g in GOLDEN]
)
def test_stable_hash_golden_values(value: Any, encoding: bytes, hashed: int, bucket: int) -> None:
    assert stable_key_bytes(value) == encoding
    assert stable_hash(value) == hashed
    assert Hash(buckets=1024).bucket_for(value) == bucket


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (1, True),
        (0, False),
        (7, decimal.Decimal(7)),
        (7, decimal.Decimal("7.000")),
        (decimal.Decimal("1.5"), decimal.Decimal("1.500")),
        (b"abc", bytearray(b"abc")),
        (b"abc", memoryview(b"abc")),
    ],
)
def test_values_equal_in_sql_hash_equally(left: Any, right: Any) -> None:
    assert stable_key_bytes(left) == stable_key_bytes(right)
    assert stable_hash(left) == stable_hash(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [(1, "1"), ("1", b"1"), (datetime.date(2020, 1, 1), "2020-01-01"), ((1, 2), (12,))],
)
def test_values_of_different_kinds_encode_differently(left: Any, right: Any) -> None:
    assert stable_key_bytes(left) != stable_key_bytes(right)


@pytest.mark.parametrize("value", [1.5, None, object(), [1], {"a": 1}])
def test_stable_hash_refuses_values_without_a_canonical_encoding(value: Any) -> None:
    with pytest.raises(TypeError, match=type(value).__name__):
        stable_hash(value)


def test_equal_aware_datetimes_hash_equally() -> None:
    utc_noon = datetime.datetime(2020, 1, 1, 12, tzinfo=datetime.timezone.utc)
    paris_one = datetime.datetime(
        2020, 1, 1, 13, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    assert utc_noon == paris_one
    assert stable_hash(utc_noon) == stable_hash(paris_one)


@pytest.mark.parametrize("special", ["Infinity", "-Infinity", "NaN"])
def test_non_finite_decimals_hash_without_crashing(special: str) -> None:
    # int(Decimal("Infinity")) raises OverflowError: the encoding must not try it
    value = decimal.Decimal(special)
    assert stable_key_bytes(value) == stable_key_bytes(decimal.Decimal(special))
    assert stable_key_bytes(value) != stable_key_bytes(decimal.Decimal(0))
    assert Hash(shards=["a", "b"]).shard_for(value) in {"a", "b"}


_SUBPROCESS_VALUES = [0, 1, -5, 2**40, "Tokyo", "", "日本", (3, "x")]

_SUBPROCESS_CODE = """
import json, sys
from shardalchemy.sharding.strategies import Hash
values = [0, 1, -5, 2**40, "Tokyo", "", "日本", (3, "x")]
hasher = Hash(buckets=1024)
print(json.dumps({"buckets": [hasher.bucket_for(v) for v in values], "probe": hash("probe")}))
"""


def test_buckets_do_not_depend_on_pythonhashseed() -> None:
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    result = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_CODE],
        env={**os.environ, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    other = json.loads(result.stdout)
    # the child really hashed strings differently, so equal buckets prove something
    assert other["probe"] != hash("probe")
    hasher = Hash(buckets=1024)
    assert other["buckets"] == [hasher.bucket_for(v) for v in _SUBPROCESS_VALUES]


# -- Hash -----------------------------------------------------------------------------------


def test_hash_is_deterministic_across_instances() -> None:
    first = Hash(buckets=64, shards=["a", "b", "c"])
    second = Hash(buckets=64, shards=["a", "b", "c"])
    for value in [0, 17, "tenant-9", uuid.UUID(int=99), datetime.date(1999, 12, 31)]:
        assert first.bucket_for(value) == second.bucket_for(value)
        assert first.shard_for(value) == second.shard_for(value)


def test_hash_splits_buckets_into_contiguous_runs_in_shard_order() -> None:
    hasher = Hash(buckets=8, shards=["a", "b"])
    owners = [hasher._owners[b] for b in range(8)]  # type: ignore[index]
    assert owners == ["a"] * 4 + ["b"] * 4
    uneven = Hash(buckets=4, shards=["x", "y", "z"])
    assert list(uneven._owners or ()) == ["x", "x", "y", "z"]


def test_hash_distributes_keys_roughly_evenly() -> None:
    shards = ["s0", "s1", "s2", "s3"]
    hasher = Hash(buckets=256, shards=shards)
    keys: list[Any] = [*range(20_000), *(f"user-{n}" for n in range(20_000))]
    per_shard = collections.Counter(hasher.shard_for(key) for key in keys)
    expected = len(keys) / len(shards)
    assert set(per_shard) == set(shards)
    for shard in shards:
        assert abs(per_shard[shard] - expected) < 0.05 * expected, per_shard
    per_bucket = collections.Counter(hasher.bucket_for(key) for key in keys)
    assert len(per_bucket) == 256
    mean = len(keys) / 256
    # chi-square with 255 degrees of freedom: ~255 expected, > 400 would be very uneven
    chi_square = sum((count - mean) ** 2 / mean for count in per_bucket.values())
    assert chi_square < 400


def test_hash_bucket_map_assigns_buckets_explicitly() -> None:
    bucket_map = {0: "a", 1: "b", 2: "a", 3: "c"}
    hasher = Hash(buckets=4, bucket_map=bucket_map)
    assert hasher.shard_names() == frozenset({"a", "b", "c"})
    for value in range(50):
        assert hasher.shard_for(value) == bucket_map[hasher.bucket_for(value)]


def test_hash_bucket_map_wins_over_bind() -> None:
    hasher = Hash(buckets=2, bucket_map={0: "a", 1: "a"})
    assert hasher.bind(["x", "y"]) is hasher


@pytest.mark.parametrize(
    ("bucket_map", "message"),
    [
        ({0: "a", 1: "a", 2: "a"}, r"missing \[3\], unexpected \[\]"),
        ({0: "a", 1: "a", 2: "a", 3: "a", 4: "b"}, r"missing \[\], unexpected \[4\]"),
        ({0: "a", 1: "a", 2: "a", -1: "b"}, r"missing \[3\], unexpected \[-1\]"),
        ({}, r"missing \[0, 1, 2, 3\]"),
    ],
)
def test_hash_bucket_map_must_cover_exactly_every_bucket(
    bucket_map: dict[int, str], message: str
) -> None:
    with pytest.raises(ShardMapError, match=r"buckets 0\.\.3; " + message):
        Hash(buckets=4, bucket_map=bucket_map)


@pytest.mark.parametrize("buckets", [0, -1, True, 2.0, "8", None])
def test_hash_needs_a_positive_integer_bucket_count(buckets: Any) -> None:
    with pytest.raises(ShardMapError, match="positive bucket count"):
        Hash(buckets=buckets)


def test_unbound_hash_refuses_to_route_until_bound() -> None:
    hasher = Hash(buckets=16)
    assert hasher.shard_names() is None
    with pytest.raises(ShardMapError, match="not bound to shards"):
        hasher.shard_for(1)
    bound = hasher.bind(["north", "south"])
    assert isinstance(bound, Hash)
    assert bound is not hasher
    assert bound.buckets == 16
    assert bound.shard_names() == frozenset({"north", "south"})
    assert bound.shard_for(1) == ("north" if hasher.bucket_for(1) < 8 else "south")
    # binding leaves the declared strategy untouched (it may serve several shard maps)
    assert hasher.shard_names() is None


def test_hash_with_explicit_shards_ignores_bind() -> None:
    hasher = Hash(buckets=16, shards=["a"])
    assert hasher.bind(["x", "y"]) is hasher
    assert hasher.shard_for("anything") == "a"


def test_hash_refuses_more_shards_than_buckets() -> None:
    with pytest.raises(ShardMapError, match="2 buckets for 3 shards"):
        Hash(buckets=2, shards=["a", "b", "c"])
    with pytest.raises(ShardMapError, match="2 buckets for 3 shards"):
        Hash(buckets=2).bind(["a", "b", "c"])


def test_hash_needs_at_least_one_shard() -> None:
    with pytest.raises(ShardMapError, match="at least one shard"):
        Hash(shards=[])
    with pytest.raises(ShardMapError, match="at least one shard"):
        Hash().bind([])


def test_hash_value_that_cannot_be_hashed_maps_to_no_shard() -> None:
    hasher = Hash(buckets=4, shards=["a"])
    assert hasher.shard_for(1.5) is None
    assert hasher.shard_for(None) is None
    assert hasher.shard_for([1]) is None


def test_hash_describe_names_the_bucket_count() -> None:
    assert Hash(buckets=1024).describe() == "hash (1024 buckets)"


hashable_values = st.one_of(
    st.integers(),
    st.text(),
    st.binary(),
    st.uuids(),
    st.dates(),
    st.datetimes(),
    st.times(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.tuples(st.integers(), st.text()),
)


@given(value=hashable_values, buckets=st.integers(min_value=1, max_value=5000))
def test_hash_bucket_is_always_in_range(value: Any, buckets: int) -> None:
    bucket = Hash(buckets=buckets).bucket_for(value)
    assert 0 <= bucket < buckets
    assert bucket == stable_hash(value) % buckets
    assert 0 <= stable_hash(value) < 2**64


@given(
    value=hashable_values,
    shard_count=st.integers(min_value=1, max_value=8),
    extra_buckets=st.integers(min_value=0, max_value=100),
)
def test_hash_shard_is_the_owner_of_the_bucket(
    value: Any, shard_count: int, extra_buckets: int
) -> None:
    shards = [f"s{n}" for n in range(shard_count)]
    buckets = shard_count + extra_buckets
    hasher = Hash(buckets=buckets, shards=shards)
    bucket = hasher.bucket_for(value)
    # contiguous runs: the shard index grows with the bucket number
    assert hasher.shard_for(value) == shards[bucket * shard_count // buckets]
    assert hasher.shard_names() == frozenset(shards)


@given(st.integers())
def test_integral_decimals_and_ints_share_a_bucket(number: int) -> None:
    assert stable_hash(decimal.Decimal(number)) == stable_hash(number)


# -- Range ----------------------------------------------------------------------------------


def test_range_boundaries_belong_to_the_range_they_start() -> None:
    ranges = Range([(None, "early"), (1000, "middle"), (5000, "late")])
    assert ranges.shard_for(-(10**12)) == "early"
    assert ranges.shard_for(999) == "early"
    assert ranges.shard_for(1000) == "middle"
    assert ranges.shard_for(1001) == "middle"
    assert ranges.shard_for(4999) == "middle"
    assert ranges.shard_for(5000) == "late"
    assert ranges.shard_for(10**12) == "late"
    assert ranges.shard_names() == frozenset({"early", "middle", "late"})
    assert ranges.describe() == "range (3 ranges)"


def test_range_without_open_start_has_no_shard_below_the_first_bound() -> None:
    ranges = Range([(10, "a"), (20, "b")])
    assert ranges.shard_for(9) is None
    assert ranges.shard_for(10) == "a"
    assert ranges.shard_for(19) == "a"
    assert ranges.shard_for(20) == "b"
    assert ranges.shard_names() == frozenset({"a", "b"})
    assert ranges.describe() == "range (2 ranges)"


def test_range_with_only_an_open_start_takes_every_value() -> None:
    ranges = Range([(None, "all")])
    assert ranges.shard_for(-5) == "all"
    assert ranges.shard_for("text") == "all"


def test_range_over_dates_and_strings() -> None:
    by_year = Range([(datetime.date(2020, 1, 1), "2020s"), (datetime.date(2030, 1, 1), "2030s")])
    assert by_year.shard_for(datetime.date(2019, 12, 31)) is None
    assert by_year.shard_for(datetime.date(2020, 1, 1)) == "2020s"
    assert by_year.shard_for(datetime.date(2029, 12, 31)) == "2020s"
    assert by_year.shard_for(datetime.date(2030, 1, 1)) == "2030s"
    by_letter = Range([(None, "a-l"), ("m", "m-z")])
    assert by_letter.shard_for("lima") == "a-l"
    assert by_letter.shard_for("m") == "m-z"
    assert by_letter.shard_for("zulu") == "m-z"


def test_range_one_shard_may_own_several_ranges() -> None:
    ranges = Range([(None, "hot"), (10, "cold"), (20, "hot")])
    assert [ranges.shard_for(v) for v in (5, 15, 25)] == ["hot", "cold", "hot"]
    assert ranges.shard_names() == frozenset({"hot", "cold"})


def test_range_value_incomparable_with_bounds_maps_to_no_shard() -> None:
    ranges = Range([(None, "a"), (10, "b")])
    assert ranges.shard_for("ten") is None
    assert ranges.shard_for(None) is None


@pytest.mark.parametrize(
    ("boundaries", "message"),
    [
        ([], "at least one"),
        ([(1, "a"), (1, "b")], r"strictly increasing, got \[1, 1\]"),
        ([(5, "a"), (1, "b")], r"strictly increasing, got \[5, 1\]"),
        ([(None, "a"), (3, "b"), (2, "c")], r"strictly increasing, got \[3, 2\]"),
        ([(1, "a"), ("b", "b")], "not comparable"),
        ([(None, "a"), (1, "b"), (None, "c")], "only the first lower bound may be None"),
    ],
)
def test_range_rejects_bad_boundaries(boundaries: list[tuple[Any, str]], message: str) -> None:
    with pytest.raises(ShardMapError, match=message):
        Range(boundaries)


def _linear_range_shard(open_start: str | None, pairs: list[tuple[int, str]], value: int) -> Any:
    shard = open_start
    for bound, owner in pairs:
        if bound <= value:
            shard = owner
    return shard


@given(
    bounds=st.lists(st.integers(-1000, 1000), unique=True, max_size=12).map(sorted),
    open_start=st.booleans(),
    value=st.integers(-1100, 1100),
    data=st.data(),
)
def test_range_agrees_with_a_linear_scan(
    bounds: list[int], open_start: bool, value: int, data: st.DataObject
) -> None:
    if not bounds and not open_start:
        bounds = [0]
    owners = data.draw(
        st.lists(st.sampled_from("abcd"), min_size=len(bounds), max_size=len(bounds))
    )
    pairs = list(zip(bounds, owners, strict=True))
    first = "start" if open_start else None
    ranges = Range([(None, "start"), *pairs] if open_start else pairs)
    assert ranges.shard_for(value) == _linear_range_shard(first, pairs, value)
    # and at each boundary itself, and just below it
    for bound in bounds:
        assert ranges.shard_for(bound) == _linear_range_shard(first, pairs, bound)
        assert ranges.shard_for(bound - 1) == _linear_range_shard(first, pairs, bound - 1)


@given(st.lists(st.integers(), min_size=2, max_size=8))
def test_range_accepts_bounds_only_when_strictly_increasing(bounds: list[int]) -> None:
    pairs = [(bound, f"s{n}") for n, bound in enumerate(bounds)]
    increasing = all(a < b for a, b in itertools.pairwise(bounds))
    if increasing:
        assert Range(pairs).bounds == bounds
    else:
        with pytest.raises(ShardMapError, match="strictly increasing"):
            Range(pairs)


# -- Function -------------------------------------------------------------------------------


def test_function_calls_the_function_with_the_value() -> None:
    seen: list[Any] = []

    def by_parity(value: int) -> str | None:
        seen.append(value)
        return None if value < 0 else ("even" if value % 2 == 0 else "odd")

    strategy = Function(by_parity, shards=["even", "odd"])
    assert strategy.shard_for(4) == "even"
    assert strategy.shard_for(7) == "odd"
    assert strategy.shard_for(-1) is None
    assert seen == [4, 7, -1]
    assert strategy.shard_names() == frozenset({"even", "odd"})
    assert "by_parity" in strategy.describe()


def test_function_without_declared_shards_has_unknowable_shard_names() -> None:
    assert Function(str).shard_names() is None


def test_function_needs_a_callable() -> None:
    with pytest.raises(ShardMapError, match="needs a callable, not 'shard_a'"):
        Function("shard_a")  # type: ignore[arg-type]


def test_function_errors_propagate() -> None:
    def broken(value: Any) -> str:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        Function(broken).shard_for(1)


# -- as_strategy ----------------------------------------------------------------------------


def test_as_strategy_passes_strategies_through() -> None:
    hasher = Hash(buckets=4)
    assert as_strategy(hasher) is hasher


def test_as_strategy_turns_a_dict_into_a_lookup() -> None:
    strategy = as_strategy({"Asia": "asia"})
    assert isinstance(strategy, Lookup)
    assert strategy.shard_for("Asia") == "asia"
    assert strategy.shard_for("Europe") is None


def test_as_strategy_turns_a_callable_into_a_function() -> None:
    strategy = as_strategy(lambda value: f"shard_{value % 2}")
    assert isinstance(strategy, Function)
    assert strategy.shard_for(3) == "shard_1"


@pytest.mark.parametrize("bad", [42, "asia", ["asia"], None, ("a", "b")])
def test_as_strategy_rejects_anything_else(bad: Any) -> None:
    with pytest.raises(ShardMapError, match="must be a Strategy, a dict or a callable"):
        as_strategy(bad)


def test_base_strategy_is_abstract_and_binds_to_itself() -> None:
    strategy = Strategy()
    with pytest.raises(NotImplementedError):
        strategy.shard_for(1)
    assert strategy.shard_names() is None
    assert strategy.bind(["a"]) is strategy
    assert strategy.describe() == "strategy"
