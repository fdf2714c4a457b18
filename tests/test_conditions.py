"""SQL conditions: each accepted shape and what it means; each refusal with its reason."""

import re

import pytest

from app.engine.conditions import QueryCondition, translate_query
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
            f"{SCOPED} AND action_type = 'x' AND properties ->> 'plan' = 'pro'",
            "filters on properties are not supported",
            id="properties",
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
