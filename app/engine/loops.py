"""The loop, as the rest of the service uses it: frozen shapes built from a loop file
(`loop_loading`) whose format is `loop_spec`:

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
- `within_ms` on an action trigger or condition (`within: 7d`): only actions that happened (by
  `occurred_at`) no later than that long after the signup count; the signup is when the user
  registered. Actions stamped before the signup count too, as they do for a condition.
- `EmailAction(template, personalization)`: `template` names `<LOOPS_DIR>/templates/<name>.html`
  (checked to exist); `personalization` maps template variable names to Jinja strings.
- `WebhookAction(url, format, text, secret)`: a signed POST to the team's endpoint
  (`engine.webhook_steps` loads it, `delivery.webhook_client` sends it); a step's `action` and
  `on_timeout` are either kind (`Action`).
- `Recovery(retries, backoff, initial_delay_ms, max_delay_ms)`: a failed email's retry policy;
  `delay_ms(retry)` is the wait before a retry, without jitter.

Durations are `<integer><s|m|h|d|w>`, held in ms (`parse_duration`).
"""

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from app.clock import DURATION_PATTERN as DURATION_PATTERN
from app.clock import HOUR_MS
from app.clock import MAX_DURATION_MS as MAX_DURATION_MS
from app.clock import UNIT_MS as UNIT_MS
from app.clock import parse_duration as parse_duration
from app.engine.backoff import Backoff, Growth
from app.engine.filters import Filter
from app.engine.holds import QuietHours

LOOP_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
TEMPLATE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
VARIABLE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A webhook's url and secret as written: the value, or a whole `${ENV_NAME}` reference
ENV_REFERENCE_PATTERN = r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}"
WEBHOOK_URL_PATTERN = rf"^(https?://\S+|{ENV_REFERENCE_PATTERN}\S*)$"
WEBHOOK_SECRET_PATTERN = rf"^(whsec_[A-Za-z0-9+/=]+|{ENV_REFERENCE_PATTERN})$"
DEFAULT_MEASURE_MS = 7 * UNIT_MS["d"]
MAX_HOLDOUT_PERCENT = 50
HOLDOUT = "holdout"
TREATMENT = "treatment"
# What an audience or a variant may look at in the Clerk profile (dotted below the metadata).
PROFILE_FIELDS = ("email", "first_name", "last_name", "name", "username")
PROFILE_OBJECTS = ("public_metadata", "unsafe_metadata")
LOOP_FILE_SUFFIXES = (".yaml", ".yml")

_LOOP_ID = re.compile(LOOP_ID_PATTERN)
_TEMPLATE_NAME = re.compile(TEMPLATE_NAME_PATTERN)
_VARIABLE_NAME = re.compile(VARIABLE_NAME_PATTERN)


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


@dataclass(frozen=True, slots=True)
class UserRegistered:
    """The user signed up: a verified Clerk `user.created` (a user row inserted)."""


FILTERED = "#"  # never in an action name (ACTION_NAME_PATTERN)


# Each action keeps its earliest occurred-at times up to the largest count a loop waits for, so
# the n-th action by time is exact; past this many (14 bytes each, read by every evaluation) a
# count's time is the latest action's when it was reached, an upper bound (record_actions.lua).
# A `within` window needs the exact time, so it takes counts up to this many.
MAX_RANKED_TIMES = 1000


def window_end(within_ms: int | None, registered_at: int | None) -> int | None:
    """When a `within` window ends: `within_ms` after the signup; None without a window or
    without a known signup."""
    if within_ms is None or registered_at is None:
        return None
    return registered_at + within_ms


def counted_name(action: str, where: Filter | None) -> str:
    """The name a user's count is kept under: the action's own, or, for the actions whose
    properties match a filter, `<action>#<filter digest>` (counted apart as they arrive)."""
    return action if where is None else f"{action}{FILTERED}{where.digest}"


def is_filtered(counted: str) -> bool:
    """Whether a counted name is a filter's count (`counted_name`), not an action's own."""
    return FILTERED in counted


@dataclass(frozen=True, slots=True)
class ActionTrigger:
    """Fires once, when the user's count of `action` (those matching `where`) reaches `count`;
    with `within_ms`, only if it did within that long after the signup (else it closes)."""

    action: str
    count: int
    where: Filter | None = None
    within_ms: int | None = None

    @property
    def counted(self) -> str:
        return counted_name(self.action, self.where)


