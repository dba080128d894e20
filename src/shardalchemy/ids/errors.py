"""Errors raised by the ID generators.

All derive from :class:`IdGeneratorError`, itself a
:class:`shardalchemy.ShardingError`, so ``except shardalchemy.ShardingError``
still catches them all.  Messages name the sequence or generator, the shard
(or database) holding its table, and say what to do.

Example (a sequence whose database has no ID tables):

>>> from shardalchemy.ids import HiLoSequence
>>> order_ids = HiLoSequence("orders", ids_url.replace("ids.db", "empty.db"))
>>> try:
...     order_ids.next_id()
... except SequenceUnavailableError as error:
...     print(error.sequence, error.shard, error.reason)
orders None table 'shardalchemy_sequences' does not exist there (or cannot be read); ...
"""

from __future__ import annotations

from sqlalchemy.exc import DontWrapMixin

from shardalchemy.errors import ShardingError


class IdGeneratorError(ShardingError, DontWrapMixin):
    """Base class of every error an ID generator raises.

    Raised from a column default during an INSERT, it reaches the caller as
    itself, not wrapped in SQLAlchemy's ``StatementError`` (``DontWrapMixin``).

    Example (a generator that numbers only shard ``asia``, asked for a row on ``europe``):

    >>> from sqlalchemy import MetaData, Table
    >>> from shardalchemy.ids import ShardAwareIdGenerator, id_column
    >>> asia_ids = ShardAwareIdGenerator(ids_url, ["asia"], name="asia only")
    >>> towns = Table("towns", MetaData(), id_column("id", asia_ids))
    >>> try:
    ...     with shard_map.bind("europe").begin() as connection:
    ...         connection.execute(insert(towns))
    ... except IdGeneratorError as error:  # itself, not a StatementError; no row was written
    ...     print(type(error).__name__)
    IdConfigurationError
    """


class IdLayoutError(IdGeneratorError, ValueError):
    """A 64-bit ID layout (bits per field, epoch) or a shard numbering cannot work.

    Raised when the layout or the generator is configured, never while IDs are issued.

    Example:

    >>> from shardalchemy.ids import IdLayout
    >>> IdLayout(time_bits=42, shard_bits=10, worker_bits=6, sequence_bits=10)
    Traceback (most recent call last):
      ...
    shardalchemy.ids.errors.IdLayoutError: the ID layout needs 68 bits (time 42 + shard 10 + ...
    """


class InvalidIdError(IdGeneratorError, ValueError):
    """A value handed to ``decode()`` / ``shard_of()`` is not an ID of that layout.

    Example:

    >>> ids.shard_of(-5)
    Traceback (most recent call last):
      ...
    shardalchemy.ids.errors.InvalidIdError: -5 is not an ID of this layout: IDs are between 0 ...
    """


class ClockMovedBackwardsError(IdGeneratorError):
    """The wall clock went backwards further than the generator may wait out.

    ``behind_ms`` is how far behind the last issued ID the clock is, and
    ``max_backward_ms`` the bound the generator was configured with.

    Example (a generator on a clock of ours, which steps back one second):

    >>> import time
    >>> from shardalchemy.ids import ShardAwareIdGenerator
    >>> now_ms = [time.time_ns() // 1_000_000]
    >>> ids = ShardAwareIdGenerator(ids_url, shard_map, clock=lambda: now_ms[0])
    >>> first = ids.next_id("asia")
    >>> now_ms[0] -= 1000
    >>> try:
    ...     ids.next_id("asia")
    ... except ClockMovedBackwardsError as error:
    ...     print(f"clock {error.behind_ms} ms behind, bound {error.max_backward_ms} ms")
    clock 1000 ms behind, bound 50 ms
    >>> ids.close()
    """

    def __init__(self, message: str, *, behind_ms: int, max_backward_ms: int) -> None:
        self.behind_ms = behind_ms
        self.max_backward_ms = max_backward_ms
        super().__init__(message)


