"""SQL conditions: each accepted shape and what it means; each refusal with its reason; terms
on properties, and the YAML `where:` form deciding alike."""

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.conditions import QueryCondition, translate_query
from app.engine.filters import Cast, Filter, Op, Test, filter_from_spec
from app.errors import QueryError

SCOPED = "SELECT * FROM user_actions WHERE user_id = $1"


@pytest.mark.parametrize(
    ("query", "actions", "count"),
    [
        pytest.param(
            f"{SCOPED} AND action_type = 'first_project_created'",
            ("first_project_created",),
            1,
            id="the-seed-form",
        ),
        pytest.param(
            "SELECT * FROM user_actions WHERE action_type = 'x' AND $1 = user_id",
            ("x",),
            1,
            id="either-order-either-side",
        ),
        pytest.param(
            "select ua.* from USER_ACTIONS ua where ua.user_id = $1 and (ua.action_type = 'x')",
            ("x",),
            1,
            id="alias-case-parentheses",
        ),
        pytest.param(
            f"{SCOPED} AND action_type IN ('invited_teammate', 'connected_domain')",
            ("invited_teammate", "connected_domain"),
            1,
            id="in-is-any-of",
        ),
        pytest.param(
            "SELECT COUNT(*) FROM user_actions WHERE user_id = $1"
            " AND action_type = 'project_created' HAVING COUNT(*) >= 10",
            ("project_created",),
            10,
            id="having-at-least",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' HAVING COUNT(*) > 2",
            ("x",),
            3,
            id="having-more-than",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' HAVING 4 <= COUNT(*)",
            ("x",),
            4,
            id="having-reversed",
        ),
        pytest.param(
            "SELECT action_type, COUNT(*) AS n FROM user_actions WHERE user_id = $1"
            " AND action_type IN ('a', 'b') GROUP BY user_id, action_type HAVING COUNT(*) >= 3",
            ("a", "b"),
            3,
            id="any-of-counted-each-on-its-own",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x';",
            ("x",),
            1,
            id="trailing-semicolon",
        ),
    ],
)
def test_translates(query: str, actions: tuple[str, ...], count: int) -> None:
    assert translate_query(query) == QueryCondition(actions, count)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        pytest.param(
            "SELECT * FROM users WHERE user_id = $1",
            "the query must select FROM user_actions (not users)",
            id="other-table",
        ),
        pytest.param(
            "SELECT * FROM public.user_actions WHERE user_id = $1 AND action_type = 'x'",
            "the query must select FROM user_actions (not public.user_actions)",
            id="other-schema",
        ),
        pytest.param("SELECT 1", "the query must select FROM user_actions", id="no-table"),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' AND plan = 'pro'",
            "user_actions has no column 'plan'",
            id="other-column",
        ),
        pytest.param(
            f"{SCOPED} AND users.action_type = 'x'",
            "unknown table 'users': only user_actions can be queried",
            id="other-qualifier",
        ),
        pytest.param(
            f"{SCOPED} AND (action_type = 'a' OR action_type = 'b')",
            "OR is not supported: use action_type IN ('a', 'b')",
            id="or",
        ),
        pytest.param(
            "SELECT * FROM user_actions a JOIN user_actions b ON a.user_id = b.user_id"
            " WHERE a.user_id = $1",
            "JOIN is not supported",
            id="join",
        ),
        pytest.param(
            "SELECT * FROM user_actions, user_actions b WHERE user_id = $1",
            "JOIN is not supported",
            id="comma-join",
        ),
        pytest.param(
            "SELECT * FROM user_actions WHERE user_id = $1"
            " AND action_type IN (SELECT action_type FROM user_actions)",
            "subqueries are not supported",
            id="subquery",
        ),
        pytest.param(
            "SELECT * FROM user_actions WHERE user_id = $1 AND EXISTS (SELECT 1 FROM user_actions)",
            "subqueries are not supported",
            id="exists",
        ),
        pytest.param(
            "WITH t AS (SELECT 1) SELECT * FROM user_actions WHERE user_id = $1",
            "subqueries are not supported",
            id="with",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' AND created_at > NOW() - INTERVAL '1 day'",
            "filters on created_at are not supported",
            id="created-at",
        ),
        pytest.param(
            "SELECT * FROM user_actions WHERE action_type = 'x'",
            "the query must be scoped to the user: WHERE user_id = $1",
            id="no-user-scope",
        ),
        pytest.param(
            "SELECT * FROM user_actions",
            "the query must be scoped to the user: WHERE user_id = $1",
            id="no-where",
        ),
        pytest.param(
            "SELECT * FROM user_actions WHERE user_id = 'user_1' AND action_type = 'x'",
            "user_id must be compared with $1",
            id="user-literal",
        ),
        pytest.param(
            "SELECT * FROM user_actions WHERE user_id = $2 AND action_type = 'x'",
            "user_id must be compared with $1",
            id="other-parameter",
        ),
        pytest.param(SCOPED, "the query must name the action once", id="no-action"),
        pytest.param(
            f"{SCOPED} AND action_type = 'a' AND action_type = 'b'",
            "the query must name the action once",
            id="action-twice",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 42",
            "action_type must be compared with a string like 'x', not 42",
            id="action-not-a-string",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'has space'",
            "'has space' is not an action name",
            id="bad-action-name",
        ),
        pytest.param(
            f"{SCOPED} AND action_type <> 'x'",
            "unsupported condition: action_type <> 'x'",
            id="not-equal",
        ),
        pytest.param(
            f"{SCOPED} AND NOT action_type IN ('x')",
            "unsupported condition",
            id="not-in",
        ),
        pytest.param(
            f"{SCOPED} AND action_type LIKE 'project_%'",
            "unsupported condition",
            id="like",
        ),
        pytest.param(
            "SELECT COUNT(*) FROM user_actions WHERE user_id = $1 AND action_type = 'x'",
            "SELECT COUNT(*) returns a row even when the count is 0",
            id="count-without-having",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' HAVING COUNT(*) = 3",
            "HAVING must be COUNT(*) >= n or COUNT(*) > n",
            id="having-equal",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' HAVING COUNT(*) >= 2.5",
            "HAVING must compare COUNT(*) with a whole number",
            id="having-fraction",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' HAVING MAX(created_at) >= 3",
            "HAVING must compare COUNT(*) with a whole number",
            id="having-other-aggregate",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' HAVING COUNT(*) >= 0",
            "always holds: ask for at least 1",
            id="having-zero",
        ),
        pytest.param(
            f"{SCOPED} AND action_type IN ('a', 'b') HAVING COUNT(*) >= 2",
            "COUNT(*) over several action types adds them up",
            id="any-of-summed",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' GROUP BY created_at",
            "GROUP BY created_at is not supported",
            id="group-by-time",
        ),
        pytest.param(
            "SELECT MAX(created_at) FROM user_actions WHERE user_id = $1 AND action_type = 'x'",
            "unsupported in the SELECT list: MAX(created_at)",
            id="other-select-item",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' ORDER BY created_at",
            "ORDER BY is not supported",
            id="order-by",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' LIMIT 1", "LIMIT is not supported", id="limit"
        ),
        pytest.param(
            "SELECT DISTINCT * FROM user_actions WHERE user_id = $1 AND action_type = 'x'",
            "DISTINCT is not supported",
            id="distinct",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x' UNION {SCOPED} AND action_type = 'y'",
            "expected a SELECT statement, got UNION",
            id="union",
        ),
        pytest.param(
            "DELETE FROM user_actions WHERE user_id = $1",
            "expected a SELECT statement, got DELETE",
            id="delete",
        ),
        pytest.param(
            f"{SCOPED} AND action_type = 'x'; DROP TABLE user_actions",
            "expected one SELECT statement, got 2",
            id="two-statements",
        ),
        pytest.param(
            "SELECT * FROM user_actions WHERE (", "cannot parse the query", id="parse-error"
        ),
        pytest.param(f"{SCOPED} AND action_type = 'x", "cannot parse the query", id="token-error"),
        pytest.param("", "expected one SELECT statement, got 0", id="empty"),
    ],
)
def test_refuses_with_reason(query: str, reason: str) -> None:
    with pytest.raises(QueryError, match=re.escape(reason)):
        translate_query(query)


