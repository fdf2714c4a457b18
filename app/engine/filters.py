"""Property filters: which actions (or profiles) a `where:` mapping, or a query's terms on
`properties`, let through. Pure and precomputed: a filter runs on the intake path for every action.

A filter is a list of tests that must all hold. A test reads one property by its path and
compares it with a value by an operator. In a loop file:

    where:
      template: saas                 # a bare value: equality
      members: {gte: 3}              # {operator: value}; several operators must all hold
      plan.tier: {in: [pro, team]}   # a dotted path walks nested objects
      referrer: {exists: true}

Operators: `eq ne in nin gt gte lt lte exists contains starts_with ends_with`.

- A path walks nested JSON objects. A missing key, a non-object on the way, or a JSON `null` all
  count as missing, as SQL's `properties->>'key'` gives NULL for each: a missing property fails
  every test except `exists: false`, and `ne` / `nin` too (a NULL compares neither equal nor not).
- Values are compared as JSON: `eq ne in nin` hold for the same string, the same number
  (`3` equals `3.0`) or the same boolean; `true` is not the number 1, and `'3'` is not 3.
  `ne` and `nin` are the negations of `eq` and `in` on a present property.
- `gt gte lt lte` compare a number with a number, or a string with a string by code point (as
  Postgres's C collation does); any other pairing does not hold.
- `contains`: a substring of a string property, or an element of an array property (compared as
  `eq` does). `starts_with`, `ends_with`: string properties only.

The SQL form (see `app.engine.conditions`) adds a cast to a test, and the property is converted
first, as Postgres would, then compared with a value of the cast's type:

- `text` (`properties->>'k'`, no cast): strings as they are, numbers as JSON spells them (`3`,
  `2.5`), booleans as `true` / `false`, objects and arrays as jsonb prints them (`{"a": 1}`,
  keys shortest first). So `properties->>'n' = '3'` holds for the number 3 and the string '3'.
- `number` (`::int`, `::numeric`, `::float`, ...): a number, or a string that reads as one
  (`' 3'`, `'2.5'`, `'1e3'`), compares numerically; the int casts are read as numeric (`'2.5'`
  is 2.5, where Postgres's `::int` would fail). Anything else (`'abc'`, `true`, an object) makes
  Postgres fail the query; here the test just does not hold.
- `boolean` (`::boolean`): `true` / `false`, or the text Postgres reads as one (`t`, `yes`,
  `on`, `1`, `f`, `no`, `off`, `0`, any case); anything else does not hold.
"""

import difflib
import hashlib
import json
import math
import operator
import re
from base64 import b32encode
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_PATH_DEPTH = 8
MAX_TESTS = 20


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NIN = "nin"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    EXISTS = "exists"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"


class Cast(StrEnum):
    """How the SQL form reads a property before comparing: `->>` text, or cast to a type."""

    TEXT = "text"
    NUMBER = "number"
    BOOLEAN = "boolean"


Predicate = Callable[[Any], bool]

_OP_NAMES = tuple(op.value for op in Op)
_ORDERED = {Op.GT: operator.gt, Op.GTE: operator.ge, Op.LT: operator.lt, Op.LTE: operator.le}
_SYMBOLS = {Op.EQ: "=", Op.NE: "!=", Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}
_WORDS = {
    Op.IN: "in",
    Op.NIN: "not in",
    Op.CONTAINS: "contains",
    Op.STARTS_WITH: "starts with",
    Op.ENDS_WITH: "ends with",
}
_NUMBER_TEXT = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
_BOOLEAN_WORDS = {
    **dict.fromkeys(("true", "t", "yes", "y", "on", "1"), True),
    **dict.fromkeys(("false", "f", "no", "n", "off", "0"), False),
}
# The kind of value (as `_tag` names it) each cast compares with.
_CAST_KINDS = {Cast.TEXT: "string", Cast.NUMBER: "number", Cast.BOOLEAN: "boolean"}


