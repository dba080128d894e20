"""ShardedSession: wires shard maps, rules and the router into SQLAlchemy's ORM.

Two ways to use it:

Declarative mode (``shard_map=``): routing follows from the models'
``__sharding__`` declarations; no chooser functions to write::

    Session = shard_map.sessionmaker()
    with Session() as session:
        session.add(WeatherLocation("Asia", "Tokyo"))   # goes to shard "asia"
        session.commit()

Drop-in mode: ``shardalchemy.ShardedSession`` accepts everything
``sqlalchemy.ext.horizontal_shard.ShardedSession`` accepts (``shards``,
``shard_chooser``, ``identity_chooser``, ``execute_chooser``, ...), so code
written for SQLAlchemy's extension works by changing only the import.

In both modes shard names are checked (an unknown one raises
:class:`~shardalchemy.UnknownShardError`), an empty route raises
:class:`~shardalchemy.RoutingError`, and :meth:`ShardedSession.recording_routes`
records where each statement went and why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext import horizontal_shard
from sqlalchemy.ext.horizontal_shard import ShardedQuery
from sqlalchemy.orm import Mapper, ORMExecuteState
from sqlalchemy.orm.state import InstanceState

from .. import transactions
from .._sqlalchemy import engines, selects, sessions
from ..errors import CrossShardQueryError, RoutingError, ShardMapError, UnknownShardError
from ..execution.probing import database_facts, dialect_facts
from ..options import FanOutOptions
from ..planning.plan import Plan
from ..planning.planner import Planner
from ..routing.route import Explanation, Route
from ..routing.tables import statement_label
from ..routing.textual import textual_part
from ..sharding.rules import Rule, RuleBook
from ..topology.shard_map import ShardMap
from ..writes import legacy
from ..writes.batch import shard_being_written
from . import placement
from .execute import execute_on_shards, plain_select, textual_error
from .guards import check_flush, refuse_shard_move


class ShardedSession(sessions.SessionHooks):
    """A :class:`~sqlalchemy.orm.Session` over several shards.

    Pass ``shard_map=`` for declarative mode, or the arguments of SQLAlchemy's
    ``horizontal_shard.ShardedSession`` for drop-in mode; any chooser you pass
    replaces the one derived from the shard map.
    """

    shard_map: ShardMap | None
    rules: RuleBook | None

    def __init__(
        self,
        shard_chooser: Callable[..., Any] | None = None,
        identity_chooser: Callable[..., Any] | None = None,
        execute_chooser: Callable[[ORMExecuteState], Iterable[Any]] | None = None,
        shards: dict[str, Any] | None = None,
        query_cls: Any = ShardedQuery,
        *,
        shard_map: ShardMap | None = None,
        no_scatter: bool = False,
        cross_shard: str = "merge",
        shard_timeout: float | None = None,
        allow_partial: bool = False,
        shard_concurrency: int | None = None,
        id_chooser: Callable[..., Any] | None = None,
        query_chooser: Callable[..., Any] | None = None,
        commit: str = "auto",
        **kwargs: Any,
    ) -> None:
        self.shard_map = shard_map
        self.commit_mode = transactions.check_mode(commit)
        """How a transaction that wrote to several databases commits: ``"atomic"``
        (two-phase, with recovery), ``"best_effort"`` (one after another), or ``"auto"``:
        atomic where every written shard is PostgreSQL, else best effort (README:
        Commits across shards)."""
        self._commit_state: Any = None  # the root transaction's connections (transactions/)
        self.no_scatter = no_scatter
        """Refuse statements that would reach every shard (per statement: the
        ``no_scatter`` execution option overrides it)."""
        self._fan_out_options = {
            "cross_shard": cross_shard,
            "shard_timeout": shard_timeout,
            "allow_partial": allow_partial,
            "shard_concurrency": shard_concurrency,
        }
        self.fan_out_defaults = FanOutOptions.check(self._fan_out_options, "ShardedSession(...)")
        """How multi-shard statements run unless an execution option says otherwise."""
        self.rules = None
        self._route_log: list[Route] | None = None
        self._own_router = False
        self._last_statement: Any = None  # the statement _plain_select() last judged
        self._last_plain = False
        if shard_map is not None:
            if not isinstance(shard_map, ShardMap):
                raise ShardMapError(f"shard_map must be a shardalchemy.ShardMap, not {shard_map!r}")
            self.rules = shard_map.rules
            binds: dict[str, Any] = shard_map.binds()
            for name, bind in (shards or {}).items():
                binds[shard_map.check_shard(name, "ShardedSession(shards=...)")] = bind
            shards = binds
            shard_chooser = shard_chooser or self._shard_for_instance
            if identity_chooser is None and id_chooser is None:
                identity_chooser = self._shards_for_identity
            if execute_chooser is None and query_chooser is None:
                execute_chooser = self._route
        elif shard_chooser is None:
            raise exc.ArgumentError(
                "ShardedSession needs shard_map=..., or shard_chooser=... and shards=..."
            )
        # shards in one database: one connection (one transaction) for this session;
        # SQLAlchemy's twophase=True prepares each connection's transaction on its own
        if not kwargs.get("twophase"):
            shards = engines.one_connection_per_database(shards or {})
        self._shard_names: tuple[Any, ...] = tuple(shards or {})
        self._binds_by_shard: dict[Any, Any] = {}  # filled by bind_shard()
        super().__init__(
            shard_chooser,
            identity_chooser,
            execute_chooser,
            shards,
            query_cls,
            id_chooser=id_chooser,
            query_chooser=query_chooser,
            **kwargs,
        )
        # our handler replaces the extension's: same decisions, plus checks,
        # route records and (in declarative mode) lazy loads kept on their shard
        event.remove(self, "do_orm_execute", horizontal_shard.execute_and_instances)
        event.listen(self, "do_orm_execute", execute_on_shards, retval=True)
        # begin_nested(): a SAVEPOINT on every shard, rolled back or released together
        sessions.hold_savepoints_on_every_shard(self)
        if self.rules is not None:
            event.listen(self, "before_flush", check_flush)

    # -- shards --------------------------------------------------------------
    @property
    def shard_names(self) -> tuple[str, ...]:
        """The shards this session knows, in declaration order."""
        return self._shard_names

    def bind_shard(self, shard_id: Any, bind: Any) -> None:
        if shard_id not in getattr(self, "_shard_names", ()):
            self._shard_names = (*getattr(self, "_shard_names", ()), shard_id)
        super().bind_shard(shard_id, bind)
        self._binds_by_shard[shard_id] = bind

    def check_shard(self, shard: Any, where: str) -> Any:
        """Return ``shard`` if this session knows it, else raise :class:`UnknownShardError`."""
        if shard not in self._shard_names:
            raise UnknownShardError(shard, self._shard_names, where)
        return shard

    @property  # type: ignore[override]
    def connection_callable(self) -> Any:
        # SQLAlchemy's bulk code refuses a session with a per-object connection
        # chooser; while a routed bulk batch runs, the batch's shard is "the"
        # connection (see shardalchemy.bulk), so there is none to refuse
        if shard_being_written(self) is not None:
            return None
        return super().connection_callable

    def get_bind(self, mapper: Any = None, *, shard_id: Any = None, **kw: Any) -> Any:
        if shard_id is not None:  # every routed statement: the shard's bind, nothing else
            bind = self._binds_by_shard.get(shard_id)
            if bind is not None:
                return bind
        if shard_id is None:
            shard_id = shard_being_written(self)
        if shard_id is not None:
            if shard_id not in self._shard_names:  # check_shard(), inlined: every statement
                self.check_shard(shard_id, "bind_arguments / get_bind(shard_id=...)")
        elif mapper is None and kw.get("instance") is None:
            raise RoutingError(
                "a connection of a sharded session needs a shard: pass "
                "bind_arguments={'shard_id': ...} (e.g. session.connection(bind_arguments=...))"
            )
        return super().get_bind(mapper, shard_id=shard_id, **kw)

    # -- commits across shards (shardalchemy.transactions) ----------------------
    def shard_of_bind(self, bind: Any) -> Any:
        """The shard a bind serves (the first, where several share a database)."""
        for shard, known in self._binds_by_shard.items():
            if known is bind:
                return shard
        return str(getattr(bind, "url", bind))

    def in_doubt_found(self) -> None:
        """A commit left a participant prepared: have the recoverer look now."""
        transactions.recoverer_for(self._binds_by_shard).wake()

    def check_in_doubt(self, engine: Any) -> None:
        """Before this session reads ``engine``'s shard: resolve its in-doubt transactions."""
        if transactions.in_doubt_on(engine):
            transactions.recover(self._binds_by_shard)

    # -- legacy bulk methods, routed row by row --------------------------------
    def bulk_save_objects(
        self,
        objects: Iterable[object],
        return_defaults: bool = False,
        update_changed_only: bool = True,
        preserve_order: bool = True,
    ) -> None:
        """SQLAlchemy's ``bulk_save_objects``, each object written to its own shard.

        New objects go where their shard key (or parent) says, persistent ones
        to the shard they were loaded from; all or nothing across shards.
        """
        if self.rules is None:
            return super().bulk_save_objects(
                objects, return_defaults, update_changed_only, preserve_order
            )
        legacy.save_objects(self, objects, return_defaults, update_changed_only, preserve_order)

    def save_bulk_mappings(self, mapper: Any, mappings: Any, options: dict[str, Any]) -> bool:
        # bulk_insert_mappings() / bulk_update_mappings(), routed row by row
        if self.rules is None:
            return False
        legacy.save_mappings(self, mapper, mappings, options)
        return True

    # -- the hot path: statements routed before SQLAlchemy's hooks ------------
    def shard_before_hooks(
        self, statement: Any, params: Any, execution_options: Any, bind_arguments: Any
    ) -> Any:
        """The one shard of a plain SELECT, if it can be known without the hook; else None."""
        if (
            not self._own_router  # a chooser of the user's decides
            or self._route_log is not None  # recording_routes() wants the Route, reason and all
            or (bind_arguments and "shard_id" in bind_arguments)
            or (execution_options and not _PLAIN_OPTIONS.issuperset(execution_options))
            or len(self.dispatch.do_orm_execute) != 1  # a hook of the user's runs too
        ):
            return None
        # what the statement itself allows is the same at every execution of it
        if statement is not self._last_statement:
            self._last_plain = plain_select(statement)
            self._last_statement = statement
        if not self._last_plain:
            return None
        assert self.shard_map is not None
        return self.shard_map.router.single_shard(statement, params)

    @property
    def execute_chooser(self) -> Any:
        """The execute chooser: the router in declarative mode, or the one passed in."""
        return self._execute_chooser

    @execute_chooser.setter
    def execute_chooser(self, chooser: Any) -> None:
        self._execute_chooser = chooser
        # the fast path is for the session's own router only (not a user's
        # chooser, nor a subclass's _route)
        self._own_router = (
            getattr(chooser, "__func__", None) is ShardedSession._route and chooser.__self__ is self
        )

    # -- multi-shard statements ------------------------------------------------
    def _fan_out_settings(self, options: Mapping[str, Any]) -> FanOutOptions:
        if not FanOutOptions.NAMES.intersection(options):
            return self.fan_out_defaults
        given = {name: options[name] for name in FanOutOptions.NAMES if name in options}
        return FanOutOptions.check({**self._fan_out_options, **given}, "execution_options(...)")

    def _plan(
        self, statement: Any, shards: Sequence[Any], parameters: Any = None, connect: bool = True
    ) -> Plan:
        """The plan of a SELECT on ``shards``; raises CrossShardQueryError if none is exact."""
        if connect:
            connection = self.connection(bind_arguments={"shard_id": shards[0]})
            facts = database_facts(connection)
        else:
            facts = dialect_facts(self.get_bind(shard_id=shards[0]))
        if not isinstance(parameters, Mapping):
            parameters = {}
        chosen = self.shard_map.planner if self.shard_map is not None else _DROP_IN_PLANNER
        return chosen.plan(statement, facts, parameters)

    # -- route records -------------------------------------------------------
    @property
    def recording(self) -> bool:
        """Whether routes are being recorded (inside :meth:`recording_routes`)."""
        return self._route_log is not None

    @contextlib.contextmanager
    def recording_routes(self) -> Iterator[list[Route]]:
        """Record the route of every statement and flushed object inside the block.

        Example:

        >>> with session.recording_routes() as routes:
        ...     session.scalars(select(City).where(City.continent == "Europe")).all()
        [City('London'), City('Dublin')]
        >>> [(route.statement, route.shards, route.reason) for route in routes]
        [('SELECT cities', ('europe',), "City.continent = 'Europe' -> europe")]
        """
        outer = self._route_log
        log: list[Route] = []
        self._route_log = log
        try:
            yield log
        finally:
            self._route_log = outer
            if outer is not None:
                outer.extend(log)

    def explain(
        self,
        statement: Any,
        parameters: Mapping[str, Any] | None = None,
        *,
        connect: bool = True,
    ) -> Route:
        """Where ``statement`` would run with ``parameters``, and why, without running it.

        Returns a :class:`~shardalchemy.Route` whose ``explanation`` is the
        reason tree: which predicate allowed which shards.

        Example:

        >>> statement = select(City.name).where(City.continent.in_(["Asia", "Europe"]))
        >>> route = session.explain(statement.order_by(City.name).limit(2))
        >>> route.shards
        ('asia', 'europe')
        >>> print(route.explanation)
        City.continent IN ('Asia', 'Europe') -> asia, europe
        >>> print(route.plan)  # how the two shards' rows are merged
        Limit 2 offset 0
        └── MergeSort cities.name ASC NULLS FIRST
            └── each shard: SELECT ... LIMIT 2
        >>> route.plan_error is None  # else: why they cannot be merged exactly
        True

        A SELECT on several shards also gets its ``plan`` (the per-shard
        statement and the merge steps); planning asks the first shard's
        database, once, how it orders NULLs and compares text.  With
        ``connect=False`` nothing connects: the plan assumes what the dialect
        alone tells, so text keys of PostgreSQL and MariaDB are refused.
        """
        label = statement_label(statement)
        for option in selects.statement_options(statement):
            if isinstance(option, horizontal_shard.set_shard_id):
                self.check_shard(option.shard_id, "set_shard_id()")
                reason = f"set_shard_id({option.shard_id!r})"
                tree = Explanation(reason, frozenset([option.shard_id]))
                return Route((option.shard_id,), reason, label, explanation=tree)
        if self.shard_map is None:
            raise RoutingError("explain() needs a session built with shard_map=...")
        route = self.shard_map.router.explain(statement, parameters).labelled(label)
        textual = textual_part(statement) if len(route.shards) > 1 else None
        if textual is not None:
            route.plan_error = textual_error(statement, textual, route)
        elif len(route.shards) > 1 and getattr(statement, "is_select", False):
            try:
                route.plan = self._plan(statement, route.shards, parameters, connect)
            except CrossShardQueryError as error:
                route.plan_error = error
        return route

    def record_route(self, route: Route, statement: Any = None, label: str | None = None) -> None:
        """Add ``route`` to the routes being recorded (:meth:`recording_routes`), if any."""
        if self._route_log is not None:
            if label is None:
                label = statement_label(statement) if statement is not None else ""
            self._route_log.append(route.labelled(label))

    # -- declarative choosers --------------------------------------------------
    def rule_of(self, mapper: Any) -> Rule | None:
        """The sharding rule of ``mapper`` (``None``: not sharded, or not a mapper)."""
        assert self.rules is not None
        return self.rules.for_mapper(mapper) if isinstance(mapper, Mapper) else None

    def _shard_for_instance(self, mapper: Any, instance: Any, clause: Any = None, **kw: Any) -> str:
        """shard_chooser of declarative mode: the shard of a (new) object."""
        return placement.shard_for_instance(self, mapper, instance)

    def place(self, state: InstanceState[Any]) -> Route:
        """Where a pending object goes, and why; raises a clear error if nowhere."""
        return placement.place(self, state)

    def refuse_move(self, state: InstanceState[Any]) -> None:
        """Raise :class:`ShardKeyChangeError` if a stored object's changes move it off its shard."""
        refuse_shard_move(self, state)

    def _shards_for_identity(
        self,
        mapper: Any,
        primary_key: Any,
        *,
        lazy_loaded_from: InstanceState[Any] | None = None,
        **kw: Any,
    ) -> Route:
        """identity_chooser of declarative mode: the shards a primary key may be on."""
        return placement.shards_for_identity(self, mapper, primary_key, lazy_loaded_from)

    def _route(self, orm_context: ORMExecuteState) -> Route:
        """execute_chooser of declarative mode: the router."""
        assert self.shard_map is not None
        return self.shard_map.router.route(orm_context.statement, orm_context.parameters)


# drop-in mode has no sharding rules: no co-location to check, the rest as usual
_DROP_IN_PLANNER = Planner(None)


# execution options that do not change where a SELECT goes or how its hook would
# treat it (others, e.g. the load options of get() and lazy loads, take the hook)
_PLAIN_OPTIONS = frozenset(
    {"populate_existing", "autoflush", "yield_per", "stream_results", "max_row_buffer"}
)


transactions.install(ShardedSession)
ShardMap.session_class = ShardedSession  # what shard_map.sessionmaker() makes
