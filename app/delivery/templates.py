"""Email templates: loaded and checked when the loops load, rendered at send time.

A template is `<LOOPS_DIR>/templates/<name>.html`: YAML front matter holding the subject, then a
Jinja2 HTML body; `<name>.txt` beside it, if present, is the plain-text part, else that part is
derived from the rendered HTML. Everything knowable without a user fails in `TemplateSet.read`
(each file) or in `value_problems` / `use_problems` (each loop's use of one: its own template,
its variants' and its experiment's arms'), so when the loops load, never at send time; each
reports every problem it finds, not the first only.

Variables (the contract):
- a template sees the action's personalization keys, `user` (fields: `USER_FIELDS`), `loop`
  (`LOOP_FIELDS`), `app_url` and `unsubscribe_url`;
- a personalization value sees the same contract variables but never another personalization key:
  values are rendered first, against the user, and reach the template as plain strings;
- `user.x` / `user["x"]` and `loop.x` are checked against the field lists; deeper lookups such as
  `user.public_metadata.plan` depend on the user's data, so write `| default(...)` for them.
"""

import keyword
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from app.delivery.html_text import html_to_text
from app.errors import TemplateError, TemplateRenderError

USER_FIELDS: tuple[str, ...] = (
    "id",
    "email",
    "first_name",
    "last_name",
    "name",
    "username",
    "image_url",
    "created_at",
    "public_metadata",
    "unsafe_metadata",
    "activation_link",
)
LOOP_FIELDS: tuple[str, ...] = ("id", "type")
CONTEXT_NAMES: tuple[str, ...] = ("user", "loop", "app_url", "unsubscribe_url")
FRONT_MATTER_KEYS: frozenset[str] = frozenset({"subject"})

_FIELDS: dict[str, tuple[str, ...]] = {"user": USER_FIELDS, "loop": LOOP_FIELDS}
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)^---[ \t]*$\n?", re.DOTALL | re.MULTILINE)
# Any line break or control character in a header could start a new header (header injection).
_HEADER_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
# Without a loader these fail only at render time; a template stands alone.
_UNSUPPORTED = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)
_JINJA_CONSTANTS = frozenset({"true", "false", "none"})
_VALUE_HINT = "a personalization value may use " + ", ".join(CONTEXT_NAMES)


@dataclass(frozen=True)
class RenderContext:
    """What a template sees besides the personalization; `user` holds the `USER_FIELDS` keys."""

    user: Mapping[str, Any]
    loop: Mapping[str, Any]
    app_url: str
    unsubscribe_url: str

    def variables(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "loop": self.loop,
            "app_url": self.app_url,
            "unsubscribe_url": self.unsubscribe_url,
        }


@dataclass(frozen=True)
class Content:
    """What a template renders to: the subject and both parts (`jobs.RenderedEmail` adds the
    sender, the recipient and the headers)."""

    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class _Part:
    """One Jinja source (a subject, body, text part or personalization value) and where it lives."""

    origin: str
    first_line: int | None  # the file line the source starts on; None when not from a file
    tree: nodes.Template
    template: jinja2.Template

    def at(self, lineno: int) -> str:
        return _location(self.origin, self.first_line, lineno)


@dataclass(frozen=True)
class _Email:
    subject: _Part
    html: _Part
    text: _Part | None

    @property
    def parts(self) -> tuple[_Part, ...]:
        optional = () if self.text is None else (self.text,)
        return (self.subject, self.html, *optional)