def test_query_error_is_a_value_error_so_pydantic_reports_it_as_the_reason() -> None:
    assert issubclass(QueryError, ValueError)


def test_a_count_past_a_million_is_refused() -> None:
    sql = (
        "SELECT COUNT(*) FROM user_actions WHERE user_id = $1 AND action_type = 'x' "
        "HAVING COUNT(*) >= 99999999999999999999999"
    )
    with pytest.raises(QueryError, match="at most 1000000"):
        translate_query(sql)


# --- terms on properties --------------------------------------------------------------------

ACTION = f"{SCOPED} AND action_type = 'x'"


def text(key: str, op: Op, value: object) -> Test:
    return Test(tuple(key.split(".")), op, value, Cast.TEXT)


def number(key: str, op: Op, value: object) -> Test:
    return Test((key,), op, value, Cast.NUMBER)


@pytest.mark.parametrize(
    ("term", "tests"),
    [
        pytest.param("properties->>'plan' = 'pro'", [text("plan", Op.EQ, "pro")], id="text-eq"),
        pytest.param("properties ->> 'plan' = 'it''s'", [text("plan", Op.EQ, "it's")], id="quote"),
        pytest.param("properties->'a'->>'b' = 'x'", [text("a.b", Op.EQ, "x")], id="nested"),
        pytest.param("properties->'a'->'b'->>'c' = 'x'", [text("a.b.c", Op.EQ, "x")], id="deeper"),
        pytest.param("(properties->'a')->>'b' = 'x'", [text("a.b", Op.EQ, "x")], id="parens"),
        pytest.param("properties->>'a.b' = 'x'", [Test(("a.b",), Op.EQ, "x", Cast.TEXT)], id="dot"),
        pytest.param("properties->>'a' <> 'x'", [text("a", Op.NE, "x")], id="ne"),
        pytest.param("properties->>'a' != 'x'", [text("a", Op.NE, "x")], id="ne-bang"),
        pytest.param("properties->>'a' > 'm'", [text("a", Op.GT, "m")], id="text-gt"),
        pytest.param("'pro' = properties->>'plan'", [text("plan", Op.EQ, "pro")], id="flip-eq"),
        pytest.param(
            "(properties->>'members')::int >= 3", [number("members", Op.GTE, 3)], id="int-gte"
        ),
        pytest.param("(properties->>'m')::integer > 3", [number("m", Op.GT, 3)], id="integer-gt"),
        pytest.param("(properties->>'m')::bigint < 3", [number("m", Op.LT, 3)], id="bigint-lt"),
        pytest.param("(properties->>'m')::smallint <= 3", [number("m", Op.LTE, 3)], id="lte"),
        pytest.param("(properties->>'m')::numeric = 2.5", [number("m", Op.EQ, 2.5)], id="numeric"),
        pytest.param("(properties->>'m')::decimal <> -1", [number("m", Op.NE, -1)], id="negative"),
        pytest.param("(properties->>'m')::float >= 1e3", [number("m", Op.GTE, 1000)], id="float"),
        pytest.param("(properties->>'m')::real > .5", [number("m", Op.GT, 0.5)], id="real"),
        pytest.param(
            "(properties->>'m')::double precision < 2", [number("m", Op.LT, 2)], id="double"
        ),
        pytest.param(
            "CAST(properties->>'members' AS integer) >= 3",
            [number("members", Op.GTE, 3)],
            id="cast-function",
        ),
        pytest.param(
            "3 <= (properties->>'members')::int", [number("members", Op.GTE, 3)], id="flip-lte"
        ),
        pytest.param("3 > (properties->>'m')::int", [number("m", Op.LT, 3)], id="flip-gt"),
        pytest.param("(properties->>'a')::text = 'x'", [text("a", Op.EQ, "x")], id="text-cast"),
        pytest.param("(properties->>'a')::varchar = 'x'", [text("a", Op.EQ, "x")], id="varchar"),
        pytest.param(
            "(properties->>'beta')::boolean = true",
            [Test(("beta",), Op.EQ, True, Cast.BOOLEAN)],
            id="boolean",
        ),
        pytest.param(
            "(properties->>'beta')::bool <> false",
            [Test(("beta",), Op.NE, False, Cast.BOOLEAN)],
            id="bool",
        ),
        pytest.param(
            "properties->>'plan' IN ('pro', 'team')",
            [text("plan", Op.IN, ("pro", "team"))],
            id="in",
        ),
        pytest.param(
            "properties->>'plan' NOT IN ('team', 'pro')",
            [text("plan", Op.NIN, ("pro", "team"))],
            id="not-in",
        ),
        pytest.param(
            "NOT (properties->>'plan' IN ('pro'))", [text("plan", Op.NIN, ("pro",))], id="not-(in)"
        ),
        pytest.param(
            "(properties->>'m')::int IN (1, 2)", [number("m", Op.IN, (1, 2))], id="in-numbers"
        ),
        pytest.param(
            "properties->>'x' IS NOT NULL", [Test(("x",), Op.EXISTS, True)], id="is-not-null"
        ),
        pytest.param("properties->>'x' IS NULL", [Test(("x",), Op.EXISTS, False)], id="is-null"),
        pytest.param(
            "NOT (properties->>'x' IS NULL)", [Test(("x",), Op.EXISTS, True)], id="not-is-null"
        ),
        pytest.param(
            "properties->>'name' LIKE 'abc%'", [text("name", Op.STARTS_WITH, "abc")], id="prefix"
        ),
        pytest.param(
            "properties->>'name' LIKE '%abc'", [text("name", Op.ENDS_WITH, "abc")], id="suffix"
        ),
        pytest.param(
            "properties->>'name' LIKE '%abc%'", [text("name", Op.CONTAINS, "abc")], id="infix"
        ),
        pytest.param("properties->>'name' LIKE 'abc'", [text("name", Op.EQ, "abc")], id="like-eq"),
        pytest.param(
            r"properties->>'name' LIKE 'a\_b\%%'",
            [text("name", Op.STARTS_WITH, "a_b%")],
            id="like-escapes",
        ),
        pytest.param(
            "properties->>'plan' = 'pro' AND (properties->>'members')::int >= 3",
            [text("plan", Op.EQ, "pro"), number("members", Op.GTE, 3)],
            id="two-terms",
        ),
    ],
)
def test_translates_terms_on_properties(term: str, tests: list[Test]) -> None:
    condition = translate_query(f"{ACTION} AND {term}")
    assert condition == QueryCondition(("x",), 1, Filter(tuple(tests)))


