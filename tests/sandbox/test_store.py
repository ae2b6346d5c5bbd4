"""Unit tests of the sandbox's pure store: parsing, selection, merge rules, stamps."""

from __future__ import annotations

from typing import Any

import pytest

from sync.sandbox.store import (
    Condition,
    Query,
    RequestError,
    UserStore,
    normalize_body,
    normalize_column,
    parse_modifiers,
    parse_where,
)
from tests.support import FakeClock


def path(text: str) -> Query:
    """Parse a raw modifier path such as ``where/a=1/limit/5``."""
    return parse_modifiers(text.split("/"))


def make_store(rows: list[dict[str, Any]], **kwargs: Any) -> UserStore:
    store = UserStore(**kwargs)
    for row in rows:
        store.upsert(row)
    return store


def keyset(store: UserStore, condition: str) -> list[int]:
    """Every user_id a range condition selects, read by user_id keyset 50 at a time."""
    seen: list[int] = []
    while True:
        last = seen[-1] if seen else 0
        page = store.get(
            path(f"where/{condition}&user_id>{last}/order_by/user_id/limit/50/column/user_id")
        )
        if not page:
            return seen
        seen.extend(page)


PEOPLE: list[dict[str, Any]] = [
    {"email": "ann@x.com", "first_name": "Ann", "age": 30, "city": "Oslo", "internal_id": "a1"},
    {"email": "bob@x.com", "first_name": "Bob", "age": "9", "city": "Rome", "internal_id": "b2"},
    {"email": "cy/d&e=f,g|h:i@x.com", "first_name": "Cy", "age": 41, "internal_id": "c3"},
    {"fb_id": 777, "first_name": "Dee", "age": 30.5, "city": "Oslo"},
]


# --- names and bodies ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("firstName", "first_name"),
        ("first_name", "first_name"),
        ("FirstName", "first_name"),
        ("dataLastModified", "data_last_modified"),
        ("customT1", "custom_t_1"),
        ("custom_i_2", "custom_i_2"),
        ("userID", "user_id"),
        ("fbId", "fb_id"),
        ("address2", "address2"),
    ],
)
def test_normalize_column(name: str, expected: str) -> None:
    assert normalize_column(name) == expected


@pytest.mark.parametrize("name", ["", "first name", "a-b", "é"])
def test_normalize_column_refuses_odd_names(name: str) -> None:
    with pytest.raises(RequestError, match="Invalid column name"):
        normalize_column(name)


def test_normalize_body_drops_empty_values_and_keeps_types() -> None:
    body = {"firstName": "Ann", "lastName": "", "phone": None, "vip": True, "n": 0, "f": 1.5}
    assert normalize_body(body) == {"first_name": "Ann", "vip": True, "n": 0, "f": 1.5}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ("text", "must be a JSON object"),
        ({"tags": ["a"]}, "Column tags: nested"),
        ({"homeAddress": {"city": "x"}}, "Column home_address: nested"),
    ],
)
def test_normalize_body_refusals(body: object, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        normalize_body(body)


# --- where parsing ---------------------------------------------------------------

Parsed = tuple[str, str, tuple[str, ...]]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a=1", (("a", "=", ("1",)),)),
        ("a!=1", (("a", "!=", ("1",)),)),
        ("a>1", (("a", ">", ("1",)),)),
        ("a%3E1", (("a", ">", ("1",)),)),  # clients encode > and <
        ("a%3C=1", (("a", "<=", ("1",)),)),
        ("a>=1", (("a", ">=", ("1",)),)),
        ("a<1", (("a", "<", ("1",)),)),
        ("a<=1", (("a", "<=", ("1",)),)),
        ("a:1,2,3", (("a", ":", ("1", "2", "3")),)),
        ("a!:1,2", (("a", "!:", ("1", "2")),)),
        ("firstName=Ann", (("first_name", "=", ("Ann",)),)),
        ("a=", (("a", "=", ("",)),)),
        ("e=x%2Fy%26z%3Dw%2Cv%7Cu%3At%25s", (("e", "=", ("x/y&z=w,v|u:t%s",)),)),
        ("e:a%2Cb,c", (("e", ":", ("a,b", "c")),)),
        ("e=a+b@x.com", (("e", "=", ("a+b@x.com",)),)),
    ],
)
def test_parse_single_condition(
    raw: str, expected: tuple[tuple[str, str, tuple[str, ...]]]
) -> None:
    where = parse_where(raw)
    assert len(where) == 1
    assert [(c.column, c.op, c.values) for c in where[0]] == list(expected)


