"""The shape of `app/`: which layer may import which, read from the source with `ast` (imports
inside functions and `TYPE_CHECKING` blocks count too), and the house limits on its size.

`LAYERS` lists the layers bottom to top; `MAY_IMPORT` is each one's rules, the same as the
"May import:" paragraphs of the packages' `__init__` docstrings (a test holds the two equal).
Importing within one's own layer is always allowed, and so is `app` itself (`__version__`).
"""

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parent.parent / "app"

MAX_TOP_LEVEL_MODULES = 8
MAX_CLASS_LINES = 200
MAX_FUNCTION_LINES = 45

# Bottom to top. A module belongs to the longest layer that is its name or a package above it.
LAYERS = (
    "errors",
    "clock",
    "settings",
    "signing",
    "engine",
    "observability",
    "storage",
    "delivery",
    "web",
    "runtime",
    "main",
    "cli",
)

_BASE = frozenset({"errors", "clock", "settings", "signing"})
_STAGES = frozenset({"engine", "observability", "storage"})
MAY_IMPORT: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "clock": frozenset({"errors"}),
    "settings": frozenset({"errors", "clock"}),
    "signing": frozenset({"errors", "settings"}),
    "engine": frozenset({"errors", "clock"}),
    "observability": frozenset({"engine", "settings", "errors"}),
    "storage": frozenset({"engine", "clock", "settings", "errors"}),
    "delivery": _BASE | _STAGES,
    "web": _BASE | _STAGES | {"delivery"},
    "runtime": _BASE | _STAGES | {"delivery", "web"},
    "main": _BASE | _STAGES | {"delivery", "web", "runtime"},
    "cli": _BASE | _STAGES | {"delivery", "web", "runtime"},
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "app.engine.funnel"
    target: str  # the imported module, e.g. "app.engine.email_jobs"
    line: int

    def __str__(self) -> str:
        return f"{self.module} imports {self.target} (line {self.line})"


def module_name(path: Path) -> str:
    parts = ("app", *path.relative_to(APP_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def app_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(APP_DIR.rglob("*.py"))}


def is_module(name: str) -> bool:
    path = APP_DIR.joinpath(*name.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer_of(module: str) -> str | None:
    """`None` for `app` itself; otherwise the longest layer that is the module or holds it."""
    name = module.removeprefix("app.")
    if module == "app":
        return None
    held = [layer for layer in LAYERS if name == layer or name.startswith(layer + ".")]
    if not held:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and MAY_IMPORT")
    return max(held, key=len)


def imported_names(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The `app` modules one import statement names (`from app.x import y`: `app.x.y` when `y`
    is a module, else `app.x`)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        for alias in node.names:
            name = f"{base}.{alias.name}"
            yield name if is_module(name) else base


def app_imports() -> list[Import]:
    found = []
    for module, path in app_modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in imported_names(node, module, path.name == "__init__.py"):
                if target == "app" or target.startswith("app."):
                    found.append(Import(module, target, getattr(node, "lineno", 0)))
    return found


def allows(source: str, target: str) -> bool:
    """A layer may import what its rules name, and what those layers hold (`engine` holds
    `engine.loops`)."""
    return any(
        target == layer or target.startswith(layer + ".") for layer in (*MAY_IMPORT[source], source)
    )


def cross_layer_imports() -> Iterator[tuple[Import, str, str]]:
    for imp in app_imports():
        source, target = layer_of(imp.module), layer_of(imp.target)
        if source is not None and target is not None and source != target:
            yield imp, source, target


def docstring_rules(docstring: str, package: str) -> dict[str, frozenset[str]]:
    """Each "May import:" paragraph's layers, by the layer it is about: the package, or the
    `app.x.y` named right before "may import:"."""
    rules = {}
    for paragraph in docstring.split("\n\n"):
        said = re.search(r"(?:`app\.([\w.]+)`\s+)?[Mm]ay import:(.*)", paragraph, re.DOTALL)
        if said:
            named = re.findall(r"`app\.([\w.]+)`", said.group(2))
            rules[said.group(1) or package] = frozenset(named)
    return rules


def test_the_rules_only_look_down() -> None:
    assert set(MAY_IMPORT) == set(LAYERS)
    for layer, allowed in MAY_IMPORT.items():
        above = {other for other in allowed if LAYERS.index(other) > LAYERS.index(layer)}
        assert not above, f"{layer} may import layers above it: {sorted(above)}"


def test_every_layer_exists() -> None:
    assert all(is_module(f"app.{layer}") for layer in LAYERS)


def test_no_module_imports_upward() -> None:
    upward = [
        f"{imp} [{source} -> {target}]"
        for imp, source, target in cross_layer_imports()
        if LAYERS.index(target) > LAYERS.index(source)
    ]
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_each_layer_imports_only_what_its_rules_allow() -> None:
    broken = [
        f"{imp} [{target} is not in {source}'s rules]"
        for imp, source, target in cross_layer_imports()
        if not allows(source, target)
    ]
    assert not broken, "imports outside the rules:\n" + "\n".join(broken)


PACKAGES = sorted(path.parent.name for path in APP_DIR.glob("*/__init__.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_package_docstring_states_the_rules(package: str) -> None:
    init = APP_DIR / package / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert docstring, f"app/{package}/__init__.py has no docstring"
    stated = docstring_rules(docstring, package)
    assert package in stated, f"app/{package}/__init__.py does not say what it may import"
    expected = {
        layer: allowed
        for layer, allowed in MAY_IMPORT.items()
        if layer == package or layer.startswith(package + ".")
    }
    assert stated == expected


def test_the_docstring_reader() -> None:
    docstring = (
        "Jobs.\n\nMay import: `app.errors` (why), `app.engine`.\n\n`app.x.y` may import: none."
    )
    assert docstring_rules(docstring, "pkg") == {
        "pkg": frozenset({"errors", "engine"}),
        "x.y": frozenset(),
    }


def test_app_has_few_top_level_modules() -> None:
    modules = sorted(p.stem for p in APP_DIR.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


def test_no_class_or_function_is_too_long() -> None:
    too_long = []
    for module, path in app_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_FUNCTION_LINES
            else:
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                too_long.append(f"{module}.{node.name} (line {node.lineno}): {lines} > {limit}")
    assert not too_long, "\n".join(too_long)


def test_the_import_reader_sees_every_form() -> None:
    """`from app import x`, `from app.x import y` (module or name), relative imports, and imports
    under `if TYPE_CHECKING:` and inside functions."""
    source = (
        "import app.errors\n"
        "from app import clock, __version__\n"
        "from app.web import auth\n"
        "from app.engine.evaluate import Decisions\n"
        "from . import keys\n"
        "from .records import UserProfile\n"
        "if TYPE_CHECKING:\n"
        "    from app.engine.email_jobs import EmailJob\n"
        "def f():\n"
        "    import app.settings\n"
    )
    names = {
        name
        for node in ast.walk(ast.parse(source))
        for name in imported_names(node, "app.storage.users", is_package=False)
    }
    assert names == {
        "app.errors",
        "app.clock",
        "app",
        "app.web.auth",
        "app.engine.evaluate",
        "app.storage.keys",
        "app.storage.records",
        "app.engine.email_jobs",
        "app.settings",
    }
