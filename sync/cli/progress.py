"""The progress bars on stderr: rows of a backfill (or the demo), and an adoption."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import RenderableType
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

if TYPE_CHECKING:
    from sync.load.pacing import CeilingWatch


class RateColumn(ProgressColumn):
    """Rows a second: lately while it runs, over the whole bar once it is full."""

    def render(self, task: Task) -> Text:
        if task.finished and task.finished_time:
            return Text(f"{task.completed / task.finished_time:,.0f} rows/s")
        return Text(f"{task.speed or 0:,.0f} rows/s")


def ceiling_note(watch: CeilingWatch | None) -> str | None:
    """What to say when the rate ceiling is what holds the run back (None: it is not)."""
    if watch is None or watch.pacing.ceiling is None or not watch.limiting():
        return None
    return f"at the {watch.pacing.ceiling:g}/s ceiling: personyze.requests_per_second"


class RowsBar(Progress):
    """The bars of rows done, and below them the ceiling's note while it holds them back."""

    def __init__(self, watch: CeilingWatch | None) -> None:
        self._watch = watch  # (before rich's __init__, which draws the bar once)
        super().__init__(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeRemainingColumn(elapsed_when_finished=True),
            console=err,
            transient=False,
        )

    def get_renderables(self) -> Iterable[RenderableType]:
        yield from super().get_renderables()
        note = ceiling_note(self._watch)
        if note:
            yield Text(note)


@contextmanager
def progress_bar(
    *, enabled: bool, watch: CeilingWatch | None = None
) -> Iterator[Callable[[int], Callable[[int], None]] | None]:
    """A factory: given the rows to read, a callback advancing a rich progress bar.

    The bar counts rows done (acknowledged, rejected, unchanged), not rows read: reading
    runs ahead of sending by up to 16 batches, so a bar of rows read says nothing. It
    is drawn from the first total on and ends (drawn full, for good) once every bar is
    full or the block ends: what is printed next (on any console) comes below it, never
    under a bar still being redrawn.
    """
    if not enabled:
        yield None
        return
    live: list[RowsBar] = []  # the bar being drawn, if any

    def start(total: int) -> Callable[[int], None]:
        if not live:
            live.append(RowsBar(watch))
            live[0].start()
        bar = live[0]
        task = bar.add_task("rows done", total=total)

        def tick(n: int) -> None:
            bar.advance(task, n)
            if live and live[0] is bar and all(t.finished for t in bar.tasks):
                live.clear()
                bar.stop()

        if total == 0:
            tick(0)
        return tick

    try:
        yield start
    finally:
        if live:
            live.pop().stop()


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
