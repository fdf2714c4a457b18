"""Loop files: reads, checks and normalises `<LOOPS_DIR>/<loop_id>.yaml`; owns their format.

The file shape is the `*Spec` models below (`loops/loop.schema.json` is generated from them:
see `python -m app.engine.loop_files schema`). What the rest of the service uses are these frozen
shapes:

- `Loop(id, type, opinion, steps, recovery, source)`: `id` is the file stem, `type` a `LoopType`,
  `steps` a non-empty tuple run in order for each user, `source` the file it came from.
- `Step(index, trigger, condition, action, on_timeout, delay_ms)`: only `steps[0]` has a trigger;
  a later step starts when the previous step acted. A step starts `delay_ms` after that moment
  (0 = at once), then waits for its condition (none = act right away) for at most the condition's
  `timeout_ms` (None = forever), counted from the start; `on_timeout` is sent if time runs out.
- Triggers: `UserRegistered()` (`{type: database, table: users, event: insert}` and its alias
  `{type: clerk, event: user.created}`), or `ActionTrigger(action, count)`: the user's count of
  `action` reached `count`. Activation loops start on the first, milestone loops on the second.
- `ActionCondition(actions, count, timeout_ms)`: holds once ANY ONE of `actions` has been done at
  least `count` times, each action counted on its own (never summed); actions done before the step
  started count too. `action: x` gives one action, `any_of: [a, b]` several, and a `type: query`
  SQL condition is translated to the same shape (see `app.engine.conditions`).
- `EmailAction(template, personalization)`: `template` names `<LOOPS_DIR>/templates/<name>.html`
  (checked to exist); `personalization` maps template variable names to Jinja strings.
- `Recovery(retries, backoff, initial_delay_ms, max_delay_ms)`: a failed email's retry policy;
  `delay_ms(retry)` is the wait before a retry, without jitter.

Durations are `<integer><s|m|h|d|w>`, held in ms. A bad file raises one `LoopFileError` with
a line `<file>: <field path>: <reason>` for each problem found in it; a folder, one
`LoopFolderError` holding each bad file's.
"""

import difflib
import json
import re
import sys
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

from app.engine.conditions import ACTION_NAME, ACTION_NAME_PATTERN, MAX_COUNT, translate_query
from app.engine.filters import Filter, filter_from_spec
from app.errors import LoopFileError, LoopFolderError

LOOP_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
TEMPLATE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
VARIABLE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
DURATION_PATTERN = r"^[0-9]*[1-9][0-9]*[smhdw]$"
DURATION_EXAMPLES = "30s, 5m, 2h, 3d"
UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# Far past any sensible wait, and still exact in a Lua double when added to an epoch-ms time.
MAX_DURATION_MS = 100 * 365 * UNIT_MS["d"]
DEFAULT_MEASURE_MS = 7 * UNIT_MS["d"]
MAX_HOLDOUT_PERCENT = 50
HOLDOUT = "holdout"
TREATMENT = "treatment"
# What an audience or a variant may look at in the Clerk profile (dotted below the metadata).
PROFILE_FIELDS = ("email", "first_name", "last_name", "name", "username")
PROFILE_OBJECTS = ("public_metadata", "unsafe_metadata")
LOOP_FILE_SUFFIXES = (".yaml", ".yml")

_LOOP_ID = re.compile(LOOP_ID_PATTERN)
_DURATION = re.compile(r"([0-9]+)([smhdw])")
_TEMPLATE_NAME = re.compile(TEMPLATE_NAME_PATTERN)
_VARIABLE_NAME = re.compile(VARIABLE_NAME_PATTERN)


