"""Property filters: each operator holding and failing, missing and null properties, the casts
of the SQL form, canonical equality and digests, descriptions, and each refusal of `where:`."""

import json
import re
from datetime import date
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.filters import (
    MAX_PATH_DEPTH,
    MAX_TESTS,
    Cast,
    Filter,
    Op,
    Test,
    filter_from_spec,
)

PROPERTIES: dict[str, Any] = {
    "plan": "pro",
    "members": 3,
    "ratio": 2.5,
    "beta": True,
    "off": False,
    "zero": 0,
    "empty": "",
    "referrer": None,
    "name": "Acme Inc",
    "tags": ["a", "b", 3],
    "bits": [1, 0],
    "flag": "true",
    "count_text": "3",
    "team": {"tier": "pro", "seats": {"max": 10}},
}

# (where, holds on PROPERTIES)
OPERATOR_CASES = [
    # eq: a bare value
    ({"plan": "pro"}, True),
    ({"plan": "team"}, False),
    ({"plan": "Pro"}, False),
    ({"members": 3}, True),
    ({"members": 3.0}, True),
    ({"ratio": 2.5}, True),
    ({"members": "3"}, False),
    ({"count_text": 3}, False),
    ({"beta": True}, True),
    ({"beta": 1}, False),
    ({"zero": False}, False),
    ({"off": False}, True),
    ({"off": 0}, False),
    ({"flag": True}, False),
    ({"empty": ""}, True),
    ({"team.tier": "pro"}, True),
    ({"team.seats.max": 10}, True),
    ({"tags": "a"}, False),
    ({"missing": "x"}, False),
    ({"referrer": "x"}, False),
    ({"plan": {"eq": "pro"}}, True),
    # ne
    ({"plan": {"ne": "team"}}, True),
    ({"plan": {"ne": "pro"}}, False),
    ({"members": {"ne": "3"}}, True),
    ({"beta": {"ne": 1}}, True),
    ({"tags": {"ne": "a"}}, True),
    ({"missing": {"ne": "x"}}, False),
    ({"referrer": {"ne": "x"}}, False),
    # in / nin
    ({"plan": {"in": ["pro", "team"]}}, True),
    ({"plan": {"in": ["team", "free"]}}, False),
    ({"members": {"in": [1, 3.0]}}, True),
    ({"members": {"in": ["3"]}}, False),
    ({"beta": {"in": [1]}}, False),
    ({"zero": {"in": [False]}}, False),
    ({"missing": {"in": ["x"]}}, False),
    ({"plan": {"nin": ["team"]}}, True),
    ({"plan": {"nin": ["pro", "team"]}}, False),
    ({"beta": {"nin": [1]}}, True),
    ({"missing": {"nin": ["x"]}}, False),
    ({"referrer": {"nin": ["x"]}}, False),
    # gt / gte / lt / lte
    ({"members": {"gt": 2}}, True),
    ({"members": {"gt": 3}}, False),
    ({"members": {"gte": 3}}, True),
    ({"members": {"gte": 3.5}}, False),
    ({"members": {"lt": 3}}, False),
    ({"members": {"lt": 3.5}}, True),
    ({"members": {"lte": 3}}, True),
    ({"members": {"lte": 2.5}}, False),
    ({"ratio": {"gt": 2}}, True),
    ({"zero": {"lt": 1}}, True),
    ({"plan": {"gt": "a"}}, True),
    ({"plan": {"lt": "a"}}, False),
    ({"plan": {"gte": "pro"}}, True),
    ({"name": {"lt": "a"}}, True),  # by code point: "A" < "a"
    ({"members": {"gt": "2"}}, False),
    ({"count_text": {"gt": 2}}, False),
    ({"plan": {"gt": 1}}, False),
    ({"beta": {"gt": 0}}, False),
    ({"tags": {"gt": 0}}, False),
    ({"missing": {"lt": 100}}, False),
    ({"referrer": {"lt": "z"}}, False),
    ({"members": {"gte": 2, "lt": 4}}, True),
    ({"members": {"gte": 2, "lt": 3}}, False),
    # exists
    ({"plan": {"exists": True}}, True),
    ({"plan": {"exists": False}}, False),
    ({"missing": {"exists": True}}, False),
    ({"missing": {"exists": False}}, True),
    ({"referrer": {"exists": True}}, False),
    ({"referrer": {"exists": False}}, True),
    ({"zero": {"exists": True}}, True),
    ({"off": {"exists": True}}, True),
    ({"empty": {"exists": True}}, True),
    ({"team.tier.deeper": {"exists": False}}, True),
    ({"plan.tier": {"exists": True}}, False),
    # contains
    ({"name": {"contains": "Acme"}}, True),
    ({"name": {"contains": "me I"}}, True),
    ({"name": {"contains": "acme"}}, False),
    ({"tags": {"contains": "a"}}, True),
    ({"tags": {"contains": "c"}}, False),
    ({"tags": {"contains": 3.0}}, True),
    ({"tags": {"contains": "3"}}, False),
    ({"tags": {"contains": True}}, False),
    ({"bits": {"contains": True}}, False),
    ({"bits": {"contains": 1.0}}, True),
    ({"members": {"contains": 3}}, False),
    ({"name": {"contains": 3}}, False),
    ({"team": {"contains": "tier"}}, False),
    ({"missing": {"contains": "x"}}, False),
    # starts_with / ends_with
    ({"name": {"starts_with": "Acme"}}, True),
    ({"name": {"starts_with": "Inc"}}, False),
    ({"name": {"ends_with": "Inc"}}, True),
    ({"name": {"ends_with": "Acme"}}, False),
    ({"count_text": {"starts_with": "3"}}, True),
    ({"members": {"starts_with": "3"}}, False),
    ({"tags": {"starts_with": "a"}}, False),
    ({"missing": {"ends_with": ""}}, False),
    # several keys: all must hold
    ({"plan": "pro", "members": {"gte": 3}, "team.tier": {"in": ["pro"]}}, True),
    ({"plan": "pro", "members": {"gte": 4}}, False),
]


