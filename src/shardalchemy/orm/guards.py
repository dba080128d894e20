"""Write guards: nothing may change the value that decides a row's shard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import inspect
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter

from .._sqlalchemy import dml, elements
from ..errors import MissingParentError, ShardKeyChangeError
from ..options import EXPLICIT_SHARD
from ..sharding.rules import KeyRule

if TYPE_CHECKING:
    from .session import ShardedSession


def refuse_shard_key_assignment(session: ShardedSession, orm_context: ORMExecuteState) -> None:
    """An UPDATE may not set what decides a row's shard: it would leave the row misplaced."""
    assert session.rules is not None
    statement = orm_context.statement
    table = getattr(statement, "table", None)
    rule = session.rules.for_table(elements.plain(table)) if table is not None else None
    if rule is None:
        return
    protected = rule.protected_names()
    assigned: list[tuple[str, Any]] = []
    for column, value in dml.dml_assignments(statement):
        key = column if isinstance(column, str) else getattr(column, "key", None)
        if key in protected:
            assigned.append((key, getattr(value, "value", value)))  # a bound value, unwrapped
    parameters = orm_context.parameters
    parameter_sets = [parameters] if isinstance(parameters, Mapping) else list(parameters or ())
    if parameter_sets:
        # execute-time parameters named like a column become SET clauses,
        # unless the statement has a bound parameter of that name
        bound = {
            element.key
            for element in visitors.iterate(cast(Any, statement))
            if isinstance(element, BindParameter)
        }
        for parameter_set in parameter_sets:
            for key, value in parameter_set.items():
                if key in protected and key not in bound:
                    assigned.append((key, value))
    if assigned:
        key, value = assigned[0]
        raise ShardKeyChangeError(
            f"UPDATE of {rule.name} sets {protected[key]} to {value!r}, which would move rows "
            "between shards; that is not supported (delete the rows and insert new ones "
            "instead)",
            model=rule.name,
            attribute=key,
            value=value,
        )


def check_flush(session: ShardedSession, flush_context: Any, instances: Any) -> None:
    """before_flush in declarative mode: place every new object, refuse shard moves.

    Everything is checked before the flush emits any SQL, so a bad object
    leaves every shard untouched and the session as it was.
    """
    for obj in session.new:
        state = inspect(obj)
        if EXPLICIT_SHARD not in state.info:
            state.identity_token = None  # recomputed below from current values
    for obj in session.new:
        state = inspect(obj)
        route = session.place(state)
        state.identity_token = route.shards[0]
        session.record_route(route, label=f"INSERT {state.mapper.local_table.name}")
    for obj in session.dirty:
        state = inspect(obj)
        if state.key is None or not session.is_modified(obj, include_collections=False):
            continue
        _refuse_shard_move(session, state)


def _refuse_shard_move(session: ShardedSession, state: InstanceState[Any]) -> None:
    rule = session.rule_of(state.mapper)
    if rule is None:
        return
    current = state.key[2] if state.key else None
    attribute = rule.attribute if isinstance(rule, KeyRule) else rule.relationship.key
    history = state.attrs[attribute].history
    if not history.added or history.unchanged:
        return
    new_value = history.added[0]
    if isinstance(rule, KeyRule):
        target = rule.shard_for_value(new_value)
    elif new_value is None:
        raise MissingParentError(
            f"{rule.name}.{attribute} was set to None; a {rule.name} must keep a parent to stay on "
            "its shard (delete it instead)",
            model=rule.name,
            relationship=attribute,
        )
    else:
        parent_state = inspect(new_value)
        target = parent_state.key[2] if parent_state.key else session.place(parent_state).shards[0]
    if target != current:
        old = history.deleted[0] if history.deleted else "<unloaded>"
        raise ShardKeyChangeError(
            f"{rule.name}.{attribute} changed from {old!r} to {new_value!r}, which moves the row "
            f"from shard {current!r} to {target!r}; moving rows between shards is not supported "
            "yet (delete the row and insert a new one)",
            model=rule.name,
            attribute=attribute,
            value=new_value,
        )
