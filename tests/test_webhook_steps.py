"""Webhook steps as the loop files state them (`engine.webhook_steps`, `loop_spec.WebhookSpec`):
`${ENV}` references resolved from the environment the settings read, a missing one refused at
startup naming it and the file, a URL that is not http(s), a slack webhook without text and a
secret that is not a whsec_ key refused, a text naming an unknown variable caught by `activation
check` beside the folder's other mistakes, never a resolved URL or secret in a message or a repr;
the engine's decisions (the holdout and an unsubscribe skip emails, not webhooks); the schema."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.delivery.loop_folder import load_loop_files
from app.engine.assign import arm_of
from app.engine.evaluate import ActionStats, Snapshot, StepStatus, evaluate
from app.engine.loop_loading import load_loops
from app.engine.loop_schema import loop_json_schema
from app.engine.loops import EmailAction, WebhookAction, WebhookFormat
from app.errors import LoopFolderError
from app.settings import Settings, environment
from tests.conftest import FakeClock, running, write_files
from tests.support.processes import activation

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOK = "https://hooks.slack.com/services/T000/B000/XXXX"

TEAM = """
    type: milestone
    steps:
      - trigger: {type: action, action: first_project_created}
        action:
          type: webhook
          url: "${TEAM_HOOK_URL}"
          format: slack
          text: "{{ user.name }} ({{ user.email }}) created their first project"
          secret: "${TEAM_HOOK_SECRET}"
"""
BOTH = """
    type: activation
    holdout: 50%
    steps:
      - trigger: {type: clerk, event: user.created}
        action: {type: email, template: welcome}
      - condition: {type: action, action: upgraded, timeout: 1d}
        action: {type: webhook, url: "https://crm.example.com/hooks"}
        on_timeout: {type: email, template: welcome}
