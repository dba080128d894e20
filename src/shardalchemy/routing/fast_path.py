"""The single-shard fast path: ``shard_key = :value`` compiled to one small function.

One function of (the cache key's binds, the execution's parameters) that
returns the one shard, or ``None`` when it cannot decide alone.  ``None`` is
not a verdict: :meth:`Router.route` then decides, so the fast path only has
to agree with ``route()`` when it does return a shard (a property the tests
check on generated statements).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.sql.elements import (
    BindParameter,
)

from ..sharding.strategies import ShardName
from .predicates import And, In, Node, Unknown

# The fast path of the common route, ``shard_key = :value`` (possibly ANDed with
# predicates that do not prune): one function of (the cache key's binds, the
# execution's parameters) that returns the one shard, or None when it cannot
# decide alone.  None is not a verdict: Router.route() then decides, so the
# fast path only has to agree with route() when it does return a shard.
SingleShard = Callable[[Sequence[BindParameter[Any]], Mapping[str, Any]], ShardName | None]


def single_shard_function(node: Node) -> SingleShard | None:
    """The fast path of ``node``, or None if its shape has none."""
    if isinstance(node, In):
        return _single_equality(node)
    if isinstance(node, And):
        picks: list[SingleShard] = []
        for child in node.children:
            if isinstance(child, Unknown):
                continue  # allows every shard: nothing to intersect
            pick = single_shard_function(child)
            if pick is None:
                return None  # a child that may narrow to no shard: route() decides
            picks.append(pick)
        if not picks:
            return None
        if len(picks) == 1:
            return picks[0]

        def intersection(
            binds: Sequence[BindParameter[Any]], parameters: Mapping[str, Any]
        ) -> ShardName | None:
            chosen = None
            for pick in picks:
                shard = pick(binds, parameters)
                if shard is None or (chosen is not None and shard != chosen):
                    return None  # undecided, or an empty intersection
                chosen = shard
            return chosen

        return intersection
    return None


def _single_equality(node: In) -> SingleShard | None:
    """``key = :value`` as one closure: _Values.value + _In.shards, for one value."""
    if node.is_list or node.tuple_index is not None or len(node.operand) != 1:
        return None
    if len(node.targets) != 1:
        return None
    (reference,) = node.operand
    position, fixed_bind = reference.position, reference.bind
    # one precomputed function per column: the canonical form, then the strategy
    canonical = node.targets[0].canonical
    shard_for = node.targets[0].strategy.shard_for

    def equality(
        binds: Sequence[BindParameter[Any]], parameters: Mapping[str, Any]
    ) -> ShardName | None:
        bind = binds[position] if position >= 0 else fixed_bind
        key = bind.key
        if key in parameters:
            value = parameters[key]
        elif parameters or (bind.callable is None and bind.value is None and bind.required):
            return None  # perhaps given under another name, or not at all
        else:
            value = bind.effective_value  # a value in the statement
        if value is None:
            return None  # "= NULL" matches no row
        try:
            # the stored values "= value" matches, as the strategy knows them
            return shard_for(canonical(value))
        except Exception:  # a refused value proves nothing; a failing user strategy neither
            return None

    return equality
