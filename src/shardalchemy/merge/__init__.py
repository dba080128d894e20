"""Merge operators: the shards' row streams -> one database's rows.

Pure and streaming, one job per operator: :mod:`.combine` joins the shards'
streams (concatenated, or k-way merge-sorted), :mod:`.aggregate`
re-aggregates partial aggregates, :mod:`.steps` computes, filters, sorts,
makes distinct and limits; :mod:`.keys` says how values compare.  Each operator
prints as one line (``describe()``) and describes itself as plain data
(``description()``, :mod:`.description`).
"""

from .aggregate import Aggregate, AggregateSlot, postgresql_division_scale
from .combine import Combiner, Concatenate, MergeSort
from .description import Description
from .keys import PadSpaceText, Row, SortKey, Transform, as_is, pad_space, sort_key
from .steps import Compute, Distinct, Filter, Limit, Sort, Step, run

__all__ = [
    "Aggregate",
    "AggregateSlot",
    "Combiner",
    "Compute",
    "Concatenate",
    "Description",
    "Distinct",
    "Filter",
    "Limit",
    "MergeSort",
    "PadSpaceText",
    "Row",
    "Sort",
    "SortKey",
    "Step",
    "Transform",
    "as_is",
    "pad_space",
    "postgresql_division_scale",
    "run",
    "sort_key",
]
