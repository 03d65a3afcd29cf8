"""Run work from many threads released at the same moment (the concurrent-saves tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_at_once(work: Callable[[int, int], None], threads: int, per_thread: int) -> None:
    """Call work(worker, i) for i < per_thread in each of `threads` threads that start together;
    any error in a thread fails the caller."""
    start, errors = threading.Barrier(threads), []

    def worker(index: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                work(index, i)
        except BaseException as exc:  # asserted in the calling thread
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