def test_property_terms_go_anywhere_among_the_terms_and_take_the_alias() -> None:
    sql = (
        "SELECT COUNT(*) FROM user_actions ua WHERE ua.properties->>'plan' = 'pro' AND "
        "ua.user_id = $1 AND ua.action_type IN ('a', 'b') GROUP BY ua.action_type "
        "HAVING COUNT(*) >= 2"
    )
    where = Filter((text("plan", Op.EQ, "pro"),))
    assert translate_query(sql) == QueryCondition(("a", "b"), 2, where)


def test_a_query_without_property_terms_has_no_filter() -> None:
    assert translate_query(ACTION).where is None


def test_exists_reads_alike_in_both_forms() -> None:
    sql = translate_query(f"{ACTION} AND properties->>'referrer' IS NOT NULL").where
    assert sql == filter_from_spec({"referrer": {"exists": True}})
    assert sql is not None
    assert sql.digest == filter_from_spec({"referrer": {"exists": True}}).digest


@pytest.mark.parametrize(
    ("term", "reason"),
    [
        pytest.param(
            "properties->>'m' = 3",
            "->> reads text: compare it with a string, or cast it to compare with a number: "
            "(properties ->> 'm')::numeric",
            id="text-with-number",
        ),
        pytest.param(
            "properties->>'b' = true",
            "cast it to compare with true or false: (properties ->> 'b')::boolean",
            id="text-with-boolean",
        ),
        pytest.param(
            "properties->>'m' IN ('a', 3)",
            "properties ->> 'm' IN: ->> reads text: list strings, or cast it to compare with a "
            "number",
            id="in-text-with-number",
        ),
        pytest.param(
            "(properties->>'m')::int = 'x'",
            "a number cast compares with a number, not 'x'",
            id="number-with-text",
        ),
        pytest.param(
            "(properties->>'b')::boolean = 1",
            "a boolean cast compares with a boolean, not 1",
            id="boolean-with-number",
        ),
        pytest.param(
            "(properties->>'b')::boolean > false",
            "a boolean can only be compared with = or <>",
            id="boolean-ordered",
        ),
        pytest.param(
            "properties->'a' = 'x'",
            "properties -> 'a' is JSON, not text: read the last key with ->>",
            id="json-value",
        ),
        pytest.param(
            "properties->'a' IS NULL", "properties -> 'a' is JSON, not text", id="json-is-null"
        ),
        pytest.param(
            "properties->>'a'->>'b' = 'x'",
            "->> gives text, not JSON: use -> for every key but the last",
            id="text-then-key",
        ),
        pytest.param(
            "(properties->>'a' = 'x' OR properties->>'b' = 'y')",
            "OR is not supported: use properties->>'key' IN ('a', 'b') for any of several",
            id="or",
        ),
        pytest.param(
            "lower(properties->>'a') = 'x'",
            "only a property can be compared, read as properties->>'key', or a cast of it like "
            "(properties->>'key')::int; not LOWER(properties ->> 'a')",
            id="function",
        ),
        pytest.param(
            "(properties->>'m')::int + 1 > 3", "only a property can be compared", id="arithmetic"
        ),
        pytest.param("properties = 'x'", "only a property can be compared", id="whole-column"),
        pytest.param("properties #>> '{a,b}' = 'x'", "only a property", id="path-operator"),
        pytest.param(
            "(properties->>'a')::date = '2024-01-01'",
            "a cast to DATE is not supported: use ::numeric, ::text or ::boolean",
            id="date-cast",
        ),
        pytest.param(
            "(properties->>'a')::jsonb = 'x'", "a cast to JSONB is not supported", id="jsonb-cast"
        ),
        pytest.param(
            "(properties->>'a')::numeric(5, 2) > 3",
            "a cast with a size or precision is not supported",
            id="precision",
        ),
        pytest.param(
            "(properties->>'a')::varchar(3) = 'x'",
            "a cast with a size or precision is not supported",
            id="varchar-size",
        ),
        pytest.param(
            "properties->>'a' LIKE 'a_c'",
            "LIKE 'a_c': _ matches any one character, which is not supported",
            id="like-underscore",
        ),
        pytest.param(
            "properties->>'a' LIKE 'a%c'",
            "LIKE 'a%c': % is supported only at the start and the end",
            id="like-inner-percent",
        ),
        pytest.param(
            r"properties->>'a' LIKE 'ab\'", "a pattern cannot end with \\", id="like-dangling"
        ),
        pytest.param("properties->>'a' ILIKE 'a%'", "ILIKE is not supported", id="ilike"),
        pytest.param("properties->>'a' NOT LIKE 'a%'", "NOT LIKE is not supported", id="not-like"),
        pytest.param(
            "properties->>'a' LIKE 'a%' ESCAPE '!'",
            "unsupported condition on properties",
            id="like-escape-clause",
        ),
        pytest.param(
            "properties->>'a' LIKE properties->>'b'",
            "LIKE compares properties->>'key' with a pattern like 'abc%'",
            id="like-not-a-literal",
        ),
        pytest.param(
            "properties->>'a' = properties->>'b'",
            "comparing two properties is not supported",
            id="two-properties",
        ),
        pytest.param(
            "properties->>'a' = action_type",
            "compare properties with literals, not with action_type",
            id="property-and-column",
        ),
        pytest.param(
            "properties->>'a' = 'x'::text",
            "compare a property with a literal like 'x', 3 or true, not CAST('x' AS TEXT)",
            id="cast-literal",
        ),
        pytest.param("properties->>'a' = $2", "compare a property with a literal", id="param"),
        pytest.param(
            "properties->>'a' = NULL",
            "nothing equals NULL: test a property with IS NULL or IS NOT NULL",
            id="equals-null",
        ),
        pytest.param("properties->>'a' IN ('x', NULL)", "nothing equals NULL", id="null-in-list"),
        pytest.param("properties->>'a' IS TRUE", "IS supports only NULL", id="is-true"),
        pytest.param(
            "(properties->>'a')::int IS NULL",
            "IS NULL reads properties->>'key' itself, without a cast",
            id="cast-is-null",
        ),
        pytest.param(
            "NOT properties->>'a' = 'x'",
            "NOT is supported only as NOT IN (...) or IS NOT NULL",
            id="not-eq",
        ),
        pytest.param(
            "properties->>0 = 'x'", "array elements (->0) are not supported", id="array-index"
        ),
        pytest.param(
            "properties->'a'->>0 = 'x'", "array elements (->0) are not supported", id="nested-index"
        ),
        pytest.param(
            "properties->>$2 = 'x'",
            "a property key is a string like 'plan', not $2",
            id="key-param",
        ),
        pytest.param("properties->>'' = 'x'", "a path's keys cannot be empty", id="empty-key"),
        pytest.param(
            "properties->'a'->'b'->'c'->'d'->'e'->'f'->'g'->'h'->>'i' = 'x'",
            "a path is at most 8 keys deep, not 9",
            id="too-deep",
        ),
        pytest.param(
            "properties->>'a' BETWEEN 'a' AND 'b'",
            "unsupported condition on properties",
            id="between",
        ),
        pytest.param("properties ? 'a'", "unsupported condition on properties", id="has-key"),
        pytest.param(
            "properties->>'a' IS DISTINCT FROM 'x'",
            "unsupported condition on properties",
            id="distinct-from",
        ),
        pytest.param(
            "(properties->>'m')::int = 1" + "0" * 5000,
            "10000000000000000000... is too large a number",
            id="long-number",
        ),
        pytest.param(
            "(properties->>'m')::float = 1e999", "1e999 is too large a number", id="huge-float"
        ),
        pytest.param(
            " AND ".join(f"properties->>'k{i}' = 'x'" for i in range(21)),
            "the terms on properties: a filter holds at most 20 tests, not 21",
            id="too-many",
        ),
    ],
)
def test_refuses_terms_on_properties_with_reason(term: str, reason: str) -> None:
    with pytest.raises(QueryError, match=re.escape(reason)):
        translate_query(f"{ACTION} AND {term}")


