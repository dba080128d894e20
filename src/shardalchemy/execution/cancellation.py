"""Stopping statements that run on shards: cancel through the driver, then abandon.

Stopping a statement is two steps, so that a shard which does not answer never holds its
caller past the deadline:

1. **cancel** (at the deadline, or when another shard of the statement failed): ask the
   database to stop it, through the driver's own means (psycopg's cancel request,
   ``pg_cancel_backend()``, ``KILL QUERY``, SQLite's ``interrupt()``).  The statement fails
   with the database's "cancelled" error and the connection stays usable.  It runs on a
   worker thread with a short timeout: a cancel request to a server that stopped answering
   can itself hang (and psycopg's ``cancel_safe()`` waits 30 s by default).
2. **abandon** (``ABANDON_GRACE_SECONDS`` later, if the statement still runs): shut the
   connection's socket down, so the thread blocked on it returns at once with a "connection
   lost" error; SQLAlchemy then invalidates the connection (and the session's transaction on
   that shard, which must be rolled back).

A statement that a deadline stopped thus returns within ``shard_timeout`` plus the grace,
whatever the server does.  Asyncio drivers are cancelled from the event loop (a cancel
needs a connection of the same driver); abandoning works for them too, and task
cancellation stays the last resort (:mod:`.fan_out`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from .._sqlalchemy import drivers
from .watchdog import WATCHDOG, Alarm
from .workers import WORKERS

ABANDON_GRACE_SECONDS = 1.0
"""How long a cancelled statement gets to stop before its connection is abandoned.

A database that is alive answers a cancel in milliseconds; waiting longer only helps a
server that is overloaded, and every second here is added to the caller's wait."""

CANCEL_TIMEOUT_SECONDS = ABANDON_GRACE_SECONDS
"""How long a cancel request (or the connection it needs) may take before it is given up."""


class _Statement:
    """A statement running on one shard: its connection and what stopping it needs."""

    __slots__ = ("abandoned", "cancel_sent", "connection", "dialect", "driver", "is_async")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.driver = drivers.driver_connection(connection)
        self.dialect = connection.dialect.name
        self.is_async = bool(connection.dialect.is_async)
        self.abandoned = False
        self.cancel_sent: Any = None  # the future of the cancel request sent for it


class Running:
    """The shards whose statement is running now, so they can be cancelled or abandoned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: dict[Any, _Statement] = {}
        self._abandon_alarm: Alarm | None = None
        self.cancelled = False
        self.timed_out = False
        self.abandoned: set[Any] = set()
        """Shards whose connection was abandoned (its statement did not stop when asked)."""

    @contextlib.contextmanager
    def on(self, shard: Any, connection: Any) -> Iterator[None]:
        """Run the block as ``shard``'s statement (raises :class:`Cancelled` if too late)."""
        statement = _Statement(connection)
        with self._lock:
            if self.cancelled:
                raise Cancelled()
            self._now[shard] = statement
        try:
            yield
        finally:
            with self._lock:
                self._now.pop(shard, None)
            if statement.cancel_sent is not None:
                # a cancel that arrives after the statement ended would stop the next one
                # on this connection (its next statement, or another session's after the
                # pool): the connection is given back only once the request is delivered
                with contextlib.suppress(Exception):
                    statement.cancel_sent.result(timeout=CANCEL_TIMEOUT_SECONDS + 1.0)
            if statement.abandoned:
                # its socket is shut: make sure SQLAlchemy throws the connection away, even
                # if the statement happened to finish in time (on the thread that owns it)
                with contextlib.suppress(Exception):
                    connection.invalidate()

    def cancel(self, *, timed_out: bool = False) -> None:
        """Cancel every shard's running statement, in the background, never blocking.

        Statements still running ``ABANDON_GRACE_SECONDS`` later are abandoned.
        Statements of asyncio drivers are left to :meth:`cancel_async` (from the event loop).
        """
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            self.timed_out = timed_out
            running = list(self._now.values())
        for statement in running:
            if not statement.is_async:
                statement.cancel_sent = WORKERS.submit(
                    cancel_query, statement.connection, statement.driver
                )
        self._abandon_alarm = WATCHDOG.arm(ABANDON_GRACE_SECONDS, self.abandon)

    def cancel_async(self) -> None:
        """Cancel the asyncio drivers' running statements (call inside the greenlet bridge)."""
        with self._lock:
            running = [statement for statement in self._now.values() if statement.is_async]
        for statement in running:
            cancel_query(statement.connection, statement.driver)

    def abandon(self) -> None:
        """Shut down the sockets of the statements still running (see the module's doc)."""
        with self._lock:  # held: a statement that ends now must not lose its socket after
            for shard, statement in self._now.items():
                if statement.dialect == "sqlite":
                    # no socket: interrupt() is in-process and cannot hang; ask again
                    with contextlib.suppress(Exception):
                        drivers.sqlite_connection(statement.driver).interrupt()
                    continue
                descriptor = drivers.socket_of(statement.driver)
                if descriptor is not None and drivers.shut_down_socket(descriptor):
                    statement.abandoned = True
                    self.abandoned.add(shard)

    def finish(self) -> None:
        """The statement is over: no abandoning any more."""
        alarm = self._abandon_alarm
        if alarm is not None:
            alarm.disarm()


