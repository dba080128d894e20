"""One thread for the process that acts at statements' deadlines.

Arming and disarming a deadline is what every statement with a ``shard_timeout`` pays, so it
is a push onto a heap and a flag, under one lock: no thread or timer per statement
(a ``threading.Timer`` starts a thread each time).  The thread sleeps until the earliest
deadline; a disarmed deadline stays in the heap until it comes up (or until disarmed ones are
more than half of the heap, which is then rebuilt), so disarming is O(1).

An action runs on the watchdog thread and must not block: it only starts the work (a
cancellation on a worker thread, a socket shut down), so one shard that does not answer never
delays another statement's deadline.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("shardalchemy.execution")

_COMPACT_AT = 256  # disarmed entries tolerated before the heap may be rebuilt


class Alarm:
    """One armed deadline; :meth:`disarm` it when the statement ends in time."""

    __slots__ = ("_watchdog", "action")

    def __init__(self, watchdog: Watchdog, action: Callable[[], Any]) -> None:
        self._watchdog = watchdog
        self.action: Callable[[], Any] | None = action

    def disarm(self) -> None:
        """Forget the deadline (a no-op once its action has started)."""
        self._watchdog._disarm(self)


class Watchdog:
    """A heap of deadlines and the one daemon thread that acts on them.

    Example:

    >>> fired = threading.Event()
    >>> alarm = WATCHDOG.arm(0.01, fired.set)
    >>> fired.wait(5)
    True
    >>> WATCHDOG.arm(60, fired.clear).disarm()  # never fires
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()
        self._disarmed = 0
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, action: Callable[[], Any]) -> Alarm:
        """Run ``action()`` on the watchdog thread in ``seconds``, unless disarmed first."""
        alarm = Alarm(self, action)
        entry = (time.monotonic() + seconds, next(self._order), alarm)
        with self._condition:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="shardalchemy-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0] is entry:  # earlier than what the thread sleeps for
                self._condition.notify()
        return alarm

    def _disarm(self, alarm: Alarm) -> None:
        with self._condition:
            if alarm.action is None:
                return
            alarm.action = None
            self._disarmed += 1
            if self._disarmed > _COMPACT_AT and 2 * self._disarmed > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2].action is not None]
                heapq.heapify(self._heap)
                self._disarmed = 0

    def _watch(self) -> None:
        while True:
            with self._condition:
                action = None
                while action is None:
                    while self._heap and self._heap[0][2].action is None:
                        heapq.heappop(self._heap)
                        self._disarmed = max(0, self._disarmed - 1)
                    if not self._heap:
                        self._condition.wait()
                        continue
                    due = self._heap[0][0] - time.monotonic()
                    if due > 0:
                        self._condition.wait(due)
                        continue
                    _, _, alarm = heapq.heappop(self._heap)
                    action, alarm.action = alarm.action, None
            try:
                action()
            except Exception:  # one failing action must not stop every later deadline
                _log.exception("a deadline action failed")

    def _forget_thread(self) -> None:
        # a forked child has no watchdog thread, and its parent's deadlines are not its own
        self._condition = threading.Condition(threading.Lock())
        self._heap = []
        self._disarmed = 0
        self._thread = None


WATCHDOG = Watchdog()
"""The process's watchdog."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WATCHDOG._forget_thread)
