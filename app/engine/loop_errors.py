"""A loop file's schema errors as its reader reads them: the field path as the file spells it
(a union's tag, which the file never wrote, left out), a reason a person can act on, and the
file's data without the keys an error named, so the next pass finds what they hid."""

from collections.abc import Sequence
from typing import Any

from pydantic_core import ErrorDetails


def _child(node: Any, part: int | str) -> Any:
    """The item `part` names in the file's data; `node` itself for a part that names none (a
    union's tag, which the file never spelled)."""
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    if isinstance(node, dict) and part in node:
        return node[part]
    return node


KEY_ERRORS = ("unknown_key", "empty_value")


def without_keys(data: Any, errors: Sequence[ErrorDetails]) -> Any:
    """The file's data without the keys these errors name (their `ctx['key']`): the mappings
    and lists on the way to each are copied, nothing else (a file's YAML aliases may share a
    huge structure, which must not be expanded)."""
    root: Any = _shallow(data)
    for error in errors:
        node = root
        loc = error["loc"]
        for i, part in enumerate(loc):
            if _is_union_tag(loc, i):
                continue  # `action` is a tag and a key of an action condition: never follow it
            child = _child(node, part)
            if child is not node:
                child = _shallow(child)
                node[part] = child
            node = child
        if isinstance(node, dict):
            node.pop(error.get("ctx", {}).get("key"), None)
    return root


def _shallow(node: Any) -> Any:
    return dict(node) if isinstance(node, dict) else list(node) if isinstance(node, list) else node


# Discriminated unions put the chosen `type` in an error's location; a reader never wrote it.
_UNION_FIELDS = {"trigger": "database, clerk, action", "condition": "action, query"}
# An action's union is tagged by `loop_spec._action_kind`: its tag, too, is in the location.
_TAGGED_FIELDS = ("action", "on_timeout")


def field_path(error: ErrorDetails) -> str:
    loc = error["loc"]
    parts = [part for i, part in enumerate(loc) if part != "[key]" and not _is_union_tag(loc, i)]
    if error["type"] in ("unknown_key", "empty_value"):
        parts.append(str(error.get("ctx", {})["key"]))
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _is_union_tag(loc: tuple[int | str, ...], i: int) -> bool:
    return i >= 3 and loc[i - 3] == "steps" and loc[i - 1] in (*_UNION_FIELDS, *_TAGGED_FIELDS)


def error_reason(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "missing":
        return "required, but missing"
    if kind == "union_tag_not_found":
        return f"needs a type: one of {_UNION_FIELDS[str(error['loc'][-1])]}"
    if kind == "union_tag_invalid":
        return f"unknown type {ctx['tag']!r}: expected one of {ctx['expected_tags']}"
    if kind == "literal_error":
        return f"{error['input']!r} is not allowed: expected {ctx['expected']}"
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        return "should be a mapping (key: value lines)"
    return error["msg"]
