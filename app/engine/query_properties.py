"""A `type: query` condition's tests on the action's `properties` (a JSON object), as the
condition's `where` filter (`app.engine.filters`): `properties->>'key'` compared, cast
(`::int`, `CAST(... AS boolean)`...), `IN`, `IS [NOT] NULL` and prefix, suffix or infix `LIKE`;
anything else raises `QueryError` naming the reason (`app.engine.conditions` has the whole
shape)."""

import math

from sqlglot import exp

from app.engine.filters import Cast, Filter, Op, Test
from app.engine.query_table import PROPERTIES, is_column
from app.errors import QueryError

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


def property_filter(tests: list[Test]) -> Filter | None:
    try:
        return Filter(tuple(tests)) if tests else None
    except ValueError as exc:
        raise QueryError(f"the terms on properties: {exc}") from None


def property_test(term: exp.Expr, qualifiers: frozenset[str]) -> Test:
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
    if not is_column(inner, PROPERTIES, qualifiers):
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
