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
import dataclasses
import functools
import itertools
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, cast

from sqlalchemy import event, exc, inspect, util
from sqlalchemy.ext import horizontal_shard
from sqlalchemy.ext.horizontal_shard import ShardedQuery
from sqlalchemy.orm import Mapper, ORMExecuteState, RelationshipProperty
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter

from . import _compat, bulk, executor, planner
from .errors import (
    CrossShardQueryError,
    MissingParentError,
    RoutingError,
    ScatterQueryError,
    ShardingError,
    ShardKeyChangeError,
    ShardMapError,
    UnknownShardError,
)
from .ids.columns import generator_of
from .models import FollowRule, KeyRule, Rule, RuleBook
from .router import Explanation, Route, shard_key_hints, statement_label
from .shardmap import ShardMap

_EXPLICIT_SHARD = "shardalchemy.explicit_shard"
_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


class set_shard_id(horizontal_shard.set_shard_id):
    """Run a statement, and the loaders of the objects it loads, on one shard.

    The same option as SQLAlchemy's, checked against the shard map: an unknown
    shard name raises :class:`~shardalchemy.UnknownShardError` when the
    statement runs.  SQLAlchemy's own ``set_shard_id`` works too.

    Example::

        session.scalars(select(WeatherLocation).options(set_shard_id("asia")))
    """

    __slots__ = ()


