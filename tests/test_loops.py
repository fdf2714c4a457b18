"""Loop files: each accepted form and what it means; each refusal with its field path and reason."""

import copy
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from app.engine.backoff import Growth
from app.engine.loop_loading import load_loop, load_loops
from app.engine.loop_schema import loop_json_schema, loop_json_schema_text, main
from app.engine.loops import (
    DURATION_PATTERN,
    ActionCondition,
    ActionTrigger,
    EmailAction,
    Loop,
    LoopType,
    Recovery,
    UserRegistered,
    parse_duration,
)
from app.errors import ConfigError, LoopFileError, LoopFolderError

LOOPS_DIR = Path(__file__).parent.parent / "loops"
SHIPPED = sorted([*LOOPS_DIR.glob("*.yaml"), *LOOPS_DIR.glob("*.yml")])
TEMPLATES = ("welcome", "nudge", "tips")
DELETE = object()
NOT_A_DURATION = "is not a duration like 30s, 5m, 2h, 3d"

BASE: dict[str, Any] = {
    "type": "activation",
    "opinion": "Welcome users who create a first project; nudge the others",
    "steps": [
        {
            "trigger": {"type": "database", "table": "users", "event": "insert"},
            "condition": {"type": "action", "action": "first_project_created", "timeout": "5m"},
            "action": {
                "type": "email",
                "provider": "resend",
                "template": "welcome",
                "personalization": {"name": "{{user.name}}"},
            },
            "on_timeout": {"type": "email", "template": "nudge"},
        }
    ],
}
TIPS_STEP = {"delay": "2d", "action": {"type": "email", "template": "tips"}}
MILESTONE = {
    "type": "milestone",
    "steps.0.trigger": {"type": "action", "action": "project_created", "count": 10},
    "steps.0.condition": DELETE,
    "steps.0.on_timeout": DELETE,
}


def patched(changes: dict[str, Any]) -> dict[str, Any]:
    """BASE with `changes`: dotted paths (`steps.0.condition.timeout`) to new values or DELETE."""
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = [int(part) if part.isdigit() else part for part in dotted.split(".")]
        target: Any = data
        for part in parents:
            target = target[part]
        if value is DELETE:
            del target[last]
        elif isinstance(target, list) and last == len(target):
            target.append(value)
        else:
            target[last] = value
    return data


def write(folder: Path, data: Any, name: str = "welcome.yaml") -> Path:
    """A loop file (YAML text, or data dumped as YAML) with the templates it may name."""
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    for template in TEMPLATES:
        (folder / "templates" / f"{template}.html").write_text("---\nsubject: Hi\n---\n<p>Hi</p>\n")
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def loaded(tmp_path: Path, changes: dict[str, Any]) -> Loop:
    path = write(tmp_path, patched(changes))
    return load_loop(path, tmp_path / "templates")


def refused(tmp_path: Path, data: Any, name: str = "welcome.yaml") -> LoopFileError:
    path = write(tmp_path, data, name)
    with pytest.raises(LoopFileError) as info:
        load_loop(path, tmp_path / "templates")
    assert info.value.path == path
    return info.value


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "duration_ms"),
    [
        ("30s", 30_000),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("3d", 259_200_000),
        ("1w", 604_800_000),
        ("90m", 5_400_000),
        ("05m", 300_000),
    ],
)
def test_durations(text: str, duration_ms: int) -> None:
    assert parse_duration(text) == duration_ms
    assert re.fullmatch(DURATION_PATTERN.strip("^$"), text)


