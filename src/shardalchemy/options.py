"""What users pass to steer statements and objects.

``set_shard_id`` pins a statement to a shard, ``assign_shard`` places a new
object, and :class:`FanOutOptions` checks how a multi-shard statement runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from sqlalchemy import inspect
from sqlalchemy.ext import horizontal_shard

from .errors import ConfigurationError, ShardKeyChangeError

EXPLICIT_SHARD = "shardalchemy.explicit_shard"


class set_shard_id(horizontal_shard.set_shard_id):
    """Run a statement, and the loaders of the objects it loads, on one shard.

    The same option as SQLAlchemy's, checked against the shard map: an unknown
    shard name raises :class:`~shardalchemy.UnknownShardError` when the
    statement runs.  SQLAlchemy's own ``set_shard_id`` works too.

    Example:

    >>> session.scalars(select(City.name).options(set_shard_id("asia"))).all()
    ['Tokyo']
    >>> session.scalars(select(City.name).options(set_shard_id("mars"))).all()
    Traceback (most recent call last):
    ...
    shardalchemy.errors.UnknownShardError: unknown shard 'mars' in set_shard_id('mars'); ...
    """

    __slots__ = ()


def assign_shard(instance: Any, shard: str) -> None:
    """Place a new object on ``shard`` explicitly, before it is flushed.

    For objects of models that are not sharded (which have no shard of their
    own in the ``database`` and ``schema`` placements).  For a sharded model the
    shard must agree with the one its shard key selects.

    Example:

    >>> paris = City(id=70, continent="Europe", name="Paris")
    >>> assign_shard(paris, "europe")
    >>> session.add(paris)
    >>> session.flush()  # stored on europe, as its shard key says too
    >>> rome = City(id=71, continent="Europe", name="Rome")
    >>> assign_shard(rome, "asia")
    >>> session.add(rome)
    >>> session.flush()
    Traceback (most recent call last):
    ...
    shardalchemy.errors.RoutingError: City was assigned to shard 'asia' but its shard key ...
    """
    state = inspect(instance)
    if state.key is not None:
        raise ShardKeyChangeError(
            f"{type(instance).__name__} is already stored on shard {state.key[2]!r}; "
            "moving rows between shards is not supported",
            model=type(instance).__name__,
            attribute="<shard>",
            value=shard,
        )
    state.info[EXPLICIT_SHARD] = shard
    state.identity_token = shard


@dataclasses.dataclass(frozen=True)
class FanOutOptions:
    """How a multi-shard statement runs (session defaults or execution options).

    ``cross_shard``: ``"merge"`` (one database's answer) or ``"concatenate"``
    (SQLAlchemy's per-shard results one after another); ``shard_timeout``:
    seconds for the whole fan-out; ``allow_partial``: return the shards that
    answered (``result.failed_shards`` names the others); ``shard_concurrency``:
    at most this many shards at once (default: all of them).
    """

    merge: bool
    timeout: float | None
    allow_partial: bool
    concurrency: int | None

    NAMES: ClassVar[frozenset[str]] = frozenset(
        {"cross_shard", "shard_timeout", "allow_partial", "shard_concurrency"}
    )

    @staticmethod
    def check(options: Mapping[str, Any], where: str) -> FanOutOptions:
        mode = options["cross_shard"]
        if mode not in ("merge", "concatenate"):
            raise ConfigurationError(
                f"{where}: cross_shard must be 'merge' or 'concatenate', not {mode!r}"
            )
        timeout = options["shard_timeout"]
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ConfigurationError(
                f"{where}: shard_timeout must be a positive number of seconds, not {timeout!r}"
            )
        concurrency = options["shard_concurrency"]
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ConfigurationError(
                f"{where}: shard_concurrency must be a positive integer, not {concurrency!r}"
            )
        return FanOutOptions(mode == "merge", timeout, bool(options["allow_partial"]), concurrency)