def parse_duration(text: str) -> int:
    """`30s`, `5m`, `2h`, `3d`, `1w` in milliseconds; ValueError for anything else."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a duration like {DURATION_EXAMPLES}")
    duration_ms = int(match[1]) * UNIT_MS[match[2]]
    if duration_ms == 0:
        raise ValueError(f"{text!r} is zero: a duration must be longer, like {DURATION_EXAMPLES}")
    if duration_ms > MAX_DURATION_MS:
        raise ValueError(f"{text!r} is longer than 100 years")
    return duration_ms


PERCENT_PATTERN = r"^[0-9]{1,2}(\.[0-9]{1,2})?%$"
_PERCENT = re.compile(PERCENT_PATTERN)


def parse_percent(text: str) -> int:
    """`10%`, `2.5%` (0-50 %) in basis points; ValueError for anything else."""
    if not isinstance(text, str) or not _PERCENT.fullmatch(text):
        raise ValueError(f"{text!r} is not a share like 10% or 2.5%")
    basis_points = round(float(text[:-1]) * 100)
    if basis_points > MAX_HOLDOUT_PERCENT * 100:
        raise ValueError(f"{text} is over {MAX_HOLDOUT_PERCENT}%: most users must get the emails")
    return basis_points


# --- the normalised loop ------------------------------------------------------------------------


class LoopType(StrEnum):
    ACTIVATION = "activation"
    MILESTONE = "milestone"


class Backoff(StrEnum):
    EXPONENTIAL = "exponential"
    LINEAR = "linear"
    FIXED = "fixed"


@dataclass(frozen=True, slots=True)
class UserRegistered:
    """The user signed up: a verified Clerk `user.created` (a user row inserted)."""


FILTERED = "#"  # never in an action name (ACTION_NAME_PATTERN)


def counted_name(action: str, where: Filter | None) -> str:
    """The name a user's count is kept under: the action's own, or, for the actions whose
    properties match a filter, `<action>#<filter digest>` (counted apart as they arrive)."""
    return action if where is None else f"{action}{FILTERED}{where.digest}"


def is_filtered(counted: str) -> bool:
    """Whether a counted name is a filter's count (`counted_name`), not an action's own."""
    return FILTERED in counted


@dataclass(frozen=True, slots=True)
class ActionTrigger:
    """Fires once, when the user's count of `action` (those matching `where`) reaches `count`."""

    action: str
    count: int
    where: Filter | None = None

    @property
    def counted(self) -> str:
        return counted_name(self.action, self.where)


Trigger = UserRegistered | ActionTrigger


@dataclass(frozen=True, slots=True)
class ActionCondition:
    """Holds once any one of `actions` was done `count` times (only those whose properties match
    `where` count); `timeout_ms` None = no deadline."""

    actions: tuple[str, ...]
    count: int
    timeout_ms: int | None
    where: Filter | None = None

    @property
    def counted(self) -> tuple[str, ...]:
        """The names the counts are kept under (`counted_name`)."""
        return tuple(counted_name(action, self.where) for action in self.actions)


@dataclass(frozen=True, slots=True)
class Variant:
    """A template for the users whose profile matches `when`."""

    when: Filter
    template: str


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm of an experiment: a template, given to `weight` parts of the loop's entrants."""

    template: str
    weight: int


