"""The rate ceiling adapts to 429s; the window keeps order while answers come in any order."""

from __future__ import annotations

import time
from functools import partial

import pytest

from sync.extract.query import Position
from sync.load.client import TokenBucket
from sync.load.window import Slot, Window
from sync.load.writer import Delivered, SenderThreads


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_429_halves_the_rate_and_successes_win_it_back_slowly() -> None:
    time = FakeTime()
    bucket = TokenBucket(40.0, time.clock, time.sleep)
    bucket.throttled()
    bucket.throttled()
    assert bucket.rate == 10.0
    for _ in range(10):
        bucket.succeeded()
    assert bucket.rate == pytest.approx(10.0 * 1.01**10)
    for _ in range(1000):
        bucket.succeeded()
    assert bucket.rate == 40.0  # never above the ceiling


def test_the_throttled_rate_is_what_requests_actually_get() -> None:
    time = FakeTime()
    bucket = TokenBucket(100.0, time.clock, time.sleep)
    for _ in range(5):
        bucket.throttled()  # 100 -> 3.125 per second
    start = time.now
    for _ in range(50):
        bucket.take()
    assert (time.now - start) == pytest.approx(49 / 3.125, rel=0.05)


def test_without_a_ceiling_nothing_is_limited_or_adapted() -> None:
    time = FakeTime()
    bucket = TokenBucket(None, time.clock, time.sleep)
    bucket.throttled()
    for _ in range(100):
        bucket.take()
    assert bucket.rate is None and time.now == 0.0


def sent(key: str, at: int) -> Slot:
    return Slot(key, Position(at, at), "fp", sent=True)


def test_the_window_hands_back_only_the_finished_prefix_in_order() -> None:
    window = Window()
    slots = [sent(str(i), i) for i in range(4)]
    for slot in slots:
        window.add(slot)
    window.complete(slots[2], Delivered(12))  # answers arrive out of order
    window.complete(slots[1], Delivered(11))
    assert window.finished() == []  # the first is still owed: nothing moves
    assert {s.key for s in window.done_ahead()} == {"1", "2"}  # but these can be stored
    assert window.done_ahead() == []  # each is handed over once
    window.complete(slots[0], Delivered(10))
    assert [s.key for s in window.finished()] == ["0", "1", "2"]
    assert [s.result() for s in slots[:3]] == [Delivered(10), Delivered(11), Delivered(12)]
    assert len(window) == 1
    window.complete(slots[3], Delivered(13))
    assert [s.key for s in window.drain()] == ["3"]


def test_rows_with_nothing_to_send_finish_at_once() -> None:
    window = Window()
    window.add(Slot("a", Position(1, 1), "fp"))  # unchanged: no request
    b = sent("b", 2)
    window.add(b)
    window.add(Slot("c", Position(1, 3), "fp", reason="no identifier"))
    assert [s.key for s in window.finished()] == ["a"]
    window.complete(b, Delivered(5))
    assert [s.key for s in window.finished()] == ["b", "c"]


def test_waiting_for_a_chunk_returns_when_the_last_of_it_finishes() -> None:
    window = Window()
    slots = [sent(str(i), i) for i in range(6)]
    for slot in slots:
        window.add(slot)
    with SenderThreads(3, name="test-window") as threads:
        for i in (3, 1, 0, 2):  # the oldest four, out of order, from other threads
            threads.run(lambda slot: time.sleep(0.01) or Delivered(int(slot.key)), slots[i],
                        partial(window.complete, slots[i]))  # fmt: skip
        prefix = window.finished(wait_for=4)
    assert [s.key for s in prefix] == ["0", "1", "2", "3"]
    assert not slots[4].done() and len(window) == 2


def test_an_exception_in_a_sending_thread_is_raised_where_the_result_is_read() -> None:
    window = Window()
    slot = sent("a", 1)
    window.add(slot)

    def broken(_: Slot) -> Delivered:
        raise RuntimeError("a bug, not a Personyze answer")

    with SenderThreads(1, name="test-window") as threads:
        threads.run(broken, slot, partial(window.complete, slot))
        (done,) = window.drain()
    with pytest.raises(RuntimeError, match="a bug"):
        done.result()


def test_the_client_offers_http2_when_it_speaks_tls() -> None:
    """HTTP/2 is negotiated by ALPN: the TLS ClientHello must offer "h2"."""
    import socket
    import threading

    from pydantic import SecretStr

    from sync.config import PersonyzeSettings
    from sync.errors import SyncError
    from sync.load.client import PersonyzeClient

    hello: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            hello.append(conn.recv(4096))  # the ClientHello, in clear; then hang up

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    settings = PersonyzeSettings(
        api_key=SecretStr("k"),
        base_url=f"https://127.0.0.1:{port}/rest",
        max_attempts=1,
        requests_per_second=None,
        timeout_s=5,
    )
    with PersonyzeClient(settings) as client, pytest.raises(SyncError):
        client.check_key()
    thread.join(5)
    server.close()
    assert hello and hello[0][:1] == b"\x16"  # a TLS handshake record
    assert b"\x02h2" in hello[0] and b"\x08http/1.1" in hello[0]
