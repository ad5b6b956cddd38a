"""Training and evaluation take turns on small machines; a waiting evaluation goes first."""

import threading
import time

import pytest

from lora_pipeline.ops.compute_slots import EVALUATION, MODEL_WORK, SMALL_MACHINE_CORES, TRAINING, ComputeSlots


def _wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("queued, expected", [
    ([TRAINING, EVALUATION], ["evaluation", "training"]),  # the evaluation overtakes the earlier training
    ([EVALUATION, TRAINING], ["evaluation", "training"]),
    ([TRAINING, EVALUATION, EVALUATION], ["evaluation", "evaluation", "training"]),
])
def test_waiters_are_served_evaluation_first(queued, expected):
    slots, order, release = ComputeSlots(1), [], threading.Event()
    held = threading.Event()

    def occupy():
        with slots.hold(TRAINING):
            held.set()
            release.wait(10)

    def job(priority):
        with slots.hold(priority):
            order.append("evaluation" if priority == EVALUATION else "training")

    threads = [threading.Thread(target=occupy)]
    threads[0].start()
    held.wait(10)
    for priority in queued:  # queued one after the other, each seen waiting before the next
        before = slots.waiting(priority)
        threads.append(threading.Thread(target=job, args=(priority,)))
        threads[-1].start()
        _wait_until(lambda p=priority, b=before: slots.waiting(p) == b + 1)
    assert order == []  # nobody ran while the slot was held
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == expected


def test_two_slots_run_two_jobs_at_once():
    slots, inside, both = ComputeSlots(2), [], threading.Barrier(2, timeout=10)

    def job(priority):
        with slots.hold(priority):
            inside.append(priority)
            both.wait()  # raises BrokenBarrierError if the second job cannot get in

    threads = [threading.Thread(target=job, args=(p,)) for p in (TRAINING, EVALUATION)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(inside) == [EVALUATION, TRAINING]


def test_a_failing_job_gives_its_slot_back():
    slots, got = ComputeSlots(1), threading.Event()
    with pytest.raises(RuntimeError):
        with slots.hold(EVALUATION):
            raise RuntimeError("boom")

    def job():
        with slots.hold(TRAINING):
            got.set()

    thread = threading.Thread(target=job)
    thread.start()
    thread.join(10)
    assert got.is_set()


def test_small_machines_run_one_model_job_at_a_time():
    import os

    assert MODEL_WORK.size == (1 if (os.cpu_count() or 1) <= SMALL_MACHINE_CORES else 64)
