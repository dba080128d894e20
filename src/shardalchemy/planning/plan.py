"""A plan: the statement each shard runs, and the merge operators above it."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..merge.combine import Combiner, Concatenate
from ..merge.description import Description, node
from ..merge.keys import Row
from ..merge.steps import Step, run


@dataclasses.dataclass(frozen=True)
class Plan:
    """How to run a multi-shard SELECT: ``statement`` on each shard, then merge.

    ``combiner`` joins the shards' row streams (shard after shard, or a
    k-way merge), ``steps`` run over the combined rows in order; ``visible``
    is the number of the user's columns when hidden ones were added (they
    are stripped from the result), else ``None``.  ``str(plan)`` is the
    operator tree, as :meth:`ShardedSession.explain` shows it;
    :meth:`describe` is the same tree as plain data.
    """

    statement: Any
    combiner: Combiner
    steps: tuple[Step, ...]
    visible: int | None
    single_entity: bool = False
    row_columns: tuple[Any, ...] = ()
    """Sort keys read from the rows the ORM loads its entities from, not selected again.

    Appended after the statement's own columns in each row; a second copy of
    an entity's column would cost the database a projection of every row
    it scans (PostgreSQL: ~40% of an unindexed top-k).  Where the rows
    cannot be read (see :func:`shardalchemy.results.rows_with_columns`), the
    session runs ``fallback`` instead, which selects them as hidden columns.
    """
    fallback: Plan | None = None

    @property
    def merges(self) -> bool:
        """Whether the plan does more than concatenate the shards' rows."""
        return bool(self.steps) or not isinstance(self.combiner, Concatenate)

    def merge(self, streams: Sequence[Iterator[Row]]) -> Iterator[Row]:
        """The user's rows from the shards' row streams (tuples in the per-shard layout)."""
        return run(self.combiner, self.steps, streams)

    def describe(self, shards: Iterable[Any] = ()) -> Description:
        """The operator tree as plain data (JSON values): the top operator first.

        Each node is ``{"operator": name, <its parameters>, "children": [...]}``;
        the leaf is the ``Route``: the SQL each of ``shards`` runs, ``visible``
        (the number of the user's columns when hidden ones follow) and the
        ``row_columns`` whose values are read from the loaded rows.

        >>> from shardalchemy.planning import DatabaseFacts, plan_select
        >>> facts = DatabaseFacts("sqlite", nulls_high=False)
        >>> plan = plan_select(select(City.name).order_by(City.name).limit(2), facts)
        >>> tree = plan.describe(["asia", "europe"])
        >>> tree["operator"], tree["limit"], tree["offset"]
        ('Limit', 2, 0)
        >>> [key["label"] for key in tree["children"][0]["keys"]]
        ['cities.name']
        >>> tree["children"][0]["children"][0]
        {'operator': 'Route', 'shards': ['asia', 'europe'], 'sql': 'SELECT cities.name FROM
         cities ORDER BY cities.name LIMIT 2', 'visible': None, 'row_columns': [], 'children': []}
        """
        tree = node(
            "Route",
            (),
            shards=[str(shard) for shard in shards],
            sql=sql_text(self.statement),
            visible=self.visible,
            row_columns=[sql_text(column) for column in self.row_columns],
        )
        tree = self.combiner.description([tree])
        for step in self.steps:
            tree = step.description([tree])
        return tree

    def lines(self) -> list[str]:
        operators_top_down = [step.describe() for step in reversed(self.steps)]
        operators_top_down.append(self.combiner.describe())
        operators_top_down.append(f"each shard: {sql_text(self.statement)}")
        lines: list[str] = []
        for depth, text in enumerate(operators_top_down):
            lines.append(text if depth == 0 else "    " * (depth - 1) + "└── " + text)
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


def sql_text(statement: Any) -> str:
    """The SQL of ``statement`` on one line, with its values where they can be shown."""
    try:
        with warnings.catch_warnings():  # a value given only at execute time renders as NULL
            warnings.simplefilter("error")
            text = str(statement.compile(compile_kwargs={"literal_binds": True}))
    except Exception:  # a value without a literal form: show the placeholders
        try:
            text = str(statement)
        except Exception:  # an element that cannot compile without a dialect
            text = type(statement).__name__
    return " ".join(text.split())