@pytest.mark.parametrize(("where", "holds"), OPERATOR_CASES, ids=lambda case: str(case))
def test_operators(where: dict[str, Any], holds: bool) -> None:
    assert filter_from_spec(where).matches(PROPERTIES) is holds


def test_every_operator_is_exercised_both_ways() -> None:
    seen = {
        (op, holds)
        for where, holds in OPERATOR_CASES
        for spec in where.values()
        for op in (spec if isinstance(spec, dict) else {"eq": spec})
    }
    assert seen == {(str(op), holds) for op in Op for holds in (True, False)}


def test_no_properties_are_an_empty_object() -> None:
    assert filter_from_spec({"plan": {"exists": False}}).matches(None)
    assert not filter_from_spec({"plan": {"ne": "pro"}}).matches(None)
    assert not filter_from_spec({"plan": {"nin": ["pro"]}}).matches({})


def test_any_mapping_is_read() -> None:
    frozen = MappingProxyType({"team": MappingProxyType({"tier": "pro"})})
    assert filter_from_spec({"team.tier": "pro"}).matches(frozen)


def test_a_key_with_a_dot_is_one_key_in_a_test_path() -> None:
    test = Test(("a.b",), Op.EQ, "x")
    assert test.matches({"a.b": "x"})
    assert not test.matches({"a": {"b": "x"}})


# --- the SQL form's casts ------------------------------------------------------------------

