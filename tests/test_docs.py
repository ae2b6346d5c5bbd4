"""What the shipped docs say about the daemon's schedule and the container is what they do."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sync.config import load_config
from sync.config.jobs import Schedule
from sync.daemon import schedule_of, trigger_for

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "personyze-sync.example.yaml"
README = ROOT / "README.md"


def comment_about(path: Path, words: str) -> str:
    """The comment paragraph of ``path`` that holds ``words`` (its ``#`` lines joined)."""
    paragraphs = re.split(r"\n(?!\s*#)", path.read_text(encoding="utf-8"))
    for paragraph in paragraphs:
        text = " ".join(line.strip().lstrip("#").strip() for line in paragraph.splitlines())
        if words in text:
            return text
    raise AssertionError(f"{path.name} says nothing about {words!r}")


def test_the_example_says_what_the_daemon_does_with_a_job_without_a_schedule() -> None:
    config = load_config(
        EXAMPLE, {"PERSONYZE_API_KEY": "k", "PG_PASSWORD": "p", "MYSQL_PASSWORD": "p"}
    )
    job = config.jobs[0].model_copy(update={"schedule": None})
    assert schedule_of(job) == Schedule(every=timedelta(minutes=5))
    said = comment_about(EXAMPLE, "Without a schedule")
    assert "the daemon runs the job every 5 minutes" in said, said
    assert "only on" not in said, said


def test_cron_schedules_run_in_utc_and_the_docs_say_so() -> None:
    trigger = trigger_for(Schedule(cron="0 5 * * *"))
    after = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, after) == datetime(2026, 12, 3, 5, 0, tzinfo=UTC)
    assert "in UTC" in comment_about(EXAMPLE, "5-field crontab")
    row = next(
        line for line in README.read_text().splitlines() if line.startswith("| `jobs[].schedule`")
    )
    assert "cron times are UTC" in row and "every 5 minutes" in row, row


def test_the_dockerfile_points_at_docs_that_exist() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (.+)$", README.read_text(encoding="utf-8"), re.M))
    sections = re.findall(r"README(?:\.md)?'s ([A-Z][\w ]*?) section", text)
    assert sections and set(sections) <= headings, sections
    files = re.findall(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:md|yaml|yml|toml))\b", text)
    missing = [f for f in files if not (ROOT / f).exists()]
    assert missing == [], f"the Dockerfile names files that do not exist: {missing}"
