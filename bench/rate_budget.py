"""``bench/replicas.py --limit-rps N``: the rate the replicas sent together, against N.

The sandbox limits the account at N requests a second (a token bucket: ``limit_rps``)
and every replica is configured with ``requests_per_second: N``: the budget is the
account's, so together they should send about N a second, with few 429s. The
sandbox counts the requests it received in each whole second of its clock
(``by_second``); the rate is their mean over the seconds between the first and the
last (those two are partial: left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Budgeted:
    """What the sandbox received from one replica count, second by second."""

    count: int
    requests: int
    limited: int  # answered 429
    rate: float  # requests a second, all replicas together, over the full seconds
    peak: int  # the busiest second's requests
    seconds: int  # full seconds measured

    @property
    def limited_share(self) -> float:
        return self.limited / self.requests if self.requests else 0.0


def budgeted(count: int, stats: dict[str, Any]) -> Budgeted:
    """The figures of one replica count from the sandbox's ``/stats``."""
    by_second = {int(k): (int(v[0]), int(v[1])) for k, v in stats.get("by_second", {}).items()}
    requests = sum(n for n, _ in by_second.values())
    limited = sum(n for _, n in by_second.values())
    if len(by_second) < 3:
        return Budgeted(count, requests, limited, 0.0, 0, 0)
    first, last = min(by_second), max(by_second)
    full = [by_second.get(s, (0, 0))[0] for s in range(first + 1, last)]
    return Budgeted(count, requests, limited, sum(full) / len(full), max(full), len(full))


def print_budget(results: list[Budgeted], limit: float) -> None:
    head = (
        f"{'replicas':>8} {'sum of rates (req/s)':>20} {'ratio to N':>10} "
        f"{'peak second':>11} {'answered 429':>12} {'seconds':>7}"
    )
    print(f"\nrate budget: the sandbox limits at N = {limit:g} requests/s; each replica has")
    print(f"requests_per_second: {limit:g}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.count:>8} {r.rate:>20.1f} {r.rate / limit:>10.2f} {r.peak:>11d} "
            f"{r.limited_share:>12.2%} {r.seconds:>7d}"
        )
    print()
