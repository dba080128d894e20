"""The pure parts of the ID generators: the 64-bit layout, shard numbering, the clock, UUIDv7.

No database and no real clock: values in, values out, with hypothesis.
"""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shardalchemy import ShardingError
from shardalchemy.ids import (
    DEFAULT_EPOCH_MS,
    MAX_ID,
    ClockMovedBackwardsError,
    IdClock,
    IdLayout,
    IdLayoutError,
    IdSpaceExhaustedError,
    InvalidIdError,
    number_shards,
    uuid7_from,
)
from shardalchemy.ids.uuid7 import unix_ms_of


@st.composite
def layouts(draw: st.DrawFn) -> IdLayout:
    """Any valid layout: widths adding up to at most 63 bits."""
    time_bits = draw(st.integers(1, 50))
    shard_bits = draw(st.integers(0, 63 - time_bits))
    worker_bits = draw(st.integers(0, 63 - time_bits - shard_bits))
    sequence_bits = draw(st.integers(0, 63 - time_bits - shard_bits - worker_bits))
    return IdLayout(
        time_bits=time_bits,
        shard_bits=shard_bits,
        worker_bits=worker_bits,
        sequence_bits=sequence_bits,
        epoch_ms=draw(st.integers(0, 2**45)),
        tick_ms=draw(st.integers(1, 1000)),
    )


@st.composite
def layouts_and_parts(draw: st.DrawFn) -> tuple[IdLayout, tuple[int, int, int, int]]:
    layout = draw(layouts())
    parts = tuple(
        draw(st.integers(0, (1 << bits) - 1))
        for bits in (layout.time_bits, layout.shard_bits, layout.worker_bits, layout.sequence_bits)
    )
    return layout, parts  # type: ignore[return-value]


# -- layout -------------------------------------------------------------------------
@given(layouts_and_parts())
def test_encode_decode_round_trip_fits_63_bits_non_negative(case: tuple) -> None:
    layout, (tick, shard, worker, sequence) = case
    value = layout.encode(tick, shard, worker, sequence)
    assert 0 <= value <= MAX_ID
    assert layout.decode(value) == (tick, shard, worker, sequence)


@given(layouts_and_parts())
def test_ids_after_the_epoch_are_positive(case: tuple) -> None:
    layout, (tick, shard, worker, sequence) = case
    assume(tick >= 1)  # the generator never uses tick 0
    assert layout.encode(tick, shard, worker, sequence) > 0


@given(layouts_and_parts(), layouts_and_parts())
def test_ids_order_by_time_first(first: tuple, second: tuple) -> None:
    layout, a = first
    _, b = second
    b = tuple(
        min(value, (1 << bits) - 1) for value, bits in zip(b, layout.widths().values(), strict=True)
    )
    assume(a[0] != b[0])
    assert (layout.encode(*a) < layout.encode(*b)) == (a[0] < b[0])


def test_default_layout_is_documented() -> None:
    layout = IdLayout()
    assert layout.widths() == {"time": 41, "shard": 6, "worker": 6, "sequence": 10}
    assert layout.epoch_ms == DEFAULT_EPOCH_MS == 1_735_689_600_000
    text = layout.describe()
    assert "2025-01-01T00:00:00Z" in text and "until 2094-09-07" in text
    assert "up to 64 shards" in text and "1024 IDs per tick" in text


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        (
            {"time_bits": 42, "shard_bits": 10, "worker_bits": 6, "sequence_bits": 10},
            "needs 68 bits (time 42 + shard 10 + worker 6 + sequence 10) but an ID has 63",
        ),
        ({"time_bits": 41, "shard_bits": 6, "worker_bits": 6, "sequence_bits": 11}, "64 bits"),
        ({"time_bits": 0}, "time_bits must be at least 1"),
        ({"shard_bits": -1}, "shard_bits must be >= 0"),
        ({"worker_bits": 2.5}, "worker_bits must be an int"),
        ({"sequence_bits": True}, "sequence_bits must be an int"),
        ({"tick_ms": 0}, "tick_ms must be >= 1"),
        ({"epoch_ms": -1}, "epoch_ms must be >= 0"),
    ],
)
def test_bad_layouts_are_rejected_with_fields_and_bits(widths: dict, message: str) -> None:
    with pytest.raises(IdLayoutError, match=re.escape(message)):
        IdLayout(**widths)


