"""The operator tools of the `activation` command: preview, simulate and send-test-webhook, run as
an operator runs them (env settings, the shipped loops), against real parts."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.cli.main import main
from app.main import create_app
from app.settings import Settings
from tests.conftest import (
    API_KEY,
    AUTH,
    FIXTURES,
    SHIPPED_LOOPS,
    SIGNING_SECRET,
    free_port,
    write_files,
)
from tests.standins.upstash import serve
from tests.support.processes import seed_activated_user
from tests.support.within import write_loops

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """`activation ARGS...` in this process, with the given settings as environment variables."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("LOOPS_DIR", str(SHIPPED_LOOPS))

    def activation(*args: str, **env: str) -> tuple[int, str, str]:
        for name, value in env.items():
            monkeypatch.setenv(name.upper(), value)
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return activation


@pytest.mark.parametrize("command", ["preview", "simulate", "send-test-webhook"])
def test_every_tool_has_help_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert f"example:\n  activation {command}" in capsys.readouterr().out


def test_preview_renders_subject_html_and_text_for_a_sample_user(run: Run) -> None:
    code, out, _ = run("preview", "activation_welcome")
    assert code == 0
    assert "Subject: Welcome aboard, Ada Lovelace!" in out
    assert "Loop:    activation step 0 (action)" in out
    assert "--- text ---\nHi Ada Lovelace," in out
    assert "--- html ---\n<p>Hi Ada Lovelace,</p>" in out


def test_preview_writes_a_page_to_open_in_a_browser(run: Run, tmp_path: Path) -> None:
    code, out, _ = run("preview", "activation_nudge", "--out", str(tmp_path / "nudge.html"))
    assert code == 0
    assert "wrote" in out
    assert "--- html ---" not in out
    page = (tmp_path / "nudge.html").read_text()
    assert "<h2>Your first project takes two minutes</h2>" in page
    assert '<iframe sandbox title="HTML part of Your first project' in page


def test_preview_for_a_clerk_user_file(run: Run) -> None:
    code, out, _ = run(
        "preview", "activation_tips", "--user", str(FIXTURES / "clerk_user_created.json")
    )
    assert code == 0
    assert "To:      example@example.org" in out
    assert "Subject: Example, three tips for your next project" in out


def test_preview_for_a_stored_user(run: Run, redis_url: str, key_prefix: str) -> None:
    seed_activated_user(redis_url, key_prefix)
    uid = json.loads((FIXTURES / "clerk_user_created.json").read_text())["data"]["id"]
    code, out, _ = run("preview", "activation_welcome", "--user-id", uid, redis_url=redis_url,
                       key_prefix=key_prefix)  # fmt: skip
    assert code == 0
    assert "Subject: Welcome aboard, Example Example!" in out

    code, _, err = run("preview", "activation_welcome", "--user-id", "user_nobody")
    assert code == 1
    assert err == "activation preview: no stored user 'user_nobody' in redis storage\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["preview", "nope"], "no template 'nope' (known: activation_nudge, activation_tips"),
        (["preview", "activation_welcome", "--user", "missing.json"], "missing.json: not a user"),
        (["preview", "activation_welcome", "--loop", "x"], "no loop 'x' (known: activation,"),
        (["simulate", "--loop", "x"], "no loop 'x' (known: activation, milestone_ten_projects, mi"),
        (["simulate", "--loop", "activation", "--advance", "5 min"], "is not a duration"),
        (["simulate", "--loop", "activation", "--actions", "a@soon"], "is not name[*count]"),
        (["send-test-webhook", "--url", "http://127.0.0.1:9"], "CLERK_WEBHOOK_SIGNING_SECRET is"),
    ],
)
def test_errors_are_one_line_and_exit_1(run: Run, args: list[str], error: str) -> None:
    code, _, err = run(*args)
    assert code == 1
    assert len(err.splitlines()) == 1
    assert error in err


def test_preview_of_a_template_that_does_not_exist_says_only_that(run: Run) -> None:
    code, out, err = run("preview", "nosuch")
    assert (code, out) == (1, "")
    assert err.startswith("activation preview: no template 'nosuch' (known: activation_nudge, ")

    code, out, err = run("preview", "activation_welcom")
    assert (code, out) == (1, "")
    assert err.startswith(
        "activation preview: no template 'activation_welcom': did you mean "
        "'activation_welcome'? (known: activation_nudge, "
    )


def test_simulate_fails_when_an_email_breaks_on_the_sample_user(run: Run, tmp_path: Path) -> None:
    """Data the checks at load cannot know of: the timeline is shown, and the exit is 1."""
    folder = write_files(
        tmp_path / "loops",
        {
            "plan.yaml": """
                type: milestone
                steps:
                  - trigger: {type: action, action: plan_changed}
                    action: {type: email, template: thanks}
                """,
            "templates/thanks.html": """
                ---
                subject: Thanks
                ---
                <p>{{ user.public_metadata.seats }}</p>
                """,
        },
    )
    code, out, err = run("simulate", "--loop", "plan", "--actions", "plan_changed@1m",
                         loops_dir=str(folder))  # fmt: skip

    assert code == 1
    assert "     +1m  email failed: " in out
    assert err.splitlines() == [
        "activation simulate: 1 email(s) failed: template 'thanks': UndefinedError: "
        "'dict object' has no attribute 'seats'"
    ]