def test_parse_and_binds_tighter_than_or() -> None:
    where = parse_where("a=1&b=2|c=3&d!=4|e>5")
    shape = [[(c.column, c.op, c.values[0]) for c in group] for group in where]
    assert shape == [
        [("a", "=", "1"), ("b", "=", "2")],
        [("c", "=", "3"), ("d", "!=", "4")],
        [("e", ">", "5")],
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "needs a condition"),
        ("abc", "no operator"),
        ("=1", "no column name"),
        ("a!1", "unknown operator"),
        ("a=1&", "no operator"),
        ("a=b=c", "must be percent-encoded"),
        ("a=b:c", "must be percent-encoded"),
        ("a=%zz", "Malformed percent-encoding"),
        ("a=%ff", "Malformed percent-encoding"),
        ("a%20b=1", "Invalid column name"),
    ],
)
def test_parse_where_refusals(raw: str, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_where(raw)


@pytest.mark.parametrize(
    ("condition", "row", "expected"),
    [
        (Condition("a", "=", ("10",)), {"a": 10}, True),
        (Condition("a", "=", ("10",)), {"a": "10"}, True),
        (Condition("a", "=", ("10",)), {"a": 10.0}, True),
        (Condition("a", ">", ("9",)), {"a": 10}, True),  # numeric, not text
        (Condition("a", ">", ("9",)), {"a": "10"}, True),
        (Condition("a", ">", ("b",)), {"a": "abc"}, False),  # text
        (Condition("a", "<", ("b",)), {"a": "abc"}, True),
        (Condition("a", ">=", ("10",)), {"a": 10}, True),
        (Condition("a", "<=", ("9.5",)), {"a": 10}, False),
        (Condition("a", "!=", ("1",)), {"a": 2}, True),
        (Condition("a", "!=", ("1",)), {}, False),  # missing never matches
        (Condition("a", "!:", ("1", "2")), {}, False),
        (Condition("a", "!:", ("1", "2")), {"a": 3}, True),
        (Condition("a", ":", ("1", "2")), {"a": 2}, True),
        (Condition("a", ":", ("1", "2")), {"a": "x"}, False),
        (Condition("a", "=", ("1",)), {"a": True}, True),
        (Condition("a", "=", ("",)), {"a": "x"}, False),
    ],
)
def test_condition_matches(condition: Condition, row: dict[str, Any], expected: bool) -> None:
    assert condition.matches(row) is expected


# --- modifiers -------------------------------------------------------------------


def test_parse_modifiers_any_order() -> None:
    query = path("limit/5,10/order_by_desc/dataLastModified/columns/user_id,firstName/where/a=1")
    assert query.offset == 5
    assert query.limit == 10
    assert query.order == (("data_last_modified", True),)
    assert query.columns == ("user_id", "first_name")
    assert query.where is not None and query.where[0][0].column == "a"


def test_parse_modifiers_user_id_then_columns() -> None:
    query = path("57291/columns/email")
    assert query.user_id == 57291
    assert query.columns == ("email",)


def test_order_by_and_desc_keep_path_order() -> None:
    query = path("order_by_desc/b/order_by/a,c")
    assert query.order == (("b", True), ("a", False), ("c", False))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("bogus/1", "Unknown modifier: 'bogus'"),
        ("limit/1/limit/2", "Modifier limit given twice"),
        ("where", "Modifier where needs a value"),
        ("limit/x", "Malformed limit"),
        ("limit/1,2,3", "Malformed limit"),
        ("limit/-1", "Malformed limit"),
        ("limit/1001", "must not exceed 1000"),
        ("limit/999,2", "must not exceed 1000"),
        ("columns/a/column/b", "either columns or column"),
        ("columns/a,,b", "comma-separated list"),
        ("5/where/a=1", "where cannot follow a user id"),
        ("where/a=1/5", "Unknown modifier: '5'"),
    ],
)
def test_parse_modifiers_refusals(raw: str, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        path(raw)


def test_limit_exactly_1000_is_allowed() -> None:
    assert path("limit/990,10").limit == 10
    assert path("limit/1000").limit == 1000


# --- selection -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modifiers", "expected_ids"),
    [
        ("where/city=Oslo", [1, 4]),
        ("where/age>10/limit/50", [1, 3, 4]),  # "9" is the number 9
        ("where/age<10/limit/50", [2]),
        ("where/age>=30&age<=30.5/limit/50", [1, 4]),
        ("where/first_name=Bob|city=Oslo&age>30/limit/50", [2, 4]),  # & before |
        ("where/city=Oslo|first_name=Bob&age>30/limit/50", [1, 4]),
        ("where/user_id:1,3,99", [1, 3]),
        ("where/user_id!:1,3", [2, 4]),
        ("where/email:ann@x.com,bob@x.com", [1, 2]),
        ("where/email=cy%2Fd%26e%3Df%2Cg%7Ch%3Ai@x.com", [3]),
        ("where/fb_id=777", []),  # live: fb_id is not a lookup key
        ("where/city!=Oslo", [2]),  # Cy has no city: no match
        ("where/user_id>1/order_by_desc/user_id/limit/50", [4, 3, 2]),
        ("where/user_id>=2&user_id<4/limit/50", [2, 3]),
        ("where/user_id>0/limit/1,2", [2, 3]),
        ("where/age>0/order_by/age/limit/50", [2, 1, 4, 3]),
        ("where/age>0/order_by_desc/age/limit/50", [3, 4, 1, 2]),
        ("where/age>0/order_by/city,user_id/limit/50", [3, 1, 4, 2]),  # missing first
        ("order_by/email", [4, 1, 2, 3]),  # missing sorts first
        ("order_by_desc/fb_id/limit/1", [4]),
        ("order_by/user_id/limit/0", []),
        ("where/nothing=1", []),
    ],
)
def test_select(modifiers: str, expected_ids: list[int]) -> None:
    store = make_store(PEOPLE)
    assert store.get(path(modifiers + "/column/user_id")) == expected_ids


