"""The layout of shard-aware 64-bit IDs: pure encoding, decoding, validation and clock logic.

An ID is a positive signed 64-bit integer (the sign bit stays 0), made of four
fields, most significant first::

    | 0 | time (41) | shard (6) | worker (6) | sequence (10) |      default layout

``time``
    ticks (``tick_ms`` milliseconds, 1 by default) since ``epoch_ms``
    (2025-01-01T00:00:00Z by default).  41 bits of milliseconds last 69 years.
    Time comes first, so IDs sort by creation time across processes.
``shard``
    the number of the shard the row lives on, so the shard is recoverable from
    the ID alone (see :func:`number_shards`).  6 bits: up to 64 shards.
``worker``
    a number leased by each generating process, so two live processes never
    issue the same ID.  6 bits: up to 64 live processes per generator.
``sequence``
    a counter within one tick, per process.  10 bits: 1,024 IDs per
    millisecond per process (about a million a second); a process that asks for
    more waits for the next millisecond.

Every width, the epoch and the tick length are configurable; the four widths
must add up to 63 bits or fewer.  Nothing here does I/O or reads a clock: the
current time is always passed in, so the module is tested with plain values.

Example:

>>> layout = IdLayout(shard_bits=8, worker_bits=5, sequence_bits=9)
>>> id_ = layout.encode(tick=123_456_789, shard=3, worker=1, sequence=0)
>>> layout.decode(id_).shard
3
>>> print(layout.describe())
63-bit IDs (the sign bit stays 0), most significant field first:
  time      41 bits  1 ms ticks since 2025-01-01T00:00:00Z, until 2094-09-07T15:47:35Z
  shard      8 bits  up to 256 shards
  worker     5 bits  up to 32 live processes
  sequence   9 bits  512 IDs per tick per process
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .errors import ClockMovedBackwardsError, IdLayoutError, IdSpaceExhaustedError, InvalidIdError

ID_BITS = 63
"""Bits available to an ID: a signed 64-bit column whose sign bit stays 0."""

MAX_ID = (1 << ID_BITS) - 1
"""The largest value a signed 64-bit (``BIGINT``) column holds."""

DEFAULT_EPOCH_MS = 1_735_689_600_000
"""2025-01-01T00:00:00Z in Unix milliseconds: the default epoch of the time field."""

FIELDS = ("time", "shard", "worker", "sequence")
"""The fields of an ID, most significant first."""


def _utc(unix_ms: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(unix_ms / 1000, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{unix_ms} ms after 1970"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class IdParts(NamedTuple):
    """The four fields of one ID, as returned by :meth:`IdLayout.decode`.

    Example:

    >>> parts = IdLayout().decode(IdLayout().encode(1000, 2, 5, 7))
    >>> parts
    IdParts(tick=1000, shard=2, worker=5, sequence=7)
    >>> parts.shard
    2
    """

    tick: int
    shard: int
    worker: int
    sequence: int


@dataclasses.dataclass(frozen=True)
class IdLayout:
    """Bits per field, epoch and tick length of shard-aware 64-bit IDs.

    Invalid layouts are rejected when built, with an :class:`IdLayoutError`
    naming the fields and their bits.

    Example:

    >>> IdLayout()  # 41 | 6 | 6 | 10, milliseconds since 2025
    IdLayout(time_bits=41, shard_bits=6, worker_bits=6, sequence_bits=10, epoch_ms=1735689600000,
             tick_ms=1)
    >>> IdLayout(shard_bits=10, worker_bits=4, sequence_bits=8).max_shards
    1024
    >>> coarse = IdLayout(time_bits=39, tick_ms=10, shard_bits=8, worker_bits=6, sequence_bits=10)
    >>> print(coarse.describe().splitlines()[1])  # 10 ms ticks: fewer bits last longer
      time      39 bits  10 ms ticks since 2025-01-01T00:00:00Z, until 2199-03-19T03:28:58Z
    """

    time_bits: int = 41
    shard_bits: int = 6
    worker_bits: int = 6
    sequence_bits: int = 10
    epoch_ms: int = DEFAULT_EPOCH_MS
    tick_ms: int = 1

    def __post_init__(self) -> None:
        widths = self.widths()
        for field, bits in widths.items():
            if isinstance(bits, bool) or not isinstance(bits, int):
                raise IdLayoutError(f"ID layout: {field}_bits must be an int, got {bits!r}")
            if bits < 0:
                raise IdLayoutError(f"ID layout: {field}_bits must be >= 0, got {bits}")
        if self.time_bits < 1:
            raise IdLayoutError("ID layout: time_bits must be at least 1")
        total = sum(widths.values())
        if total > ID_BITS:
            spelled = " + ".join(f"{field} {bits}" for field, bits in widths.items())
            raise IdLayoutError(
                f"the ID layout needs {total} bits ({spelled}) but an ID has {ID_BITS} "
                f"(a signed 64-bit column whose sign bit stays 0): take {total - ID_BITS} "
                f"bit(s) away from some field"
            )
        for name in ("epoch_ms", "tick_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise IdLayoutError(f"ID layout: {name} must be an int, got {value!r}")
        if self.epoch_ms < 0:
            raise IdLayoutError(f"ID layout: epoch_ms must be >= 0 (Unix ms), got {self.epoch_ms}")
        if self.tick_ms < 1:
            raise IdLayoutError(f"ID layout: tick_ms must be >= 1, got {self.tick_ms}")

    # -- sizes ---------------------------------------------------------------
    def widths(self) -> dict[str, int]:
        """Bits of each field, most significant first.

        Example:

        >>> IdLayout().widths()
        {'time': 41, 'shard': 6, 'worker': 6, 'sequence': 10}
        """
        return {
            "time": self.time_bits,
            "shard": self.shard_bits,
            "worker": self.worker_bits,
            "sequence": self.sequence_bits,
        }

    @property
    def max_shards(self) -> int:
        """How many shard numbers the shard field holds (``2 ** shard_bits``)."""
        return 1 << self.shard_bits

    @property
    def max_workers(self) -> int:
        """How many worker numbers, so live processes, the worker field holds."""
        return 1 << self.worker_bits

    @property
    def ids_per_tick(self) -> int:
        """How many IDs one process may issue per tick (``2 ** sequence_bits``)."""
        return 1 << self.sequence_bits

    @property
    def max_tick(self) -> int:
        """The last tick the time field holds."""
        return (1 << self.time_bits) - 1

    @property
    def shard_shift(self) -> int:
        """Position of the shard field's lowest bit."""
        return self.worker_bits + self.sequence_bits

    @property
    def worker_shift(self) -> int:
        """Position of the worker field's lowest bit."""
        return self.sequence_bits

    @property
    def time_shift(self) -> int:
        """Position of the time field's lowest bit."""
        return self.shard_bits + self.worker_bits + self.sequence_bits

    # -- time ----------------------------------------------------------------
    def tick_of(self, unix_ms: int) -> int:
        """The tick a Unix time in milliseconds falls in (negative before the epoch).

        Example:

        >>> IdLayout().tick_of(DEFAULT_EPOCH_MS + 1500)
        1500
        >>> IdLayout(tick_ms=10).tick_of(DEFAULT_EPOCH_MS + 1500)
        150
        """
        return (unix_ms - self.epoch_ms) // self.tick_ms

    def unix_ms_of(self, tick: int) -> int:
        """The Unix time in milliseconds a tick starts at.

        Example:

        >>> IdLayout().unix_ms_of(1500) == DEFAULT_EPOCH_MS + 1500
        True
        """
        return self.epoch_ms + tick * self.tick_ms

    # -- encode / decode -----------------------------------------------------
    def encode(self, tick: int, shard: int, worker: int, sequence: int) -> int:
        """Pack four field values into one ID; each must fit its field.

        Example:

        >>> IdLayout().encode(tick=1000, shard=2, worker=5, sequence=7)
        4194440199
        >>> IdLayout().encode(tick=1000, shard=64, worker=5, sequence=7)
        Traceback (most recent call last):
          ...
        shardalchemy.ids.errors.IdLayoutError: shard value 64 does not fit the shard field
        (6 bits: 0..63)
        """
        values = {"time": tick, "shard": shard, "worker": worker, "sequence": sequence}
        for field, value in values.items():
            bits = self.widths()[field]
            if not 0 <= value < (1 << bits):
                raise IdLayoutError(
                    f"{field} value {value} does not fit the {field} field "
                    f"({bits} bits: 0..{(1 << bits) - 1})"
                )
        return (
            (tick << self.time_shift)
            | (shard << self.shard_shift)
            | (worker << self.worker_shift)
            | sequence
        )

    def decode(self, value: int) -> IdParts:
        """Split an ID into its fields.

        Raises :class:`InvalidIdError` for something that cannot be an ID of
        this layout (not an int, negative, or wider than the layout).

        Example:

        >>> layout = IdLayout()
        >>> layout.decode(layout.encode(1000, 2, 5, 7))
        IdParts(tick=1000, shard=2, worker=5, sequence=7)
        >>> layout.decode(2**63)
        Traceback (most recent call last):
          ...
        shardalchemy.ids.errors.InvalidIdError: 9223372036854775808 is not an ID of this layout: ...
        """
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidIdError(f"{value!r} is not an ID: IDs are ints")
        if value < 0 or value >> (self.time_shift + self.time_bits):
            raise InvalidIdError(
                f"{value} is not an ID of this layout: IDs are between 0 and "
                f"2**{self.time_shift + self.time_bits} - 1"
            )
        return IdParts(
            value >> self.time_shift,
            (value >> self.shard_shift) & (self.max_shards - 1),
            (value >> self.worker_shift) & (self.max_workers - 1),
            value & (self.ids_per_tick - 1),
        )

    def describe(self) -> str:
        """The layout in words: each field, its bits and what they hold.

        Example:

        >>> print(IdLayout().describe())
        63-bit IDs (the sign bit stays 0), most significant field first:
          time      41 bits  1 ms ticks since 2025-01-01T00:00:00Z, until 2094-09-07T15:47:35Z
          shard      6 bits  up to 64 shards
          worker     6 bits  up to 64 live processes
          sequence  10 bits  1024 IDs per tick per process
        """
        unit = f"{self.tick_ms} ms ticks"
        used = sum(self.widths().values())
        end = _utc(self.unix_ms_of(self.max_tick + 1))
        lines = [
            f"{used}-bit IDs (the sign bit stays 0), most significant field first:",
            f"  time     {self.time_bits:>3} bits  {unit} since {_utc(self.epoch_ms)}, until {end}",
            f"  shard    {self.shard_bits:>3} bits  up to {self.max_shards} shards",
            f"  worker   {self.worker_bits:>3} bits  up to {self.max_workers} live processes",
            f"  sequence {self.sequence_bits:>3} bits  {self.ids_per_tick} IDs per tick "
            f"per process",
        ]
        return "\n".join(lines)


