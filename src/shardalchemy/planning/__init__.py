"""Planning: a multi-shard SELECT -> a plan (per-shard statement + merge operators).

Pure: it reads the statement, the sharding rules and a few facts about the
shards' database (:mod:`.facts`) and returns a :class:`~.plan.Plan`; it never
touches a connection.  What no plan answers exactly is refused
(:mod:`.refusals`) with :class:`~shardalchemy.CrossShardQueryError`.
"""

from .facts import WEIGHT, DatabaseFacts
from .plan import Plan
from .planner import Planner, plan_select
from .refusals import refuse

__all__ = ["WEIGHT", "DatabaseFacts", "Plan", "Planner", "plan_select", "refuse"]
