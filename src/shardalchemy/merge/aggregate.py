"""Re-aggregating per-shard partial aggregates into one database's answer."""

from __future__ import annotations

import dataclasses
import decimal
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .description import Description, node
from .keys import Row, Transform, as_is, transform_name


@dataclasses.dataclass(frozen=True)
class AggregateSlot:
    """How one aggregate's final value is made from the shards' partial values.

    ``kind`` is ``count`` / ``sum`` / ``min`` / ``max`` / ``any`` (``sources`` = the
    partial's position, and for ``min``/``max`` of text compared by the
    database's sort key, that key's position), ``avg`` (``sources`` = positions of the partial SUM,
    COUNT and the shard's own AVG, whose type the result takes), or
    ``count_distinct`` / ``sum_distinct`` / ``avg_distinct`` (``sources`` = the
    position of the distinct value, pushed down as a group key, and for
    ``avg_distinct`` the shard's own result).
    """

    kind: str
    index: int
    sources: tuple[int, ...]
    transform: Transform = as_is
    label: str = ""
    # how a decimal AVG is rounded: to the scale of the shards' own AVG ("like",
    # MariaDB's fixed increment), or to the scale PostgreSQL's numeric division picks
    division: str = "like"

    def description(self) -> dict[str, Any]:
        """The slot as plain data: its kind, where its value goes and where its partials are."""
        return {
            "kind": self.kind,
            "column": self.index,
            "sources": list(self.sources),
            "label": self.label,
            "compare": transform_name(self.transform),
            "division": self.division,
        }


class _Group:
    __slots__ = ("row", "states")

    def __init__(self, row: Row, states: list[Any]) -> None:
        self.row = row
        self.states = states


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """Re-aggregates the shards' partial aggregates per group.

    ``group`` are the positions of the group keys (the user's GROUP BY, plus
    nothing else); ``group_transforms`` their comparison forms (text under a
    case-insensitive or PAD SPACE collation groups as the database groups).
    Columns that are neither group keys nor aggregates keep the value of the
    group's first row (they are functionally dependent on the group keys).
    Without GROUP BY (``scalar``) there is always exactly one output row.
    """

    group: tuple[int, ...]
    slots: tuple[AggregateSlot, ...]
    scalar: bool
    group_transforms: tuple[Transform, ...] = ()
    group_labels: tuple[str, ...] = ()
    width: int = 0  # columns of a row (for the one row of an ungrouped aggregate of nothing)

    def apply(self, rows: Iterable[Row]) -> Iterator[Row]:
        groups: dict[Any, _Group] = {}
        slots = self.slots
        key_of = self._key_function()
        steps = list(enumerate(_stepper(slot) for slot in slots))
        starters = [_starter(slot) for slot in slots]
        for row in rows:
            key = key_of(row)
            state = groups.get(key)
            if state is None:
                groups[key] = _Group(row, [start(row) for start in starters])
            else:
                states = state.states
                for position, step in steps:
                    states[position] = step(states[position], row)
        if not groups and self.scalar:
            # no row anywhere (a pushed-down DISTINCT value grouped them all away):
            # an ungrouped aggregate still answers one row, of zero counts and NULLs
            empty: list[Any] = [None] * self.width
            for slot in slots:
                if slot.kind in ("count", "count_distinct"):
                    empty[slot.index] = 0
            yield tuple(empty)
            return
        # final values: most are the state itself; avg, DISTINCT and keyed min/max finish
        plain = [(slot.index, position) for position, slot in enumerate(slots) if _is_plain(slot)]
        finished = [(slot, position) for position, slot in enumerate(slots) if not _is_plain(slot)]
        for state in groups.values():
            out = list(state.row)
            states = state.states
            for index, position in plain:
                out[index] = states[position]
            for slot, position in finished:
                value = states[position]
                out[slot.index] = _finish(slot, value)
                if slot.kind in ("min", "max"):
                    out[slot.sources[1]] = value[1]  # the winner's sort key, for ORDER BY
            yield tuple(out)

    def _key_function(self) -> Callable[[Row], Any]:
        group = self.group
        transforms = self.group_transforms or tuple(as_is for _ in group)
        if not group:
            return lambda row: ()
        if all(transform is as_is for transform in transforms):
            # the common case, at C speed: a value (one key) or a tuple of values
            return operator.itemgetter(*group)
        pairs = list(zip(group, transforms, strict=True))
        return lambda row: tuple([transform(row[i]) for i, transform in pairs])

    def describe(self) -> str:
        parts = [slot.label or f"{slot.kind}(#{slot.index})" for slot in self.slots]
        if not self.group:
            return f"Aggregate {', '.join(parts)} (no GROUP BY: one row)"
        return f"Aggregate {', '.join(parts)} GROUP BY {', '.join(self.group_labels)}"

    def description(self, children: Sequence[Description] = ()) -> Description:
        transforms = self.group_transforms or tuple(as_is for _ in self.group)
        labels = self.group_labels or tuple("" for _ in self.group)
        group_by = [
            {"column": index, "label": label, "compare": transform_name(transform)}
            for index, transform, label in zip(self.group, transforms, labels, strict=True)
        ]
        return node(
            "Aggregate",
            children,
            aggregates=[slot.description() for slot in self.slots],
            group_by=group_by,
            scalar=self.scalar,
        )


