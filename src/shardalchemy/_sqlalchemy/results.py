"""Private SQLAlchemy details of ``Result`` objects (since SQLAlchemy 2.0).

A merged multi-shard result is a SQLAlchemy ``IteratorResult`` built from the
metadata of one shard's result; reading ORM rows without building ``Row``
objects, and the cursor rows they came from, needs the semi-private result
internals named here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine.result import IteratorResult
from sqlalchemy.orm.base import instance_state


def requires_unique(result: Any) -> bool:
    """Whether an ORM result must be uniqued (joined eager loading of a collection)."""
    return getattr(result, "_unique_filter_state", None) is not None


def _must_unique(row: Any) -> Any:
    # what the ORM's own result does when unique() was not called on a result
    # of joined eager loads against collections
    raise exc.InvalidRequestError(
        "The unique() method must be invoked on this Result, as it contains results "
        "that include joined eager loads against collections"
    )


def uniquing_by_identity(metadata: Any) -> Any:
    """``metadata`` with ORM entities uniqued by identity key, not by ``id()``.

    The ORM uniques the entities of a result by ``id(obj)``, which is sound
    there because the whole result is loaded as one chunk that keeps every
    object alive until the caller is done.  A merged result streams: one
    shard's objects are released once merged and read, so a later shard's
    object may get the ``id()`` of a freed one and be dropped as a duplicate
    (``for c in session.scalars(stmt).unique()`` loses parents).  Within a
    session an identity key (class, primary key, shard) names exactly one
    object while it lives, so keying on it keeps the ORM's answer and holds
    no object.  Returns a copy when it changes anything.
    """
    create = metadata._create_unique_filters
    if create is None:  # Core rows: uniqued by value already
        return metadata

    def create_identity_filters(result: Any) -> list[Any]:
        return [_identity_of if unique is id else unique for unique in create(result)]

    copy = object.__new__(type(metadata))  # a slotted class: copied slot by slot
    for cls in type(metadata).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(metadata, slot):
                setattr(copy, slot, getattr(metadata, slot))
    copy._create_unique_filters = create_identity_filters
    return copy


def concatenated(results: list[Any]) -> Any:
    """The shards' results one after another (``Result.merge``), ORM entities uniqued soundly."""
    merged = results[0].merge(*results[1:])
    merged._metadata = uniquing_by_identity(merged._metadata)
    return merged


def _identity_of(obj: Any) -> Any:
    if obj is None:  # an outer-joined entity without a row
        return None
    key = instance_state(obj).key
    # not persistent (never the case for a loaded row): the object itself, held
    # by the result's set of uniques so that its id() cannot be reused
    return key if key is not None else _Same(obj)


