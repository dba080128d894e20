"""The executor: runs one statement on several shards at once, sync or async.

The only room besides the session that touches connections.  Shards that
share one database connection (SQLite shards in one file) run one after
another on it; the others run concurrently:

- with a sync ``Session``, each on a thread of a bounded pool (except
  SQLite, whose connections belong to the thread that opened them); the calling
  thread takes every shard's connection first (a ``Session`` is not
  thread-safe) and ORM objects are built on it afterwards, while the merge
  reads the rows;
- inside ``AsyncSession`` (SQLAlchemy's greenlet bridge), each as an asyncio
  task on the event loop.

``shard_timeout`` bounds the whole fan-out: at the deadline the shards still
running are cancelled through their driver (``cancel()`` for psycopg,
``interrupt()`` for SQLite, ``KILL QUERY`` for MariaDB, task cancellation for
asyncio drivers).  When a shard fails, the others' queries are cancelled and
:class:`~shardalchemy.ShardQueryError` names the shard and its cause.  With
``shard_timeout`` or ``allow_partial``, every shard's statement runs inside a
SAVEPOINT, so a failed or cancelled shard is rolled back to before the
statement and the session's transaction stays usable.

Example::

    outcome = fan_out(session, ["asia", "europe"], run_on_shard, timeout=2.0)
    outcome.results["asia"], outcome.failures
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy.util import await_only, greenlet_spawn

from . import _compat
from .errors import ShardQueryError, ShardTimeoutError
from .planner import DatabaseFacts

_pools_lock = threading.Lock()
_pools: weakref.WeakKeyDictionary[Any, concurrent.futures.ThreadPoolExecutor] = (
    weakref.WeakKeyDictionary()
)
# how long cancelled statements get to stop before their asyncio tasks are cancelled
_CANCEL_GRACE_SECONDS = 10.0
_facts: weakref.WeakKeyDictionary[Any, DatabaseFacts] = weakref.WeakKeyDictionary()


def thread_pool(owner: Any, size: int) -> concurrent.futures.ThreadPoolExecutor:
    """The fan-out threads of ``owner`` (a shard map, or a session in drop-in mode)."""
    with _pools_lock:
        pool = _pools.get(owner)
        if pool is None:
            pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=size, thread_name_prefix="shardalchemy-fan-out"
            )
            _pools[owner] = pool
            weakref.finalize(owner, pool.shutdown, wait=False)
        return pool


def dialect_facts(engine: Any) -> DatabaseFacts:
    """What the dialect alone tells, without connecting (what was asked before, if anything).

    The database's collation is unknown without asking it, so text keys are
    refused on PostgreSQL and MariaDB unless their collation is explicit.
    """
    known = _facts.get(engine)
    if known is not None:
        return known
    dialect = engine.dialect.name
    return DatabaseFacts(dialect, nulls_high=dialect not in ("sqlite", "mysql", "mariadb"))


def database_facts(connection: Any) -> DatabaseFacts:
    """What the planner needs to know about a shard's database (asked once per engine)."""
    engine = connection.engine
    facts = _facts.get(engine)
    if facts is not None:
        return facts
    dialect = connection.dialect.name
    if dialect == "postgresql":
        collation = _ask(
            connection, "SELECT datcollate FROM pg_database WHERE datname = current_database()"
        )
        facts = DatabaseFacts(dialect, nulls_high=True, default_collation=str(collation).lower())
    elif dialect in ("mysql", "mariadb"):
        collation = _ask(connection, "SELECT @@collation_database")
        facts = DatabaseFacts(dialect, nulls_high=False, default_collation=str(collation).lower())
    elif dialect == "sqlite":
        facts = DatabaseFacts(dialect, nulls_high=False)
    else:
        # unknown databases: NULL placement and text order unknown, so no
        # text keys, and NULLs as the SQL standard leaves them (high, as
        # Oracle and PostgreSQL do)
        facts = DatabaseFacts(dialect, nulls_high=True, default_collation="unknown")
    _facts[engine] = facts
    return facts