@dataclass(frozen=True, slots=True)
class EmailAction:
    """An email through Resend: a template and its personalization (variable -> Jinja string).

    `variants`: the first whose `when` matches the user's profile picks the template instead;
    `experiment`: the user's arm of the loop's experiment picks it (`app.engine.assign`)."""

    template: str
    personalization: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    variants: tuple[Variant, ...] = ()
    experiment: tuple[Arm, ...] = ()

    def templates(self) -> Iterator[str]:
        """Every template this email may use."""
        yield self.template
        yield from (variant.template for variant in self.variants)
        yield from (arm.template for arm in self.experiment)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a loop; `index` is its place in `Loop.steps` (and in the file's `steps`)."""

    index: int
    trigger: Trigger | None
    condition: ActionCondition | None
    action: EmailAction
    on_timeout: EmailAction | None
    delay_ms: int


# Retries must fit well inside Resend's 24 h idempotency window: the rest of it is for outages
# and rate-limit deferrals, which move attempts later without counting as retries.
MAX_RETRY_SPAN_MS = 12 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Recovery:
    """How a failed email is retried: `retries` more attempts, waits growing by `backoff`."""

    retries: int
    backoff: Backoff
    initial_delay_ms: int
    max_delay_ms: int

    def span_ms(self) -> int:
        """The longest time from the first attempt to the start of the last retry (jitter +20 %)."""
        return sum(self.delay_ms(retry) for retry in range(1, self.retries + 1)) * 6 // 5

    def delay_ms(self, retry: int) -> int:
        """The wait before retry number `retry` (1 = the first retry), at most `max_delay_ms`."""
        factor = 1
        if self.backoff is Backoff.EXPONENTIAL:
            factor = 1 << max(retry - 1, 0)
        elif self.backoff is Backoff.LINEAR:
            factor = max(retry, 1)
        return min(self.initial_delay_ms * factor, self.max_delay_ms)


@dataclass(frozen=True, slots=True)
class Loop:
    """One loop file, checked and normalised; `id` is the file stem."""

    id: str
    type: LoopType
    opinion: str
    steps: tuple[Step, ...]
    recovery: Recovery
    source: Path
    audience: Filter | None = None
    holdout_bp: int = 0  # the holdout's share in basis points (10 % = 1,000)
    measure_ms: int = DEFAULT_MEASURE_MS

    @property
    def experiment(self) -> tuple[Arm, ...]:
        """The arms of the loop's experiment (at most one email has one), or ()."""
        for _, email in self.emails():
            if email.experiment:
                return email.experiment
        return ()

    @property
    def arms(self) -> tuple[str, ...]:
        """The arms the loop's figures are split by: `holdout` and `treatment` (or the
        experiment's templates); () for a loop without a holdout or an experiment."""
        treated = tuple(arm.template for arm in self.experiment) or (TREATMENT,)
        if self.holdout_bp:
            return (HOLDOUT, *treated)
        return treated if self.experiment else ()

    def emails(self) -> Iterator[tuple[str, EmailAction]]:
        """Every email the loop can send, with its field path (`steps[0].on_timeout`)."""
        for step in self.steps:
            yield f"steps[{step.index}].action", step.action
            if step.on_timeout is not None:
                yield f"steps[{step.index}].on_timeout", step.on_timeout


# --- the file format ----------------------------------------------------------------------------


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[Any], Any]:
    """A check that a string matches, with a message a person can act on (non-strings pass on)."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return check


def _check_duration(value: Any) -> Any:
    parse_duration(value)
    return value


Duration = Annotated[
    str,
    BeforeValidator(_check_duration),
    WithJsonSchema(
        {"type": "string", "pattern": DURATION_PATTERN, "examples": ["30s", "5m", "2h", "3d", "1w"]}
    ),
]
ActionName = Annotated[
    str,
    BeforeValidator(_matching(ACTION_NAME, "an action name (letters, digits, _ . -; up to 64)")),
    WithJsonSchema({"type": "string", "pattern": ACTION_NAME_PATTERN}),
]
TemplateName = Annotated[
    str,
    BeforeValidator(_matching(_TEMPLATE_NAME, "a template name (letters, digits, _ . -)")),
    WithJsonSchema({"type": "string", "pattern": TEMPLATE_NAME_PATTERN}),
]
VariableName = Annotated[
    str,
    BeforeValidator(_matching(_VARIABLE_NAME, "a variable name (letters, digits, _)")),
    WithJsonSchema({"type": "string", "pattern": VARIABLE_NAME_PATTERN}),
]


def _check_where(value: Any) -> Any:
    if isinstance(value, dict):
        filter_from_spec(value)
    return value


_WHERE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "description": (
        "Dotted property paths, each a value (equality) or {operator: value}; operators: eq, "
        "ne, in, nin, gt, gte, lt, lte, exists, contains, starts_with, ends_with."
    ),
    "propertyNames": {"pattern": r"^[^.\s][^\s]*$"},
    "additionalProperties": {
        "anyOf": [
            {"type": ["string", "number", "boolean"]},
            {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {
                    "enum": [
                        "eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists", "contains",
                        "starts_with", "ends_with",
                    ]
                },
            },
        ]
    },
}  # fmt: skip
Where = Annotated[dict[str, Any], BeforeValidator(_check_where), WithJsonSchema(_WHERE_SCHEMA)]
Count = Annotated[
    int, Field(ge=1, le=MAX_COUNT, description="How many times; at least 1, at most a million.")
]


class _Spec(BaseModel):
    """A mapping in a loop file: unknown keys and empty values are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                _check_key(cls.model_fields, key, value)
        return data