def assign_shard(instance: Any, shard: str) -> None:
    """Place a new object on ``shard`` explicitly, before it is flushed.

    For objects of models that are not sharded (which have no shard of their
    own in the ``database`` and ``schema`` placements).  For a sharded model the
    shard must agree with the one its shard key selects.

    Example::

        assign_shard(setting, "europe"); session.add(setting)
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
    state.info[_EXPLICIT_SHARD] = shard
    state.identity_token = shard


@dataclasses.dataclass(frozen=True)
class _FanOut:
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
    def check(options: Mapping[str, Any], where: str) -> _FanOut:
        mode = options["cross_shard"]
        if mode not in ("merge", "concatenate"):
            raise RoutingError(
                f"{where}: cross_shard must be 'merge' or 'concatenate', not {mode!r}"
            )
        timeout = options["shard_timeout"]
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise RoutingError(
                f"{where}: shard_timeout must be a positive number of seconds, not {timeout!r}"
            )
        concurrency = options["shard_concurrency"]
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise RoutingError(
                f"{where}: shard_concurrency must be a positive integer, not {concurrency!r}"
            )
        return _FanOut(mode == "merge", timeout, bool(options["allow_partial"]), concurrency)


class ShardedSession(horizontal_shard.ShardedSession):
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
        **kwargs: Any,
    ) -> None:
        self.shard_map = shard_map
        self.no_scatter = no_scatter
        """Refuse statements that would reach every shard (per statement: the
        ``no_scatter`` execution option overrides it)."""
        self._fan_out_options = {
            "cross_shard": cross_shard,
            "shard_timeout": shard_timeout,
            "allow_partial": allow_partial,
            "shard_concurrency": shard_concurrency,
        }
        self.fan_out_defaults = _FanOut.check(self._fan_out_options, "ShardedSession(...)")
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
        event.listen(self, "do_orm_execute", _execute_on_shards, retval=True)
        if self.rules is not None:
            event.listen(self, "before_flush", _check_flush)

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
        if bulk.shard_being_written(self) is not None:
            return None
        return super().connection_callable

    def get_bind(self, mapper: Any = None, *, shard_id: Any = None, **kw: Any) -> Any:
        if shard_id is not None:  # every routed statement: the shard's bind, nothing else
            bind = self._binds_by_shard.get(shard_id)
            if bind is not None:
                return bind
        if shard_id is None:
            shard_id = bulk.shard_being_written(self)
        if shard_id is not None:
            if shard_id not in self._shard_names:  # check_shard(), inlined: every statement
                self.check_shard(shard_id, "bind_arguments / get_bind(shard_id=...)")
        elif mapper is None and kw.get("instance") is None:
            raise RoutingError(
                "a connection of a sharded session needs a shard: pass "
                "bind_arguments={'shard_id': ...} (e.g. session.connection(bind_arguments=...))"
            )
        return super().get_bind(mapper, shard_id=shard_id, **kw)

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
        states = [inspect(obj) for obj in objects]
        order = range(len(states))
        if not preserve_order:  # group like SQLAlchemy does: fewer, larger batches
            order = sorted(order, key=lambda i: (id(states[i].mapper), states[i].key is not None))
        writes = bulk.ShardWrites(self, "bulk_save_objects()")
        try:
            for (mapper, isupdate), group in itertools.groupby(
                order, lambda i: (states[i].mapper, states[i].key is not None)
            ):
                indices = list(group)
                self._bulk_write(
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
        except BaseException:
            writes.undo()
            raise
        writes.finish()

    def _bulk_save_mappings(self, mapper: Any, mappings: Any, **options: Any) -> None:
        # bulk_insert_mappings() / bulk_update_mappings() end here
        if self.rules is None:
            return super()._bulk_save_mappings(mapper, mappings, **options)
        mapper = inspect(mapper)
        rows = list(mappings)
        verb = "update" if options["isupdate"] else "insert"
        label = f"bulk_{verb}_mappings({mapper.class_.__name__})"
        writes = bulk.ShardWrites(self, label)
        try:
            self._bulk_write(writes, mapper, list(range(len(rows))), rows, options)
        except BaseException:
            writes.undo()
            raise
        writes.finish()

    def _bulk_write(
        self,
        writes: bulk.ShardWrites,
        mapper: Mapper[Any],
        indices: list[int],
        rows: list[Any],
        options: dict[str, Any],
    ) -> None:
        """Route ``rows`` (dicts, or states of objects) and write them per shard."""
        label = writes.label
        if options["isstates"]:
            if options["isupdate"]:
                shards = [state.key[2] for state in rows]
            else:
                shards = []
                for index, state in zip(indices, rows, strict=True):
                    try:
                        shards.append(self._place(state).shards[0])
                    except ShardingError as error:
                        raise bulk._about_row(error, index, label) from error.__cause__
        elif options["isupdate"]:
            router = bulk.UpdateRouter(self, mapper, label)
            shards = router.shards_of(list(zip(indices, rows, strict=True)))
        else:
            row_router = bulk.RowRouter(self, mapper, label)
            shards = [row_router.shard_of(i, row) for i, row in zip(indices, rows, strict=True)]
        with _compat.flushing(self):
            writes.write_many(
                bulk.group(indices, rows, shards),
                functools.partial(self._bulk_run, mapper, options),
            )
        if options["isstates"] and not options["isupdate"]:
            for state, shard in zip(rows, shards, strict=True):
                state.identity_token = shard
                if state.key is not None and state.key[2] is None:  # set by return_defaults
                    state.key = (state.key[0], state.key[1], shard)

    def _bulk_run(
        self, mapper: Mapper[Any], options: dict[str, Any], shard: Any, rows: list[Any]
    ) -> None:
        """Write one shard's rows through SQLAlchemy's bulk code, on that shard."""
        with bulk.writing_to(self, shard):
            _compat.bulk_save(self, mapper, rows, **options)

    # -- the hot path: statements routed before SQLAlchemy's hooks ------------
    def _execute_internal(  # type: ignore[override]
        self,
        statement: Any,
        params: Any = None,
        *,
        execution_options: Any = _EMPTY,
        bind_arguments: Any = None,
        _parent_execute_state: Any = None,
        _add_event: Any = None,
        _scalar_result: bool = False,
    ) -> Any:
        # every execute(), scalars(), scalar(), get() and loader statement
        # passes here.  A SELECT the router pins to one shard, in a session
        # whose only do_orm_execute hook is its own, is sent straight to that
        # shard: the hook would decide exactly this, and running it (an
        # ORMExecuteState, a second pre-execution pass) costs more than the
        # routing itself.  Anything else goes through the hook as usual.
        if _parent_execute_state is None and _add_event is None:
            shard = self._shard_before_hooks(statement, params, execution_options, bind_arguments)
            if shard is not None:
                bind_arguments = (
                    {**bind_arguments, "shard_id": shard} if bind_arguments else {"shard_id": shard}
                )
                # the identity token, as the load options it becomes (made once per
                # shard: building them from an "identity_token" option costs ~2 us)
                token = _compat.identity_token_options(shard)
                execution_options = (
                    execution_options.union(token)
                    if isinstance(execution_options, util.immutabledict)
                    else {**execution_options, **token}
                    if execution_options
                    else token
                )
                _parent_execute_state = _compat.NO_MORE_EVENTS
        return _SESSION_EXECUTE(
            self,
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            _parent_execute_state=_parent_execute_state,
            _add_event=_add_event,
            _scalar_result=_scalar_result,
        )

    def _shard_before_hooks(
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
            self._last_plain = _plain_select(statement)
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
    def _fan_out_settings(self, options: Mapping[str, Any]) -> _FanOut:
        if not _FanOut.NAMES.intersection(options):
            return self.fan_out_defaults
        given = {name: options[name] for name in _FanOut.NAMES if name in options}
        return _FanOut.check({**self._fan_out_options, **given}, "execution_options(...)")

    def _plan(
        self, statement: Any, shards: Sequence[Any], parameters: Any = None, connect: bool = True
    ) -> planner.Plan:
        """The plan of a SELECT on ``shards``; raises CrossShardQueryError if none is exact."""
        if connect:
            connection = self.connection(bind_arguments={"shard_id": shards[0]})
            facts = executor.database_facts(connection)
        else:
            facts = executor.dialect_facts(self.get_bind(shard_id=shards[0]))
        if not isinstance(parameters, Mapping):
            parameters = {}
        chosen = self.shard_map.planner if self.shard_map is not None else _DROP_IN_PLANNER
        return chosen.plan(statement, facts, parameters)

    # -- route records -------------------------------------------------------
    @contextlib.contextmanager
    def recording_routes(self) -> Iterator[list[Route]]:
        """Record the route of every statement and flushed object inside the block.

        Example::

            with session.recording_routes() as routes:
                session.scalars(select(WeatherLocation).where(...)).all()
            for route in routes: print(route.statement, route.shards, route.reason)
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

        Example::

            route = session.explain(select(City).where(City.continent.in_(["Asia", "Europe"])))
            print(route.shards)        # ('asia', 'europe')
            print(route.explanation)   # City.continent IN ('Asia', 'Europe') -> asia, europe
            print(route.plan)          # how the two shards' rows are merged
            print(route.plan_error)    # or why they cannot be merged exactly

        A SELECT on several shards also gets its ``plan`` (the per-shard
        statement and the merge steps); planning asks the first shard's
        database, once, how it orders NULLs and compares text.  With
        ``connect=False`` nothing connects: the plan assumes what the dialect
        alone tells, so text keys of PostgreSQL and MariaDB are refused.
        """
        label = statement_label(statement)
        for option in _compat.statement_options(statement):
            if isinstance(option, horizontal_shard.set_shard_id):
                self.check_shard(option.shard_id, "set_shard_id()")
                reason = f"set_shard_id({option.shard_id!r})"
                tree = Explanation(reason, frozenset([option.shard_id]))
                return Route((option.shard_id,), reason, label, explanation=tree)
        if self.shard_map is None:
            raise RoutingError("explain() needs a session built with shard_map=...")
        route = self.shard_map.router.explain(statement, parameters).labelled(label)
        if len(route.shards) > 1 and getattr(statement, "is_select", False):
            try:
                route.plan = self._plan(statement, route.shards, parameters, connect)
            except CrossShardQueryError as error:
                route.plan_error = error
        return route

    def _record(self, route: Route, statement: Any = None, label: str | None = None) -> None:
        if self._route_log is not None:
            if label is None:
                label = statement_label(statement) if statement is not None else ""
            self._route_log.append(route.labelled(label))

    # -- declarative choosers --------------------------------------------------
    def _rule(self, mapper: Any) -> Rule | None:
        assert self.rules is not None
        return self.rules.for_mapper(mapper) if isinstance(mapper, Mapper) else None

    def _shard_for_instance(self, mapper: Any, instance: Any, clause: Any = None, **kw: Any) -> str:
        """shard_chooser of declarative mode: the shard of a (new) object."""
        if instance is None:
            name = mapper.class_.__name__ if isinstance(mapper, Mapper) else "this statement"
            raise RoutingError(
                f"no object to choose a shard for {name}; pass the shard explicitly "
                "(bind_arguments={'shard_id': ...} or set_shard_id(...))"
            )
        return self._place(inspect(instance)).shards[0]

    def _place(self, state: InstanceState[Any]) -> Route:
        """Where a pending object goes, and why; raises a clear error if nowhere."""
        mapper = state.mapper
        name = mapper.class_.__name__
        explicit = state.info.get(_EXPLICIT_SHARD)
        if explicit is not None:
            self.check_shard(explicit, f"assign_shard() of a {name}")
        rule = self._rule(mapper)
        if rule is None:
            if explicit is not None:
                return Route((explicit,), f"{name} assigned to {explicit} explicitly")
            assert self.shard_map is not None
            if self.shard_map.placement == "tables":
                first = self._shard_names[0]
                return Route(
                    (first,), f"{name} is not sharded; its one table is reached via {first}"
                )
            raise RoutingError(
                f"{name} is not sharded and every shard has its own {name} table; give {name} "
                "a __sharding__ declaration or call shardalchemy.assign_shard(obj, shard) "
                "before flush"
            )
        if isinstance(rule, KeyRule):
            value = getattr(state.obj(), rule.attribute)
            shard = self.check_shard(
                rule.shard_for_value(value), f"the strategy of {rule.name}.{rule.attribute}"
            )
            reason = (
                f"{rule.name}.{rule.attribute} = {value!r} -> {shard} ({rule.strategy.describe()})"
            )
        else:
            shard, parent_reason = self._parent_shard(state, rule)
            reason = f"{name} follows {rule.relationship.key}: {parent_reason}"
        if explicit is not None and explicit != shard:
            raise RoutingError(
                f"{name} was assigned to shard {explicit!r} but its shard key selects {shard!r}"
            )
        return Route((shard,), reason)

    def _parent_shard(self, state: InstanceState[Any], rule: FollowRule) -> tuple[str, str]:
        relationship = rule.relationship
        parent = state.dict.get(relationship.key)
        if parent is None:
            parent = self._parent_by_foreign_key(state, rule)
        parent_state = inspect(parent)
        if parent_state.key is not None:
            token = parent_state.key[2]
            return token, f"{type(parent).__name__} is stored on {token}"
        route = self._place(parent_state)
        parent_state.identity_token = route.shards[0]
        return route.shards[0], route.reason

    def _parent_by_foreign_key(self, state: InstanceState[Any], rule: FollowRule) -> Any:
        relationship = rule.relationship
        name = rule.name
        mapper = state.mapper
        obj = state.obj()
        key = {
            _compat.plain(remote): getattr(obj, mapper.get_property_by_column(local).key)
            for local, remote in relationship.local_remote_pairs
        }
        parent_mapper = relationship.mapper
        identity = [key.get(_compat.plain(column)) for column in parent_mapper.primary_key]
        if any(value is None for value in identity):
            raise MissingParentError(
                f"{name}.{relationship.key} is None; a {name} lives on its "
                f"{parent_mapper.class_.__name__}'s shard, so it needs one (set "
                f"{name}.{relationship.key} or its foreign key)",
                model=name,
                relationship=relationship.key,
            )
        with self.no_autoflush:
            parent = self.get(parent_mapper, identity)
        if parent is None:
            raise MissingParentError(
                f"{name}.{relationship.key} refers to {parent_mapper.class_.__name__} "
                f"{tuple(identity)!r}, which is on no shard",
                model=name,
                relationship=relationship.key,
            )
        return parent

    def _shards_for_identity(
        self,
        mapper: Any,
        primary_key: Any,
        *,
        lazy_loaded_from: InstanceState[Any] | None = None,
        **kw: Any,
    ) -> Route:
        """identity_chooser of declarative mode: the shards a primary key may be on."""
        every = self._shard_names
        if lazy_loaded_from is not None and lazy_loaded_from.identity_token in every:
            # only an identity-map search: look on the parent's shard first; a
            # miss still loads through the statement router
            token = lazy_loaded_from.identity_token
            others = tuple(shard for shard in every if shard != token)
            return Route((token, *others), f"identity map: {token} (the parent's shard) first")
        for column, value in zip(mapper.primary_key, primary_key, strict=False):
            generator = generator_of(column)
            if generator is not None and generator.encodes_shard and value is not None:
                try:
                    shard = generator.shard_of(value)
                except ShardingError:
                    continue  # not one of its IDs: search everywhere
                if shard in every:
                    return Route((shard,), f"{mapper.class_.__name__} ID {value!r} -> {shard}")
        rule = self._rule(mapper)
        if isinstance(rule, KeyRule):
            for column, value in zip(mapper.primary_key, primary_key, strict=False):
                if _compat.plain(column) is _compat.plain(rule.column) and value is not None:
                    shard = rule.strategy.shard_for(value)
                    if shard is not None:
                        return Route(
                            (shard,),
                            f"primary key {rule.name}.{rule.attribute} = {value!r} -> {shard}",
                        )
        return Route(
            every,
            f"the primary key of {mapper.class_.__name__} does not carry its shard; all shards",
        )

    def _route(self, orm_context: ORMExecuteState) -> Route:
        """execute_chooser of declarative mode: the router."""
        assert self.shard_map is not None
        return self.shard_map.router.route(orm_context.statement, orm_context.parameters)


def _join_columns(relationship: RelationshipProperty[Any]) -> frozenset[Any]:
    return frozenset(
        _compat.plain(column) for pair in relationship.local_remote_pairs or () for column in pair
    )


def _colocated(session: ShardedSession, relationship: Any) -> bool:
    """Whether a relationship joins rows that always live on the same shard.

    True for the relationship a follower follows, and for any relationship
    over the same join columns (its reverse, a viewonly copy).
    """
    if not isinstance(relationship, RelationshipProperty):
        return False
    columns = _join_columns(relationship)
    for mapper in (relationship.parent, relationship.mapper):
        rule = session._rule(mapper)
        if isinstance(rule, FollowRule) and _join_columns(rule.relationship) == columns:
            return True
    return False


def _explicit_shard(
    session: ShardedSession, orm_context: ORMExecuteState
) -> tuple[Any, str] | None:
    """A shard the statement is pinned to by an option, a token or a lazy load."""
    for option in _compat.orm_options(orm_context):
        if isinstance(option, horizontal_shard.set_shard_id):
            return option.shard_id, f"set_shard_id({option.shard_id!r})"
    token = _compat.explicit_identity_token(orm_context)
    if token is not None:
        return token, f"identity token {token!r} (object loaded from that shard)"
    options = orm_context.execution_options
    if "_sa_shard_id" in options:
        shard = options["_sa_shard_id"]
        return shard, f"execution option _sa_shard_id={shard!r}"
    bind_arguments = orm_context.bind_arguments
    if "shard_id" in bind_arguments:
        shard = bind_arguments["shard_id"]
        return shard, f"bind_arguments shard_id={shard!r}"
    if (
        session.rules is not None
        and _compat.on_loader_path(orm_context.statement)  # cheap: mostly False
        and orm_context.is_relationship_load
    ):
        # a lazy load, or an eager loader's query run per shard of its parents
        state = _compat.lazy_loaded_from(orm_context)
        token = state.identity_token if state is not None else None
        if token is None:
            token = _compat.execution_identity_token(options)
        path = orm_context.loader_strategy_path
        relationship = path[-1] if path is not None and len(path) else None
        if token is not None and _colocated(session, relationship):
            return token, f"{relationship} loads rows of the parent's shard {token}"
    return None


def _execute_on_shards(orm_context: ORMExecuteState) -> Any:
    """The session's ``do_orm_execute`` handler: route, check, run on each shard."""
    session = orm_context.session
    assert isinstance(session, ShardedSession)
    statement = orm_context.statement
    explicit = _explicit_shard(session, orm_context)
    if explicit is not None:
        shard, reason = explicit
        session.check_shard(shard, reason)
        route = Route((shard,), reason)
    if not orm_context.is_select and (orm_context.is_insert or orm_context.is_update):
        # INSERT rows and ORM UPDATE-by-primary-key rows are routed one by one
        written = bulk.execute_write(session, orm_context, explicit)
        if written is not bulk.NOT_HANDLED:
            return written
    if explicit is None:
        if session.rules is not None and orm_context.is_update:
            _refuse_shard_key_assignment(session, orm_context)
        shard = _routed_shard(session, orm_context)
        if shard is not None:
            # the common case, one shard the router proved: go on on that shard
            # as below, without building a Route that nobody reads
            orm_context.bind_arguments["shard_id"] = shard
            orm_context.update_execution_options(identity_token=shard)
            return None
        chosen = session.execute_chooser(orm_context)
        if isinstance(chosen, Route):
            route = chosen  # the router's shards come from the shard map
        else:
            shards = tuple(chosen)
            route = Route(
                shards, "execute_chooser", scatter=len(set(shards)) == len(session.shard_names)
            )
            for shard in route.shards:
                session.check_shard(shard, "the execute chooser's result")
        if not route.shards:
            raise RoutingError(
                f"the execute chooser chose no shard for {statement_label(statement)}; "
                "it must return at least one shard name"
            )
        if len(route.shards) > 1:
            _check_multi_shard(session, orm_context, route)
    if session._route_log is not None:
        session._record(route, statement)

    if len(route.shards) == 1:
        # one shard: let the session go on with this very execution, bound to
        # that shard, rather than running the statement again nested
        orm_context.bind_arguments["shard_id"] = route.shards[0]
        orm_context.update_execution_options(identity_token=route.shards[0])
        return None

    return _run_on_shards(session, orm_context, route)


