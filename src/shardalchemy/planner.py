"""The planner: a multi-shard SELECT -> a plan (per-shard statement + merge steps).

Pure: it reads the statement, the sharding rules and a few facts about the
shards' database (how it orders NULLs, how it compares text) and returns a
:class:`Plan`; it never touches a connection.

The plan answers what one database holding every shard's rows would answer:

- ``ORDER BY`` (any keys, ASC/DESC, NULLS FIRST/LAST or the dialect's
  default): each shard sorts, the plan merges the sorted streams; keys that
  are not in the select list become hidden columns, stripped from the result.
- ``LIMIT n OFFSET m``: each shard returns its first ``n + m`` rows, the
  OFFSET is applied after the merge.
- ``count``, ``sum``, ``min``, ``max``, ``avg`` (as SUM and COUNT),
  ``count/sum/avg(DISTINCT x)`` (the distinct values are pushed down as a
  group key), with or without ``GROUP BY``; ``HAVING``, ``ORDER BY`` and
  ``LIMIT`` are applied to the merged groups.
- ``DISTINCT``; ``UNION`` and ``UNION ALL``.

Whatever it cannot answer exactly raises
:class:`~shardalchemy.CrossShardQueryError` naming the construct: window
functions, aggregates it does not know, expressions over aggregates, FOR
UPDATE, INTERSECT/EXCEPT, joins of tables that are not co-located, subqueries
that aggregate or limit sharded rows, and text keys compared under a
collation Python cannot reproduce (MariaDB's default case-insensitive one).

Example::

    plan = plan_select(select(City).order_by(City.name).limit(10), facts, rules)
    print(plan)
    # Limit 10 offset 0
    # └── MergeSort cities.name ASC NULLS FIRST
    #     └── each shard: SELECT ... ORDER BY cities.name LIMIT 10
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import CompoundSelect, Select, literal
from sqlalchemy.sql import operators, sqltypes, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ClauseElement,
    ClauseList,
    ColumnElement,
    False_,
    FunctionFilter,
    Grouping,
    Label,
    Null,
    Over,
    True_,
    UnaryExpression,
    WithinGroup,
)
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import Exists, FromClause, ScalarSelect, SelectBase

from . import _compat
from .errors import CrossShardQueryError
from .merge import (
    Aggregate,
    AggregateSlot,
    Combiner,
    Compute,
    Concatenate,
    Distinct,
    Filter,
    Limit,
    MergeSort,
    Row,
    Sort,
    SortKey,
    Step,
    Transform,
    as_is,
    pad_space,
    run,
)
from .models import FollowRule, RuleBook
from .router import _groups, _tables_of

# aggregates the planner merges; others it refuses (it cannot know every
# user-defined aggregate: these are the ones databases ship)
_MERGEABLE = frozenset({"count", "sum", "min", "max", "avg"})
_UNMERGEABLE = frozenset(
    {
        "array_agg", "string_agg", "group_concat", "json_agg", "jsonb_agg", "json_object_agg",
        "jsonb_object_agg", "json_arrayagg", "json_objectagg", "json_group_array",
        "json_group_object", "xmlagg", "listagg", "bool_and", "bool_or", "every", "bit_and",
        "bit_or", "bit_xor", "stddev", "stddev_pop", "stddev_samp", "std", "variance",
        "var_pop", "var_samp", "median", "mode", "percentile_cont", "percentile_disc", "corr",
        "covar_pop", "covar_samp", "regr_slope", "regr_intercept", "regr_count", "regr_r2",
        "regr_avgx", "regr_avgy", "regr_sxx", "regr_syy", "regr_sxy", "total", "any_value",
        "range_agg", "range_intersect_agg",
    }
)  # fmt: skip
_WINDOW_ONLY = frozenset(
    {"row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
     "first_value", "last_value", "nth_value"}
)  # fmt: skip
# functions whose result has the type of their (first) argument
_TYPE_OF_ARGUMENTS = frozenset(
    {"abs", "round", "floor", "ceil", "ceiling", "trunc", "truncate", "sign", "mod",
     "greatest", "least", "coalesce", "nullif", "ifnull"}
)  # fmt: skip
_COMPARISONS: dict[Any, Callable[[Any, Any], Any]] = {
    operators.eq: operator.eq,
    operators.ne: operator.ne,
    operators.lt: operator.lt,
    operators.le: operator.le,
    operators.gt: operator.gt,
    operators.ge: operator.ge,
}
_ARITHMETIC: dict[Any, Callable[[Any, Any], Any]] = {
    operators.add: operator.add,
    operators.sub: operator.sub,
    operators.mul: operator.mul,
}
# text collations whose order is code-point order, per dialect family
_BINARY_COLLATIONS = {
    "sqlite": {None, "binary"},
    "postgresql": {"c", "posix", "c.utf-8", "c.utf8", "ucs_basic", "default"},
}

# a hidden column's label, unlikely to meet a user's
_HIDDEN = "_shardalchemy_{}_{}"


@dataclasses.dataclass(frozen=True)
class DatabaseFacts:
    """What the planner must know about the shards' database to merge exactly.

    ``dialect`` is SQLAlchemy's dialect name; ``nulls_high`` whether NULL
    sorts above every value (PostgreSQL; SQLite and MariaDB sort it below);
    ``default_collation`` the database's default text collation (lower case),
    ``None`` for SQLite's BINARY.

    Example::

        DatabaseFacts("postgresql", nulls_high=True, default_collation="c.utf-8")
    """

    dialect: str
    nulls_high: bool
    default_collation: str | None = None

    def text_transform(self, collation: str | None) -> Transform | None:
        """How to compare text under ``collation`` (``None``: the default) like the database.

        Returns a function to apply to values before comparing them, or
        ``None`` when Python cannot reproduce the collation's order.
        """
        name = (collation or self.default_collation or "").lower() or None
        family = "mysql" if self.dialect in ("mysql", "mariadb") else self.dialect
        if family == "mysql":
            if name == "binary" or (name is not None and "_nopad_bin" in name):
                return as_is
            if name is not None and name.endswith("_bin"):
                return pad_space  # binary order, but trailing spaces do not count
            return WEIGHT
            # any other collation: compared by the database's own WEIGHT_STRING()
        if name in _BINARY_COLLATIONS.get(family, ()):
            return as_is
        return None


def _by_weight_string(value: Any) -> Any:
    """Marks text the database must turn into sort keys itself (MariaDB's WEIGHT_STRING)."""
    raise AssertionError("a marker, compared by identity and never applied")


WEIGHT: Transform = _by_weight_string


@dataclasses.dataclass(frozen=True)
class Plan:
    """How to run a multi-shard SELECT: ``statement`` on each shard, then merge.

    ``combiner`` joins the shards' row streams (shard after shard, or a
    k-way merge), ``steps`` run over the combined rows in order; ``visible``
    is the number of the user's columns when hidden ones were added (they
    are stripped from the result), else ``None``.  ``str(plan)`` is the
    operator tree, as :meth:`ShardedSession.explain` shows it.
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
    cannot be read (see :func:`shardalchemy._compat.rows_with_columns`), the
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

    def lines(self) -> list[str]:
        operators_top_down = [step.describe() for step in reversed(self.steps)]
        operators_top_down.append(self.combiner.describe())
        operators_top_down.append(f"each shard: {_sql_text(self.statement)}")
        lines: list[str] = []
        for depth, text in enumerate(operators_top_down):
            lines.append(text if depth == 0 else "    " * (depth - 1) + "└── " + text)
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _sql_text(statement: Any) -> str:
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


def refuse(construct: str, why: str) -> CrossShardQueryError:
    """The error for a construct that cannot be answered exactly across shards."""
    return CrossShardQueryError(
        f"{construct} cannot be answered exactly across shards: {why}. Pin the statement to "
        "one shard (a shard-key predicate or set_shard_id(...)), rewrite it, or ask for "
        "SQLAlchemy's concatenated per-shard results with "
        ".execution_options(cross_shard='concatenate')",
        construct=construct,
    )


def _short(element: Any) -> str:
    text = _sql_text(element) if isinstance(element, ClauseElement) else str(element)
    return text if len(text) <= 60 else text[:57] + "..."


# -- looking at expressions --------------------------------------------------------


def _strip(element: Any) -> Any:
    """``element`` without labels, parentheses and one-element lists.

    (GROUP BY keeps a function as a list of one anonymous label of it.)
    """
    while True:
        if isinstance(element, Label | Grouping):
            element = element.element
        elif isinstance(element, ClauseList) and len(element.clauses) == 1:
            element = element.clauses[0]
        else:
            return element


def _function_name(element: Any) -> str | None:
    if isinstance(element, FunctionElement):
        return str(getattr(element, "name", "")).lower()
    return None


def _arguments(function: Any) -> list[Any]:
    return list(function.clauses.clauses) if getattr(function, "clauses", None) is not None else []


def _is_aggregate(element: Any) -> bool:
    """A call of a mergeable aggregate (``min``/``max`` of two arguments are scalar in SQLite)."""
    name = _function_name(element)
    if name not in _MERGEABLE:
        return False
    return not (name in ("min", "max") and len(_arguments(element)) != 1)


def _shallow(element: Any) -> Iterator[Any]:
    """``element`` and what it contains, without entering subqueries (their own business)."""
    stack = [element]
    while stack:
        inner = stack.pop()
        yield inner
        if inner is not element and isinstance(inner, SelectBase | ScalarSelect | FromClause):
            continue
        stack.extend(inner.get_children())


def _contains_aggregate(element: Any) -> bool:
    return any(
        _is_aggregate(inner) or _function_name(inner) in _UNMERGEABLE for inner in _shallow(element)
    )


def _same_expression(left: Any, right: Any) -> bool:
    return bool(_compat.plain(_strip(left)).compare(_compat.plain(_strip(right))))


def _type_of(element: Any) -> Any:
    """The SQL type of an expression; some functions without one take their arguments'."""
    element = _strip(element)
    type_ = getattr(element, "type", None)
    if not isinstance(type_, sqltypes.NullType):
        return type_
    name = _function_name(element)
    arguments = _arguments(element)
    if name in _MERGEABLE and len(arguments) == 1:
        argument = arguments[0]
        return _type_of(argument.element if _compat.is_distinct(argument) else argument)
    if name in _TYPE_OF_ARGUMENTS and arguments:
        # abs(x), round(x, 2), mod(a, b) ... of numbers are numbers; of anything
        # untyped or textual, unknown (and text keys need more care)
        types = [_type_of(argument) for argument in arguments]
        if all(
            t is not None and not isinstance(t, sqltypes.String | sqltypes.NullType) for t in types
        ):
            return types[0]
    return type_


def _text_like(element: Any) -> bool:
    type_ = _type_of(element)
    return type_ is None or isinstance(type_, sqltypes.String | sqltypes.NullType)


def _explicit_collation(element: Any) -> str | None:
    """A collation named by ``.collate(...)`` or by a String column type inside ``element``."""
    for inner in visitors.iterate(element):
        if isinstance(inner, BinaryExpression) and inner.operator is operators.collate:
            return str(getattr(inner.right, "collation", "")) or None
    for inner in [element, *visitors.iterate(element)]:
        collation = getattr(getattr(inner, "type", None), "collation", None)
        if collation:
            return str(collation)
    return None


class _Builder:
    """Collects hidden columns and slots while one statement is planned."""

    def __init__(
        self,
        statement: Any,
        facts: DatabaseFacts,
        parameters: Mapping[str, Any],
        visible: list[Any] | None = None,
    ):
        self.statement = statement
        self.facts = facts
        self.parameters = parameters
        # the result's columns: the select list as written (a UNION: its selected columns)
        self.visible: list[Any] = _compat.raw_columns(statement) if visible is None else visible
        self.hidden: list[Any] = []
        self.counter = itertools.count()
        self.placeholder_transforms: dict[int, Transform] = {}

    # positions of expressions in the per-shard row
    def width(self) -> int:
        return len(self.visible) + len(self.hidden)

    def visible_index(self, expression: Any) -> int | None:
        for index, column in enumerate(self.visible):
            if not isinstance(column, ColumnElement):
                continue  # an ORM entity: its columns are not one result column
            if _same_expression(column, expression):
                return index
        return None

    def by_label(self, name: str) -> int:
        for index, column in enumerate(self.visible):
            if getattr(column, "name", None) == name or getattr(column, "key", None) == name:
                return index
        raise refuse(f"ORDER BY / GROUP BY {name!r}", "it names no column of the select list")

    def hidden_index(self, expression: Any, kind: str) -> int:
        for index, column in enumerate(self.hidden):
            if _same_expression(column, expression):
                return len(self.visible) + index
        label = _HIDDEN.format(kind, next(self.counter))
        self.hidden.append(_strip(expression).label(label))
        return len(self.visible) + len(self.hidden) - 1

    def index_of(self, expression: Any, kind: str) -> int:
        reference = _compat.label_reference_name(expression)
        if reference is not None:
            return self.by_label(reference)
        expression = _compat.unwrap_label_reference(expression)
        index = self.visible_index(expression)
        return index if index is not None else self.hidden_index(expression, kind)

    def expression_at(self, index: int) -> Any:
        if index < len(self.visible):
            return self.visible[index]
        return self.hidden[index - len(self.visible)]

    def transform(self, expression: Any, what: str) -> Transform:
        """How values of ``expression`` compare in the database; refuses what cannot be told."""
        type_ = _type_of(expression)
        if isinstance(type_, sqltypes.Enum) and (
            self.facts.dialect != "sqlite" and getattr(type_, "native_enum", False)
        ):
            raise refuse(
                f"{what} {_short(expression)}",
                "a native ENUM orders by its declaration order, not by its labels",
            )
        if isinstance(type_, sqltypes.JSON):
            raise refuse(f"{what} {_short(expression)}", "JSON values have no portable order")
        if not _text_like(expression):
            return as_is
        collation = _explicit_collation(expression)
        transform = self.facts.text_transform(collation)
        if transform is None:
            shown = collation or self.facts.default_collation or "the default"
            raise refuse(
                f"{what} {_short(expression)} under collation {shown}",
                "shardalchemy compares text across shards in code-point order and cannot "
                "reproduce this collation; use a binary collation "
                "(e.g. .collate('utf8mb4_bin') on MariaDB, .collate('C') on PostgreSQL)",
            )
        return transform

    def comparison(self, index: int, what: str) -> tuple[int, Transform]:
        """Where to read the comparison form of the column at ``index``, and how to apply it.

        Usually the column itself with a transform; for text under a collation
        Python cannot reproduce, on MariaDB, a hidden ``WEIGHT_STRING()`` column:
        the collation's own sort key, as bytes (Vitess compares the same way).
        """
        expression = _strip(self.expression_at(index))
        transform = self.transform(expression, what)
        if transform is not WEIGHT:
            return index, transform
        length = getattr(_type_of(expression), "length", None)
        if not length:
            raise refuse(
                f"{what} {_short(expression)}",
                "text of no declared length under a collation that is not binary; give the "
                "column a length (String(n)) or a binary collation",
            )
        # padded to its length, as the collation compares (PAD SPACE): 'a' = 'a '
        padded = _compat.function("rpad", expression, length, literal(" "))
        weight = _compat.function("weight_string", padded)
        return self.hidden_index(weight, "weight"), as_is

    def sort_keys(self, clauses: Sequence[Any], resolve: Callable[[Any], int]) -> list[SortKey]:
        keys = []
        for clause in clauses:
            expression, descending, nulls_first = _order_parts(clause)
            if nulls_first is None:
                nulls_first = descending if self.facts.nulls_high else not descending
            index = resolve(expression)
            if index < 0:  # a placeholder: read from the loaded rows (see _plan_rows_with)
                transform = self.placeholder_transforms[index]
            elif not isinstance(self.expression_at(index), ColumnElement):
                raise refuse(f"ORDER BY {_short(expression)}", "it does not name a column")
            else:
                index, transform = self.comparison(index, "ORDER BY")
            keys.append(SortKey(index, descending, nulls_first, transform, _short(expression)))
        return keys

    def limit_offset(self) -> tuple[int | None, int]:
        limit, offset = _compat.limit_offset(self.statement, self.parameters)
        for name, value in (("LIMIT", limit), ("OFFSET", offset)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise refuse(
                    f"{name} {_short(value)}",
                    "across shards LIMIT and OFFSET must be integers (literals or bound values)",
                )
        return limit, offset or 0


def _order_parts(clause: Any) -> tuple[Any, bool, bool | None]:
    """(expression, descending, nulls first or None for the default) of an ORDER BY key."""
    descending = False
    nulls_first: bool | None = None
    element = clause
    while True:
        unwrapped = _compat.unwrap_label_reference(element)
        if unwrapped is not element:  # ORDER BY label.desc() wraps the whole DESC
            element = unwrapped
            continue
        if isinstance(element, UnaryExpression) and element.modifier is not None:
            modifier = element.modifier
            if modifier is operators.desc_op:
                descending = True
            elif modifier is operators.nulls_first_op:
                nulls_first = True
            elif modifier is operators.nulls_last_op:
                nulls_first = False
            elif modifier is not operators.asc_op:
                break
            element = element.element
        elif isinstance(element, Grouping):
            element = element.element
        else:
            break
    return element, descending, nulls_first


# -- what no plan can answer ------------------------------------------------------------


def _check_constructs(statement: Any, rules: RuleBook | None) -> None:
    """Refuse what would make a per-shard answer differ from one database's."""
    if getattr(statement, "_for_update_arg", None) is not None:
        raise refuse(
            "SELECT ... FOR UPDATE",
            "rows locked on several shards in one statement are not one lock; lock per shard",
        )
    # tables of the outer FROM list: a subquery naming one of them is correlated to it
    outer = {
        _compat.plain(table)
        for source in getattr(statement, "get_final_froms", list)()
        for table in _tables_of(source)
    }
    for element in visitors.iterate(statement):
        if isinstance(element, Over):
            raise refuse(
                f"window function {_short(element)}",
                "a window over rows of several shards is computed per shard",
            )
        if isinstance(element, WithinGroup):
            raise refuse(f"ordered-set aggregate {_short(element)}", "it cannot be merged")
        if isinstance(element, FunctionFilter):
            raise refuse(f"aggregate FILTER {_short(element)}", "FILTER is not merged yet")
        name = _function_name(element)
        if name in _UNMERGEABLE:
            raise refuse(f"aggregate {name}()", "shardalchemy does not know how to merge it")
        if name in _WINDOW_ONLY:
            raise refuse(f"window function {name}()", "it is computed per shard")
        if isinstance(element, CompoundSelect) and element is not statement:
            _check_compound_keyword(element)
        if isinstance(element, Select) and element is not statement and rules is not None:
            _check_subquery(element, rules, outer)
    if rules is not None:
        groups = _groups(_tables_of(statement), rules)
        if len(groups) > 1:
            names = sorted(name for tables in groups.values() for name in tables)
            raise refuse(
                f"a statement over {', '.join(names)}",
                "these tables are sharded independently (not co-located), so their rows "
                "meet on no single shard",
            )


def _check_compound_keyword(compound: CompoundSelect) -> None:
    keyword = str(getattr(compound.keyword, "name", compound.keyword)).upper()
    if "INTERSECT" in keyword or "EXCEPT" in keyword:
        raise refuse(
            keyword.replace("_", " "),
            "a row of one side and a row of the other may live on different shards",
        )


def _check_subquery(select: Select[Any], rules: RuleBook, outer: set[Any]) -> None:
    if not any(rules.for_table(table) is not None for table in _tables_of(select)):
        return  # reads no sharded table: the same on every shard
    why = []
    if _compat.group_by(select):
        why.append("GROUP BY")
    if _compat.has_limit_or_offset(select):
        why.append("LIMIT/OFFSET")
    if getattr(select, "_distinct", False):
        why.append("DISTINCT")
    if any(_contains_aggregate(column) for column in _compat.raw_columns(select)):
        why.append("an aggregate")
    if why and not _correlated_colocated(select, rules, outer):
        raise refuse(
            f"a subquery with {' and '.join(why)} ({_short(select)})",
            "it would be computed per shard over that shard's rows only",
        )


def _correlated_colocated(select: Select[Any], rules: RuleBook, outer: set[Any]) -> bool:
    """Whether ``select`` reads only rows co-located with the outer row it is correlated to.

    True when its WHERE requires (AND) a follower's foreign key to equal the
    outer parent's referenced column (``Report.city_id == City.id``, as a
    count of a city's reports is written): those rows live on the outer
    row's shard.
    """
    own = {_compat.plain(table) for table in _tables_of(select)} - outer
    where = getattr(select, "whereclause", None)
    if where is None:
        return False
    for conjunct in _conjuncts(where):
        if not (isinstance(conjunct, BinaryExpression) and conjunct.operator is operators.eq):
            continue
        left, right = _compat.plain(conjunct.left), _compat.plain(conjunct.right)
        tables = (getattr(left, "table", None), getattr(right, "table", None))
        if None in tables or (tables[0] in own) == (tables[1] in own):
            continue
        for table in tables:
            rule = rules.for_table(table)
            if not isinstance(rule, FollowRule):
                continue
            for local, remote in rule.relationship.local_remote_pairs or ():
                pair = {_compat.plain(local), _compat.plain(remote)}
                if pair == {left, right}:
                    return True
    return False


def _conjuncts(clause: Any) -> Iterator[Any]:
    clause = _strip(clause)
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        for inner in clause.clauses:
            yield from _conjuncts(inner)
    else:
        yield clause


# -- planning ---------------------------------------------------------------------------


class Planner:
    """Plans multi-shard SELECTs for one set of sharding rules.

    What the checks for unanswerable constructs find depends only on a
    statement's shape, so it is remembered per SQLAlchemy cache key (at most
    ``cache_size`` shapes); the plan itself is made per execution, from that
    execution's statement and values (a LIMIT, say, is a bound value that
    can differ between two executions of one shape).  Thread-safe.

    Example::

        planner = Planner(rules)
        plan = planner.plan(select(City).order_by(City.name).limit(5), facts)
    """

    def __init__(self, rules: RuleBook | None, cache_size: int = 500) -> None:
        self.rules = rules
        self._checked: dict[Any, CrossShardQueryError | None] = {}
        self._cache_size = cache_size

    def plan(
        self, statement: Any, facts: DatabaseFacts, parameters: Mapping[str, Any] | None = None
    ) -> Plan:
        """The plan of ``statement``; raises CrossShardQueryError if no plan is exact."""
        generate = getattr(statement, "_generate_cache_key", None)
        cache_key = generate() if generate is not None else None
        if cache_key is None:
            return plan_select(statement, facts, self.rules, parameters)
        if cache_key.key in self._checked:
            refusal = self._checked[cache_key.key]
        else:
            try:
                _check_constructs(statement, self.rules)
                refusal = None
            except CrossShardQueryError as error:
                refusal = error
            if len(self._checked) >= self._cache_size:
                self._checked.clear()  # shapes are few in practice; start over
            self._checked[cache_key.key] = refusal
        if refusal is not None:  # a new exception each time: tracebacks do not pile up
            raise CrossShardQueryError(str(refusal), construct=refusal.construct)
        return _plan_checked(statement, facts, parameters or {})


def plan_select(
    statement: Any,
    facts: DatabaseFacts,
    rules: RuleBook | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Plan:
    """Plan a SELECT (or UNION) that runs on several shards.

    ``parameters`` are the execution's parameters (for LIMIT/OFFSET and
    HAVING values given at execute time).  Raises
    :class:`~shardalchemy.CrossShardQueryError` for what it cannot answer.
    """
    _check_constructs(statement, rules)
    return _plan_checked(statement, facts, parameters or {})


def _plan_checked(statement: Any, facts: DatabaseFacts, parameters: Mapping[str, Any]) -> Plan:
    if isinstance(statement, CompoundSelect):
        return _plan_compound(statement, facts, parameters)
    if not isinstance(statement, Select):
        raise refuse(_short(statement), "only SELECT statements are merged across shards")
    if _compat.distinct_on(statement):
        raise refuse("DISTINCT ON", "it is not merged yet")
    for extension in _compat.syntax_extensions(statement):  # e.g. postgresql.distinct_on()
        raise refuse(
            f"the syntax extension {type(extension).__name__}",
            "shardalchemy cannot know what it does to the rows",
        )
    if _compat.fetch_clause(statement):
        raise refuse("FETCH FIRST ... WITH TIES / PERCENT", "it is not merged yet")
    builder = _Builder(statement, facts, parameters)
    if any(isinstance(_strip(column), Exists | ScalarSelect) for column in builder.visible) and (
        not statement.get_final_froms()
    ):
        return _plan_without_from(builder)
    grouped = bool(_compat.group_by(statement)) or any(
        _contains_aggregate(column) for column in builder.visible
    )
    having = _compat.having(statement)
    if grouped or having is not None:
        return _plan_aggregate(builder, having)
    return _plan_rows(builder)


def _plan_without_from(builder: _Builder) -> Plan:
    """SELECT EXISTS (...): every shard answers one row; the answer is whether any said yes."""
    slots = []
    for index, column in enumerate(builder.visible):
        if not isinstance(_strip(column), Exists):
            raise refuse(
                f"the column {_short(column)} of a SELECT without FROM",
                "every shard would answer it once, from its own rows only",
            )
        slots.append(AggregateSlot("any", index, (index,), label=_short(column)))
    aggregate = Aggregate((), tuple(slots), scalar=True, width=len(builder.visible))
    return Plan(builder.statement, Concatenate(), (aggregate,), None)


def _single_entity(statement: Any) -> bool:
    descriptions = statement.column_descriptions
    if len(descriptions) != 1:
        return False
    description = descriptions[0]
    return description.get("entity") is not None and description.get("expr") is description.get(
        "entity"
    )


def _plan_rows(builder: _Builder) -> Plan:
    """Rows as they are: merge-sort, DISTINCT, LIMIT/OFFSET."""
    plan = _plan_rows_with(builder, {})
    entity_columns = _loaded_entity_columns(builder.statement)
    if not entity_columns or not any(
        _compat.plain(_compat.unwrap_label_reference(_order_parts(clause)[0])) in entity_columns
        for clause in _compat.order_by(builder.statement)
    ):
        return plan
    again = _Builder(builder.statement, builder.facts, builder.parameters)
    return dataclasses.replace(_plan_rows_with(again, entity_columns), fallback=plan)


def _loaded_entity_columns(statement: Any) -> dict[Any, Any]:
    """Columns the ORM loads for the entities of ``statement``, readable from its rows.

    Only for plain entities (no aliases), statements without loader options
    (joined eager loading would change the rows) and without DISTINCT.
    """
    if getattr(statement, "_distinct", False) or _compat.statement_options(statement):
        return {}
    columns: dict[Any, Any] = {}
    for description in statement.column_descriptions:
        entity = description.get("entity")
        if entity is None or description.get("expr") is not entity:
            continue
        mapper = getattr(entity, "__mapper__", None)
        if mapper is None or getattr(mapper, "with_polymorphic", None):
            continue
        for prop in mapper.column_attrs:
            if getattr(prop, "deferred", False) or len(prop.columns) != 1:
                continue
            column = prop.columns[0]
            if getattr(column, "table", None) is mapper.local_table:
                columns[_compat.plain(column)] = column
    return columns


def _plan_rows_with(builder: _Builder, readable: dict[Any, Any]) -> Plan:
    """The rows plan; sort keys among ``readable`` columns are read from the loaded rows."""
    statement = builder.statement
    from_rows: list[Any] = []

    def resolve(expression: Any) -> int:
        column = _compat.plain(_compat.unwrap_label_reference(expression))
        if column in readable:
            transform = builder.transform(column, "ORDER BY")
            if transform is not WEIGHT:  # MariaDB's weights must come from SQL
                if column not in from_rows:
                    from_rows.append(column)
                placeholder = -1 - from_rows.index(column)  # placed after the SQL columns
                builder.placeholder_transforms[placeholder] = transform
                return placeholder
        return builder.index_of(expression, "sort")

    keys = builder.sort_keys(_compat.order_by(statement), resolve)
    if from_rows:  # after the statement's own columns, hidden ones included
        width = builder.width()
        keys = [
            dataclasses.replace(key, index=width - 1 - key.index) if key.index < 0 else key
            for key in keys
        ]
    steps: list[Step] = []
    if getattr(statement, "_distinct", False):
        steps.append(_distinct(builder))
    limit, offset = builder.limit_offset()
    shard_statement = statement
    if builder.hidden:
        shard_statement = shard_statement.add_columns(*builder.hidden)
    if limit is not None or offset:
        shard_statement = shard_statement.limit(None if limit is None else limit + offset).offset(
            None
        )
        steps.append(Limit(limit, offset))
    combiner: Combiner = MergeSort(tuple(keys)) if keys else Concatenate()
    return Plan(
        shard_statement,
        combiner,
        tuple(steps),
        len(builder.visible) if builder.hidden or from_rows else None,
        _single_entity(statement),
        tuple(readable[column] for column in from_rows),
    )


def _distinct(builder: _Builder) -> Distinct:
    indices, transforms = [], []
    for index, column in enumerate(list(builder.visible)):
        if isinstance(column, ColumnElement):
            index, transform = builder.comparison(index, "DISTINCT")
        else:
            transform = as_is  # an ORM entity: one object per row identity
        indices.append(index)
        transforms.append(transform)
    return Distinct(tuple(indices), tuple(transforms))


class _Aggregates:
    """The aggregate slots of a grouped statement, and the partial columns they need."""

    def __init__(self, builder: _Builder) -> None:
        self.builder = builder
        self.slots: list[AggregateSlot] = []
        self.expressions: list[Any] = []
        self.extra_group_by: list[Any] = []

    def slot_index(self, aggregate: Any, index: int | None = None) -> int:
        """The row position of ``aggregate``'s final value (``index``: where it is visible).

        A visible aggregate gets a slot of its own at its position even when
        the same aggregate is also elsewhere (selected twice, or hidden for an
        expression): each position must receive the merged value.
        """
        for expression, slot in zip(self.expressions, self.slots, strict=True):
            if _same_expression(expression, aggregate) and index in (None, slot.index):
                return slot.index
        builder = self.builder
        function = _strip(aggregate)
        name = _function_name(function)
        assert name is not None
        arguments = _arguments(function)
        distinct_value = None
        if len(arguments) == 1 and _compat.is_distinct(arguments[0]):
            distinct_value = arguments[0].element
        if index is None:
            index = builder.hidden_index(function, "aggregate")
        label = _short(function)
        division = "postgresql" if builder.facts.dialect == "postgresql" else "like"
        if distinct_value is not None and name in ("count", "sum", "avg"):
            value_index = builder.hidden_index(distinct_value, "distinct")
            self.extra_group_by.append(distinct_value)
            value_index, transform = builder.comparison(value_index, f"{name}(DISTINCT)")
            slot = AggregateSlot(
                f"{name}_distinct", index, (value_index, index), transform, label, division
            )
        elif name == "avg":
            (argument,) = arguments
            # the user's own SUM(x) / COUNT(x) serve as the partials when selected
            total = builder.index_of(_compat.function("sum", argument), "sum")
            count = builder.index_of(_compat.function("count", argument), "count")
            slot = AggregateSlot(
                "avg", index, (total, count, index), label=label, division=division
            )
        elif name in ("min", "max"):
            compared, transform = builder.comparison(index, f"{name}()")
            sources = (index,) if compared == index else (index, compared)
            slot = AggregateSlot(name, index, sources, transform, label)
        else:
            slot = AggregateSlot(name, index, (index,), label=label)
        self.expressions.append(function)
        self.slots.append(slot)
        return index


def _plan_aggregate(builder: _Builder, having: Any) -> Plan:
    """GROUP BY / aggregates: partials per shard, re-aggregated after the merge."""
    statement = builder.statement
    if any(not isinstance(column, ColumnElement) for column in builder.visible):
        raise refuse(
            "an ORM entity in an aggregate query",
            "select the entity's columns instead, or aggregate in a subquery pinned to a shard",
        )
    aggregates = _Aggregates(builder)
    expressions = _Expressions(builder, aggregates)
    computed: list[tuple[int, Callable[[Row], Any]]] = []  # expressions over aggregates
    group_by = list(_compat.group_by(statement))
    group_columns = [builder.index_of(expression, "group") for expression in group_by]
    for index, column in enumerate(builder.visible):  # first the plain aggregates...
        if _is_aggregate(_strip(column)):
            aggregates.slot_index(_strip(column), index)
    for index, column in enumerate(builder.visible):  # ... which expressions may then read
        inner = _strip(column)
        if _is_aggregate(inner):
            continue
        if _contains_aggregate(inner):
            computed.append((index, expressions.compile(inner, "the expression")))
        elif not group_by and _reads_columns(inner):
            raise refuse(
                f"the column {_short(column)} outside an aggregate without GROUP BY",
                "its value would come from an arbitrary shard's row",
            )
    predicate = None
    if having is not None:
        predicate = _Predicate(builder, aggregates).compile(having)

    def resolve(expression: Any) -> int:
        if _compat.label_reference_name(expression) is not None:
            return builder.index_of(expression, "sort")
        expression = _compat.unwrap_label_reference(expression)
        if _is_aggregate(_strip(expression)):
            return aggregates.slot_index(_strip(expression), builder.visible_index(expression))
        if _contains_aggregate(expression):
            index = builder.visible_index(expression)
            if index is None:  # computed into a hidden column of its own
                index = builder.hidden_index(expression, "computed")
                computed.append((index, expressions.compile(expression, "ORDER BY")))
            return index
        return builder.index_of(expression, "sort")

    keys = builder.sort_keys(_compat.order_by(statement), resolve)
    comparisons = [builder.comparison(index, "GROUP BY") for index in group_columns]
    group_indices = [index for index, _ in comparisons]
    group_transforms = tuple(transform for _, transform in comparisons)
    steps: list[Step] = [
        Aggregate(
            tuple(group_indices),
            tuple(aggregates.slots),
            scalar=not group_by,
            group_transforms=group_transforms,
            group_labels=tuple(_short(expression) for expression in group_by),
            width=builder.width(),
        )
    ]
    if computed:
        steps.append(Compute(tuple(computed)))
    if predicate is not None:
        steps.append(Filter(predicate, f"HAVING {_short(having)}"))
    if getattr(statement, "_distinct", False):
        steps.append(_distinct(builder))
    limit, offset = builder.limit_offset()
    if keys:
        steps.append(Sort(tuple(keys), None if limit is None else limit + offset))
    if limit is not None or offset:
        steps.append(Limit(limit, offset))
    shard_statement = _compat.without_having(statement).order_by(None).limit(None).offset(None)
    if builder.hidden:
        shard_statement = shard_statement.add_columns(*builder.hidden)
    if aggregates.extra_group_by:
        shard_statement = shard_statement.group_by(*aggregates.extra_group_by)
    return Plan(
        shard_statement,
        Concatenate(),
        tuple(steps),
        len(builder.visible) if builder.hidden else None,
    )


def _reads_columns(element: Any) -> bool:
    return any(
        isinstance(inner, ColumnElement) and getattr(inner, "table", None) is not None
        for inner in _shallow(element)
    )


class _Predicate:
    """HAVING compiled to a Python function of a merged row, in SQL's three-valued logic."""

    def __init__(self, builder: _Builder, aggregates: _Aggregates) -> None:
        self.builder = builder
        self.aggregates = aggregates

    def compile(self, clause: Any) -> Callable[[Row], Any]:
        clause = _strip(clause)
        if isinstance(clause, BooleanClauseList) and clause.operator in (
            operators.and_,
            operators.or_,
        ):
            parts = [self.compile(inner) for inner in clause.clauses]
            return _and(parts) if clause.operator is operators.and_ else _or(parts)
        if isinstance(clause, UnaryExpression) and clause.operator is operators.inv:
            inner = self.compile(clause.element)
            return lambda row: None if (value := inner(row)) is None else not value
        if isinstance(clause, BinaryExpression):
            if clause.operator in (operators.is_, operators.is_not) and isinstance(
                clause.right, Null
            ):
                left = self.operand(clause.left)
                if clause.operator is operators.is_:
                    return lambda row: left(row) is None
                return lambda row: left(row) is not None
            compare = _COMPARISONS.get(clause.operator)
            if compare is not None:
                self._check_text(clause)
                left, right = self.operand(clause.left), self.operand(clause.right)

                def comparison(row: Row) -> Any:
                    a, b = left(row), right(row)
                    return None if a is None or b is None else compare(a, b)

                return comparison
        if isinstance(clause, True_ | False_):
            value = isinstance(clause, True_)
            return lambda row: value
        raise refuse(f"HAVING {_short(clause)}", "only comparisons, AND, OR and NOT are merged")

    def _check_text(self, clause: BinaryExpression[Any]) -> None:
        for side in (clause.left, clause.right):
            if isinstance(side, BindParameter):
                continue
            if _text_like(side) and self.builder.transform(side, "HAVING") is not as_is:
                raise refuse(f"HAVING {_short(clause)}", "it compares text under a collation")

    def operand(self, element: Any) -> Callable[[Row], Any]:
        return _Expressions(self.builder, self.aggregates).compile(element, "HAVING operand")


class _Expressions:
    """Expressions over merged groups compiled to Python functions of a merged row.

    Aggregates read their merged slot; ``+``, ``-``, ``*``, unary ``-`` and
    ``coalesce()`` compute as SQL does (NULL in, NULL out; Python's int,
    Decimal and float arithmetic keep the types and scales the databases
    give); other expressions without aggregates are group-level, read from
    the group's row.  Division is refused: its integer and decimal rules
    differ between databases.
    """

    def __init__(self, builder: _Builder, aggregates: _Aggregates) -> None:
        self.builder = builder
        self.aggregates = aggregates

    def compile(self, element: Any, what: str) -> Callable[[Row], Any]:
        element = _strip(element)
        if isinstance(element, BindParameter):
            value = _compat.bind_value(element, self.builder.parameters)
            return lambda row: value
        if isinstance(element, Null):
            return lambda row: None
        if _is_aggregate(element):
            return operator.itemgetter(self.aggregates.slot_index(element))
        if not _contains_aggregate(element):
            if not isinstance(element, ClauseElement):
                raise refuse(f"{what} {_short(element)}", "it is not an expression")
            # a group-level expression: the same on every row of the group
            return operator.itemgetter(self.builder.index_of(element, "group_value"))
        arithmetic = (
            _ARITHMETIC.get(element.operator) if isinstance(element, BinaryExpression) else None
        )
        if arithmetic is not None:
            left = self.compile(element.left, what)
            right = self.compile(element.right, what)

            def compute(row: Row) -> Any:
                a, b = left(row), right(row)
                return None if a is None or b is None else arithmetic(a, b)

            return compute
        if isinstance(element, UnaryExpression) and element.operator is operators.neg:
            inner = self.compile(element.element, what)
            return lambda row: None if (value := inner(row)) is None else -value
        if _function_name(element) == "coalesce":
            parts = [self.compile(argument, what) for argument in _arguments(element)]

            def first_not_null(row: Row) -> Any:
                for part in parts:
                    value = part(row)
                    if value is not None:
                        return value
                return None

            return first_not_null
        raise refuse(
            f"{what} {_short(element)}",
            "only +, -, * and coalesce() are computed over merged aggregates; select the "
            "aggregates and compute the expression in Python",
        )


def _and(parts: list[Callable[[Row], Any]]) -> Callable[[Row], Any]:
    return _connective(parts, deciding=False)


def _or(parts: list[Callable[[Row], Any]]) -> Callable[[Row], Any]:
    return _connective(parts, deciding=True)


def _connective(parts: list[Callable[[Row], Any]], deciding: bool) -> Callable[[Row], Any]:
    """AND (``deciding=False``: one FALSE decides) or OR (one TRUE decides), NULL-aware."""

    def evaluate(row: Row) -> Any:
        unknown = False
        for part in parts:
            value = part(row)
            if value is None:
                unknown = True
            elif bool(value) is deciding:
                return deciding
        return None if unknown else not deciding

    return evaluate


def _plan_compound(
    statement: CompoundSelect, facts: DatabaseFacts, parameters: Mapping[str, Any]
) -> Plan:
    """UNION / UNION ALL: the shards' unions, made distinct again, ordered, limited."""
    _check_compound_keyword(statement)
    for select in statement.selects:
        inner = select.element if isinstance(select, Grouping) else select
        if isinstance(inner, Select) and (
            _compat.group_by(inner)
            or _compat.has_limit_or_offset(inner)
            or any(_contains_aggregate(column) for column in _compat.raw_columns(inner))
        ):
            raise refuse(
                "a UNION of SELECTs with aggregates, GROUP BY or LIMIT",
                "each part would be computed per shard",
            )
    builder = _Builder(statement, facts, parameters, list(statement.selected_columns))

    def resolve(expression: Any) -> int:
        name = _compat.label_reference_name(expression)
        if name is not None:
            return builder.by_label(name)
        expression = _compat.unwrap_label_reference(expression)
        index = builder.visible_index(expression)
        if index is None:
            name = getattr(expression, "key", None) or getattr(expression, "name", None)
            if name is None:
                raise refuse(f"ORDER BY {_short(expression)}", "it is not a column of the UNION")
            return builder.by_label(str(name))
        return index

    keys = builder.sort_keys(_compat.order_by(statement), resolve)
    steps: list[Step] = []
    keyword = str(getattr(statement.keyword, "name", statement.keyword)).upper()
    if keyword == "UNION":
        steps.append(_distinct(builder))
    limit, offset = builder.limit_offset()
    shard_statement: Any = statement
    if limit is not None or offset:
        shard_statement = statement.limit(None if limit is None else limit + offset).offset(None)
        steps.append(Limit(limit, offset))
    combiner: Combiner = MergeSort(tuple(keys)) if keys else Concatenate()
    return Plan(shard_statement, combiner, tuple(steps), None)