class Cancelled(Exception):
    """A shard's statement did not start: the fan-out was cancelled first."""


def cancel_query(connection: Any, driver: Any = None) -> None:
    """Ask the database to stop what ``connection`` runs now (best effort, bounded).

    Server-side, so the statement fails with the database's own "cancelled" error and the
    connection stays usable (cancelling an asyncio task instead would make SQLAlchemy
    invalidate the connection).  Callable from any thread for sync drivers (it waits at most
    ``CANCEL_TIMEOUT_SECONDS`` for the database, plus a connect for MariaDB); inside
    AsyncSession, from a greenlet.
    """
    try:
        if driver is None:
            driver = drivers.driver_connection(connection)
        name = connection.dialect.name
        is_async = connection.dialect.is_async
        if name == "sqlite":
            drivers.sqlite_connection(driver).interrupt()
        elif name == "postgresql":
            if hasattr(driver, "cancel_safe") and not is_async:
                # psycopg >= 3.2: the protocol's cancel request, bounded (30 s by default)
                driver.cancel_safe(timeout=CANCEL_TIMEOUT_SECONDS)
            elif hasattr(driver, "cancel") and not is_async:
                driver.cancel()  # psycopg2 (no timeout: abandoning bounds the caller's wait)
            else:
                pid = driver.get_server_pid() if hasattr(driver, "get_server_pid") else None
                pid = pid if pid is not None else driver.info.backend_pid
                _on_other_connection(connection, f"SELECT pg_cancel_backend({int(pid)})")
        elif name in ("mysql", "mariadb"):
            thread_id = driver.thread_id()
            _on_other_connection(connection, f"KILL QUERY {int(thread_id)}")
    except Exception:  # the query may have just finished; nothing to cancel then
        pass


def _on_other_connection(connection: Any, sql: str) -> None:
    """Run ``sql`` on another connection to the same database as ``connection``.

    The real engine's (a session's engine may be a wrapper whose pool holds only the
    session's own connection, the busy one).  Sync drivers: a new connection with short
    timeouts, outside the pool (:func:`drivers.side_connection`); asyncio drivers (inside
    the greenlet bridge): one from the real engine's pool.
    """
    engine = drivers.engine_of(connection.engine)
    if connection.dialect.is_async:
        other = engine.raw_connection()
    else:
        other = drivers.side_connection(engine, CANCEL_TIMEOUT_SECONDS)
    try:
        cursor = other.cursor()
        cursor.execute(sql)
        cursor.close()
    finally:
        other.close()
