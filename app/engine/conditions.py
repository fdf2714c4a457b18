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
condition's `where` filter (`app.engine.filters`, which says how each test decides):

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

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from app.engine.filters import Cast, Filter, Op, Test
from app.errors import QueryError

# The same names `POST /v1/actions` accepts: a loop must not wait for an action that cannot arrive.
ACTION_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
USER_ACTIONS_COLUMNS: tuple[str, ...] = ("user_id", "action_type", "created_at", "properties")
TABLE = "user_actions"
# Counts are stored and compared as Lua numbers; a million actions of one kind is past any loop.
MAX_COUNT = 1_000_000
ACTION_NAME = re.compile(ACTION_NAME_PATTERN)

# Clause names as sqlglot (>= 30) spells them.
_ALLOWED_CLAUSES = frozenset({"expressions", "from_", "where", "group", "having"})
_CLAUSE_NAMES = {"joins": "JOIN", "with": "WITH", "with_": "WITH", "order": "ORDER BY"}
_CREATED_AT_REFUSED = "filters on created_at are not supported: the condition's timeout bounds time"
_PROPERTIES = "properties"
# A comparison as written, and with its sides swapped (`3 <= x` is `x >= 3`).
_COMPARISONS: dict[type[exp.Expr], tuple[Op, Op]] = {
    exp.EQ: (Op.EQ, Op.EQ),
    exp.NEQ: (Op.NE, Op.NE),
    exp.GT: (Op.GT, Op.LT),
    exp.GTE: (Op.GTE, Op.LTE),
    exp.LT: (Op.LT, Op.GT),
    exp.LTE: (Op.LTE, Op.GTE),
}
_T = exp.DataType.Type
_CASTS = {
    **dict.fromkeys((_T.INT, _T.BIGINT, _T.SMALLINT, _T.DECIMAL, _T.DOUBLE, _T.FLOAT), Cast.NUMBER),
    **dict.fromkeys((_T.TEXT, _T.VARCHAR), Cast.TEXT),
    _T.BOOLEAN: Cast.BOOLEAN,
}
_READ_A_PROPERTY = "properties->>'key', or a cast of it like (properties->>'key')::int"


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
    if not isinstance(table, exp.Table) or table.db or _identifier(table.this) != TABLE:
        found = f" (not {table.sql(dialect='postgres')})" if table is not None else ""
        raise QueryError(f"the query must select FROM {TABLE}{found}")
    alias = table.args.get("alias")
    return frozenset({TABLE, _identifier(alias.this)} if alias is not None else {TABLE})


def _where_clause(
    select: exp.Select, qualifiers: frozenset[str]
) -> tuple[tuple[str, ...], Filter | None]:
    """The actions the WHERE clause names, and the filter its terms on properties make."""
    where = select.args.get("where")
    terms = list(_conjuncts(where.this)) if where is not None else []
    on_properties = [_PROPERTIES in _columns_in(term, qualifiers) for term in terms]
    paired = list(zip(terms, on_properties, strict=True))
    tests = [_property_test(term, qualifiers) for term, on in paired if on]
    others = [term for term, on in paired if not on]
    return _where_actions(others, qualifiers), _property_filter(tests)


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
        read = {_identifier(column.this) for column in term.find_all(exp.Column)}
        listed = "properties->>'key'" if _PROPERTIES in read else "action_type"
        raise QueryError(f"OR is not supported: use {listed} IN ('a', 'b') for any of several")
    names = {_column_name(column, qualifiers) for column in term.find_all(exp.Column)}
    if "created_at" in names:
        raise QueryError(_CREATED_AT_REFUSED)
    if _PROPERTIES in names and len(names) > 1:
        others = ", ".join(sorted(names - {_PROPERTIES}))
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
    if isinstance(term, exp.In) and _is_column(term.this, "action_type", qualifiers):
        if not term.expressions:
            raise QueryError("action_type IN () names no action: the condition could never hold")
        return tuple(_action_name(value) for value in term.expressions)
    raise QueryError(f"unsupported condition: {term.sql(dialect='postgres')}")


def _equality(term: exp.EQ, qualifiers: frozenset[str]) -> tuple[str, ...] | None:
    column, value = (term.left, term.right)
    if not isinstance(column, exp.Column):
        column, value = value, column
    if _is_column(column, "user_id", qualifiers):
        if not (isinstance(value, exp.Parameter) and value.name == "1"):
            raise QueryError("user_id must be compared with $1 (the user the loop runs for)")
        return None
    if _is_column(column, "action_type", qualifiers):
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


def _property_filter(tests: list[Test]) -> Filter | None:
    try:
        return Filter(tuple(tests)) if tests else None
    except ValueError as exc:
        raise QueryError(f"the terms on properties: {exc}") from None


