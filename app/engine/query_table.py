"""The virtual table a `type: query` condition reads, `user_actions(user_id, action_type,
created_at, properties)`: its names, and how a column of it is named in a query (unknown tables
and columns refused with `QueryError`)."""

from sqlglot import exp

from app.errors import QueryError

TABLE = "user_actions"
USER_ACTIONS_COLUMNS: tuple[str, ...] = ("user_id", "action_type", "created_at", "properties")
PROPERTIES = "properties"


def column_name(column: exp.Column, qualifiers: frozenset[str]) -> str:
    table = column.args.get("table")
    if table is not None and identifier(table) not in qualifiers:
        raise QueryError(f"unknown table {table.name!r}: only {TABLE} can be queried")
    if column.is_star:
        return "*"
    name = identifier(column.this)
    if name not in USER_ACTIONS_COLUMNS:
        columns = ", ".join(USER_ACTIONS_COLUMNS)
        raise QueryError(f"{TABLE} has no column {name!r} (it has {columns})")
    return name


def identifier(node: exp.Expr) -> str:
    """An identifier as SQL compares it: case-folded unless quoted."""
    name = node.name
    return name if isinstance(node, exp.Identifier) and node.quoted else name.lower()


def is_column(node: exp.Expr, name: str, qualifiers: frozenset[str]) -> bool:
    return isinstance(node, exp.Column) and column_name(node, qualifiers) == name
