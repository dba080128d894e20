"""The few semi-private SQLAlchemy details shardalchemy relies on, in one place.

SQLAlchemy has no public accessor for these; keeping them here means an
upgrade that changes them touches this file only.  (Table-name rendering for
the ``tables`` placement has its own module, :mod:`shardalchemy._naming`.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy.orm import ORMExecuteState


def plain(element: Any) -> Any:
    """``element`` without ORM annotations (annotated copies hash and compare differently)."""
    deannotate = getattr(element, "_deannotate", None)
    return (
        deannotate()
        if deannotate is not None and getattr(element, "_annotations", None)
        else element
    )


def orm_options(orm_context: ORMExecuteState) -> Iterable[Any]:
    """The execution-time ORM options of a statement (where ``set_shard_id`` lives)."""
    if not orm_context.statement._with_options:  # the common case, without building a list
        return ()
    return orm_context._non_compile_orm_options


def explicit_identity_token(orm_context: ORMExecuteState) -> Any:
    """The identity token the ORM pinned a load or bulk UPDATE/DELETE to, if any.

    Set by ``session.get()`` once the identity chooser picked a shard, by
    refreshes of an object already loaded from a shard, and by loaders that
    inherit their parent's shard.
    """
    if orm_context.statement.is_select:  # what .is_select reads, without a property call
        return orm_context.load_options._identity_token
    if orm_context.is_update or orm_context.is_delete:
        return orm_context.update_delete_options._identity_token
    return None


def lazy_loaded_from(orm_context: ORMExecuteState) -> Any:
    """The ``InstanceState`` whose lazy load this statement is, or ``None``.

    ``ORMExecuteState.lazy_loaded_from`` is public but raises for statements
    other than SELECT.
    """
    if orm_context.is_select:
        return orm_context.load_options._lazy_loaded_from
    return None


def on_loader_path(statement: Any) -> bool:
    """Whether a statement is a relationship loader's (it has a non-root loader path).

    A cheap first check: ``ORMExecuteState.is_relationship_load`` builds the
    loader path twice, and almost every statement is at the root path (an
    empty ``_current_path`` in its ORM compile options).
    """
    compile_options = getattr(statement, "_compile_options", None)
    return bool(getattr(compile_options, "_current_path", None))


class _NoMoreEvents:
    """Stands in for the ``ORMExecuteState`` SQLAlchemy resumes a statement from.

    ``Session._execute_internal(..., _parent_execute_state=state)`` runs only
    the ``do_orm_execute`` hooks after the one ``state`` is at; this one has
    none left.  The session passes it for a statement it has already routed,
    when its own hook is the only one, so SQLAlchemy skips building an
    ``ORMExecuteState`` and a second pre-execution pass (about 9 µs a query).
    """

    @staticmethod
    def _remaining_events() -> tuple[()]:
        return ()


NO_MORE_EVENTS = _NoMoreEvents()


def dml_assignments(statement: Any) -> list[tuple[Any, Any]]:
    """(column or key, value) pairs an UPDATE statement's ``.values()`` assigns."""
    values = getattr(statement, "_values", None) or {}
    ordered = getattr(statement, "_ordered_values", None) or ()
    return [*values.items(), *ordered]


def statement_options(statement: Any) -> tuple[Any, ...]:
    """The options attached to a statement with ``.options()``."""
    return tuple(getattr(statement, "_with_options", ()))


def is_anonymous_key(key: Any) -> bool:
    """Whether a bind parameter's key is anonymous (SQLAlchemy names it at compile time)."""
    from sqlalchemy.sql.elements import _anonymous_label

    return isinstance(key, _anonymous_label)


# -- bulk writes (shardalchemy.bulk) -------------------------------------------


def _unwrap(value: Any) -> Any:
    """A literal bound into a statement's VALUES, or the expression itself."""
    from sqlalchemy.sql.elements import BindParameter

    if isinstance(value, BindParameter) and value.callable is None:
        return value.value
    return value


def _key_of(column: Any) -> Any:
    return column if isinstance(column, str) else getattr(column, "key", column)