# (cast, op, value, property, holds)
CAST_CASES = [
    (Cast.TEXT, Op.EQ, "pro", "pro", True),
    (Cast.TEXT, Op.EQ, "3", 3, True),
    (Cast.TEXT, Op.EQ, "3", "3", True),
    (Cast.TEXT, Op.EQ, "3", 3.0, False),  # jsonb keeps 3.0 as written
    (Cast.TEXT, Op.EQ, "2.5", 2.5, True),
    (Cast.TEXT, Op.EQ, "true", True, True),
    (Cast.TEXT, Op.EQ, "false", False, True),
    (Cast.TEXT, Op.EQ, '{"a": 1, "bb": [1, "x"]}', {"bb": [1, "x"], "a": 1}, True),
    (Cast.TEXT, Op.EQ, '["x", 1]', ["x", 1], True),
    (Cast.TEXT, Op.EQ, '["x",1]', ["x", 1], False),
    (Cast.TEXT, Op.EQ, "null", None, False),
    (Cast.TEXT, Op.NE, "pro", "team", True),
    (Cast.TEXT, Op.NE, "3", 3, False),
    (Cast.TEXT, Op.NE, "x", None, False),
    (Cast.TEXT, Op.IN, ("3", "4"), 4, True),
    (Cast.TEXT, Op.NIN, ("3", "4"), 5, True),
    (Cast.TEXT, Op.GT, "2", 10, False),  # '10' < '2' as text
    (Cast.TEXT, Op.GT, "2", "3", True),
    (Cast.TEXT, Op.CONTAINS, "bb", {"bb": 1}, True),
    (Cast.TEXT, Op.STARTS_WITH, "tr", True, True),
    (Cast.TEXT, Op.ENDS_WITH, ".5", 2.5, True),
    (Cast.NUMBER, Op.GTE, 3, 3, True),
    (Cast.NUMBER, Op.GTE, 3, 2.9, False),
    (Cast.NUMBER, Op.GTE, 3, "3", True),
    (Cast.NUMBER, Op.GTE, 3, " 4 ", True),
    (Cast.NUMBER, Op.GTE, 3, "3.5", True),
    (Cast.NUMBER, Op.GTE, 3, "+5", True),
    (Cast.NUMBER, Op.GTE, 3, "1e3", True),
    (Cast.NUMBER, Op.GTE, 3, ".5", False),
    (Cast.NUMBER, Op.GTE, 3, "2", False),
    (Cast.NUMBER, Op.GTE, 3, "abc", False),
    (Cast.NUMBER, Op.GTE, 3, "1_000", False),
    (Cast.NUMBER, Op.GTE, 3, "", False),
    (Cast.NUMBER, Op.GTE, 0, True, False),
    (Cast.NUMBER, Op.GTE, 0, [1], False),
    (Cast.NUMBER, Op.GTE, 0, None, False),
    (Cast.NUMBER, Op.EQ, 3, "3.0", True),
    (Cast.NUMBER, Op.EQ, 3, "03", True),
    (Cast.NUMBER, Op.NE, 3, "abc", False),  # Postgres would fail: no match
    (Cast.NUMBER, Op.NE, 3, "4", True),
    (Cast.NUMBER, Op.IN, (1, 2), "2", True),
    (Cast.NUMBER, Op.NIN, (1, 2), "x", False),
    (Cast.NUMBER, Op.LT, 0, "-1", True),
    (Cast.NUMBER, Op.GT, 0, "9" * 5000, False),  # too long for Python's int: no match
    (Cast.BOOLEAN, Op.EQ, True, True, True),
    (Cast.BOOLEAN, Op.EQ, True, "true", True),
    (Cast.BOOLEAN, Op.EQ, True, "t", True),
    (Cast.BOOLEAN, Op.EQ, True, " YES ", True),
    (Cast.BOOLEAN, Op.EQ, True, "on", True),
    (Cast.BOOLEAN, Op.EQ, True, 1, True),
    (Cast.BOOLEAN, Op.EQ, True, "false", False),
    (Cast.BOOLEAN, Op.EQ, False, "f", True),
    (Cast.BOOLEAN, Op.EQ, False, 0, True),
    (Cast.BOOLEAN, Op.EQ, False, "no", True),
    (Cast.BOOLEAN, Op.EQ, True, 1.0, False),
    (Cast.BOOLEAN, Op.EQ, True, "maybe", False),
    (Cast.BOOLEAN, Op.NE, True, "maybe", False),
    (Cast.BOOLEAN, Op.NE, True, "off", True),
    (Cast.BOOLEAN, Op.EQ, False, None, False),
]


