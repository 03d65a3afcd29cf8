"""The analysis queue: one at a time, a bounded number waiting in order and told their position."""

from __future__ import annotations

import threading
import time

import pytest

from backend.analysis_queue import AnalysisQueue, QueueFullError

HANG_GUARD_S = 30  # how long to wait for a thread before calling the test hung (not a speed target)


def wait_for(condition) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, "the queue never reached the expected state"
        time.sleep(0.01)


class Analyses:
    """Threads that each take the slot, record the order they got it in, and hold it until released."""

    def __init__(self, queue: AnalysisQueue) -> None:
        self.queue, self.order, self.positions = queue, [], {}
        self.release = {name: threading.Event() for name in "abc"}
        self.threads = []

    def start(self, name: str) -> None:
        def waiting(position: int, of: int) -> None:
            self.positions.setdefault(name, []).append((position, of))

        def run() -> None:
            with self.queue.slot(waiting):
                self.order.append(name)
                assert self.release[name].wait(HANG_GUARD_S)

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def finish(self) -> None:
        for event in self.release.values():
            event.set()
        for thread in self.threads:
            thread.join(HANG_GUARD_S)


def test_one_runs_the_others_wait_in_order_and_learn_their_position():
    queue = AnalysisQueue(max_waiting=2)
    runs = Analyses(queue)
    try:
        runs.start("a")
        wait_for(lambda: queue.state() == (True, 0))
        runs.start("b")
        wait_for(lambda: queue.state() == (True, 1))
        runs.start("c")
        wait_for(lambda: queue.state() == (True, 2))
        with pytest.raises(QueueFullError, match="queue is full: one analysis is running and 2 are waiting"):
            with queue.slot():
                pass
        assert queue.state() == (True, 2), "a refused caller leaves no trace"
        runs.release["a"].set()
        wait_for(lambda: runs.order == ["a", "b"] and queue.state() == (True, 1))
        assert runs.positions == {"b": [(1, 1)], "c": [(2, 2), (1, 1)]}
    finally:
        runs.finish()
    assert runs.order == ["a", "b", "c"] and queue.state() == (False, 0)


def test_without_waiting_room_a_busy_slot_refuses_at_once():
    queue = AnalysisQueue(max_waiting=0)
    runs = Analyses(queue)
    try:
        runs.start("a")
        wait_for(lambda: queue.state() == (True, 0))
        with pytest.raises(QueueFullError, match="the limit is 0, ERC_MAX_QUEUED_ANALYSES"):
            with queue.slot():
                pass
    finally:
        runs.finish()
    with queue.slot():
        assert queue.state() == (True, 0)


def test_a_waiter_that_fails_leaves_the_queue():
    queue = AnalysisQueue(max_waiting=1)
    runs = Analyses(queue)

    def broken_progress(position: int, of: int) -> None:
        raise RuntimeError("the client went away")

    try:
        runs.start("a")
        wait_for(lambda: queue.state() == (True, 0))
        with pytest.raises(RuntimeError, match="went away"):
            with queue.slot(broken_progress):
                pass
        assert queue.state() == (True, 0)
    finally:
        runs.finish()