def insert_values(
    statement: Any,
) -> tuple[dict[str, Any] | None, list[tuple[dict[str, Any], dict[Any, Any]]] | None]:
    """An INSERT's ``.values()``: its single row, and its rows given as a list.

    The single row is keyed by column key with literal values unwrapped from
    their bound parameters (SQL expressions are left as they are: they cannot
    be routed).  Each row of the list comes as that routing form plus the row
    as the statement holds it (to build one statement per shard from).
    """
    single = getattr(statement, "_values", None)
    multi = getattr(statement, "_multi_values", None) or ()
    columns = list(statement.table.c) if multi else []
    rows: list[tuple[dict[str, Any], dict[Any, Any]]] = []
    for parameter_sets in multi:
        for parameters in parameter_sets:
            if not isinstance(parameters, dict):  # positional, in the table's column order
                parameters = dict(zip(columns, parameters, strict=False))
            rows.append(({_key_of(k): _unwrap(v) for k, v in parameters.items()}, parameters))
    values = {_key_of(k): _unwrap(v) for k, v in single.items()} if single else None
    return values, (rows if multi else None)


def has_returning(statement: Any) -> bool:
    """Whether a DML statement has a RETURNING clause."""
    return bool(getattr(statement, "_returning", ()))


def autoflush(session: Any) -> None:
    """Flush pending objects first, as the ORM does before its own statements (if enabled)."""
    session._autoflush()


def without_values(statement: Any) -> Any:
    """A copy of an INSERT without its ``.values()`` (to re-add one shard's rows)."""
    copy = statement._generate()
    copy._values = None
    copy._multi_values = ()
    return copy


def in_parameter_order(statement: Any) -> Any:
    """``statement`` with RETURNING rows in the order of its parameter sets.

    The same as ``returning(..., sort_by_parameter_order=True)``, set on a
    statement that already has its RETURNING clause.
    """
    if not getattr(statement, "_returning", ()) or statement._sort_by_parameter_order:
        return statement
    copy = statement._generate()
    copy._sort_by_parameter_order = True
    return copy


def has_where(statement: Any) -> bool:
    """Whether an UPDATE/DELETE has WHERE criteria (an ORM UPDATE without is "by primary key")."""
    return bool(getattr(statement, "_where_criteria", ()))


def returning_load_options(orm_context: ORMExecuteState, shard: Any) -> dict[str, Any]:
    """Execution options making RETURNING-loaded objects carry ``shard`` as identity token.

    A SELECT takes the public ``identity_token`` execution option; the ORM's
    INSERT/UPDATE ... RETURNING loads objects with the load options directly.
    """
    from sqlalchemy.orm.context import QueryContext

    options = orm_context.execution_options.get(
        "_sa_orm_load_options", QueryContext.default_load_options
    )
    return {"_sa_orm_load_options": options + {"_identity_token": shard}}


def ensure_transaction_begun(connection: Any) -> None:
    """Make sure the database transaction of ``connection`` has really begun.

    pysqlite emits BEGIN only before the first INSERT/UPDATE/DELETE; a
    SAVEPOINT issued before that starts a transaction of its own, which its
    RELEASE would commit behind the session's back.  Other drivers begin on
    the first statement of any kind.
    """
    if connection.dialect.name != "sqlite":
        return
    dbapi_connection = connection.connection.dbapi_connection
    driver = getattr(dbapi_connection, "_connection", dbapi_connection)  # aiosqlite's adapter
    in_transaction = getattr(driver, "in_transaction", None)
    if in_transaction is False:
        connection.exec_driver_sql("BEGIN")


def bulk_save(
    session: Any,
    mapper: Any,
    rows: list[Any],
    *,
    isupdate: bool,
    isstates: bool,
    return_defaults: bool,
    update_changed_only: bool,
    render_nulls: bool,
) -> None:
    """What ``Session._bulk_save_mappings`` does, minus its own sub-transaction.

    SQLAlchemy's version rolls the whole session transaction back when a
    batch fails; shardalchemy undoes a failed bulk statement with savepoints
    instead, so the session stays usable.  Callers wrap it in :func:`flushing`
    (on their own thread: several shards may be written at once).
    """
    from sqlalchemy.orm import bulk_persistence

    transaction = session.get_transaction()
    assert transaction is not None  # the shard's connection was taken first
    if isupdate:
        bulk_persistence._bulk_update(
            mapper,
            rows,
            transaction,
            isstates=isstates,
            update_changed_only=update_changed_only,
        )
    else:
        bulk_persistence._bulk_insert(
            mapper,
            rows,
            transaction,
            isstates=isstates,
            return_defaults=return_defaults,
            render_nulls=render_nulls,
        )


@contextlib.contextmanager
def flushing(session: Any) -> Iterator[None]:
    """Mark ``session`` as flushing (no autoflush), as SQLAlchemy's bulk methods do."""
    flushing, session._flushing = session._flushing, True
    try:
        yield
    finally:
        session._flushing = flushing