@pytest.mark.parametrize(
    "text",
    [
        "5 min",
        "5",
        "m",
        "5M",
        "5mo",
        "5ms",
        " 5m",
        "5m ",
        "-5m",
        "+5m",
        "1.5h",
        "1h30m",
        "",
        "\u0665m",
    ],
)
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{text!r} {NOT_A_DURATION}")) as info:
        parse_duration(text)
    assert str(info.value) == f"{text!r} {NOT_A_DURATION}"
    assert not re.fullmatch(DURATION_PATTERN.strip("^$"), text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [("0s", "'0s' is zero"), ("00m", "'00m' is zero"), ("5300w", "longer than 100 years")],
)
def test_durations_out_of_range(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_duration(text)


# --- accepted forms and what they mean -----------------------------------------------------------


def test_the_contract_example_normalises(tmp_path: Path) -> None:
    loop = loaded(tmp_path, {})

    assert (loop.id, loop.type, loop.opinion) == ("welcome", LoopType.ACTIVATION, BASE["opinion"])
    (step,) = loop.steps
    assert step.index == 0
    assert step.trigger == UserRegistered()
    assert step.condition == ActionCondition(("first_project_created",), 1, 300_000)
    assert step.action == EmailAction("welcome", {"name": "{{user.name}}"})
    assert step.on_timeout == EmailAction("nudge", {})
    assert step.delay_ms == 0
    assert loop.recovery == Recovery(3, Growth.EXPONENTIAL, 10_000, 3_600_000)
    assert loop.source == tmp_path / "welcome.yaml"


@pytest.mark.parametrize(
    ("changes", "trigger"),
    [
        pytest.param({}, UserRegistered(), id="database-insert"),
        pytest.param(
            {"steps.0.trigger": {"type": "clerk", "event": "user.created"}},
            UserRegistered(),
            id="clerk-alias",
        ),
        pytest.param(MILESTONE, ActionTrigger("project_created", 10), id="action-count"),
        pytest.param(
            {**MILESTONE, "steps.0.trigger": {"type": "action", "action": "project_created"}},
            ActionTrigger("project_created", 1),
            id="action-count-defaults-to-1",
        ),
    ],
)
def test_triggers(tmp_path: Path, changes: dict[str, Any], trigger: object) -> None:
    assert loaded(tmp_path, changes).steps[0].trigger == trigger


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        pytest.param(
            {"type": "action", "action": "first_project_created", "count": 1, "timeout": "5m"},
            ActionCondition(("first_project_created",), 1, 300_000),
            id="action",
        ),
        pytest.param(
            {"type": "action", "action": "project_created", "count": 3, "timeout": "2h"},
            ActionCondition(("project_created",), 3, 7_200_000),
            id="count",
        ),
        pytest.param(
            {"type": "action", "any_of": ["invited_teammate", "connected_domain"], "timeout": "1w"},
            ActionCondition(("invited_teammate", "connected_domain"), 1, 604_800_000),
            id="any-of",
        ),
        pytest.param(
            {"type": "action", "any_of": ["a", "b"], "count": 2, "timeout": "1d"},
            ActionCondition(("a", "b"), 2, 86_400_000),
            id="any-of-with-count",
        ),
        pytest.param(
            {
                "type": "query",
                "query": "SELECT * FROM user_actions WHERE user_id = $1 "
                "AND action_type = 'first_project_created'",
                "timeout": "5m",
            },
            ActionCondition(("first_project_created",), 1, 300_000),
            id="query",
        ),
        pytest.param(
            {
                "type": "query",
                "query": "SELECT * FROM user_actions WHERE user_id = $1 "
                "AND action_type IN ('a', 'b')",
                "timeout": "5m",
            },
            ActionCondition(("a", "b"), 1, 300_000),
            id="query-in",
        ),
        pytest.param(
            {
                "type": "query",
                "query": "SELECT COUNT(*) FROM user_actions WHERE user_id = $1 "
                "AND action_type = 'x' HAVING COUNT(*) >= 3",
                "timeout": "5m",
            },
            ActionCondition(("x",), 3, 300_000),
            id="query-count",
        ),
    ],
)
def test_conditions(tmp_path: Path, condition: dict[str, Any], expected: ActionCondition) -> None:
    assert loaded(tmp_path, {"steps.0.condition": condition}).steps[0].condition == expected


def test_a_condition_without_timeout_waits_forever(tmp_path: Path) -> None:
    loop = loaded(tmp_path, {"steps.0.condition.timeout": DELETE, "steps.0.on_timeout": DELETE})
    assert loop.steps[0].condition == ActionCondition(("first_project_created",), 1, None)


def test_a_step_without_condition_acts_after_its_delay(tmp_path: Path) -> None:
    loop = loaded(tmp_path, {"steps.1": TIPS_STEP})

    tips = loop.steps[1]
    assert (tips.index, tips.trigger, tips.condition, tips.on_timeout) == (1, None, None, None)
    assert tips.delay_ms == 172_800_000
    assert tips.action == EmailAction("tips", {})


def test_the_first_step_may_have_a_delay_and_no_condition(tmp_path: Path) -> None:
    loop = loaded(
        tmp_path,
        {"steps.0.delay": "1d", "steps.0.condition": DELETE, "steps.0.on_timeout": DELETE},
    )
    assert (loop.steps[0].delay_ms, loop.steps[0].condition) == (86_400_000, None)


def test_emails_lists_every_email_with_its_path(tmp_path: Path) -> None:
    loop = loaded(tmp_path, {"steps.1": TIPS_STEP})
    assert [(where, email.template) for where, email in loop.emails()] == [
        ("steps[0].action", "welcome"),
        ("steps[0].on_timeout", "nudge"),
        ("steps[1].action", "tips"),
    ]


