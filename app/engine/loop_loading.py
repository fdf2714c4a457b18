"""Reading loop files: `<LOOPS_DIR>/<loop_id>.yaml` parsed strictly, validated against
`loop_spec`, normalised to `loops.Loop`. A bad file raises one `LoopFileError` with a line
`<file>: <field path>: <reason>` for each problem found in it, every one found in one pass
(an unknown key hides nothing beside it); a folder, one `LoopFolderError` holding each bad
file's."""

from collections.abc import Hashable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import ValidationError

from app.clock import HOUR_MS, is_off
from app.engine.backoff import Growth
from app.engine.conditions import translate_query
from app.engine.filters import Filter, filter_from_spec
from app.engine.holds import QuietHours
from app.engine.loop_errors import KEY_ERRORS, error_reason, field_path, without_keys
from app.engine.loop_spec import (
    ActionTriggerSpec,
    ConditionSpec,
    EmailSpec,
    LoopSpec,
    QueryConditionSpec,
    RecoverySpec,
    StepSpec,
    TriggerSpec,
    WebhookSpec,
)
from app.engine.loops import (
    _LOOP_ID,
    _TEMPLATE_NAME,
    LOOP_FILE_SUFFIXES,
    LOOP_ID_PATTERN,
    MAX_RANKED_TIMES,
    MAX_RETRY_SPAN_MS,
    PROFILE_FIELDS,
    PROFILE_OBJECTS,
    Action,
    ActionCondition,
    ActionTrigger,
    Arm,
    EmailAction,
    Loop,
    LoopType,
    Recovery,
    Step,
    Trigger,
    UserRegistered,
    Variant,
    parse_duration,
    parse_percent,
)
from app.engine.webhook_steps import webhook_action
from app.errors import LoopFileError, LoopFolderError

# --- loading ------------------------------------------------------------------------------------


_Problem = tuple[str | None, str]  # (field path, or None for the whole file; reason)


class _Invalid(Exception):
    """A problem that stops a file's reading (unreadable, not YAML, not a mapping)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Problems:
    """Every problem found in one file, in the order found, each once."""

    def __init__(self) -> None:
        self._found: dict[_Problem, None] = {}

    def __bool__(self) -> bool:
        return bool(self._found)

    def add(self, field: str | None, reason: str) -> None:
        self._found.setdefault((field, reason))

    def error(self, path: Path) -> LoopFileError:
        (field, reason), *more = self._found
        if len(more) > MAX_REPORTED:
            more = [*more[:MAX_REPORTED], (None, f"... and {len(more) - MAX_REPORTED} more")]
        return LoopFileError(path, field, reason, more)


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class refuses it, with its own message
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


Environment = Mapping[str, str]  # what a webhook's `${NAME}` references read (`webhook_steps`)
_NONE: Environment = MappingProxyType({})


def load_loops(loops_dir: Path, environment: Environment = _NONE) -> dict[str, Loop]:
    """Every `*.yaml` / `*.yml` loop in `loops_dir` by id, in file-name order; none is fine. A
    `LoopFolderError` holds a `LoopFileError` for each bad file, every problem of each."""
    loops, problems = read_loops(loops_dir, environment)
    if problems:
        raise LoopFolderError(problems)
    return loops


def read_loops(
    loops_dir: Path, environment: Environment = _NONE
) -> tuple[dict[str, Loop], list[LoopFileError]]:
    """The loops in `loops_dir` that load, by id, and a `LoopFileError` for each file that does
    not: one bad file never hides another's mistakes."""
    if not loops_dir.is_dir():
        return {}, [LoopFileError(loops_dir, None, "no such folder of loop files")]
    loops: dict[str, Loop] = {}
    problems: list[LoopFileError] = []
    sources: dict[str, Path] = {}
    for path in _loop_files(loops_dir):
        if path.stem in sources:
            reason = f"loop id {path.stem!r} is taken by {sources[path.stem]}"
            problems.append(LoopFileError(path, None, reason))
            continue
        sources[path.stem] = path
        try:
            loops[path.stem] = load_loop(path, loops_dir / "templates", environment)
        except LoopFileError as exc:
            problems.append(exc)
    return loops, problems