@pytest.mark.parametrize(
    ("cast", "op", "value", "found", "holds"), CAST_CASES, ids=lambda case: repr(case)[:30]
)
def test_casts_read_the_property_as_postgres_would(
    cast: Cast, op: Op, value: Any, found: Any, holds: bool
) -> None:
    assert Test(("p",), op, value, cast).matches({"p": found}) is holds


def test_exists_ignores_the_text_cast() -> None:
    assert Test(("p",), Op.EXISTS, True, Cast.TEXT) == Test(("p",), Op.EXISTS, True)
    assert Test(("p",), Op.EXISTS, True, Cast.TEXT).cast is None


# --- canonical form -------------------------------------------------------------------------


def test_key_order_does_not_matter() -> None:
    one = filter_from_spec({"plan": "pro", "members": {"gte": 3, "lt": 9}})
    other = filter_from_spec({"members": {"lt": 9, "gte": 3}, "plan": "pro"})
    assert one == other
    assert one.digest == other.digest
    assert hash(one) == hash(other)


def test_an_in_list_is_sorted_and_deduplicated() -> None:
    one = filter_from_spec({"plan": {"in": ["team", "pro", "team"]}})
    assert one.tests[0].value == ("pro", "team")
    assert one == filter_from_spec({"plan": {"in": ["pro", "team"]}})


def test_equal_numbers_are_one_test_but_booleans_are_not_numbers() -> None:
    assert filter_from_spec({"n": 3}) == filter_from_spec({"n": 3.0})
    assert filter_from_spec({"n": 3}).digest == filter_from_spec({"n": 3.0}).digest
    assert filter_from_spec({"n": True}) != filter_from_spec({"n": 1})
    assert filter_from_spec({"n": True}).digest != filter_from_spec({"n": 1}).digest
    assert filter_from_spec({"n": "3"}) != filter_from_spec({"n": 3})
    assert len({Test(("n",), Op.EQ, True), Test(("n",), Op.EQ, 1)}) == 2


def test_a_cast_is_part_of_the_meaning() -> None:
    text = Filter((Test(("plan",), Op.EQ, "pro", Cast.TEXT),))
    plain = Filter((Test(("plan",), Op.EQ, "pro"),))
    assert text != plain
    assert text.digest != plain.digest


def test_repeated_tests_are_kept_once() -> None:
    test = Test(("plan",), Op.EQ, "pro")
    assert Filter((test, test, Test(("plan",), Op.EQ, "pro"))).tests == (test,)


def test_the_digest_is_pinned_so_it_is_stable_across_processes_and_releases() -> None:
    digest = filter_from_spec({"template": "saas", "members": {"gte": 3}}).digest
    assert re.fullmatch(r"[a-z2-7]{8}", digest)
    assert digest == "cmxtl4v4"


def test_different_filters_have_different_digests() -> None:
    specs = [{"a": 1}, {"a": 2}, {"a": {"gt": 1}}, {"b": 1}, {"a.b": 1}, {"a": 1, "b": 1}]
    assert len({filter_from_spec(spec).digest for spec in specs}) == len(specs)


def test_describe() -> None:
    where = {
        "template": "saas",
        "members": {"gte": 3, "lt": 10},
        "plan.tier": {"in": ["team", "pro"]},
        "referrer": {"exists": True},
        "deleted_at": {"exists": False},
        "name": {"starts_with": "it's"},
        "tags": {"nin": [True, 2.0]},
    }
    assert filter_from_spec(where).describe() == (
        "deleted_at is missing, members >= 3, members < 10, name starts with 'it''s', "
        "plan.tier in ('pro', 'team'), referrer exists, tags not in (2, true), "
        "template = 'saas'"
    )
    cast = Test(("m",), Op.NE, 3, Cast.NUMBER)
    assert cast.describe() == "m::number != 3"


