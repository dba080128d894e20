"""Private SQLAlchemy details of ``Session`` (since SQLAlchemy 2.0).

The sharded session hooks in before SQLAlchemy's own ``do_orm_execute``
machinery, bulk writes reuse the ORM's bulk persistence functions without
its sub-transaction, and nested transactions hold their savepoints on every
shard through the ``SessionTransaction``'s connection registry: none of it
has a public API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event, util
from sqlalchemy.ext import horizontal_shard

from . import drivers
from .orm_execute import NO_MORE_EVENTS, identity_token_options


def autoflush(session: Any) -> None:
    """Flush pending objects first, as the ORM does before its own statements (if enabled)."""
    session._autoflush()


def is_clean(session: Any) -> bool:
    """Whether ``session`` has nothing to flush (``Session._is_clean``, what its commit asks)."""
    return bool(session._is_clean())


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


def identity_class(mapper: Any) -> Any:
    """The class an identity key of ``mapper``'s objects names (``Mapper._identity_class``)."""
    return mapper._identity_class


_EMPTY: Any = util.immutabledict()


class SessionHooks(horizontal_shard.ShardedSession):
    """The private ``Session`` methods the sharded session overrides, and nothing else.

    Each override hands over to a hook with a public name that
    :class:`~shardalchemy.ShardedSession` implements:

    - ``Session._execute_internal`` (every ``execute()``, ``scalars()``,
      ``get()`` and loader statement passes there) asks
      :meth:`shard_before_hooks`: a SELECT the router pins to one shard, in a
      session whose only ``do_orm_execute`` hook is its own, is sent straight
      to that shard.  The hook would decide exactly this, and running it (an
      ``ORMExecuteState``, a second pre-execution pass) costs more than the
      routing itself.  With a default ``shard_timeout``, that statement runs within
      it (``run_with_deadline``); a statement's own ``shard_timeout`` takes the hook,
      which checks it.
    - ``Session._bulk_save_mappings`` (where ``bulk_insert_mappings()`` and
      ``bulk_update_mappings()`` end) asks :meth:`save_bulk_mappings` to
      route the rows first.
    """

    fan_out_defaults: Any  # the session's FanOutOptions (its shard_timeout), set by the subclass

    def shard_before_hooks(
        self, statement: Any, params: Any, execution_options: Any, bind_arguments: Any
    ) -> Any:
        """The one shard of a plain SELECT, if it can be known without the hook; else None."""
        return None

    def save_bulk_mappings(self, mapper: Any, mappings: Any, options: dict[str, Any]) -> bool:
        """Write bulk mappings routed row by row; ``False`` leaves them to SQLAlchemy."""
        return False

    def _execute_internal(  # type: ignore[override]
        self,
        statement: Any,
        params: Any = None,
        *,
        execution_options: Any = _EMPTY,
        bind_arguments: Any = None,
        _parent_execute_state: Any = None,
        _add_event: Any = None,
        _scalar_result: bool = False,
    ) -> Any:
        if _parent_execute_state is None and _add_event is None:
            shard = self.shard_before_hooks(statement, params, execution_options, bind_arguments)
            if shard is not None and "shard_timeout" in statement._execution_options:
                shard = None  # the statement's own timeout: the hook checks it and runs it
            if shard is not None:
                bind_arguments = (
                    {**bind_arguments, "shard_id": shard} if bind_arguments else {"shard_id": shard}
                )
                # the identity token, as the load options it becomes (made once per
                # shard: building them from an "identity_token" option costs ~2 us)
                token = identity_token_options(shard)
                execution_options = (
                    execution_options.union(token)
                    if isinstance(execution_options, util.immutabledict)
                    else {**execution_options, **token}
                    if execution_options
                    else token
                )
                _parent_execute_state = NO_MORE_EVENTS
                timeout = self.fan_out_defaults.timeout  # the session's default shard_timeout
                if timeout is not None:
                    return run_with_deadline(
                        self,
                        shard,
                        timeout,
                        lambda: _SESSION_EXECUTE(
                            self,
                            statement,
                            params,
                            execution_options=execution_options,
                            bind_arguments=bind_arguments,
                            _parent_execute_state=_parent_execute_state,
                            _add_event=_add_event,
                            _scalar_result=_scalar_result,
                        ),
                    )
        return _SESSION_EXECUTE(
            self,
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            _parent_execute_state=_parent_execute_state,
            _add_event=_add_event,
            _scalar_result=_scalar_result,
        )

    def _bulk_save_mappings(self, mapper: Any, mappings: Any, **options: Any) -> None:
        if not self.save_bulk_mappings(mapper, mappings, options):
            super()._bulk_save_mappings(mapper, mappings, **options)


