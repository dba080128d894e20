"""What the bulk writers need from a session: :class:`WritingSession`.

The writers depend on this protocol, not on ``ShardedSession`` itself, so the
ORM room imports the writes room and never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.orm.state import InstanceState

from ..routing.route import Route
from ..sharding.rules import Rule, RuleBook


class WritingSession(Protocol):
    """A sharded ORM session, as the bulk writers see it (``ShardedSession`` is one)."""

    rules: RuleBook | None
    """The session's sharding rules (``None`` in drop-in mode, with hand-written choosers)."""

    @property
    def shard_names(self) -> tuple[str, ...]: ...

    @property
    def recording(self) -> bool:
        """Whether routes are being recorded (``recording_routes()``)."""
        ...

    @property
    def execute_chooser(self) -> Callable[..., Any]: ...

    @property
    def identity_map(self) -> Any: ...

    @property
    def no_autoflush(self) -> Any: ...

    @property
    def new(self) -> Any:
        """The objects added and not flushed yet."""
        ...

    def check_shard(self, shard: Any, where: str) -> Any: ...

    def place(self, state: InstanceState[Any]) -> Route: ...

    def refuse_move(self, state: InstanceState[Any]) -> None:
        """Raise ``ShardKeyChangeError`` if a stored object's changes put it on another shard."""
        ...

    def rule_of(self, mapper: Any) -> Rule | None: ...

    def record_route(
        self, route: Route, statement: Any = None, label: str | None = None
    ) -> None: ...

    def connection(self, bind_arguments: dict[str, Any] | None = None, **kw: Any) -> Any: ...

    def execute(self, statement: Any, params: Any = None, **kw: Any) -> Any: ...

    def scalars(self, statement: Any, params: Any = None, **kw: Any) -> Any: ...

    def get(self, entity: Any, ident: Any, **kw: Any) -> Any: ...

    def get_bind(self, mapper: Any = None, **kw: Any) -> Any: ...