def test_live_mode_internal_id_is_never_matched() -> None:
    store = make_store(PEOPLE)
    for cond in ("internal_id=a1", "internal_id:a1,b2", "internal_id!=zz", "internal_id>a"):
        assert store.get(path(f"where/{cond}/limit/50")) == [], cond
    assert store.get(path("where/internal_id=a1|user_id=2/column/user_id")) == [2]
    # ... but it is stored, returned and orderable
    assert store.get(path("order_by_desc/internal_id/column/internal_id")) == [
        "c3",
        "b2",
        "a1",
        None,
    ]


def test_wiki_mode_internal_id_is_matched() -> None:
    store = make_store(PEOPLE, internal_id_merges=True)
    assert store.get(path("where/internal_id=b2/column/user_id")) == [2]
    assert store.get(path("where/internal_id:a1,c3/column/user_id")) == [1, 3]


def test_select_shapes() -> None:
    store = make_store(PEOPLE)
    assert store.get(path("1/columns/email,firstName,nope")) == {
        "email": "ann@x.com",
        "first_name": "Ann",
        "nope": None,
    }
    assert store.get(path("2/column/age")) == "9"
    full = store.get(path("where/user_id=4"))
    assert full == [
        {
            "user_id": 4,
            "fb_id": 777,
            "first_name": "Dee",
            "age": 30.5,
            "city": "Oslo",
            "data_last_modified": full[0]["data_last_modified"],
        }
    ]


