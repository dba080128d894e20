"""A plan in progress: what each rewrite reads and changes, and how it becomes a :class:`Plan`.

The rewrites (:mod:`.rewrites`, applied in the order of
:data:`~.planner.REWRITES`) each take a :class:`Draft` and return it
rewritten: the statement each shard runs, the per-shard row's
:class:`~.columns.Columns`, and the merge operators, each in its place in
SQL's order (GROUP BY, the select list's expressions, HAVING, DISTINCT,
ORDER BY, LIMIT) whatever the order the rewrites run in.
:meth:`Draft.finish` stacks those operators, bottom up, into the plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

from sqlalchemy import CompoundSelect
from sqlalchemy.sql.selectable import Exists, ScalarSelect

from .._sqlalchemy import selects
from ..merge.aggregate import Aggregate
from ..merge.combine import Combiner, Concatenate
from ..merge.keys import Row
from ..merge.steps import Compute, Distinct, Filter, Limit, Sort, Step
from .aggregates import Aggregates
from .columns import Columns
from .expressions import contains_aggregate, strip
from .facts import DatabaseFacts
from .plan import Plan
from .refusals import refuse

Shape = Literal["rows", "grouped", "union", "exists"]
"""What the statement is, to the rewrites: rows as they are; GROUP BY or aggregates; a
UNION; a SELECT of EXISTS (...) without FROM."""


@dataclasses.dataclass(eq=False)
class Draft:
    """A multi-shard SELECT being planned: the rewrites change it, :meth:`finish` ends it.

    >>> from shardalchemy.planning import DatabaseFacts
    >>> draft = Draft.of(select(City.name).limit(3), DatabaseFacts("sqlite", nulls_high=False))
    >>> draft.shape, draft.limit
    ('rows', None)
    >>> print(draft.finish())
    Concatenate
    └── each shard: SELECT cities.name FROM cities LIMIT 3
    """

    statement: Any
    """The user's statement, as written (the rewrites read it, never change it)."""
    facts: DatabaseFacts
    parameters: Mapping[str, Any]
    shape: Shape
    columns: Columns
    shard_statement: Any
    """The statement each shard runs, as rewritten so far (hidden columns are added last)."""
    readable: Mapping[Any, Any] = dataclasses.field(default_factory=dict)
    """Entity columns whose values the sort keys read from the loaded rows (see
    :mod:`~.rewrites.hidden_sort_keys`); empty: every key is selected."""

    group_columns: list[int] = dataclasses.field(default_factory=list)
    """The positions of the GROUP BY keys in the per-shard row."""
    aggregates: Aggregates | None = None
    """The aggregates met so far, and where their partials are (a grouped statement)."""

    # the merge operators, bottom-up in SQL's order; each None until a rewrite puts it there
    combiner: Combiner = dataclasses.field(default_factory=Concatenate)
    aggregate: Aggregate | None = None
    computed: list[tuple[int, Callable[[Row], Any], str]] = dataclasses.field(default_factory=list)
    filter: Filter | None = None
    distinct: Distinct | None = None
    sort: Sort | None = None
    limit: Limit | None = None
    row_columns: tuple[Any, ...] = ()

    @classmethod
    def of(
        cls,
        statement: Any,
        facts: DatabaseFacts,
        parameters: Mapping[str, Any] | None = None,
        readable: Mapping[Any, Any] | None = None,
    ) -> Draft:
        """The draft of ``statement`` before any rewrite: its shape, its columns as written."""
        visible: list[Any]
        if isinstance(statement, CompoundSelect):
            shape: Shape = "union"
            visible = list(statement.selected_columns)
        else:
            # a Core table or subquery selected whole is its columns, one result column each
            visible = selects.result_columns(statement)
            if any(isinstance(strip(column), Exists | ScalarSelect) for column in visible) and (
                not statement.get_final_froms()
            ):
                shape = "exists"
            elif (
                selects.group_by(statement)
                or any(contains_aggregate(column) for column in visible)
                or selects.having(statement) is not None
            ):
                shape = "grouped"
            else:
                shape = "rows"
        return cls(
            statement,
            facts,
            parameters or {},
            shape,
            Columns(visible, facts),
            statement,
            readable or {},
        )

    def again(self, readable: Mapping[Any, Any]) -> Draft:
        """A fresh draft of the same statement (no rewrite applied), reading ``readable``."""
        return Draft(
            self.statement,
            self.facts,
            self.parameters,
            self.shape,
            Columns(list(self.columns.visible), self.facts),
            self.statement,
            readable,
        )

    def finish(self) -> Plan:
        """The plan: the per-shard statement with its hidden columns, the operators stacked."""
        columns = self.columns
        steps: list[Step] = []
        if self.aggregate is not None:
            steps.append(self.aggregate)
        if self.computed:
            steps.append(
                Compute(
                    tuple((index, compute) for index, compute, _ in self.computed),
                    tuple(label for _, _, label in self.computed),
                )
            )
        steps.extend(
            step for step in (self.filter, self.distinct, self.sort, self.limit) if step is not None
        )
        shard_statement = self.shard_statement
        if columns.hidden:
            if self.shape == "union":
                # a UNION's rows are its SELECTs' rows: no column can be added to the whole
                raise refuse(
                    "a UNION ordered or made distinct by text under the collation "
                    f"{self.facts.default_collation or 'of the database'}",
                    "its rows would need that collation's sort keys (WEIGHT_STRING), which "
                    "cannot be added to a UNION's rows; use a binary collation "
                    "(e.g. .collate('utf8mb4_bin'))",
                )
            shard_statement = shard_statement.add_columns(*columns.hidden)
        if self.aggregates is not None and self.aggregates.extra_group_by:
            shard_statement = shard_statement.group_by(*self.aggregates.extra_group_by)
        return Plan(
            shard_statement,
            self.combiner,
            tuple(steps),
            len(columns.visible) if columns.hidden or self.row_columns else None,
            self.shape == "rows" and _single_entity(self.statement),
            self.row_columns,
        )


def _single_entity(statement: Any) -> bool:
    descriptions = statement.column_descriptions
    if len(descriptions) != 1:
        return False
    description = descriptions[0]
    return description.get("entity") is not None and description.get("expr") is description.get(
        "entity"
    )