@dataclass(frozen=True, slots=True)
class Test:
    """One property, read at `path` (converted by `cast`, for the SQL form), compared by `op`.

    Equal tests compare equal and hash alike by their canonical JSON (`3` and `3.0` alike,
    `true` and `1` not); an `in` / `nin` list is kept sorted and without repeats."""

    __test__ = False  # not a pytest test class

    path: tuple[str, ...] = field(compare=False)
    op: Op = field(compare=False)
    value: Any = field(compare=False)
    cast: Cast | None = field(default=None, compare=False)
    _key: str = field(init=False, repr=False)
    _convert: Callable[[Any], Any] = field(init=False, repr=False, compare=False)
    _predicate: Predicate = field(init=False, repr=False, compare=False)
    _when_missing: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        op, cast = Op(self.op), Cast(self.cast) if self.cast is not None else None
        if op is Op.EXISTS and cast is Cast.TEXT:
            cast = None  # `->>` IS NULL is exactly a missing (or null) property
        value = _checked_value(op, cast, self.value)
        fields = {"path": _checked_path(self.path), "op": op, "value": value, "cast": cast}
        fields |= {"_key": _canonical(_json_form(fields)), "_convert": _CONVERTERS[cast]}
        missing = op is Op.EXISTS and value is False
        fields |= {"_predicate": _predicate(op, value), "_when_missing": missing}
        for name, computed in fields.items():
            object.__setattr__(self, name, computed)

    def matches(self, properties: Mapping[str, Any]) -> bool:
        found = self._convert(_resolve(properties, self.path))
        return self._when_missing if found is None else self._predicate(found)

    def describe(self) -> str:
        """`members >= 3`, `plan.tier in ('pro', 'team')`, `n::number = 3` (a cast shown)."""
        subject = ".".join(self.path) + (f"::{self.cast}" if self.cast else "")
        if self.op is Op.EXISTS:
            return f"{subject} {'exists' if self.value else 'is missing'}"
        if self.op in (Op.IN, Op.NIN):
            listed = ", ".join(_literal(item) for item in self.value)
            return f"{subject} {_WORDS[self.op]} ({listed})"
        return f"{subject} {_SYMBOLS.get(self.op) or _WORDS[self.op]} {_literal(self.value)}"

    def to_json(self) -> dict[str, Any]:
        return _json_form(
            {"path": self.path, "op": self.op, "value": self.value, "cast": self.cast}
        )


@dataclass(frozen=True, slots=True)
class Filter:
    """Tests that must all hold, kept in a canonical order (repeats dropped), so filters with the
    same tests compare equal and share a `digest` however they were written."""

    tests: tuple[Test, ...]
    digest: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        tests = tuple(sorted({test._key: test for test in self.tests}.values(), key=_sort_key))
        if not tests:
            raise ValueError("a filter needs at least one test")
        if len(tests) > MAX_TESTS:
            raise ValueError(f"a filter holds at most {MAX_TESTS} tests, not {len(tests)}")
        canonical = "[" + ",".join(test._key for test in tests) + "]"
        object.__setattr__(self, "tests", tests)
        object.__setattr__(self, "digest", _digest(canonical))

    def matches(self, properties: Mapping[str, Any] | None) -> bool:
        found = properties if properties is not None else {}
        return all(test.matches(found) for test in self.tests)

    def describe(self) -> str:
        """`members >= 3, template = 'saas'`."""
        return ", ".join(test.describe() for test in self.tests)

    def to_json(self) -> list[dict[str, Any]]:
        return [test.to_json() for test in self.tests]


def filter_from_spec(where: Mapping[str, Any]) -> Filter:
    """The filter a loop file's `where:` mapping states; `ValueError` with the reason if none."""
    if not isinstance(where, Mapping):
        raise ValueError("where maps property paths to values, like {plan: pro}")
    if not where:
        raise ValueError("where names no property: remove it, or add one like {plan: pro}")
    tests = [test for key, spec in where.items() for test in _tests_for(key, spec)]
    return Filter(tuple(tests))