class TemplateSet:
    """The templates of one loops directory, sharing one sandboxed Jinja environment."""

    def __init__(
        self,
        templates_dir: Path,
        environment: SandboxedEnvironment,
        emails: Mapping[str, _Email],
        broken: Iterable[str] = (),
    ) -> None:
        self._dir = templates_dir
        self._env = environment
        self._emails = dict(emails)
        self._broken = frozenset(broken)  # files that exist but did not load: reported already
        self._values: dict[str, jinja2.Template] = {}

    @classmethod
    def load(cls, templates_dir: Path) -> "TemplateSet":
        """Parse every `*.html` (and `.txt`) in `templates_dir`, or raise a `TemplateError` with a
        line for each problem found; a missing folder holds none."""
        templates, problems = cls.read(templates_dir)
        _refuse_all(problems)
        return templates

    @classmethod
    def read(cls, templates_dir: Path) -> tuple["TemplateSet", list[TemplateError]]:
        """The templates in `templates_dir` that load, and a `TemplateError` for each file that
        does not (one bad file never hides another's mistakes)."""
        env = _environment()
        if templates_dir.exists() and not templates_dir.is_dir():
            return cls(templates_dir, env, {}), [TemplateError(f"{templates_dir}: not a directory")]
        paths = sorted(templates_dir.glob("*.html")) if templates_dir.is_dir() else []
        emails: dict[str, _Email] = {}
        problems = list(_orphan_texts(templates_dir))
        for path in paths:
            try:
                emails[path.stem] = _load_email(env, path)
            except TemplateError as exc:
                problems.append(exc)
        broken = {path.stem for path in paths} - emails.keys()
        return cls(templates_dir, env, emails, broken), problems

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._emails))

    def __contains__(self, name: object) -> bool:
        return name in self._emails

    def __repr__(self) -> str:
        return f"TemplateSet({str(self._dir)!r}, {len(self._emails)} templates)"

    def check(self, name: str, personalization: Mapping[str, str], where: str) -> None:
        """Refuse a loop action whose template is missing or names a variable nothing provides:
        a `TemplateError` with a line for each problem."""
        _refuse_all(
            [
                *self.value_problems(personalization, where),
                *self.use_problems(name, personalization, where),
            ]
        )

    def value_problems(self, personalization: Mapping[str, str], where: str) -> list[TemplateError]:
        """What is wrong with an action's personalization: its keys, and each value's variables."""
        problems = []
        for key, source in personalization.items():
            try:
                _refuse_bad_key(key, where)
                self._check_value(key, source, where)
            except TemplateError as exc:
                problems.append(exc)
        return problems

    def use_problems(
        self, name: str, personalization: Mapping[str, str], where: str
    ) -> list[TemplateError]:
        """What is wrong with sending template `name` with this personalization: a missing
        template, or a variable that neither it nor the contract provides (nothing for a
        template whose file did not load: that was reported with the file)."""
        email = self._emails.get(name)
        if email is None:
            if name in self._broken:
                return []
            expected = self._dir / f"{name}.html"
            return [TemplateError(f"{where}: no template {name!r} (expected {expected})")]
        allowed = frozenset(CONTEXT_NAMES) | self._env.globals.keys() | personalization.keys()
        keys = ", ".join(sorted(personalization)) or "none"
        hint = f"known: personalization keys ({keys}) and {', '.join(CONTEXT_NAMES)}"
        problems = []
        for part in email.parts:
            try:
                _refuse(part, _unknown_variables(part.tree, allowed, hint), prefix=f"{where}: ")
            except TemplateError as exc:
                problems.append(exc)
        return problems

    def render(
        self, name: str, personalization: Mapping[str, str], context: RenderContext
    ) -> Content:
        """Render the values against the user first, then the template with them."""
        email = self._emails.get(name)
        if email is None:
            raise TemplateRenderError(f"no template {name!r} in {self._dir}")
        try:
            rendered = self._render(email, personalization, context)
        # Whatever a template or filter raises on this user's data will recur on every retry.
        except Exception as exc:
            raise TemplateRenderError(f"template {name!r}: {type(exc).__name__}: {exc}") from exc
        subject = _one_line(rendered.subject)
        if not subject:
            raise TemplateRenderError(f"template {name!r}: the rendered subject is empty")
        return Content(subject=subject, html=rendered.html, text=rendered.text)

    def text_problems(self, source: str, where: str) -> list[TemplateError]:
        """What is wrong with a webhook's `text` (at `where`): the variables a value may use."""
        try:
            self._check_source(source, "text", f"{where}.text")
        except TemplateError as exc:
            return [exc]
        return []

    def render_text(self, source: str, context: RenderContext) -> str:
        """A webhook's `text` rendered against the user (plain text, never escaped)."""
        try:
            return self._value(source).render(context.variables())
        except Exception as exc:  # as a template's: it would fail on every retry
            raise TemplateRenderError(f"webhook text: {type(exc).__name__}: {exc}") from exc

    def _check_value(self, key: str, source: str, where: str) -> None:
        self._check_source(source, f"personalization.{key}", f"{where}: personalization.{key}")

    def _check_source(self, source: str, name: str, origin: str) -> None:
        part = _compile(self._env, source, name, origin)
        allowed = frozenset(CONTEXT_NAMES) | self._env.globals.keys()
        problems = _unknown_variables(part.tree, allowed, _VALUE_HINT)
        _refuse(part, [*_static_problems(part.tree), *problems], prefix="")
        self._values[source] = part.template

    def _value(self, source: str) -> jinja2.Template:
        template = self._values.get(source)
        return template if template is not None else self._env.from_string(source)

    def _render(
        self, email: _Email, personalization: Mapping[str, str], context: RenderContext
    ) -> Content:
        base = context.variables()
        values = {key: self._value(source).render(base) for key, source in personalization.items()}
        variables = {**values, **base}  # contract names win even if a loop skipped `check`
        html = email.html.template.render(variables)
        text = email.text.template.render(variables) if email.text else html_to_text(html)
        return Content(email.subject.template.render(variables), html, text)


