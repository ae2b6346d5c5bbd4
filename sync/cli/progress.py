"""The progress bars on stderr: rows of a backfill (or the demo), and an adoption."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from sync.admin import AdoptionSummary
from sync.cli.render import err


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} rows/s")


@contextmanager
def progress_bar(*, enabled: bool) -> Iterator[Callable[[int], Callable[[int], None]] | None]:
    """A factory: given the rows to read, a callback advancing a rich progress bar.

    The bar counts rows done (acknowledged, rejected, unchanged), not rows read: reading
    runs ahead of sending by up to 16 batches, so a bar of rows read says nothing.
    """
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )

    def start(total: int) -> Callable[[int], None]:
        task = bar.add_task("rows done", total=total)
        return lambda n: bar.advance(task, n)

    with bar:
        yield start


class AdoptionBar:
    """A rich progress bar for an adoption, shown from its first report on."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._scan: Any = None
        self._users: Any = None

    def __enter__(self) -> AdoptionBar:
        return self

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _started(self) -> Progress:
        if self._bar is None:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[shown]}"),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            )
            self._bar.start()
        return self._bar

    def scanned(self, rows: int) -> None:
        bar = self._started()
        if self._scan is None:
            self._scan = bar.add_task("source rows", total=None, shown="")
        bar.update(self._scan, completed=rows, shown=f"{rows:,} read")

    def read(self, done: int, highest: int) -> None:
        bar = self._started()
        if self._users is None:
            self._users = bar.add_task("Personyze users", total=highest or 1, shown="")
        bar.update(
            self._users,
            total=highest or 1,
            completed=done if highest else 1,
            shown=f"user_id {done:,} of {highest:,}",
        )

    def finished(self, summary: AdoptionSummary) -> None:
        """Every row found (or every user read): the bar is full."""
        if self._bar is not None and self._users is not None:
            task = next(t for t in self._bar.tasks if t.id == self._users)
            if task.total:
                self._bar.update(
                    self._users,
                    completed=task.total,
                    shown=f"{summary.users_read:,} users read, {summary.found:,} rows found",
                )
