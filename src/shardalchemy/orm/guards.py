"""Write guards: nothing may change the value that decides a row's shard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import inspect
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from .._sqlalchemy import dml, elements
from ..errors import MissingParentError, ShardingError, ShardKeyChangeError
from ..options import EXPLICIT_SHARD
from ..sharding.rules import FollowRule, KeyRule, Rule
from ..writes.routing import ParentShards

if TYPE_CHECKING:
    from .session import ShardedSession


def refuse_shard_key_assignment(
    session: ShardedSession, orm_context: ORMExecuteState, explicit: tuple[Any, str] | None
) -> None:
    """An UPDATE may not set what decides a row's shard to a value of another shard.

    It would leave the rows it changes misplaced.  Allowed only when every
    value assigned (a shard key, or a follower's foreign key) belongs on one
    shard and the UPDATE reaches that shard only: by its route, or by the
    shard it is pinned to (``explicit``).  A value that cannot be decided (an
    SQL expression, part of a composite foreign key) is refused.
    """
    assert session.rules is not None
    statement = orm_context.statement
    table = getattr(statement, "table", None)
    rule = session.rules.for_table(elements.plain(table)) if table is not None else None
    if rule is None:
        return
    protected = rule.protected_names()
    in_statement: dict[str, Any] = {}
    for column, value in dml.dml_assignments(statement):
        key = column if isinstance(column, str) else getattr(column, "key", None)
        if key in protected:
            in_statement[key] = value
    parameters = orm_context.parameters
    parameter_sets = [parameters] if isinstance(parameters, Mapping) else list(parameters or ())
    bound: set[str] = set()
    if parameter_sets:
        # execute-time parameters named like a column become SET clauses,
        # unless the statement has a bound parameter of that name
        bound = {
            element.key
            for element in visitors.iterate(cast(Any, statement))
            if isinstance(element, BindParameter)
        }
    assignments: list[dict[str, Any]] = []
    for parameter_set in parameter_sets or [{}]:
        assigned = {key: _literal(value, parameter_set) for key, value in in_statement.items()}
        for key, value in parameter_set.items():
            if key in protected and key not in bound:
                assigned[key] = value
        if assigned:
            assignments.append(assigned)
    if not assignments:
        return
    targets = {_target_shard(session, rule, assigned) for assigned in assignments}
    if len(targets) == 1 and None not in targets:
        (target,) = targets
        if explicit is not None:
            reached: tuple[Any, ...] = (explicit[0],)
        else:
            assert session.shard_map is not None
            reached = session.shard_map.router.route(statement, parameters).shards
        if set(reached) == {target}:
            return  # every row it changes is on the shard its new value belongs on
    key, value = next(iter(assignments[0].items()))
    value = value if value is not _UNDECIDED else in_statement.get(key)
    raise ShardKeyChangeError(
        f"UPDATE of {rule.name} sets {protected[key]} to {value!r}, which would move rows "
        "between shards; that is not supported (delete the rows and insert new ones "
        "instead)",
        model=rule.name,
        attribute=key,
        value=value,
    )


_UNDECIDED: Any = object()  # an assigned value that is an SQL expression, not a value


def _literal(value: Any, parameters: Mapping[str, Any]) -> Any:
    """The Python value an UPDATE assigns, or ``_UNDECIDED`` for an SQL expression."""
    if isinstance(value, BindParameter):
        if value.key in parameters:
            return parameters[value.key]
        if value.callable is not None:
            return value.callable()
        return value.value
    if isinstance(value, ClauseElement):
        return _UNDECIDED
    return value


def _target_shard(session: ShardedSession, rule: Rule, assigned: Mapping[str, Any]) -> Any:
    """The shard rows with the ``assigned`` values belong on, or ``None`` if it cannot be told."""
    if any(value is _UNDECIDED for value in assigned.values()):
        return None
    try:
        if isinstance(rule, KeyRule):
            value = assigned.get(rule.attribute, assigned.get(str(rule.column.key), _UNDECIDED))
            return None if value is _UNDECIDED else rule.shard_for_value(value)
        values = []
        for local, _ in rule.relationship.local_remote_pairs or ():
            attribute = rule.relationship.parent.get_property_by_column(local).key
            value = assigned.get(attribute, assigned.get(str(local.key), _UNDECIDED))
            if value is _UNDECIDED or value is None:
                return None  # part of a composite key, or no parent: refused
            values.append(value)
        return ParentShards(session, rule, pending=True).shard_of(tuple(values))
    except ShardingError:
        return None


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
        refuse_shard_move(session, state)


def refuse_shard_move(session: ShardedSession, state: InstanceState[Any]) -> None:
    """Refuse a change of a stored object that would put its row on another shard.

    A sharded object's shard key; a follower's parent, whether its
    relationship or its foreign key was assigned (the parent need not be
    loaded: it is found by the key, its shard-aware ID, the session or a
    lookup).  A change that keeps the shard is fine.
    """
    rule = session.rule_of(state.mapper)
    if rule is None:
        return
    current = state.key[2] if state.key else None
    if isinstance(rule, KeyRule):
        history = state.attrs[rule.attribute].history
        if not history.added or history.unchanged:
            return
        attribute, new_value = rule.attribute, history.added[0]
        old = history.deleted[0] if history.deleted else "<unloaded>"
        target = rule.shard_for_value(new_value)
    else:
        moved = _new_parent_shard(session, state, rule)
        if moved is None:
            return
        attribute, old, new_value, target = moved
    if target != current:
        raise ShardKeyChangeError(
            f"{rule.name}.{attribute} changed from {old!r} to {new_value!r}, which moves the row "
            f"from shard {current!r} to {target!r}; moving rows between shards is not supported "
            "yet (delete the row and insert a new one)",
            model=rule.name,
            attribute=attribute,
            value=new_value,
        )


def _new_parent_shard(
    session: ShardedSession, state: InstanceState[Any], rule: FollowRule
) -> tuple[str, Any, Any, Any] | None:
    """(attribute, old value, new value, new shard) of a follower whose parent changed, or None.

    The relationship decides when it was assigned (the flush copies its
    parent's key into the foreign key); else the foreign key, when it was.
    """
    relationship = rule.relationship
    history = state.attrs[relationship.key].history
    if history.added and not history.unchanged:
        new_value = history.added[0]
        if new_value is None:
            raise MissingParentError(
                f"{rule.name}.{relationship.key} was set to None; a {rule.name} must keep a "
                "parent to stay on its shard (delete it instead)",
                model=rule.name,
                relationship=relationship.key,
            )
        parent_state = inspect(new_value)
        if parent_state.key is not None:
            target = parent_state.key[2]
        else:
            target = session.place(parent_state).shards[0]
        old = history.deleted[0] if history.deleted else "<unloaded>"
        return relationship.key, old, new_value, target
    changed: tuple[str, Any, Any] | None = None
    attributes = []
    for local, _ in relationship.local_remote_pairs or ():
        attribute = state.mapper.get_property_by_column(local).key
        attributes.append(attribute)
        column_history = state.attrs[attribute].history
        if changed is None and column_history.added and not column_history.unchanged:
            old = column_history.deleted[0] if column_history.deleted else "<unloaded>"
            changed = (attribute, old, column_history.added[0])
    if changed is None:
        return None
    attribute, old, new_value = changed
    with session.no_autoflush:
        values = tuple(getattr(state.obj(), name) for name in attributes)
    if any(value is None for value in values):
        raise MissingParentError(
            f"{rule.name}.{attribute} was set to None; a {rule.name} must keep a parent "
            f"({relationship.key}) to stay on its shard (delete it instead)",
            model=rule.name,
            relationship=relationship.key,
        )
    return attribute, old, new_value, ParentShards(session, rule, pending=True).shard_of(values)
