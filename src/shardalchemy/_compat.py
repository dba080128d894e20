"""The few semi-private SQLAlchemy details shardalchemy relies on, in one place.

SQLAlchemy has no public accessor for these; keeping them here means an
upgrade that changes them touches this file only.  (Table-name rendering for
the ``tables`` placement has its own module, :mod:`shardalchemy._naming`.)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy.engine.result import IteratorResult
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


@functools.lru_cache(maxsize=1024)
def identity_token_options(shard: Any) -> Any:
    """Execution options that load objects with ``shard`` as identity token.

    What the public ``identity_token`` execution option becomes in the ORM
    (its load options), made once per shard instead of at every execution.
    """
    from sqlalchemy.orm.context import QueryContext
    from sqlalchemy.util import immutabledict

    options = QueryContext.default_load_options + {"_identity_token": shard}
    return immutabledict({"_sa_orm_load_options": options})


def execution_identity_token(options: Any) -> Any:
    """The identity token execution options carry: the public option, or its load options.

    Eager loaders run with their top-level statement's execution options,
    their own load options replacing its: there the token is the top-level
    query context's.
    """
    token = options.get("identity_token")
    if token is None:
        token = getattr(options.get("_sa_orm_load_options"), "_identity_token", None)
    if token is None:  # a post-loader (selectinload) of a statement that carried its token
        token = getattr(options.get("sa_top_level_orm_context"), "identity_token", None)
    return token


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


# -- the planner (shardalchemy.planner) ------------------------------------------------
# Select keeps its clauses in attributes without public getters; the planner
# reads them here, and rebuilds statements only through public generative
# methods (add_columns, group_by, order_by(None), limit, offset), except for
# HAVING, which has no public way to be removed.


def raw_columns(statement: Any) -> list[Any]:
    """The select list as written: columns, expressions and ORM entities, one per result column."""
    return list(getattr(statement, "_raw_columns", ()))


def order_by(statement: Any) -> tuple[Any, ...]:
    return tuple(getattr(statement, "_order_by_clauses", ()))


def group_by(statement: Any) -> tuple[Any, ...]:
    return tuple(getattr(statement, "_group_by_clauses", ()))


def having(statement: Any) -> Any:
    """The HAVING criteria as one clause, or ``None``."""
    from sqlalchemy import and_

    criteria = tuple(getattr(statement, "_having_criteria", ()))
    if not criteria:
        return None
    return criteria[0] if len(criteria) == 1 else and_(*criteria)


def without_having(statement: Any) -> Any:
    """A copy of ``statement`` without its HAVING criteria."""
    if not getattr(statement, "_having_criteria", ()):
        return statement
    copy = statement._generate()
    copy._having_criteria = ()
    return copy


def distinct_on(statement: Any) -> tuple[Any, ...]:
    return tuple(getattr(statement, "_distinct_on", ()))


# where SQLAlchemy 2.1's dialect syntax extensions (Select.ext(), e.g. PostgreSQL's
# distinct_on()) attach to a SELECT
_SYNTAX_EXTENSION_SLOTS = (
    "_pre_columns_clause",
    "_post_select_clause",
    "_post_criteria_clause",
    "_post_body_clause",
)


def syntax_extensions(statement: Any) -> list[Any]:
    """The dialect syntax extensions a SELECT carries (``select(...).ext(distinct_on(x))``)."""
    found = (getattr(statement, slot, None) for slot in _SYNTAX_EXTENSION_SLOTS)
    return [extension for extension in found if extension is not None]


def fetch_clause(statement: Any) -> Any:
    return getattr(statement, "_fetch_clause", None)


def has_limit_or_offset(statement: Any) -> bool:
    return (
        getattr(statement, "_limit_clause", None) is not None
        or getattr(statement, "_offset_clause", None) is not None
        or getattr(statement, "_fetch_clause", None) is not None
    )


def bind_value(bind: Any, parameters: Any) -> Any:
    """The value a bound parameter has in this execution."""
    if parameters and bind.key in parameters:
        return parameters[bind.key]
    return bind.effective_value


def limit_offset(statement: Any, parameters: Any) -> tuple[Any, Any]:
    """LIMIT and OFFSET: their values when bound (literals or parameters), else the clause."""
    from sqlalchemy.sql.elements import BindParameter

    values: list[Any] = []
    for name in ("_limit_clause", "_offset_clause"):
        clause = getattr(statement, name, None)
        if isinstance(clause, BindParameter):
            clause = bind_value(clause, parameters)
        values.append(clause)
    return values[0], values[1]


def label_reference_name(element: Any) -> str | None:
    """The label name an ORDER BY / GROUP BY ``"name"`` string refers to, or ``None``."""
    from sqlalchemy.sql.elements import _textual_label_reference

    if isinstance(element, _textual_label_reference):
        return str(element.element)
    return None


def unwrap_label_reference(element: Any) -> Any:
    """The expression behind an ORDER BY / GROUP BY reference to a labelled column."""
    from sqlalchemy.sql.elements import _label_reference

    while isinstance(element, _label_reference):
        element = element.element
    return element


def is_distinct(argument: Any) -> bool:
    """Whether an aggregate's argument is ``DISTINCT x`` (``distinct(x)`` / ``x.distinct()``)."""
    from sqlalchemy.sql import operators
    from sqlalchemy.sql.elements import UnaryExpression

    return isinstance(argument, UnaryExpression) and argument.operator is operators.distinct_op


