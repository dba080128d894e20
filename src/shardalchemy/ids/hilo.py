"""Hi/lo (block) sequences: lease a block of values in a short transaction, hand out from memory.

Each process leases ``block_size`` consecutive values of a named sequence at a
time from the ``shardalchemy_sequences`` table, in its own short transaction
on its own connection (never the caller's): an ``UPDATE ... SET next_value =
next_value + block_size`` that locks the row, read back with ``RETURNING``
where the dialect has it (PostgreSQL, SQLite >= 3.35) or with a ``SELECT`` in
the same transaction (MariaDB/MySQL).  The values are then handed out from
memory, thread-safely, and the next block is leased when they run out.

No value is handed out twice: a block belongs to the one transaction that
moved ``next_value`` past it, and values are handed out only after that
transaction committed.  A process that dies mid-block leaves a gap, never a
duplicate.  IDs are unique per sequence, increasing within a process, and not
ordered across processes.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from sqlalchemy import BigInteger, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeEngine

from ._store import Program, Store, register, run_program, run_program_async, transaction
from .errors import IdConfigurationError, IdSpaceExhaustedError, SequenceUnavailableError
from .layout import MAX_ID
from .tables import sequences_table


class HiLoSequence:
    """A named sequence of 64-bit integers, leased from the database a block at a time.

    ``store`` is where the ``shardalchemy_sequences`` table lives: a shard
    map's ``bind(shard)`` (a designated shard), any
    :class:`~sqlalchemy.engine.Engine` / :class:`~sqlalchemy.ext.asyncio.AsyncEngine`,
    or a database URL.  Create the table once with
    :func:`~shardalchemy.ids.create_id_tables`; the sequence's row is created
    on first use, starting at ``start``.  Every process and thread using the
    same name and store draws from one sequence, with no duplicates.

    Example (``ids_url``: a database holding the ID tables; on a server, a shard map's
    ``bind("asia")`` can be the store too):

    >>> order_ids = HiLoSequence("orders", ids_url, block_size=1000)
    >>> order_ids.next_id(), order_ids.next_id(), order_ids.next_id()  # leases 1..1000
    (1, 2, 3)
    >>> import asyncio
    >>> asyncio.run(order_ids.next_id_async())  # from asyncio code
    4
    >>> from sqlalchemy import MetaData, Table
    >>> from shardalchemy.ids import id_column
    >>> orders = Table("orders", MetaData(), id_column("id", order_ids))  # ORM: mapped_id_column
    >>> with shard_map.bind("asia").begin() as connection:
    ...     orders.create(connection)
    ...     connection.execute(insert(orders)).inserted_primary_key
    (5,)
    """

    encodes_shard = False
    """Hi/lo values do not say which shard a row lives on."""

    def __init__(self, name: str, store: Any, *, block_size: int = 1000, start: int = 1) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise IdConfigurationError(
                f"a sequence name must be a non-empty string of at most 200 characters, "
                f"got {name!r}"
            )
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise IdConfigurationError(
                f"sequence {name!r}: block_size must be an int >= 1, got {block_size!r}"
            )
        if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start <= MAX_ID:
            raise IdConfigurationError(
                f"sequence {name!r}: start must be an int between 1 and 2**63 - 1, got {start!r}"
            )
        self.name = name
        self.block_size = block_size
        self.start = start
        self._store = Store(store, what=f"sequence {name!r}")
        self._new_state()
        register(self)

    def _new_state(self) -> None:
        self._lock = threading.Lock()
        # threads lease one at a time; re-entrant because greenlets of one event
        # loop share a thread: a second one must not wait on the first
        self._lease_lock = threading.RLock()
        self._next = 0
        self._stop = 0
        self._spare: collections.deque[range] = collections.deque()

    @property
    def shard(self) -> str | None:
        """The shard holding the sequence table (``None`` when it is not on a shard)."""
        return self._store.shard

    # -- handing out ------------------------------------------------------------
    def next_id(self) -> int:
        """The next value; leases a new block (a short transaction) when the current one is used.

        Example:

        >>> order_ids.next_id(), order_ids.next_id()  # the first leases 1..1000 (block_size)
        (1, 2)
        >>> HiLoSequence("invoices", ids_url, start=5000).next_id()
        5000
        """
        while True:
            with self._lock:
                value = self._next
                if value < self._stop:
                    self._next = value + 1
                    return value
                if self._spare:
                    block = self._spare.popleft()
                    self._next, self._stop = block.start, block.stop
                    continue
            with self._lease_lock:
                with self._lock:
                    if self._next < self._stop or self._spare:
                        continue
                block = run_program(self._store, self._lease_program())
                with self._lock:
                    self._spare.append(block)

    async def next_id_async(self) -> int:
        """:meth:`next_id` for asyncio code: a lease awaits instead of blocking the loop.

        Example:

        >>> import asyncio
        >>> async def take_three() -> list[int]:
        ...     return [await order_ids.next_id_async() for _ in range(3)]
        >>> asyncio.run(take_three())
        [1, 2, 3]
        """
        while True:
            value = self._take()
            if value is not None:
                return value
            block = await run_program_async(self._store, self._lease_program())
            with self._lock:
                self._spare.append(block)

    def _take(self) -> int | None:
        with self._lock:
            while self._next >= self._stop:
                if not self._spare:
                    return None
                block = self._spare.popleft()
                self._next, self._stop = block.start, block.stop
            value = self._next
            self._next = value + 1
            return value

    def column_default(self, context: Any) -> int:
        """A column default (SQLAlchemy passes the execution context, unused here).

        Example:

        >>> from sqlalchemy import Column, MetaData, Table
        >>> id_ = Column("id", BigInteger, primary_key=True, default=order_ids.column_default)
        >>> orders = Table("orders", MetaData(), id_)
        >>> with shard_map.bind("asia").begin() as connection:
        ...     orders.create(connection)
        ...     connection.execute(insert(orders)).inserted_primary_key
        (1,)
        """
        return self.next_id()

    def column_type(self) -> TypeEngine[int]:
        """The column type of these values: ``BigInteger``."""
        return BigInteger()

    # -- leasing ---------------------------------------------------------------
    def lease_block(self) -> range:
        """Lease one block now and return it, without handing its values out.

        For bulk loads that number rows themselves.

        Example:

        >>> block = order_ids.lease_block()
        >>> block
        range(1, 1001)
        >>> [{"id": value, "item": item} for value, item in zip(block, ["tea", "rice"])]
        [{'id': 1, 'item': 'tea'}, {'id': 2, 'item': 'rice'}]
        >>> order_ids.next_id()  # the leased block is yours alone
        1001
        """
        return run_program(self._store, self._lease_program())

    def _lease_program(self) -> Program[range]:
        try:
            block: range = yield from transaction(
                self._lease_block,
                sequences_table,
                self._unavailable,
                passthrough=(IntegrityError,),
            )
        except IntegrityError:
            # another process created the sequence's row at the same moment
            block = yield from transaction(self._lease_block, sequences_table, self._unavailable)
        return block

    def _lease_block(self, connection: Connection) -> range:
        table, size = sequences_table, self.block_size
        advance = (
            update(table)
            .where(table.c.name == self.name)
            .values(next_value=table.c.next_value + size)
        )
        stop: Any
        if connection.dialect.update_returning:
            stop = connection.execute(advance.returning(table.c.next_value)).scalar()
        elif connection.execute(advance).rowcount:
            # the UPDATE holds the row lock, so this reads our own new value
            stop = connection.scalar(select(table.c.next_value).where(table.c.name == self.name))
        else:
            stop = None
        if stop is None:
            stop = self.start + size
            connection.execute(insert(table).values(name=self.name, next_value=stop))
        if not isinstance(stop, int) or stop - 1 > MAX_ID:
            # (SQLite turns an overflowing integer into a float)
            raise IdSpaceExhaustedError(
                f"sequence {self.name!r} on {self._store.where()} is exhausted: its next "
                f"block would pass 2**63 - 1"
            )
        return range(stop - size, stop)

    def _unavailable(self, reason: str) -> SequenceUnavailableError:
        return SequenceUnavailableError(
            f"cannot lease a block of {self.block_size} values of sequence {self.name!r} on "
            f"{self._store.where()}: {reason}",
            sequence=self.name,
            shard=self._store.shard,
            location=self._store.url_text,
            reason=reason,
        )

    # -- lifecycle ---------------------------------------------------------------
    def close(self) -> None:
        """Forget the values left in memory (a gap) and close an engine made from a URL.

        Example:

        >>> order_ids.next_id()
        1
        >>> order_ids.close()  # 2..1000 are never handed out
        >>> order_ids.next_id()  # (used again, it leases a new block)
        1001
        """
        with self._lock:
            self._next = self._stop = 0
            self._spare.clear()
        self._store.dispose()

    async def close_async(self) -> None:
        """:meth:`close` for asyncio code (also closes an async engine made from a URL).

        Example:

        >>> import asyncio
        >>> async def main() -> int:
        ...     order_id = await order_ids.next_id_async()
        ...     await order_ids.close_async()
        ...     return order_id
        >>> asyncio.run(main())
        1
        """
        with self._lock:
            self._next = self._stop = 0
            self._spare.clear()
        await self._store.dispose_async()

    def _after_fork_in_child(self) -> None:
        # the parent keeps handing out its block: the child must never reuse it
        self._new_state()
        self._store.forget_connections()

    def _at_exit(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<HiLoSequence {self.name!r} block_size={self.block_size} on {self._store.where()}>"
