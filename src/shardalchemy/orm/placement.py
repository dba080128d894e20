"""Where objects go: new objects placed by their shard key or parent, identities looked up."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import RelationshipProperty

from .._sqlalchemy import elements
from ..sharding.rules import FollowRule

if TYPE_CHECKING:
    from .session import ShardedSession
from sqlalchemy import inspect
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.state import InstanceState

from ..errors import MissingParentError, RoutingError, ShardingError
from ..ids.columns import generator_of
from ..options import EXPLICIT_SHARD
from ..routing.route import Route
from ..sharding.rules import KeyRule
from ..writes.routing import ParentShards


def shard_for_instance(session: ShardedSession, mapper: Any, instance: Any) -> str:
    """shard_chooser of declarative mode: the shard of a (new) object."""
    if instance is None:
        name = mapper.class_.__name__ if isinstance(mapper, Mapper) else "this statement"
        raise RoutingError(
            f"no object to choose a shard for {name}; pass the shard explicitly "
            "(bind_arguments={'shard_id': ...} or set_shard_id(...))"
        )
    return place(session, inspect(instance)).shards[0]


def place(session: ShardedSession, state: InstanceState[Any]) -> Route:
    """Where a pending object goes, and why; raises a clear error if nowhere."""
    mapper = state.mapper
    name = mapper.class_.__name__
    explicit = state.info.get(EXPLICIT_SHARD)
    if explicit is not None:
        session.check_shard(explicit, f"assign_shard() of a {name}")
    rule = session.rule_of(mapper)
    if rule is None:
        if explicit is not None:
            return Route((explicit,), f"{name} assigned to {explicit} explicitly")
        assert session.rules is not None
        home = session.rules.unsharded(name).home
        if home is not None:
            return Route((home,), f"{name} is not sharded; its one table is reached via {home}")
        raise RoutingError(
            f"{name} is not sharded and every shard has its own {name} table; give {name} "
            "a __sharding__ declaration or call shardalchemy.assign_shard(obj, shard) "
            "before flush"
        )
    if isinstance(rule, KeyRule):
        value = getattr(state.obj(), rule.attribute)
        shard = session.check_shard(
            rule.shard_for_value(value), f"the strategy of {rule.name}.{rule.attribute}"
        )
        reason = f"{rule.name}.{rule.attribute} = {value!r} -> {shard} ({rule.strategy.describe()})"
    else:
        shard, parent_reason = _parent_shard(session, state, rule)
        reason = f"{name} follows {rule.relationship.key}: {parent_reason}"
    if explicit is not None and explicit != shard:
        raise RoutingError(
            f"{name} was assigned to shard {explicit!r} but its shard key selects {shard!r}"
        )
    return Route((shard,), reason)


def _parent_shard(
    session: ShardedSession, state: InstanceState[Any], rule: FollowRule
) -> tuple[str, str]:
    relationship = rule.relationship
    parent = state.dict.get(relationship.key)
    if parent is None:
        parent = _parent_by_foreign_key(session, state, rule)
    parent_state = inspect(parent)
    if parent_state.key is not None:
        token = parent_state.key[2]
        return token, f"{type(parent).__name__} is stored on {token}"
    route = place(session, parent_state)
    parent_state.identity_token = route.shards[0]
    return route.shards[0], route.reason


def _parent_by_foreign_key(
    session: ShardedSession, state: InstanceState[Any], rule: FollowRule
) -> Any:
    relationship = rule.relationship
    name = rule.name
    mapper = state.mapper
    obj = state.obj()
    key = {
        elements.plain(remote): getattr(obj, mapper.get_property_by_column(local).key)
        for local, remote in relationship.local_remote_pairs
    }
    parent_mapper = relationship.mapper
    identity = [key.get(elements.plain(column)) for column in parent_mapper.primary_key]
    if any(value is None for value in identity):
        raise MissingParentError(
            f"{name}.{relationship.key} is None; a {name} lives on its "
            f"{parent_mapper.class_.__name__}'s shard, so it needs one (set "
            f"{name}.{relationship.key} or its foreign key)",
            model=name,
            relationship=relationship.key,
        )
    # a parent added in this session and not flushed yet: the flush inserts it first
    parent = ParentShards(session, rule).pending_parent(
        tuple(key.get(elements.plain(remote)) for _, remote in relationship.local_remote_pairs)
    )
    if parent is None:
        with session.no_autoflush:
            parent = session.get(parent_mapper, identity)
    if parent is None:
        raise MissingParentError(
            f"{name}.{relationship.key} refers to {parent_mapper.class_.__name__} "
            f"{tuple(identity)!r}, which is on no shard",
            model=name,
            relationship=relationship.key,
        )
    return parent


def shards_for_identity(
    session: ShardedSession,
    mapper: Any,
    primary_key: Any,
    lazy_loaded_from: InstanceState[Any] | None = None,
) -> Route:
    """identity_chooser of declarative mode: the shards a primary key may be on."""
    every = session.shard_names
    if lazy_loaded_from is not None and lazy_loaded_from.identity_token in every:
        # only an identity-map search: look on the parent's shard first; a
        # miss still loads through the statement router
        token = lazy_loaded_from.identity_token
        others = tuple(shard for shard in every if shard != token)
        return Route((token, *others), f"identity map: {token} (the parent's shard) first")
    for column, value in zip(mapper.primary_key, primary_key, strict=False):
        generator = generator_of(column)
        if generator is not None and generator.encodes_shard and value is not None:
            try:
                shard = generator.shard_of(value)
            except ShardingError:
                continue  # not one of its IDs: search everywhere
            if shard in every:
                return Route((shard,), f"{mapper.class_.__name__} ID {value!r} -> {shard}")
    rule = session.rule_of(mapper)
    if isinstance(rule, KeyRule):
        for column, value in zip(mapper.primary_key, primary_key, strict=False):
            if elements.plain(column) is elements.plain(rule.column) and value is not None:
                shard = rule.strategy.shard_for(value)
                if shard is not None:
                    return Route(
                        (shard,),
                        f"primary key {rule.name}.{rule.attribute} = {value!r} -> {shard}",
                    )
    return Route(
        every,
        f"the primary key of {mapper.class_.__name__} does not carry its shard; all shards",
    )


def _join_columns(relationship: RelationshipProperty[Any]) -> frozenset[Any]:
    return frozenset(
        elements.plain(column) for pair in relationship.local_remote_pairs or () for column in pair
    )


def colocated(session: ShardedSession, relationship: Any) -> bool:
    """Whether a relationship joins rows that always live on the same shard.

    True for the relationship a follower follows, and for any relationship
    over the same join columns (its reverse, a viewonly copy).
    """
    if not isinstance(relationship, RelationshipProperty):
        return False
    columns = _join_columns(relationship)
    for mapper in (relationship.parent, relationship.mapper):
        rule = session.rule_of(mapper)
        if isinstance(rule, FollowRule) and _join_columns(rule.relationship) == columns:
            return True
    return False
