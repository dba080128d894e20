"""The real collation of every string shard key, checked on each server by ``create_all``.

A string shard key is routed by a canonical form that assumes the column's
collation (:mod:`shardalchemy.sharding.canonical`): the declared one, or for an
undeclared one the database's default, which only the server knows.  After
creating the tables, ``create_all`` reads each string shard key's collation on
each shard and refuses, with :class:`~shardalchemy.ModelConfigurationError`,
one under which the canonical form is not proved: a PostgreSQL non-deterministic
collation, a MariaDB collation without a proved form (``utf8mb4_roman_ci``), or
a collation other than the binary one the model declares.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import ModelConfigurationError
from ..sharding.rules import KeyRule, Rule

_POSTGRESQL = text(
    "SELECT c.collname, c.collisdeterministic FROM pg_attribute a "
    "JOIN pg_collation c ON c.oid = a.attcollation "
    "WHERE a.attrelid = to_regclass(:relation) AND a.attname = :column"
)
_MYSQL = text(
    "SELECT COLLATION_NAME FROM information_schema.COLUMNS "
    "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table "
    "AND COLUMN_NAME = :column"
)


def check_key_collations(
    connection: Connection,
    shard: str,
    rules: Iterable[Rule],
    location: Any,
) -> None:
    """Refuse a string shard key whose collation on ``shard`` its canonical form does not fit.

    ``location(table) -> (schema or None, table name)`` says where ``shard``
    keeps a table.
    """
    dialect = connection.dialect.name
    for rule in rules:
        if not isinstance(rule, KeyRule):
            continue
        check = rule.form.collation_checks.get(dialect)
        if check is None:
            continue
        schema, name = location(rule.table)
        column = str(rule.column.name)
        if dialect == "postgresql":
            quote = connection.dialect.identifier_preparer.quote
            relation = quote(name) if schema is None else f"{quote(schema)}.{quote(name)}"
            row = connection.execute(_POSTGRESQL, {"relation": relation, "column": column}).first()
            collation, deterministic = (row[0], bool(row[1])) if row is not None else (None, None)
        else:
            found = connection.execute(_MYSQL, {"schema": schema, "table": name, "column": column})
            collation, deterministic = found.scalar(), None
        problem = check(collation, deterministic)
        if problem is not None:
            raise ModelConfigurationError(
                f"{rule.name}.{rule.attribute} is a string shard key, and on shard {shard!r} "
                f"{problem}"
            )
