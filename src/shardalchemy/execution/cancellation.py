"""Cancelling statements that run on shards, through each driver's own means."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from .._sqlalchemy import drivers


class Running:
    """The shards whose statement is running now, so they can be cancelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: dict[Any, Any] = {}
        self.cancelled = False
        self.timed_out = False

    @contextlib.contextmanager
    def on(self, shard: Any, connection: Any) -> Iterator[None]:
        with self._lock:
            if self.cancelled:
                raise Cancelled()
            self._now[shard] = connection
        try:
            yield
        finally:
            with self._lock:
                self._now.pop(shard, None)

    def cancel(self, *, timed_out: bool = False) -> None:
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            self.timed_out = timed_out
            running = list(self._now.values())
        for connection in running:
            cancel_query(connection)


class Cancelled(Exception):
    """A shard's statement did not start: the fan-out was cancelled first."""


def cancel_query(connection: Any) -> None:
    """Ask the database to stop what ``connection`` runs now (best effort).

    Server-side, so the statement fails with the database's own "cancelled"
    error and the connection stays usable (cancelling an asyncio task instead
    would make SQLAlchemy invalidate the connection).  Callable from any
    thread; inside AsyncSession, from a greenlet.
    """
    try:
        dbapi_connection = connection.connection.dbapi_connection
        driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        name = connection.dialect.name
        if name == "sqlite":
            drivers.sqlite_connection(driver).interrupt()
        elif name == "postgresql":
            if hasattr(driver, "cancel_safe") and not connection.dialect.is_async:
                driver.cancel_safe()  # psycopg >= 3.2: the protocol's cancel request
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
    other = connection.engine.raw_connection()
    try:
        cursor = other.cursor()
        cursor.execute(sql)
        cursor.close()
    finally:
        other.close()