def test_single_id_not_found() -> None:
    store = make_store(PEOPLE)
    with pytest.raises(RequestError, match=r"^Row not found$"):
        store.get(path("99"))


@pytest.mark.parametrize("modifiers", ["limit/5", "order_by/first_name", "columns/email"])
def test_read_without_where_must_be_ordered_by_an_index(modifiers: str) -> None:
    store = make_store(PEOPLE)
    with pytest.raises(RequestError, match="indexed column"):
        store.get(path(modifiers))


def test_default_limit_is_1000_and_keyset_pages_work() -> None:
    store = make_store([{"email": f"u{i}@x.com", "n": i} for i in range(2500)])
    assert len(store.get(path("order_by/user_id"))) == 1000
    seen: list[int] = []
    last = 0
    while True:
        page = store.get(path(f"where/user_id>{last}/order_by/user_id/limit/50/column/user_id"))
        if not page:
            break
        seen.extend(page)
        last = page[-1]
    assert seen == list(range(1, 2501))
    desc = store.get(path("where/user_id<=2000&n>=0/order_by_desc/user_id/limit/3/column/user_id"))
    assert len(store.get(path("where/user_id:" + ",".join(map(str, range(1, 1001)))))) == 1000
    assert desc == [2000, 1999, 1998]


# --- merge rules and stamps ------------------------------------------------------


def test_post_creates_with_increasing_ids_and_merges_by_identifiers() -> None:
    store = UserStore()
    assert store.upsert({"email": "a@x.com", "firstName": "A"}) == 1
    assert store.upsert({"fb_id": "55", "first_name": "F"}) == 2
    assert store.upsert({"email": "a@x.com", "lastName": "L"}) == 1  # by email
    assert store.upsert({"user_id": 2, "email": "f@x.com"}) == 2  # by user_id
    assert store.upsert({"email": "A@x.com"}) == 3  # exact match only
    assert store.upsert({"email": "f@x.com", "fb_id": 1}) == 2  # email merges
    users = store.users()
    assert [u["user_id"] for u in users] == [1, 2, 3]
    assert {k: v for k, v in users[0].items() if k != "data_last_modified"} == {
        "user_id": 1,
        "email": "a@x.com",
        "first_name": "A",
        "last_name": "L",
    }
    assert users[1]["email"] == "f@x.com"
    assert users[1]["fb_id"] == 1
    # the old email no longer finds user 2; the new one does
    assert store.get(path("where/email=f@x.com/column/user_id")) == [2]
    assert store.get(path("where/email=a@x.com|email=A@x.com/column/user_id")) == [1, 3]


def test_live_mode_fb_id_does_not_merge_and_is_never_matched() -> None:
    store = UserStore()
    assert store.upsert({"fb_id": "55", "first_name": "F"}) == 1
    assert store.upsert({"fb_id": 55, "city": "Oslo"}) == 2  # a new user, not a merge
    assert store.upsert({"fb_id": "55", "email": "e@x.com"}) == 3
    assert store.upsert({"fb_id": "55", "email": "e@x.com", "n": 1}) == 3  # email merges
    assert store.upsert({"fb_id": "55", "user_id": 1, "n": 2}) == 1  # user_id merges
    for cond in ("fb_id=55", "fb_id:55,56", "fb_id!=0", "fb_id!:0", "fb_id>0"):
        assert store.get(path(f"where/{cond}/limit/50")) == [], cond
    assert store.get(path("where/fb_id=55|user_id=2/column/user_id")) == [2]
    assert store.update(path("where/fb_id=55"), {"x": 1}) == 0
    assert store.delete(path("where/fb_id=55")) == 0
    # ... but it is stored, returned and orderable
    assert [u["fb_id"] for u in store.users()] == ["55", 55, "55"]
    assert store.get(path("1/column/fb_id")) == "55"
    store.upsert({"fb_id": "9"})
    assert store.get(path("order_by_desc/fb_id/limit/2/column/fb_id")) == ["55", 55]
    assert store.get(path("order_by/fb_id/limit/1/column/fb_id")) == ["9"]