def number_shards(shards: Sequence[str] | Mapping[str, int], layout: IdLayout) -> dict[str, int]:
    """Give every shard the number stored in the ID's shard field, and check they fit.

    A sequence of names numbers them in order (0, 1, 2, ...): keep that order
    stable, add new shards at the end.  A mapping gives explicit numbers, which
    may leave gaps (reserved for future shards).  Raises :class:`IdLayoutError`
    when the shard field cannot hold them all.

    Example:

    >>> number_shards(["asia", "europe"], IdLayout())
    {'asia': 0, 'europe': 1}
    >>> number_shards({"asia": 4, "europe": 9}, IdLayout())  # explicit, stable numbers
    {'asia': 4, 'europe': 9}
    >>> number_shards({"asia": 4, "europe": 64}, IdLayout())
    Traceback (most recent call last):
      ...
    shardalchemy.ids.errors.IdLayoutError: shard 'europe' has number 64, but the shard field has ...
    """
    if isinstance(shards, str):
        raise IdLayoutError(f"shards must be a sequence or mapping of names, got {shards!r}")
    numbers: dict[str, int] = dict(shards.items()) if isinstance(shards, Mapping) else {}
    if not isinstance(shards, Mapping):
        names = list(shards)
        for name in names:
            if names.count(name) > 1:
                raise IdLayoutError(f"shard {name!r} is listed twice")
        numbers = {name: index for index, name in enumerate(names)}
    if not numbers:
        raise IdLayoutError("a shard-aware ID generator needs at least one shard")
    for name, number in numbers.items():
        if not isinstance(name, str) or not name:
            raise IdLayoutError(f"shard names must be non-empty strings, got {name!r}")
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise IdLayoutError(f"shard {name!r}: number must be an int >= 0, got {number!r}")
    if len(numbers) > layout.max_shards:
        need = (len(numbers) - 1).bit_length()
        listed = ", ".join(repr(name) for name in list(numbers)[:6])
        more = ", ..." if len(numbers) > 6 else ""
        raise IdLayoutError(
            f"the shard field has {layout.shard_bits} bits ({layout.max_shards} values) but "
            f"{len(numbers)} shards were given ({listed}{more}): give the shard field at "
            f"least {need} bits, e.g. IdLayout(shard_bits={need}, ...), taking the bits "
            f"from another field"
        )
    for name, number in numbers.items():
        if number >= layout.max_shards:
            raise IdLayoutError(
                f"shard {name!r} has number {number}, but the shard field has "
                f"{layout.shard_bits} bits (numbers 0..{layout.max_shards - 1}): give it at "
                f"least {number.bit_length()} bits or renumber the shard"
            )
    by_number: dict[int, str] = {}
    for name, number in numbers.items():
        if number in by_number:
            raise IdLayoutError(
                f"shards {by_number[number]!r} and {name!r} both have number {number}"
            )
        by_number[number] = name
    return numbers


