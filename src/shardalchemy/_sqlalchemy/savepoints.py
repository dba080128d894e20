"""One statement's savepoints over several shards: all or nothing, one per database connection.

A statement that writes to several shards (a bulk write, a multi-shard
UPDATE or DELETE) opens one SAVEPOINT on each database connection it
reaches, releases them together when every shard succeeded and rolls them
back together when one failed: no shard keeps a row of a failed statement.

Shards that live in one database share the session's one database
connection (:mod:`.engines`), each through a SQLAlchemy connection of its
own.  They share one statement savepoint, opened through the connection the
session's nested transactions use for that database connection
(:func:`.sessions.savepoint_opener`): SQLAlchemy numbers savepoints per
SQLAlchemy connection, and two ``sa_savepoint_1`` on one database connection
would make ``ROLLBACK TO`` reach the wrong one (MariaDB even drops the older
savepoint of the same name).

This lives with the private details because the sharing is one: SQLAlchemy
has no notion of two connections over one database connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc

from . import drivers
from .sessions import savepoint_opener


class StatementSavepoints:
    """The savepoints of one statement on the shards of a session, all or nothing.

    :meth:`open` a shard before running the statement there (on the calling
    thread), then :meth:`release` (success) or :meth:`undo` (failure).
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.savepoints: dict[Any, Any] = {}  # database connection -> statement savepoint
        self.shards_on: dict[Any, list[Any]] = {}  # database connection -> its shards
        self.connections: dict[Any, Any] = {}  # shard -> the connection of its savepoint

    def open(self, shard: Any, connection: Any = None) -> Any:
        """The connection holding the statement's savepoint for ``shard`` (opened once)."""
        if connection is None:
            connection = self.session.connection(bind_arguments={"shard_id": shard})
        database_connection = connection.connection.dbapi_connection
        savepoint = self.savepoints.get(database_connection)
        if savepoint is None:
            opener = savepoint_opener(self.session, connection)
            drivers.ensure_transaction_begun(opener)
            savepoint = opener.begin_nested()
            self.savepoints[database_connection] = savepoint
        self.connections[shard] = savepoint.connection
        shards = self.shards_on.setdefault(database_connection, [])
        if shard not in shards:
            shards.append(shard)
        return savepoint.connection

    def release(
        self, failing_on: Callable[[Any], contextlib.AbstractContextManager[Any]] | None = None
    ) -> None:
        """Keep the statement's changes (in the session's transaction): RELEASE them all.

        ``failing_on(shard)`` wraps each release, naming the database
        connection's first shard (a connection killed after its statement ran
        fails here).
        """
        # innermost first; one that fails stays, with those not released yet, for undo()
        for database_connection, savepoint in reversed(list(self.savepoints.items())):
            guard = (
                failing_on(self.shards_on[database_connection][0])
                if failing_on is not None
                else contextlib.nullcontext()
            )
            with guard:
                savepoint.commit()
            del self.savepoints[database_connection]

    def undo(self) -> None:
        """Roll every shard back to before the statement (innermost first).

        A savepoint whose connection is gone is left alone: the server undid
        it with the connection.  One whose rollback fails (the server rolled
        the whole transaction back: an InnoDB deadlock victim, or
        ``innodb_rollback_on_timeout``) has its connection invalidated
        instead of raising over the error that made the statement fail: the
        session then refuses to go on until it is rolled back, as SQLAlchemy
        does for one database.
        """
        savepoints = list(self.savepoints.values())
        self.savepoints.clear()
        for savepoint in reversed(savepoints):
            if not savepoint.is_active or savepoint.connection.invalidated:
                continue
            try:
                savepoint.rollback()
            except exc.SQLAlchemyError:
                if not savepoint.connection.invalidated:
                    with contextlib.suppress(Exception):
                        savepoint.connection.invalidate()


# the message a PostgreSQL transaction is aborted with after a failed multi-shard statement
_ABORT = (
    "DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '25P02', MESSAGE = "
    "'shardalchemy: a statement of this transaction failed on another shard; "
    "the transaction is aborted until rollback, as one PostgreSQL database''s would be'; END$$"
)


def abort_transaction(connection: Any) -> bool:
    """Leave ``connection``'s PostgreSQL transaction aborted, as a failed statement leaves it.

    After a failed statement one PostgreSQL database refuses every further
    statement of the transaction until it is rolled back, and a COMMIT then
    rolls back.  A multi-shard statement that failed on one shard leaves
    every other shard's transaction so too: a statement raising in the
    server is the one way to put a PostgreSQL transaction in that state.
    Sent on the driver's own cursor (no SQLAlchemy events: it is not the
    user's statement).  Returns whether it did (``False``: not PostgreSQL,
    or no usable connection).
    """
    if connection.dialect.name != "postgresql" or connection.invalidated:
        return False
    if connection.dialect.is_async and not drivers.in_greenlet():
        return False  # an asyncio driver's cursor needs SQLAlchemy's greenlet bridge
    try:
        cursor = connection.connection.dbapi_connection.cursor()
    except Exception:
        return False
    try:
        cursor.execute(_ABORT)
    except Exception as error:
        return "25P02" in str(getattr(error, "sqlstate", "")) or "aborted" in str(error)
    finally:
        with contextlib.suppress(Exception):
            cursor.close()
    return False
