"""The legacy bulk APIs, routed row by row: ``bulk_save_objects``, ``bulk_*_mappings``.

New objects go where their shard key (or parent) says, persistent ones to the
shard they were loaded from; rows are grouped per shard and written through
SQLAlchemy's own bulk persistence, all or nothing across shards.

Example:

>>> session.bulk_insert_mappings(City, [
...     {"id": 50, "continent": "Asia", "name": "Osaka"},      # -> shard asia
...     {"id": 51, "continent": "Europe", "name": "Paris"},    # -> shard europe
... ])
>>> session.scalars(select(City.name).where(City.id >= 50).order_by(City.id)).all()
['Osaka', 'Paris']
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper

from .._sqlalchemy import sessions
from ..errors import ShardingError, about_row
from .batch import ShardWrites, group, writing_to
from .protocol import WritingSession
from .routing import RowRouter, UpdateRouter


def save_objects(
    session: WritingSession,
    objects: Iterable[object],
    return_defaults: bool,
    update_changed_only: bool,
    preserve_order: bool,
) -> None:
    """``bulk_save_objects()``: each object written to its own shard."""
    states = [inspect(obj) for obj in objects]
    order: Iterable[int] = range(len(states))
    if not preserve_order:  # group like SQLAlchemy does: fewer, larger batches
        order = sorted(order, key=lambda i: (id(states[i].mapper), states[i].key is not None))
    with ShardWrites(session, "bulk_save_objects()") as writes:
        for (mapper, isupdate), grouped in itertools.groupby(
            order, lambda i: (states[i].mapper, states[i].key is not None)
        ):
            indices = list(grouped)
            _write(
                session,
                writes,
                mapper,
                indices,
                [states[i] for i in indices],
                dict(
                    isupdate=isupdate,
                    isstates=True,
                    return_defaults=return_defaults,
                    update_changed_only=update_changed_only,
                    render_nulls=False,
                ),
            )


def save_mappings(
    session: WritingSession, mapper: Any, mappings: Iterable[Any], options: dict[str, Any]
) -> None:
    """``bulk_insert_mappings()`` / ``bulk_update_mappings()``: each row to its own shard."""
    mapper = inspect(mapper)
    rows = list(mappings)
    verb = "update" if options["isupdate"] else "insert"
    label = f"bulk_{verb}_mappings({mapper.class_.__name__})"
    with ShardWrites(session, label) as writes:
        _write(session, writes, mapper, list(range(len(rows))), rows, options)


def _write(
    session: WritingSession,
    writes: ShardWrites,
    mapper: Mapper[Any],
    indices: list[int],
    rows: list[Any],
    options: dict[str, Any],
) -> None:
    """Route ``rows`` (dicts, or states of objects) and write them per shard."""
    label = writes.label
    if options["isstates"]:
        if options["isupdate"]:
            shards = []
            for index, state in zip(indices, rows, strict=True):
                try:
                    session.refuse_move(state)  # written where it was loaded from
                except ShardingError as error:
                    raise about_row(error, index, label) from error.__cause__
                shards.append(state.key[2])
        else:
            shards = []
            for index, state in zip(indices, rows, strict=True):
                try:
                    shards.append(session.place(state).shards[0])
                except ShardingError as error:
                    raise about_row(error, index, label) from error.__cause__
    elif options["isupdate"]:
        router = UpdateRouter(session, mapper, label)
        shards = router.shards_of(list(zip(indices, rows, strict=True)))
    else:
        row_router = RowRouter(session, mapper, label)
        shards = [row_router.shard_of(i, row) for i, row in zip(indices, rows, strict=True)]
    with sessions.flushing(session):
        writes.write_many(
            group(indices, rows, shards), functools.partial(_run, session, mapper, options)
        )
    if options["isstates"] and not options["isupdate"]:
        for state, shard in zip(rows, shards, strict=True):
            state.identity_token = shard
            if state.key is not None and state.key[2] is None:  # set by return_defaults
                state.key = (state.key[0], state.key[1], shard)


def _run(
    session: WritingSession,
    mapper: Mapper[Any],
    options: dict[str, Any],
    shard: Any,
    rows: list[Any],
) -> None:
    """Write one shard's rows through SQLAlchemy's bulk code, on that shard."""
    with writing_to(session, shard):
        sessions.bulk_save(session, mapper, rows, **options)
