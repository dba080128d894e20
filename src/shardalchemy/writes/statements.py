"""Bulk writes routed row by row: INSERT and UPDATE by primary key, at bulk speed.

SQLAlchemy's sharding extension refuses every bulk path; here each row goes to
the shard its shard key (its parent's, for a follower, or its shard-carrying
ID) selects, rows are grouped per shard, and each shard gets one executemany
of its rows (the driver's batch path: psycopg's pipeline, ``insertmanyvalues``
for RETURNING).  It covers ``session.execute(insert(Model), rows)`` (with and
without RETURNING), ``session.execute(update(Model), rows)`` by primary key,
single- and multi-row ``insert(Model).values(...)``, Core ``insert(table)``
executemany, and the legacy ``bulk_save_objects`` / ``bulk_insert_mappings`` /
``bulk_update_mappings``.

A statement is all or nothing: the rows of a batch (a list is one batch; an
iterator is read ``bulk_batch_size`` rows at a time) are all routed before any
is sent, and each shard's rows run inside a SAVEPOINT kept until the whole
statement is done, so a row without a shard, or one the database refuses,
undoes the statement on every shard and the session stays usable.  The error
names the caller's index of the row (for a refused row found by bisecting that
shard's batch), the shard and the reason.  Shards are written one after another
unless the execution option ``bulk_concurrency`` allows several at once.

Example:

>>> with session.recording_routes() as routes:
...     _ = session.execute(insert(City), [
...         {"id": 60, "continent": "Asia", "name": "Kyoto"},      # -> shard asia
...         {"id": 61, "continent": "Europe", "name": "Lyon"},     # -> shard europe
...     ])
>>> routes[0].reason
'rows routed one by one (asia 1, europe 1)'
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.orm import ORMExecuteState

from .._sqlalchemy import dml, orm_execute, sessions
from ..errors import ConfigurationError, RoutingError
from ..routing.tables import statement_label
from .batch import DEFAULT_BATCH_SIZE, DEFAULT_CONCURRENCY, ShardWrites, batches, group, writing_to
from .protocol import WritingSession
from .routing import RowRouter, UpdateRouter

NOT_HANDLED = object()
"""What :func:`execute_write` returns for a statement that is not a routed write."""


def execute_write(
    session: WritingSession, orm_context: ORMExecuteState, explicit: tuple[Any, str] | None
) -> Any:
    """Route and run an INSERT, or an ORM UPDATE by primary key, row by row.

    Returns the result, ``None`` when the statement was pinned to one shard
    and SQLAlchemy should simply go on, or :data:`NOT_HANDLED` for statements
    routed as a whole (INSERT ... SELECT, UPDATE ... WHERE).
    """
    statement = orm_context.statement
    parameters = orm_context.parameters
    many = parameters is not None and not isinstance(parameters, Mapping)
    if orm_context.is_insert:
        if getattr(statement, "select", None) is not None:
            return NOT_HANDLED
    elif not (
        orm_context.is_update
        and orm_context.is_orm_statement
        and many
        and not dml.has_where(statement)
    ):
        return NOT_HANDLED
    label = statement_label(statement)
    if session.rules is None:
        return _pinned_drop_in(session, orm_context, explicit, label)
    target: Any = orm_context.bind_mapper if orm_context.is_orm_statement else statement.table
    if orm_context.is_update:
        return _run_batches(
            session, orm_context, label, UpdateRouter(session, target, label, explicit)
        )
    router = RowRouter(session, target, label, explicit)
    values, multi = dml.insert_values(statement)
    if multi is not None:
        return _run_multi_values(session, orm_context, label, router, multi)
    if many:
        return _run_batches(session, orm_context, label, router, values)
    row = {**(values or {}), **(parameters or {})}
    return _write_one_row(session, orm_context, router.shard_of(0, row))


def _write_one_row(session: WritingSession, orm_context: ORMExecuteState, shard: Any) -> Any:
    """Write a one-row statement on ``shard``: the result, or ``None`` to let SQLAlchemy go on."""
    parameters = orm_context.parameters
    if parameters and orm_context.is_orm_statement:
        # an ORM INSERT given one dict takes SQLAlchemy's bulk code path
        return _runner(session, orm_context)(shard, [parameters])
    # the row is in the statement itself: pin it to its shard and let SQLAlchemy go on
    orm_context.bind_arguments["shard_id"] = shard
    orm_context.update_execution_options(
        identity_token=shard, **orm_execute.returning_load_options(orm_context, shard)
    )
    return None


def _pinned_drop_in(
    session: WritingSession, orm_context: ORMExecuteState, explicit: Any, label: str
) -> Any:
    """Drop-in mode (no shard map): a bulk write runs on the one shard it is pinned to."""
    if explicit is not None:
        shards: tuple[Any, ...] = (explicit[0],)
    else:
        shards = tuple(session.execute_chooser(orm_context))
    if not shards:
        raise RoutingError(
            f"the execute chooser chose no shard for {label}; it must return at least one "
            "shard name"
        )
    if len(set(shards)) != 1:
        raise RoutingError(
            f"{label} reaches shards {shards!r}; without a shard map, bulk writes are not "
            "routed row by row: pin the statement with set_shard_id(...) or build the session "
            "with shard_map=... (row-by-row routing)"
        )
    shard = session.check_shard(shards[0], "the execute chooser's result")
    parameters = orm_context.parameters
    if parameters is None or isinstance(parameters, Mapping):
        return _write_one_row(session, orm_context, shard)
    rows = list(parameters)
    with ShardWrites(
        session,
        label,
        _runner(session, orm_context),
        returning=dml.has_returning(orm_context.statement),
    ) as writes:
        writes.write(shard, list(range(len(rows))), rows)
    return writes.result()


def _runner(
    session: WritingSession, orm_context: ORMExecuteState, statement: Any = None
) -> Callable[[Any, list[Any]], Any]:
    """Runs the statement with some rows on one shard, through SQLAlchemy's own bulk code."""
    multi_row = statement is not None  # one INSERT ... VALUES (...), (...) per shard
    statement = statement if statement is not None else orm_context.statement
    returning = dml.has_returning(statement)
    if returning and not multi_row:
        # executemany: SQLAlchemy sorts RETURNING rows by parameter set when
        # asked; a multi-row VALUES returns its rows in VALUES order
        statement = dml.in_parameter_order(statement)
    by_primary_key = orm_context.is_update and orm_context.is_orm_statement

    def run(shard: Any, rows: list[Any]) -> Any:
        options: dict[str, Any] = {"identity_token": shard, "autoflush": False}
        if by_primary_key:
            # decided again for these rows: given as an iterator, the statement
            # looked like an UPDATE of every row to SQLAlchemy at first
            options["dml_strategy"] = "bulk"
        if returning and orm_context.is_orm_statement:
            options.update(orm_execute.returning_load_options(orm_context, shard))
        # a copy per call: batches of several shards may run at once, each
        # with its own rows (invoke_statement reads them from the state)
        state = copy.copy(orm_context)
        state.parameters = rows
        with writing_to(session, shard):
            result = state.invoke_statement(
                statement=statement,
                bind_arguments={"shard_id": shard},
                execution_options=options,
            )
        if returning and session.get_bind(shard_id=shard).dialect.name == "sqlite":
            # a single INSERT ... RETURNING leaves SQLite's statement open, and
            # SQLite refuses to release the batch's savepoint under it: read
            # the rows now (other drivers hand them over buffered)
            result = result.freeze()()
        return result

    return run