def test_created_at_stays_refused_beside_properties() -> None:
    with pytest.raises(QueryError, match="filters on created_at are not supported"):
        translate_query(f"{ACTION} AND properties->>'a' = 'x' AND created_at > '2024-01-01'")


# The same condition in both forms, over properties of the types the YAML form compares.
SAME_MEANING = [
    ("properties->>'plan' = 'pro'", {"plan": "pro"}),
    ("properties->>'plan' <> 'pro'", {"plan": {"ne": "pro"}}),
    ("properties->>'plan' IN ('pro', 'team')", {"plan": {"in": ["pro", "team"]}}),
    ("properties->>'plan' NOT IN ('pro', 'team')", {"plan": {"nin": ["pro", "team"]}}),
    ("properties->>'plan' > 'pro'", {"plan": {"gt": "pro"}}),
    ("properties->'team'->>'tier' = 'pro'", {"team.tier": "pro"}),
    ("(properties->>'members')::int >= 3", {"members": {"gte": 3}}),
    ("3 > (properties->>'members')::numeric", {"members": {"lt": 3}}),
    ("(properties->>'members')::float <= 2.5", {"members": {"lte": 2.5}}),
    ("(properties->>'members')::int = 3", {"members": 3}),
    ("(properties->>'members')::int <> 3", {"members": {"ne": 3}}),
    ("(properties->>'beta')::boolean = true", {"beta": True}),
    ("(properties->>'beta')::boolean <> true", {"beta": {"ne": True}}),
    ("properties->>'referrer' IS NOT NULL", {"referrer": {"exists": True}}),
    ("properties->>'referrer' IS NULL", {"referrer": {"exists": False}}),
    ("properties->>'plan' LIKE 'pr%'", {"plan": {"starts_with": "pr"}}),
    ("properties->>'plan' LIKE '%o'", {"plan": {"ends_with": "o"}}),
    ("properties->>'plan' LIKE '%r%'", {"plan": {"contains": "r"}}),
]