def _run_on_shards(session: ShardedSession, orm_context: ORMExecuteState, route: Route) -> Any:
    """A statement on several shards: planned, fanned out, its rows merged.

    A SELECT gets one database's answer (see :mod:`shardalchemy.planner`);
    with ``cross_shard="concatenate"``, and for UPDATE/DELETE, the shards'
    results are concatenated (rowcounts summed), as SQLAlchemy's extension
    does.  UPDATE/DELETE run one shard after another on the calling thread:
    the ORM synchronizes the session's objects as each one returns.
    """
    options = orm_context.execution_options
    shards = route.shards
    settings = session._fan_out_settings(options)
    plan = None
    if orm_context.is_select and settings.merge:
        plan = session._plan(orm_context.statement, shards, orm_context.parameters)
        if plan.fallback is not None and options.get("prebuffer_rows"):
            plan = plan.fallback  # AsyncSession loads the rows before they could be read

    def fan_out(statement: Any) -> tuple[list[Any], executor.Outcome]:
        def run_on(shard: Any) -> Any:
            return orm_context.invoke_statement(
                statement=statement,
                bind_arguments={"shard_id": shard},
                execution_options={"identity_token": shard},
            )

        outcome = executor.fan_out(
            session,
            shards,
            run_on,
            timeout=settings.timeout,
            allow_partial=settings.allow_partial,
            concurrency=settings.concurrency if orm_context.is_select else 1,
            pool_owner=session.shard_map if session.shard_map is not None else session,
        )
        return [outcome.results[shard] for shard in shards if shard in outcome.results], outcome

    results, outcome = fan_out(plan.statement if plan is not None else None)
    if plan is None:
        merged = results[0].merge(*results[1:])
        merged.failed_shards = dict(outcome.failures)
        return merged
    streams = [_rows_of(result, plan.row_columns) for result in results]
    if plan.fallback is not None and any(stream is None for stream in streams):
        for result in results:  # rows that cannot be read: select the sort keys instead
            result.close()
        plan = plan.fallback
        results, outcome = fan_out(plan.statement)
        streams = [_rows_of(result, ()) for result in results]
    rows = plan.merge(streams)
    if options.get("prebuffer_rows"):  # AsyncSession: rows must be read inside its greenlet
        rows = iter(list(rows))
    result = _compat.merged_result(results[0], rows, results, plan.visible, plan.single_entity)
    result.failed_shards = dict(outcome.failures)
    return result


