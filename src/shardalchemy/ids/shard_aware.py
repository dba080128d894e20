"""Shard-aware 64-bit IDs: ``time | shard | worker | sequence``, the shard recoverable from the ID.

A :class:`ShardAwareIdGenerator` issues IDs in memory, with no database round
trip per ID.  Uniqueness across processes comes from the *worker number*, which
each process leases from the ``shardalchemy_workers`` table:

* **Leasing** takes a number nobody has used (an ``INSERT``, the primary key
  making sure only one process gets it) or one whose lease expired (an
  ``UPDATE`` that succeeds only if the row still holds the expired lease), each
  in its own short transaction.  Expiry is judged by the database's clock.
* **Renewal** runs in a daemon thread every third of the lease
  (``lease_seconds``).  If the lease cannot be renewed, the generator keeps
  issuing only until its lease would have expired (judged by the local
  monotonic clock, with a margin), then raises :class:`WorkerLeaseError`
  rather than risk a duplicate.  For stores reached through an async driver,
  renewal happens on use instead (no thread can share their event loop).
* **Takeover** is safe even when clocks disagree: a holder never issues an ID
  whose time is at or past the ``issued_until_ms`` it recorded, and a process
  taking the number over starts its IDs at that time.

The clock: IDs carry the wall-clock time.  If the clock steps backwards by up
to ``max_clock_backward`` (50 ms by default) the generator waits for it to
catch up; further back, it raises :class:`ClockMovedBackwardsError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import random
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeEngine

from ..errors import UnknownShardError
from ..inspection import SHARD_OPTION
from ._store import Program, Sleep, Store, register, run_program, run_program_async, transaction
from .errors import IdConfigurationError, IdLayoutError, InvalidIdError, WorkerLeaseError
from .layout import IdClock, IdLayout, IdParts, number_shards
from .tables import db_now_ms, workers_table

_RENEW_FRACTION = 1 / 3  # renew after a third of the lease
_SAFETY_FRACTION = 0.9  # stop issuing after 90% of the lease unless renewed


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass
class _Lease:
    worker: int
    owner: str
    worker_part: int  # worker << worker_shift
    use_until: float  # monotonic: issue nothing after this unless renewed
    renew_at: float  # monotonic
    issued_until_ms: int  # wall clock: issue only IDs with time before this
    clock: IdClock


@dataclasses.dataclass(frozen=True)
class _Row:
    worker: int
    owner: str
    expires_at_ms: int
    issued_until_ms: int


class ShardAwareIdGenerator:
    """Shard-aware 64-bit IDs, issued in memory, unique across live processes.

    ``store`` holds the worker-lease table (a shard map's ``bind(shard)``, an
    engine, an async engine or a URL; create the table with
    :func:`~shardalchemy.ids.create_id_tables`).  ``shards`` numbers the shards
    for the ID's shard field: a :class:`~shardalchemy.ShardMap` (its shard
    order), a sequence of names (in order), or a mapping of explicit numbers.
    Keep the numbering stable: append new shards, never reorder.  ``name``
    separates the worker numbers of independent generators sharing a table.

    Example (``ids_url``: a database holding the ID tables; on a server, a shard map's
    ``bind("asia")`` can be the store too):

    >>> ids = ShardAwareIdGenerator(ids_url, shard_map)
    >>> new_id = ids.next_id("europe")
    >>> ids.shard_of(new_id)
    'europe'
    >>> from sqlalchemy import String
    >>> from sqlalchemy.orm import DeclarativeBase, mapped_column
    >>> from shardalchemy import Lookup, ShardKey
    >>> from shardalchemy.ids import mapped_id_column
    >>> class Numbered(DeclarativeBase):
    ...     pass
    >>> class Town(Numbered):
    ...     __tablename__ = "towns"
    ...     __sharding__ = ShardKey("continent", Lookup({"Asia": "asia", "Europe": "europe"}))
    ...     id = mapped_id_column(ids)  # the INSERT's shard goes in the ID
    ...     continent = mapped_column(String(20))
    >>> shard_map.create_all(Numbered.metadata)
    >>> with Session() as session:
    ...     town = Town(continent="Asia")
    ...     session.add(town)
    ...     session.flush()
    ...     ids.shard_of(town.id)
    'asia'
    >>> ids.close()
    """

    encodes_shard = True
    """The ID says which shard its row lives on: see :meth:`shard_of`."""

    def __init__(
        self,
        store: Any,
        shards: Any,
        *,
        layout: IdLayout | None = None,
        name: str = "default",
        lease_seconds: float = 30.0,
        lease_timeout: float = 10.0,
        max_clock_backward: float = 0.05,
        clock: Any = None,
    ) -> None:
        self.layout = layout if layout is not None else IdLayout()
        if not isinstance(self.layout, IdLayout):
            raise IdLayoutError(f"layout must be an IdLayout, got {layout!r}")
        shard_names = getattr(shards, "shard_names", None)  # a ShardMap
        numbering: Sequence[str] | Mapping[str, int] = (
            shard_names if shard_names is not None else shards
        )
        self.shard_numbers: dict[str, int] = number_shards(numbering, self.layout)
        """Shard name -> the number in the ID's shard field."""
        if not isinstance(name, str) or not name or len(name) > 200:
            raise IdConfigurationError(
                f"a generator name must be a non-empty string of at most 200 characters, "
                f"got {name!r}"
            )
        for option, value in (("lease_seconds", lease_seconds), ("lease_timeout", lease_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise IdConfigurationError(f"{option} must be a number > 0, got {value!r}")
        if (
            isinstance(max_clock_backward, bool)
            or not isinstance(max_clock_backward, int | float)
            or max_clock_backward < 0
        ):
            raise IdConfigurationError(
                f"max_clock_backward must be a number of seconds >= 0, got {max_clock_backward!r}"
            )
        self.name = name
        self.lease_seconds = float(lease_seconds)
        self.lease_timeout = float(lease_timeout)
        self.max_clock_backward_ms = round(max_clock_backward * 1000)
        self._now_ms = clock if clock is not None else _wall_ms
        self._store = Store(store, what=f"shard-aware ID generator {name!r}")
        self._shards_by_number = {number: shard for shard, number in self.shard_numbers.items()}
        self._shard_parts = {
            shard: number << self.layout.shard_shift for shard, number in self.shard_numbers.items()
        }
        self._time_shift = self.layout.time_shift
        self._is_closed = False
        self._new_state()
        register(self)

    def _new_state(self) -> None:
        self._lock = threading.Lock()
        self._lease_lock = threading.RLock()  # re-entrant: see HiLoSequence
        self._lease: _Lease | None = None
        self._renew_due = False
        self._renewer: threading.Thread | None = None
        self._stop_renewing = threading.Event()

    # -- properties --------------------------------------------------------------
    @property
    def worker(self) -> int | None:
        """The worker number this process holds now, or ``None`` before the first lease."""
        lease = self._lease
        return None if lease is None else lease.worker

    @property
    def shard(self) -> str | None:
        """The shard holding the worker-lease table (``None`` when not on a shard)."""
        return self._store.shard

    # -- issuing ---------------------------------------------------------------
    def next_id(self, shard: str) -> int:
        """A new ID for a row on ``shard``; leases a worker number on first use.

        Example:

        >>> new_id = ids.next_id("asia")
        >>> ids.shard_of(new_id), ids.next_id("asia") > new_id
        ('asia', True)
        >>> ids.next_id("oceania")
        Traceback (most recent call last):
          ...
        shardalchemy.errors.UnknownShardError: unknown shard 'oceania' in ...
        """
        shard_part = self._shard_parts.get(shard)
        if shard_part is None:
            raise self._unknown(shard, "ShardAwareIdGenerator.next_id()")
        while True:
            value = self._issue(shard_part)
            if value > 0:
                if self._renew_due:
                    self._maintain(required=False)
                return value
            if value == 0:
                self._maintain(required=True)
            else:
                self._pause(-value)

    async def next_id_async(self, shard: str) -> int:
        """:meth:`next_id` for asyncio code: leases and renewals await.

        Example:

        >>> new_id = asyncio.run(ids.next_id_async("asia"))  # await ... in asyncio code
        >>> ids.shard_of(new_id)
        'asia'
        """
        shard_part = self._shard_parts.get(shard)
        if shard_part is None:
            raise self._unknown(shard, "ShardAwareIdGenerator.next_id_async()")
        while True:
            value = self._issue(shard_part)
            if value > 0:
                if self._renew_due:
                    await run_program_async(self._store, self._maintain_program(required=False))
                return value
            if value == 0:
                await run_program_async(self._store, self._maintain_program(required=True))
                self._start_renewer()
            else:
                await asyncio.sleep(-value / 1000)

    def _issue(self, shard_part: int) -> int:
        """An ID (> 0); 0 when the lease needs work first; -N to wait N ms first."""
        with self._lock:
            lease = self._lease
            if lease is None:
                return 0
            now = time.monotonic()
            if now >= lease.use_until:
                return 0
            if now >= lease.renew_at and self._renewer is None:
                self._renew_due = True
            now_ms = self._now_ms()
            if now_ms >= lease.issued_until_ms:
                return 0
            tick, sequence = lease.clock.advance(now_ms)
            if tick < 0:
                return -sequence
            return (tick << self._time_shift) | shard_part | lease.worker_part | sequence

    @staticmethod
    def _pause(milliseconds: int) -> None:
        # a used-up tick ends within a millisecond: sleep as briefly as the OS allows
        time.sleep(milliseconds / 1000 if milliseconds > 1 else 0.0001)

    def column_default(self, context: Any) -> int:
        """A column default that puts the shard of the INSERT's connection in the ID.

        SQLAlchemy passes the execution context; the shard comes from its
        ``shardalchemy_shard`` execution option, which every shard map's
        ``bind(shard)`` carries (so sessions and Core connections of a shard map
        both work).  Raises :class:`IdConfigurationError` for an INSERT that
        does not run on a shard.

        Example:

        >>> from sqlalchemy import Column, MetaData, Table, create_engine
        >>> id_ = Column("id", BigInteger, primary_key=True, default=ids.column_default)
        >>> towns = Table("towns", MetaData(), id_)
        >>> with shard_map.bind("europe").begin() as connection:
        ...     towns.create(connection)
        ...     (town_id,) = connection.execute(insert(towns)).inserted_primary_key
        >>> ids.shard_of(town_id)
        'europe'
        >>> with create_engine("sqlite://").begin() as connection:  # not a shard
        ...     towns.create(connection)
        ...     connection.execute(insert(towns))
        Traceback (most recent call last):
          ...
        shardalchemy.ids.errors.IdConfigurationError: shard-aware ID generator 'default': the
        INSERT into 'towns' does not run on a shard ...
        """
        options = getattr(context, "execution_options", None) or {}
        shard = options.get(SHARD_OPTION)
        if shard is None:
            table = getattr(
                getattr(getattr(context, "compiled", None), "statement", None), "table", None
            )
            raise IdConfigurationError(
                f"shard-aware ID generator {self.name!r}: the INSERT"
                f"{f' into {table.name!r}' if table is not None else ''} does not run on a "
                f"shard (its connection has no {SHARD_OPTION!r} execution option), so the ID "
                f"cannot say which shard the row is on; insert through a shard map "
                f"(a ShardedSession, or shard_map.bind(shard)), or set the ID yourself "
                f"with next_id(shard)"
            )
        if shard not in self._shard_parts:
            # raised here, not as UnknownShardError, so it is not wrapped in StatementError
            raise IdConfigurationError(
                f"shard-aware ID generator {self.name!r} has no number for shard {shard!r}, "
                f"where this INSERT runs; it numbers {self.shard_numbers}: build it from the "
                f"same shard map (or give that shard a number)"
            )
        return self.next_id(shard)

    def column_type(self) -> TypeEngine[int]:
        """The column type of these IDs: ``BigInteger``."""
        return BigInteger()

    # -- decoding --------------------------------------------------------------
    def decode(self, value: int) -> IdParts:
        """The fields of an ID (see :meth:`IdLayout.decode`).

        Example:

        >>> parts = ids.decode(ids.next_id("europe"))
        >>> parts.shard == ids.shard_numbers["europe"], parts.worker == ids.worker
        (True, True)
        """
        return self.layout.decode(value)

    def shard_of(self, value: int) -> str:
        """The shard an ID's row lives on, from the ID alone (no I/O).

        Raises :class:`InvalidIdError` for a value that is not an ID of this
        generator's layout, or whose shard number names no shard.

        Example:

        >>> ids.shard_of(ids.next_id("europe"))
        'europe'
        >>> ids.shard_of(ids.layout.encode(tick=1, shard=9, worker=0, sequence=0))
        Traceback (most recent call last):
          ...
        shardalchemy.ids.errors.InvalidIdError: ID 4784128 has shard number 9, which names no
        shard of generator 'default' (it numbers {'asia': 0, 'europe': 1, ...})
        """
        number = self.layout.decode(value).shard
        shard = self._shards_by_number.get(number)
        if shard is None:
            raise InvalidIdError(
                f"ID {value} has shard number {number}, which names no shard of generator "
                f"{self.name!r} (it numbers {self.shard_numbers})"
            )
        return shard

    def unix_ms_of(self, value: int) -> int:
        """When an ID was issued, in Unix milliseconds (start of its tick).

        Example:

        >>> from datetime import datetime, timezone
        >>> before_ms = time.time_ns() // 1_000_000
        >>> new_id = ids.next_id("asia")
        >>> before_ms <= ids.unix_ms_of(new_id) <= time.time_ns() // 1_000_000
        True
        >>> datetime.fromtimestamp(ids.unix_ms_of(new_id) / 1000, timezone.utc)
        datetime.datetime(..., tzinfo=datetime.timezone.utc)
        """
        return self.layout.unix_ms_of(self.layout.decode(value).tick)

    def _unknown(self, shard: Any, where: str) -> UnknownShardError:
        return UnknownShardError(shard, self.shard_numbers, where)

    # -- the lease ---------------------------------------------------------------
    def start(self) -> None:
        """Lease a worker number now instead of at the first ID (fails early if impossible).

        Example:

        >>> ids.worker is None  # no worker number before the first ID
        True
        >>> ids.start()
        >>> 0 <= ids.worker < ids.layout.max_workers
        True
        """
        self._maintain(required=True)

    async def start_async(self) -> None:
        """:meth:`start` for asyncio code."""
        await run_program_async(self._store, self._maintain_program(required=True))
        self._start_renewer()

    def _maintain(self, *, required: bool) -> None:
        with self._lease_lock:
            run_program(self._store, self._maintain_program(required=required))
        self._start_renewer()

    def _maintain_program(self, *, required: bool) -> Program[None]:
        """Renew the lease if it is due, or lease a worker number if there is none.

        ``required``: the caller cannot issue without it, so failing raises;
        otherwise a failed renewal only postpones the next attempt.
        """
        if self._is_closed:
            raise IdConfigurationError(f"shard-aware ID generator {self.name!r} is closed")
        with self._lock:
            lease = self._lease
            now = time.monotonic()
            if (
                lease is not None
                and now < lease.renew_at
                and now < lease.use_until
                and self._now_ms() < lease.issued_until_ms
            ):
                self._renew_due = False
                return  # nothing due (another thread may have just done it)
        if lease is not None:
            try:
                renewed = yield from self._renew_program(lease)
            except WorkerLeaseError:
                with self._lock:
                    usable = time.monotonic() < lease.use_until
                    if usable:  # retry in a second; keep issuing until use_until
                        lease.renew_at = time.monotonic() + min(1.0, self.lease_seconds / 10)
                        self._renew_due = False
                if required and not usable:
                    raise
                return
            if renewed:
                return
            with self._lock:  # someone took the number over: lease another
                if self._lease is lease:
                    self._lease = None
            if not required:
                return
        new = yield from self._lease_program()
        with self._lock:
            current = self._lease
            if current is not None and time.monotonic() < current.use_until:
                duplicate = True  # another greenlet of this thread leased meanwhile
            else:
                self._lease, self._renew_due, duplicate = new, False, False
        if duplicate:
            yield from self._release_program(new)

    def _lease_program(self) -> Program[_Lease]:
        layout, table = self.layout, workers_table
        ttl_ms = round(self.lease_seconds * 1000)
        deadline = time.monotonic() + self.lease_timeout
        owner = uuid.uuid4().hex
        chooser = random.Random()
        while True:
            rows: list[_Row] = yield from transaction(self._read_rows, table, self._lease_failed)
            db_now: int = yield from transaction(self._read_db_now, table, self._lease_failed)
            now_ms = self._now_ms()
            taken = {row.worker for row in rows}
            if layout.max_workers <= 4096:
                free = [w for w in range(layout.max_workers) if w not in taken]
            else:  # too many to list: draw a few at random
                drawn = {chooser.randrange(layout.max_workers) for _ in range(8)}
                free = list(drawn - taken)
            # an expired number is usable once our clock passed its last holder's IDs
            expired = [
                row
                for row in rows
                if row.expires_at_ms < db_now
                and row.issued_until_ms <= now_ms + self.max_clock_backward_ms
            ]
            chooser.shuffle(free)
            chooser.shuffle(expired)
            candidates: list[_Row] = [_Row(w, "", -1, 0) for w in free[:3]] + expired[:3]
            for candidate in candidates:
                started = time.monotonic()
                wall = self._now_ms()
                issued_until = max(wall, candidate.issued_until_ms) + ttl_ms
                take = self._take_free if candidate.expires_at_ms < 0 else self._take_expired
                try:
                    won = yield from transaction(
                        functools.partial(
                            take,
                            row=candidate,
                            owner=owner,
                            ttl_ms=ttl_ms,
                            issued_until=issued_until,
                        ),
                        table,
                        self._lease_failed,
                        passthrough=(IntegrityError,),
                    )
                except IntegrityError:
                    continue  # another process inserted that number first
                if won:
                    # the previous holder issued only ticks before its issued_until
                    floor = layout.tick_of(candidate.issued_until_ms - 1) + 1
                    return _Lease(
                        worker=candidate.worker,
                        owner=owner,
                        worker_part=candidate.worker << layout.worker_shift,
                        use_until=started + self.lease_seconds * _SAFETY_FRACTION,
                        renew_at=started + self.lease_seconds * _RENEW_FRACTION,
                        issued_until_ms=issued_until,
                        clock=IdClock(layout, self.max_clock_backward_ms, floor_tick=floor),
                    )
            if time.monotonic() >= deadline:
                raise self._lease_failed(
                    f"all {layout.max_workers} worker numbers ({layout.worker_bits} worker "
                    f"bits) are held by live processes, or were released too recently; a "
                    f"number frees up when its process exits or its lease expires "
                    f"({self.lease_seconds:g} s without renewal). Waited "
                    f"{self.lease_timeout:g} s (lease_timeout); give the layout more worker "
                    f"bits if more processes generate IDs at once"
                )
            yield Sleep(min(0.2, self.lease_seconds / 10) * (1 + chooser.random()))

    def _read_rows(self, connection: Connection) -> list[_Row]:
        table = workers_table
        result = connection.execute(
            select(
                table.c.worker, table.c.owner, table.c.expires_at_ms, table.c.issued_until_ms
            ).where(table.c.generator == self.name)
        )
        return [_Row(*row) for row in result]

    def _read_db_now(self, connection: Connection) -> int:
        now = db_now_ms(connection)
        if now is None:
            return self._now_ms()
        value: Any = connection.scalar(select(now))
        return int(value)

    def _db_now(self, connection: Connection) -> Any:
        now = db_now_ms(connection)
        return now if now is not None else self._now_ms()

    def _take_free(
        self, connection: Connection, row: _Row, owner: str, ttl_ms: int, issued_until: int
    ) -> bool:
        connection.execute(
            insert(workers_table).values(
                generator=self.name,
                worker=row.worker,
                owner=owner,
                expires_at_ms=self._db_now(connection) + ttl_ms,
                issued_until_ms=issued_until,
            )
        )
        return True

    def _take_expired(
        self, connection: Connection, row: _Row, owner: str, ttl_ms: int, issued_until: int
    ) -> bool:
        table = workers_table
        now = self._db_now(connection)
        result = connection.execute(
            update(table)
            .where(
                table.c.generator == self.name,
                table.c.worker == row.worker,
                table.c.owner == row.owner,
                table.c.expires_at_ms == row.expires_at_ms,
                table.c.expires_at_ms < now,
            )
            .values(owner=owner, expires_at_ms=now + ttl_ms, issued_until_ms=issued_until)
        )
        return result.rowcount == 1

    def _renew_program(self, lease: _Lease) -> Program[bool]:
        ttl_ms = round(self.lease_seconds * 1000)
        started = time.monotonic()
        issued_until = max(self._now_ms() + ttl_ms, lease.issued_until_ms)
        table = workers_table

        def renew(connection: Connection) -> bool:
            result = connection.execute(
                update(table)
                .where(
                    table.c.generator == self.name,
                    table.c.worker == lease.worker,
                    table.c.owner == lease.owner,
                )
                .values(
                    expires_at_ms=self._db_now(connection) + ttl_ms,
                    issued_until_ms=issued_until,
                )
            )
            return result.rowcount == 1

        renewed: bool = yield from transaction(renew, table, self._lease_failed)
        if renewed:
            with self._lock:
                lease.use_until = started + self.lease_seconds * _SAFETY_FRACTION
                lease.renew_at = started + self.lease_seconds * _RENEW_FRACTION
                lease.issued_until_ms = issued_until
                self._renew_due = False
        return renewed

    def _release_program(self, lease: _Lease) -> Program[None]:
        # the next holder starts after the last tick this process used
        until = min(lease.issued_until_ms, self.layout.unix_ms_of(lease.clock.last_tick + 1))
        table = workers_table

        def release(connection: Connection) -> None:
            connection.execute(
                update(table)
                .where(
                    table.c.generator == self.name,
                    table.c.worker == lease.worker,
                    table.c.owner == lease.owner,
                )
                .values(expires_at_ms=0, issued_until_ms=until)
            )

        yield from transaction(release, table, self._lease_failed)

    def _lease_failed(self, reason: str) -> WorkerLeaseError:
        return WorkerLeaseError(
            f"shard-aware ID generator {self.name!r} has no valid worker number, so it issues "
            f"no IDs: the worker-lease table on {self._store.where()} could not be used: "
            f"{reason}",
            generator=self.name,
            shard=self._store.shard,
            location=self._store.url_text,
            reason=reason,
        )

    # -- renewal thread ---------------------------------------------------------------
    def _start_renewer(self) -> None:
        if self._renewer is not None or self._store.is_async or self._is_closed:
            return
        with self._lock:
            if self._renewer is not None:
                return
            thread = threading.Thread(
                target=_renew_forever,
                args=(weakref.ref(self), self._stop_renewing),
                name=f"shardalchemy-ids-{self.name}",
                daemon=True,
            )
            self._renewer = thread
        thread.start()

    # -- lifecycle ---------------------------------------------------------------
    def close(self) -> None:
        """Stop renewing, release the worker number for another process, and stop issuing.

        Example:

        >>> ids.next_id("asia") > 0
        True
        >>> ids.close()  # its worker number is free for another process
        >>> ids.next_id("asia")
        Traceback (most recent call last):
          ...
        shardalchemy.ids.errors.IdConfigurationError: shard-aware ID generator 'default' is closed
        """
        self._is_closed = True
        self._stop_renewing.set()
        with self._lock:
            lease, self._lease = self._lease, None
        if lease is not None:
            try:
                run_program(self._store, self._release_program(lease))
            finally:
                self._store.dispose()
        else:
            self._store.dispose()

    async def close_async(self) -> None:
        """:meth:`close` for asyncio code (also closes an async engine made from a URL).

        Example:

        >>> async def main() -> str:
        ...     new_id = await ids.next_id_async("asia")
        ...     await ids.close_async()
        ...     return ids.shard_of(new_id)  # decoding needs no lease
        >>> asyncio.run(main())
        'asia'
        """
        self._is_closed = True
        self._stop_renewing.set()
        with self._lock:
            lease, self._lease = self._lease, None
        try:
            if lease is not None:
                await run_program_async(self._store, self._release_program(lease))
        finally:
            await self._store.dispose_async()

    def _after_fork_in_child(self) -> None:
        # the worker number belongs to the parent; the child leases its own
        self._new_state()
        self._store.forget_connections()

    def _at_exit(self) -> None:
        if not self._is_closed and self._lease is not None and not self._store.is_async:
            self.close()

    def __repr__(self) -> str:
        return (
            f"<ShardAwareIdGenerator {self.name!r} worker={self.worker} "
            f"shards={self.shard_numbers} on {self._store.where()}>"
        )


def _renew_forever(
    generator_ref: weakref.ref[ShardAwareIdGenerator], stop: threading.Event
) -> None:
    """The renewal thread: renew each lease a third of the way through it."""
    pause = 0.0
    while not stop.wait(pause):
        generator = generator_ref()
        if generator is None or generator._is_closed:
            return
        lease = generator._lease
        now = time.monotonic()
        if lease is None:
            pause = generator.lease_seconds * _RENEW_FRACTION
        elif now < lease.renew_at:
            pause = lease.renew_at - now
        else:
            # on failure the next _issue() sees an expired lease and raises
            with contextlib.suppress(Exception):
                generator._maintain(required=False)
            lease = generator._lease
            pause = max(0.05, lease.renew_at - time.monotonic()) if lease is not None else 0.05
        del generator