def _autoescape(template_name: str | None) -> bool:
    # Only the HTML body is markup; the subject is a header and the text part is plain text.
    return template_name is not None and template_name.endswith(".html")


def _environment() -> SandboxedEnvironment:
    # Sandboxed because growth engineers write templates and users' data flows through them.
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=_autoescape,
        keep_trailing_newline=True,  # a .txt part ends the way its author wrote it
        trim_blocks=True,  # a `{% if %}` line leaves no blank line in the text part
    )


def _location(origin: str, first_line: int | None, lineno: int) -> str:
    return origin if first_line is None else f"{origin}:{first_line + lineno - 1}"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot read: {exc}") from exc


def _orphan_texts(templates_dir: Path) -> Iterator[TemplateError]:
    for path in sorted(templates_dir.glob("*.txt")):
        if not path.with_suffix(".html").is_file():
            yield TemplateError(f"{path}: text part without {path.with_suffix('.html').name}")


def _load_email(env: SandboxedEnvironment, path: Path) -> _Email:
    """One template file, or a `TemplateError` with a line for each problem found in it: the
    subject, the HTML body and the text part are each checked, whatever the others hold."""
    front, body, body_line = _split_front_matter(path, _read(path))
    problems: list[TemplateError] = []
    subject = _gather(problems, lambda: _subject_part(env, path, front))
    html = _gather(problems, lambda: _body_part(env, path, body, body_line))
    text_path = path.with_suffix(".txt")
    text = None
    if text_path.is_file():
        text = _gather(
            problems,
            lambda: _compile(env, _read(text_path), text_path.name, str(text_path), 1),
        )
    _refuse_all(problems)  # a part that could not be made added its problem
    assert subject is not None
    assert html is not None
    return _Email(subject=subject, html=html, text=text)


def _gather(problems: list[TemplateError], make: Callable[[], _Part]) -> _Part | None:
    """`make()`, or None with its `TemplateError` added to `problems`."""
    try:
        return make()
    except TemplateError as exc:
        problems.append(exc)
        return None


def _refuse_all(problems: Sequence[TemplateError]) -> None:
    if problems:
        raise TemplateError("\n".join(str(problem) for problem in problems))


def _subject_part(env: SandboxedEnvironment, path: Path, front: str) -> _Part:
    subject = _subject(path, front)
    return _compile(env, subject, f"{path.stem}.subject", str(path), _subject_line(front))


def _body_part(env: SandboxedEnvironment, path: Path, body: str, body_line: int) -> _Part:
    if not body.strip():
        raise TemplateError(f"{path}: the HTML body after the front matter is empty")
    return _compile(env, body, path.name, str(path), body_line)


def _split_front_matter(path: Path, source: str) -> tuple[str, str, int]:
    """The front matter's text, the body, and the file line the body starts on."""
    match = _FRONT_MATTER.match(source)
    if match is None:
        raise TemplateError(
            f"{path}: missing front matter: start the file with '---', 'subject: ...', '---'"
        )
    front = match.group(1)
    return front, source[match.end() :], front.count("\n") + 3


def _subject(path: Path, front: str) -> str:
    data = _parse_yaml(path, front)
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: front matter must be a mapping with a 'subject'")
    unknown = sorted(str(key) for key in data.keys() - FRONT_MATTER_KEYS)
    if unknown:
        known = ", ".join(sorted(FRONT_MATTER_KEYS))
        raise TemplateError(f"{path}: unknown front matter key(s) {unknown} (known: {known})")
    subject = data.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        hint = "quote it if it starts with '{{'"
        raise TemplateError(f"{path}: front matter needs a non-empty string 'subject' ({hint})")
    return subject


def _parse_yaml(path: Path, front: str) -> Any:
    try:
        return yaml.safe_load(front)
    except yaml.YAMLError as exc:
        mark = exc.problem_mark if isinstance(exc, yaml.MarkedYAMLError) else None
        line = f":{mark.line + 2}" if mark is not None else ""  # +2: 0-based, after the '---' line
        raise TemplateError(f"{path}{line}: front matter is not valid YAML: {exc}") from exc