def _rows_of(result: Any, row_columns: tuple[Any, ...]) -> Any:
    """One shard's rows as plain tuples (ORM objects already loaded), read lazily.

    With ``row_columns``, each row is followed by those columns of the row
    its entities were loaded from (``None`` if they cannot be read).
    """
    if row_columns:
        return _compat.rows_with_columns(result, row_columns)
    return _compat.processed_rows(result)


def _check_multi_shard(session: ShardedSession, orm_context: ORMExecuteState, route: Route) -> None:
    """Refuse what must not run on several shards: scatters in no-scatter mode, INSERT."""
    statement = orm_context.statement
    if orm_context.is_insert:
        raise RoutingError(
            f"INSERT ... SELECT reaches shards {', '.join(map(str, route.shards))} "
            f"({route.reason}); it runs on one shard only: add a shard-key predicate to its "
            "SELECT or pin it with set_shard_id(...)"
        )
    no_scatter = orm_context.execution_options.get("no_scatter", session.no_scatter)
    if no_scatter and route.scatter:
        tables: list[str] = []
        keys: list[str] = []
        if session.rules is not None:
            tables, keys = shard_key_hints(statement, session.rules)
        tables = tables or [statement_label(statement)]
        wanted = " or ".join(keys) or "the shard key"
        raise ScatterQueryError(
            f"{statement_label(statement)} would run on every shard ({route.reason}), and "
            f"scatter queries are refused (no_scatter); add a predicate on {wanted} "
            "(= or IN), pin it with set_shard_id(...), or allow this one with "
            ".execution_options(no_scatter=False)",
            tables=tables,
            missing=keys,
        )


