"""Strategies: how a shard-key value becomes a shard.

A strategy is a small, pure object with one job: ``shard_for(value)`` returns
the name of the shard that holds rows with that shard-key value, or ``None``
when the strategy has no shard for it (the caller turns ``None`` into an
:class:`~shardalchemy.UnknownShardKeyError` that names the model and attribute).

Four strategies ship:

- :class:`Lookup`: an explicit value -> shard map (the weather example's
  continent map);
- :class:`Hash`: a stable hash of the value picks one of a fixed number of
  virtual buckets, and buckets are assigned to shards, so a later rebalance
  moves buckets, not rows one by one;
- :class:`Range`: ordered lower boundaries;
- :class:`Function`: any callable of yours.

Example:

>>> Lookup({"Asia": "asia", "Europe": "europe"}).shard_for("Asia")
'asia'
>>> Hash(buckets=1024).bind(["s0", "s1", "s2", "s3"]).shard_for(42) in ("s0", "s1", "s2", "s3")
True
>>> Range([(None, "old"), (2020, "recent")]).shard_for(2021)
'recent'
>>> Function(lambda tenant: f"shard_{tenant % 4}").shard_for(6)
'shard_2'
"""

from __future__ import annotations

import bisect
import datetime
import decimal
import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias, cast

from ..errors import ModelConfigurationError, ShardingError, ShardMapError
from ..ids.columns import generator_of

ShardName: TypeAlias = str
"""The name of a shard, as the shard map declares it (``"asia"``)."""


class Strategy:
    """Base class of strategies.

    Subclasses implement :meth:`shard_for`; :meth:`bind` lets a strategy that
    was declared without shard names (``Hash()``) take them from the shard map.
    """

    def shard_for(self, value: Any) -> ShardName | None:
        """Return the shard holding ``value``, or ``None`` if there is none."""
        raise NotImplementedError

    def shard_names(self) -> frozenset[str] | None:
        """Every shard this strategy can return, or ``None`` if unknowable."""
        return None

    def bind(self, shard_names: Sequence[str]) -> Strategy:
        """Return this strategy resolved against the shard map's shard names."""
        return self

    def canonicalized(
        self, canonical: Callable[[Any], Any], where: str, *, converts: bool = False
    ) -> Strategy:
        """Return this strategy with the values it names in their canonical form.

        A strategy is asked about canonical forms only (the value the database
        stores: see :mod:`shardalchemy.sharding.canonical`), so the values it was
        declared with are turned into theirs once, by ``canonical``; ``where``
        names the shard key for the errors; ``converts`` says the column's type
        converts values on purpose (a TypeDecorator).  Strategies that name no
        values return themselves.
        """
        return self

    def shards_between(
        self, low: Any, low_inclusive: bool, high: Any, high_inclusive: bool
    ) -> frozenset[str] | None:
        """The shards holding values between ``low`` and ``high`` (``None`` = unbounded).

        ``None`` as the result means "cannot tell" (any shard may hold such
        values); only order-preserving strategies such as :class:`Range` can.
        """
        return None

    def describe(self) -> str:
        """A short human-readable description, for routes and ``explain``."""
        return type(self).__name__.lower()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


