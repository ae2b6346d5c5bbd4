"""Trying things out: the local sandbox API, the demo."""

from __future__ import annotations

import threading

import click

from sync.cli.common import log_options
from sync.cli.progress import progress_bar
from sync.cli.render import err, out
from sync.errors import ConfigError, PortUnavailable
from sync.signals import stop_on_signals

# The sandbox's port unless --port says otherwise: neither IANA's nor a well-known
# local tool's (8787 was, RStudio Server's and Cloudflare wrangler's; 8788 is wrangler
# pages', 8793 Airflow's, 8778 Jolokia's, 8888 Jupyter's), nor seen open in nmap's
# survey of the internet (its nmap-services list).
SANDBOX_PORT = 8742
SANDBOX_KEY = "sandbox-key"


def _sandbox_retry_after(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """``--retry-after``: seconds (>= 0), or ``none`` to send 429s without the header."""
    if value.strip().lower() == "none":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither seconds nor 'none'") from None
    if not 0 <= seconds < float("inf"):
        raise click.BadParameter("must be 0 or more seconds")
    return seconds


_SANDBOX_RATE = click.FloatRange(0, 1)


_SANDBOX_SECONDS = click.FloatRange(min=0)


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Listen on this address (0.0.0.0: every interface, as in a container).",
)
@click.option(
    "--port", default=SANDBOX_PORT, show_default=True, type=int, help="Listen on this port."
)
@click.option(
    "--api-key",
    default=SANDBOX_KEY,
    show_default=True,
    metavar="KEY",
    help="The key a client must send (Basic auth, user 'api').",
)
@click.option(
    "--internal-id-merges",
    is_flag=True,
    help="Behave as the wiki says (merge on internal_id), not as the live service.",
)
@click.option(
    "--latency-ms",
    type=_SANDBOX_SECONDS,
    default=0,
    show_default=True,
    help="Milliseconds added to each request in the fault scope.",
)
@click.option(
    "--jitter-ms",
    type=_SANDBOX_SECONDS,
    default=0,
    show_default=True,
    help="Plus up to this many milliseconds, at random.",
)
@click.option("--error-rate", type=_SANDBOX_RATE, default=0, help="Fraction answered 500 or 503.")
@click.option(
    "--rate-limit-rate", type=_SANDBOX_RATE, default=0, help="Fraction answered 429, at random."
)
@click.option(
    "--retry-after",
    default="1",
    show_default=True,
    metavar="S|none",
    callback=_sandbox_retry_after,
    help="Retry-After of the --rate-limit-rate 429s (none: no header).",
)
@click.option(
    "--drop-rate", type=_SANDBOX_RATE, default=0, help="Fraction whose connection is dropped."
)
@click.option(
    "--lost-answer-rate",
    type=_SANDBOX_RATE,
    default=0,
    help="Fraction applied, then answered 500 or dropped (the answer is lost).",
)
@click.option(
    "--wrong-shape-rate",
    type=_SANDBOX_RATE,
    default=0,
    help='Fraction of reads answered {"result": "ok"} instead of a list.',
)
@click.option(
    "--late-apply-rate",
    type=_SANDBOX_RATE,
    default=0,
    help="Fraction of writes left unanswered, applied after --late-apply-s.",
)
@click.option(
    "--late-apply-s",
    type=_SANDBOX_SECONDS,
    default=3.0,
    show_default=True,
    help="Seconds a late write waits, unanswered, before it is applied.",
)
@click.option(
    "--trickle-rate",
    type=_SANDBOX_RATE,
    default=0,
    help="Fraction served normally but answered one byte at a time.",
)
@click.option(
    "--trickle-s",
    type=_SANDBOX_SECONDS,
    default=0.5,
    show_default=True,
    help="Seconds between the bytes of a trickled answer.",
)
@click.option(
    "--endless-rate",
    type=_SANDBOX_RATE,
    default=0,
    help="Fraction not applied, answered 200 with a chunked body that never ends.",
)
@click.option(
    "--limit-rps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="A real rate limit (token bucket): requests beyond it get 429 with Retry-After.",
)
@click.option(
    "--limit-burst",
    type=click.FloatRange(min=1),
    default=None,
    help="The bucket's size [default: one second's worth, at least 1].",
)
@click.option("--include-account", is_flag=True, help="Faults hit /rest/account too.")
@click.option("--writes-only", is_flag=True, help="Faults hit POST, PUT and DELETE only.")
@click.option("--seed", type=int, default=None, help="Seed the draw: the same faults every run.")
@log_options()
def sandbox(
    host: str,
    port: int,
    api_key: str,
    internal_id_merges: bool,
    latency_ms: float,
    jitter_ms: float,
    error_rate: float,
    rate_limit_rate: float,
    retry_after: float | None,
    drop_rate: float,
    lost_answer_rate: float,
    wrong_shape_rate: float,
    late_apply_rate: float,
    late_apply_s: float,
    trickle_rate: float,
    trickle_s: float,
    endless_rate: float,
    limit_rps: float | None,
    limit_burst: float | None,
    include_account: bool,
    writes_only: bool,
    seed: int | None,
) -> None:
    """Serve a local Personyze-compatible API until Ctrl-C.

    It serves users, products, user_lists and user_list_users; faults hit all four
    alike (and /rest/account with --include-account). The rates are fractions of
    requests (0..1), exclusive per request (one seeded draw picks at most one kind),
    so together at most 1. --limit-rps is a gate apart, applied first: a
    request it refuses gets 429 at once and takes no part in the draw.

    \b
    Examples:
      personyze-sync sandbox                     # http://127.0.0.1:8742/rest, key sandbox-key
      personyze-sync sandbox --port 9000 --api-key try-me --error-rate 0.1 --seed 1
    """
    from dataclasses import asdict

    from sync.sandbox import Faults, SandboxServer

    try:
        faults = Faults(
            latency_s=latency_ms / 1000,
            latency_jitter_s=jitter_ms / 1000,
            error_rate=error_rate,
            rate_limit_rate=rate_limit_rate,
            retry_after_s=retry_after,
            drop_rate=drop_rate,
            lost_answer_rate=lost_answer_rate,
            wrong_shape_rate=wrong_shape_rate,
            late_apply_rate=late_apply_rate,
            late_apply_s=late_apply_s,
            trickle_rate=trickle_rate,
            trickle_s=trickle_s,
            endless_rate=endless_rate,
            limit_rps=limit_rps,
            limit_burst=limit_burst,
            include_account=include_account,
            writes_only=writes_only,
            seed=seed,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    server = SandboxServer(
        api_key, host=host, port=port, internal_id_merges=internal_id_merges, faults=faults
    )
    try:
        server.start()
    except PortUnavailable as exc:
        raise ConfigError(f"{exc}; choose another with --port N") from None
    err.print(f"sandbox Personyze API at {server.url} (Ctrl-C stops)", markup=False)
    # A key of its own may be the user's real one (Compose passes PERSONYZE_API_KEY):
    # only the default is printed.
    key = api_key if api_key == SANDBOX_KEY else "KEY"
    err.print(
        f"log in as user 'api' with the key: curl -u api:{key} "
        f"{server.url}/users/order_by/user_id/limit/10"
        + ("" if key == api_key else "  (KEY: the --api-key given)"),
        markup=False,
        soft_wrap=True,
    )
    defaults = asdict(Faults())
    changed = {k: v for k, v in asdict(faults).items() if v != defaults[k]}
    if changed:
        err.print("faults: " + ", ".join(f"{k}={v}" for k, v in changed.items()), markup=False)
    stop = threading.Event()
    try:  # SIGINT or SIGTERM (docker stop) stops it; a second signal at once
        with stop_on_signals(lambda _signal: stop.set()):
            while not stop.wait(1.0):
                pass
    finally:
        server.stop()


@click.command()
@click.option("--rows", default=1000, show_default=True, help="Sample customers to make.")
@log_options()
def demo(rows: int) -> None:
    """A complete sync on this machine: SQLite source, local sandbox, backfill, change, sync.

    Nothing to set up, no network: it runs in a temporary folder and leaves nothing.

    \b
    Examples:
      personyze-sync demo
      personyze-sync demo --rows 100
    """
    from sync.demo import run_demo

    with progress_bar(enabled=True) as progress:
        run_demo(out, rows=rows, progress=progress)