def _run_batches(
    session: WritingSession,
    orm_context: ORMExecuteState,
    label: str,
    router: RowRouter | UpdateRouter,
    values: Mapping[str, Any] | None = None,
) -> Any:
    """Executemany: route each batch of rows, one executemany per shard and batch."""
    parameters = orm_context.parameters
    options = orm_context.execution_options
    if "bulk_batch_size" in options:
        size = options["bulk_batch_size"]
    elif isinstance(parameters, list | tuple):
        # rows already in memory: one executemany per shard, as the caller sent one
        size = max(len(parameters), 1)
    else:
        size = DEFAULT_BATCH_SIZE  # an iterator: read a batch at a time
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigurationError(f"bulk_batch_size must be a positive number of rows, not {size!r}")
    if orm_context.is_orm_statement:
        sessions.autoflush(session)
    offset = 0
    with ShardWrites(
        session,
        label,
        _runner(session, orm_context),
        concurrency=concurrency(orm_context),
        returning=dml.has_returning(orm_context.statement),
    ) as writes:
        for batch in batches(parameters, size):
            indices = range(offset, offset + len(batch))
            if isinstance(router, UpdateRouter):
                shards = router.shards_of(list(zip(indices, batch, strict=True)))
            else:
                routed = [{**values, **row} for row in batch] if values else batch
                shards = router.shards_of(offset, routed)
            writes.write_many(group(indices, batch, shards))
            offset += len(batch)
    return writes.result()


def _run_multi_values(
    session: WritingSession,
    orm_context: ORMExecuteState,
    label: str,
    router: RowRouter,
    multi: list[tuple[dict[str, Any], dict[Any, Any]]],
) -> Any:
    """``insert().values([...])``: one multi-row INSERT per shard, with that shard's rows."""
    statement = orm_context.statement
    bare = dml.without_values(statement)
    shards = [router.shard_of(index, routed) for index, (routed, _) in enumerate(multi)]
    grouped = group(range(len(multi)), [raw for _, raw in multi], shards)

    def run(shard: Any, rows: list[Any]) -> Any:
        return _runner(session, orm_context, bare.values(rows))(shard, None)  # type: ignore[arg-type]

    with ShardWrites(session, label, run, returning=dml.has_returning(statement)) as writes:
        for shard, (indices, rows) in grouped.items():
            writes.write(shard, indices, rows)
    return writes.result()


def concurrency(orm_context: ORMExecuteState) -> int:
    """How many shards a bulk statement may write at once (option ``bulk_concurrency``)."""
    value = orm_context.execution_options.get("bulk_concurrency", DEFAULT_CONCURRENCY)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(
            f"bulk_concurrency must be a positive number of shards, not {value!r}"
        )
    return value
