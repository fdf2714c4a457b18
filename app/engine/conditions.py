"""The SQL form of a loop condition, translated to "the user did one of these actions N times".

A query runs, in the reader's mind, over the virtual table `user_actions(user_id, action_type,
created_at, properties)`, one row per recorded action; the condition holds once it returns a row.
It is parsed with sqlglot (Postgres dialect, for `$1`) and must be one of these shapes:

    SELECT * FROM user_actions WHERE user_id = $1 AND action_type = 'x'      -> x, 1 time
    SELECT * FROM user_actions WHERE user_id = $1 AND action_type IN ('a', 'b')
                                                                             -> a or b, 1 time
    SELECT COUNT(*) FROM user_actions WHERE user_id = $1 AND action_type = 'x'
      HAVING COUNT(*) >= 3                                                   -> x, 3 times
    ... action_type IN ('a', 'b') GROUP BY action_type HAVING COUNT(*) > 2   -> a or b, 3 times

More AND-ed terms may test the action's `properties` (a JSON object); they become the
condition's `where` filter (`query_properties` translates them; `app.engine.filters` says how
each test decides; `query_table` names the virtual table):

    properties->>'plan' = 'pro'                   -> plan::text = 'pro' (also <>, !=, <, <=, >, >=)
    properties->'a'->>'b' = 'x'                   -> a.b::text = 'x' (-> for every key but the last)
    'pro' = properties->>'plan'                   -> the same (a literal on the left flips < and >)
    (properties->>'members')::int >= 3            -> members::number >= 3; so do CAST(... AS int),
                                                     bigint, smallint, numeric, float, real, double
    (properties->>'beta')::boolean = true         -> beta::boolean = true
    properties->>'plan' IN ('pro', 'team')        -> plan::text in (...); NOT IN -> not in
    properties->>'x' IS NOT NULL                  -> x exists; IS NULL -> x is missing (or null)
    properties->>'name' LIKE 'abc%'               -> starts with 'abc'; '%abc' ends with, '%abc%'
                                                     contains (a backslash escapes a % or _)

Anything else (other tables or columns, OR, joins, subqueries, filters on `created_at`, a query
not scoped by `user_id = $1`; on properties: functions, arithmetic, other casts, `->` compared
as JSON, `_` or an inner `%` in LIKE, ILIKE, two properties compared, `->>` compared with a
number without a cast) raises `QueryError` naming the reason.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from app.engine.filters import Filter
from app.engine.query_properties import property_filter, property_test
from app.engine.query_table import (
    PROPERTIES,
    TABLE,
    column_name,
    identifier,
    is_column,
)
from app.errors import QueryError

# The same names `POST /v1/actions` accepts: a loop must not wait for an action that cannot arrive.
ACTION_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
# Counts are stored and compared as Lua numbers; a million actions of one kind is past any loop.
MAX_COUNT = 1_000_000
ACTION_NAME = re.compile(ACTION_NAME_PATTERN)

# Clause names as sqlglot (>= 30) spells them.
_ALLOWED_CLAUSES = frozenset({"expressions", "from_", "where", "group", "having"})
_CLAUSE_NAMES = {"joins": "JOIN", "with": "WITH", "with_": "WITH", "order": "ORDER BY"}
_CREATED_AT_REFUSED = "filters on created_at are not supported: the condition's timeout bounds time"


@dataclass(frozen=True, slots=True)
class QueryCondition:
    """What a query means: the user did any one of `actions`, that one at least `count` times;
    with `where`, only actions whose properties pass it count."""

    actions: tuple[str, ...]
    count: int
    where: Filter | None = None


def translate_query(sql: str) -> QueryCondition:
    """The condition a query states, or `QueryError` with the reason it cannot be translated."""
    try:
        return _translate(sql)
    except RecursionError:
        # sqlglot's parser and tree walks recurse per nesting level
        raise QueryError("the query is nested too deeply") from None


def _translate(sql: str) -> QueryCondition:
    select = _parse_select(sql)
    _refuse_extra_clauses(select)
    qualifiers = _table_qualifiers(select)
    actions, where = _where_clause(select, qualifiers)
    count = _having_count(select)
    _check_select_list(select, qualifiers, has_having=count is not None)
    _check_grouping(select, qualifiers, actions, count or 1)
    return QueryCondition(actions, count or 1, where)


def _parse_select(sql: str) -> exp.Select:
    try:
        statements = [s for s in sqlglot.parse(sql, read="postgres") if s is not None]
    except sqlglot.errors.ParseError as exc:
        raise QueryError(f"cannot parse the query: {_describe_parse_error(exc)}") from None
    except sqlglot.errors.SqlglotError as exc:
        raise QueryError(f"cannot parse the query: {exc}") from None
    if len(statements) != 1:
        raise QueryError(f"expected one SELECT statement, got {len(statements)}")
    statement = statements[0]
    if not isinstance(statement, exp.Select):
        raise QueryError(f"expected a SELECT statement, got {statement.key.upper()}")
    if any(isinstance(node, exp.Query) for node in statement.walk() if node is not statement):
        raise QueryError("subqueries are not supported")
    return statement


def _describe_parse_error(exc: sqlglot.errors.ParseError) -> str:
    if not exc.errors:
        return str(exc)
    error = exc.errors[0]
    return f"{error['description']} (line {error['line']}, column {error['col']})"


def _refuse_extra_clauses(select: exp.Select) -> None:
    for name, value in select.args.items():
        if value and name not in _ALLOWED_CLAUSES:
            clause = _CLAUSE_NAMES.get(name, name.rstrip("_").upper())
            raise QueryError(f"{clause} is not supported")


def _table_qualifiers(select: exp.Select) -> frozenset[str]:
    """The names a column may be qualified with: the table's and its alias."""
    source = select.args.get("from_")
    table = source.this if source is not None else None
    if not isinstance(table, exp.Table) or table.db or identifier(table.this) != TABLE:
        found = f" (not {table.sql(dialect='postgres')})" if table is not None else ""
        raise QueryError(f"the query must select FROM {TABLE}{found}")
    alias = table.args.get("alias")
    return frozenset({TABLE, identifier(alias.this)} if alias is not None else {TABLE})