def _ask(connection: Any, sql: str) -> Any:
    """One value, asked on the driver's own cursor: not the user's statement, so no events
    (statement logs and hooks see only what the user's statements send)."""
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return row[0] if row else None


@dataclasses.dataclass
class Outcome:
    """Per-shard results (in the order of the shards asked for) and per-shard failures."""

    results: dict[Any, Any]
    failures: dict[Any, BaseException]


class _Running:
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
                raise _Cancelled()
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
            _cancel_query(connection)


class _Cancelled(Exception):
    """A shard's statement did not start: the fan-out was cancelled first."""


def _cancel_query(connection: Any) -> None:
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
            driver = getattr(driver, "_conn", driver)  # aiosqlite wraps a sqlite3 connection
            driver.interrupt()
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


def fan_out(
    session: Any,
    shards: Sequence[Any],
    run: Callable[[Any], Any],
    *,
    timeout: float | None = None,
    allow_partial: bool = False,
    concurrency: int | None = None,
    pool_owner: Any = None,
) -> Outcome:
    """Run ``run(shard)`` for every shard, concurrently where the shards allow.

    Returns the results by shard; with ``allow_partial`` also the failures
    (else the first failure raises :class:`ShardQueryError`, and a deadline
    missed raises :class:`ShardTimeoutError`).
    """
    connections = {
        shard: session.connection(bind_arguments={"shard_id": shard}) for shard in shards
    }
    savepoints = timeout is not None or allow_partial
    groups = _by_connection(shards, connections)
    if any(_thread_bound(connection) for connection in connections.values()):
        groups = [list(shards)]
    if concurrency is not None and concurrency < len(groups):
        groups = _fold(groups, concurrency)
    running = _Running()
    outcome = Outcome({}, {})

    def run_group(group: list[Any]) -> None:
        for shard in group:
            connection = connections[shard]
            try:
                with running.on(shard, connection), _savepoint(connection, savepoints):
                    outcome.results[shard] = run(shard)
            except BaseException as error:
                outcome.failures[shard] = error
                if not allow_partial:
                    running.cancel()
                if isinstance(error, _Cancelled | Exception):
                    if not allow_partial:
                        return  # the group's other shards are cancelled too
                    continue
                raise

    is_async = any(connection.dialect.is_async for connection in connections.values())
    if is_async and _compat.in_greenlet():
        _run_async(
            groups,
            run_group,
            running,
            timeout,
            lambda: bool(outcome.failures) and not allow_partial,
        )
    elif len(groups) == 1:
        timer = _deadline_timer(running, timeout)
        try:
            run_group(groups[0])
        finally:
            if timer is not None:
                timer.cancel()
    else:
        size = max(len(shards), 1)
        pool = thread_pool(pool_owner if pool_owner is not None else session, min(size, 32))
        futures = [pool.submit(run_group, group) for group in groups]
        # a failing shard cancels the others itself (run_group), so only the
        # deadline is waited for here
        _, pending = concurrent.futures.wait(futures, timeout=timeout)
        if pending:
            running.cancel(timed_out=True)
            concurrent.futures.wait(pending)  # cancelled: no thread keeps a connection
        for future in futures:
            future.result()  # BaseExceptions (KeyboardInterrupt) propagate
    return _conclude(shards, outcome, running, timeout, allow_partial)


def _conclude(
    shards: Sequence[Any],
    outcome: Outcome,
    running: _Running,
    timeout: float | None,
    allow_partial: bool,
) -> Outcome:
    failures: dict[Any, BaseException] = {}
    for shard in shards:
        error = outcome.failures.get(shard)
        if error is None:
            continue
        if running.timed_out and (isinstance(error, _Cancelled) or _compat.is_cancellation(error)):
            error = ShardTimeoutError(
                f"shard {shard!r} did not answer within shard_timeout={timeout}s; its "
                "statement was cancelled",
                shard=shard,
                failures={shard: error},
            )
        failures[shard] = error
    outcome.failures = failures
    if not failures or allow_partial:
        if allow_partial and len(failures) == len(shards):
            raise _failure(shards, failures)
        return outcome
    raise _failure(shards, failures)