class Lookup(Strategy):
    """An explicit map from shard-key value to shard name.

    Example:

    >>> strategy = Lookup({"North America": "north_america", "Asia": "asia"}, default="asia")
    >>> strategy.shard_for("North America"), strategy.shard_for("Oceania")
    ('north_america', 'asia')

    ``default`` names the shard for values missing from the map; without it
    such a value is an error.
    """

    def __init__(self, mapping: Mapping[Any, str], *, default: str | None = None) -> None:
        if not mapping and default is None:
            raise ShardMapError("Lookup strategy needs at least one value -> shard entry")
        self.mapping = dict(mapping)
        self.default = default

    def shard_for(self, value: Any) -> ShardName | None:
        try:
            return self.mapping.get(value, self.default)
        except TypeError:  # an unhashable value maps to nothing
            return None

    def shard_names(self) -> frozenset[str]:
        names = set(self.mapping.values())
        if self.default is not None:
            names.add(self.default)
        return frozenset(names)

    def canonicalized(
        self, canonical: Callable[[Any], Any], where: str, *, converts: bool = False
    ) -> Strategy:
        """This lookup keyed by canonical forms; two keys stored alike must name one shard.

        >>> lookup = Lookup({"7": "a", 8: "b"})
        >>> lookup.canonicalized(int, "Event.tenant").mapping
        {7: 'a', 8: 'b'}
        """
        mapping: dict[Any, str] = {}
        given: dict[Any, Any] = {}
        for key, shard in self.mapping.items():
            try:
                form = canonical(key)
            except ShardingError as error:
                raise ModelConfigurationError(
                    f"{where}: the Lookup key {key!r} cannot be stored in the shard key's column "
                    f"({error})"
                ) from None
            if form in mapping and mapping[form] != shard:
                raise ModelConfigurationError(
                    f"{where}: the Lookup keys {given[form]!r} and {key!r} are one value in the "
                    f"database ({form!r}) but name shards {mapping[form]!r} and {shard!r}"
                )
            mapping[form] = shard
            given.setdefault(form, key)
        unchanged = len(mapping) == len(self.mapping) and all(
            type(a) is type(b) and a == b for a, b in zip(mapping, self.mapping, strict=True)
        )
        return self if unchanged else Lookup(mapping, default=self.default)

    def describe(self) -> str:
        return f"lookup ({len(self.mapping)} values)"


def stable_key_bytes(value: Any) -> bytes:
    """Encode a shard-key value canonically, for hashing.

    The encoding depends only on the value, never on the process, the Python
    version or ``PYTHONHASHSEED``: ``hash()`` is not used anywhere.  Values that
    compare equal in SQL for one column type encode equally (``1`` and ``True``
    both as the integer 1; a ``Decimal`` by its normalized digits).

    >>> stable_key_bytes(42)
    b'i:42'
    """
    if isinstance(value, bool | int):
        return b"i:%d" % int(value)
    if isinstance(value, str):
        return b"s:" + value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return b"b:" + bytes(value)
    if isinstance(value, uuid.UUID):
        return b"u:" + value.bytes
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return b"i:%d" % int(value)
        return b"d:" + str(value.normalize()).encode("ascii")
    if isinstance(value, datetime.datetime) and value.utcoffset() is not None:
        # equal instants in different time zones are equal values
        value = value.astimezone(datetime.timezone.utc)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return b"t:" + value.isoformat().encode("ascii")
    if isinstance(value, tuple):
        return b"(" + b",".join(stable_key_bytes(item) for item in value) + b")"
    raise TypeError(f"cannot hash a shard-key value of type {type(value).__name__}")