@pytest.mark.parametrize(
    ("recovery", "expected"),
    [
        pytest.param({}, Recovery(3, Growth.EXPONENTIAL, 10_000, 3_600_000), id="defaults"),
        pytest.param(
            {"retries": 0, "backoff": "fixed"}, Recovery(0, Growth.FIXED, 10_000, 3_600_000)
        ),
        pytest.param(
            {"retries": 5, "backoff": "linear", "initial_delay": "30s", "max_delay": "2h"},
            Recovery(5, Growth.LINEAR, 30_000, 7_200_000),
        ),
    ],
)
def test_recovery(tmp_path: Path, recovery: dict[str, Any], expected: Recovery) -> None:
    assert loaded(tmp_path, {"recovery": recovery}).recovery == expected


def test_recovery_is_optional(tmp_path: Path) -> None:
    assert loaded(tmp_path, {}).recovery == Recovery(3, Growth.EXPONENTIAL, 10_000, 3_600_000)


@pytest.mark.parametrize(
    ("backoff", "delays_ms"),
    [
        (Growth.EXPONENTIAL, [10_000, 20_000, 40_000, 60_000, 60_000]),
        (Growth.LINEAR, [10_000, 20_000, 30_000, 40_000, 50_000]),
        (Growth.FIXED, [10_000, 10_000, 10_000, 10_000, 10_000]),
    ],
)
def test_recovery_delays_grow_by_backoff_up_to_max(backoff: Growth, delays_ms: list[int]) -> None:
    recovery = Recovery(5, backoff, initial_delay_ms=10_000, max_delay_ms=60_000)
    assert [recovery.delay_ms(retry) for retry in range(1, 6)] == delays_ms