def _check_key(fields: Mapping[str, Any], key: Hashable, value: Any) -> None:
    if key not in fields:
        close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.65)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed here: {', '.join(fields)}"
        reason = f"unknown key; {hint}"
        raise PydanticCustomError("unknown_key", "{reason}", {"key": key, "reason": reason})
    if value is None:
        reason = "empty: give a value or leave the key out"
        raise PydanticCustomError("empty_value", "{reason}", {"key": key, "reason": reason})


class DatabaseTriggerSpec(_Spec):
    """A row inserted in the users table: the user registered (a verified Clerk user.created)."""

    model_config = ConfigDict(title="User registered (database)")

    type: Literal["database"]
    table: Literal["users"]
    event: Literal["insert"]


class ClerkTriggerSpec(_Spec):
    """The user registered: Clerk's user.created webhook (same as the database trigger)."""

    model_config = ConfigDict(title="User registered (Clerk)")

    type: Literal["clerk"]
    event: Literal["user.created"]


class ActionTriggerSpec(_Spec):
    """Fires once, when the user's count of `action` reaches `count` (milestones)."""

    model_config = ConfigDict(title="Action count reached")

    type: Literal["action"]
    action: ActionName = Field(description="The action name your app sends to POST /v1/actions.")
    count: Count = 1
    where: Where | None = Field(None, description="Only actions whose properties match count.")


TriggerSpec = Annotated[
    DatabaseTriggerSpec | ClerkTriggerSpec | ActionTriggerSpec, Field(discriminator="type")
]


class ActionConditionSpec(_Spec):
    """Wait until the user has done `action` (or any one of `any_of`) `count` times."""

    model_config = ConfigDict(
        title="Action condition",
        json_schema_extra={"oneOf": [{"required": ["action"]}, {"required": ["any_of"]}]},
    )

    type: Literal["action"]
    action: ActionName | None = Field(None, description="The action to wait for.")
    any_of: list[ActionName] | None = Field(
        None, min_length=1, description="Several actions: the condition holds when any one does."
    )
    count: Count = 1
    where: Where | None = Field(None, description="Only actions whose properties match count.")
    timeout: Duration | None = Field(
        None, description="Give up this long after the step started; then on_timeout is sent."
    )

    @model_validator(mode="after")
    def _one_way_to_name_actions(self) -> Self:
        if (self.action is None) == (self.any_of is None):
            raise ValueError("give either action or any_of (exactly one of them)")
        listed = self.any_of or []
        repeated = sorted({name for name in listed if listed.count(name) > 1})
        if repeated:
            raise ValueError(f"any_of lists {', '.join(map(repr, repeated))} more than once")
        return self


class QueryConditionSpec(_Spec):
    """A SQL query over user_actions(user_id, action_type, created_at, properties)."""

    model_config = ConfigDict(title="Query condition")

    type: Literal["query"]
    query: str = Field(
        description=(
            "SELECT over user_actions, scoped by user_id = $1, naming action_type = 'x' or "
            "IN ('a', 'b'); optionally HAVING COUNT(*) >= n."
        ),
        examples=[
            "SELECT * FROM user_actions WHERE user_id = $1 "
            "AND action_type = 'first_project_created'"
        ],
    )
    timeout: Duration | None = Field(None, description="Give up this long after the step started.")

    @field_validator("query")
    @classmethod
    def _translatable(cls, query: str) -> str:
        translate_query(query)
        return query


