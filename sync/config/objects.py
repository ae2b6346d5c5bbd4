"""What a job feeds: Personyze users (the default), the product catalog or an audience.

The rules each object adds to a job, checked once with the rest of the config, at the
line of the key they concern. Kept apart from ``jobs`` so the users job's rules read
on their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from sync.config.yaml import invalid as _fail

if TYPE_CHECKING:
    from sync.config.jobs import JobSettings

Object = Literal["users", "products", "audience"]
PRODUCT_KEY = "internal_id"  # the products object's unique index: the job's key is sent as it
PRODUCT_FIELDS = (
    "internal_id", "title", "price", "sale_price", "is_in_stock", "guide_url", "image_big_url",
)  # fmt: skip  # the fields Personyze's own integration documents (any other is allowed)
MEMBER_COLUMNS = ("email",)  # what an audience job may map: the fallback identifier


def check_object(job: JobSettings) -> None:
    """Raise the first rule of the job's object that the job breaks."""
    if job.object == "users":
        _users(job)
    elif job.object == "products":
        _products(job)
    else:
        _audience(job)


def _not_for(job: JobSettings, *keys: str) -> None:
    for key in keys:
        if key in job.model_fields_set and getattr(job, key) is not None:
            raise _fail(f"'{key}' is for audience jobs; this job has object: {job.object}", key)


def _users(job: JobSettings) -> None:
    _not_for(job, "audience", "users_job")
    if job.sync == "add":
        raise _fail("'add' is an audience mode; users jobs: upsert, update or mirror", "sync")
    if not job.mapping:
        raise _fail("expected at least one 'source column: Personyze column' entry", "mapping")


def _products(job: JobSettings) -> None:
    _not_for(job, "audience", "users_job")
    if job.sync not in ("upsert", "mirror"):
        raise _fail(
            f"products jobs sync by 'upsert' or 'mirror' (POST creates or patches a product "
            f"by internal_id; no update-only write is documented), got '{job.sync}'",
            "sync",
        )
    for column, target in job.mapping.items():
        if target == PRODUCT_KEY and column != job.source.key:
            raise _fail(
                f"'{PRODUCT_KEY}' is the job's key ('{job.source.key}'), sent with every "
                "product: map it from the key or leave it out",
                "mapping",
                column,
            )
    if PRODUCT_KEY in job.transforms:
        raise _fail(
            f"'{PRODUCT_KEY}' is the job's key as read (a delete finds the product by it): "
            "it takes no transforms",
            "transforms",
            PRODUCT_KEY,
        )
    if not {t for t in job.mapping.values() if t != PRODUCT_KEY} and not job.transforms:
        raise _fail("expected at least one product column besides the key", "mapping")


def _audience(job: JobSettings) -> None:
    if not job.audience:
        raise _fail('an audience job names its audience: audience: "VIP customers"', "audience")
    if job.sync not in ("add", "mirror"):
        raise _fail(f"audience jobs sync by 'add' or 'mirror', got '{job.sync}'", "sync")
    for column, target in job.mapping.items():
        if target not in MEMBER_COLUMNS:
            raise _fail(
                f"an audience job maps only {', '.join(MEMBER_COLUMNS)} (to find a member "
                f"the users job did not sync), got '{target}'",
                "mapping",
                column,
            )
    if job.users_job is None and not job.mapping:
        raise _fail(
            "an audience job finds members by the users job that synced them "
            "(users_job: NAME) or by email (mapping: {email_column: email}): give one",
            "users_job",
        )
    if job.delete_when is not None:
        raise _fail(
            "rows leave an audience by leaving the query (sync: mirror), not by delete_when",
            "delete_when",
        )
    if job.shards != 1:
        raise _fail("an audience job runs as one part (shards: 1)", "shards")
    if job.transforms:
        raise _fail("an audience job sends no columns, so it has no transforms", "transforms")