def _is_plain(slot: AggregateSlot) -> bool:
    """Whether a slot's running state is its final value (count, sum, min, max, any)."""
    return slot.kind in ("count", "sum", "any") or (
        slot.kind in ("min", "max") and len(slot.sources) == 1
    )


def _starter(slot: AggregateSlot) -> Callable[[Row], Any]:
    """A slot's state from a group's first row."""
    sources = slot.sources
    if _is_plain(slot):
        return operator.itemgetter(sources[0])
    if slot.kind in ("min", "max"):  # compared by a sort key of its own: [value, key]
        return lambda row: [row[sources[0]], row[sources[1]]]
    if slot.kind == "avg":  # [sum, count, the shard's own AVG]
        total_at, count_at, average_at = sources
        return lambda row: [row[total_at], row[count_at] or 0, row[average_at]]
    transform = slot.transform  # DISTINCT: [{comparison form: value}, the shard's result]

    def distinct(row: Row) -> Any:
        value = row[sources[0]]
        values = {} if value is None else {transform(value): value}
        return [values, row[sources[1]] if len(sources) > 1 else None]

    return distinct


def _stepper(slot: AggregateSlot) -> Callable[[Any, Row], Any]:
    """A slot's next state from a further row of its group (the merge's inner loop)."""
    kind, sources, transform = slot.kind, slot.sources, slot.transform
    index = sources[0]
    if kind == "count":
        return lambda state, row: state + row[index]
    if kind == "any":  # EXISTS: true if true on any shard
        return lambda state, row: state or row[index]
    if kind == "sum":

        def add(state: Any, row: Row) -> Any:
            value = row[index]
            return state if value is None else value if state is None else state + value

        return add
    if kind in ("min", "max") and len(sources) == 2:
        key_at, smallest = sources[1], kind == "min"

        def by_key(state: Any, row: Row) -> Any:  # the database's sort key (WEIGHT_STRING)
            key, best = row[key_at], state[1]
            better = key is not None and (best is None or (key < best if smallest else best < key))
            return [row[index], key] if better else state

        return by_key
    if kind in ("min", "max"):
        smallest = kind == "min"

        def extreme(state: Any, row: Row) -> Any:
            value = row[index]
            if value is None:
                return state
            if state is None:
                return value
            new, old = transform(value), transform(state)
            return value if (new < old if smallest else old < new) else state

        return extreme
    if kind == "avg":
        total_at, count_at, average_at = sources
        # the shards' own AVG lends its type, and (unless PostgreSQL's rule
        # decides) the finest scale any shard showed
        finest_scale = slot.division != "postgresql"

        def average(state: Any, row: Row) -> Any:
            total, count, shard_average = row[total_at], row[count_at], row[average_at]
            if total is not None:
                state[0] = total if state[0] is None else state[0] + total
            if count:
                state[1] += count
            if state[2] is None:
                state[2] = shard_average
            elif finest_scale and isinstance(shard_average, decimal.Decimal):
                state[2] = _more_precise(state[2], shard_average)
            return state

        return average

    def distinct(state: Any, row: Row) -> Any:
        value = row[index]
        if value is not None:
            state[0].setdefault(transform(value), value)
        if len(sources) > 1:
            state[1] = _more_precise(state[1], row[sources[1]])
        return state

    return distinct