def test_a_loop_cannot_be_changed_after_loading(tmp_path: Path) -> None:
    loop = loaded(tmp_path, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        loop.steps[0].delay_ms = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        loop.steps[0].action.personalization["name"] = "x"  # type: ignore[index]


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        # durations
        (
            {"steps.0.condition.timeout": "5 min"},
            "steps[0].condition.timeout",
            f"'5 min' {NOT_A_DURATION}",
        ),
        ({"steps.0.condition.timeout": 30}, "steps[0].condition.timeout", f"30 {NOT_A_DURATION}"),
        (
            {"steps.0.condition.timeout": "0m"},
            "steps[0].condition.timeout",
            "'0m' is zero: a duration must be longer, like 30s, 5m, 2h, 3d",
        ),
        ({"steps.0.delay": "1 day"}, "steps[0].delay", f"'1 day' {NOT_A_DURATION}"),
        (
            {"recovery": {"initial_delay": "soon"}},
            "recovery.initial_delay",
            f"'soon' {NOT_A_DURATION}",
        ),
        ({"recovery": {"max_delay": "1h30m"}}, "recovery.max_delay", f"'1h30m' {NOT_A_DURATION}"),
        (
            {"recovery": {"initial_delay": "2h"}},
            "recovery.initial_delay",
            "'2h' is longer than max_delay '1h'",
        ),
        # retries that would outlast Resend's 24 h idempotency window
        (
            {"recovery": {"retries": 20, "max_delay": "1d"}},
            "recovery",
            "20 retries (exponential, 10s up to 1d) span 227.4 h with jitter; the last retry must "
            "start within 12 h of the first attempt (Resend forgets an idempotency key after "
            "24 h: a later retry could send the email twice)",
        ),
        (
            {"recovery": {"retries": 51}},
            "recovery.retries",
            "Input should be less than or equal to 50",
        ),
        # unknown keys, at every level, with a hint
        ({"opinon": "x"}, "opinon", "unknown key; did you mean 'opinion'?"),
        (
            {"colour": "blue"},
            "colour",
            "unknown key; allowed here: type, opinion, audience, holdout, measure, priority, cap, "
            "quiet_hours, steps, recovery",
        ),
        ({"steps.0.condtion": {}}, "steps[0].condtion", "unknown key; did you mean 'condition'?"),
        (
            {"steps.0.trigger.tabel": "users"},
            "steps[0].trigger.tabel",
            "unknown key; did you mean 'table'?",
        ),
        (
            {"steps.0.condition.timout": "5m"},
            "steps[0].condition.timout",
            "unknown key; did you mean 'timeout'?",
        ),
        (
            {"steps.0.action.templte": "x"},
            "steps[0].action.templte",
            "unknown key; did you mean 'template'?",
        ),
        (
            {"steps.0.on_timeout.subject": "x"},
            "steps[0].on_timeout.subject",
            "unknown key; allowed here: type, provider, template, personalization, variants, "
            "experiment",
        ),
        ({"recovery": {"retry": 3}}, "recovery.retry", "unknown key; did you mean 'retries'?"),
        ({"steps.0.delay": None}, "steps[0].delay", "empty: give a value or leave the key out"),
        # the loop
        (
            {"type": "onboarding"},
            "type",
            "'onboarding' is not allowed: expected 'activation' or 'milestone'",
        ),
        ({"opinion": ""}, "opinion", "String should have at least 1 character"),
        ({"steps": []}, "steps", "List should have at least 1 item after validation, not 0"),
        ({"steps.0": "welcome"}, "steps[0]", "should be a mapping (key: value lines)"),
        # triggers
        (
            {"steps.0.trigger": DELETE},
            "steps[0].trigger",
            "the first step needs a trigger: what starts the loop",
        ),
        (
            {"steps.1": {**TIPS_STEP, "trigger": {"type": "clerk", "event": "user.created"}}},
            "steps[1].trigger",
            "only the first step has a trigger; later steps follow it",
        ),
        (
            {"steps.0.trigger.type": "webhook"},
            "steps[0].trigger",
            "unknown type 'webhook': expected one of 'database', 'clerk', 'action'",
        ),
        (
            {"steps.0.trigger.type": DELETE},
            "steps[0].trigger",
            "needs a type: one of database, clerk, action",
        ),
        (
            {"steps.0.trigger.table": "accounts"},
            "steps[0].trigger.table",
            "'accounts' is not allowed: expected 'users'",
        ),
        (
            {"steps.0.trigger": {"type": "clerk", "event": "user.updated"}},
            "steps[0].trigger.event",
            "'user.updated' is not allowed: expected 'user.created'",
        ),
        (
            {"type": "milestone"},
            "steps[0].trigger",
            "a milestone loop starts on {type: action, action: ..., count: N}",
        ),
        (
            {"steps.0.trigger": {"type": "action", "action": "x"}},
            "steps[0].trigger",
            "an activation loop starts on {type: database, table: users, event: insert} "
            "or {type: clerk, ...}",
        ),
        (
            {**MILESTONE, "steps.0.trigger.count": 0},
            "steps[0].trigger.count",
            "Input should be greater than or equal to 1",
        ),
        (
            {**MILESTONE, "steps.0.trigger.action": DELETE},
            "steps[0].trigger.action",
            "required, but missing",
        ),
        # conditions
        (
            {"steps.0.condition": "first_project_created"},
            "steps[0].condition",
            "should be a mapping (key: value lines)",
        ),
        (
            {"steps.0.condition.type": DELETE},
            "steps[0].condition",
            "needs a type: one of action, query",
        ),
        (
            {"steps.0.condition.any_of": ["a", "b"]},
            "steps[0].condition",
            "give either action or any_of (exactly one of them)",
        ),
        (
            {"steps.0.condition.action": DELETE},
            "steps[0].condition",
            "give either action or any_of (exactly one of them)",
        ),
        (
            {"steps.0.condition.action": DELETE, "steps.0.condition.any_of": []},
            "steps[0].condition.any_of",
            "List should have at least 1 item after validation, not 0",
        ),
        (
            {"steps.0.condition.action": DELETE, "steps.0.condition.any_of": ["a", "b", "a"]},
            "steps[0].condition",
            "any_of lists 'a' more than once",
        ),
        (
            {"steps.0.condition.action": DELETE, "steps.0.condition.any_of": ["a", 7]},
            "steps[0].condition.any_of[1]",
            "Input should be a valid string",
        ),
        (
            {"steps.0.condition.count": 0},
            "steps[0].condition.count",
            "Input should be greater than or equal to 1",
        ),
        (
            {"steps.0.condition.count": "3"},
            "steps[0].condition.count",
            "Input should be a valid integer",
        ),
        (
            {"steps.0.condition.count": True},
            "steps[0].condition.count",
            "Input should be a valid integer",
        ),
        (
            {"steps.0.condition.action": "first project"},
            "steps[0].condition.action",
            "'first project' is not an action name (letters, digits, _ . -; up to 64)",
        ),
        (
            {
                "steps.0.condition": {
                    "type": "query",
                    "query": "SELECT * FROM users",
                    "timeout": "5m",
                }
            },
            "steps[0].condition.query",
            "the query must select FROM user_actions (not users)",
        ),
        (
            {
                "steps.0.condition": {
                    "type": "query",
                    "query": "SELECT * FROM user_actions WHERE user_id = $1 "
                    "AND (action_type = 'a' OR action_type = 'b')",
                }
            },
            "steps[0].condition.query",
            "OR is not supported: use action_type IN ('a', 'b') for any of several",
        ),
        (
            {"steps.0.condition": {"type": "query", "timeout": "5m"}},
            "steps[0].condition.query",
            "required, but missing",
        ),
        # actions
        ({"steps.0.action": DELETE}, "steps[0].action", "required, but missing"),
        ({"steps.0.action.type": DELETE}, "steps[0].action.type", "required, but missing"),
        (
            {"steps.0.action.type": "sms"},
            "steps[0].action.type",
            "'sms' is not allowed: expected 'email'",
        ),
        (
            {"steps.0.action.provider": "sendgrid"},
            "steps[0].action.provider",
            "'sendgrid' is not allowed: expected 'resend'",
        ),
        (
            {"steps.0.action.template": "../secrets"},
            "steps[0].action.template",
            "'../secrets' is not a template name (letters, digits, _ . -)",
        ),
        (
            {"steps.0.action.personalization": {"first-name": "x"}},
            "steps[0].action.personalization.first-name",
            "'first-name' is not a variable name (letters, digits, _)",
        ),
        (
            {"steps.0.action.personalization.name": 5},
            "steps[0].action.personalization.name",
            "Input should be a valid string",
        ),
        (
            {"steps.0.condition.timeout": DELETE},
            "steps[0].on_timeout",
            "only a condition with a timeout can time out: add condition.timeout",
        ),
        (
            {"steps.0.condition": DELETE},
            "steps[0].on_timeout",
            "only a condition with a timeout can time out: add condition.timeout",
        ),
    ],
)
def test_refusals(tmp_path: Path, changes: dict[str, Any], field: str, reason: str) -> None:
    error = refused(tmp_path, patched(changes))
    assert (error.field, error.reason) == (field, reason)