def test_wiki_mode_fb_id_and_internal_id_merge_and_are_matched() -> None:
    store = UserStore(internal_id_merges=True)
    assert store.upsert({"fb_id": "55", "first_name": "F"}) == 1
    assert store.upsert({"fb_id": 55, "city": "Oslo"}) == 1  # by fb_id ("55" == 55)
    assert store.upsert({"internal_id": "k", "first_name": "K"}) == 2
    assert store.upsert({"internal_id": "k", "fb_id": 55}) == 1  # fb_id before internal_id
    assert store.upsert({"email": "e@x.com", "fb_id": 55}) == 1  # email first, then fb_id
    assert store.get(path("where/fb_id=55/column/user_id")) == [1]
    assert store.get(path("where/fb_id:55,56/column/user_id")) == [1]
    assert store.get(path("where/internal_id=k/column/user_id")) == [1, 2]  # 1 took it too
    assert store.update(path("where/fb_id=55"), {"x": 1}) == 1
    assert store.users()[0]["x"] == 1
    assert store.delete(path("where/fb_id=55")) == 1
    assert [u["user_id"] for u in store.users()] == [2]
    assert store.upsert({"internal_id": "k", "fb_id": 56}) == 2  # by internal_id


def test_post_unknown_user_id_is_refused() -> None:
    store = UserStore()
    store.upsert({"email": "a@x.com"})
    for user_id in (99, "abc", 1.5):
        with pytest.raises(RequestError, match=r"^Row not found$"):
            store.upsert({"user_id": user_id, "email": "a@x.com"})
    assert len(store) == 1


def test_live_mode_internal_id_does_not_merge() -> None:
    store = UserStore()
    assert store.upsert({"internal_id": "42", "first_name": "A"}) == 1
    assert store.upsert({"internal_id": "42", "first_name": "B"}) == 2
    assert [u["internal_id"] for u in store.users()] == ["42", "42"]


def test_wiki_mode_internal_id_merges_after_email_and_fb_id() -> None:
    store = UserStore(internal_id_merges=True)
    assert store.upsert({"internal_id": "42", "first_name": "A"}) == 1
    assert store.upsert({"internal_id": 42, "first_name": "B"}) == 1
    assert store.upsert({"email": "e@x.com"}) == 2
    assert store.upsert({"email": "e@x.com", "internal_id": "42"}) == 2  # email first
    assert store.users()[0]["first_name"] == "B"


def test_empty_values_never_clear() -> None:
    store = UserStore()
    uid = store.upsert({"email": "a@x.com", "phone": "123"})
    store.upsert({"email": "a@x.com", "phone": None})
    store.upsert({"email": "a@x.com", "phone": ""})
    assert store.update(path(f"where/user_id={uid}"), {"phone": None}) == 1
    assert store.users()[0]["phone"] == "123"


def test_data_last_modified_moves_only_on_a_real_change() -> None:
    clock = FakeClock(1000.7)
    store = UserStore(wall=clock)
    uid = store.upsert({"email": "a@x.com", "n": 1})
    assert store.users()[0]["data_last_modified"] == 1000
    clock.now = 2000
    store.upsert({"email": "a@x.com", "n": 1})  # same values: no change
    store.upsert({"email": "a@x.com", "n": None})  # dropped: no change
    assert store.update(path(str(uid)), {"n": 1}) == 1  # matched, unchanged
    assert store.users()[0]["data_last_modified"] == 1000
    store.upsert({"email": "a@x.com", "dataLastModified": 5})  # the server's own column
    assert store.users()[0]["data_last_modified"] == 1000
    store.upsert({"email": "a@x.com", "n": "1"})  # a different stored value
    assert store.users()[0]["data_last_modified"] == 2000
    clock.now = 3000
    store.update(path("where/email=a@x.com"), {"n": 2})
    assert store.users()[0]["data_last_modified"] == 3000


