"""Asking a shard's database what the planner needs to know (once per engine)."""

from __future__ import annotations

import weakref
from typing import Any

from ..planning.facts import DatabaseFacts

_facts: weakref.WeakKeyDictionary[Any, DatabaseFacts] = weakref.WeakKeyDictionary()


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