@pytest.mark.parametrize(
    ("changes", "field", "template"),
    [
        ({"steps.0.action.template": "welcom"}, "steps[0].action.template", "welcom"),
        ({"steps.0.on_timeout.template": "nudges"}, "steps[0].on_timeout.template", "nudges"),
        (
            {"steps.1": {**TIPS_STEP, "action": {"type": "email", "template": "tip"}}},
            "steps[1].action.template",
            "tip",
        ),
    ],
)
def test_a_missing_template_names_the_file_and_field(
    tmp_path: Path, changes: dict[str, Any], field: str, template: str
) -> None:
    error = refused(tmp_path, patched(changes))
    expected = tmp_path / "templates" / f"{template}.html"
    assert (error.field, error.reason) == (
        field,
        f"no template {template!r}: {expected} is missing",
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "type: activation\n  opinion: x\n",
            "invalid YAML at line 2, column 10: mapping values are not allowed here",
        ),
        (
            "type: activation\ntype: milestone\n",
            "invalid YAML at line 2, column 1: duplicate key 'type'",
        ),
        (
            "type: activation\nsteps: [\n",
            "invalid YAML at line 3, column 1: "
            "while parsing a flow node, expected the node content, but found '<stream end>'",
        ),
        (
            'opinion: "unclosed\n',
            "invalid YAML at line 2, column 1: "
            "while scanning a quoted scalar, found unexpected end of stream",
        ),
        (
            "type: activation\n---\ntype: milestone\n",
            "invalid YAML at line 2, column 1: "
            "expected a single document in the stream, but found another document",
        ),
        (
            "- type: activation\n",
            "the top level must be a mapping of type, opinion, steps (not list)",
        ),
        ("activation\n", "the top level must be a mapping of type, opinion, steps (not str)"),
        ("", "the file is empty; a loop needs type, opinion and steps"),
        ("# nothing yet\n", "the file is empty; a loop needs type, opinion and steps"),
    ],
)
def test_whole_file_refusals(tmp_path: Path, text: str, reason: str) -> None:
    error = refused(tmp_path, text)
    assert (error.field, error.reason) == (None, reason)
    assert str(error) == f"{tmp_path / 'welcome.yaml'}: {reason}"


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    path.write_bytes(b"type: activ\xe9tion\n")
    with pytest.raises(LoopFileError, match="cannot read the file: 'utf-8' codec can't decode"):
        load_loop(path, tmp_path / "templates")


@pytest.mark.parametrize(
    "name", ["Welcome.yaml", "_welcome.yaml", "-welcome.yaml", "my loop.yaml", "wélcome.yaml"]
)
def test_bad_loop_ids(tmp_path: Path, name: str) -> None:
    error = refused(tmp_path, patched({}), name)
    stem = name.removesuffix(".yaml")
    assert error.reason == f"loop id {stem!r} (the file name) must match [a-z0-9][a-z0-9_-]*"


@pytest.mark.parametrize("name", ["a.yaml", "day-2_tips.yml", "10x.yaml"])
def test_good_loop_ids(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, patched({}), name)
    assert load_loop(path, tmp_path / "templates").id == Path(name).stem


def test_the_message_names_file_field_and_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(Path("loops"), patched({"steps.0.condition.timeout": "5 min"}))

    with pytest.raises(LoopFolderError) as info:
        load_loops(Path("loops"))

    assert str(info.value) == (
        "loops/welcome.yaml: steps[0].condition.timeout: '5 min' is not a duration like "
        "30s, 5m, 2h, 3d"
    )
    [problem] = info.value.problems
    assert isinstance(problem, LoopFileError)
    assert problem.path == Path("loops/welcome.yaml")
    assert problem.field == "steps[0].condition.timeout"
    assert problem.reason == "'5 min' is not a duration like 30s, 5m, 2h, 3d"
    assert isinstance(info.value, ConfigError)  # a bad loop file refuses startup like bad settings