# SQLAlchemy's own Session._execute_internal, called unbound: one attribute
# lookup less than super() on the path every statement takes
_SESSION_EXECUTE = horizontal_shard.ShardedSession._execute_internal

# run_with_deadline(session, shard, seconds, execute): a fast-path statement run within the
# session's default shard_timeout.  Set by shardalchemy.execution.deadlines, which imports
# this module (the rooms' import graph keeps _sqlalchemy below execution, so not the reverse)
run_with_deadline: Any = None


# -- nested transactions: a savepoint on every shard ------------------------------------------


def hold_savepoints_on_every_shard(session: Any) -> None:
    """Make ``session.begin_nested()`` hold a SAVEPOINT on every shard, as one database's would.

    A plain Session begins a nested transaction's SAVEPOINT when the nested
    transaction first asks its parent for a connection.  A sharded session's
    flush takes its connections from the root transaction
    (``horizontal_shard.ShardedSession.connection_callable`` calls
    ``get_transaction().connection(...)``), so the nested transaction never
    saw them: no SAVEPOINT was sent and ``rollback()`` of the nested
    transaction undid nothing.  Here, through public session events:

    - ``after_transaction_create`` of a nested transaction: a SAVEPOINT on
      every connection the session's transaction holds (every shard it has a
      transaction on), registered in the nested transaction, which rolls them
      back or releases them together;
    - ``after_begin`` of the root transaction (a shard joined later, by any
      path): a SAVEPOINT on it for every nested transaction in progress,
      outermost first.

    Registering them is what needs the private ``SessionTransaction._connections``
    and ``_connection_for_bind`` (SQLAlchemy 2.0 to 2.1): a nested transaction's
    own ``_connection_for_bind`` would begin a second SAVEPOINT on a connection
    registered this way, so each nested transaction's is wrapped to look first.

    Connections that share one database connection (SQLite shards in one
    file) share one SAVEPOINT per nested transaction, opened through the
    first of them: SQLAlchemy numbers savepoints per connection, and two
    ``sa_savepoint_1`` on one database connection would make ``ROLLBACK TO``
    reach the wrong one.
    """
    event.listen(session, "after_transaction_create", _nested_transaction_created)
    event.listen(session, "after_begin", _connection_begun)


def _root(transaction: Any) -> Any:
    while transaction.parent is not None:
        transaction = transaction.parent
    return transaction


def _nested_in_progress(session: Any) -> list[Any]:
    """The nested transactions in progress, outermost first."""
    levels = []
    transaction = session._transaction
    while transaction is not None:
        if transaction.nested:
            levels.append(transaction)
        transaction = transaction.parent
    return levels[::-1]


def _connections_of(transaction: Any) -> list[Any]:
    """The connections ``transaction`` holds, in the order it took them."""
    # each is registered under the connection and under its engine
    return list(dict.fromkeys(entry[0] for entry in transaction._connections.values()))


def _nested_transaction_created(session: Any, transaction: Any) -> None:
    if not transaction.nested:
        return
    original = transaction._connection_for_bind

    def connection_for_bind(bind: Any, execution_options: Any) -> Any:
        if bind not in transaction._connections:
            root = _root(transaction)
            entry = root._connections.get(bind)
            # a new connection of the root is held by _connection_begun
            connection = (
                entry[0]
                if entry is not None
                else root._connection_for_bind(bind, execution_options)
            )
            _hold(session, transaction, connection)
        return original(bind, execution_options)

    transaction._connection_for_bind = connection_for_bind
    for connection in _connections_of(_root(transaction)):
        _hold(session, transaction, connection)


