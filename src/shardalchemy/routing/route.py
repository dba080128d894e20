"""What the router returns: a :class:`Route` (shards and reason) and its reason tree."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..sharding.strategies import ShardName


class Route:
    """Where a statement runs: ``shards`` in shard-map order, and the ``reason``.

    Iterating a route yields its shard names, so a route can be returned
    anywhere SQLAlchemy expects an ``execute_chooser`` result.  ``explanation``
    (when the router made the route) is the reason tree: which predicate
    allowed which shards.  ``plan`` (from :meth:`ShardedSession.explain`, for a
    SELECT on several shards) is the :class:`~shardalchemy.Plan` that
    merges the shards' rows, or ``plan_error`` the
    :class:`~shardalchemy.CrossShardQueryError` running it would raise.
    """

    __slots__ = (
        "_reason",
        "colocation",
        "explanation",
        "in_list",
        "plan",
        "plan_error",
        "scatter",
        "shards",
        "statement",
    )

    def __init__(
        self,
        shards: Sequence[ShardName],
        reason: str | Callable[[], str],
        statement: str = "",
        *,
        explanation: Explanation | None = None,
        scatter: bool = False,
        plan: Any = None,
        plan_error: Exception | None = None,
        colocation: Any = None,
        in_list: Any = None,
    ) -> None:
        self.plan = plan
        self.plan_error = plan_error
        self.shards: tuple[ShardName, ...] = tuple(shards)
        self._reason = reason
        self.statement = statement
        self.explanation = explanation
        self.scatter = scatter
        """True when the router could not prune: the statement reaches every shard."""
        self.colocation = colocation
        """What proved that the rows the statement combines live on one shard (or why
        nothing did): a :class:`~shardalchemy.routing.colocation.Colocation`, when the
        router analysed the statement."""
        self.in_list = in_list
        """The statement's expanding ``IN`` lists in this execution, when it has any: an
        :class:`~shardalchemy.routing.in_lists.InList`, which counts their binds and splits
        the shard key's list by shard."""

    @property
    def reason(self) -> str:
        """Why these shards, in words (computed on first use)."""
        if not isinstance(self._reason, str):
            self._reason = self._reason()
        return self._reason

    def labelled(self, statement: str) -> Route:
        """This route, described as a route of ``statement``."""
        return Route(
            self.shards,
            self._reason,
            statement,
            explanation=self.explanation,
            scatter=self.scatter,
            plan=self.plan,
            plan_error=self.plan_error,
            colocation=self.colocation,
            in_list=self.in_list,
        )

    def __iter__(self) -> Iterator[ShardName]:
        return iter(self.shards)

    def __len__(self) -> int:
        return len(self.shards)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Route):
            return NotImplemented
        return (self.shards, self.reason, self.statement) == (
            other.shards,
            other.reason,
            other.statement,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        label = f" {self.statement}" if self.statement else ""
        return f"<Route{label} -> {', '.join(map(str, self.shards))}: {self.reason}>"


@dataclasses.dataclass
class Explanation:
    """One node of a route's reason tree.

    ``shards`` is the set the node allows, or ``None`` for "cannot prune".
    """

    text: str
    shards: frozenset[ShardName] | None
    children: list[Explanation] = dataclasses.field(default_factory=list)

    def lines(self, indent: str = "") -> list[str]:
        """The tree as indented text lines."""
        allowed = "all shards" if self.shards is None else ", ".join(sorted(map(str, self.shards)))
        result = [f"{indent}{self.text} -> {allowed or 'no shard'}"]
        for child in self.children:
            result.extend(child.lines(indent + "  "))
        return result

    def __str__(self) -> str:
        return "\n".join(self.lines())
