"""Where an ID generator keeps its table, and how its short transactions run, sync or async.

The database work of a generator (lease a block, lease or renew a worker
number) is written once, as a *program*: a Python generator that yields
:class:`Run` (a function of a sync :class:`~sqlalchemy.engine.Connection`, run
in its own transaction) and :class:`Sleep`, and receives the results.
:func:`run_program` drives it with blocking calls; :func:`run_program_async`
drives the same program with ``await`` (``AsyncConnection.run_sync`` for async
drivers, a worker thread for sync ones).  That keeps one core for sync and
async code, as httpx does.

Inside an ``AsyncSession`` flush, SQLAlchemy calls column defaults as plain
functions from its greenlet; the sync driver then works over an async engine
too, because the async dialects' DBAPI adapters await from that greenlet.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from sqlalchemy import create_engine, literal, select
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, MissingGreenlet
from sqlalchemy.pool import SingletonThreadPool, StaticPool
from sqlalchemy.sql.schema import Table

from ..inspection import SHARD_OPTION
from .errors import IdConfigurationError, IdGeneratorError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Run:
    """Run ``fn(connection)`` in a new short transaction on the store; commit if it returns."""

    fn: Callable[[Connection], Any]


@dataclasses.dataclass(frozen=True)
class Sleep:
    """Pause the program (``time.sleep`` or ``asyncio.sleep``)."""

    seconds: float


Program = Generator["Run | Sleep", Any, T]


def first_line(error: BaseException) -> str:
    """``TypeName: first line of the message`` (driver messages run over many lines)."""
    error = getattr(error, "orig", None) or error
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]}"


class Store:
    """The database holding a generator's table: an engine, and the shard it belongs to.

    ``bind`` is an :class:`~sqlalchemy.engine.Engine` or
    :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (a shard map's
    ``bind(shard)`` works, and names the shard in errors), or a URL, for
    which the store makes (and owns) an engine.
    """

    def __init__(self, bind: Any, *, what: str) -> None:
        from sqlalchemy.ext.asyncio import AsyncEngine

        self.owned = False
        if isinstance(bind, AsyncEngine):
            engine = bind.sync_engine
        elif isinstance(bind, Engine):
            engine = bind
        elif isinstance(bind, str | URL):
            url = make_url(bind)
            if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
                raise IdConfigurationError(
                    f"{what}: an in-memory SQLite database cannot hold an ID table (each "
                    f"connection would see its own); use a file, e.g. sqlite:///ids.db"
                )
            if url.get_dialect().is_async:
                from sqlalchemy.ext.asyncio import create_async_engine

                engine = create_async_engine(url).sync_engine
            else:
                engine = create_engine(url)
            self.owned = True
        else:
            raise IdConfigurationError(
                f"{what}: expected an Engine, AsyncEngine or database URL, got {bind!r}"
            )
        if engine.dialect.name == "sqlite" and (
            SHARD_OPTION in engine.get_execution_options()
            or isinstance(engine.pool, SingletonThreadPool | StaticPool)
        ):
            # SQLite lets one connection at a time write a file: a lease in its own
            # transaction would wait on the caller's own writes to the shards' file
            # (and these pools would even hand it the caller's connection, so its
            # commit would commit the caller's open transaction)
            raise IdConfigurationError(
                f"{what}: the SQLite engine {self._render(engine)} is a shard's (or shares "
                f"one connection per thread), and SQLite lets one connection at a time "
                f"write a file, so an ID lease could not run in its own transaction; give "
                f"the ID tables their own SQLite file, e.g. sqlite:///ids.db"
            )
        self.engine = engine
        self.is_async = bool(engine.dialect.is_async)
        self.shard: str | None = engine.get_execution_options().get(SHARD_OPTION)
        self.url_text = self._render(engine)
        self._async_engine: Any = bind if isinstance(bind, AsyncEngine) else None
        self.what = what

    @staticmethod
    def _render(engine: Engine) -> str:
        return engine.url.render_as_string(hide_password=True)

    def where(self) -> str:
        """``shard 'asia' (postgresql://...)`` or ``database sqlite:///ids.db``."""
        if self.shard is not None:
            return f"shard {self.shard!r} ({self.url_text})"
        return f"database {self.url_text}"

    # -- one transaction ------------------------------------------------------
    def run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a new transaction, blocking."""
        try:
            with self.engine.begin() as connection:
                return fn(connection)
        except MissingGreenlet:
            raise IdConfigurationError(
                f"{self.what}: its table on {self.where()} is reached through an async "
                f"driver, which cannot run from plain synchronous code; call "
                f"`await ....next_id_async(...)`, or use the generator as a column default of "
                f"rows written through an AsyncSession / AsyncConnection"
            ) from None

    async def run_async(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a new transaction without blocking the event loop."""
        if not self.is_async:
            return await asyncio.to_thread(self.run, fn)
        if self._async_engine is None:
            from sqlalchemy.ext.asyncio import AsyncEngine

            self._async_engine = AsyncEngine(self.engine)
        async with self._async_engine.begin() as connection:
            result: T = await connection.run_sync(fn)
            return result

    def dispose(self) -> None:
        """Close the pooled connections of an engine this store made itself."""
        if self.owned and not self.is_async:
            self.engine.dispose()

    async def dispose_async(self) -> None:
        """:meth:`dispose`, also for an async engine this store made itself."""
        if not self.owned:
            return
        if self.is_async:
            from sqlalchemy.ext.asyncio import AsyncEngine

            await (self._async_engine or AsyncEngine(self.engine)).dispose()
        else:
            self.engine.dispose()

    def forget_connections(self) -> None:
        """In a forked child: drop (without closing) the parent's pooled connections."""
        if self.owned:
            self.engine.dispose(close=False)


def run_program(store: Store, program: Program[T]) -> T:
    """Drive ``program`` with blocking calls."""
    try:
        step = next(program)
        while True:
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                step = program.send(None)
                continue
            try:
                result = store.run(step.fn)
            except IdConfigurationError:
                program.close()
                raise
            except Exception as error:
                step = program.throw(error)
            else:
                step = program.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def run_program_async(store: Store, program: Program[T]) -> T:
    """Drive ``program`` with ``await``."""
    try:
        step = next(program)
        while True:
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                step = program.send(None)
                continue
            try:
                result = await store.run_async(step.fn)
            except Exception as error:
                step = program.throw(error)
            else:
                step = program.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


# -- errors and retries ------------------------------------------------------------
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available
_TRANSIENT_MYSQL_CODES = {1205, 1213, 2006, 2013}  # lock wait, deadlock, server gone / lost
_TRANSIENT_TEXT = ("database is locked", "database table is locked", "database is busy")

RETRY_SECONDS = 10.0
"""How long a lease keeps retrying lock conflicts and dropped connections before giving up."""


def is_transient(error: BaseException) -> bool:
    """True for errors a retry can cure: lock conflicts, deadlocks, a dropped connection."""
    if not isinstance(error, DBAPIError) or isinstance(error, IntegrityError):
        return False
    if error.connection_invalidated:
        return True
    orig = error.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state in _TRANSIENT_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _TRANSIENT_MYSQL_CODES:
        return True
    text = str(orig).lower()
    return any(fragment in text for fragment in _TRANSIENT_TEXT)


def _probe_database(connection: Connection) -> None:
    connection.execute(select(literal(1)))


def diagnose(table: Table) -> Program[str | None]:
    """Say why ``table`` could not be used: database unreachable, or table missing."""
    try:
        yield Run(_probe_database)
    except Exception as error:
        return f"the database is unreachable ({first_line(error)})"
    first_column = next(iter(table.columns))
    try:
        yield Run(lambda connection: connection.execute(select(first_column).limit(1)))
    except DBAPIError:
        return (
            f"table {table.name!r} does not exist there (or cannot be read); create it with "
            f"shardalchemy.ids.create_id_tables(bind)"
        )
    return None


def transaction(
    fn: Callable[[Connection], T],
    table: Table,
    fail: Callable[[str], IdGeneratorError],
    *,
    passthrough: tuple[type[BaseException], ...] = (),
) -> Program[T]:
    """Run ``fn`` in its own transaction, retrying transient errors for a while.

    Any other database error becomes ``fail(reason)``, the reason saying
    whether the database is unreachable or ``table`` is missing.  Errors of
    the ``passthrough`` types and the generators' own errors propagate as they are.
    """
    deadline = time.monotonic() + RETRY_SECONDS
    pause = 0.005
    while True:
        try:
            result: T = yield Run(fn)
            return result
        except passthrough:
            raise
        except IdGeneratorError:
            raise
        except Exception as error:
            if is_transient(error) and time.monotonic() < deadline:
                yield Sleep(pause)
                pause = min(pause * 2, 0.25)
                continue
            reason = yield from diagnose(table)
            raise fail(reason or first_line(error)) from error


# -- process lifecycle ---------------------------------------------------------------
class _Lifecycle:
    """Objects that must act after ``fork()`` (in the child) and at interpreter exit."""

    def _after_fork_in_child(self) -> None:  # pragma: no cover - overridden
        pass

    def _at_exit(self) -> None:  # pragma: no cover - overridden
        pass


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_live_lock = threading.Lock()


def register(item: Any) -> None:
    """Reset ``item``'s in-memory state in forked children; let it clean up at exit."""
    with _live_lock:
        _live.add(item)


def _after_fork_in_child() -> None:
    global _live_lock
    _live_lock = threading.Lock()
    for item in list(_live):
        item._after_fork_in_child()


def _at_exit() -> None:
    for item in list(_live):
        with contextlib.suppress(Exception):  # best effort: leases expire anyway
            item._at_exit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