def _connection_begun(session: Any, transaction: Any, connection: Any) -> None:
    if transaction.parent is not None:
        return  # a nested transaction's: registered by _hold
    for level in _nested_in_progress(session):
        _hold(session, level, connection)


class _SharedSavepoint:
    """Stands in, in a nested transaction, for the SAVEPOINT another connection holds.

    Registered for a connection whose database connection already has this
    nested transaction's SAVEPOINT (through another shard's connection): that
    one savepoint is released or rolled back for both.
    """

    def __init__(self, savepoint: Any) -> None:
        self.savepoint = savepoint

    @property
    def is_active(self) -> bool:
        return bool(self.savepoint.is_active)

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def savepoint_opener(session: Any, connection: Any) -> Any:
    """The connection every SAVEPOINT on ``connection``'s database connection is opened through.

    The first connection the session's (root) transaction took on that database
    connection: SQLAlchemy numbers savepoints per SQLAlchemy connection, so
    opening them all through one keeps their names unique on the database
    connection the session's shards there share.  Nested transactions
    (:func:`hold_savepoints_on_every_shard`) and a statement's savepoints
    (:mod:`.savepoints`) open theirs here.
    """
    database_connection = connection.connection.dbapi_connection
    transaction = getattr(session, "_transaction", None)
    if transaction is None:
        return connection
    for held in _connections_of(_root(transaction)):
        if held.connection.dbapi_connection is database_connection:
            return held
    return connection


def _hold(session: Any, nested: Any, connection: Any) -> None:
    """Register a SAVEPOINT on ``connection``'s database connection in ``nested``."""
    if connection in nested._connections:
        return
    database_connection = connection.connection.dbapi_connection
    savepoint: Any = None
    for held, transaction, _, _ in nested._connections.values():
        if held.connection.dbapi_connection is database_connection:
            if isinstance(transaction, _SharedSavepoint):
                transaction = transaction.savepoint
            savepoint = _SharedSavepoint(transaction)
            break
    if savepoint is None:
        opener = savepoint_opener(session, connection)
        drivers.ensure_transaction_begun(opener)
        savepoint = opener.begin_nested()
    nested._connections[connection] = nested._connections[connection.engine] = (
        connection,
        savepoint,
        True,  # released or rolled back with the nested transaction
        False,  # closed by the root transaction, which owns it
    )
    session.dispatch.after_begin(session, nested, connection)


# -- a multi-shard UPDATE/DELETE rolled back: what the ORM was told ------------------------------


def autoflush_before_write(session: Any, orm_context: Any) -> None:
    """Flush pending objects before an ORM UPDATE/DELETE, as the ORM would (if enabled).

    Here, on the calling thread and before the statement's savepoints: the
    ORM autoflushes inside each shard's run, where a rollback of the
    statement would also undo the flush of objects it then thinks stored.
    """
    if orm_context.is_orm_statement and orm_context.update_delete_options._autoflush:
        session._autoflush()


def deleted_so_far(session: Any) -> set[Any]:
    """The states the session's transaction saw deleted (``SessionTransaction._deleted``)."""
    transaction = session._transaction
    return set(transaction._deleted) if transaction is not None else set()


def forget_synchronized(session: Any, mapper: Any, shards: Any, deleted_before: set[Any]) -> None:
    """Take back what ``synchronize_session`` told the session of a statement rolled back.

    The ORM synchronizes each shard's objects as that shard's statement
    returns; when the statement is then rolled back on every shard, the
    objects a DELETE removed are persistent again and the column values an
    UPDATE set are expired (the next access reads what the database holds),
    as if the statement had failed in one database before it synchronized.
    """
    transaction = session._transaction
    if transaction is not None:
        for state in [state for state in transaction._deleted if state not in deleted_before]:
            del transaction._deleted[state]
            session._update_impl(state, revert_deletion=True)
    if mapper is None:
        return
    for state in list(session.identity_map.all_states()):
        if state.identity_token not in shards or not state.mapper.isa(mapper):
            continue
        obj = state.obj()
        if obj is None:
            continue
        keys = [
            attribute.key
            for attribute in state.mapper.column_attrs
            if attribute.key in state.dict and attribute.key not in state.committed_state
        ]
        if keys:
            session.expire(obj, keys)