def _where_clause(
    select: exp.Select, qualifiers: frozenset[str]
) -> tuple[tuple[str, ...], Filter | None]:
    """The actions the WHERE clause names, and the filter its terms on properties make."""
    where = select.args.get("where")
    terms = list(_conjuncts(where.this)) if where is not None else []
    on_properties = [PROPERTIES in _columns_in(term, qualifiers) for term in terms]
    paired = list(zip(terms, on_properties, strict=True))
    tests = [property_test(term, qualifiers) for term, on in paired if on]
    others = [term for term, on in paired if not on]
    return _where_actions(others, qualifiers), property_filter(tests)


def _where_actions(terms: list[exp.Expr], qualifiers: frozenset[str]) -> tuple[str, ...]:
    """The actions the terms name; they must also hold `user_id = $1`."""
    filters = [_filter_actions(term, qualifiers) for term in terms]
    if None not in filters:
        raise QueryError("the query must be scoped to the user: WHERE user_id = $1")
    named = [actions for actions in filters if actions is not None]
    if len(named) != 1:
        raise QueryError("the query must name the action once: action_type = 'x' or IN ('a', 'b')")
    return named[0]


def _columns_in(term: exp.Expr, qualifiers: frozenset[str]) -> set[str]:
    """The columns a term reads. Refused: OR, a column that is not there, `created_at`, and
    `properties` beside another column."""
    if isinstance(term, exp.Or):
        read = {identifier(column.this) for column in term.find_all(exp.Column)}
        listed = "properties->>'key'" if PROPERTIES in read else "action_type"
        raise QueryError(f"OR is not supported: use {listed} IN ('a', 'b') for any of several")
    names = {column_name(column, qualifiers) for column in term.find_all(exp.Column)}
    if "created_at" in names:
        raise QueryError(_CREATED_AT_REFUSED)
    if PROPERTIES in names and len(names) > 1:
        others = ", ".join(sorted(names - {PROPERTIES}))
        found = term.sql(dialect="postgres")
        raise QueryError(f"compare properties with literals, not with {others}: {found}")
    return names


def _conjuncts(node: exp.Expr) -> Iterator[exp.Expr]:
    node = node.unnest()
    if isinstance(node, exp.And):
        yield from _conjuncts(node.left)
        yield from _conjuncts(node.right)
    else:
        yield node