missing = st.just({})
plans = st.sampled_from(["pro", "team", "free", "", "Pro", "prox", "o", "r"])
typed_properties = st.fixed_dictionaries(
    {},
    optional={
        "plan": st.one_of(st.none(), plans),
        "team": st.one_of(st.none(), plans, st.fixed_dictionaries({}, optional={"tier": plans})),
        "members": st.one_of(
            st.none(), st.integers(-2, 6), st.sampled_from([2.5, 3.0, 2.4999, 1e20])
        ),
        "beta": st.one_of(st.none(), st.booleans()),
        "referrer": st.one_of(st.none(), plans, st.integers(), st.booleans(), st.lists(plans)),
    },
)


@settings(max_examples=300, deadline=None, database=None)
@given(properties=typed_properties)
def test_both_forms_decide_alike_on_properties_of_their_type(properties: dict[str, Any]) -> None:
    for term, where in SAME_MEANING:
        sql = translate_query(f"{ACTION} AND {term}").where
        assert sql is not None
        assert sql.matches(properties) == filter_from_spec(where).matches(properties), term


@pytest.mark.parametrize(
    ("term", "where", "properties"),
    [
        ("properties->>'n' = '3'", {"n": "3"}, {"n": 3}),
        ("properties->>'n' = 'true'", {"n": "true"}, {"n": True}),
        ("(properties->>'n')::int >= 3", {"n": {"gte": 3}}, {"n": "4"}),
        ("(properties->>'n')::boolean = true", {"n": True}, {"n": "yes"}),
        ("properties->>'n' LIKE '%b%'", {"n": {"contains": "b"}}, {"n": {"b": 1}}),
    ],
)
def test_the_sql_form_reads_other_types_as_postgres_would(
    term: str, where: dict[str, Any], properties: dict[str, Any]
) -> None:
    """Where the forms part: SQL converts the property first; the YAML form compares JSON."""
    sql = translate_query(f"{ACTION} AND {term}").where
    assert sql is not None
    assert sql.matches(properties)
    assert not filter_from_spec(where).matches(properties)


PROPERTY_WORDS = [
    "properties", "->", "->>", "'a'", "'b'", "'x'", "3", "2.5", "-1", "true", "NULL", "=", "<>",
    ">=", "<", "IN", "NOT", "IS", "LIKE", "'a%'", "'%a_'", "::int", "::boolean", "::text",
    "::date", "CAST(", "AS", "integer)", "(", ")", ",", "AND", "OR", "0", "$2", "lower(",
]  # fmt: skip


@settings(max_examples=300, deadline=None, database=None)
@given(words=st.lists(st.sampled_from(PROPERTY_WORDS), max_size=12))
def test_any_term_on_properties_translates_or_raises_query_error(words: list[str]) -> None:
    try:
        condition = translate_query(f"{ACTION} AND {' '.join(words)}")
    except QueryError:
        return
    assert condition.actions == ("x",)
    if condition.where is not None:
        assert isinstance(condition.where.matches({"a": "x", "b": 3}), bool)
