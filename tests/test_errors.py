"""`app.errors`: every exception class the service defines lives there, and its docstring draws the
tree exactly as the classes are (each class once, under its own base)."""

import ast
import builtins
import importlib
import inspect
import re
from pathlib import Path

from app import errors

APP = Path(errors.__file__).parent
ROOT = APP.parent
# Exception classes another change moves into app/errors.py (the storage split): once one has
# moved, this test fails until it is taken off this list and drawn in the tree.
# A drawn line: the tree's indentation, its branch, then the class name.
TREE_LINE = re.compile(r"^    (?P<indent>(?:[│ ]   )*)(?P<branch>[├└]── )?(?P<name>[A-Za-z]\w*)")


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def resolve(node: ast.expr, namespace: dict[str, object]) -> object:
    """What a base class expression (`Name` or `a.b.Name`) names in the module."""
    if isinstance(node, ast.Attribute):
        return getattr(resolve(node.value, namespace), node.attr)
    assert isinstance(node, ast.Name), ast.unparse(node)
    return namespace[node.id]


def exception_classes(path: Path) -> list[str]:
    """The classes defined in a module (at any depth) with an exception among their bases."""
    namespace = {**vars(builtins), **vars(importlib.import_module(module_of(path)))}
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ClassDef):
            bases = [resolve(base, namespace) for base in node.bases]
            if any(inspect.isclass(base) and issubclass(base, BaseException) for base in bases):
                found.append(node.name)
    return found


def test_every_exception_class_lives_in_app_errors() -> None:
    elsewhere = {
        (str(path.relative_to(ROOT)), name)
        for path in sorted(APP.rglob("*.py"))
        if path != APP / "errors.py"
        for name in exception_classes(path)
        if not name.startswith("_")  # private translations (e.g. a resend SDK subclass) stay put
    }
    assert elsewhere == set()


def test_the_scan_finds_exception_classes() -> None:
    """The scan above must see what it looks for, or it would pass on anything."""
    assert set(exception_classes(APP / "errors.py")) == set(defined_in_errors())
    assert "_TransportFailure" in exception_classes(APP / "delivery" / "resend_api.py")


def defined_in_errors() -> dict[str, type[BaseException]]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, BaseException)
        if cls.__module__ == errors.__name__
    }


def drawn_tree() -> list[tuple[str, str | None]]:
    """(class, the class it is drawn under) for each class named in the docstring's tree."""
    assert errors.__doc__ is not None
    classes, drawn = defined_in_errors(), []
    stack: list[str] = []
    for line in errors.__doc__.splitlines():
        match = TREE_LINE.match(line)
        if match is None or match["name"] not in classes:
            continue  # prose, or a description carried over to the next line
        depth = len(match["indent"]) // 4 + (match["branch"] is not None)
        del stack[depth:]
        drawn.append((match["name"], stack[-1] if stack else None))
        stack.append(match["name"])
    return drawn


def test_the_docstring_draws_every_class_once() -> None:
    names = [name for name, _ in drawn_tree()]
    assert sorted(names) == sorted(defined_in_errors())


def test_each_class_is_drawn_under_its_own_base() -> None:
    classes = defined_in_errors()
    for name, parent in drawn_tree():
        own_bases = [base.__name__ for base in classes[name].__bases__ if base in classes.values()]
        expected = own_bases or [None]
        assert expected == [parent], (name, parent, own_bases)


def test_every_class_descends_from_activation_error() -> None:
    for name, cls in defined_in_errors().items():
        assert issubclass(cls, errors.ActivationError), name


def test_the_load_errors_refuse_startup_and_the_send_errors_decide_by_type() -> None:
    for cls in (errors.LoopFileError, errors.QueryError, errors.TemplateError):
        assert issubclass(cls, errors.ConfigError)
    assert issubclass(errors.QueryError, ValueError)  # pydantic turns it into the field's error
    assert not issubclass(errors.TemplateRenderError, errors.ConfigError)
    assert issubclass(errors.NotSent, errors.TransientSendError)
    assert not issubclass(errors.PermanentSendError, errors.TransientSendError)
    assert issubclass(errors.KeyReused, errors.PermanentSendError)  # never read as sent