def problems(error: LoopFileError) -> list[tuple[str | None, str]]:
    return [(error.field, error.reason), *error.more]


GTEE = "members: unknown operator 'gtee': did you mean 'gte'?"


@pytest.mark.parametrize(
    ("changes", "typo", "where"),
    [
        pytest.param(
            {
                "steps.0.condition": {
                    "type": "action",
                    "action": "first_project_created",
                    "timout": "5m",
                    "where": {"members": {"gtee": 3}},
                },
                "steps.0.on_timeout": DELETE,
            },
            ("steps[0].condition.timout", "unknown key; did you mean 'timeout'?"),
            "steps[0].condition.where",
            id="condition",
        ),
        pytest.param(
            {
                **MILESTONE,
                "steps.0.trigger": {
                    "type": "action",
                    "action": "project_created",
                    "cuont": 10,
                    "where": {"members": {"gtee": 3}},
                },
            },
            ("steps[0].trigger.cuont", "unknown key; did you mean 'count'?"),
            "steps[0].trigger.where",
            id="trigger",
        ),
    ],
)
def test_an_unknown_key_hides_no_mistake_beside_it(
    tmp_path: Path, changes: dict[str, Any], typo: tuple[str, str], where: str
) -> None:
    """`action` is both the union's tag and a key of these mappings: the unknown key beside it
    is dropped all the same, and the mapping checked again."""
    found = problems(refused(tmp_path, patched(changes)))

    assert found[0] == typo
    assert [field for field, _ in found] == [typo[0], where]
    assert GTEE in found[1][1]


def test_a_file_reports_its_schema_mistakes_and_its_missing_templates_at_once(
    tmp_path: Path,
) -> None:
    action = {
        "type": "email",
        "template": "welcom",
        "experiment": [{"template": "welcome"}, {"template": "welcome_b"}],
    }
    changes = {"steps.0.condition.timeout": "5 min", "steps.0.action": action}
    found = problems(refused(tmp_path, patched(changes)))

    missing = tmp_path / "templates"
    assert found == [
        ("steps[0].condition.timeout", f"'5 min' {NOT_A_DURATION}"),
        ("steps[0].action.template", f"no template 'welcom': {missing / 'welcom.html'} is missing"),
        (
            "steps[0].action.experiment[1].template",
            f"no template 'welcome_b': {missing / 'welcome_b.html'} is missing",
        ),
    ]


def test_a_file_reports_every_mistake_the_schema_cannot_see(tmp_path: Path) -> None:
    on_timeout_without_timeout = {"steps.0.condition.timeout": DELETE}
    changes = {
        **on_timeout_without_timeout,
        "audience": {"private_metadata.plan": "pro", "phone": "1"},
        "steps.1": {**TIPS_STEP, "trigger": {"type": "clerk", "event": "user.created"}},
        "recovery": {"initial_delay": "2h"},
    }
    found = problems(refused(tmp_path, patched(changes)))

    assert [field for field, _ in found] == [
        "steps[0].on_timeout",
        "steps[1].trigger",
        "audience",
        "audience",
        "recovery.initial_delay",
    ]
    assert "'phone' is not a profile field" in found[3][1]


# --- a folder of loops ---------------------------------------------------------------------------


def test_an_empty_folder_has_no_loops(tmp_path: Path) -> None:
    assert load_loops(tmp_path) == {}


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoopFolderError) as info:
        load_loops(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: no such folder of loop files"


def test_reads_yaml_and_yml_in_name_order_and_nothing_else(tmp_path: Path) -> None:
    for name in ("c.yaml", "a.yml", "b.yaml", ".hidden.yaml", "notes.md", "loop.schema.json"):
        write(tmp_path, patched({}), name)
    assert list(load_loops(tmp_path)) == ["a", "b", "c"]


def test_one_id_in_two_files_is_refused(tmp_path: Path) -> None:
    write(tmp_path, patched({}), "welcome.yaml")
    write(tmp_path, patched({}), "welcome.yml")
    with pytest.raises(LoopFolderError) as info:
        load_loops(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'welcome.yml'}: loop id 'welcome' is taken by {tmp_path / 'welcome.yaml'}"
    )


def test_every_bad_file_in_a_folder_is_reported(tmp_path: Path) -> None:
    write(tmp_path, patched({"steps.0.condition.timeout": "5 min", "opinon": "x"}), "a.yaml")
    write(tmp_path, patched({}), "b.yaml")
    write(tmp_path, "type: activation\n  opinion: x\n", "c.yaml")
    write(tmp_path, patched({"steps.0.action.template": "gone"}), "c.yml")

    with pytest.raises(LoopFolderError) as info:
        load_loops(tmp_path)

    lines = str(info.value).splitlines()
    assert [line.removeprefix(f"{tmp_path}/") for line in lines] == [
        "a.yaml: opinon: unknown key; did you mean 'opinion'?",
        f"a.yaml: steps[0].condition.timeout: '5 min' {NOT_A_DURATION}",
        "c.yaml: invalid YAML at line 2, column 10: mapping values are not allowed here",
        f"c.yml: loop id 'c' is taken by {tmp_path / 'c.yaml'}",
    ]
    files = [p.path for p in info.value.problems if isinstance(p, LoopFileError)]
    assert files == [tmp_path / "a.yaml", tmp_path / "c.yaml", tmp_path / "c.yml"]