def test_change_polling_by_data_last_modified() -> None:
    clock = FakeClock(100)
    store = UserStore(wall=clock)
    for i in range(5):
        clock.now = 100 + i
        store.upsert({"email": f"u{i}@x.com"})
    clock.now = 200
    store.upsert({"email": "u1@x.com", "first_name": "changed"})
    store.upsert({"email": "u3@x.com"})  # no change
    changed = store.get(
        path(
            "where/data_last_modified>=103/order_by/data_last_modified,user_id/limit/50"
            "/column/user_id"
        )
    )
    assert changed == [4, 5, 2]
    newest = store.get(path("order_by_desc/data_last_modified/limit/1/columns/user_id,email"))
    assert newest == [{"user_id": 2, "email": "u1@x.com"}]
    assert store.get(path("where/data_last_modified>200/limit/50/column/user_id")) == []
    assert store.get(path("where/data_last_modified<101/limit/50/column/user_id")) == [1]


def test_update_and_delete() -> None:
    clock = FakeClock(100)
    store = make_store(PEOPLE, wall=clock)
    clock.now = 500
    assert store.update(path("where/city=Oslo"), {"city": "Bergen", "vip": 1}) == 2
    assert store.get(path("where/city=Bergen/column/user_id")) == [1, 4]
    assert store.get(path("where/data_last_modified=500/column/user_id")) == [1, 4]
    assert store.update(path("where/city=Nowhere"), {"city": "x"}) == 0
    assert store.update(path("99"), {"city": "x"}) == 0  # never creates
    assert store.update(path("2"), {"email": "bob2@x.com"}) == 1
    assert store.get(path("where/email=bob2@x.com/column/user_id")) == [2]
    assert store.get(path("where/email=bob@x.com")) == []
    with pytest.raises(RequestError, match="user_id cannot be changed"):
        store.update(path("2"), {"user_id": 3})
    assert store.delete(path("where/user_id:1,2")) == 2
    assert store.delete(path("1")) == 0
    assert [u["user_id"] for u in store.users()] == [3, 4]
    assert store.get(path("order_by/data_last_modified/column/user_id")) == [3, 4]
    assert store.upsert({"email": "new@x.com"}) == 5  # ids are never reused


@pytest.mark.parametrize(
    ("modifiers", "message"),
    [
        ("", "needs a user id or a where condition"),
        ("order_by/user_id", "needs a user id or a where condition"),
        ("where/a=1/limit/5", "takes only a user id or a where condition"),
    ],
)
def test_put_and_delete_need_a_target(modifiers: str, message: str) -> None:
    store = make_store(PEOPLE)
    query = path(modifiers) if modifiers else Query()
    with pytest.raises(RequestError, match=message):
        store.update(query, {"a": 1})
    with pytest.raises(RequestError, match=message):
        store.delete(query)
    assert len(store) == 4


def test_bulk_update_and_delete_keep_indexes_consistent() -> None:
    clock = FakeClock(100)
    store = make_store([{"email": f"u{i}@x.com", "n": i % 2} for i in range(300)], wall=clock)
    clock.now = 150
    assert store.update(path("where/n=1"), {"flag": "y"}) == 150
    stamps = keyset(store, "data_last_modified>=150")
    assert stamps == list(range(2, 301, 2))
    assert store.delete(path("where/n=0")) == 150
    assert store.get(path("order_by/data_last_modified/limit/3/column/user_id")) == [2, 4, 6]
    assert store.get(path("where/email=u0@x.com")) == []
    assert len(store) == 150
    store.reset()
    assert store.users() == []
    assert store.upsert({"email": "x@x.com"}) == 1


