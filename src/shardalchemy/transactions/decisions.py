"""The decision log: where the outcome of an atomic commit across shards is recorded.

A transaction that wrote to several shards is committed when, and only when, its row in
``shardalchemy_decisions`` on the *decider* (one of its writing shards) is committed.
That row is inserted in the decider's own transaction, so deciding and committing the
decider are one local commit (as Vitess does); the other participants are prepared
before it and committed after it.  Recovery reads the row: there, commit the prepared
participants; absent, roll them back.

The names a prepared transaction carries (its *gid*) say which transaction it belongs to
and where its decision is: ``shardalchemy:<transaction id>:<decider>:<participant>``, the
shard names percent-encoded.  A lock key per transaction (a PostgreSQL advisory lock,
held by the decider's open transaction from before the first PREPARE to its commit)
tells a recoverer whether the coordinator is still at work.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
import weakref
from typing import Any
from urllib.parse import quote, unquote

TABLE = "shardalchemy_decisions"
GID_PREFIX = "shardalchemy:"

CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " transaction_id VARCHAR(32) PRIMARY KEY,"
    " participants TEXT NOT NULL,"
    " decided_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now())"
)


def new_transaction_id() -> str:
    return uuid.uuid4().hex


def lock_key(transaction_id: str) -> int:
    """The advisory lock key of a transaction: a signed 64-bit integer from its id."""
    return int.from_bytes(bytes.fromhex(transaction_id)[:8], "big", signed=True)


def gid(transaction_id: str, decider: Any, participant: Any) -> str:
    return (
        f"{GID_PREFIX}{transaction_id}:{quote(str(decider), safe='')}"
        f":{quote(str(participant), safe='')}"
    )


@dataclasses.dataclass(frozen=True)
class PreparedName:
    """A parsed gid."""

    gid: str
    transaction_id: str
    decider: str
    participant: str


def parse_gid(text: str) -> PreparedName | None:
    """The parts of one of our gids, or ``None`` for anyone else's."""
    if not text.startswith(GID_PREFIX):
        return None
    parts = text[len(GID_PREFIX) :].split(":")
    if len(parts) != 3 or len(parts[0]) != 32:
        return None
    return PreparedName(text, parts[0], unquote(parts[1]), unquote(parts[2]))


_tables_made: weakref.WeakSet[Any] = weakref.WeakSet()  # engines whose decision table exists
_tables_lock = threading.Lock()


def ensure_table(engine: Any) -> None:
    """Create the decision table on ``engine``'s database once per process (own connection).

    Not in the caller's transaction: DDL there would serialise every committer behind the
    catalog lock.  Two processes creating it at once may collide (a unique violation in
    PostgreSQL's catalog): the second one then finds it made.
    """
    if engine in _tables_made:
        return
    with _tables_lock:
        if engine in _tables_made:
            return
        for attempt in range(3):
            try:
                with engine.connect() as connection:
                    connection.exec_driver_sql(CREATE_TABLE)
                    connection.commit()
                break
            except Exception:
                if attempt == 2:
                    raise
        _tables_made.add(engine)


def parse_hex(transaction_id: str) -> str:
    """``transaction_id`` if it is one of ours (32 hex digits), for SQL text; else ValueError."""
    if len(transaction_id) != 32 or any(c not in "0123456789abcdef" for c in transaction_id):
        raise ValueError(f"not a transaction id: {transaction_id!r}")
    return transaction_id