ConditionSpec = Annotated[ActionConditionSpec | QueryConditionSpec, Field(discriminator="type")]


class VariantSpec(_Spec):
    """A template for the users whose Clerk profile matches `when`."""

    model_config = ConfigDict(title="Variant")

    when: Where = Field(
        description="Profile fields (email, names, public_metadata.*, unsafe_metadata.*)."
    )
    template: TemplateName


class ArmSpec(_Spec):
    """One arm of an experiment: its template and its share (weight) of the entrants."""

    model_config = ConfigDict(title="Experiment arm")

    template: TemplateName
    weight: int = Field(1, ge=1, le=1000, description="Its share, relative to the others.")


class EmailSpec(_Spec):
    """Send an email through Resend from a template in templates/<template>.html."""

    model_config = ConfigDict(title="Email")

    type: Literal["email"]
    provider: Literal["resend"] = "resend"
    template: TemplateName = Field(description="The file templates/<template>.html.")
    personalization: dict[VariableName, str] = Field(
        default_factory=dict,
        description="Template variables, each a Jinja string rendered against the user first.",
        json_schema_extra={"additionalProperties": False},
    )
    variants: list[VariantSpec] | None = Field(
        None, min_length=1, description="The first `when` matching the profile picks the template."
    )
    experiment: list[ArmSpec] | None = Field(
        None, min_length=2, description="Entrants split among templates by weight (per user)."
    )

    @model_validator(mode="after")
    def _variants_or_experiment(self) -> Self:
        if self.variants is not None and self.experiment is not None:
            raise ValueError("give either variants or experiment, not both")
        arms = [arm.template for arm in self.experiment or []]
        repeated = sorted({name for name in arms if arms.count(name) > 1})
        if repeated:
            raise ValueError(f"experiment lists {', '.join(map(repr, repeated))} more than once")
        return self


class StepSpec(_Spec):
    """One step: (trigger or previous step) -> delay -> condition -> action, or on_timeout."""

    model_config = ConfigDict(title="Step")

    trigger: TriggerSpec | None = Field(None, description="What starts the loop; first step only.")
    delay: Duration | None = Field(
        None, description="Wait this long after the trigger or the previous step's action."
    )
    condition: ConditionSpec | None = Field(
        None, description="What the user must do first; without one the step acts at once."
    )
    action: EmailSpec = Field(description="What to do when the condition holds.")
    on_timeout: EmailSpec | None = Field(
        None, description="What to do when the condition's timeout passes first."
    )


class RecoverySpec(_Spec):
    """How a failed email is retried."""

    model_config = ConfigDict(title="Recovery")

    retries: int = Field(3, ge=0, le=50, description="Retries after the first attempt fails.")
    backoff: Literal["exponential", "linear", "fixed"] = "exponential"
    initial_delay: Duration = Field("10s", description="The wait before the first retry.")
    max_delay: Duration = Field("1h", description="The longest wait between attempts.")


def _check_percent(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"{value!r} is not a share like 10% or 2.5%: write the % sign")
    if isinstance(value, str):
        parse_percent(value)
    return value


Percent = Annotated[
    str,
    BeforeValidator(_check_percent),
    WithJsonSchema({"type": "string", "pattern": PERCENT_PATTERN, "examples": ["10%", "2.5%"]}),
]


