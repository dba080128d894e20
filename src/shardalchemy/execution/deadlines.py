"""Deadlines of statements: ``shard_timeout`` for one shard as for several.

A statement with a ``shard_timeout`` (an execution option, or the session's default
``ShardedSession(shard_timeout=...)``) is bounded twice:

- **on the server**, where the database has a statement timeout of its own: PostgreSQL's
  ``statement_timeout`` (transaction-local, set and restored around the statement: one
  round trip each) and MariaDB's ``max_statement_time`` (the session's, set and restored
  likewise).  It stops the statement on a healthy server without a second connection, and
  it keeps working when this process is gone: a statement abandoned by the client does not
  go on holding its locks on the server;
- **by the client**, which is what guarantees the bound: at the deadline the process's
  watchdog (:mod:`.watchdog`) cancels the statement through its driver, and abandons the
  connection if it does not stop within the grace (:mod:`.cancellation`).

So a statement with a deadline returns within ``shard_timeout`` plus
``ABANDON_GRACE_SECONDS`` whatever its server does, raising
:class:`~shardalchemy.ShardTimeoutError` that names the shard.  A statement on one shard is
not run in a savepoint (one database's statement timeout leaves its transaction to roll
back, and so does this); a fan-out is (:mod:`.fan_out`).  The deadline covers the
statement's execution, with the rows a client-side cursor buffers; opening a new connection
is bounded by the engine's own ``connect_timeout``, rows read later from a server-side cursor
(``yield_per``) are not.

With no timeout, nothing here runs: the routing hot path only checks that none is set.

Example:

>>> asia = select(City.name).where(City.continent == "Asia")
>>> session.scalars(asia, execution_options={"shard_timeout": 2.0}).all()
['Tokyo']
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._sqlalchemy import drivers, sessions
from ..errors import ShardTimeoutError
from .cancellation import ABANDON_GRACE_SECONDS, Cancelled, Running
from .watchdog import WATCHDOG

__all__ = [
    "ABANDON_GRACE_SECONDS",
    "run_on_one_shard",
    "server_timeout",
    "timed_out",
    "timeout_error",
]


def run_on_one_shard(session: Any, shard: Any, timeout: float, execute: Callable[[], Any]) -> Any:
    """``execute()``, the statement of ``session`` on ``shard``, within ``timeout`` seconds.

    Raises :class:`~shardalchemy.ShardTimeoutError` (the driver's error as its cause) when
    the deadline stopped it; any other error as it is.
    """
    started = time.monotonic()
    connection = session.connection(bind_arguments={"shard_id": shard})
    running = Running()
    remaining = max(0.0, timeout - (time.monotonic() - started))
    alarm = WATCHDOG.arm(remaining, lambda: running.cancel(timed_out=True))
    try:
        with running.on(shard, connection), server_timeout(connection, remaining):
            return execute()
    except Exception as error:
        if timed_out(running, shard, error):
            raise timeout_error(shard, timeout, error, shard in running.abandoned) from error
        raise
    finally:
        alarm.disarm()
        running.finish()


def timed_out(running: Running, shard: Any, error: BaseException) -> bool:
    """Whether ``shard`` failed because its deadline passed (not because of its own error)."""
    if drivers.is_statement_timeout(error):
        return True  # the server's own timeout, which the deadline set
    if not running.timed_out:
        return False
    return (
        isinstance(error, Cancelled) or shard in running.abandoned or drivers.is_cancellation(error)
    )


def timeout_error(
    shard: Any, timeout: float | None, cause: BaseException, abandoned: bool
) -> ShardTimeoutError:
    """The error of a shard that missed its deadline."""
    if abandoned:
        how = (
            "it did not answer the cancel either, so its connection was abandoned "
            "(roll the session back before using that shard again)"
        )
    else:
        how = "its statement was cancelled"
    error = ShardTimeoutError(
        f"shard {shard!r} did not answer within shard_timeout={timeout}s; {how}",
        shard=shard,
        failures={shard: cause},
    )
    error.__cause__ = cause
    return error


@contextlib.contextmanager
def server_timeout(connection: Any, seconds: float) -> Iterator[None]:
    """The database's own statement timeout, ``seconds``, for the statements in the block.

    PostgreSQL: ``set_config('statement_timeout', ..., true)`` (local to the transaction;
    the previous value read in the same round trip and restored after a success; after a
    failure the transaction or savepoint is rolled back, which restores it).  MariaDB:
    ``max_statement_time`` of the session, restored in any case.  Other databases: nothing
    (SQLite's ``interrupt()`` is in-process and always answers).  Sent on the driver's own
    cursor: these are not the user's statements, so no events see them.
    """
    dialect = connection.dialect
    if dialect.name == "postgresql":
        milliseconds = max(1, int(seconds * 1000))
        previous = _ask(
            connection,
            "SELECT current_setting('statement_timeout'), "
            f"set_config('statement_timeout', '{milliseconds}', true)",
        )
        yield
        _ask(connection, f"SELECT set_config('statement_timeout', {_literal(previous)}, true)")
    elif dialect.name in ("mysql", "mariadb") and getattr(dialect, "is_mariadb", False):
        _ask(
            connection,
            "SET @shardalchemy_max_statement_time = @@max_statement_time, "
            f"max_statement_time = {max(0.001, round(seconds, 3))}",
        )
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a lost connection is thrown away anyway
                _ask(connection, "SET max_statement_time = @shardalchemy_max_statement_time")
    else:
        yield


def _ask(connection: Any, sql: str) -> Any:
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone() if cursor.description else None
    finally:
        cursor.close()
    return row[0] if row else None


def _literal(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


# the single-shard fast path (shardalchemy._sqlalchemy.sessions) runs its statements with a
# deadline through this; set here because _sqlalchemy imports nothing of ours
sessions.run_with_deadline = run_on_one_shard