def test_to_json() -> None:
    found = filter_from_spec({"template": "saas", "plan.tier": {"in": ["team", "pro"]}})
    assert found.to_json() == [
        {"path": ["plan", "tier"], "op": "in", "value": ["pro", "team"], "cast": None},
        {"path": ["template"], "op": "eq", "value": "saas", "cast": None},
    ]
    assert json.loads(json.dumps(found.to_json())) == found.to_json()
    assert Test(("m",), Op.GT, 2.0, Cast.NUMBER).to_json()["value"] == 2


# --- refusals -------------------------------------------------------------------------------

OPERATORS = (
    "(operators: eq, ne, in, nin, gt, gte, lt, lte, exists, contains, starts_with, ends_with)"
)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ({}, "where names no property: remove it, or add one like {plan: pro}"),
        (["plan"], "where maps property paths to values, like {plan: pro}"),
        ({"plan": {"gtee": 3}}, "plan: unknown operator 'gtee': did you mean 'gte'?"),
        (
            {"plan": {"gte": 3, "foo": 1}},
            f"plan: unknown operator 'foo' {OPERATORS}",
        ),
        ({"plan": {"gte": 3, "lte_": 1}}, "plan: unknown operator 'lte_': did you mean 'lte'?"),
        (
            {"plan": {"tier": "pro"}},
            "plan: {tier: ...} is not an operator mapping: to test a nested property, "
            "write the dotted path 'plan.tier: ...'",
        ),
        ({"plan": {}}, f"plan: {{}} names no operator {OPERATORS}"),
        ({"plan": {"in": []}}, "plan: in needs a non-empty list of values, like {in: [a, b]}"),
        ({"plan": {"nin": "pro"}}, "plan: nin needs a non-empty list of values"),
        ({"plan": {"in": ["pro", None]}}, "plan: in null never holds"),
        ({"plan": {"in": [["pro"]]}}, "plan: in takes one value, not a list"),
        ({"n": {"gt": True}}, "n: gt compares numbers or strings, not true"),
        ({"n": {"lte": [1]}}, "n: lte takes one value, not a list"),
        ({"n": {"exists": "yes"}}, "n: exists takes true or false, not 'yes'"),
        ({"n": {"exists": 1}}, "n: exists takes true or false, not 1"),
        ({"n": {"contains": ["a"]}}, "n: contains takes one value, not a list"),
        ({"n": {"contains": {"a": 1}}}, "n: contains takes a string, number or true/false"),
        ({"n": {"starts_with": 3}}, "n: starts_with takes a string, not 3"),
        ({"n": {"ends_with": True}}, "n: ends_with takes a string, not true"),
        ({"a..b": 1}, "a..b: a path's keys cannot be empty (write a.b, not a..b)"),
        ({".a": 1}, ".a: a path's keys cannot be empty"),
        ({"": 1}, ": a path's keys cannot be empty"),
        ({".".join("abcdefghi"): 1}, "a path is at most 8 keys deep, not 9"),
        ({1: "x"}, "1: a property path is a string: quote it"),
        ({"plan": None}, "plan: eq null never holds: use {exists: false} for a missing property"),
        ({"plan": ["pro", "team"]}, "plan: eq takes one value, not a list: use {in: [...]}"),
        ({"n": float("inf")}, "n: inf is not a string, number or true/false"),
        ({"n": float("nan")}, "n: NaN equals nothing"),
        ({"day": date(2024, 1, 1)}, "is not a string, number or true/false"),
        ({f"k{i}": i for i in range(MAX_TESTS + 1)}, "a filter holds at most 20 tests, not 21"),
    ],
    ids=lambda case: str(case)[:40],
)
def test_refuses_a_spec_with_its_reason(where: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        filter_from_spec(where)


def test_the_limits_themselves_are_accepted() -> None:
    assert filter_from_spec({".".join("abcdefgh"[:MAX_PATH_DEPTH]): 1})
    assert len(filter_from_spec({f"k{i}": i for i in range(MAX_TESTS)}).tests) == MAX_TESTS


@pytest.mark.parametrize(
    ("test", "reason"),
    [
        (lambda: Test(("a",), Op.EQ, "x", Cast.NUMBER), "a number cast compares with a number"),
        (lambda: Test(("a",), Op.EQ, 3, Cast.TEXT), "a text cast compares with a string, not 3"),
        (lambda: Test(("a",), Op.EQ, 1, Cast.BOOLEAN), "a boolean cast compares with a boolean"),
        (lambda: Test(("a",), Op.GT, True, Cast.BOOLEAN), "gt compares numbers or strings"),
        (lambda: Test(("a",), Op.EXISTS, True, Cast.NUMBER), "exists reads the property as it"),
        (lambda: Test(("a",), Op.CONTAINS, 3, Cast.NUMBER), "contains reads text: it cannot"),
        (lambda: Test(("a",), Op.STARTS_WITH, "x", Cast.BOOLEAN), "a boolean cast compares"),
        (lambda: Test("abc", Op.EQ, "x"), "a path is a sequence of keys, not 'abc'"),
        (lambda: Test((), Op.EQ, "x"), "a path's keys cannot be empty"),
        (lambda: Test(("a",), "like", "x"), "'like' is not a valid Op"),
        (lambda: Filter(()), "a filter needs at least one test"),
    ],
)
def test_refuses_a_test_with_its_reason(test: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        test()


# --- properties ------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from([0.0, 2.5, 3.0, -1.5]),
    st.sampled_from(["", "a", "b", "3", "true", "ab"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("ab"), inner, max_size=2)
    ),
    max_leaves=6,
)
literals = st.one_of(
    st.booleans(), st.integers(-5, 5), st.sampled_from([2.5, 3.0]), st.sampled_from(["a", "3"])
)
FUZZ = settings(max_examples=300, deadline=None, database=None)


@FUZZ
@given(found=json_values, value=literals)
def test_ne_and_nin_negate_eq_and_in_on_a_present_property(found: Any, value: Any) -> None:
    properties = {"p": found}
    eq, ne = Test(("p",), Op.EQ, value), Test(("p",), Op.NE, value)
    in_, nin = Test(("p",), Op.IN, [value]), Test(("p",), Op.NIN, [value])
    assert eq.matches(properties) == in_.matches(properties)
    assert ne.matches(properties) == nin.matches(properties)
    if found is None:
        assert not eq.matches(properties)
        assert not ne.matches(properties)
    else:
        assert ne.matches(properties) is not eq.matches(properties)


@FUZZ
@given(found=json_values, value=literals)
def test_eq_is_json_equality(found: Any, value: Any) -> None:
    same_kind = isinstance(found, bool) == isinstance(value, bool) and type(found) in (
        (str,) if isinstance(value, str) else (bool,) if isinstance(value, bool) else (int, float)
    )
    assert Test(("p",), Op.EQ, value).matches({"p": found}) == (same_kind and found == value)


@FUZZ
@given(
    properties=st.dictionaries(st.sampled_from(["p", "q"]), json_values, max_size=2),
    op=st.sampled_from(list(Op)),
    cast=st.sampled_from([None, *Cast]),
    value=st.one_of(literals, st.lists(literals, min_size=1, max_size=3)),
    path=st.lists(st.sampled_from(["p", "a", "b"]), min_size=1, max_size=3),
)
def test_any_test_that_builds_decides_any_properties_without_raising(
    properties: dict[str, Any], op: Op, cast: Cast | None, value: Any, path: list[str]
) -> None:
    try:
        test = Test(tuple(path), op, value, cast)
    except ValueError:
        return
    assert isinstance(test.matches(properties), bool)
    assert Filter((test,)).matches(properties) is test.matches(properties)
