"""Writer against the sandbox over real HTTP, with a real thread pool."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from sync.config import PersonyzeSettings
from sync.errors import RetriableError
from sync.load.client import PersonyzeClient
from sync.load.writer import (
    Delivered,
    Failed,
    Gone,
    Outgoing,
    Refused,
    SenderThreads,
    Unresolved,
    Writer,
)
from sync.sandbox import Faults, RecordedRequest, SandboxServer
from tests.support import API_KEY, LoopbackServer, make_client, users_by_internal_id


def writer(client: PersonyzeClient, pool: SenderThreads) -> Writer:
    return Writer(client, pool, clock=time.monotonic)


@pytest.fixture
def pool() -> Iterator[SenderThreads]:
    with SenderThreads(4, name="test-send") as executor:
        yield executor


def most_at_once(log: list[RecordedRequest]) -> int:
    events = sorted(
        [(r.start, 1) for r in log] + [(r.end, -1) for r in log], key=lambda e: (e[0], e[1])
    )  # an end before a start at the same instant
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_a_mixed_batch_comes_back_in_order(sandbox: SandboxServer, pool: SenderThreads) -> None:
    items = [
        Outgoing("a", {"email": "ann@example.com", "firstName": "Ann"}),
        Outgoing("b", {"email": "bob@example.com", "address": {"city": "Paris"}}),
        Outgoing("c", {"user_id": 999, "first_name": "Ghost"}),
        Outgoing("d", {"internal_id": "row-4", "first_name": "Dee"}),
        Outgoing("e", {"email": "eve@example.com"}),
    ]
    with make_client(sandbox) as client:
        results = writer(client, pool).send(items)

    by_email = {u.get("email"): u["user_id"] for u in sandbox.users()}
    by_internal = {u.get("internal_id"): u["user_id"] for u in sandbox.users()}
    assert results == [
        Delivered(by_email["ann@example.com"]),
        Refused("Column address: nested values (objects, arrays) are not accepted", 400),
        Refused("Row not found", 400),
        Delivered(by_internal["row-4"]),
        Delivered(by_email["eve@example.com"]),
    ]
    assert len(sandbox.users()) == 3
    assert len(sandbox.requests) == 5


def test_requests_overlap_but_never_exceed_the_pool(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(latency_s=0.15)
    items = [Outgoing(str(i), {"email": f"user{i}@example.com"}) for i in range(9)]
    with make_client(sandbox, concurrency=8) as client, SenderThreads(3, name="test-send") as pool:
        results = writer(client, pool).send(items)

    assert all(isinstance(r, Delivered) for r in results)
    assert sorted(r.user_id for r in results if isinstance(r, Delivered)) == list(range(1, 10))
    log = sandbox.requests
    assert len(log) == 9
    assert most_at_once(log) == 3


def lost_answers(sandbox: SandboxServer) -> int:
    return sum(1 for r in sandbox.requests if r.fault == "lost_answer")


def test_payloads_that_cannot_merge_are_never_resent_after_a_lost_answer(
    any_sandbox: SandboxServer, pool: SenderThreads
) -> None:
    """internal_id and fb_id merge nowhere on the live service: after an answer that
    may have been applied, the row ends unresolved (its mark is reconciled next run)."""
    sandbox = any_sandbox
    sandbox.faults = Faults(lost_answer_rate=0.5, seed=11)
    items = [Outgoing(f"k{i}", {"internal_id": f"row-{i}", "first_name": f"F{i}"})
             for i in range(20)]  # fmt: skip
    items += [Outgoing("fb", {"fb_id": "fb-1"})]
    with make_client(sandbox) as client:
        results = writer(client, pool).send(items)

    lost = lost_answers(sandbox)
    assert 0 < lost < 21
    unresolved = [r for r in results if isinstance(r, Unresolved)]
    assert len(unresolved) == lost
    assert all(isinstance(r.error, RetriableError) for r in unresolved)
    assert len([r for r in sandbox.requests if r.method == "POST"]) == 21  # none resent
    assert [r for r in sandbox.requests if r.method == "GET"] == []
    found = users_by_internal_id(sandbox.users())
    assert all(len(users) == 1 for users in found.values())


def test_a_known_user_id_personyze_no_longer_has_is_gone(
    sandbox: SandboxServer, pool: SenderThreads
) -> None:
    items = [
        Outgoing("a", {"user_id": 999, "internal_id": "a"}, known=True),
        Outgoing("b", {"user_id": 998, "internal_id": "b"}),  # a mapped user_id: refused
    ]
    with make_client(sandbox) as client:
        results = writer(client, pool).send(items)
    assert results == [Gone(), Refused("Row not found", 400)]


def test_without_reconciliation_a_resend_duplicates_in_live_mode(
    any_sandbox: SandboxServer, pool: SenderThreads
) -> None:
    """What reconciliation saves us from.

    The live service does not merge on internal_id: a POST whose answer was lost
    has already created the user, so sending the same internal_id-only payload again
    creates a second one. The wiki's service would merge it. Reconciliation reads
    the user back by data_last_modified and resends with its user_id instead.
    """
    sandbox = any_sandbox
    live = not sandbox.store.internal_id_merges
    sandbox.faults = Faults(lost_answer_rate=0.5, seed=11)
    items = [Outgoing(f"k{i}", {"internal_id": f"row-{i}"}) for i in range(20)]
    with make_client(sandbox) as client:
        first = writer(client, pool).send(items)
        failed = [i for i, r in enumerate(first) if isinstance(r, Unresolved)]
        assert len(failed) == lost_answers(sandbox) > 0
        for i in failed:
            error = first[i].error  # type: ignore[union-attr]
            assert isinstance(error, RetriableError) and error.unapplied is False
        sandbox.faults = Faults()
        for i in failed:  # the naive resend
            client.upsert(items[i].payload)

    found = users_by_internal_id(sandbox.users())
    counts = {f"row-{i}": len(found[f"row-{i}"]) for i in range(20)}
    lost_rows = {f"row-{i}" for i in failed}
    assert counts == {row: 2 if live and row in lost_rows else 1 for row in counts}
    assert len(sandbox.users()) == 20 + (len(failed) if live else 0)


def test_payloads_with_an_email_are_simply_retried(
    any_sandbox: SandboxServer, pool: SenderThreads
) -> None:
    sandbox = any_sandbox
    sandbox.faults = Faults(lost_answer_rate=0.5, seed=5)
    items = [Outgoing(f"k{i}", {"email": f"user{i}@example.com", "internal_id": f"row-{i}"})
             for i in range(20)]  # fmt: skip

    with make_client(sandbox, max_attempts=20) as client:  # 2**-20: every row gets through
        results = writer(client, pool).send(items)

    lost = lost_answers(sandbox)
    assert lost > 0  # retried by the client: they merge by email
    assert [r.method for r in sandbox.requests].count("GET") == 0
    assert len(sandbox.requests) == 20 + lost
    users = {u["email"]: u for u in sandbox.users()}
    assert len(sandbox.users()) == 20  # exactly one user per email
    for i, result in enumerate(results):
        assert result == Delivered(users[f"user{i}@example.com"]["user_id"])


class FirstTimeLimited(LoopbackServer):
    """Answers 429 ``Retry-After: 1`` to the first request for ``slow@example.com``, 200
    (a new user_id) to everything else, and keeps the order requests arrived in."""

    def __init__(self) -> None:
        self.arrivals: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                email = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["email"]
                first = email not in server.arrivals
                server.arrivals.append(email)
                limited = first and email == "slow@example.com"
                body = b"Too many requests" if limited else str(len(server.arrivals)).encode()
                self.send_response(429 if limited else 200)
                if limited:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(Handler)
        self.url = f"http://127.0.0.1:{self.port}/rest"


def test_a_retry_waiting_out_retry_after_does_not_hold_the_sending_thread() -> None:
    """One sending thread: while the 429'd row waits its second, the others are sent."""
    emails = ["slow@example.com", *(f"u{i}@example.com" for i in range(5))]
    with FirstTimeLimited() as server, SenderThreads(1, name="test-parked") as one_thread:
        settings = PersonyzeSettings(
            api_key=API_KEY, base_url=server.url, requests_per_second=None, max_attempts=3
        )
        with PersonyzeClient(settings) as client:
            results = writer(client, one_thread).send([Outgoing(e, {"email": e}) for e in emails])
    assert all(isinstance(r, Delivered) for r in results)
    assert server.arrivals == [*emails, "slow@example.com"]  # the others went first


def test_a_stop_ends_a_parked_retry_at_once_without_sending_it_again() -> None:
    stopping = threading.Event()
    with (
        FirstTimeLimited() as server,
        SenderThreads(1, name="test-parked", stop=stopping.is_set) as one_thread,
    ):
        settings = PersonyzeSettings(
            api_key=API_KEY, base_url=server.url, requests_per_second=None, max_attempts=3
        )
        with PersonyzeClient(settings) as client:
            sending = Writer(client, one_thread, stop=stopping.is_set, clock=time.monotonic)
            results: list[Any] = []
            done = threading.Event()
            sending.start(
                Outgoing("slow", {"email": "slow@example.com"}),
                lambda r: (results.append(r), done.set()),
            )
            stopping.set()  # while it waits out Retry-After: 1 (or before it is sent)
            assert done.wait(0.9)  # before the second was over
    (result,) = results
    assert isinstance(result, Failed)
    assert server.arrivals in ([], ["slow@example.com"])  # never sent twice