def stable_hash(value: Any) -> int:
    """A 64-bit hash of a shard-key value, identical in every process.

    >>> stable_hash("Tokyo") == stable_hash("Tokyo")
    True
    """
    digest = hashlib.blake2b(stable_key_bytes(value), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Hash(Strategy):
    """Hash the value into one of ``buckets`` virtual buckets, each owned by a shard.

    Without ``bucket_map`` the buckets are split into equal contiguous runs over
    ``shards`` (or, if ``shards`` is omitted, over every shard of the shard map in
    declaration order).  Rebalancing later means reassigning buckets, so the
    bucket count should be much larger than the shard count and never change.

    Example:

    >>> strategy = Hash(buckets=4, bucket_map={0: "a", 1: "a", 2: "b", 3: "b"})
    >>> strategy.shard_for(7) == {0: "a", 1: "a", 2: "b", 3: "b"}[strategy.bucket_for(7)]
    True
    >>> sorted(Hash(buckets=1024).bind(["a", "b"]).shard_names())
    ['a', 'b']
    """

    def __init__(
        self,
        *,
        buckets: int = 1024,
        shards: Sequence[str] | None = None,
        bucket_map: Mapping[int, str] | None = None,
    ) -> None:
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ShardMapError(f"Hash strategy needs a positive bucket count, not {buckets!r}")
        self.buckets = buckets
        self.shards = tuple(shards) if shards is not None else None
        if bucket_map is not None:
            missing = set(range(buckets)) - set(bucket_map)
            extra = set(bucket_map) - set(range(buckets))
            if missing or extra:
                raise ShardMapError(
                    f"Hash bucket_map must assign exactly buckets 0..{buckets - 1}; "
                    f"missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}"
                )
            self._owners: tuple[str, ...] | None = tuple(bucket_map[b] for b in range(buckets))
        elif self.shards is not None:
            self._owners = self._split(self.shards)
        else:
            self._owners = None

    def _split(self, shards: Sequence[str]) -> tuple[str, ...]:
        if not shards:
            raise ShardMapError("Hash strategy needs at least one shard")
        if len(shards) > self.buckets:
            raise ShardMapError(
                f"Hash strategy has {self.buckets} buckets for {len(shards)} shards; "
                "use at least as many buckets as shards"
            )
        return tuple(shards[bucket * len(shards) // self.buckets] for bucket in range(self.buckets))

    def bucket_for(self, value: Any) -> int:
        """The virtual bucket of ``value`` (0 <= bucket < ``buckets``)."""
        return stable_hash(value) % self.buckets

    def shard_for(self, value: Any) -> ShardName | None:
        owners = self._owners
        if owners is None:
            raise ShardMapError("Hash strategy is not bound to shards; pass shards=[...]")
        if type(value) is int:  # the common key, encoded as stable_key_bytes() does
            encoded = b"i:%d" % value
        else:
            try:
                encoded = stable_key_bytes(value)
            except TypeError:
                return None
        # bucket_for(), inlined: this runs for every routed statement and bulk row
        digest = hashlib.blake2b(encoded, digest_size=8).digest()
        return owners[int.from_bytes(digest, "big") % self.buckets]

    def shard_names(self) -> frozenset[str] | None:
        return frozenset(self._owners) if self._owners is not None else None

    def bind(self, shard_names: Sequence[str]) -> Strategy:
        if self._owners is not None:
            return self
        return Hash(buckets=self.buckets, shards=shard_names)

    def describe(self) -> str:
        return f"hash ({self.buckets} buckets)"


class Range(Strategy):
    """Ordered lower boundaries: a value goes to the last boundary not above it.

    ``boundaries`` is a sequence of ``(lower_bound, shard)`` pairs in increasing
    order; a lower bound of ``None`` means "from the smallest value".

    Example:

    >>> strategy = Range([(None, "early"), (1000, "middle"), (5000, "late")])
    >>> strategy.shard_for(999), strategy.shard_for(1000), strategy.shard_for(10**9)
    ('early', 'middle', 'late')
    """

    def __init__(self, boundaries: Iterable[tuple[Any, str]]) -> None:
        pairs = list(boundaries)
        if not pairs:
            raise ShardMapError("Range strategy needs at least one (lower_bound, shard) pair")
        self.open_start = pairs[0][0] is None
        if any(bound is None for bound, _ in pairs[1:]):
            raise ShardMapError("Range strategy: only the first lower bound may be None")
        bounded = pairs[1:] if self.open_start else pairs
        self.bounds = [bound for bound, _ in bounded]
        try:
            ordered = all(a < b for a, b in zip(self.bounds, self.bounds[1:], strict=False))
        except TypeError as error:
            raise ShardMapError(f"Range strategy bounds are not comparable: {error}") from None
        if not ordered:
            raise ShardMapError(
                f"Range strategy bounds must be strictly increasing, got {self.bounds!r}"
            )
        self.first_shard = pairs[0][1] if self.open_start else None
        self.owners = [shard for _, shard in bounded]

    def shard_for(self, value: Any) -> ShardName | None:
        try:
            position = bisect.bisect_right(self.bounds, value)
        except TypeError:
            return None
        if position == 0:
            return self.first_shard
        return self.owners[position - 1]

    def shard_names(self) -> frozenset[str]:
        names = set(self.owners)
        if self.first_shard is not None:
            names.add(self.first_shard)
        return frozenset(names)

    def canonicalized(
        self, canonical: Callable[[Any], Any], where: str, *, converts: bool = False
    ) -> Strategy:
        """This range, its bounds checked to be values the column stores exactly.

        A bound the database would store as another value (``Decimal("1.005")``
        for a ``Numeric(10, 2)``, a ``datetime`` for a ``Date``) would move the
        boundary, so it is refused; ``converts`` (a TypeDecorator's column) turns
        bounds into the canonical form instead.

        >>> Range([(None, "low"), ("10", "high")]).canonicalized(int, "Event.tenant")
        Traceback (most recent call last):
        ...
        shardalchemy.errors.ModelConfigurationError: Event.tenant: the Range bound '10' is ...
        """
        bounds = []
        for bound in self.bounds:
            try:
                form = canonical(bound)
            except ShardingError as error:
                raise ModelConfigurationError(
                    f"{where}: the Range bound {bound!r} cannot be stored in the shard key's "
                    f"column ({error})"
                ) from None
            if not converts and form != bound:
                raise ModelConfigurationError(
                    f"{where}: the Range bound {bound!r} is stored as {form!r} in the shard "
                    f"key's column; write the bound as it is stored ({form!r})"
                )
            bounds.append(form)
        if bounds == self.bounds and all(
            type(a) is type(b) for a, b in zip(bounds, self.bounds, strict=True)
        ):
            return self
        pairs: list[tuple[Any, str]] = []
        if self.first_shard is not None:
            pairs.append((None, self.first_shard))
        pairs += list(zip(bounds, self.owners, strict=True))
        return Range(pairs)

    def shards_between(
        self, low: Any, low_inclusive: bool, high: Any, high_inclusive: bool
    ) -> frozenset[str] | None:
        # owners are indexed from -1 (the open start) to len(owners) - 1
        first = -1 if low is None else bisect.bisect_right(self.bounds, low) - 1
        if high is None:
            last = len(self.owners) - 1
        else:
            # an exclusive high equal to a bound excludes that bound's range
            search = bisect.bisect_right if high_inclusive else bisect.bisect_left
            last = search(self.bounds, high) - 1
        if (
            low is not None
            and high is not None
            and (high < low or (high == low and not (low_inclusive and high_inclusive)))
        ):
            return frozenset()
        shards = {self.owners[index] for index in range(max(first, 0), last + 1)}
        if first < 0 and self.first_shard is not None:
            shards.add(self.first_shard)
        return frozenset(shards)

    def describe(self) -> str:
        return f"range ({len(self.owners) + self.open_start} ranges)"


class Function(Strategy):
    """Your own function from shard-key value to shard name (or ``None``).

    Example:

    >>> big_tenants = {7, 11}
    >>> strategy = Function(lambda tenant_id: "big" if tenant_id in big_tenants else "small")
    >>> strategy.shard_for(7), strategy.shard_for(8)
    ('big', 'small')
    """

    def __init__(
        self, function: Callable[[Any], str | None], *, shards: Iterable[str] = ()
    ) -> None:
        if not callable(function):
            raise ShardMapError(f"Function strategy needs a callable, not {function!r}")
        self.function = function
        self._declared = frozenset(shards) or None

    def shard_for(self, value: Any) -> ShardName | None:
        return self.function(value)

    def shard_names(self) -> frozenset[str] | None:
        return self._declared

    def describe(self) -> str:
        name = getattr(self.function, "__qualname__", repr(self.function))
        return f"function {name}"


def as_strategy(
    strategy: Strategy | Mapping[Any, str] | Callable[[Any], str | None],
) -> Strategy:
    """Accept a strategy, or a plain dict (a :class:`Lookup`) or callable (a :class:`Function`)."""
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        raise ShardMapError(
            f"a shard-key strategy must be an instance: {strategy.__name__}(...), "
            f"not the class {strategy.__name__}"
        )
    if isinstance(strategy, Mapping):
        return Lookup(strategy)
    if callable(strategy):
        return Function(cast("Callable[[Any], str | None]", strategy))
    raise ShardMapError(
        f"a shard-key strategy must be a Strategy, a dict or a callable, not {strategy!r}"
    )


class IdStrategy(Strategy):
    """Routes by a shard-aware ID: the shard is decoded from the ID itself.

    Example:

    >>> class Generator:  # stands in for a ShardAwareIdGenerator: anything with shard_of()
    ...     def shard_of(self, value):
    ...         if not isinstance(value, int):
    ...             raise ValueError(value)
    ...         return "asia" if value % 2 else "europe"
    >>> IdStrategy(Generator()).shard_for(1234)
    'europe'
    >>> IdStrategy(Generator()).shard_for("not an id") is None  # proves nothing
    True
    """

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def shard_for(self, value: Any) -> ShardName | None:
        try:
            shard: str = self.generator.shard_of(value)
        except Exception:  # not an ID of this layout: it proves nothing
            return None
        return shard

    def describe(self) -> str:
        return "shard-aware ID"


def id_strategy_of(column: Any) -> IdStrategy | None:
    generator = generator_of(column)
    if generator is None or not getattr(generator, "encodes_shard", False):
        return None
    return IdStrategy(generator)
