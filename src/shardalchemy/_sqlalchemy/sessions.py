"""Private SQLAlchemy details of ``Session`` (since SQLAlchemy 2.0).

The sharded session hooks in before SQLAlchemy's own ``do_orm_execute``
machinery, and bulk writes reuse the ORM's bulk persistence functions without
its sub-transaction: both have no public API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import util
from sqlalchemy.ext import horizontal_shard

from .orm_execute import NO_MORE_EVENTS, identity_token_options


def autoflush(session: Any) -> None:
    """Flush pending objects first, as the ORM does before its own statements (if enabled)."""
    session._autoflush()


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
      routing itself.
    - ``Session._bulk_save_mappings`` (where ``bulk_insert_mappings()`` and
      ``bulk_update_mappings()`` end) asks :meth:`save_bulk_mappings` to
      route the rows first.
    """

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
