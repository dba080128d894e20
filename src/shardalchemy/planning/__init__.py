"""Planning: a multi-shard SELECT -> a plan (per-shard statement + merge operators).

Pure: it reads the statement, the sharding rules and a few facts about the
shards' database (:mod:`.facts`) and returns a :class:`~.plan.Plan`; it never
touches a connection.  The plan is made by the rewrites of
:data:`~.planner.REWRITES` (one module each in :mod:`.rewrites`), applied in
order to a :class:`~.draft.Draft` of the statement; what no plan answers
exactly is refused (:mod:`.refusals`) with
:class:`~shardalchemy.CrossShardQueryError`.
"""

from .draft import Draft
from .facts import WEIGHT, DatabaseFacts
from .plan import Plan
from .planner import REWRITES, Planner, plan_select, rewrite
from .refusals import refuse

__all__ = [
    "REWRITES",
    "WEIGHT",
    "DatabaseFacts",
    "Draft",
    "Plan",
    "Planner",
    "plan_select",
    "refuse",
    "rewrite",
]