def _protected_keys(rule: Rule) -> dict[str, str]:
    """Names (column keys and attribute names) whose assignment could move rows: name -> shown."""
    if isinstance(rule, KeyRule):
        shown = f"its shard key {rule.attribute}"
        return {rule.attribute: shown, str(rule.column.key): shown}
    relationship = rule.relationship
    names: dict[str, str] = {}
    for local, _ in relationship.local_remote_pairs or ():
        shown = f"{local.key}, the foreign key it follows its parent by"
        names[str(local.key)] = shown
        prop = relationship.parent.get_property_by_column(local)
        names[prop.key] = shown
    return names


def _refuse_shard_key_assignment(session: ShardedSession, orm_context: ORMExecuteState) -> None:
    """An UPDATE may not set what decides a row's shard: it would leave the row misplaced."""
    assert session.rules is not None
    statement = orm_context.statement
    table = getattr(statement, "table", None)
    rule = session.rules.for_table(_compat.plain(table)) if table is not None else None
    if rule is None:
        return
    protected = _protected_keys(rule)
    assigned: list[tuple[str, Any]] = []
    for column, value in _compat.dml_assignments(statement):
        key = column if isinstance(column, str) else getattr(column, "key", None)
        if key in protected:
            assigned.append((key, getattr(value, "value", value)))  # a bound value, unwrapped
    parameters = orm_context.parameters
    parameter_sets = [parameters] if isinstance(parameters, Mapping) else list(parameters or ())
    if parameter_sets:
        # execute-time parameters named like a column become SET clauses,
        # unless the statement has a bound parameter of that name
        bound = {
            element.key
            for element in visitors.iterate(cast(Any, statement))
            if isinstance(element, BindParameter)
        }
        for parameter_set in parameter_sets:
            for key, value in parameter_set.items():
                if key in protected and key not in bound:
                    assigned.append((key, value))
    if assigned:
        key, value = assigned[0]
        raise ShardKeyChangeError(
            f"UPDATE of {rule.name} sets {protected[key]} to {value!r}, which would move rows "
            "between shards; that is not supported (delete the rows and insert new ones "
            "instead)",
            model=rule.name,
            attribute=key,
            value=value,
        )