def _property_test(term: exp.Expr, qualifiers: frozenset[str]) -> Test:
    """The test one AND-ed term on properties states."""
    found = term.sql(dialect="postgres")
    negated = isinstance(term, exp.Not)
    inner = term.this.unnest() if negated else term
    if isinstance(inner, exp.In):
        return _in_test(inner, qualifiers, negated)
    if isinstance(inner, exp.Is):
        return _null_test(inner, qualifiers, negated)
    if negated:
        raise QueryError(f"NOT is supported only as NOT IN (...) or IS NOT NULL: {found}")
    if isinstance(term, exp.Like):
        return _like_test(term, qualifiers)
    if type(term) in _COMPARISONS:
        return _comparison_test(term, qualifiers)
    if isinstance(term, exp.ILike):
        raise QueryError(f"ILIKE is not supported (properties compare case-sensitively): {found}")
    raise QueryError(f"unsupported condition on properties: {found}")


def _comparison_test(term: exp.Expr, qualifiers: frozenset[str]) -> Test:
    op, flipped = _COMPARISONS[type(term)]
    side, other = term.this, term.expression
    if _is_literal(side) and not _is_literal(other):
        side, other, op = other, side, flipped
    path, cast = _property_ref(side, qualifiers)
    value = _property_literal(other)
    found = term.sql(dialect="postgres")
    if cast is Cast.TEXT and not isinstance(value, str):
        hint = _text_hint(value, side.sql(dialect="postgres"))
        raise QueryError(f"{found}: ->> reads text: compare it with a string, or {hint}")
    if cast is Cast.BOOLEAN and op not in (Op.EQ, Op.NE):
        raise QueryError(f"a boolean can only be compared with = or <>: {found}")
    return _test(path, op, value, cast, term)


def _text_hint(value: object, read: str) -> str:
    if isinstance(value, bool):
        return f"cast it to compare with true or false: ({read})::boolean"
    return f"cast it to compare with a number: ({read})::numeric"


def _in_test(term: exp.In, qualifiers: frozenset[str], negated: bool) -> Test:
    if any(term.args.get(arg) for arg in ("query", "unnest", "field")) or not term.expressions:
        raise QueryError(f"IN takes a list of literals, like IN ('a', 'b'): {term.sql('postgres')}")
    path, cast = _property_ref(term.this, qualifiers)
    values = tuple(_property_literal(value) for value in term.expressions)
    if cast is Cast.TEXT and not all(isinstance(value, str) for value in values):
        read = term.this.sql(dialect="postgres")
        other = next(value for value in values if not isinstance(value, str))
        raise QueryError(f"{read} IN: ->> reads text: list strings, or {_text_hint(other, read)}")
    op = Op.NIN if negated ^ bool(term.args.get("negate")) else Op.IN
    return _test(path, op, values, cast, term)


def _null_test(term: exp.Is, qualifiers: frozenset[str], negated: bool) -> Test:
    found = term.sql(dialect="postgres")
    if not isinstance(term.expression, exp.Null):
        raise QueryError(f"IS supports only NULL: compare with = true after ::boolean: {found}")
    path, cast = _property_ref(term.this, qualifiers)
    if cast is not Cast.TEXT:
        raise QueryError(f"IS NULL reads properties->>'key' itself, without a cast: {found}")
    present = negated ^ bool(term.args.get("negate"))
    return _test(path, Op.EXISTS, present, None, term)


def _like_test(term: exp.Like, qualifiers: frozenset[str]) -> Test:
    found = term.sql(dialect="postgres")
    if term.args.get("negate"):
        raise QueryError(f"NOT LIKE is not supported: {found}")
    path, cast = _property_ref(term.this, qualifiers)
    pattern = term.expression
    if cast is not Cast.TEXT or not (isinstance(pattern, exp.Literal) and pattern.is_string):
        raise QueryError(f"LIKE compares properties->>'key' with a pattern like 'abc%': {found}")
    op, text = _like_pattern(str(pattern.this))
    return _test(path, op, text, Cast.TEXT, term)


def _like_pattern(pattern: str) -> tuple[Op, str]:
    """The test a LIKE pattern with % only at its ends states; `\\` escapes a % or _."""
    parts = _like_parts(pattern)  # None stands for a %
    lead = bool(parts) and parts[0] is None
    trail = len(parts) > int(lead) and parts[-1] is None
    core = parts[int(lead) : len(parts) - int(trail)]
    if None in core:
        raise QueryError(f"LIKE '{pattern}': % is supported only at the start and the end")
    text = "".join(part for part in core if part is not None)
    op = {(True, True): Op.CONTAINS, (True, False): Op.ENDS_WITH, (False, True): Op.STARTS_WITH}
    return op.get((lead, trail), Op.EQ), text


def _like_parts(pattern: str) -> list[str | None]:
    parts: list[str | None] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise QueryError(f"LIKE '{pattern}': a pattern cannot end with \\")
            parts.append(escaped)
        elif char == "_":
            raise QueryError(
                f"LIKE '{pattern}': _ matches any one character, which is not supported "
                "(write \\_ for an underscore)"
            )
        else:
            parts.append(None if char == "%" else char)
    return parts