"""
WELCOME = {"templates/welcome.html": "---\nsubject: hi\n---\n<p>hi</p>\n"}
ENVIRONMENT = {"TEAM_HOOK_URL": HOOK, "TEAM_HOOK_SECRET": SECRET}


def folder_with(tmp_path: Path, **loops: str) -> Path:
    return write_files(
        tmp_path / "loops", {**{f"{k}.yaml": v for k, v in loops.items()}, **WELCOME}
    )


def problems(tmp_path: Path, environment: dict[str, str], **loops: str) -> str:
    with pytest.raises(LoopFolderError) as refused:
        load_loops(folder_with(tmp_path, **loops), environment)
    return str(refused.value)


def test_env_references_are_resolved_at_load_and_never_shown(tmp_path: Path) -> None:
    loop = load_loops(folder_with(tmp_path, team=TEAM), ENVIRONMENT)["team"]
    webhook = loop.steps[0].action
    assert webhook == WebhookAction(HOOK, WebhookFormat.SLACK, webhook.text, SECRET)
    assert webhook.text == "{{ user.name }} ({{ user.email }}) created their first project"
    assert HOOK not in repr(loop)
    assert SECRET not in repr(loop)
    assert list(loop.webhooks()) == [("steps[0].action", webhook)]
    assert list(loop.emails()) == []


def test_a_missing_env_reference_is_refused_naming_it_and_the_file(tmp_path: Path) -> None:
    message = problems(tmp_path, {"TEAM_HOOK_URL": HOOK}, team=TEAM)
    assert "team.yaml: steps[0].action.secret" in message
    assert "${TEAM_HOOK_SECRET} is not set in the service's environment" in message
    message = problems(tmp_path, {}, team=TEAM)
    assert "${TEAM_HOOK_URL} is not set" in message
    assert "${TEAM_HOOK_SECRET} is not set" in message  # every one at once


async def test_startup_refuses_a_missing_reference_and_reads_the_environment(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(loops_dir=folder_with(tmp_path, team=TEAM))
    monkeypatch.delenv("TEAM_HOOK_URL", raising=False)
    monkeypatch.setenv("TEAM_HOOK_SECRET", SECRET)
    with pytest.raises(LoopFolderError, match=r"\$\{TEAM_HOOK_URL\} is not set"):
        async with running(settings, clock):
            pass
    monkeypatch.setenv("TEAM_HOOK_URL", HOOK)
    assert environment(settings)["TEAM_HOOK_URL"] == HOOK
    loops, _ = load_loop_files(settings)
    action = loops["team"].steps[0].action
    assert isinstance(action, WebhookAction)
    assert (action.url, action.secret) == (HOOK, SECRET)


def test_the_env_file_is_read_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"TEAM_HOOK_URL={HOOK}\nTEAM_HOOK_SECRET=from-the-file\n")
    monkeypatch.setenv("TEAM_HOOK_SECRET", SECRET)  # the process environment wins, as settings'
    monkeypatch.delenv("TEAM_HOOK_URL", raising=False)
    found = environment(Settings(_env_file=None))  # type: ignore[call-arg]
    assert (found["TEAM_HOOK_URL"], found["TEAM_HOOK_SECRET"]) == (HOOK, SECRET)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://files.example.com/in", "'ftp://files.example.com/in' is not an http(s) URL"),
        ("hooks.example.com/in", "is not an http(s) URL"),
        ("https://", "names no host"),
        ("${FILE_URL}", "the URL ${FILE_URL} gives is not an http(s) URL"),
    ],
)
def test_a_url_that_is_not_http_is_refused_at_load(tmp_path: Path, url: str, reason: str) -> None:
    loop = TEAM.replace('"${TEAM_HOOK_URL}"', f'"{url}"')
    environment = {**ENVIRONMENT, "FILE_URL": "file:///etc/passwd"}
    message = problems(tmp_path, environment, team=loop)
    assert "team.yaml: steps[0].action.url" in message
    assert reason in message
    assert "/etc/passwd" not in message  # a resolved URL is never shown


def test_a_slack_webhook_needs_text_and_a_secret_must_be_a_whsec_key(tmp_path: Path) -> None:
    no_text = TEAM.replace(
        'text: "{{ user.name }} ({{ user.email }}) created their first project"', ""
    )
    message = problems(tmp_path, ENVIRONMENT, team=no_text)
    assert "a slack webhook needs text: the message it posts" in message
    message = problems(tmp_path, {**ENVIRONMENT, "TEAM_HOOK_SECRET": "hunter2"}, team=TEAM)
    assert "steps[0].action.secret: not a signing secret: whsec_ followed by base64" in message
    assert "hunter2" not in message
    unknown = TEAM.replace("format: slack", "format: teams")
    assert "'teams' is not allowed: expected 'json' or 'slack'" in problems(
        tmp_path, ENVIRONMENT, team=unknown
    )


def test_check_reports_a_bad_text_beside_the_folders_other_mistakes(tmp_path: Path) -> None:
    bad_text = TEAM.replace("{{ user.name }}", "{{ usr.name }}")
    folder = write_files(
        tmp_path / "loops",
        {
            "team.yaml": bad_text,
            "hello.yaml": BOTH.replace(
                "template: welcome}\n      - cond", "template: helo}\n      - cond"
            ),
            **WELCOME,
        },
    )
    env = {**os.environ, **ENVIRONMENT, "LOOPS_DIR": str(folder)}
    done = activation("check", str(folder), env=env)
    assert done.returncode == 1
    assert "team.yaml: steps[0].action.text" in done.stderr
    assert "unknown variable 'usr'" in done.stderr
    assert "hello.yaml: steps[0].action.template: no template 'helo'" in done.stderr


def test_one_loop_holds_both_kinds_of_step(tmp_path: Path) -> None:
    loop = load_loops(folder_with(tmp_path, both=BOTH))["both"]
    kinds = [type(action) for _, action in loop.actions()]
    assert kinds == [EmailAction, WebhookAction, EmailAction]
    webhook = loop.steps[1].action
    assert isinstance(webhook, WebhookAction)
    assert (webhook.format, webhook.secret) == (WebhookFormat.JSON, None)
    assert loop.webhook(1, "action") == webhook
    assert (loop.webhook(1, "timeout"), loop.webhook(0, "action"), loop.webhook(9, "action")) == (
        None,
        None,
        None,
    )


def test_the_holdout_and_an_unsubscribe_skip_emails_but_not_webhooks(tmp_path: Path) -> None:
    loop = load_loops(folder_with(tmp_path, both=BOTH))["both"]
    held_out = next(f"user_{i}" for i in range(100) if arm_of(loop, f"user_{i}") == "holdout")
    for user_id, suppressed in ((held_out, False), ("user_stopped", True)):
        first = evaluate([loop], Snapshot(user_id, 0, {}, {}, suppressed), 0)
        assert first.emails == []
        steps = dict(first.transitions)
        upgraded = {"upgraded": ActionStats(1, 10, 10)}
        later = evaluate([loop], Snapshot(user_id, 0, upgraded, steps, suppressed), 20)
        assert [(o.step, o.channel) for o in later.emails] == [(1, "webhook")]
        assert later.transitions["both/1"].status is StepStatus.FIRED


def test_the_schema_offers_a_webhook_action() -> None:
    schema = loop_json_schema()
    webhook = schema["$defs"]["WebhookSpec"]
    assert webhook["properties"]["type"]["const"] == "webhook"
    assert webhook["properties"]["format"]["enum"] == ["json", "slack"]
    assert webhook["required"] == ["type", "url"]
    step = schema["$defs"]["StepSpec"]["properties"]["action"]
    refs = {option["$ref"] for option in step["oneOf"]}
    assert refs == {"#/$defs/EmailSpec", "#/$defs/WebhookSpec"}
