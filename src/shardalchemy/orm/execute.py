"""The session's ``do_orm_execute`` handler and its fast path: route, check, run on each shard."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.ext import horizontal_shard
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TextualSelect

from .._sqlalchemy import elements, engines, orm_execute, selects, sessions
from .._sqlalchemy.results import concatenated, merged_result, processed_rows, rows_with_columns
from .._sqlalchemy.savepoints import abort_transaction
from ..errors import ConfigurationError, CrossShardQueryError, RoutingError, ScatterQueryError
from ..execution.deadlines import run_on_one_shard
from ..execution.fan_out import Outcome, fan_out
from ..planning.in_lists import (
    COMPILED_BINDS,
    SMALLEST_BIND_LIMIT,
    InListBatches,
    bind_limit,
    in_list_batches,
    refuse_batched,
)
from ..routing.route import Route
from ..routing.tables import shard_key_hints, statement_label
from ..routing.textual import textual_part
from ..writes.statements import NOT_HANDLED, execute_write
from .guards import refuse_shard_key_assignment
from .placement import colocated

if TYPE_CHECKING:
    from .session import ShardedSession


def _explicit_shard(
    session: ShardedSession, orm_context: ORMExecuteState
) -> tuple[Any, str] | None:
    """A shard the statement is pinned to by an option, a token or a lazy load."""
    for option in orm_execute.orm_options(orm_context):
        if isinstance(option, horizontal_shard.set_shard_id):
            return option.shard_id, f"set_shard_id({option.shard_id!r})"
    token = orm_execute.explicit_identity_token(orm_context)
    if token is not None:
        return token, f"identity token {token!r} (object loaded from that shard)"
    options = orm_context.execution_options
    if "_sa_shard_id" in options:
        shard = options["_sa_shard_id"]
        return shard, f"execution option _sa_shard_id={shard!r}"
    bind_arguments = orm_context.bind_arguments
    if "shard_id" in bind_arguments:
        shard = bind_arguments["shard_id"]
        return shard, f"bind_arguments shard_id={shard!r}"
    if (
        session.rules is not None
        and orm_execute.on_loader_path(orm_context.statement)  # cheap: mostly False
        and orm_context.is_relationship_load
    ):
        # a lazy load, or an eager loader's query run per shard of its parents
        state = orm_execute.lazy_loaded_from(orm_context)
        token = state.identity_token if state is not None else None
        if token is None:
            token = orm_execute.execution_identity_token(options)
        path = orm_context.loader_strategy_path
        relationship = path[-1] if path is not None and len(path) else None
        if token is not None and colocated(session, relationship):
            return token, f"{relationship} loads rows of the parent's shard {token}"
    return None


def execute_on_shards(orm_context: ORMExecuteState) -> Any:
    """The session's ``do_orm_execute`` handler: route, check, run on each shard."""
    session = cast("ShardedSession", orm_context.session)
    statement = orm_context.statement
    explicit = _explicit_shard(session, orm_context)
    if explicit is not None:
        shard, reason = explicit
        session.check_shard(shard, reason)
        route = Route((shard,), reason)
    if not orm_context.is_select and (orm_context.is_insert or orm_context.is_update):
        # INSERT rows and ORM UPDATE-by-primary-key rows are routed one by one
        written = execute_write(session, orm_context, explicit)
        if written is not NOT_HANDLED:
            return written
    if session.rules is not None and orm_context.is_update:
        refuse_shard_key_assignment(session, orm_context, explicit)
    if explicit is None:
        shard = routed_shard(session, orm_context)
        if shard is not None:
            # the common case, one shard the router proved: go on on that shard
            # as below, without building a Route that nobody reads
            orm_context.bind_arguments["shard_id"] = shard
            orm_context.update_execution_options(identity_token=shard)
            return _within_deadline(session, orm_context, shard)
        chosen = session.execute_chooser(orm_context)
        if isinstance(chosen, Route):
            route = chosen  # the router's shards come from the shard map
        else:
            shards = tuple(chosen)
            route = Route(
                shards, "execute_chooser", scatter=len(set(shards)) == len(session.shard_names)
            )
            for shard in route.shards:
                session.check_shard(shard, "the execute chooser's result")
        if not route.shards:
            raise RoutingError(
                f"the execute chooser chose no shard for {statement_label(statement)}; "
                "it must return at least one shard name"
            )
        if len(route.shards) > 1:
            _check_multi_shard(session, orm_context, route)
            refuse_textual(session, statement, route, orm_context.execution_options)
    if session._route_log is not None:
        session.record_route(route, statement)
    # a shard-key IN list: each shard is sent its own values, in batches past the bind limit
    batches = _in_list_batches(session, orm_context, route) if route.in_list is not None else None

    if len(route.shards) == 1 and batches is None:
        # one shard: let the session go on with this very execution, bound to
        # that shard, rather than running the statement again nested
        orm_context.bind_arguments["shard_id"] = route.shards[0]
        orm_context.update_execution_options(identity_token=route.shards[0])
        return _within_deadline(session, orm_context, route.shards[0])

    return _run_on_shards(session, orm_context, route, batches)


