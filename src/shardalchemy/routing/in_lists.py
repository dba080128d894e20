"""A shard-key ``IN`` list, split by shard: each shard is sent only the values that route to it.

``key IN (v1, ..., vn)`` reaches the shards of its values; sending every shard
the whole list costs each shard all ``n`` binds, and past the database's bind
limit (PostgreSQL: 65,535 per statement) the statement fails.  When the ``IN``
is a top-level conjunct of the WHERE clause (``... AND key IN (...) AND ...``),
a row on shard ``S`` can only match a value whose canonical form routes to
``S``: the database calls two values equal only when their canonical forms are
equal (:mod:`shardalchemy.sharding.canonical`: the forms are equal or coarser
than the database's equality), and a row lives on the shard of its stored
key's form.  So ``S`` needs only those values (:meth:`InList.by_shard`).

For the same reason the values of one shard may be cut into several
statements (batches, :mod:`shardalchemy.planning.in_lists`) whose rows are
disjoint, as long as every representation of one canonical form stays in one
batch: a row then matches the values of exactly one batch, so the batches'
rows are combined as the shards' are.  :meth:`InList.by_shard` returns the
values grouped by canonical form for that.

The shape (which conjunct, which binds) is found once per statement shape
(:func:`in_list_shape`, cached in the router's shape); each execution only
reads its values (:class:`InList`).

Example (``shard_map.router`` routes the weather world's ``City`` by continent):

>>> statement = select(City).where(City.continent.in_(["Europe", "Asia", "Europe", None]))
>>> route = shard_map.router.route(statement)
>>> route.shards
('asia', 'europe')
>>> route.in_list.by_shard(route.shards)  # one group per canonical form, duplicates dropped
{'europe': [['Europe']], 'asia': [['Asia']]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy.sql.elements import BindParameter

from ..sharding.strategies import ShardName
from .predicates import MISSING, And, BindRef, In, Node, Values


@dataclasses.dataclass(frozen=True)
class InListShape:
    """What one statement shape's expanding ``IN`` binds are, found once per shape.

    ``node`` is the shard-key ``IN`` whose values may be split by shard (a
    top-level conjunct of the WHERE clause, one expanding bind used nowhere
    else, one shard-key column), or ``None`` with ``why_not`` saying why.
    ``expanding`` are the positions (in the cache key's bind list) of every
    expanding bind, ``fixed`` the number of other binds: the statement's binds
    are ``fixed`` plus the lengths of the expanding ones' lists.
    """

    node: In | None
    why_not: str
    expanding: tuple[int, ...]
    fixed: int


def in_list_shape(
    predicate: Node | None, binds: Sequence[BindParameter[Any]]
) -> InListShape | None:
    """The ``IN`` lists of a statement whose WHERE analysed into ``predicate``.

    ``None`` when the statement has no expanding bind (no list to count or split).
    """
    expanding = tuple(index for index, bind in enumerate(binds) if bind.expanding)
    if not expanding:
        return None
    fixed = len(binds) - len(expanding)
    candidates = [node for node in _conjuncts(predicate) if isinstance(node, In)]
    why_not = "the shard key's IN list is not a top-level AND conjunct of the WHERE clause"
    for node in sorted(candidates, key=lambda node: not node.is_list):
        if not node.is_list or len(node.operand) != 1:
            why_not = "the shard key's IN list is not one list of values"
            continue
        if len(node.targets) != 1:
            why_not = "the IN compares a column made of several shard-key columns"
            continue
        reference = node.operand[0]
        if reference.position < 0:
            why_not = "the IN list's bind is not in the statement's cache key"
            continue
        key = binds[reference.position].key
        if sum(1 for bind in binds if bind.key == key) != 1:
            why_not = f"the IN list's parameter {key!r} is used elsewhere in the statement too"
            continue
        return InListShape(node, "", expanding, fixed)
    return InListShape(None, why_not, expanding, fixed)


def _conjuncts(node: Node | None) -> Iterator[Node]:
    """The top-level AND conjuncts of a WHERE clause's predicate tree."""
    if node is None:
        return
    if isinstance(node, And):
        for child in node.children:
            yield from _conjuncts(child)
    else:
        yield node


class InList:
    """One execution's ``IN`` lists: their bind count, and the split one's values by shard.

    ``bind_key`` is the splittable list's bind parameter key and ``given`` whether
    the execution's parameters hold it (else the statement does).
    """

    __slots__ = ("binds", "parameters", "shape")

    def __init__(
        self,
        shape: InListShape,
        binds: Sequence[BindParameter[Any]],
        parameters: Mapping[str, Any],
    ) -> None:
        self.shape = shape
        self.binds = binds
        self.parameters = parameters

    @property
    def splittable(self) -> bool:
        """Whether one shard-key ``IN`` list may be split by shard and into batches."""
        return self.shape.node is not None

    @property
    def why_not(self) -> str:
        return self.shape.why_not

    @property
    def bind_key(self) -> str:
        node = self.shape.node
        assert node is not None
        return str(self.binds[node.operand[0].position].key)

    @property
    def given(self) -> bool:
        return self.bind_key in self.parameters

    def _list(self, reference: BindRef) -> list[Any] | None:
        value = Values(self.binds, self.parameters).value(reference)
        if value is MISSING or value is None:
            return None
        return list(value)

    def values(self) -> list[Any] | None:
        """The split list's values as given (``None``: not known here)."""
        node = self.shape.node
        if node is None:
            return None
        return self._list(node.operand[0])

    def bind_count(self) -> int | None:
        """The binds the statement sends: its plain binds plus every list's values.

        ``None`` when a list's values are not known here (given under another name).
        """
        count = self.shape.fixed
        for position in self.shape.expanding:
            values = self._list(BindRef(position, self.binds[position]))
            if values is None:
                return None
            count += len(values)
        return count

    def by_shard(self, shards: Sequence[ShardName]) -> dict[ShardName, list[list[Any]]] | None:
        """The split list's values each of ``shards`` needs, grouped by canonical form.

        Each group holds the distinct representations of one canonical form, in
        the order first given; NULLs are dropped (``IN (NULL)`` matches no row).
        ``None`` when the values cannot be split: one whose canonical form or
        shard is not known (it may match rows on any shard), or values not
        known here.  A shard none of the values route to gets no group.
        """
        node = self.shape.node
        values = self.values()
        if node is None or values is None:
            return None
        (target,) = node.targets
        canonical = target.canonical
        shard_for = target.strategy.shard_for
        index = node.tuple_index
        wanted = set(shards)
        groups: dict[Any, list[Any]] = {}
        seen: dict[Any, set[Any]] = {}
        shard_of_group: dict[Any, ShardName] = {}
        for value in values:
            key = value[index] if index is not None else value
            if key is None:
                continue  # "= NULL" matches no row
            try:
                form = canonical(key)
                shard = shard_for(form)
            except Exception:  # a refused value, or a failing user strategy: no proof
                return None
            if shard is None:
                return None
            try:
                group = groups[form]
            except KeyError:
                group = groups[form] = []
                seen[form] = set()
                shard_of_group[form] = shard
            except TypeError:  # an unhashable form: nothing proves which rows it matches
                return None
            try:
                identity = (type(value), value)
                if identity in seen[form]:
                    continue  # the same value twice: one bind is enough
                seen[form].add(identity)
            except TypeError:
                pass  # an unhashable value: kept, as given
            group.append(value)
        split: dict[ShardName, list[list[Any]]] = {}
        for form, group in groups.items():
            shard = shard_of_group[form]
            if shard in wanted:
                split.setdefault(shard, []).append(group)
        return split
