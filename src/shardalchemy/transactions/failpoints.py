"""Failpoints: named steps of the commit protocol where a test can crash the coordinator.

``SHARDALCHEMY_FAILPOINT=after_decision`` makes the process kill itself (SIGKILL, no
cleanup, as a crash would) when the coordinator reaches that step; :func:`set_hook` runs
a function there instead (in-process fault tests: terminate a participant's backend,
restart its server).  Unset, a failpoint costs one comparison with ``None``.

The steps, in protocol order (see :mod:`shardalchemy.transactions.coordinator`):

- ``before_prepare``: the decider holds the transaction's lock, nothing is prepared;
- ``after_prepare``: after each participant's ``PREPARE TRANSACTION``;
- ``before_decision_commit``: every participant prepared, the decision row inserted in
  the decider's open transaction, not committed;
- ``after_decision``: the decider committed (the transaction is decided: committed);
- ``after_commit_prepared``: after each participant's ``COMMIT PREPARED``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

STEPS = (
    "before_prepare",
    "after_prepare",
    "before_decision_commit",
    "after_decision",
    "after_commit_prepared",
)

_crash_at: str | None = os.environ.get("SHARDALCHEMY_FAILPOINT") or None
_hook: Callable[[str, Any], None] | None = None


def set_hook(hook: Callable[[str, Any], None] | None) -> None:
    """Call ``hook(step, participants)`` at every step (``None``: no hook)."""
    global _hook
    _hook = hook


def reached(step: str, participants: Any = None) -> None:
    """The coordinator is at ``step``: crash here if told to, else run the hook, if any."""
    if _crash_at is not None and _crash_at == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if _hook is not None:
        _hook(step, participants)