def _within_deadline(session: ShardedSession, orm_context: ORMExecuteState, shard: Any) -> Any:
    """``None`` (the session goes on with this execution on ``shard``), or, with a
    ``shard_timeout``, the statement run on ``shard`` within it (``execution.deadlines``)."""
    timeout = session._fan_out_settings(orm_context.execution_options).timeout
    if timeout is None:
        return None
    return run_on_one_shard(session, shard, timeout, orm_context.invoke_statement)


def _in_list_batches(
    session: ShardedSession, orm_context: ORMExecuteState, route: Route
) -> InListBatches | None:
    """The statements a shard-key IN list is sent in (None: the statement as it is).

    The ``bind_limit`` execution option sets the binds per statement (for tests,
    or a server configured lower); else each shard's database says.
    """
    in_list = route.in_list
    limit = orm_context.execution_options.get("bind_limit")
    backend, reserve = "the execution option bind_limit", 0
    if limit is None:
        count = in_list.bind_count()
        if len(route.shards) == 1 and (count is None or count <= SMALLEST_BIND_LIMIT):
            return None  # within every database's limit: no need to ask which
        limit, backend = min(_bind_limit(session, shard) for shard in route.shards)
        reserve = COMPILED_BINDS
    return in_list_batches(in_list, route.shards, int(limit), backend, reserve)


_bind_limits: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def _bind_limit(session: ShardedSession, shard: Any) -> tuple[int, str]:
    """The binds one statement may carry on ``shard``'s database, and its name (per engine)."""
    engine = session.get_bind(shard_id=shard)
    known = _bind_limits.get(engine)
    if known is not None:
        return known
    dialect = engine.dialect
    probed = None
    if dialect.name == "sqlite":
        connection = session.connection(bind_arguments={"shard_id": shard})
        # the standard library's sqlite3 (Python 3.11+) tells the compiled-in limit
        getlimit = getattr(connection.connection.dbapi_connection, "getlimit", None)
        if getlimit is not None:
            import sqlite3

            probed = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    known = (bind_limit(dialect.name, dialect.driver, probed), f"{dialect.name}+{dialect.driver}")
    _bind_limits[engine] = known
    return known


