"""What a job feeds (object: users, products, audience): each object's rules, at their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.config import parse_config
from sync.errors import ConfigError

HEAD = """\
personyze: {api_key: k, base_url: "http://127.0.0.1:1/rest"}
jobs:
  - name: customers
    source: {url: "sqlite:///x.db", table: c, key: id, cursor: updated_at}
    mapping: {email: email}
"""
CATALOG = """\
  - name: catalog
    object: products
    source: {url: "sqlite:///x.db", table: p, key: sku, cursor: updated_at}
"""
VIP = """\
  - name: vip
    object: audience
    audience: VIP customers
    source: {url: "sqlite:///x.db", query: "select id from c", key: id, detect: diff}
"""


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_config(text, source="f.yaml", environ={}, base_dir=Path("."))


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value)


def test_a_job_feeds_users_unless_it_says_otherwise() -> None:
    config = parse(HEAD + CATALOG + "    mapping: {title: title, price: price}\n")
    assert [(j.object, j.sync) for j in config.jobs] == [
        ("users", "upsert"),
        ("products", "upsert"),
    ]


def test_an_audience_job_adds_by_default_and_names_its_users_job() -> None:
    config = parse(HEAD + VIP + "    users_job: customers\n")
    vip = config.job("vip")
    assert (vip.object, vip.sync, vip.audience, vip.users_job) == (
        "audience", "add", "VIP customers", "customers"
    )  # fmt: skip


USERS_JOB = "    users_job: customers\n"
RULES = {
    "products-update": (
        CATALOG + "    sync: update\n    mapping: {title: t}\n",
        "f.yaml:9: jobs[1].sync: products jobs",
    ),
    "products-internal-id-elsewhere": (
        CATALOG + "    mapping: {code: internal_id}\n",
        "f.yaml:9: jobs[1].mapping.code: 'internal_id' is the job's key",
    ),
    "products-key-only": (
        CATALOG + "    mapping: {sku: internal_id}\n",
        "expected at least one product column besides the key",
    ),
    "users-job-typo": (
        VIP + "    users_job: custmers\n",
        "users_job 'custmers' is not a users job of this file (did you mean 'customers'?)",
    ),
    "audience-no-identity": (VIP, "jobs[1].users_job: an audience job finds members by"),
    "audience-maps-profile": (
        VIP + USERS_JOB + "    mapping: {name: first_name}\n",
        "an audience job maps only email",
    ),
    "audience-upsert": (
        VIP + USERS_JOB + "    sync: upsert\n",
        "audience jobs sync by 'add' or 'mirror', got 'upsert'",
    ),
    "audience-delete-when": (VIP + USERS_JOB + "    delete_when: gone = 1\n", "not by delete_when"),
    "users-audience-key": (
        HEAD.replace("{email: email}", "{email: email}\n    audience: X"),
        "'audience' is for audience jobs",
    ),
    "users-add": (
        HEAD.replace("{email: email}", "{email: email}\n    sync: add"),
        "'add' is an audience mode",
    ),
}


@pytest.mark.parametrize(("text", "expected"), RULES.values(), ids=RULES.keys())
def test_each_object_rule_is_named_at_its_line(text: str, expected: str) -> None:
    if not text.startswith("personyze"):
        text = HEAD + text
    assert expected in error_of(text)
