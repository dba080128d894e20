"""Choosing the shard of each row of a bulk INSERT or UPDATE."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, inspect, select, tuple_
from sqlalchemy.orm import Mapper

from .._sqlalchemy import elements, sessions
from ..errors import (
    BulkWriteError,
    MissingParentError,
    RoutingError,
    ShardingError,
    ShardKeyChangeError,
    about_row,
)
from ..ids.columns import generator_of
from ..options import set_shard_id
from ..sharding.rules import FollowRule, KeyRule, Rule
from .protocol import WritingSession

_MISSING = object()


def _lookup_names(mapper: Mapper[Any] | None, column: Any) -> tuple[str, ...]:
    """The keys a row may give ``column``'s value under: attribute name, column key."""
    names = []
    if mapper is not None:
        prop = mapper.get_property_by_column(column)
        names.append(prop.key)
    names.append(str(column.key))
    return tuple(dict.fromkeys(names))


def _value(row: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in row:
            return row[name]
    return _MISSING


def _scalar_default(column: Any) -> Any:
    default = getattr(column, "default", None)
    if default is not None and getattr(default, "is_scalar", False):
        return default.arg
    return _MISSING


class RowRouter:
    """Chooses the shard of each row written to one model or table.

    Built once per statement; parents looked up for followers are cached, so
    a batch of rows with a few parents costs a few lookups.
    """

    def __init__(
        self,
        session: WritingSession,
        target: Any,
        label: str,
        explicit: tuple[Any, str] | None = None,
    ) -> None:
        assert session.rules is not None
        self.session = session
        self.label = label
        self.explicit = explicit
        self.mapper: Mapper[Any] | None = target if isinstance(target, Mapper) else None
        self.rule: Rule | None = (
            session.rules.for_mapper(target) if self.mapper else session.rules.for_table(target)
        )
        self.name = self.mapper.class_.__name__ if self.mapper else str(target.name)
        self._key_names: tuple[str, ...] = ()
        self._shard: Callable[[Mapping[str, Any]], Any]
        rule = self.rule
        if rule is None:
            if explicit is not None:
                fixed = explicit[0]
            elif (home := session.rules.unsharded(self.name).home) is not None:
                fixed = home  # the one copy of the table
            else:
                raise RoutingError(
                    f"{label}: {self.name} is not sharded and every shard has its own "
                    f"{self.name} table; pin the statement with set_shard_id(...) or "
                    "bind_arguments={'shard_id': ...}"
                )
            self._shard = lambda row: fixed
        elif isinstance(rule, KeyRule):
            self._shard = self._key_router(rule)
        else:
            self._shard = self._follower_router(rule)

    def shard_of(self, index: int, row: Mapping[str, Any]) -> Any:
        """The shard of the caller's row number ``index``; raises naming the row."""
        try:
            shard = self._shard(row)
        except ShardingError as error:
            raise about_row(error, index, self.label) from error.__cause__
        if self.explicit is not None and shard != self.explicit[0]:
            raise about_row(
                RoutingError(
                    f"{self.name} belongs on shard {shard!r}, but the statement is pinned to "
                    f"{self.explicit[0]!r} ({self.explicit[1]}); send it without the pin, or "
                    "fix the row"
                ),
                index,
                self.label,
            )
        return shard

    def shards_of(self, offset: int, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The shard of each row of a batch whose first row is the caller's ``offset``.

        The same answers as :meth:`shard_of` row by row, in one loop for the
        common case (a shard key given under one name, a strategy that knows
        the value); any other row takes :meth:`shard_of`, which explains.
        """
        rule = self.rule
        if not isinstance(rule, KeyRule) or len(self._key_names) != 1:
            return [self.shard_of(offset + i, row) for i, row in enumerate(rows)]
        (name,) = self._key_names
        shard_for = rule.strategy.shard_for
        pinned = self.explicit[0] if self.explicit is not None else None
        shards: list[Any] = []
        append = shards.append
        for i, row in enumerate(rows):
            value = row.get(name)
            shard = shard_for(value) if value is not None else None
            if shard is None or (pinned is not None and shard != pinned):
                shard = self.shard_of(offset + i, row)  # raises, naming the row
            append(shard)
        return shards

    def _key_router(self, rule: KeyRule) -> Callable[[Mapping[str, Any]], Any]:
        names = self._key_names = _lookup_names(self.mapper, rule.column)
        default = _scalar_default(rule.column)
        strategy = rule.strategy

        def shard(row: Mapping[str, Any]) -> Any:
            value = _value(row, names)
            if value is _MISSING:
                value = None if default is _MISSING else default
            found = strategy.shard_for(value) if value is not None else None
            # shard_for_value() raises the clear error for a missing or unknown key
            return found if found is not None else rule.shard_for_value(value)

        return shard

    def _follower_router(self, rule: FollowRule) -> Callable[[Mapping[str, Any]], Any]:
        relationship = rule.relationship
        locals_ = [
            _lookup_names(self.mapper, local) for local, _ in relationship.local_remote_pairs
        ]
        parents = ParentShards(self.session, rule)

        def shard(row: Mapping[str, Any]) -> Any:
            values = tuple(_value(row, names) for names in locals_)
            if any(value is _MISSING or value is None for value in values):
                raise MissingParentError(
                    f"{rule.name}.{relationship.key} is not given (its foreign key "
                    f"{', '.join(names[-1] for names in locals_)}); a {rule.name} lives on its "
                    f"{relationship.mapper.class_.__name__}'s shard, so it needs one",
                    model=rule.name,
                    relationship=relationship.key,
                )
            return parents.shard_of(values)

        return shard


class ParentShards:
    """The shard of a follower's parent, from the follower's foreign-key values.

    Decided from the values alone when the foreign key is the parent's shard
    key or a shard-aware ID; else the parent is found in the session (pending
    objects too, with ``pending=True``) or looked up on the shards, once per
    distinct key.  Raises :class:`MissingParentError` when there is no parent.

    Example (a report's shard is its city's, looked up once by the city's id):

    >>> parents = ParentShards(session, session.rule_of(Report.__mapper__))
    >>> parents.shard_of((2,))  # London's reports
    'europe'
    """

    def __init__(self, session: WritingSession, rule: FollowRule, *, pending: bool = False) -> None:
        self.session = session
        self.rule = rule
        self.pending = pending
        relationship = rule.relationship
        pairs = list(relationship.local_remote_pairs or ())
        self.remotes = [elements.plain(remote) for _, remote in pairs]
        self._parents: dict[tuple[Any, ...], Any] = {}
        self.direct: Callable[[Any], Any] | None = None
        parent = rule.parent
        if (
            len(pairs) == 1
            and isinstance(parent, KeyRule)
            and elements.plain(parent.column) is self.remotes[0]
        ):
            self.direct = parent.strategy.shard_for  # the foreign key is the parent's shard key
        if self.direct is None and len(pairs) == 1:
            generator = generator_of(self.remotes[0])
            if generator is not None and getattr(generator, "encodes_shard", False):
                self.direct = generator.shard_of  # the parent's ID carries its shard

    def shard_of(self, values: tuple[Any, ...]) -> Any:
        """The shard of the parent whose referenced columns hold ``values``."""
        if self.direct is not None:
            try:
                found = self.direct(values[0])
            except ShardingError:
                found = None  # not a value the strategy or generator knows: look it up
            if found is not None:
                return found
        try:
            return self._parents[values]
        except KeyError:
            pass
        shard = self._pending_parent(values) if self.pending else None
        if shard is None:
            shard = self._stored_parent(values)
        self._parents[values] = shard
        return shard

    def _pending_parent(self, values: tuple[Any, ...]) -> Any | None:
        """The shard of a parent added to the session and not flushed yet, if one matches."""
        parent = self.pending_parent(values)
        return self.session.place(inspect(parent)).shards[0] if parent is not None else None

    def pending_parent(self, values: tuple[Any, ...]) -> Any | None:
        """A parent added and not flushed yet whose referenced columns hold ``values``.

        Compared as the database will compare them once both are stored: by
        canonical form (``"7"`` finds the pending parent whose key is ``7``).
        The parent holding exactly ``values`` wins; else the one parent whose
        canonical form is theirs (several: none, the caller looks further).
        """
        parent_mapper = self.rule.relationship.mapper
        forms = _forms(self.session, self.remotes, parent_mapper.class_.__name__, stored=True)
        wanted = _canonical_key(forms, values)
        by_form: list[Any] = []
        for obj in self.session.new:
            state = inspect(obj)
            if not state.mapper.isa(parent_mapper):
                continue
            held = tuple(
                state.dict.get(state.mapper.get_property_by_column(remote).key)
                for remote in self.remotes
            )
            if held == values:
                return obj
            if wanted is not None and _canonical_key(forms, held) == wanted:
                by_form.append(obj)
        return by_form[0] if len(by_form) == 1 else None

    def _stored_parent(self, values: tuple[Any, ...]) -> Any:
        rule = self.rule
        session = self.session
        parent_mapper = rule.relationship.mapper
        remotes = self.remotes
        primary_key = [elements.plain(column) for column in parent_mapper.primary_key]
        with session.no_autoflush:
            if len(remotes) == len(primary_key) and set(remotes) == set(primary_key):
                by_column = dict(zip(remotes, values, strict=True))
                parent = session.get(parent_mapper, [by_column[c] for c in primary_key])
            else:
                criteria = and_(*(c == v for c, v in zip(remotes, values, strict=True)))
                parent = session.scalars(select(parent_mapper).where(criteria)).first()
        if parent is None:
            raise MissingParentError(
                f"{rule.name}.{rule.relationship.key} refers to "
                f"{parent_mapper.class_.__name__} {values!r}, which is on no shard",
                model=rule.name,
                relationship=rule.relationship.key,
            )
        return inspect(parent).key[2]


def _forms(
    session: WritingSession, columns: Sequence[Any], name: str, *, stored: bool
) -> list[Callable[[Any], Any] | None]:
    """Each column's canonical form: of the values it stores, or of those it is compared with.

    ``None`` for a column whose type has none: its values are compared as they are.
    """
    assert session.rules is not None
    found: list[Callable[[Any], Any] | None] = []
    for column in columns:
        form = session.rules.canonical_form(column, name)
        found.append(None if form is None else form.stored if stored else form.compared)
    return found


def _canonical_key(
    forms: Sequence[Callable[[Any], Any] | None], values: tuple[Any, ...]
) -> tuple[Any, ...] | None:
    """``values`` in canonical form (as given where a column has no form); ``None``: not known."""
    canonical = []
    for form, value in zip(forms, values, strict=True):
        if form is None or value is None:
            canonical.append(value)
            continue
        try:
            canonical.append(form(value))
        except Exception:  # a ShardKeyError, or a TypeDecorator that fails: not known
            return None
    key = tuple(canonical)
    try:
        hash(key)
    except TypeError:
        return None
    return key


class UpdateRouter:
    """Finds the shard of each row of an UPDATE by primary key.

    By the key itself where it says (a shard-aware ID, a shard key that is
    part of the primary key), else from the identity map, else by asking every
    shard which of the keys it holds (one query per shard per batch).
    """

    def __init__(
        self,
        session: WritingSession,
        mapper: Mapper[Any],
        label: str,
        explicit: tuple[Any, str] | None = None,
    ) -> None:
        assert session.rules is not None
        self.session = session
        self.mapper = mapper
        self.label = label
        self.explicit = explicit
        self.rule = session.rules.for_mapper(mapper)
        self.name = mapper.class_.__name__
        self.columns = [elements.plain(column) for column in mapper.primary_key]
        self.names = [_lookup_names(mapper, column) for column in self.columns]
        self._known: dict[tuple[Any, ...], set[Any]] | None = None  # identity map: key -> shards
        self.deciders: list[tuple[int, Callable[[Any], Any]]] = []
        for position, column in enumerate(self.columns):
            generator = generator_of(column)
            if generator is not None and getattr(generator, "encodes_shard", False):
                self.deciders.append((position, generator.shard_of))
            elif isinstance(self.rule, KeyRule) and elements.plain(self.rule.column) is column:
                self.deciders.append((position, self.rule.strategy.shard_for))
        # rows that set what decides a shard must keep their row on its shard
        self.placer: RowRouter | None = None
        if self.rule is not None:
            self.placer = RowRouter(session, mapper, label)
            self.protected = set(self.rule.protected_names()) - {
                name for names in self.names for name in names
            }

    def shards_of(self, rows: list[tuple[int, Mapping[str, Any]]]) -> list[Any]:
        """The shard of each ``(caller index, row)``, in order."""
        keys: list[tuple[Any, ...]] = []
        for index, row in rows:
            key = tuple(_value(row, names) for names in self.names)
            if any(value is _MISSING or value is None for value in key):
                missing = [
                    n[0] for n, v in zip(self.names, key, strict=True) if v in (None, _MISSING)
                ]
                raise about_row(
                    RoutingError(
                        f"{self.name} UPDATE by primary key needs the primary key; "
                        f"{', '.join(missing)} is not given"
                    ),
                    index,
                    self.label,
                )
            keys.append(key)
        if self.explicit is not None:
            shards: list[Any] = [self.explicit[0]] * len(rows)
        else:
            shards = [self._decided(key) for key in keys]
            unknown = [key for key, shard in zip(keys, shards, strict=True) if shard is None]
            if unknown:
                found = self._locate(unknown)
                for position, (key, shard) in enumerate(zip(keys, shards, strict=True)):
                    if shard is not None or key not in found:
                        continue
                    holders = found[key]
                    if len(holders) > 1:
                        raise about_row(
                            RoutingError(
                                f"{self.name} with primary key {key!r} is on shards "
                                f"{', '.join(map(str, holders))}; which one to update is "
                                "ambiguous: pin the statement with set_shard_id(...)"
                            ),
                            rows[position][0],
                            self.label,
                        )
                    shards[position] = holders[0]
        for (index, row), key, shard in zip(rows, keys, shards, strict=True):
            if shard is None:
                raise BulkWriteError(
                    f"row {index} of {self.label}: no {self.name} with primary key {key!r} on "
                    "any shard; nothing was updated",
                    row_index=index,
                    shard=None,
                    statement=self.label,
                )
            if self.placer is not None and any(name in row for name in self.protected):
                self._refuse_move(index, row, shard)
        return shards

    def _decided(self, key: tuple[Any, ...]) -> Any | None:
        for position, decide in self.deciders:
            try:
                shard = decide(key[position])
            except ShardingError:
                continue
            if shard is not None:
                return shard
        return self._in_identity_map(key)

    def _in_identity_map(self, key: tuple[Any, ...]) -> Any | None:
        """The shard of an object with this key in the session, if exactly one has it."""
        if self._known is None:
            cls = sessions.identity_class(self.mapper)
            self._known = {}
            for identity in self.session.identity_map.keys():  # noqa: SIM118 (a view)
                if identity[0] is cls:
                    self._known.setdefault(identity[1], set()).add(identity[2])
        tokens = self._known.get(key)
        return next(iter(tokens)) if tokens is not None and len(tokens) == 1 else None

    def _locate(self, keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
        """Ask each shard which of ``keys`` it holds: caller's key -> the shards holding it.

        The database returns a key as it stores it (``'alice'`` for ``'Alice '``
        under a case-insensitive collation, ``7`` for ``"7"``), so rows are
        matched to the keys asked by canonical form.  The database calls two
        values equal only when their forms are equal, so a row of one query
        matches the one key asked with its form; keys whose form is not known,
        or shared with another key asked (equal to it under the collation, or
        not), are asked one at a time, and the database matches them itself.
        """
        session = self.session
        forms = _forms(session, self.columns, self.name, stored=False)
        exact_forms = all(form is not None for form in forms)
        by_form: dict[Any, list[tuple[Any, ...]]] = {}
        alone: list[tuple[Any, ...]] = []
        for key in dict.fromkeys(keys):
            form = _canonical_key(forms, key)
            if form is None:
                alone.append(key)
            else:
                by_form.setdefault(form, []).append(key)
        batched = {form: ks[0] for form, ks in by_form.items() if len(ks) == 1}
        alone += [key for ks in by_form.values() if len(ks) > 1 for key in ks]
        found: dict[tuple[Any, ...], list[Any]] = {}
        target = self.columns[0] if len(self.columns) == 1 else tuple_(*self.columns)
        asked = list(batched.items())
        for start in range(0, len(asked), 1000):
            chunk = dict(asked[start : start + 1000])
            if len(self.columns) == 1:
                # bound as the column's type, as the UPDATE binds the key (and get() does)
                (column,) = self.columns
                values = [key[0] for key in chunk.values()]
                criteria = column.in_(bindparam("keys", values, expanding=True, type_=column.type))
            else:
                criteria = target.in_(list(chunk.values()))
            matched: dict[tuple[Any, ...], list[Any]] = {}
            unmatched_row = False
            for shard in session.shard_names:
                statement = select(*self.columns).where(criteria).options(set_shard_id(shard))
                with session.no_autoflush:
                    for row in session.execute(statement):
                        key = chunk.get(_canonical_key(forms, tuple(row)))
                        if key is None:
                            unmatched_row = True  # a stored form not known: ask one by one
                        elif shard not in matched.setdefault(key, []):
                            matched[key].append(shard)
            if unmatched_row:
                alone += chunk.values()
                continue
            found.update(matched)
            if not exact_forms:  # matched by the value as given: a miss is not proof
                alone += [key for key in chunk.values() if key not in matched]
        for key in alone:
            criteria = and_(
                *(
                    column == bindparam(None, value, type_=column.type)
                    for column, value in zip(self.columns, key, strict=True)
                )
            )
            for shard in session.shard_names:
                statement = select(*self.columns).where(criteria).options(set_shard_id(shard))
                with session.no_autoflush:
                    if session.execute(statement.limit(1)).first() is not None:
                        found.setdefault(key, []).append(shard)
        return found

    def _refuse_move(self, index: int, row: Mapping[str, Any], shard: Any) -> None:
        assert self.placer is not None
        target = self.placer.shard_of(index, row)
        if target != shard:
            name = next(name for name in self.protected if name in row)
            raise about_row(
                ShardKeyChangeError(
                    f"UPDATE of {self.name} sets {name} to {row[name]!r}, which belongs on shard "
                    f"{target!r} while the row is on {shard!r}; moving rows between shards is "
                    "not supported (delete the row and insert a new one)",
                    model=self.name,
                    attribute=name,
                    value=row[name],
                ),
                index,
                self.label,
            )
