"""``${VAR}`` in a URL's user-info is percent-encoded; a raw ``@`` there is refused.

Pure and fast: the config is parsed from text, nothing is connected to. The real
processes, databases and output channels are in ``test_security_channels.py``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from sync.config import Config, parse_config
from sync.errors import ConfigError
from sync.logs import redact, secrets_of, set_secrets

PASSWORD = "p@ss:w/rd%41#y?z"  # %41 is no escape: it must arrive as written
ENV = {"PW": PASSWORD, "USER": "us@er:x", "EMPTY": "", "HOST": "db.example"}


def parse(url: str, *, webhook: str | None = None, environ: dict[str, str] = ENV) -> Config:
    doc = {
        "personyze": {"api_key": "key-123456"},
        "state": {"url": "sqlite://"},
        "jobs": [
            {
                "name": "customers",
                "source": {"url": url, "table": "customers", "cursor": "updated_at", "key": "id"},
                "mapping": {"id": "internal_id"},
            }
        ],
    }
    if webhook is not None:
        doc["alerts"] = {"webhook_url": webhook}
    return parse_config(yaml.safe_dump(doc), environ=environ, base_dir=Path("/tmp"))


def source_url(url: str, environ: dict[str, str] = ENV) -> str:
    return parse(url, environ=environ).jobs[0].source.url.get_secret_value()


@pytest.mark.parametrize(
    ("template", "user", "password", "host", "database"),
    [
        ("postgresql://reader:${PW}@db:5432/shop", "reader", PASSWORD, "db", "shop"),
        ("mysql+pymysql://${USER}:${PW}@db/shop", "us@er:x", PASSWORD, "db", "shop"),
        ("postgresql://u:${UNSET:-d@f:/%}@db/shop", "u", "d@f:/%", "db", "shop"),
        ("postgresql://u:${EMPTY:-dflt}@db/shop", "u", "dflt", "db", "shop"),
        ("postgresql://u:pre$$-${PW}-post@db/shop", "u", f"pre$-{PASSWORD}-post", "db", "shop"),
        ("postgresql://${CREDS}@db/shop", "bob", "s3:c@r/t", "db", "shop"),  # first ':' divides
        ("postgresql://u:${PW}@${HOST}:5432/shop", "u", PASSWORD, "db.example", "shop"),
    ],
)
def test_a_value_spliced_into_the_user_info_arrives_intact(
    template: str, user: str, password: str, host: str, database: str
) -> None:
    parsed = make_url(source_url(template, {**ENV, "CREDS": "bob:s3:c@r/t"}))
    assert (parsed.username, parsed.password) == (user, password)
    assert (parsed.host, parsed.database) == (host, database)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("sqlite:////tmp/${HOST}.db", "sqlite:////tmp/db.example.db"),  # no user-info
        ("postgresql://u:pw@db/${HOST}", "postgresql://u:pw@db/db.example"),  # the database
        (
            "postgresql://u@db/shop?application_name=${PW}",
            f"postgresql://u@db/shop?application_name={PASSWORD}",
        ),  # the query
        ("${WHOLE}", "postgresql://u:pre%40encoded@db/shop"),  # a URL given whole: as is
    ],
)
def test_values_spliced_elsewhere_are_unchanged(template: str, expected: str) -> None:
    environ = {**ENV, "WHOLE": "postgresql://u:pre%40encoded@db/shop"}
    assert source_url(template, environ) == expected


def test_any_url_value_is_encoded_the_same_way() -> None:
    config = parse("sqlite://", webhook="https://hook:${PW}@hooks.example/T0/B0")
    assert config.alerts.webhook_url is not None
    parts = urlsplit(config.alerts.webhook_url.get_secret_value())
    assert (parts.hostname, parts.password) == ("hooks.example", quote(PASSWORD, safe=""))


@pytest.mark.parametrize(
    "given",
    [
        "url: postgresql://u:p@ss@db/shop",  # typed into the config
        "url: ${WHOLE}",  # a whole URL from one variable
        "url_file: url.txt",  # a whole URL from a secret file
    ],
)
def test_a_raw_at_sign_in_a_user_info_is_refused_with_how_to_fix_it(
    given: str, tmp_path: Path
) -> None:
    raw = "postgresql://u:p@ss/word@db/shop"
    (tmp_path / "url.txt").write_text(raw + "\n")
    key, value = given.split(": ", 1)
    text = yaml.safe_dump(
        {
            "personyze": {"api_key": "key-123456"},
            "jobs": [
                {
                    "name": "c",
                    "source": {key: value, "table": "t", "cursor": "c", "key": "id"},
                    "mapping": {"id": "internal_id"},
                }
            ],
        }
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="c.yaml", environ={"WHOLE": raw}, base_dir=tmp_path)
    message = str(caught.value)
    assert "jobs[0].source.url" in message and "more than one '@'" in message
    assert "@ as %40" in message and "${VAR}" in message  # how to fix it
    assert "ss/word" not in message and "p@ss" not in message


def test_the_password_is_masked_in_every_form_it_may_take() -> None:
    config = parse("postgresql://reader:${PW}@db/shop", webhook="https://h:${PW}x@hooks.example/")
    found = secrets_of(config)
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    for form in (PASSWORD, quote(PASSWORD, safe=""), quote_plus(PASSWORD), encoded):
        assert form in found
    assert PASSWORD + "x" in found  # the webhook's own password
    set_secrets(found)
    try:
        for form in (PASSWORD, quote(PASSWORD, safe="").lower(), quote_plus(PASSWORD), encoded):
            assert redact(f"said {form}.") == "said ***.", form
    finally:
        set_secrets(())