def _check_flush(session: ShardedSession, flush_context: Any, instances: Any) -> None:
    """before_flush in declarative mode: place every new object, refuse shard moves.

    Everything is checked before the flush emits any SQL, so a bad object
    leaves every shard untouched and the session as it was.
    """
    for obj in session.new:
        state = inspect(obj)
        if _EXPLICIT_SHARD not in state.info:
            state.identity_token = None  # recomputed below from current values
    for obj in session.new:
        state = inspect(obj)
        route = session._place(state)
        state.identity_token = route.shards[0]
        session._record(route, label=f"INSERT {state.mapper.local_table.name}")
    for obj in session.dirty:
        state = inspect(obj)
        if state.key is None or not session.is_modified(obj, include_collections=False):
            continue
        _refuse_shard_move(session, state)


def _refuse_shard_move(session: ShardedSession, state: InstanceState[Any]) -> None:
    rule = session._rule(state.mapper)
    if rule is None:
        return
    current = state.key[2] if state.key else None
    attribute = rule.attribute if isinstance(rule, KeyRule) else rule.relationship.key
    history = state.attrs[attribute].history
    if not history.added or history.unchanged:
        return
    new_value = history.added[0]
    if isinstance(rule, KeyRule):
        target = rule.shard_for_value(new_value)
    elif new_value is None:
        raise MissingParentError(
            f"{rule.name}.{attribute} was set to None; a {rule.name} must keep a parent to stay on "
            "its shard (delete it instead)",
            model=rule.name,
            relationship=attribute,
        )
    else:
        parent_state = inspect(new_value)
        target = parent_state.key[2] if parent_state.key else session._place(parent_state).shards[0]
    if target != current:
        old = history.deleted[0] if history.deleted else "<unloaded>"
        raise ShardKeyChangeError(
            f"{rule.name}.{attribute} changed from {old!r} to {new_value!r}, which moves the row "
            f"from shard {current!r} to {target!r}; moving rows between shards is not supported "
            "yet (delete the row and insert a new one)",
            model=rule.name,
            attribute=attribute,
            value=new_value,
        )