# --- range reads: at most 50 rows ------------------------------------------------


def bare_refusal(store: UserStore, modifiers: str) -> RequestError:
    with pytest.raises(RequestError) as caught:
        store.get(path(modifiers))
    assert caught.value.bare, modifiers
    return caught.value


@pytest.mark.parametrize("wiki", [False, True])
def test_range_reads_are_capped_at_50_in_both_modes(wiki: bool) -> None:
    store = make_store(
        [{"email": f"u{i}@x.com", "n": i} for i in range(120)], internal_id_merges=wiki
    )
    assert len(store.get(path("where/user_id>0/order_by/user_id/limit/50"))) == 50
    assert len(store.get(path("where/n>=0/limit/10,40"))) == 40
    assert store.get(path("where/user_id>100/order_by_desc/user_id/limit/1/column/user_id")) == [
        120
    ]
    for modifiers in (
        "where/user_id>0/order_by/user_id/limit/51",
        "where/user_id>0/limit/10,41",
        "where/user_id>0/limit/50,1",
        "where/data_last_modified>=0/order_by/data_last_modified",  # no limit: 1000
        "where/n<5",
        "where/n<=5/limit/1000",
        "where/email=u1@x.com|n>100/limit/51",  # a range in any or-group
        "where/n>100|email=u1@x.com/limit/51",
        "where/email=u1@x.com&n>0/limit/51",
        "where/internal_id>a/limit/51",  # a range read even where it matches nothing
    ):
        error = bare_refusal(store, modifiers)
        assert "at most 50 rows" in str(error)  # for logs; the HTTP body is empty
    assert store.get(path("where/email=u1@x.com|n>100/limit/50/column/user_id")) == [
        2,
        *range(102, 121),
    ]


@pytest.mark.parametrize(
    "modifiers",
    [
        "where/n!=-1/limit/1000",
        "where/n!=-1",
        "where/user_id:" + ",".join(str(i) for i in range(1, 121)),
        "where/user_id!:0/limit/10,990",
        "where/n=1|n!=1/limit/1000",
        "order_by/user_id",
    ],
)
def test_reads_without_a_range_keep_the_1000_window(modifiers: str) -> None:
    store = make_store([{"email": f"u{i}@x.com", "n": i} for i in range(120)])
    assert store.get(path(modifiers + "/column/user_id")) == (
        list(range(11, 121)) if "10,990" in modifiers else list(range(1, 121))
    )


def test_range_writes_are_not_capped() -> None:
    store = make_store([{"email": f"u{i}@x.com", "n": i} for i in range(120)])
    assert store.update(path("where/n>=10"), {"flag": 1}) == 110
    assert store.delete(path("where/n<60")) == 60
    assert len(store) == 60


def test_other_refusals_are_not_bare() -> None:
    store = make_store(PEOPLE)
    with pytest.raises(RequestError) as caught:
        store.get(path("99"))
    assert not caught.value.bare
    with pytest.raises(RequestError, match="must not exceed 1000") as caught:
        path("where/user_id>0/limit/990,11")
    assert not caught.value.bare


def test_parsing_names_are_still_importable_from_the_store() -> None:
    from sync.sandbox import query, store

    for name in (
        "Condition",
        "Query",
        "RequestError",
        "Where",
        "Row",
        "Scalar",
        "Op",
        "MAX_WINDOW",
        "MODIFIERS",
        "index_key",
        "normalize_body",
        "normalize_column",
        "parse_modifiers",
        "parse_where",
    ):
        assert getattr(store, name) is getattr(query, name), name
    assert store.RANGE_WINDOW == 50
    assert path("where/a=1").window_end == 1000
    assert path("where/a=1/limit/10,20").window_end == 30