class LoopSpec(_Spec):
    """An activation loop: loops/<loop_id>.yaml; the loop id is the file name without .yaml."""

    model_config = ConfigDict(
        title="Activation loop",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    type: Literal["activation", "milestone"] = Field(
        description="activation: starts when a user registers; milestone: on an action count."
    )
    opinion: str | None = Field(
        None, min_length=1, description="What this loop is for, in one sentence (optional)."
    )
    audience: Where | None = Field(
        None,
        description=(
            "Who enters, checked on the Clerk profile when the trigger fires: email, first_name, "
            "last_name, name, username, public_metadata.*, unsafe_metadata.*."
        ),
    )
    holdout: Percent | None = Field(
        None, description="A control group (0-50 %) that gets none of this loop's emails."
    )
    measure: Duration = Field(
        "7d", description="The activation window of the loop's figures (from step 0's start)."
    )
    steps: list[StepSpec] = Field(min_length=1, description="Run in order for each user.")
    recovery: RecoverySpec = Field(
        default_factory=RecoverySpec, description="How failed emails are retried."
    )


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


def load_loops(loops_dir: Path) -> dict[str, Loop]:
    """Every `*.yaml` / `*.yml` loop in `loops_dir` by id, in file-name order; none is fine. A
    `LoopFolderError` holds a `LoopFileError` for each bad file, every problem of each."""
    loops, problems = read_loops(loops_dir)
    if problems:
        raise LoopFolderError(problems)
    return loops


def read_loops(loops_dir: Path) -> tuple[dict[str, Loop], list[LoopFileError]]:
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
            loops[path.stem] = load_loop(path, loops_dir / "templates")
        except LoopFileError as exc:
            problems.append(exc)
    return loops, problems


def _loop_files(loops_dir: Path) -> list[Path]:
    return sorted(
        path
        for path in loops_dir.iterdir()
        if path.suffix in LOOP_FILE_SUFFIXES and path.is_file() and not path.name.startswith(".")
    )


def load_loop(path: Path, templates_dir: Path) -> Loop:
    """One loop file, checked whole (templates included), or a `LoopFileError` naming every
    problem found in it: each schema error, and the templates it names that are missing."""
    problems = _Problems()
    _check_loop_id(path.stem, problems)
    loop = _parse(path, templates_dir, problems)
    if problems or loop is None:
        raise problems.error(path)
    return loop


def _parse(path: Path, templates_dir: Path, problems: _Problems) -> Loop | None:
    try:
        data = _read_yaml(path)
        _check_mapping(data)
    except _Invalid as invalid:
        problems.add(None, invalid.reason)
        return None
    spec = _validate(data, problems)
    loop = _build(path.stem, spec, path, problems) if spec is not None else None
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
                found.setdefault(_field_path(error), _reason(error))
            # An unknown or empty key stops its mapping's check: drop it and look again, so
            # one run reports the file's other mistakes too.
            skipped = [error for error in errors if error["type"] in _KEY_ERRORS]
            if not skipped:
                break
            data = _without_keys(data, skipped)
        else:
            if not found:
                return spec
            break
    for path, reason in found.items():
        problems.add(path, reason)
    return None


def _child(node: Any, part: int | str) -> Any:
    """The item `part` names in the file's data; `node` itself for a part that names none (a
    union's tag, which the file never spelled)."""
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    if isinstance(node, dict) and part in node:
        return node[part]
    return node


MAX_PASSES = 20
MAX_REPORTED = 20  # problems listed after the first; the rest are counted
_KEY_ERRORS = ("unknown_key", "empty_value")


def _without_keys(data: Any, errors: Sequence[ErrorDetails]) -> Any:
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


def _field_path(error: ErrorDetails) -> str:
    loc = error["loc"]
    parts = [part for i, part in enumerate(loc) if part != "[key]" and not _is_union_tag(loc, i)]
    if error["type"] in ("unknown_key", "empty_value"):
        parts.append(str(error.get("ctx", {})["key"]))
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _is_union_tag(loc: tuple[int | str, ...], i: int) -> bool:
    return i >= 3 and loc[i - 3] == "steps" and loc[i - 1] in _UNION_FIELDS


def _reason(error: ErrorDetails) -> str:
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


def _build(loop_id: str, spec: LoopSpec, source: Path, problems: _Problems) -> Loop:
    """The loop a valid spec states; what the schema cannot see goes to `problems`."""
    loop_type = LoopType(spec.type)
    steps = tuple(_step(i, step, loop_type, problems) for i, step in enumerate(spec.steps))
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
    )
    experiments = [where for where, email in loop.emails() if email.experiment]
    if len(experiments) > 1:
        reason = f"one experiment per loop, so its figures mean one thing (found at {experiments})"
        problems.add(f"{experiments[1]}.experiment", reason)
    return loop