def _filter_actions(term: exp.Expr, qualifiers: frozenset[str]) -> tuple[str, ...] | None:
    """One AND-ed term: None for `user_id = $1`, else the actions it names."""
    if isinstance(term, exp.EQ):
        return _equality(term, qualifiers)
    if isinstance(term, exp.In) and is_column(term.this, "action_type", qualifiers):
        if not term.expressions:
            raise QueryError("action_type IN () names no action: the condition could never hold")
        return tuple(_action_name(value) for value in term.expressions)
    raise QueryError(f"unsupported condition: {term.sql(dialect='postgres')}")


def _equality(term: exp.EQ, qualifiers: frozenset[str]) -> tuple[str, ...] | None:
    column, value = (term.left, term.right)
    if not isinstance(column, exp.Column):
        column, value = value, column
    if is_column(column, "user_id", qualifiers):
        if not (isinstance(value, exp.Parameter) and value.name == "1"):
            raise QueryError("user_id must be compared with $1 (the user the loop runs for)")
        return None
    if is_column(column, "action_type", qualifiers):
        return (_action_name(value),)
    raise QueryError(f"unsupported condition: {term.sql(dialect='postgres')}")


def _action_name(value: exp.Expr) -> str:
    if not (isinstance(value, exp.Literal) and value.is_string):
        found = value.sql(dialect="postgres")
        raise QueryError(f"action_type must be compared with a string like 'x', not {found}")
    name = str(value.this)
    if not ACTION_NAME.fullmatch(name):
        raise QueryError(f"{name!r} is not an action name (letters, digits, _ . -; up to 64)")
    return name


def _having_count(select: exp.Select) -> int | None:
    """The count a `HAVING COUNT(*) >= n` (or `> n`, or `n <= COUNT(*)`) asks for; None if none."""
    having = select.args.get("having")
    if having is None:
        return None
    term = having.this.unnest()
    if isinstance(term, exp.GTE | exp.GT):
        counted, bound = term.left, term.right
    elif isinstance(term, exp.LTE | exp.LT):
        counted, bound = term.right, term.left
    else:
        raise QueryError("HAVING must be COUNT(*) >= n or COUNT(*) > n")
    if not _is_count_star(counted) or not (isinstance(bound, exp.Literal) and bound.is_int):
        raise QueryError("HAVING must compare COUNT(*) with a whole number, like COUNT(*) >= 3")
    count = int(bound.this) + (1 if isinstance(term, exp.GT | exp.LT) else 0)
    if count < 1:
        raise QueryError(f"HAVING {term.sql(dialect='postgres')} always holds: ask for at least 1")
    if count > MAX_COUNT:
        raise QueryError(f"HAVING asks for {count} actions; at most {MAX_COUNT} can be counted")
    return count


def _check_select_list(select: exp.Select, qualifiers: frozenset[str], has_having: bool) -> None:
    for selected in select.expressions:
        item = selected.unalias()
        if _is_count_star(item) and not has_having:
            raise QueryError(
                "SELECT COUNT(*) returns a row even when the count is 0: add HAVING COUNT(*) >= n"
            )
        if isinstance(item, exp.Column):
            column_name(item, qualifiers)
        elif not (isinstance(item, exp.Star) or _is_count_star(item)):
            raise QueryError(f"unsupported in the SELECT list: {item.sql(dialect='postgres')}")


def _check_grouping(
    select: exp.Select, qualifiers: frozenset[str], actions: tuple[str, ...], count: int
) -> None:
    group = select.args.get("group")
    grouped = [_group_column(item, qualifiers) for item in group.expressions] if group else []
    # Without GROUP BY action_type, COUNT(*) adds the listed actions up; a loop counts each alone.
    if len(actions) > 1 and count > 1 and "action_type" not in grouped:
        raise QueryError(
            "COUNT(*) over several action types adds them up, but a loop counts each action "
            "on its own: add GROUP BY action_type"
        )


def _group_column(item: exp.Expr, qualifiers: frozenset[str]) -> str:
    if isinstance(item, exp.Column) and column_name(item, qualifiers) in (
        "user_id",
        "action_type",
    ):
        return item.name.lower()
    raise QueryError(f"GROUP BY {item.sql(dialect='postgres')} is not supported")


def _is_count_star(node: exp.Expr) -> bool:
    return isinstance(node, exp.Count) and isinstance(node.this, exp.Star)