def _run_on_shards(
    session: ShardedSession,
    orm_context: ORMExecuteState,
    route: Route,
    batches: InListBatches | None = None,
) -> Any:
    """A statement on several shards: planned, fanned out, its rows merged.

    A SELECT gets one database's answer (see :mod:`shardalchemy.planner`);
    with ``cross_shard="concatenate"``, and for UPDATE/DELETE, the shards'
    results are concatenated (rowcounts summed), as SQLAlchemy's extension
    does.  UPDATE/DELETE run one shard after another on the calling thread:
    the ORM synchronizes the session's objects as each one returns.  With
    ``batches``, each shard runs one statement per batch of the shard key's IN
    list, and every statement's rows are one more stream to merge.
    """
    options = orm_context.execution_options
    shards = route.shards
    settings = session._fan_out_settings(options)
    # an UPDATE/DELETE is all or nothing: every shard's changes undone when one fails
    all_or_nothing = not orm_context.is_select and (
        len(shards) > 1 or (batches is not None and len(batches.batches[shards[0]]) > 1)
    )
    if all_or_nothing:
        _refuse_partial_write(orm_context, shards)
        sessions.autoflush_before_write(session, orm_context)
        deleted_before = sessions.deleted_so_far(session)
    if orm_context.is_select and orm_execute.wants_autoflush(orm_context):
        # here, on the calling thread: SQLAlchemy would autoflush inside each shard's
        # invoke_statement, on the worker threads at once, sharing the shards' connections
        sessions.autoflush(session)
    plan = None
    if orm_context.is_select and settings.merge:
        try:
            plan = session._plan(orm_context.statement, shards, orm_context.parameters)
        except CrossShardQueryError as error:
            if len(shards) == 1 and batches is not None:
                raise refuse_batched(error, batches) from error
            raise
    buffered = _streams_would_share_a_cursor(session, orm_context, shards, batches)
    if (
        plan is not None
        and plan.fallback is not None
        and (buffered or options.get("prebuffer_rows"))
    ):
        plan = plan.fallback  # the rows are loaded before they could be read

    def run_everywhere(statement: Any) -> tuple[list[Any], Outcome]:
        def run_on(shard: Any) -> Any:
            if batches is not None:
                return [
                    _run_batch(orm_context, statement, shard, batches, values, buffered)
                    for values in batches.batches[shard]
                ]
            result = orm_context.invoke_statement(
                statement=statement,
                bind_arguments={"shard_id": shard},
                execution_options=_BUFFERED[shard] if buffered else {"identity_token": shard},
            )
            return _read_whole(result) if buffered else result

        try:
            outcome = fan_out(
                session,
                shards,
                run_on,
                timeout=settings.timeout,
                allow_partial=settings.allow_partial and not all_or_nothing,
                concurrency=settings.concurrency if orm_context.is_select else 1,
                all_or_nothing=all_or_nothing,
            )
        except BaseException:
            if all_or_nothing:
                _as_one_database_after_a_failed_statement(
                    session, orm_context, shards, deleted_before
                )
            raise
        results = [outcome.results[shard] for shard in shards if shard in outcome.results]
        if batches is not None:  # each shard's statements, one result each
            results = [result for each in results for result in each]
        return results, outcome

    results, outcome = run_everywhere(plan.statement if plan is not None else None)
    if plan is None:
        merged = concatenated(results)
        merged.failed_shards = dict(outcome.failures)
        return merged
    streams = [_rows_of(result, plan.row_columns) for result in results]
    if plan.fallback is not None and any(stream is None for stream in streams):
        for result in results:  # rows that cannot be read: select the sort keys instead
            result.close()
        plan = plan.fallback
        results, outcome = run_everywhere(plan.statement)
        streams = [_rows_of(result, ()) for result in results]
    rows = plan.merge(streams)
    if options.get("prebuffer_rows"):  # AsyncSession: rows must be read inside its greenlet
        rows = iter(list(rows))
    result = merged_result(results[0], rows, results, plan.visible, plan.single_entity)
    result.failed_shards = dict(outcome.failures)
    return result


def _refuse_partial_write(orm_context: ORMExecuteState, shards: tuple[Any, ...]) -> None:
    """``allow_partial`` asked of an UPDATE/DELETE over several shards: refused.

    A partial answer is fine for a read; a partial write is a statement half
    done, which no database leaves.  A session-wide ``allow_partial`` is for
    its reads: its multi-shard writes are all or nothing.
    """
    if orm_context.execution_options.get("allow_partial"):
        raise ConfigurationError(
            f"allow_partial=True cannot apply to {statement_label(orm_context.statement)} on "
            f"shards {', '.join(map(str, shards))}: a multi-shard UPDATE or DELETE is all or "
            "nothing (a shard that fails rolls every shard back). Drop allow_partial, or run "
            "it shard by shard with set_shard_id(...) where a partial write is what you want"
        )


