"""Errors raised by the ID generators.

All derive from :class:`IdGeneratorError`, itself a
:class:`shardalchemy.ShardingError`, so ``except shardalchemy.ShardingError``
still catches them all.  Messages name the sequence or generator, the shard
(or database) holding its table, and say what to do.

Example::

    try:
        order_ids.next_id()
    except SequenceUnavailableError as error:
        print(error.sequence, error.shard, error.reason)
"""

from __future__ import annotations

from sqlalchemy.exc import DontWrapMixin

from shardalchemy.errors import ShardingError


class IdGeneratorError(ShardingError, DontWrapMixin):
    """Base class of every error an ID generator raises.

    Raised from a column default during an INSERT, it reaches the caller as
    itself, not wrapped in SQLAlchemy's ``StatementError`` (``DontWrapMixin``).

    Example::

        try:
            session.flush()
        except IdGeneratorError:
            ...  # no row was written with an unallocated ID
    """


class IdLayoutError(IdGeneratorError, ValueError):
    """A 64-bit ID layout (bits per field, epoch) or a shard numbering cannot work.

    Raised when the layout or the generator is configured, never while IDs are issued.

    Example::

        IdLayout(time_bits=42, shard_bits=10, worker_bits=6, sequence_bits=10)
        # IdLayoutError: the ID layout needs 68 bits (time 42 + shard 10 + ...) ...
    """


class InvalidIdError(IdGeneratorError, ValueError):
    """A value handed to ``decode()`` / ``shard_of()`` is not an ID of that layout.

    Example::

        generator.shard_of(-5)   # InvalidIdError: -5 is not an ID ...
    """


class ClockMovedBackwardsError(IdGeneratorError):
    """The wall clock went backwards further than the generator may wait out.

    ``behind_ms`` is how far behind the last issued ID the clock is, and
    ``max_backward_ms`` the bound the generator was configured with.

    Example::

        except ClockMovedBackwardsError as error:
            log.error("clock %s ms behind", error.behind_ms)
    """

    def __init__(self, message: str, *, behind_ms: int, max_backward_ms: int) -> None:
        self.behind_ms = behind_ms
        self.max_backward_ms = max_backward_ms
        super().__init__(message)


class IdSpaceExhaustedError(IdGeneratorError):
    """The generator cannot issue more IDs: its time field or its sequence ran out.

    Example: a layout whose time field ends before today, or a hi/lo sequence
    whose next block would pass 2**63 - 1.
    """


class SequenceUnavailableError(IdGeneratorError):
    """A hi/lo sequence could not lease a block of values.

    ``sequence`` is the sequence's name, ``shard`` the shard holding its table
    (``None`` when the table is in a database that is not a shard),
    ``location`` that database's URL (password hidden) and ``reason`` what
    went wrong.

    Example::

        except SequenceUnavailableError as error:
            print(error.sequence, error.shard, error.location, error.reason)
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

    Example::

        except WorkerLeaseError as error:
            print(error.generator, error.shard, error.reason)
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

    Example::

        HiLoSequence("orders", shard_map.bind("asia"))  # a SQLite shard sharing a connection
        # IdConfigurationError: ... give the sequence table its own SQLite file ...
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