def test_one_bad_file_stops_the_whole_folder(tmp_path: Path) -> None:
    write(tmp_path, patched({}), "a.yaml")
    write(tmp_path, patched({"steps.0.action.template": "gone"}), "b.yaml")
    with pytest.raises(LoopFolderError, match=r"b\.yaml: steps\[0\]\.action\.template: no tem"):
        load_loops(tmp_path)


# --- the shipped loops and the schema ------------------------------------------------------------


def test_the_shipped_loops_load() -> None:
    loops = load_loops(LOOPS_DIR)

    assert set(loops) >= {"activation", "milestone_ten_projects"}
    assert len(loops) == len(SHIPPED)
    activation = loops["activation"].steps[0]
    assert activation.trigger == UserRegistered()
    assert activation.condition == ActionCondition(("first_project_created",), 1, 300_000)
    assert activation.action.template == "activation_welcome"
    assert activation.on_timeout == EmailAction("activation_nudge", {})
    milestone = loops["milestone_ten_projects"]
    assert milestone.type is LoopType.MILESTONE
    assert milestone.steps[0].trigger == ActionTrigger("project_created", 10)
    assert milestone.steps[0].action.template == "milestone_ten_projects"


def test_the_committed_schema_is_fresh() -> None:
    committed = (LOOPS_DIR / "loop.schema.json").read_text(encoding="utf-8")
    assert committed == loop_json_schema_text(), (
        "loops/loop.schema.json is stale: run "
        "`python -m app.engine.loop_schema schema > loops/loop.schema.json`"
    )


def test_the_schema_command_prints_the_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.engine.loop_schema", "schema"],
        cwd=LOOPS_DIR.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == loop_json_schema_text()


def test_the_schema_command_explains_its_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: python -m app.engine.loop_schema schema" in capsys.readouterr().err


def test_the_schema_describes_the_file_for_editors() -> None:
    schema = loop_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "Activation loop"
    assert schema["additionalProperties"] is False
    timeout = schema["$defs"]["ActionConditionSpec"]["properties"]["timeout"]
    assert (timeout["type"], timeout["pattern"]) == ("string", DURATION_PATTERN)
    assert all("description" in definition for definition in schema["$defs"].values())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_the_schema_accepts_the_shipped_loops(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert SchemaCheck(loop_json_schema()).errors(data) == []


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"opinon": "x"}, "$.opinon: not allowed"),
        ({"steps.0.condition.timeout": "5 min"}, "$.steps[0].condition.timeout: does not match"),
        ({"steps.0.condition.any_of": ["a"]}, "$.steps[0].condition: matches 2 of oneOf"),
        ({"steps.0.trigger.type": "webhook"}, "$.steps[0].trigger: matches 0 of oneOf"),
        ({"recovery": {"retries": -1}}, "$.recovery.retries: below 0"),
        ({"steps": []}, "$.steps: fewer than 1 items"),
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(
    tmp_path: Path, changes: dict[str, Any], error: str
) -> None:
    data = patched(changes)
    refused(tmp_path, data)
    errors = SchemaCheck(loop_json_schema()).errors(data)
    assert any(found.startswith(error) for found in errors), errors


