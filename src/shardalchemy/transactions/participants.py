"""A shard's transaction as the coordinator drives it, on the session's own connection.

The statements go straight to the driver's connection (``dbapi_connection``): the
coordinator runs while SQLAlchemy is committing the session's connections, and what it
leaves behind is a connection with no transaction open, so SQLAlchemy's own COMMIT or
ROLLBACK that follows has nothing left to do.  Only shardalchemy's own values (hex ids,
percent-encoded names, integers) are put into the SQL text: no parameters, so every
driver's paramstyle is the same.
"""

from __future__ import annotations

from typing import Any

from .decisions import TABLE

POSTGRESQL = "postgresql"


class Participant:
    """One shard's (or one database's shards') open transaction in a commit."""

    def __init__(self, shard: Any, connection: Any) -> None:
        self.shard = shard
        self.connection = connection  # SQLAlchemy's Connection
        self.engine = connection.engine
        self.backend = connection.dialect.name
        self.wrote = True  # until probe() says otherwise
        self.can_prepare = self.backend == POSTGRESQL
        self.gid: str | None = None

    @property
    def driver(self) -> Any:
        return self.connection.connection.dbapi_connection

    def _execute(self, sql: str) -> Any:
        cursor = self.driver.cursor()
        try:
            cursor.execute(sql)
            return cursor.fetchone() if cursor.description else None
        finally:
            cursor.close()

    def _autocommit(self, sql: str) -> None:
        # COMMIT/ROLLBACK PREPARED cannot run inside a transaction block; the driver
        # would open one, so it runs in autocommit (the connection is idle by now)
        driver = self.driver
        driver.rollback()  # lets the driver know no transaction is open (a no-op on the server)
        driver.autocommit = True
        try:
            self._execute(sql)
        finally:
            driver.autocommit = False

    # -- the protocol's steps ------------------------------------------------
    def probe(self) -> None:
        """Learn whether this transaction wrote, and whether its server can prepare."""
        if self.backend != POSTGRESQL:
            return  # no cheap way to ask: count it as a writer that cannot prepare
        row = self._execute(
            "SELECT pg_current_xact_id_if_assigned() IS NOT NULL,"
            " current_setting('max_prepared_transactions')::int"
        )
        self.wrote = bool(row[0])
        self.prepared_transactions = int(row[1])
        self.can_prepare = self.prepared_transactions > 0

    def lock(self, key: int) -> None:
        """Hold the transaction's lock in this (the decider's) transaction until it ends."""
        self._execute(f"SELECT pg_advisory_xact_lock({key})")

    def prepare(self, gid: str) -> None:
        self._execute(f"PREPARE TRANSACTION '{gid}'")
        self.gid = gid
        self.driver.rollback()  # the server's transaction is prepared: the driver's is over

    def record_decision(self, transaction_id: str, participants: str) -> None:
        self._execute(
            f"INSERT INTO {TABLE} (transaction_id, participants)"
            f" VALUES ('{transaction_id}', '{participants}')"
        )

    def commit(self) -> None:
        self.driver.commit()

    def rollback(self) -> None:
        self.driver.rollback()

    def commit_prepared(self) -> None:
        self._autocommit(f"COMMIT PREPARED '{self.gid}'")

    def rollback_prepared(self) -> None:
        self._autocommit(f"ROLLBACK PREPARED '{self.gid}'")