def _more_precise(current: Any, new: Any) -> Any:
    """Of two per-shard AVG values, the one whose type and scale the result should take."""
    if current is None:
        return new
    if isinstance(new, decimal.Decimal) and isinstance(current, decimal.Decimal):
        new_exponent = new.as_tuple().exponent
        current_exponent = current.as_tuple().exponent
        if isinstance(new_exponent, int) and isinstance(current_exponent, int):
            return new if new_exponent < current_exponent else current
    return current


_DIVISION = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_UP)


def postgresql_division_scale(dividend: decimal.Decimal, divisor: decimal.Decimal) -> int:
    """The scale PostgreSQL gives ``dividend / divisor`` of numerics (its select_div_scale).

    At least 16 significant digits, and no fewer decimals than either
    input shows; PostgreSQL stores numerics in base-10000 digits, whose
    weight and leading digit decide.
    """

    def weight_and_first_digit(value: decimal.Decimal) -> tuple[int, int]:
        if value == 0:
            return 0, 0
        weight = abs(value).adjusted() // 4
        return weight, int(abs(value).scaleb(-4 * weight))

    weight1, first1 = weight_and_first_digit(dividend)
    weight2, first2 = weight_and_first_digit(divisor)
    quotient_weight = weight1 - weight2 - (1 if first1 <= first2 else 0)
    scale = 16 - quotient_weight * 4
    for value in (dividend, divisor):
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int):
            scale = max(scale, -exponent)
    return min(max(scale, 0), 1000)


def _divide(total: Any, count: int, like: Any, division: str = "like") -> Any:
    """``total / count`` in the type the database's own AVG returned (``like``)."""
    if isinstance(like, decimal.Decimal) and division == "postgresql":
        dividend, divisor = decimal.Decimal(total), decimal.Decimal(count)
        scale = postgresql_division_scale(dividend, divisor)
        context = decimal.Context(prec=scale + 60, rounding=decimal.ROUND_HALF_UP)
        quotient = context.divide(dividend, divisor)
        return quotient.quantize(decimal.Decimal(1).scaleb(-scale), context=context)
    if isinstance(like, decimal.Decimal):
        quotient = _DIVISION.divide(decimal.Decimal(total), decimal.Decimal(count))
        exponent = like.as_tuple().exponent
        if isinstance(exponent, int) and exponent < 0:  # the database's scale, if it shows one
            return quotient.quantize(decimal.Decimal(1).scaleb(exponent), context=_DIVISION)
        return quotient
    if isinstance(like, int) and not isinstance(like, bool):
        return total // count if isinstance(total, int) else total / count
    return float(total) / count


def _finish(slot: AggregateSlot, state: Any) -> Any:
    """The final value of a slot whose state is not its value (see ``_is_plain``)."""
    kind = slot.kind
    if kind in ("min", "max"):
        return state[0]
    if kind == "avg":
        total, count, shard_avg = state
        if not count or total is None:
            return None
        return _divide(total, count, shard_avg, slot.division)
    values, shard_result = state
    if kind == "count_distinct":
        return len(values)
    if not values:
        return None
    total = sum(values.values())
    if kind == "sum_distinct":
        return total
    return _divide(total, len(values), shard_result, slot.division)