def _loop_files(loops_dir: Path) -> list[Path]:
    return sorted(
        path
        for path in loops_dir.iterdir()
        if path.suffix in LOOP_FILE_SUFFIXES and path.is_file() and not path.name.startswith(".")
    )


def load_loop(path: Path, templates_dir: Path, environment: Environment = _NONE) -> Loop:
    """One loop file, checked whole (templates included), or a `LoopFileError` naming every
    problem found in it: each schema error, the templates it names that are missing, the
    `${NAME}` its webhooks read that `environment` lacks."""
    problems = _Problems()
    _check_loop_id(path.stem, problems)
    loop = _parse(path, templates_dir, problems, environment)
    if problems or loop is None:
        raise problems.error(path)
    return loop


def _parse(
    path: Path, templates_dir: Path, problems: _Problems, environment: Environment
) -> Loop | None:
    try:
        data = _read_yaml(path)
        _check_mapping(data)
    except _Invalid as invalid:
        problems.add(None, invalid.reason)
        return None
    spec = _validate(data, problems)
    loop = _build(path.stem, spec, path, problems, environment) if spec is not None else None
    _check_templates(data, templates_dir, problems)
    return loop


def _check_loop_id(loop_id: str, problems: _Problems) -> None:
    if not _LOOP_ID.fullmatch(loop_id):
        reason = f"loop id {loop_id!r} (the file name) must match {LOOP_ID_PATTERN.strip('^$')}"
        problems.add(None, reason)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Invalid(f"cannot read the file: {exc}") from None
    try:
        # the reader checks the characters as the loader is built: inside the try
        loader = _StrictLoader(text)
    except yaml.YAMLError as exc:
        raise _Invalid(f"invalid YAML: {exc}") from None
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        raise _Invalid(_describe_yaml_error(exc)) from None
    except yaml.YAMLError as exc:
        raise _Invalid(f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def _describe_yaml_error(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"invalid YAML{where}: {', '.join(filter(None, (exc.context, exc.problem)))}"


def _check_mapping(data: Any) -> None:
    if data is None:
        raise _Invalid("the file is empty; a loop needs type, opinion and steps")
    if not isinstance(data, dict):
        found = type(data).__name__
        raise _Invalid(f"the top level must be a mapping of type, opinion, steps (not {found})")


def _validate(data: dict[Any, Any], problems: _Problems) -> LoopSpec | None:
    """The file's spec, or None with every schema error added to `problems`."""
    found: dict[str | None, str] = {}  # field -> reason, the first found for each
    for _ in range(MAX_PASSES):
        try:
            spec = LoopSpec.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            for error in errors:
                found.setdefault(field_path(error), error_reason(error))
            # An unknown or empty key stops its mapping's check: drop it and look again, so
            # one run reports the file's other mistakes too.
            skipped = [error for error in errors if error["type"] in KEY_ERRORS]
            if not skipped:
                break
            data = without_keys(data, skipped)
        else:
            if not found:
                return spec
            break
    for path, reason in found.items():
        problems.add(path, reason)
    return None


MAX_PASSES = 20
MAX_REPORTED = 20  # problems listed after the first; the rest are counted


def _build(
    loop_id: str, spec: LoopSpec, source: Path, problems: _Problems, environment: Environment
) -> Loop:
    """The loop a valid spec states; what the schema cannot see goes to `problems`."""
    loop_type = LoopType(spec.type)
    steps = tuple(
        _step(i, step, loop_type, problems, environment) for i, step in enumerate(spec.steps)
    )
    audience = _profile_filter("audience", spec.audience, problems) if spec.audience else None
    loop = Loop(
        loop_id,
        loop_type,
        spec.opinion or "",
        steps,
        _recovery(spec.recovery, problems),
        source,
        audience=audience,
        holdout_bp=parse_percent(spec.holdout) if spec.holdout is not None else 0,
        measure_ms=parse_duration(spec.measure),
        priority=spec.priority,
        capped=spec.cap,
        quiet_hours=_quiet_hours(spec.quiet_hours),
    )
    experiments = [where for where, email in loop.emails() if email.experiment]
    if len(experiments) > 1:
        reason = f"one experiment per loop, so its figures mean one thing (found at {experiments})"
        problems.add(f"{experiments[1]}.experiment", reason)
    return loop


def _quiet_hours(text: str | None) -> QuietHours | bool:
    """A loop's `quiet_hours`: absent, the service's (True); `off`, none (False); or its own."""
    if text is None:
        return True
    return False if is_off(text) else QuietHours.parse(text)


def _profile_filter(where: str, spec: Mapping[str, Any], problems: _Problems) -> Filter:
    """A filter over the Clerk profile: only the fields a loop may look at."""
    allowed = ", ".join([*PROFILE_FIELDS, *(f"{name}.*" for name in PROFILE_OBJECTS)])
    for path in spec:
        head, dot, _ = str(path).partition(".")
        if not ((head in PROFILE_OBJECTS and dot) or (head in PROFILE_FIELDS and not dot)):
            problems.add(where, f"{path!r} is not a profile field a loop can look at ({allowed})")
    return filter_from_spec(spec)


def _step(
    index: int, spec: StepSpec, loop_type: LoopType, problems: _Problems, environment: Environment
) -> Step:
    condition = _condition(spec.condition, f"steps[{index}].condition", problems)
    if spec.on_timeout is not None and (condition is None or condition.timeout_ms is None):
        reason = "only a condition with a timeout can time out: add condition.timeout"
        problems.add(f"steps[{index}].on_timeout", reason)
    return Step(
        index=index,
        trigger=_trigger(index, spec.trigger, loop_type, problems),
        condition=condition,
        action=_action(f"steps[{index}].action", spec.action, problems, environment),
        on_timeout=(
            _action(f"steps[{index}].on_timeout", spec.on_timeout, problems, environment)
            if spec.on_timeout is not None
            else None
        ),
        delay_ms=parse_duration(spec.delay) if spec.delay is not None else 0,
    )


_ACTIVATION_TRIGGERS = "{type: database, table: users, event: insert} or {type: clerk, ...}"
_MILESTONE_TRIGGER = "{type: action, action: ..., count: N}"


def _trigger(
    index: int, spec: TriggerSpec | None, loop_type: LoopType, problems: _Problems
) -> Trigger | None:
    where = f"steps[{index}].trigger"
    if index > 0:
        if spec is not None:
            problems.add(where, "only the first step has a trigger; later steps follow it")
        return None
    if spec is None:
        problems.add(where, "the first step needs a trigger: what starts the loop")
        return None
    if isinstance(spec, ActionTriggerSpec):
        if loop_type is LoopType.ACTIVATION:
            problems.add(where, f"an activation loop starts on {_ACTIVATION_TRIGGERS}")
        trigger_where = filter_from_spec(spec.where) if spec.where is not None else None
        within_ms = _within(where, spec.within, spec.count, problems)
        return ActionTrigger(spec.action, spec.count, trigger_where, within_ms)
    if loop_type is LoopType.MILESTONE:
        problems.add(where, f"a milestone loop starts on {_MILESTONE_TRIGGER}")
    return UserRegistered()


def _condition(
    spec: ConditionSpec | None, path: str, problems: _Problems
) -> ActionCondition | None:
    if spec is None:
        return None
    timeout_ms = parse_duration(spec.timeout) if spec.timeout is not None else None
    if isinstance(spec, QueryConditionSpec):
        query = translate_query(spec.query)
        return ActionCondition(query.actions, query.count, timeout_ms, query.where)
    actions = (spec.action,) if spec.action is not None else tuple(spec.any_of or ())
    where = filter_from_spec(spec.where) if spec.where is not None else None
    within_ms = _within(path, spec.within, spec.count, problems)
    return ActionCondition(actions, spec.count, timeout_ms, where, within_ms)


def _within(path: str, within: str | None, count: int, problems: _Problems) -> int | None:
    """A `within` window in ms. It decides by the time the count was reached, exact only for a
    count the stored earliest times cover (`MAX_RANKED_TIMES`): a larger one is refused."""
    if within is None:
        return None
    if count > MAX_RANKED_TIMES:
        reason = (
            f"within needs a count of at most {MAX_RANKED_TIMES} (the service keeps that many "
            f"earliest times per action), not {count}"
        )
        problems.add(f"{path}.within", reason)
    return parse_duration(within)


def _action(
    where: str, spec: EmailSpec | WebhookSpec, problems: _Problems, environment: Environment
) -> Action:
    if isinstance(spec, EmailSpec):
        return _email(where, spec, problems)
    webhook, found = webhook_action(where, spec, environment)
    for path, reason in found:
        problems.add(path, reason)
    return webhook


def _email(where: str, spec: EmailSpec, problems: _Problems) -> EmailAction:
    variants = tuple(
        Variant(_profile_filter(f"{where}.variants[{i}].when", v.when, problems), v.template)
        for i, v in enumerate(spec.variants or ())
    )
    arms = tuple(Arm(arm.template, arm.weight) for arm in spec.experiment or ())
    personalization = MappingProxyType(dict(spec.personalization))
    return EmailAction(spec.template, personalization, variants, arms)


def _recovery(spec: RecoverySpec, problems: _Problems) -> Recovery:
    initial_delay_ms = parse_duration(spec.initial_delay)
    max_delay_ms = parse_duration(spec.max_delay)
    if initial_delay_ms > max_delay_ms:
        reason = f"{spec.initial_delay!r} is longer than max_delay {spec.max_delay!r}"
        problems.add("recovery.initial_delay", reason)
    recovery = Recovery(spec.retries, Growth(spec.backoff), initial_delay_ms, max_delay_ms)
    span_ms = recovery.span_ms()
    if span_ms > MAX_RETRY_SPAN_MS:
        reason = (
            f"{spec.retries} retries ({spec.backoff}, {spec.initial_delay} up to {spec.max_delay}) "
            f"span {span_ms / HOUR_MS:.1f} h with jitter; the last retry must start within "
            f"{MAX_RETRY_SPAN_MS // HOUR_MS} h of the first attempt (Resend forgets an "
            "idempotency key after 24 h: a later retry could send the email twice)"
        )
        problems.add("recovery", reason)
    return recovery


def _check_templates(data: Mapping[Any, Any], templates_dir: Path, problems: _Problems) -> None:
    for where, template in _template_names(data):
        path = templates_dir / f"{template}.html"
        if not path.is_file():
            problems.add(where, f"no template {template!r}: {path} is missing")


def _template_names(data: Mapping[Any, Any]) -> Iterator[tuple[str, str]]:
    """(field path, name) for each template the file names (variants' and arms' too), read from
    its data as written: a missing template is reported beside the file's schema errors."""
    for index, step in _items(data.get("steps")):
        for kind in ("action", "on_timeout"):
            email = step.get(kind)
            if isinstance(email, dict):
                yield from _email_templates(f"steps[{index}].{kind}", email)


def _email_templates(where: str, email: Mapping[Any, Any]) -> Iterator[tuple[str, str]]:
    named = [(f"{where}.template", email.get("template"))]
    for key in ("variants", "experiment"):
        for i, item in _items(email.get(key)):
            named.append((f"{where}.{key}[{i}].template", item.get("template")))
    for path, name in named:
        if isinstance(name, str) and _TEMPLATE_NAME.fullmatch(name):
            yield path, name  # a bad name is a schema error already


def _items(node: Any) -> Iterator[tuple[int, Mapping[Any, Any]]]:
    """The mappings in a list of the file's data, with their places; none for anything else."""
    if isinstance(node, list):
        yield from ((i, item) for i, item in enumerate(node) if isinstance(item, dict))