def _tests_for(key: object, spec: object) -> Iterator[Test]:
    if not isinstance(key, str):
        raise ValueError(f"{key!r}: a property path is a string: quote it")
    stated = _operators(key, spec) if isinstance(spec, Mapping) else [(Op.EQ, spec)]
    for op, value in stated:
        try:
            yield Test(tuple(key.split(".")), op, value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None


def _operators(key: str, spec: Mapping[Any, Any]) -> list[tuple[Op, Any]]:
    """The `{op: value}` pairs of a mapping value, or why it is not an operator mapping."""
    if not spec:
        raise ValueError(f"{key}: {{}} names no operator (operators: {', '.join(_OP_NAMES)})")
    unknown = [str(name) for name in spec if name not in _OP_NAMES]
    if not unknown:
        return [(Op(name), value) for name, value in spec.items()]
    close = difflib.get_close_matches(unknown[0], _OP_NAMES, n=1, cutoff=0.75)
    nested = f"to test a nested property, write the dotted path '{key}.{unknown[0]}: ...'"
    if len(unknown) == len(spec) and not close:
        raise ValueError(f"{key}: {{{unknown[0]}: ...}} is not an operator mapping: {nested}")
    hint = f": did you mean {close[0]!r}?" if close else ""
    also = f" ({nested})" if len(unknown) == len(spec) else ""
    operators = f" (operators: {', '.join(_OP_NAMES)})" if not close else ""
    raise ValueError(f"{key}: unknown operator {unknown[0]!r}{hint}{operators}{also}")


def _checked_path(path: Sequence[str]) -> tuple[str, ...]:
    if isinstance(path, str) or not all(isinstance(key, str) for key in path):
        raise ValueError(f"a path is a sequence of keys, not {path!r}")
    if not path or not all(path):
        raise ValueError("a path's keys cannot be empty (write a.b, not a..b)")
    if len(path) > MAX_PATH_DEPTH:
        raise ValueError(f"a path is at most {MAX_PATH_DEPTH} keys deep, not {len(path)}")
    return tuple(path)


def _checked_value(op: Op, cast: Cast | None, value: Any) -> Any:
    """The value normalized (an `in` list as a sorted tuple), or why it cannot go with `op`."""
    if op is Op.EXISTS:
        return _checked_exists(cast, value)
    if op in (Op.IN, Op.NIN):
        return _checked_list(op, cast, value)
    _checked_scalar(op, cast, value)
    if op in _ORDERED and (isinstance(value, bool) or cast is Cast.BOOLEAN):
        raise ValueError(f"{op} compares numbers or strings, not {_literal(value)}")
    if op in (Op.STARTS_WITH, Op.ENDS_WITH) and not isinstance(value, str):
        raise ValueError(f"{op} takes a string, not {_literal(value)}")
    if op in (Op.CONTAINS, Op.STARTS_WITH, Op.ENDS_WITH) and cast not in (None, Cast.TEXT):
        raise ValueError(f"{op} reads text: it cannot follow a {cast} cast")
    return value


def _checked_exists(cast: Cast | None, value: Any) -> bool:
    if cast is not None:
        raise ValueError(f"exists reads the property as it is: it cannot follow a {cast} cast")
    if not isinstance(value, bool):
        raise ValueError(f"exists takes true or false, not {value!r}")
    return value


def _checked_list(op: Op, cast: Cast | None, value: Any) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{op} needs a non-empty list of values, like {{{op}: [a, b]}}")
    items = {_canonical(_json_value(_checked_scalar(op, cast, item))): item for item in value}
    return tuple(items[key] for key in sorted(items))


def _checked_scalar(op: Op, cast: Cast | None, value: Any) -> Any:
    if value is None:
        raise ValueError(f"{op} null never holds: use {{exists: false}} for a missing property")
    if isinstance(value, list | tuple):
        raise ValueError(f"{op} takes one value, not a list: use {{in: [...]}} for any of several")
    if isinstance(value, Mapping):
        raise ValueError(f"{op} takes a string, number or true/false, not a mapping")
    if not isinstance(value, str | int | float) or (isinstance(value, float) and math.isinf(value)):
        raise ValueError(f"{value!r} is not a string, number or true/false (quote it for text)")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("NaN equals nothing: compare with a number")
    if cast is not None and _tag(value)[0] != _CAST_KINDS[cast]:
        kind = _CAST_KINDS[cast]
        raise ValueError(f"a {cast} cast compares with a {kind}, not {_literal(value)}")
    return value


def _predicate(op: Op, value: Any) -> Predicate:
    """What a present (and converted) property must satisfy."""
    if op in _ORDERED:
        return _ordered(_ORDERED[op], value)
    return _PREDICATES[op](value)


def _equals(value: Any) -> Predicate:
    tag = _tag(value)
    return lambda found: _tag(found) == tag


def _differs(value: Any) -> Predicate:
    tag = _tag(value)
    return lambda found: _tag(found) != tag


def _one_of(values: tuple[Any, ...]) -> Predicate:
    tags = frozenset(_tag(value) for value in values)
    return lambda found: _tag(found) in tags


def _none_of(values: tuple[Any, ...]) -> Predicate:
    tags = frozenset(_tag(value) for value in values)
    return lambda found: _tag(found) not in tags


def _present(wanted: bool) -> Predicate:
    return lambda found: wanted


def _starts_with(prefix: str) -> Predicate:
    return lambda found: isinstance(found, str) and found.startswith(prefix)


def _ends_with(suffix: str) -> Predicate:
    return lambda found: isinstance(found, str) and found.endswith(suffix)


def _ordered(compare: Callable[[Any, Any], bool], bound: Any) -> Predicate:
    if isinstance(bound, str):
        return lambda found: isinstance(found, str) and compare(found, bound)
    return lambda found: _is_number(found) and compare(found, bound)


def _contains(needle: Any) -> Predicate:
    tag = _tag(needle)

    def contains(found: Any) -> bool:
        if isinstance(found, str):
            return isinstance(needle, str) and needle in found
        return isinstance(found, list) and any(_tag(item) == tag for item in found)

    return contains


def _tag(value: Any) -> tuple[str, Any]:
    """A value as JSON equality sees it: booleans apart from numbers, 3 alike with 3.0."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    return ("other", None)  # an object or array: equal to no scalar


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _resolve(properties: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path`, or None when it is missing, null, or under a non-object."""
    found: Any = properties
    for key in path:
        if not isinstance(found, Mapping):
            return None
        found = found.get(key)
    return found


def _as_text(value: Any) -> str | None:
    """A property as Postgres's `->>` prints it."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(_jsonb_order(value), ensure_ascii=False)


def _jsonb_order(value: Any) -> Any:
    """Objects with their keys in jsonb's order: shortest first, then by bytes."""
    if isinstance(value, Mapping):
        keys = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        return {key: _jsonb_order(value[key]) for key in keys}
    if isinstance(value, list):
        return [_jsonb_order(item) for item in value]
    return value


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if not isinstance(value, str) or not _NUMBER_TEXT.fullmatch(value):
        return None
    try:
        return float(value) if any(mark in value for mark in ".eE") else int(value)
    except ValueError:  # an integer past Python's digit limit
        return None


def _as_boolean(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = _as_text(value)
    return _BOOLEAN_WORDS.get(text.strip().lower()) if text is not None else None


def _as_is(value: Any) -> Any:
    return value


_PREDICATES: dict[Op, Callable[[Any], Predicate]] = {
    Op.EQ: _equals,
    Op.NE: _differs,
    Op.IN: _one_of,
    Op.NIN: _none_of,
    Op.EXISTS: _present,
    Op.CONTAINS: _contains,
    Op.STARTS_WITH: _starts_with,
    Op.ENDS_WITH: _ends_with,
}
_CONVERTERS: dict[Cast | None, Callable[[Any], Any]] = {
    None: _as_is,
    Cast.TEXT: _as_text,
    Cast.NUMBER: _as_number,
    Cast.BOOLEAN: _as_boolean,
}


def _json_form(fields: Mapping[str, Any]) -> dict[str, Any]:
    value, cast = fields["value"], fields["cast"]
    listed = isinstance(value, tuple)
    return {
        "path": list(fields["path"]),
        "op": str(fields["op"]),
        "value": [_json_value(item) for item in value] if listed else _json_value(value),
        "cast": str(cast) if cast is not None else None,
    }


def _json_value(value: Any) -> Any:
    """Integral floats as ints, so `3.0` and `3` have one canonical form."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sort_key(test: Test) -> tuple[tuple[str, ...], str]:
    return (test.path, test._key)


def _digest(canonical: str) -> str:
    raw = hashlib.blake2b(canonical.encode(), digest_size=5).digest()
    return b32encode(raw).decode().lower()


def _literal(value: Any) -> str:
    """A value as the descriptions write it: SQL-quoted strings, JSON numbers and booleans."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return json.dumps(_json_value(value))