def test_layout_errors_are_sharding_errors_and_value_errors() -> None:
    with pytest.raises(ShardingError):
        IdLayout(time_bits=64)
    with pytest.raises(ValueError):
        IdLayout(time_bits=64)


def test_encode_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(
        IdLayoutError, match=r"shard value 64 does not fit the shard field \(6 bits"
    ):
        IdLayout().encode(1, 64, 0, 0)


@pytest.mark.parametrize("value", [-1, 1 << 63, "12", 1.0, True])
def test_decode_rejects_non_ids(value: object) -> None:
    with pytest.raises(InvalidIdError):
        IdLayout().decode(value)  # type: ignore[arg-type]


def test_decode_rejects_bits_beyond_a_narrow_layout() -> None:
    layout = IdLayout(time_bits=20, shard_bits=2, worker_bits=2, sequence_bits=2)
    with pytest.raises(InvalidIdError, match="2\\*\\*26"):
        layout.decode(1 << 26)


# -- shard numbering ------------------------------------------------------------------
def test_shards_are_numbered_in_order_or_explicitly() -> None:
    assert number_shards(["asia", "europe"], IdLayout()) == {"asia": 0, "europe": 1}
    assert number_shards({"asia": 7, "europe": 3}, IdLayout()) == {"asia": 7, "europe": 3}


def test_more_shards_than_the_field_holds_is_rejected() -> None:
    layout = IdLayout(shard_bits=2)
    with pytest.raises(
        IdLayoutError,
        match=r"shard field has 2 bits \(4 values\) but 5 shards were given .*at least 3 bits",
    ):
        number_shards([f"s{i}" for i in range(5)], layout)


@pytest.mark.parametrize(
    ("shards", "message"),
    [
        ({"a": 4}, "shard 'a' has number 4, but the shard field has 2 bits"),
        ({"a": 1, "b": 1}, "shards 'a' and 'b' both have number 1"),
        (["a", "a"], "listed twice"),
        ([], "at least one shard"),
        ({"a": -1}, "number must be an int >= 0"),
        ("asia", "sequence or mapping"),
        ([""], "non-empty strings"),
    ],
)
def test_bad_shard_numberings_are_rejected(shards: object, message: str) -> None:
    with pytest.raises(IdLayoutError, match=message):
        number_shards(shards, IdLayout(shard_bits=2))  # type: ignore[arg-type]


def test_zero_shard_bits_hold_exactly_one_shard() -> None:
    assert number_shards(["only"], IdLayout(shard_bits=0)) == {"only": 0}
    with pytest.raises(IdLayoutError):
        number_shards(["a", "b"], IdLayout(shard_bits=0))


# -- the clock ----------------------------------------------------------------------
def run_clock(clock: IdClock, start: int, jumps: list[int]) -> list[tuple[int, int]]:
    """Drive the clock like the generator does, with a wall clock that jumps by ``jumps``.

    Time passes while the generator waits; a jump further back than the bound
    must raise, and the test then lets the wall clock catch up.
    """
    slots, now = [], start
    for jump in jumps:
        now += jump
        while True:
            try:
                tick, sequence = clock.advance(now)
            except ClockMovedBackwardsError as error:
                assert error.behind_ms > clock.max_backward_ms
                now += error.behind_ms  # the clock catches up
                continue
            if tick >= 0:
                slots.append((tick, sequence))
                break
            assert 0 < sequence <= max(clock.max_backward_ms, clock.layout.tick_ms)
            now += sequence  # waiting lets real time pass
    return slots


jumps = st.lists(st.integers(-80, 5), min_size=1, max_size=300)


