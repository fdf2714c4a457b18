"""The loop file's format: the `*Spec` models a file is validated against (`loops/loop.schema.json`
is generated from them: `loop_schema`), each field's rules where it is declared."""

import difflib
import re
from collections.abc import Callable, Hashable, Mapping
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.clock import is_off
from app.engine.conditions import ACTION_NAME, ACTION_NAME_PATTERN, MAX_COUNT, translate_query
from app.engine.filters import filter_from_spec
from app.engine.holds import QUIET_HOURS_PATTERN, QuietHours
from app.engine.loops import (
    _TEMPLATE_NAME,
    _VARIABLE_NAME,
    DURATION_PATTERN,
    PERCENT_PATTERN,
    TEMPLATE_NAME_PATTERN,
    VARIABLE_NAME_PATTERN,
    WEBHOOK_SECRET_PATTERN,
    WEBHOOK_URL_PATTERN,
    parse_duration,
    parse_percent,
)

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
    """A mapping in a loop file: unknown keys and empty values are errors, never ignored.
    `misplaced`: keys that belong elsewhere, with the reason said instead of "unknown key"."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    misplaced: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                _check_key(cls.model_fields, key, value, cls.misplaced)
        return data


def _check_key(
    fields: Mapping[str, Any], key: Hashable, value: Any, misplaced: Mapping[str, str]
) -> None:
    if key not in fields:
        close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.65)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed here: {', '.join(fields)}"
        reason = misplaced.get(str(key), f"unknown key; {hint}")
        raise PydanticCustomError("unknown_key", "{reason}", {"key": key, "reason": reason})
    if value is None:
        reason = "empty: give a value or leave the key out"
        raise PydanticCustomError("empty_value", "{reason}", {"key": key, "reason": reason})


# `within` counts from the signup: a registration trigger is the signup itself.
_WITHIN_ON_REGISTRATION = (
    "a registration trigger has no window: it is the signup `within` counts from; put within on "
    "the step's action condition (or on an action trigger, in a milestone loop)"
)
_WITHIN_ON_QUERY = "within goes on a type: action condition (or an action trigger), not a query"
_WITHIN_DESCRIPTION = (
    "Only actions that happened (occurred_at) within this long after signup count; after it "
    "the step can no longer fire."
)


class DatabaseTriggerSpec(_Spec):
    """A row inserted in the users table: the user registered (a verified Clerk user.created)."""

    model_config = ConfigDict(title="User registered (database)")
    misplaced: ClassVar[Mapping[str, str]] = {"within": _WITHIN_ON_REGISTRATION}

    type: Literal["database"]
    table: Literal["users"]
    event: Literal["insert"]


class ClerkTriggerSpec(_Spec):
    """The user registered: Clerk's user.created webhook (same as the database trigger)."""

    model_config = ConfigDict(title="User registered (Clerk)")
    misplaced: ClassVar[Mapping[str, str]] = {"within": _WITHIN_ON_REGISTRATION}

    type: Literal["clerk"]
    event: Literal["user.created"]


class ActionTriggerSpec(_Spec):
    """Fires once, when the user's count of `action` reaches `count` (milestones)."""

    model_config = ConfigDict(title="Action count reached")

    type: Literal["action"]
    action: ActionName = Field(description="The action name your app sends to POST /v1/actions.")
    count: Count = 1
    where: Where | None = Field(None, description="Only actions whose properties match count.")
    within: Duration | None = Field(None, description=_WITHIN_DESCRIPTION)


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
    within: Duration | None = Field(None, description=_WITHIN_DESCRIPTION)

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
    misplaced: ClassVar[Mapping[str, str]] = {"within": _WITHIN_ON_QUERY}

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


class WebhookSpec(_Spec):
    """A signed POST to your endpoint (Slack, a CRM, your own API), with the loop's retries."""

    model_config = ConfigDict(title="Webhook")

    type: Literal["webhook"]
    url: str = Field(
        min_length=1,
        description="An http(s) URL, or ${ENV_NAME} to read it from the service's environment.",
        json_schema_extra={"pattern": WEBHOOK_URL_PATTERN},
    )
    format: Literal["json", "slack"] = Field(
        "json", description='json: the step\'s event; slack: {"text": ...} rendered from text.'
    )
    text: str | None = Field(
        None, min_length=1, description="A Jinja string (user.*, loop.*): a slack webhook's text."
    )
    secret: str | None = Field(
        None,
        min_length=1,
        description="A whsec_ key (or ${ENV_NAME}): signs with Standard Webhooks headers.",
        json_schema_extra={"pattern": WEBHOOK_SECRET_PATTERN},
    )

    @model_validator(mode="after")
    def _slack_has_text(self) -> Self:
        if self.format == "slack" and self.text is None:
            raise ValueError("a slack webhook needs text: the message it posts")
        return self


def _action_kind(data: Any) -> str:
    """Which spec an action is: a webhook says so; anything else is read as an email, whose
    errors (a missing or unknown `type`) say what an email needs, as before webhooks existed."""
    kind = data.get("type") if isinstance(data, dict) else getattr(data, "type", None)
    return "webhook" if kind == "webhook" else "email"


ActionSpec = Annotated[
    Annotated[EmailSpec, Tag("email")] | Annotated[WebhookSpec, Tag("webhook")],
    Discriminator(_action_kind),
]


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
    action: ActionSpec = Field(description="What to do when the condition holds.")
    on_timeout: ActionSpec | None = Field(
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


def _check_quiet_hours(value: Any) -> Any:
    if isinstance(value, str) and not is_off(value):
        QuietHours.parse(value)
    return value


QuietHoursText = Annotated[
    str,
    BeforeValidator(_check_quiet_hours),
    WithJsonSchema(
        {"type": "string", "pattern": QUIET_HOURS_PATTERN, "examples": ["22:00-07:00", "off"]}
    ),
]

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
    priority: int = Field(
        0,
        ge=-1000,
        le=1000,
        description="When the frequency cap lets only some emails through, higher goes first.",
    )
    cap: bool = Field(
        True, description="false: this loop's emails neither count against nor wait for the cap."
    )
    quiet_hours: QuietHoursText | None = Field(
        None,
        description="Local times when this loop sends no email (overrides QUIET_HOURS); off: none.",
    )
    steps: list[StepSpec] = Field(min_length=1, description="Run in order for each user.")
    recovery: RecoverySpec = Field(
        default_factory=RecoverySpec, description="How failed emails are retried."
    )
