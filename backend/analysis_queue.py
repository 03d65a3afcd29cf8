"""The analysis queue: one analysis runs at a time, a bounded number wait and learn their position,
and the rest are refused with a message instead of waiting without end.

Gradio's own queue is shared by every event (saves too) and its size limit is global, so the bound
lives here, around the model run only.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class QueueFullError(RuntimeError):
    """Too many analyses are waiting; the message says so and when to try again."""


class AnalysisQueue:
    """At most one holder of the slot; at most `max_waiting` callers wait for it, first come first served."""

    def __init__(self, max_waiting: int) -> None:
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be 0 or more, got {max_waiting}")
        self.max_waiting = max_waiting
        self._changed = threading.Condition()
        self._waiting: deque[object] = deque()
        self._running = False

    def state(self) -> tuple[bool, int]:
        """(an analysis is running, how many wait)."""
        with self._changed:
            return self._running, len(self._waiting)

    @contextmanager
    def slot(self, waiting: Callable[[int, int], None] = lambda position, of: None) -> Iterator[None]:
        """Hold the analysis slot for the block. While others are ahead, `waiting(position, of)` is
        called each time the position changes (1 = next; `of` = how many wait). Refused with
        `QueueFullError` when `max_waiting` already wait."""
        ticket = object()
        with self._changed:
            if (self._running or self._waiting) and len(self._waiting) >= self.max_waiting:
                raise QueueFullError(
                    f"The analysis queue is full: one analysis is running and {len(self._waiting)} "
                    f"{'is' if len(self._waiting) == 1 else 'are'} waiting (the limit is "
                    f"{self.max_waiting}, ERC_MAX_QUEUED_ANALYSES). Try again in a few minutes."
                )
            self._waiting.append(ticket)
            try:
                reported = None
                while self._running or self._waiting[0] is not ticket:
                    position = self._waiting.index(ticket) + 1
                    if position != reported:
                        waiting(position, len(self._waiting))
                        reported = position
                    self._changed.wait()
            except BaseException:  # a failed report or an interrupt must not leave a dead ticket
                self._waiting.remove(ticket)
                self._changed.notify_all()
                raise
            self._waiting.popleft()
            self._running = True
            self._changed.notify_all()  # everyone behind moved up one
        try:
            yield
        finally:
            with self._changed:
                self._running = False
                self._changed.notify_all()