class IdClock:
    """The per-process time/sequence state of a shard-aware generator (pure).

    :meth:`advance` is given the wall time in Unix milliseconds and returns
    the next ``(tick, sequence)`` to use, or ``(-1, wait_ms)`` when the caller
    must wait first: the sequence of this tick is used up, or the clock is
    behind the last tick issued by at most ``max_backward_ms``.  Further
    behind, it raises :class:`ClockMovedBackwardsError`.  Successive slots
    strictly increase, so IDs from one process (for one shard) do too.

    ``floor_tick`` is the first tick it may use (a worker number taken over
    from another process resumes after that process's last possible tick).

    Example:

    >>> clock = IdClock(IdLayout(), max_backward_ms=50)
    >>> clock.advance(DEFAULT_EPOCH_MS + 10)
    (10, 0)
    >>> clock.advance(DEFAULT_EPOCH_MS + 10)
    (10, 1)
    >>> clock.advance(DEFAULT_EPOCH_MS + 5)  # the clock went back 5 ms: wait 5 ms
    (-1, 5)
    """

    __slots__ = (
        "_epoch_ms",
        "_max_sequence",
        "_tick_ms",
        "last_tick",
        "layout",
        "max_backward_ms",
        "sequence",
    )

    def __init__(self, layout: IdLayout, max_backward_ms: int, floor_tick: int = 1) -> None:
        if isinstance(max_backward_ms, bool) or not isinstance(max_backward_ms, int):
            raise IdLayoutError(f"max_backward_ms must be an int, got {max_backward_ms!r}")
        if max_backward_ms < 0:
            raise IdLayoutError(f"max_backward_ms must be >= 0, got {max_backward_ms}")
        self.layout = layout
        self.max_backward_ms = max_backward_ms
        self._epoch_ms = layout.epoch_ms
        self._tick_ms = layout.tick_ms
        self._max_sequence = layout.ids_per_tick - 1
        # tick 0 is never used, so every ID is > 0
        self.last_tick = max(floor_tick, 1) - 1
        self.sequence = self._max_sequence

    def advance(self, now_ms: int) -> tuple[int, int]:
        """The next ``(tick, sequence)``, or ``(-1, milliseconds to wait)``."""
        tick = (now_ms - self._epoch_ms) // self._tick_ms
        if tick < 1:
            raise IdLayoutError(
                f"the clock reads {_utc(now_ms)}, not after the ID layout's epoch "
                f"{_utc(self._epoch_ms)}: configure an earlier epoch_ms"
            )
        last = self.last_tick
        if tick > last:
            if tick > self.layout.max_tick:
                raise IdSpaceExhaustedError(
                    f"the clock reads {_utc(now_ms)}, past the end of the ID layout's time "
                    f"field ({self.layout.time_bits} bits of {self._tick_ms} ms ticks since "
                    f"{_utc(self._epoch_ms)} end at "
                    f"{_utc(self.layout.unix_ms_of(self.layout.max_tick + 1))}): configure a "
                    f"later epoch_ms or more time bits"
                )
            self.last_tick = tick
            self.sequence = 0
            return tick, 0
        if tick == last:
            sequence = self.sequence
            if sequence < self._max_sequence:
                self.sequence = sequence + 1
                return tick, sequence + 1
            # this tick is used up: wait for the next one
            return -1, self._epoch_ms + (last + 1) * self._tick_ms - now_ms
        behind_ms = self._epoch_ms + last * self._tick_ms - now_ms
        if behind_ms > self.max_backward_ms:
            raise ClockMovedBackwardsError(
                f"the clock moved backwards: it reads {_utc(now_ms)}, {behind_ms} ms before "
                f"the last ID issued by this process, and the generator waits out at most "
                f"{self.max_backward_ms} ms (max_clock_backward); it issues no IDs until the "
                f"clock catches up",
                behind_ms=behind_ms,
                max_backward_ms=self.max_backward_ms,
            )
        return -1, behind_ms


__all__ = [
    "DEFAULT_EPOCH_MS",
    "FIELDS",
    "ID_BITS",
    "MAX_ID",
    "IdClock",
    "IdLayout",
    "IdParts",
    "number_shards",
]