class SchemaCheck:
    """Just enough JSON Schema (2020-12) to check loop files; a keyword it lacks fails loudly."""

    IGNORED = frozenset({"$schema", "$defs", "title", "description", "default", "examples"})
    TYPES: ClassVar[dict[str, type]] = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
    }

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def errors(self, value: Any, schema: dict[str, Any] | None = None, at: str = "$") -> list[str]:
        schema = self.root if schema is None else schema
        found: list[str] = []
        for keyword, rule in schema.items():
            if keyword in self.IGNORED or keyword == "discriminator":  # OpenAPI's hint only
                continue
            check = getattr(self, f"check_{keyword.lstrip('$')}", None)
            assert check is not None, f"SchemaCheck does not know {keyword!r}"
            found += check(rule, value, at, schema)
        return found

    def check_ref(self, rule: str, value: Any, at: str, _: dict[str, Any]) -> list[str]:
        return self.errors(value, self.root["$defs"][rule.removeprefix("#/$defs/")], at)

    def check_type(self, rule: str | list[str], value: Any, at: str, _: Any) -> list[str]:
        names = [rule] if isinstance(rule, str) else rule
        fits = any(
            isinstance(value, self.TYPES[name]) and (name == "boolean") == isinstance(value, bool)
            for name in names
        )
        return [] if fits else [f"{at}: not {rule}"]

    def check_properties(self, rule: dict[str, Any], value: Any, at: str, _: Any) -> list[str]:
        if not isinstance(value, dict):
            return []
        pairs = [(key, rule[key]) for key in value if key in rule]
        return [
            error for key, sub in pairs for error in self.errors(value[key], sub, f"{at}.{key}")
        ]

    def check_patternProperties(
        self, rule: dict[str, Any], value: Any, at: str, _: Any
    ) -> list[str]:
        if not isinstance(value, dict):
            return []
        pairs = [
            (key, sub) for key in value for pattern, sub in rule.items() if re.search(pattern, key)
        ]
        return [
            error for key, sub in pairs for error in self.errors(value[key], sub, f"{at}.{key}")
        ]

    def check_additionalProperties(
        self, rule: bool | dict[str, Any], value: Any, at: str, schema: dict[str, Any]
    ) -> list[str]:
        if not isinstance(value, dict):
            return []
        patterns = schema.get("patternProperties", {})
        known = schema.get("properties", {})
        extra = [k for k in value if k not in known and not any(re.search(p, k) for p in patterns)]
        if isinstance(rule, dict):  # a schema each extra value must meet
            return [error for k in extra for error in self.errors(value[k], rule, f"{at}.{k}")]
        assert rule is False, "SchemaCheck knows additionalProperties: false or a schema"
        return [f"{at}.{key}: not allowed" for key in extra]

    def check_propertyNames(self, rule: dict[str, Any], value: Any, at: str, _: Any) -> list[str]:
        names = value if isinstance(value, dict) else {}
        return [error for key in names for error in self.errors(key, rule, f"{at}[{key!r}]")]

    def check_minProperties(self, rule: int, value: Any, at: str, _: Any) -> list[str]:
        few = isinstance(value, dict) and len(value) < rule
        return [f"{at}: fewer than {rule} properties"] if few else []

    def check_anyOf(self, rule: list[dict[str, Any]], value: Any, at: str, _: Any) -> list[str]:
        results = [self.errors(value, sub, at) for sub in rule]
        return [] if any(not errors for errors in results) else [f"{at}: matches none of anyOf"]

    def check_required(self, rule: list[str], value: Any, at: str, _: Any) -> list[str]:
        missing = [key for key in rule if isinstance(value, dict) and key not in value]
        return [f"{at}: missing {key}" for key in missing]

    def check_items(self, rule: dict[str, Any], value: Any, at: str, _: Any) -> list[str]:
        items = value if isinstance(value, list) else []
        return [
            error for i, item in enumerate(items) for error in self.errors(item, rule, f"{at}[{i}]")
        ]

    def check_minItems(self, rule: int, value: Any, at: str, _: Any) -> list[str]:
        return (
            [f"{at}: fewer than {rule} items"]
            if isinstance(value, list) and len(value) < rule
            else []
        )

    def check_minLength(self, rule: int, value: Any, at: str, _: Any) -> list[str]:
        return (
            [f"{at}: shorter than {rule}"] if isinstance(value, str) and len(value) < rule else []
        )

    def check_minimum(self, rule: int, value: Any, at: str, _: Any) -> list[str]:
        number = isinstance(value, int) and not isinstance(value, bool)
        return [f"{at}: below {rule}"] if number and value < rule else []

    def check_maximum(self, rule: int, value: Any, at: str, _: Any) -> list[str]:
        number = isinstance(value, int) and not isinstance(value, bool)
        return [f"{at}: above {rule}"] if number and value > rule else []

    def check_pattern(self, rule: str, value: Any, at: str, _: Any) -> list[str]:
        return (
            [f"{at}: does not match {rule}"]
            if isinstance(value, str) and not re.search(rule, value)
            else []
        )

    def check_const(self, rule: Any, value: Any, at: str, _: Any) -> list[str]:
        return [] if value == rule else [f"{at}: not {rule!r}"]

    def check_enum(self, rule: list[Any], value: Any, at: str, _: Any) -> list[str]:
        return [] if value in rule else [f"{at}: not one of {rule}"]

    def check_oneOf(self, rule: list[dict[str, Any]], value: Any, at: str, _: Any) -> list[str]:
        results = [self.errors(value, sub, at) for sub in rule]
        matches = sum(not errors for errors in results)
        if matches == 1:
            return []
        return [f"{at}: matches {matches} of oneOf", *(e for errors in results for e in errors)]


def test_the_schema_is_plain_json() -> None:
    assert json.loads(loop_json_schema_text()) == loop_json_schema()
    assert loop_json_schema_text().endswith("}\n")