def _property_ref(node: exp.Expr, qualifiers: frozenset[str]) -> tuple[tuple[str, ...], Cast]:
    """The path and cast of `properties->'a'->>'b'`, maybe cast: `(...)::int`."""
    node, cast = node.unnest(), Cast.TEXT
    if isinstance(node, exp.Cast):
        node, cast = node.this.unnest(), _cast_kind(node.args["to"])
    if isinstance(node, exp.JSONExtractScalar):
        return _json_path(node, qualifiers), cast
    found = node.sql(dialect="postgres")
    if isinstance(node, exp.JSONExtract):
        raise QueryError(
            f"{found} is JSON, not text: read the last key with ->>, like properties->'a'->>'b'"
        )
    raise QueryError(f"only a property can be compared, read as {_READ_A_PROPERTY}; not {found}")


def _json_path(node: exp.JSONExtractScalar, qualifiers: frozenset[str]) -> tuple[str, ...]:
    keys = _json_keys(node.expression)
    inner = node.this.unnest()
    while isinstance(inner, exp.JSONExtract):
        keys = _json_keys(inner.expression) + keys
        inner = inner.this.unnest()
    if isinstance(inner, exp.JSONExtractScalar):
        raise QueryError("->> gives text, not JSON: use -> for every key but the last")
    if not _is_column(inner, _PROPERTIES, qualifiers):
        raise QueryError(f"read properties as {_READ_A_PROPERTY}; not {inner.sql('postgres')}")
    return keys


def _json_keys(path: exp.Expr) -> tuple[str, ...]:
    steps = path.expressions if isinstance(path, exp.JSONPath) else [path]
    keys = [step.this for step in steps if isinstance(step, exp.JSONPathKey)]
    if any(isinstance(step, exp.JSONPathSubscript) for step in steps):
        raise QueryError("array elements (->0) are not supported: read object keys like ->'a'")
    if len(keys) != sum(not isinstance(step, exp.JSONPathRoot) for step in steps):
        raise QueryError(f"a property key is a string like 'plan', not {path.sql('postgres')}")
    return tuple(str(key) for key in keys)


def _cast_kind(to: exp.DataType) -> Cast:
    found = to.sql(dialect="postgres")
    if to.expressions:
        raise QueryError(f"a cast with a size or precision is not supported: {found}")
    kind = _CASTS.get(to.this)
    if kind is None:
        raise QueryError(f"a cast to {found} is not supported: use ::numeric, ::text or ::boolean")
    return kind


def _is_literal(node: exp.Expr) -> bool:
    if isinstance(node, exp.Neg):
        node = node.this
    return isinstance(node, exp.Literal | exp.Boolean | exp.Null)


def _property_literal(node: exp.Expr) -> str | int | float | bool:
    if isinstance(node, exp.Null):
        raise QueryError("nothing equals NULL: test a property with IS NULL or IS NOT NULL")
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Literal) and node.is_string:
        return str(node.this)
    negative = isinstance(node, exp.Neg)
    number = node.this if negative else node
    if isinstance(number, exp.Literal) and number.is_number:
        return _sql_number(number, negative)
    found = node.sql(dialect="postgres")
    if node.find(exp.JSONExtract, exp.JSONExtractScalar):
        raise QueryError(f"comparing two properties is not supported: {found}")
    raise QueryError(f"compare a property with a literal like 'x', 3 or true, not {found}")


def _sql_number(literal: exp.Literal, negative: bool) -> int | float:
    written = str(literal.this)
    try:
        number = int(written) if literal.is_int else float(written)
    except ValueError:  # past Python's limit on the digits of an int
        number = math.inf
    if not math.isfinite(number):
        shown = written if len(written) <= 20 else f"{written[:20]}..."
        raise QueryError(f"{shown} is too large a number")
    return -number if negative else number


def _test(path: tuple[str, ...], op: Op, value: object, cast: Cast | None, term: exp.Expr) -> Test:
    try:
        return Test(path, op, value, cast)
    except ValueError as exc:
        raise QueryError(f"{term.sql(dialect='postgres')}: {exc}") from None


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
            _column_name(item, qualifiers)
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
    if isinstance(item, exp.Column) and _column_name(item, qualifiers) in (
        "user_id",
        "action_type",
    ):
        return item.name.lower()
    raise QueryError(f"GROUP BY {item.sql(dialect='postgres')} is not supported")


def _is_count_star(node: exp.Expr) -> bool:
    return isinstance(node, exp.Count) and isinstance(node.this, exp.Star)


def _is_column(node: exp.Expr, name: str, qualifiers: frozenset[str]) -> bool:
    return isinstance(node, exp.Column) and _column_name(node, qualifiers) == name


def _column_name(column: exp.Column, qualifiers: frozenset[str]) -> str:
    table = column.args.get("table")
    if table is not None and _identifier(table) not in qualifiers:
        raise QueryError(f"unknown table {table.name!r}: only {TABLE} can be queried")
    if column.is_star:
        return "*"
    name = _identifier(column.this)
    if name not in USER_ACTIONS_COLUMNS:
        columns = ", ".join(USER_ACTIONS_COLUMNS)
        raise QueryError(f"{TABLE} has no column {name!r} (it has {columns})")
    return name


def _identifier(node: exp.Expr) -> str:
    """An identifier as SQL compares it: case-folded unless quoted."""
    name = node.name
    return name if isinstance(node, exp.Identifier) and node.quoted else name.lower()