def function(name: str, *arguments: Any) -> Any:
    """``func.<name>(*arguments)``."""
    from sqlalchemy import func

    return getattr(func, name)(*arguments)


# -- merged results (shardalchemy.session) ---------------------------------------------


def requires_unique(result: Any) -> bool:
    """Whether an ORM result must be uniqued (joined eager loading of a collection)."""
    return getattr(result, "_unique_filter_state", None) is not None


class ShardedResult(IteratorResult):  # type: ignore[type-arg]
    """The merged result of a multi-shard SELECT: a SQLAlchemy ``Result``.

    ``failed_shards`` maps each shard that failed (only with
    ``allow_partial=True``) to its error; it is empty otherwise.
    """

    failed_shards: dict[Any, BaseException]

    def __init__(self, metadata: Any, rows: Any, sources: list[Any]) -> None:
        super().__init__(metadata, rows)
        self._sources = sources
        self.failed_shards = {}

    def _soft_close(self, hard: bool = False, **kw: Any) -> None:
        for source in self._sources:
            source._soft_close(hard=hard, **kw)
        super()._soft_close(hard=hard, **kw)


def merged_result(
    template: Any, rows: Any, sources: list[Any], visible: int | None, single_entity: bool
) -> Any:
    """A Result yielding ``rows`` (tuples) shaped like ``template`` minus hidden columns.

    ``template`` is one shard's result of the per-shard statement: its keys
    and column objects (``row._mapping[City.name]``) are kept, its type
    processors are not (the rows are already processed), and columns from
    ``visible`` on are hidden.  ORM attributes the legacy ``Query`` reads
    (single entity, uniquing) are those of the user's statement.
    """
    metadata = template._metadata._for_freeze()
    if visible is not None:
        metadata = metadata._reduce(list(range(visible)))
    result = ShardedResult(metadata, rows, sources)
    result._unique_filter_state = template._unique_filter_state
    result._yield_per = template._yield_per
    result._attributes = template._attributes.union({"is_single_entity": single_entity})
    return result


# -- the executor (shardalchemy.executor) -----------------------------------------------


def in_greenlet() -> bool:
    """Whether this code runs inside SQLAlchemy's asyncio greenlet bridge (an AsyncSession)."""
    from sqlalchemy.util import concurrency

    check = getattr(concurrency, "in_greenlet", None)
    return bool(check()) if check is not None else False


def is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` says a statement was cancelled (by us, at a deadline or failure)."""
    import asyncio

    if isinstance(error, asyncio.CancelledError):
        return True
    original = getattr(error, "orig", None) or error
    sqlstate = getattr(original, "sqlstate", None) or getattr(
        getattr(original, "diag", None), "sqlstate", None
    )
    if sqlstate == "57014":  # PostgreSQL query_canceled
        return True
    arguments = getattr(original, "args", ())
    if arguments and arguments[0] == 1317:  # MariaDB/MySQL "Query execution was interrupted"
        return True
    return "interrupted" in str(original).lower()


def rows_with_columns(result: Any, columns: tuple[Any, ...]) -> Iterator[tuple[Any, ...]] | None:
    """An ORM result's rows as tuples, each followed by ``columns`` of the row it was loaded from.

    The ORM builds each entity row from one row of the underlying
    ``CursorResult`` (``result.raw``), which it fetches in batches through
    ``_raw_all_tuples()`` (``_raw_all_rows()`` before SQLAlchemy 2.1) or
    ``fetchmany()``: those methods are wrapped on this one result so each
    batch is kept until its entity rows are read.  Returns ``None`` when the
    rows cannot be paired (no cursor result, uniquing, an unknown column, a
    result already fetched): the caller then selects the columns instead.
    """
    import collections

    raw = getattr(result, "raw", None)
    metadata = getattr(raw, "_metadata", None)
    if raw is None or metadata is None or requires_unique(result) or raw.closed:
        return None
    try:
        indices = [metadata._index_for_key(column, True) for column in columns]
    except Exception:
        return None
    if any(not isinstance(index, int) for index in indices):
        return None
    pending: collections.deque[Any] = collections.deque()
    wrapped = 0
    for name in ("_raw_all_tuples", "_raw_all_rows", "fetchmany"):
        fetch = getattr(raw, name, None)
        if fetch is None:
            continue

        def keeping(*args: Any, _fetch: Any = fetch, **kw: Any) -> Any:
            rows = _fetch(*args, **kw)
            pending.extend(rows)
            return rows

        setattr(raw, name, keeping)
        wrapped += 1
    if not wrapped:
        return None

    scalars = result._source_supports_scalars  # a single entity's raw rows are its objects

    def rows() -> Iterator[tuple[Any, ...]]:
        for row in result._raw_row_iterator():
            source = pending.popleft()
            keys = [source[index] for index in indices]
            yield (row, *keys) if scalars else (*row, *keys)

    return rows()


def processed_rows(result: Any) -> Iterator[tuple[Any, ...]]:
    """A shard result's rows as tuples of Python values, read lazily.

    ORM results hold such tuples already (their raw rows are processed; a
    single entity's are the objects themselves), so no ``Row`` is built per
    row; a ``CursorResult``'s raw rows are the driver's, so its ``Row``s are.
    """
    from sqlalchemy.engine import CursorResult

    if isinstance(result, CursorResult) or requires_unique(result):
        if requires_unique(result):  # joined eager loading: one row per parent object
            result = result.unique()
        return (tuple(row) for row in result)
    raw = result._raw_row_iterator()
    if result._source_supports_scalars:
        return ((value,) for value in raw)
    return iter(raw)
