"""The executor: runs one statement on several shards at once, sync or async.

The only room besides the session that touches connections.  Shards that
share one database connection (SQLite shards in one file) run one after
another on it; the others run concurrently:

- with a sync ``Session``, each on a thread of the process's worker pool
  (:mod:`.workers`: a new thread whenever none is idle, so a shard's statement
  never waits behind another statement's), except SQLite, whose connections
  belong to the thread that opened them; the calling thread takes every shard's
  connection first (a ``Session`` is not thread-safe) and ORM objects are built
  on it afterwards, while the merge reads the rows;
- inside ``AsyncSession`` (SQLAlchemy's greenlet bridge), each as an asyncio
  task on the event loop.

``shard_timeout`` bounds the whole fan-out (:mod:`.deadlines`): each shard's
statement also gets the database's own statement timeout where it has one, and
at the deadline the watchdog cancels the shards still running through their
driver (psycopg's cancel request, ``interrupt()`` for SQLite, ``KILL QUERY``
for MariaDB, ``pg_cancel_backend()`` for asyncio drivers), then abandons the
connections of those that do not stop within the grace (:mod:`.cancellation`).
When a shard fails, the others' queries are cancelled (and abandoned likewise)
and :class:`~shardalchemy.ShardQueryError` names the shard and its cause.
With ``shard_timeout`` or ``allow_partial``, every shard's statement runs
inside a SAVEPOINT, so a failed or cancelled shard is rolled back to before the
statement and the session's transaction stays usable (an abandoned shard's
connection is gone: the session must be rolled back).

Example:

>>> def count_cities(shard):
...     statement = select(func.count()).select_from(City)
...     return session.execute(statement, bind_arguments={"shard_id": shard}).scalar()
>>> outcome = fan_out(session, ["asia", "europe"], count_cities, timeout=2.0)
>>> outcome.results, outcome.failures
({'asia': 1, 'europe': 2}, {})
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy.util import await_only, greenlet_spawn

from .._sqlalchemy import drivers, sessions
from .._sqlalchemy.savepoints import StatementSavepoints
from ..errors import ShardQueryError, ShardTimeoutError
from .cancellation import ABANDON_GRACE_SECONDS, CANCEL_TIMEOUT_SECONDS, Cancelled, Running
from .deadlines import server_timeout, timed_out, timeout_error
from .watchdog import WATCHDOG
from .workers import WORKERS

# asyncio: how long cancelled statements get to stop before their tasks are cancelled (the
# abandoned ones stop at the end of the grace; this is for drivers with no socket to shut)
_CANCEL_GRACE_SECONDS = ABANDON_GRACE_SECONDS + 1.0


@dataclasses.dataclass
class Outcome:
    """Per-shard results (in the order of the shards asked for) and per-shard failures."""

    results: dict[Any, Any]
    failures: dict[Any, BaseException]


def fan_out(
    session: Any,
    shards: Sequence[Any],
    run: Callable[[Any], Any],
    *,
    timeout: float | None = None,
    allow_partial: bool = False,
    concurrency: int | None = None,
    all_or_nothing: bool = False,
) -> Outcome:
    """Run ``run(shard)`` for every shard, concurrently where the shards allow.

    Returns the results by shard; with ``allow_partial`` also the failures
    (else the first failure raises :class:`ShardQueryError`, and a deadline
    missed raises :class:`ShardTimeoutError`).

    With ``all_or_nothing`` (a statement that writes: UPDATE, DELETE), the
    statement holds one SAVEPOINT per database connection, opened as each
    shard starts and released together when every shard succeeded; when one
    fails (or misses the deadline), every shard is rolled back to before the
    statement and the error says so.  ``allow_partial`` cannot go with it.
    """
    if all_or_nothing and allow_partial:
        raise ValueError("a statement that writes is all or nothing: no allow_partial")
    started = time.monotonic()
    connections = {
        shard: session.connection(bind_arguments={"shard_id": shard}) for shard in shards
    }
    statement_savepoints = StatementSavepoints(session) if all_or_nothing else None
    savepoints = (timeout is not None or allow_partial) and not all_or_nothing
    groups = _by_connection(shards, connections)
    if any(_thread_bound(connection) for connection in connections.values()):
        groups = [list(shards)]
    if concurrency is not None and concurrency < len(groups):
        groups = _fold(groups, concurrency)
    running = Running()
    outcome = Outcome({}, {})
    # the deadline counts from the start: taking the connections is part of the statement
    deadline = None if timeout is None else started + timeout

    def run_group(group: list[Any]) -> None:
        for shard in group:
            connection = connections[shard]
            try:
                if statement_savepoints is not None:
                    statement_savepoints.open(shard, connection)
                with running.on(shard, connection), _savepoint(session, connection, savepoints):
                    if deadline is None:
                        outcome.results[shard] = run(shard)
                    else:
                        with server_timeout(connection, max(0.0, deadline - time.monotonic())):
                            outcome.results[shard] = run(shard)
            except BaseException as error:
                outcome.failures[shard] = error
                if not allow_partial:
                    # the server's own timeout is the deadline's too: the others are late
                    running.cancel(timed_out=drivers.is_statement_timeout(error))
                if isinstance(error, Cancelled | Exception):
                    if not allow_partial:
                        return  # the group's other shards are cancelled too
                    continue
                raise

    alarm = None
    if deadline is not None:
        alarm = WATCHDOG.arm(
            max(0.0, deadline - time.monotonic()), lambda: running.cancel(timed_out=True)
        )
    try:
        is_async = any(connection.dialect.is_async for connection in connections.values())
        if is_async and drivers.in_greenlet():
            _run_async(
                groups,
                run_group,
                running,
                deadline,
                lambda: bool(outcome.failures) and not allow_partial,
            )
        elif len(groups) == 1:
            run_group(groups[0])
        else:
            futures = [WORKERS.submit(run_group, group) for group in groups]
            # no timeout here: the watchdog cancels at the deadline, abandons what does
            # not stop, and a failing shard cancels the others itself (run_group); so
            # every future ends, and then no thread holds a connection of the session
            concurrent.futures.wait(futures)
            for future in futures:
                future.result()  # BaseExceptions (KeyboardInterrupt) propagate
    except BaseException:
        if statement_savepoints is not None:
            statement_savepoints.undo()
        raise
    finally:
        if alarm is not None:
            alarm.disarm()
        running.finish()
    if statement_savepoints is not None:
        if outcome.failures:
            statement_savepoints.undo()
        else:
            releasing: list[Any] = []
            try:
                statement_savepoints.release(lambda shard: _naming(shard, releasing))
            except Exception as error:  # a connection lost after its statement ran
                outcome.failures[releasing[-1] if releasing else shards[0]] = error
                statement_savepoints.undo()
    return _conclude(shards, outcome, running, timeout, allow_partial, all_or_nothing)


def _conclude(
    shards: Sequence[Any],
    outcome: Outcome,
    running: Running,
    timeout: float | None,
    allow_partial: bool,
    undone: bool = False,
) -> Outcome:
    failures: dict[Any, BaseException] = {}
    for shard in shards:
        error = outcome.failures.get(shard)
        if error is None:
            continue
        if not isinstance(error, ShardTimeoutError) and timed_out(running, shard, error):
            error = timeout_error(shard, timeout, error, shard in running.abandoned)
        failures[shard] = error
    outcome.failures = failures
    if not failures or allow_partial:
        if allow_partial and len(failures) == len(shards):
            raise _failure(shards, failures, running.abandoned)
        return outcome
    raise _failure(shards, failures, running.abandoned, undone)


def _failure(
    shards: Sequence[Any],
    failures: dict[Any, BaseException],
    stopped: set[Any],
    undone: bool = False,
) -> ShardQueryError:
    # the first real failure, not a shard cancelled (or abandoned: ``stopped``) because of it
    def cause_rank(shard: Any) -> int:
        error = failures[shard]
        cancelled = isinstance(error, Cancelled) or drivers.is_cancellation(error)
        return 1 if cancelled or shard in stopped else 0

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
    if undone:
        message += "; the statement was rolled back on every shard: no shard was changed"
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
def _naming(shard: Any, failed: list[Any]) -> Iterator[None]:
    try:
        yield
    except BaseException:
        failed.append(shard)
        raise


@contextlib.contextmanager
def _savepoint(session: Any, connection: Any, wanted: bool) -> Iterator[None]:
    if not wanted:
        yield
        return
    # through the connection that opens every SAVEPOINT on this database connection: a
    # shard's own would reuse the name of the session's nested transaction's savepoint
    opener = sessions.savepoint_opener(session, connection)
    drivers.ensure_transaction_begun(opener)
    savepoint = opener.begin_nested()
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            savepoint.rollback()
        raise
    savepoint.commit()


def _run_async(
    groups: list[list[Any]],
    run_group: Callable[[list[Any]], None],
    running: Running,
    deadline: float | None,
    stop_early: Callable[[], bool],
) -> None:
    """Each group as an asyncio task, from inside SQLAlchemy's greenlet bridge."""

    async def gather() -> None:
        tasks = {asyncio.ensure_future(greenlet_spawn(run_group, group)) for group in groups}
        pending = tasks
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            timed_out = deadline is not None and time.monotonic() >= deadline
            if pending and (timed_out or stop_early()):
                running.cancel(timed_out=timed_out)  # the watchdog may have done it already
                # a cancel of an asyncio driver needs a connection of its own, from the
                # loop; one to a server that stopped answering may hang: bounded
                with contextlib.suppress(Exception, asyncio.TimeoutError):
                    await asyncio.wait_for(
                        greenlet_spawn(running.cancel_async), CANCEL_TIMEOUT_SECONDS
                    )
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

    if len(groups) == 1 and deadline is None:
        run_group(groups[0])
        return
    await_only(gather())