Trigger = UserRegistered | ActionTrigger


@dataclass(frozen=True, slots=True)
class ActionCondition:
    """Holds once any one of `actions` was done `count` times (only those whose properties match
    `where` count; with `within_ms`, only those within that long after the signup);
    `timeout_ms` None = no deadline."""

    actions: tuple[str, ...]
    count: int
    timeout_ms: int | None
    where: Filter | None = None
    within_ms: int | None = None

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


class WebhookFormat(StrEnum):
    JSON = "json"  # the step's event (`delivery.webhook_client.event_body`)
    SLACK = "slack"  # {"text": ...} rendered from `text`


@dataclass(frozen=True, slots=True)
class WebhookAction:
    """A POST to the team's endpoint (Slack, a CRM, their API): `url` and `secret` (a `whsec_`
    key: Standard Webhooks signatures) as resolved from the environment at load, never shown;
    `text` a Jinja string, the body of a `slack` one."""

    url: str = field(repr=False)
    format: WebhookFormat = WebhookFormat.JSON
    text: str | None = None
    secret: str | None = field(default=None, repr=False)


Action = EmailAction | WebhookAction


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a loop; `index` is its place in `Loop.steps` (and in the file's `steps`)."""

    index: int
    trigger: Trigger | None
    condition: ActionCondition | None
    action: Action
    on_timeout: Action | None
    delay_ms: int

    def action_of(self, kind: str) -> Action | None:
        """The action a job of this kind (`action` or `timeout`) does."""
        return self.action if kind == "action" else self.on_timeout


# Retries must fit well inside Resend's 24 h idempotency window: the rest of it is for outages
# and rate-limit deferrals, which move attempts later without counting as retries.
MAX_RETRY_SPAN_MS = 12 * HOUR_MS
RETRY_JITTER = (0.8, 1.2)  # ±20 %: retries of a batch of emails spread out


@dataclass(frozen=True, slots=True)
class Recovery:
    """How a failed email is retried: `retries` more attempts, waits growing by `backoff` from
    `initial_delay_ms` up to `max_delay_ms`, each ±20 % (`policy`)."""

    retries: int
    backoff: Growth
    initial_delay_ms: int
    max_delay_ms: int

    @property
    def policy(self) -> Backoff:
        return Backoff(self.initial_delay_ms, self.max_delay_ms, self.backoff, RETRY_JITTER)

    def span_ms(self) -> int:
        """The longest time from the first attempt to the start of the last retry (jitter +20 %)."""
        return self.policy.longest_span_ms(self.retries)

    def delay_ms(self, retry: int) -> int:
        """The wait before retry number `retry` (1 = the first retry), at most `max_delay_ms`."""
        return self.policy.base_ms(retry)


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
    priority: int = 0  # when the frequency cap lets only some emails through, higher goes first
    capped: bool = True  # its emails count against, and wait for, FREQUENCY_CAP
    # the quiet hours its emails keep: True the service's (QUIET_HOURS), False none, or its own
    quiet_hours: QuietHours | bool = True

    def quiet(self, service: QuietHours | None) -> QuietHours | None:
        """The quiet hours this loop's emails keep, given the service's."""
        if isinstance(self.quiet_hours, QuietHours):
            return self.quiet_hours
        return service if self.quiet_hours else None

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

    def actions(self) -> Iterator[tuple[str, Action]]:
        """Every action the loop can do, with its field path (`steps[0].on_timeout`)."""
        for step in self.steps:
            yield f"steps[{step.index}].action", step.action
            if step.on_timeout is not None:
                yield f"steps[{step.index}].on_timeout", step.on_timeout

    def emails(self) -> Iterator[tuple[str, EmailAction]]:
        """Every email the loop can send, with its field path."""
        for where, action in self.actions():
            if isinstance(action, EmailAction):
                yield where, action

    def webhooks(self) -> Iterator[tuple[str, WebhookAction]]:
        """Every webhook the loop can call, with its field path."""
        for where, action in self.actions():
            if isinstance(action, WebhookAction):
                yield where, action

    def webhook(self, step: int, kind: str) -> WebhookAction | None:
        """The webhook a job of (`step`, `kind`) calls; None when the loop no longer has one."""
        action = self.steps[step].action_of(kind) if step < len(self.steps) else None
        return action if isinstance(action, WebhookAction) else None