def _as_one_database_after_a_failed_statement(
    session: ShardedSession,
    orm_context: ORMExecuteState,
    shards: tuple[Any, ...],
    deleted_before: set[Any],
) -> None:
    """After a multi-shard UPDATE/DELETE rolled back everywhere: the session as one database's.

    The ORM forgets what it synchronized of the statement; on PostgreSQL every
    shard's transaction is left aborted until rollback (as one database's
    transaction is after a failed statement); on MariaDB and SQLite the
    statement is undone and the transaction goes on.
    """
    sessions.forget_synchronized(session, orm_context.bind_mapper, set(shards), deleted_before)
    aborted: set[int] = set()
    for shard in session.shard_names:
        if session.get_bind(shard_id=shard).dialect.name != "postgresql":
            continue
        try:
            connection = session.connection(bind_arguments={"shard_id": shard})
        except Exception:
            continue  # a connection that cannot be had cannot commit either
        key = id(connection.connection.dbapi_connection)
        if key not in aborted:
            aborted.add(key)
            abort_transaction(connection)


def _run_batch(
    orm_context: ORMExecuteState,
    statement: Any,
    shard: Any,
    batches: InListBatches,
    values: list[Any],
    buffered: bool = False,
) -> Any:
    """``statement`` (``None``: the user's) on ``shard`` with the IN list's ``values``."""
    options = _BUFFERED[shard] if buffered else {"identity_token": shard}
    if batches.given:  # the values are the execution's parameter: override it
        result = orm_context.invoke_statement(
            statement=statement,
            params={batches.bind_key: values},
            bind_arguments={"shard_id": shard},
            execution_options=options,
        )
    else:
        base = statement if statement is not None else orm_context.statement
        result = orm_context.invoke_statement(
            statement=elements.with_bind_value(base, batches.bind_key, values),
            bind_arguments={"shard_id": shard},
            execution_options=options,
        )
    return _read_whole(result) if buffered else result


class _BufferedOptions(dict[Any, Any]):
    """``identity_token`` and ``prebuffer_rows`` execution options, made once per shard."""

    def __missing__(self, shard: Any) -> dict[str, Any]:
        options = self[shard] = {"identity_token": shard, "prebuffer_rows": True}
        return options


_BUFFERED = _BufferedOptions()

# backends whose connection holds one unread server-side result at a time: running
# a second statement on it reads (PyMySQL) or drops the rest of the first
_ONE_OPEN_RESULT_PER_CONNECTION = frozenset({"mysql", "mariadb"})


def _streams_would_share_a_cursor(
    session: ShardedSession,
    orm_context: ORMExecuteState,
    shards: tuple[Any, ...],
    batches: InListBatches | None,
) -> bool:
    """Whether a streamed statement's results would be open at once on one MySQL connection.

    A session's shards in one database share one connection; each shard's (and
    each IN batch's) result is one stream the merge keeps open.  On MariaDB and
    MySQL a server-side cursor (``stream_results``, ``yield_per``) must then be
    read whole before the next statement, else the driver discards its unread
    rows.  Those results are buffered instead: the same rows, in memory.
    """
    options = orm_context.execution_options
    if not (options.get("stream_results") or options.get("yield_per")):
        return False
    if orm_context.bind_mapper is None and not orm_context.is_select:
        return False
    streams: dict[Any, int] = {}
    for shard in shards:
        bind = session.get_bind(shard_id=shard)
        if bind.dialect.name not in _ONE_OPEN_RESULT_PER_CONNECTION:
            continue
        group = engines.connection_group(bind)
        streams[group] = streams.get(group, 0) + (
            1 if batches is None else len(batches.batches[shard])
        )
    return any(count > 1 for count in streams.values())


def _read_whole(result: Any) -> Any:
    """A result of a Core statement read whole (ORM results were, by ``prebuffer_rows``)."""
    if getattr(result, "cursor", None) is None:  # an ORM result, already buffered
        return result
    return result.freeze()()


def _rows_of(result: Any, row_columns: tuple[Any, ...]) -> Any:
    """One shard's rows as plain tuples (ORM objects already loaded), read lazily.

    With ``row_columns``, each row is followed by those columns of the row
    its entities were loaded from (``None`` if they cannot be read).
    """
    if row_columns:
        return rows_with_columns(result, row_columns)
    return processed_rows(result)