def _failure(shards: Sequence[Any], failures: dict[Any, BaseException]) -> ShardQueryError:
    # the first real failure, not a shard cancelled because of it
    def cause_rank(shard: Any) -> int:
        error = failures[shard]
        return 1 if isinstance(error, _Cancelled) or _compat.is_cancellation(error) else 0

    first = min(failures, key=lambda shard: (cause_rank(shard), list(shards).index(shard)))
    cause = failures[first]
    timed_out = [shard for shard in shards if isinstance(failures.get(shard), ShardTimeoutError)]
    if isinstance(cause, ShardTimeoutError):
        error_class: type[ShardQueryError] = ShardTimeoutError
        message = str(cause)
        if len(timed_out) > 1:
            message = (
                f"shards {', '.join(map(repr, timed_out))} did not answer within the "
                "statement's shard_timeout; their statements were cancelled"
            )
            failures_left = {shard: failures[shard] for shard in failures if shard not in timed_out}
            failures = {**{shard: failures[shard] for shard in timed_out}, **failures_left}
    else:
        error_class = ShardQueryError
        message = (
            f"the statement failed on shard {first!r}: {type(cause).__name__}: "
            f"{str(cause).splitlines()[0] if str(cause) else ''}"
        )
    others = [shard for shard in shards if shard != first and shard not in failures]
    also = [shard for shard in shards if shard in failures and shard not in (first, *timed_out)]
    if also:
        message += f"; also failed or cancelled: {', '.join(map(str, also))}"
    if others:
        message += f"; completed: {', '.join(map(str, others))}"
    error = error_class(message, shard=first, failures=failures)
    error.__cause__ = cause
    return error


def _by_connection(shards: Sequence[Any], connections: dict[Any, Any]) -> list[list[Any]]:
    """Shards grouped by the database connection they share (one group per connection)."""
    groups: dict[int, list[Any]] = {}
    for shard in shards:
        groups.setdefault(id(connections[shard].connection.dbapi_connection), []).append(shard)
    return list(groups.values())


def _thread_bound(connection: Any) -> bool:
    """Whether a connection may only be used by the thread that opened it (pysqlite's are)."""
    return connection.dialect.name == "sqlite" and not connection.dialect.is_async


def _fold(groups: list[list[Any]], count: int) -> list[list[Any]]:
    folded: list[list[Any]] = [[] for _ in range(count)]
    for index, group in enumerate(groups):
        folded[index % count].extend(group)
    return folded


@contextlib.contextmanager
def _savepoint(connection: Any, wanted: bool) -> Iterator[None]:
    if not wanted:
        yield
        return
    _compat.ensure_transaction_begun(connection)
    savepoint = connection.begin_nested()
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            savepoint.rollback()
        raise
    savepoint.commit()


def _deadline_timer(running: _Running, timeout: float | None) -> threading.Timer | None:
    if timeout is None:
        return None
    timer = threading.Timer(timeout, running.cancel, kwargs={"timed_out": True})
    timer.daemon = True
    timer.start()
    return timer


def _run_async(
    groups: list[list[Any]],
    run_group: Callable[[list[Any]], None],
    running: _Running,
    timeout: float | None,
    stop_early: Callable[[], bool],
) -> None:
    """Each group as an asyncio task, from inside SQLAlchemy's greenlet bridge."""

    async def gather() -> None:
        tasks = {asyncio.ensure_future(greenlet_spawn(run_group, group)) for group in groups}
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = tasks
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            timed_out = deadline is not None and time.monotonic() >= deadline
            if pending and (timed_out or stop_early()):
                await greenlet_spawn(running.cancel, timed_out=timed_out)
                _, pending = await asyncio.wait(pending, timeout=_CANCEL_GRACE_SECONDS)
                for task in pending:  # the database did not stop it: the last resort
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                break
        for task in tasks:
            if task.cancelled():
                continue
            error = task.exception()
            if error is not None and not isinstance(error, Exception | asyncio.CancelledError):
                raise error

    if len(groups) == 1 and timeout is None:
        run_group(groups[0])
        return
    await_only(gather())
