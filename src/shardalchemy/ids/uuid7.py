"""UUIDv7 keys (RFC 9562): time-ordered 128-bit UUIDs, made in memory, no database.

Layout, most significant first: 48 bits of Unix milliseconds, the version
(7), a 12-bit counter (RFC 9562 section 6.2, method 1: seeded at random each
millisecond, so IDs from one generator strictly increase), the variant, and
62 random bits from the operating system's CSPRNG.  Uniqueness across
processes rests on those random bits; there is no lease and no table.

**The shard is not encoded in a UUIDv7.**  A router cannot tell a row's shard
from its UUID; look rows up by their shard key, or use
:class:`~shardalchemy.ids.ShardAwareIdGenerator` when the shard must be
recoverable from the ID.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from sqlalchemy import Uuid
from sqlalchemy.types import TypeEngine

from ._store import register
from .errors import InvalidIdError

_COUNTER_MASK = 0xFFF
_RANDOM_MASK = (1 << 62) - 1
_MAX_MS = (1 << 48) - 1


def uuid7_from(unix_ms: int, counter: int, random_bits: int) -> uuid.UUID:
    """Assemble a UUIDv7 from its parts (pure): 48-bit ms, 12-bit counter, 62 random bits.

    Example:

    >>> uuid7_from(1_735_689_600_000, 0, 0)  # 2025-01-01T00:00:00Z
    UUID('01941f29-7c00-7000-8000-000000000000')
    >>> uuid7_from(1_735_689_600_000, 0xABC, 1).version
    7
    """
    if not 0 <= unix_ms <= _MAX_MS:
        raise InvalidIdError(f"UUIDv7 time must fit 48 bits of Unix ms, got {unix_ms}")
    value = (
        (unix_ms << 80)
        | (0x7 << 76)
        | ((counter & _COUNTER_MASK) << 64)
        | (0b10 << 62)
        | (random_bits & _RANDOM_MASK)
    )
    return uuid.UUID(int=value)


def unix_ms_of(value: uuid.UUID) -> int:
    """The Unix time in milliseconds a UUIDv7 was made at.

    Example:

    >>> unix_ms_of(uuid7_from(1_735_689_600_000, 0, 0))
    1735689600000
    >>> before_ms = time.time_ns() // 1_000_000
    >>> before_ms <= unix_ms_of(UUIDv7Generator().next_id()) <= time.time_ns() // 1_000_000
    True
    >>> unix_ms_of(uuid.uuid4())
    Traceback (most recent call last):
      ...
    shardalchemy.ids.errors.InvalidIdError: UUID('...') is not a UUIDv7
    """
    if not isinstance(value, uuid.UUID) or value.version != 7:
        raise InvalidIdError(f"{value!r} is not a UUIDv7")
    return value.int >> 80


class UUIDv7Generator:
    """Time-ordered UUIDv7 keys, unique without any database, increasing per generator.

    The shard is **not** encoded (see the module notes); ``encodes_shard`` is False.

    Example:

    >>> uuids = UUIDv7Generator()
    >>> first = uuids.next_id()
    >>> first.version, uuids.next_id() > first, uuids.encodes_shard
    (7, True, False)
    >>> from sqlalchemy.orm import DeclarativeBase
    >>> from shardalchemy.ids import mapped_id_column
    >>> class Numbered(DeclarativeBase):
    ...     pass
    >>> class Event(Numbered):
    ...     __tablename__ = "events"
    ...     id = mapped_id_column(uuids)  # in a module of yours: id: Mapped[uuid.UUID] = ...
    >>> Event.__table__.c.id.type
    Uuid()
    """

    encodes_shard = False
    """UUIDv7 values do not say which shard a row lives on."""

    def __init__(self, *, clock: Any = None) -> None:
        self._now_ms = clock if clock is not None else (lambda: time.time_ns() // 1_000_000)
        self._new_state()
        register(self)

    def _new_state(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0
        self._random = b""
        self._offset = 0

    def _random_int(self) -> int:  # called with the lock held
        if self._offset >= len(self._random):
            self._random, self._offset = os.urandom(4096), 0
        offset = self._offset
        self._offset = offset + 8
        return int.from_bytes(self._random[offset : offset + 8], "big")

    def next_id(self) -> uuid.UUID:
        """A new UUIDv7, greater than every earlier one from this generator.

        Example:

        >>> uuids = UUIDv7Generator()
        >>> uuids.next_id()
        UUID('...')
        >>> batch = [uuids.next_id() for _ in range(10_000)]
        >>> batch == sorted(batch) and len(set(batch)) == len(batch)
        True
        """
        with self._lock:
            now = self._now_ms()
            if now > self._last_ms:
                self._last_ms = now
                # a random start, below half the range, leaves room to count up
                self._counter = self._random_int() & 0x7FF
            else:  # same millisecond, or the clock went back: count on from the last
                self._counter += 1
                if self._counter > _COUNTER_MASK:  # RFC 9562 6.2: borrow the next ms
                    self._last_ms += 1
                    self._counter = self._random_int() & 0x7FF
            return uuid7_from(self._last_ms, self._counter, self._random_int())

    async def next_id_async(self) -> uuid.UUID:
        """:meth:`next_id` for asyncio code (no I/O; provided for a uniform API).

        Example:

        >>> import asyncio
        >>> asyncio.run(UUIDv7Generator().next_id_async()).version  # await ... in asyncio code
        7
        """
        return self.next_id()

    def column_default(self, context: Any) -> uuid.UUID:
        """A column default (SQLAlchemy passes the execution context, unused here).

        Example:

        >>> from sqlalchemy import Column, MetaData, Table, create_engine
        >>> uuids = UUIDv7Generator()
        >>> id_ = Column("id", Uuid, primary_key=True, default=uuids.column_default)
        >>> events = Table("events", MetaData(), id_)
        >>> engine = create_engine("sqlite://")
        >>> events.create(engine)
        >>> with engine.begin() as connection:
        ...     (event_id,) = connection.execute(insert(events)).inserted_primary_key
        >>> event_id.version
        7
        """
        return self.next_id()

    def column_type(self) -> TypeEngine[uuid.UUID]:
        """The column type of these values: :class:`sqlalchemy.Uuid`."""
        return Uuid()

    @staticmethod
    def unix_ms_of(value: uuid.UUID) -> int:
        """When a UUIDv7 was made, in Unix milliseconds (see :func:`unix_ms_of`)."""
        return unix_ms_of(value)

    def _after_fork_in_child(self) -> None:
        # the child must not replay the parent's buffered random bytes
        self._new_state()

    def _at_exit(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<UUIDv7Generator>"