class IdSpaceExhaustedError(IdGeneratorError):
    """The generator cannot issue more IDs: its time field or its sequence ran out.

    For example a layout whose time field ends before today, or a hi/lo sequence
    whose next block would pass 2**63 - 1.  A time field of 30 bits of milliseconds
    ended 12 days into 2025:

    >>> from shardalchemy.ids import IdLayout, ShardAwareIdGenerator
    >>> short_lived = ShardAwareIdGenerator(
    ...     ids_url, shard_map, layout=IdLayout(time_bits=30), name="short-lived"
    ... )
    >>> short_lived.next_id("asia")
    Traceback (most recent call last):
      ...
    shardalchemy.ids.errors.IdSpaceExhaustedError: the clock reads ..., past the end of the ID
    layout's time field (30 bits of 1 ms ticks since 2025-01-01T00:00:00Z end at
    2025-01-13T10:15:41Z): configure a later epoch_ms or more time bits
    >>> short_lived.close()
    """


class SequenceUnavailableError(IdGeneratorError):
    """A hi/lo sequence could not lease a block of values.

    ``sequence`` is the sequence's name, ``shard`` the shard holding its table
    (``None`` when the table is in a database that is not a shard),
    ``location`` that database's URL (password hidden) and ``reason`` what
    went wrong.

    Example (a sequence whose database has no ID tables):

    >>> from shardalchemy.ids import HiLoSequence
    >>> order_ids = HiLoSequence("orders", ids_url.replace("ids.db", "empty.db"))
    >>> try:
    ...     order_ids.next_id()
    ... except SequenceUnavailableError as error:
    ...     print(error.sequence, error.shard, error.location)
    ...     print(error.reason)
    orders None sqlite:///...empty.db
    table 'shardalchemy_sequences' does not exist there (or cannot be read); create it with
    shardalchemy.ids.create_id_tables(bind)
    """

    def __init__(
        self, message: str, *, sequence: str, shard: str | None, location: str, reason: str
    ) -> None:
        self.sequence = sequence
        self.shard = shard
        self.location = location
        self.reason = reason
        super().__init__(message)


class WorkerLeaseError(IdGeneratorError):
    """A shard-aware generator has no valid worker number, so it issues no IDs.

    Raised when no worker number could be leased (the table is missing or
    unreachable, or every number is held by a live process), or when the lease
    could not be renewed before it expired.  ``generator`` is the generator's
    name, ``shard`` and ``location`` say where the lease table is.

    Example (a generator whose database has no ID tables):

    >>> from shardalchemy.ids import ShardAwareIdGenerator
    >>> ids = ShardAwareIdGenerator(ids_url.replace("ids.db", "empty.db"), shard_map)
    >>> try:
    ...     ids.next_id("asia")
    ... except WorkerLeaseError as error:
    ...     print(error.generator, error.shard, error.reason)
    default None table 'shardalchemy_workers' does not exist there (or cannot be read); ...
    """

    def __init__(
        self, message: str, *, generator: str, shard: str | None, location: str, reason: str
    ) -> None:
        self.generator = generator
        self.shard = shard
        self.location = location
        self.reason = reason
        super().__init__(message)


class IdConfigurationError(IdGeneratorError):
    """An ID generator was given something it cannot use (a store, a shard, a name).

    Example (the doctests' shards are SQLite tables in one file, which one connection at a time
    may write):

    >>> from shardalchemy.ids import HiLoSequence
    >>> HiLoSequence("orders", shard_map.bind("asia"))
    Traceback (most recent call last):
      ...
    shardalchemy.ids.errors.IdConfigurationError: sequence 'orders': the SQLite engine ...
    ... give the ID tables their own SQLite file, e.g. sqlite:///ids.db
    """


__all__ = [
    "ClockMovedBackwardsError",
    "IdConfigurationError",
    "IdGeneratorError",
    "IdLayoutError",
    "IdSpaceExhaustedError",
    "InvalidIdError",
    "SequenceUnavailableError",
    "WorkerLeaseError",
]