def _check_multi_shard(session: ShardedSession, orm_context: ORMExecuteState, route: Route) -> None:
    """Refuse what must not run on several shards: scatters in no-scatter mode, INSERT."""
    statement = orm_context.statement
    if orm_context.is_insert:
        raise RoutingError(
            f"INSERT ... SELECT reaches shards {', '.join(map(str, route.shards))} "
            f"({route.reason}); it runs on one shard only: add a shard-key predicate to its "
            "SELECT or pin it with set_shard_id(...)"
        )
    no_scatter = orm_context.execution_options.get("no_scatter", session.no_scatter)
    if no_scatter and route.scatter:
        tables: list[str] = []
        keys: list[str] = []
        if session.rules is not None:
            tables, keys = shard_key_hints(statement, session.rules)
        tables = tables or [statement_label(statement)]
        wanted = " or ".join(keys) or "the shard key"
        raise ScatterQueryError(
            f"{statement_label(statement)} would run on every shard ({route.reason}), and "
            f"scatter queries are refused (no_scatter); add a predicate on {wanted} "
            "(= or IN), pin it with set_shard_id(...), or allow this one with "
            ".execution_options(no_scatter=False)",
            tables=tables,
            missing=keys,
        )
    # an UPDATE/DELETE over rows that may meet on different shards (an uncorrelated
    # subquery, a join not on the shard key) would change each shard by its own rows only;
    # SELECTs are refused by the planner, which knows the exact plans
    proof = route.colocation
    if (
        not orm_context.is_select
        and proof is not None
        and not proof.proven
        and session._fan_out_settings(orm_context.execution_options).merge
    ):
        raise CrossShardQueryError(
            f"{statement_label(statement)} on several shards cannot be run exactly: "
            f"{proof.problem}. Pin it to one shard, rewrite it, or run it shard by shard with "
            ".execution_options(cross_shard='concatenate')",
            construct=proof.construct or statement_label(statement),
        )


def refuse_textual(session: ShardedSession, statement: Any, route: Route, options: Any) -> None:
    """Refuse textual SQL on several shards, unless concatenation was asked for.

    Nothing tells what a ``text()`` reads or computes (a count, a join, an
    INSERT), so no plan can build one database's answer from the shards'
    answers; with ``cross_shard="concatenate"`` the shards' results are given
    one after another (rowcounts summed), as SQLAlchemy's extension does.
    """
    textual = textual_part(statement)
    if textual is None or not session._fan_out_settings(options).merge:
        return
    raise textual_error(statement, textual, route)


def textual_error(statement: Any, textual: str, route: Route) -> CrossShardQueryError:
    """The refusal of a textual statement on several shards, saying how to pin or concatenate."""
    if isinstance(statement, TextClause | TextualSelect):
        sql = " ".join(str(statement).split())
        label = repr(sql if len(sql) <= 60 else sql[:57] + "...")
    else:
        label = statement_label(statement)
    return CrossShardQueryError(
        f"{label}: textual SQL ({textual}) reaches shards "
        f"{', '.join(map(str, route.shards))} ({route.reason}); shardalchemy cannot analyse "
        "text, so it cannot combine the shards' answers into one database's. Pin it to one "
        "shard with bind_arguments={'shard_id': ...} or .options(set_shard_id(...)), or ask "
        "for the shards' results one after another with "
        ".execution_options(cross_shard='concatenate')",
        construct=textual,
    )


def plain_select(statement: Any) -> bool:
    """A SELECT that is not a loader's, not pinned by ``set_shard_id``, with no token of its own."""
    if not getattr(statement, "is_select", False) or orm_execute.on_loader_path(statement):
        return False
    if "identity_token" in statement.get_execution_options():
        return False  # the statement's own token would win over the routed one
    return not any(
        isinstance(option, horizontal_shard.set_shard_id)
        for option in selects.statement_options(statement)
    )


def routed_shard(session: ShardedSession, orm_context: ORMExecuteState) -> Any:
    """The one shard the declarative router proves for this execution, or ``None``.

    The fast path of :func:`_execute_on_shards` for statements that reach the
    hook: only when the execute chooser is the session's own router and no
    route is being recorded.  ``None`` means "take the general path", never
    "no shard".
    """
    if not session._own_router or session._route_log is not None:
        return None
    assert session.shard_map is not None
    return session.shard_map.router.single_shard(orm_context.statement, orm_context.parameters)