def _plain_select(statement: Any) -> bool:
    """A SELECT that is not a loader's, not pinned by ``set_shard_id``, with no token of its own."""
    if not getattr(statement, "is_select", False) or _compat.on_loader_path(statement):
        return False
    if "identity_token" in getattr(statement, "_execution_options", ()):
        return False  # the statement's own token would win over the routed one
    return not any(
        isinstance(option, horizontal_shard.set_shard_id)
        for option in _compat.statement_options(statement)
    )


def _routed_shard(session: ShardedSession, orm_context: ORMExecuteState) -> Any:
    """The one shard the declarative router proves for this execution, or ``None``.

    The fast path of :func:`_execute_on_shards` for statements that reach the
    hook: only when the execute chooser is the session's own router and no
    route is being recorded.  ``None`` means "take the general path", never
    "no shard".
    """
    if not session._own_router or session._route_log is not None:
        return None
    assert session.shard_map is not None
    return session.shard_map.router.single_shard(orm_context.statement, orm_context.parameters)


# drop-in mode has no sharding rules: no co-location to check, the rest as usual
_DROP_IN_PLANNER = planner.Planner(None)
# SQLAlchemy's own (semi-private) Session._execute_internal, which ours wraps
_SESSION_EXECUTE = horizontal_shard.ShardedSession._execute_internal
# execution options that do not change where a SELECT goes or how its hook would
# treat it (others, e.g. the load options of get() and lazy loads, take the hook)
_PLAIN_OPTIONS = frozenset(
    {"populate_existing", "autoflush", "yield_per", "stream_results", "max_row_buffer"}
)