def _subject_line(front: str) -> int:
    lines = enumerate(front.splitlines(), start=2)
    return next((number for number, line in lines if line.startswith("subject")), 2)


def _compile(
    env: SandboxedEnvironment, source: str, name: str, origin: str, first_line: int | None = None
) -> _Part:
    """Parse and compile one source; `name` picks autoescaping, `origin` names it in errors."""
    try:
        tree = env.parse(source, name, origin)
        code = env.compile(source, name, origin)  # from the source: compiling may rewrite a tree
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{_location(origin, first_line, exc.lineno)}: {exc.message}") from exc
    template = env.template_class.from_code(env, code, env.make_globals(None), None)
    part = _Part(origin, first_line, tree, template)
    if first_line is not None:  # a file: refuse what no loop's personalization can fix, now
        _refuse(part, _static_problems(tree), prefix="")
    return part


def _refuse(part: _Part, problems: Iterable[tuple[int, str]], prefix: str) -> None:
    """A `TemplateError` with a line for each problem found in one part, if any."""
    lines = [f"{prefix}{part.at(lineno)}: {message}" for lineno, message in problems]
    if lines:
        raise TemplateError("\n".join(lines))


def _refuse_bad_key(key: str, where: str) -> None:
    if key in CONTEXT_NAMES:
        raise TemplateError(f"{where}: personalization key {key!r} would hide the variable {key}")
    if not key.isidentifier() or keyword.iskeyword(key) or key.lower() in _JINJA_CONSTANTS:
        raise TemplateError(
            f"{where}: personalization key {key!r} is not a variable name (letters, digits, _)"
        )


def _unknown_variables(
    tree: nodes.Template, allowed: frozenset[str], hint: str
) -> Iterator[tuple[int, str]]:
    unknown = meta.find_undeclared_variables(tree) - allowed
    if unknown:
        lines = {name: _first_use(tree, name) for name in unknown}
        names = sorted(unknown, key=lambda name: (lines[name], name))
        listed = ", ".join(repr(name) for name in names)
        yield lines[names[0]], f"unknown variable {listed}; {hint}"


def _first_use(tree: nodes.Template, name: str) -> int:
    uses = (node.lineno for node in tree.find_all(nodes.Name) if node.name == name)
    return next(uses, 1)


def _static_problems(tree: nodes.Template) -> Iterator[tuple[int, str]]:
    """What is wrong whatever the personalization: unsupported tags, unsafe or unknown fields."""
    for tag in tree.find_all(_UNSUPPORTED):
        yield tag.lineno, "extends/include/import are not supported: a template stands alone"
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        attribute = _attribute_name(node)
        if attribute is not None and attribute.startswith("_"):
            yield node.lineno, f"attribute {attribute!r} is refused by the sandbox"
    context_names = meta.find_undeclared_variables(tree) & _FIELDS.keys()
    for variable, attribute, lineno in _field_refs(tree, frozenset()):
        if variable in context_names and attribute not in _FIELDS[variable]:
            known = ", ".join(_FIELDS[variable])
            yield lineno, f"unknown field {variable}.{attribute} (known: {known})"


def _attribute_name(node: nodes.Node) -> str | None:
    """The attribute `x.name` or `x["name"]` reads, when it is written out in the template."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return node.arg.value if isinstance(node.arg.value, str) else None
    return None


def _field_refs(node: nodes.Node, rebound: frozenset[str]) -> Iterator[tuple[str, str, int]]:
    """(variable, field, line) for each `user.x` / `loop.x` not rebound by a for loop or macro."""
    if isinstance(node, nodes.Getattr | nodes.Getitem) and isinstance(node.node, nodes.Name):
        attribute = _attribute_name(node)
        if node.node.name in _FIELDS and node.node.name not in rebound and attribute is not None:
            yield node.node.name, attribute, node.lineno
    for child in node.iter_child_nodes():
        yield from _field_refs(child, rebound | _names_bound(node, child))


def _names_bound(parent: nodes.Node, child: nodes.Node) -> frozenset[str]:
    # Inside a for loop `loop` is Jinja's loop helper, and a target or macro argument may reuse
    # a context name: those references are not to the context.
    if isinstance(parent, nodes.For) and child is not parent.iter:
        return frozenset({"loop", *(name.name for name in parent.target.find_all(nodes.Name))})
    if isinstance(parent, nodes.Macro | nodes.CallBlock):
        return frozenset(argument.name for argument in parent.args)
    return frozenset()


def _one_line(subject: str) -> str:
    return _HEADER_UNSAFE.sub(" ", subject).strip()