@settings(max_examples=200)
@given(jumps, st.integers(0, 3), st.integers(1, 3))
def test_clock_slots_strictly_increase_and_ids_too(
    deltas: list[int], sequence_bits: int, tick_ms: int
) -> None:
    layout = IdLayout(sequence_bits=sequence_bits, tick_ms=tick_ms, worker_bits=9)
    clock = IdClock(layout, max_backward_ms=50)
    slots = run_clock(clock, DEFAULT_EPOCH_MS + 10_000, deltas)
    assert slots == sorted(set(slots))
    ids = [layout.encode(tick, 5, 3, sequence) for tick, sequence in slots]
    assert ids == sorted(set(ids)) and all(value > 0 for value in ids)
    assert all(0 <= sequence < layout.ids_per_tick for _, sequence in slots)


def test_clock_counts_within_a_tick_then_waits_for_the_next() -> None:
    clock = IdClock(IdLayout(sequence_bits=1), max_backward_ms=10)
    now = DEFAULT_EPOCH_MS + 100
    assert clock.advance(now) == (100, 0)
    assert clock.advance(now) == (100, 1)
    assert clock.advance(now) == (-1, 1)  # sequence used up: wait 1 ms
    assert clock.advance(now + 1) == (101, 0)


def test_clock_waits_out_small_backward_steps() -> None:
    clock = IdClock(IdLayout(), max_backward_ms=10)
    now = DEFAULT_EPOCH_MS + 1000
    assert clock.advance(now) == (1000, 0)
    assert clock.advance(now - 7) == (-1, 7)
    assert clock.advance(now) == (1000, 1)


def test_clock_refuses_beyond_the_bound() -> None:
    clock = IdClock(IdLayout(), max_backward_ms=10)
    now = DEFAULT_EPOCH_MS + 1000
    clock.advance(now)
    with pytest.raises(ClockMovedBackwardsError, match="11 ms before") as caught:
        clock.advance(now - 11)
    assert (caught.value.behind_ms, caught.value.max_backward_ms) == (11, 10)
    assert clock.advance(now + 1) == (1001, 0)  # it recovers when the clock catches up


def test_clock_starts_after_a_floor() -> None:
    clock = IdClock(IdLayout(), max_backward_ms=10, floor_tick=2000)
    assert clock.advance(DEFAULT_EPOCH_MS + 1995) == (-1, 4)  # to tick 1999, used up
    assert clock.advance(DEFAULT_EPOCH_MS + 1999) == (-1, 1)
    assert clock.advance(DEFAULT_EPOCH_MS + 2000) == (2000, 0)


def test_clock_never_uses_tick_zero_or_times_before_the_epoch() -> None:
    clock = IdClock(IdLayout(), max_backward_ms=0)
    with pytest.raises(IdLayoutError, match="not after the ID layout's epoch"):
        clock.advance(DEFAULT_EPOCH_MS - 5000)
    with pytest.raises(IdLayoutError):
        clock.advance(DEFAULT_EPOCH_MS)
    assert clock.advance(DEFAULT_EPOCH_MS + 1) == (1, 0)


def test_clock_refuses_past_the_end_of_the_time_field() -> None:
    layout = IdLayout(time_bits=10)
    clock = IdClock(layout, max_backward_ms=0)
    with pytest.raises(IdSpaceExhaustedError, match="past the end of the ID layout's time field"):
        clock.advance(DEFAULT_EPOCH_MS + 1024)


# -- UUIDv7 -----------------------------------------------------------------------------
@given(st.integers(0, 2**48 - 1), st.integers(0, 2**12 - 1), st.integers(0, 2**62 - 1))
def test_uuid7_fields(unix_ms: int, counter: int, random_bits: int) -> None:
    value = uuid7_from(unix_ms, counter, random_bits)
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert unix_ms_of(value) == unix_ms
    assert (value.int >> 64) & 0xFFF == counter
    assert value.int & (2**62 - 1) == random_bits


def test_uuid7_example_in_the_docstring() -> None:
    assert str(uuid7_from(DEFAULT_EPOCH_MS, 0, 0)) == "01941f29-7c00-7000-8000-000000000000"
