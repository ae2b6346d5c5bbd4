"""Requests in flight: enough to cover the round trip, never more than ``concurrency``."""

from __future__ import annotations

import threading
import time

import pytest

from sync.load.inflight import HEADROOM, WINDOW, InFlightLimit, needed, unloaded
from sync.load.writer import Outgoing, SenderThreads, Writer
from sync.sandbox import Faults, SandboxServer
from tests.support import API_KEY, FakeClock, make_client


@pytest.mark.parametrize(
    ("round_trip", "cpu", "ceiling", "want"),
    [
        (0.050, 0.0003, 32, 32),  # a remote API: the ceiling
        (0.0003, 0.0003, 32, 1 + HEADROOM),  # loopback: one covers it, plus headroom
        (0.0010, 0.0003, 32, 4 + HEADROOM),  # rounded up
        (0.0003, 0.0003, 2, 2),  # never above the ceiling
        (0.0, 0.0003, 32, HEADROOM),  # an instant answer still leaves the headroom
        (0.050, 0.0, 32, 32),  # no CPU time measured: the ceiling
        (float("inf"), 0.0003, 8, 8),  # no round trip measured: the ceiling
        (0.0003, 0.0003, 1, 1),
    ],
)
def test_requests_needed_cover_the_round_trip(
    round_trip: float, cpu: float, ceiling: int, want: int
) -> None:
    assert needed(round_trip, cpu, ceiling) == want


@pytest.mark.parametrize(
    ("round_trips", "want"),
    [
        ([], float("inf")),
        ([0.005], 0.005),
        ([0.001 * i for i in range(1, 101)], 0.011),  # the 10th percentile
        ([0.0001] * 5 + [0.050] * 95, 0.050),  # a few instant answers do not count
    ],
)
def test_the_unloaded_round_trip_is_the_10th_percentile(
    round_trips: list[float], want: float
) -> None:
    assert unloaded(round_trips) == want


def test_the_limit_is_set_again_each_window_of_delivered_rows() -> None:
    cpu = FakeClock(0.0)
    limit = InFlightLimit(32, cpu_clock=cpu)
    assert limit.limit == 32
    for _ in range(WINDOW - 1):
        cpu.now += 0.0005
        limit.delivered(0.001)
    assert limit.limit == 32  # not yet a whole window
    cpu.now += 0.0005
    limit.delivered(0.003)
    assert limit.limit == 2 + HEADROOM  # 1 ms ÷ 0.5 ms of CPU per row
    for _ in range(WINDOW):
        cpu.now += 0.0005
        limit.delivered(0.060)  # the API is far away now
    assert limit.limit == 32


def test_a_thread_waits_for_a_place_and_one_over_the_limit_leaves() -> None:
    cpu = FakeClock(0.0)
    limit = InFlightLimit(2, cpu_clock=cpu)
    limit.enter()
    limit.enter()
    entered = threading.Event()

    def third() -> None:
        limit.enter()
        entered.set()
        limit.leave()

    waiting = threading.Thread(target=third)
    waiting.start()
    assert not entered.wait(0.1)  # two places, both taken
    limit.leave()
    assert entered.wait(5)
    waiting.join()
    limit.limit = 0
    assert limit.over()
    limit.leave()


def run_writer(latency_s: float, items: int) -> int:
    """Send ``items`` rows one by one through 16 threads; the in-flight limit after."""
    with (
        SandboxServer(API_KEY, faults=Faults(latency_s=latency_s)) as sandbox,
        make_client(sandbox, concurrency=16) as client,
        SenderThreads(16, name="test-send") as pool,
    ):
        writer = Writer(client, pool, clock=time.monotonic)
        done = threading.Semaphore(0)
        for i in range(items):
            writer.start(Outgoing(str(i), {"email": f"u{i}@example.com"}), lambda _: done.release())
        for _ in range(items):
            assert done.acquire(timeout=30)
        assert len(sandbox.users()) == items
        return pool.in_flight.limit


def test_a_short_round_trip_keeps_a_few_threads_at_work_and_a_long_one_all() -> None:
    assert run_writer(0.0, 3 * WINDOW) < 16
    assert run_writer(0.05, WINDOW + 16) == 16


def test_threads_sleeping_over_the_limit_still_end_at_shutdown() -> None:
    pool = SenderThreads(8, name="test-send")
    pool.in_flight.limit = 1
    finished: list[object] = []
    for _ in range(20):
        pool.run(time.sleep, 0.01, finished.append)
    pool.shutdown()
    assert len(finished) == 20
    assert not any(t.is_alive() for t in pool._threads)
