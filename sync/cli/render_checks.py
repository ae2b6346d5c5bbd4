"""``validate``'s checks: one line each (ok and warnings on stdout, problems on stderr,
in the order they were checked), or a JSON list."""

from __future__ import annotations

from typing import Any

from sync.admin import Check
from sync.cli.render import err, out


def print_checks(checks: list[Check]) -> None:
    for check in checks:
        what = (f"job {check.job}: " if check.job else "") + check.check
        if check.problem is not None:
            err.print(f"FAIL  {what}: {check.problem}", markup=False)
        elif check.warning is not None:
            out.print(f"warn  {what}: WARNING {check.warning}", markup=False)
        else:
            out.print(
                f"ok    {what}" + (f" ({check.detail})" if check.detail else ""), markup=False
            )
    failed = sum(not c.ok for c in checks)
    if failed:
        err.print(f"{failed} of {len(checks)} checks failed", markup=False)


def check_doc(check: Check) -> dict[str, Any]:
    return {
        "check": check.check,
        "job": check.job,
        "ok": check.ok,
        "problem": check.problem,
        "detail": check.detail,
        "warning": check.warning,
    }