def test_simulate_prints_the_timeline_of_an_activation(run: Run) -> None:
    code, out, _ = run("simulate", "--loop", "activation", "--actions", "first_project_created@2m")
    assert code == 0
    assert out.splitlines() == [
        "loop activation, user user_simulated, virtual clock (a dry run: nothing is sent)",
        "     +0s  signs up (Clerk user.created)",
        "     +0s  step activation/0 waiting; deadline +5m",
        "     +2m  does first_project_created",
        "     +2m  step activation/0 fired -> email activation_welcome queued",
        "     +2m  step activation/1 waiting (starts at +2d2m)",
        '     +2m  email ready, not sent (dry run): "Welcome aboard, Ada Lovelace!" to '
        "ada@example.com (activation_welcome)",
        "   +2d2m  step activation/1 fired -> email activation_tips queued",
        '   +2d2m  email ready, not sent (dry run): "Ada, three tips for your next project" to '
        "ada@example.com (activation_tips)",
    ]


def test_simulate_stops_where_told_and_touches_no_real_storage_or_mail(
    run: Run, redis_url: str, key_prefix: str
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # a Resend nobody serves: a send would fail
    code, out, _ = run(
        "simulate", "--loop", "activation", "--user-id", "user_trial", "--advance", "10m",
        redis_url=redis_url, key_prefix=key_prefix, resend_api_key="re_test",
        resend_api_url=nowhere, email_from="Acme <hello@acme.dev>",
    )  # fmt: skip
    assert code == 0
    assert "loop activation, user user_trial" in out
    assert "+5m  step activation/0 timed out -> email activation_nudge queued" in out
    assert 'not sent (dry run): "Your first project takes two minutes"' in out
    assert "activation_tips" not in out
    client = redis.Redis.from_url(redis_url)
    assert client.keys(f"{key_prefix}*") == []
    client.close()


def test_simulate_a_milestone(run: Run) -> None:
    code, out, _ = run(
        "simulate", "--loop", "milestone_ten_projects", "--actions", "project_created*10@1h"
    )
    assert code == 0
    assert "     +1h  does project_created (x10)" in out
    assert '"Ten projects, Ada! 🎉"' in out


def test_simulate_shows_a_window_and_the_step_it_closes(run: Run, tmp_path: Path) -> None:
    folder = str(write_loops(tmp_path / "loops"))
    code, out, _ = run("simulate", "--loop", "three_projects", "--actions",
                       "project_created*2@1d,project_created@8d", loops_dir=folder)  # fmt: skip
    assert code == 0
    assert out.splitlines()[1:] == [
        "     +0s  signs up (Clerk user.created)",
        "     +0s  step three_projects/0 trigger counts project_created x3 within 7d of signup: "
        "until +7d",
        "     +1d  does project_created (x2)",
        "     +7d  step three_projects/0 closed (its within window ended before the count was "
        "reached: never entered)",
        "     +8d  does project_created",
    ]

    code, out, _ = run("simulate", "--loop", "three_projects", "--actions",
                       "project_created*2@1d,project_created@6d", loops_dir=folder)  # fmt: skip
    assert code == 0
    assert "     +6d  step three_projects/0 fired -> email three_projects queued" in out
    assert "closed" not in out


def test_preview_shows_the_window_of_the_step_that_sends_the_template(
    run: Run, tmp_path: Path
) -> None:
    folder = str(write_loops(tmp_path / "loops"))
    clerk_user = str(FIXTURES / "clerk_user_created.json")  # created 2022-05-31 15:56:31 UTC
    code, out, _ = run("preview", "three_projects", "--loop", "three_projects", "--user",
                       clerk_user, loops_dir=folder)  # fmt: skip
    assert code == 0
    assert "Loop:    three_projects step 0 (action)\n" in out
    assert (
        "Window:  trigger: project_created x3 within 7d of signup: until 2022-06-07 15:56 UTC\n"
    ) in out

    code, out, _ = run("preview", "nudge", "--loop", "invited", loops_dir=folder)
    assert code == 0
    assert "Window:  condition: invite_sent or link_shared within 1d of signup: until 20" in out

    code, out, _ = run("preview", "tips", loops_dir=folder)  # first_week's step 1: no window
    assert (code, "Window:" in out) == (0, False)


@pytest.fixture
def served(make_settings: Callable[..., Settings]) -> Iterator[str]:
    with serve(create_app(make_settings(worker_in_process=False))) as url:
        yield url


@pytest.mark.parametrize("transport", ["embedded"])
def test_send_test_webhook_creates_a_user(run: Run, served: str, transport: str) -> None:
    url = f"{served}/webhooks/clerk"
    code, out, _ = run("send-test-webhook", "--url", url, "--email", "jane@example.com",
                       clerk_webhook_signing_secret=SIGNING_SECRET)  # fmt: skip
    assert code == 0
    assert '200 OK\n{"status":"created"}' in out
    user_id = out.split("sent user.created for ", 1)[1].split()[0]
    state = httpx.get(f"{served}/v1/users/{user_id}", headers=AUTH, timeout=10).json()
    assert state["profile"]["email"] == "jane@example.com"
    assert state["registered_at"] is not None
    assert API_KEY not in out


@pytest.mark.parametrize("transport", ["embedded"])
def test_send_test_webhook_with_the_wrong_secret_shows_the_refusal(
    run: Run, served: str, transport: str
) -> None:
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    code, out, _ = run("send-test-webhook", "--url", f"{served}/webhooks/clerk",
                       clerk_webhook_signing_secret=other)  # fmt: skip
    assert code == 1
    assert "400 Bad Request" in out


def test_send_test_webhook_to_nothing_is_one_line(run: Run) -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks/clerk"
    code, _, err = run(
        "send-test-webhook", "--url", url, clerk_webhook_signing_secret=SIGNING_SECRET
    )
    assert code == 1
    assert err.startswith(f"activation send-test-webhook: cannot post to {url}: ")
    assert len(err.splitlines()) == 1