class _Same:
    """An object compared and hashed by identity, kept alive while it is held."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj


class ShardedResult(IteratorResult):  # type: ignore[type-arg]
    """The merged result of a multi-shard SELECT: a SQLAlchemy ``Result``.

    ``failed_shards`` maps each shard that failed (only with
    ``allow_partial=True``) to its error; it is empty otherwise.
    """

    failed_shards: dict[Any, BaseException]

    def __init__(self, metadata: Any, rows: Any, sources: list[Any]) -> None:
        super().__init__(metadata, rows)
        self._sources = sources
        self.failed_shards = {}

    def _soft_close(self, hard: bool = False, **kw: Any) -> None:
        for source in self._sources:
            source._soft_close(hard=hard, **kw)
        super()._soft_close(hard=hard, **kw)


def merged_result(
    template: Any, rows: Any, sources: list[Any], visible: int | None, single_entity: bool
) -> Any:
    """A Result yielding ``rows`` (tuples) shaped like ``template`` minus hidden columns.

    ``template`` is one shard's result of the per-shard statement: its keys
    and column objects (``row._mapping[City.name]``) are kept, its type
    processors are not (the rows are already processed), and columns from
    ``visible`` on are hidden.  ORM attributes the legacy ``Query`` reads
    (single entity, uniquing) are those of the user's statement.
    """
    metadata = template._metadata._for_freeze()
    if visible is not None:
        metadata = _leading_columns(metadata, visible)
    result = ShardedResult(uniquing_by_identity(metadata), rows, sources)
    # a state of its own: the shards' results were uniqued with theirs
    # (processed_rows), and sharing one set would drop the first shard's rows
    result._unique_filter_state = (set(), _must_unique) if requires_unique(template) else None
    result._yield_per = template._yield_per
    result._attributes = template._attributes.union({"is_single_entity": single_entity})
    return result


def _leading_columns(metadata: Any, visible: int) -> Any:
    """Frozen ``metadata`` reduced to its first ``visible`` columns, by position.

    ``_reduce()`` finds each column by its name, and SQLAlchemy 2.1's cursor keymap can
    map one name to another column (two anonymous labels of one function: ``count_1``
    finds the second ``count``), so a reduce by name would read that column twice.  The
    names and column objects are kept as the frozen metadata has them.
    """
    from sqlalchemy.engine.result import SimpleResultMetaData, tuplegetter

    keys = list(metadata._keys[:visible])
    positions = list(range(visible))
    return SimpleResultMetaData(
        keys,
        extra=[metadata._keymap[key][2] for key in keys],
        _tuplefilter=tuplegetter(*positions),
        _translated_indexes=positions,
        _processors=metadata._processors,
        _create_unique_filters=metadata._create_unique_filters,
    )


def rows_with_columns(result: Any, columns: tuple[Any, ...]) -> Iterator[tuple[Any, ...]] | None:
    """An ORM result's rows as tuples, each followed by ``columns`` of the row it was loaded from.

    The ORM builds each entity row from one row of the underlying
    ``CursorResult`` (``result.raw``), which it fetches in batches through
    ``_raw_all_tuples()`` (``_raw_all_rows()`` before SQLAlchemy 2.1) or
    ``fetchmany()``: those methods are wrapped on this one result so each
    batch is kept until its entity rows are read.  Returns ``None`` when the
    rows cannot be paired (no cursor result, uniquing, an unknown column, a
    result already fetched): the caller then selects the columns instead.
    """
    import collections

    raw = getattr(result, "raw", None)
    metadata = getattr(raw, "_metadata", None)
    if raw is None or metadata is None or requires_unique(result) or raw.closed:
        return None
    try:
        indices = [metadata._index_for_key(column, True) for column in columns]
    except Exception:
        return None
    if any(not isinstance(index, int) for index in indices):
        return None
    pending: collections.deque[Any] = collections.deque()
    wrapped = 0
    for name in ("_raw_all_tuples", "_raw_all_rows", "fetchmany"):
        fetch = getattr(raw, name, None)
        if fetch is None:
            continue

        def keeping(*args: Any, _fetch: Any = fetch, **kw: Any) -> Any:
            rows = _fetch(*args, **kw)
            pending.extend(rows)
            return rows

        setattr(raw, name, keeping)
        wrapped += 1
    if not wrapped:
        return None

    scalars = result._source_supports_scalars  # a single entity's raw rows are its objects

    def rows() -> Iterator[tuple[Any, ...]]:
        for row in result._raw_row_iterator():
            source = pending.popleft()
            keys = [source[index] for index in indices]
            yield (row, *keys) if scalars else (*row, *keys)

    return rows()


def processed_rows(result: Any) -> Iterator[tuple[Any, ...]]:
    """A shard result's rows as tuples of Python values, read lazily.

    ORM results hold such tuples already (their raw rows are processed; a
    single entity's are the objects themselves), so no ``Row`` is built per
    row; a ``CursorResult``'s raw rows are the driver's, so its ``Row``s are.
    """
    from sqlalchemy.engine import CursorResult

    if isinstance(result, CursorResult) or requires_unique(result):
        if requires_unique(result):  # joined eager loading: one row per parent object
            result = result.unique()
        return (tuple(row) for row in result)
    raw = result._raw_row_iterator()
    if result._source_supports_scalars:
        return ((value,) for value in raw)
    return iter(raw)


def yields_scalars(result: Any) -> bool:
    """Whether a (frozen) ORM result's raw rows are single objects, not tuples."""
    return bool(result._source_supports_scalars)