def _profile_filter(where: str, spec: Mapping[str, Any], problems: _Problems) -> Filter:
    """A filter over the Clerk profile: only the fields a loop may look at."""
    allowed = ", ".join([*PROFILE_FIELDS, *(f"{name}.*" for name in PROFILE_OBJECTS)])
    for path in spec:
        head, dot, _ = str(path).partition(".")
        if not ((head in PROFILE_OBJECTS and dot) or (head in PROFILE_FIELDS and not dot)):
            problems.add(where, f"{path!r} is not a profile field a loop can look at ({allowed})")
    return filter_from_spec(spec)


def _step(index: int, spec: StepSpec, loop_type: LoopType, problems: _Problems) -> Step:
    condition = _condition(spec.condition)
    if spec.on_timeout is not None and (condition is None or condition.timeout_ms is None):
        reason = "only a condition with a timeout can time out: add condition.timeout"
        problems.add(f"steps[{index}].on_timeout", reason)
    return Step(
        index=index,
        trigger=_trigger(index, spec.trigger, loop_type, problems),
        condition=condition,
        action=_email(f"steps[{index}].action", spec.action, problems),
        on_timeout=(
            _email(f"steps[{index}].on_timeout", spec.on_timeout, problems)
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
        return ActionTrigger(spec.action, spec.count, trigger_where)
    if loop_type is LoopType.MILESTONE:
        problems.add(where, f"a milestone loop starts on {_MILESTONE_TRIGGER}")
    return UserRegistered()


def _condition(spec: ConditionSpec | None) -> ActionCondition | None:
    if spec is None:
        return None
    timeout_ms = parse_duration(spec.timeout) if spec.timeout is not None else None
    if isinstance(spec, QueryConditionSpec):
        query = translate_query(spec.query)
        return ActionCondition(query.actions, query.count, timeout_ms, query.where)
    actions = (spec.action,) if spec.action is not None else tuple(spec.any_of or ())
    where = filter_from_spec(spec.where) if spec.where is not None else None
    return ActionCondition(actions, spec.count, timeout_ms, where)


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
    recovery = Recovery(spec.retries, Backoff(spec.backoff), initial_delay_ms, max_delay_ms)
    span_ms = recovery.span_ms()
    if span_ms > MAX_RETRY_SPAN_MS:
        reason = (
            f"{spec.retries} retries ({spec.backoff}, {spec.initial_delay} up to {spec.max_delay}) "
            f"span {span_ms / 3_600_000:.1f} h with jitter; the last retry must start within "
            f"{MAX_RETRY_SPAN_MS // 3_600_000} h of the first attempt (Resend forgets an "
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


# --- the JSON Schema ----------------------------------------------------------------------------


class _FileSchema(GenerateJsonSchema):
    """The file's schema: an optional key is left out, never `null` (the loader refuses null)."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def loop_json_schema() -> dict[str, Any]:
    """The JSON Schema of a loop file (the raw YAML shape), for editors and validators."""
    return LoopSpec.model_json_schema(schema_generator=_FileSchema)


def loop_json_schema_text() -> str:
    """The schema as committed in `loops/loop.schema.json`."""
    return json.dumps(loop_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str]) -> int:
    if list(argv) != ["schema"]:
        sys.stderr.write("usage: python -m app.engine.loop_files schema\n")
        return 2
    sys.stdout.write(loop_json_schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
