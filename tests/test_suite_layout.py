"""The test suite's own layout (STYLE.md, habit 20): test files share helpers through tests/support/
or the conftest and never import one another; a shared constant, every span of time among them,
is defined once, in tests/support/constants.py; the stand-ins and their own tests live apart, in
tests/standins/."""

import ast
import re
from pathlib import Path

from tests.support.constants import REPO

TESTS = REPO / "tests"
CONSTANTS = TESTS / "support" / "constants.py"
# a span of time named by its unit: SEC, MINUTE, HOURS, DAY_MS, WEEK_S...
TIME_NAME = re.compile(r"(SEC|SECOND|MIN|MINUTE|HOUR|DAY|WEEK|MONTH|YEAR)S?(_MS|_S)?")


def python_files() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def tree_of(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported(path: Path) -> set[str]:
    """The modules `path` imports (relative imports resolved; `from a import b` counts as `a` and
    as `a.b`), and any string in it that names a module (`import_module`, `pytest_plugins`)."""
    package = module_of(path).split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree_of(path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parent = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*parent, *([node.module] if node.module else [])])
            found |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return found


def assigned(tree: ast.AST) -> list[tuple[str, ast.expr | None]]:
    """Every name given a value anywhere in `tree`, with the value (None when augmented)."""
    names: list[tuple[str, ast.expr | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = [t for target in node.targets for t in ast.walk(target)]
            names += [(t.id, node.value) for t in targets if isinstance(t, ast.Name) and stored(t)]
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.append((node.target.id, node.value if isinstance(node, ast.AnnAssign) else None))
    return names


def stored(name: ast.Name) -> bool:
    return isinstance(name.ctx, ast.Store)


def literal(value: ast.expr | None) -> object:
    try:
        return ast.literal_eval(value) if value is not None else None
    except ValueError:
        return None


def test_no_file_imports_a_test_file() -> None:
    test_modules = {module_of(path) for path in python_files() if path.name.startswith("test_")}
    wrong = {
        str(path.relative_to(REPO)): sorted(imported(path) & (test_modules - {module_of(path)}))
        for path in python_files()
    }
    assert {path: modules for path, modules in wrong.items() if modules} == {}


def test_a_span_of_time_is_defined_in_tests_support_constants_only() -> None:
    defined = {name for name, _ in assigned(tree_of(CONSTANTS)) if TIME_NAME.fullmatch(name)}
    assert {"SEC", "MIN", "HOUR", "DAY"} <= defined
    elsewhere = [
        f"{path.relative_to(REPO)}: {name}"
        for path in python_files()
        if path != CONSTANTS
        for name, _ in assigned(tree_of(path))
        if TIME_NAME.fullmatch(name)
    ]
    assert elsewhere == []


def test_a_shared_constant_is_not_defined_again() -> None:
    """A name tests/support/constants.py defines is given another value elsewhere, if at all
    (`USER = "user_lease"`), never the same one, nor one that is not a plain literal."""
    shared = {name: literal(value) for name, value in assigned(tree_of(CONSTANTS))}
    copies = [
        f"{path.relative_to(REPO)}: {name}"
        for path in python_files()
        if path != CONSTANTS
        for name, value in assigned(tree_of(path))
        if name in shared and (literal(value) is None or literal(value) == shared[name])
    ]
    assert copies == []


def test_helpers_live_in_support_and_the_standins_apart() -> None:
    """In tests/ itself: test files and the conftest only. The stand-ins' own tests import nothing
    of the app: they test the stand-ins, and the app's tests are elsewhere."""
    loose = [
        path.name for path in TESTS.glob("*.py") if path.name not in ("__init__.py", "conftest.py")
    ]
    assert [name for name in loose if not name.startswith("test_")] == []
    standin_tests = sorted((TESTS / "standins").glob("test_*.py"))
    assert standin_tests
    reaching_the_app = {
        path.name: sorted(name for name in imported(path) if name.split(".")[0] == "app")
        for path in standin_tests
    }
    assert {name: app for name, app in reaching_the_app.items() if app} == {}
