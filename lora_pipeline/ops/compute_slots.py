"""How much model work runs at once in this process: training and evaluation take turns on small CPU machines.

torch gives every job every core. On the 2-core machine two trainings at once ran each domain 3x slower
(VADER: 137-162 s a domain and a 360 s flow, against 41-47 s and 196 s one after the other, 2026-12-02), and
a domain's evaluation beside another's training took 60-125 s instead of 7 s and stretched that training
from ~47 s to 120 s (2026-12-05, fp32). So on machines with ``SMALL_MACHINE_CORES`` or fewer, one model job
holds the cores at a time (the VADER flow: 336 s -> 258 s, the same adapters); registration, I/O and MLflow
calls still overlap it. Larger machines (and GPUs with many host cores) run as many jobs as
``runtime.parallel_domains`` allows.

An evaluation waiting for a slot goes before a waiting training: a domain that has trained is finished
(scored, then registered) before more domains start. Whether its evaluation is waiting yet depends on the
flow's thread pool: with ``parallel_domains: 2`` the pool's queue holds every training ahead of it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SMALL_MACHINE_CORES = 4
EVALUATION, TRAINING = 0, 1  # priorities: lower goes first


class ComputeSlots:
    """A counting semaphore whose waiters are served by priority, then in no particular order."""

    def __init__(self, slots: int) -> None:
        self.size = slots
        self._free = slots
        self._waiting = [0, 0]  # waiters per priority
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, priority: int) -> Iterator[None]:
        with self._changed:
            self._waiting[priority] += 1
            try:
                self._changed.wait_for(lambda: self._free > 0 and not any(self._waiting[:priority]))
                self._free -= 1
            finally:
                self._waiting[priority] -= 1
                self._changed.notify_all()  # a lower priority may be next now (or instead, if this wait failed)
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._changed.notify_all()

    def waiting(self, priority: int) -> int:
        with self._changed:
            return self._waiting[priority]


def takes_turns(priority: int) -> Callable:
    """Decorator: the function runs holding one of ``MODEL_WORK``'s slots at ``priority``."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def holding_a_slot(*args, **kwargs):
            with MODEL_WORK.hold(priority):
                return fn(*args, **kwargs)
        return holding_a_slot
    return decorate


MODEL_WORK = ComputeSlots(1 if (os.cpu_count() or 1) <= SMALL_MACHINE_CORES else 64)
