"""The `activation` command: check, worker (burst, SIGTERM) and dead letters, as a user runs it."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.cli.main import main
from app.observability.startup import describe_configuration
from app.settings import load_settings
from tests.conftest import (
    API_KEY,
    AUTH,
    SHIPPED_LOOPS,
    SIGNING_SECRET,
    clerk_event,
    post_webhook,
    store_of,
    worker_of,
    write_files,
)
from tests.support.constants import REPO
from tests.support.processes import activation, env_for, seed_activated_user
from tests.support.storage import clear_storage_env


def test_check_accepts_the_shipped_loops(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(SHIPPED_LOOPS)]) == 0


def test_check_names_the_file_and_field_of_a_bad_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "hi.html").write_text("---\nsubject: hi\n---\n<p>hi</p>\n")
    (tmp_path / "welcome.yaml").write_text(
        "type: activation\nopinion: x\nsteps:\n  - trigger: {type: clerk, event: user.created}\n"
        "    condition: {type: action, action: a, timeout: 5 min}\n"
        "    action: {type: email, template: hi}\n"
    )
    assert main(["check", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip()
    assert "welcome.yaml: steps[0].condition.timeout: '5 min' is not a duration" in error
    assert len(error.splitlines()) == 1


@pytest.mark.parametrize("command", ["serve", "worker", "check", "dead"])
def test_every_command_has_help_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "example:" in capsys.readouterr().out


def outbox(redis_url: str, key_prefix: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [json.loads(entry) for entry in client.lrange(f"{key_prefix}outbox", 0, -1)]
    finally:
        client.close()


def test_worker_burst_sends_what_is_due_and_exits(redis_url: str, key_prefix: str) -> None:
    seed_activated_user(redis_url, key_prefix)
    result = activation("worker", "--burst", env=env_for(redis_url, key_prefix))

    assert result.returncode == 0, result.stderr
    [sent] = outbox(redis_url, key_prefix)
    assert sent["subject"] == "Welcome aboard, Example Example!"
    assert "burst: 1 job(s) run" in result.stderr  # the user's turn: decided and sent
    assert "example@example.org" not in result.stderr  # addresses are masked in logs


def test_worker_stops_on_sigterm(redis_url: str, key_prefix: str) -> None:
    command = [sys.executable, "-m", "app.cli", "worker"]
    process = subprocess.Popen(
        command, env=env_for(redis_url, key_prefix), cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        while "worker running" not in process.stderr.readline():
            assert time.monotonic() < deadline, "the worker did not start"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def test_dead_letters_are_listed_and_retried(
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env_for(redis_url, key_prefix).items():
        monkeypatch.setenv(name, value)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    job = {
        "template": "activation_welcome", "status": "failed", "queued_at": 1, "due_at": 1,
        "attempts": 4, "last_error": "Resend 422: invalid from",
    }  # fmt: skip
    job_id = "email|user_d|activation|0|action"
    client.hset(f"{key_prefix}{{user_d}}", "j:activation|0|action", json.dumps(job))
    client.zadd(f"{key_prefix}dead", {job_id: 1})

    assert main(["dead", "list"]) == 0
    assert "email|user_d|activation|0|action\tattempts=4\tResend 422" in capsys.readouterr().out
    assert main(["dead", "retry", "no-such-job"]) == 1
    assert main(["dead", "retry", "--all"]) == 0
    assert client.zcard(f"{key_prefix}dead") == 0
    capsys.readouterr()
    assert main(["dead", "retry", "--all"]) == 0  # nothing dead: said so, not an error
    assert capsys.readouterr().out == "no dead-letter jobs: nothing to retry\n"
    assert client.zscore(f"{key_prefix}schedule", "eval|user_d") is not None  # the user's turn
    queued = json.loads(client.hget(f"{key_prefix}{{user_d}}", "j:activation|0|action") or "{}")
    assert (queued.get("status", "queued"), queued.get("attempts", 0)) == ("queued", 0)
    client.close()


@pytest.mark.parametrize(
    "command",
    [["dead", "list"], ["suppress", "list"], ["worker", "--burst"], ["dead", "retry", "x"]],
)
def test_commands_on_stored_data_refuse_the_embedded_store(
    command: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With no REDIS_URL or Upstash, each process has its own empty in-memory store: these
    commands would silently work on that, never on the web app's data."""
    monkeypatch.chdir(tmp_path)  # no .env here
    clear_storage_env(monkeypatch)
    monkeypatch.setenv("LOOPS_DIR", str(SHIPPED_LOOPS))
    assert main(command) == 1
    error = capsys.readouterr().err
    assert "no shared storage: set REDIS_URL or UPSTASH_REDIS_REST_URL" in error
    assert len(error.strip().splitlines()) == 1


def test_serve_takes_host_and_port_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the Procfile and hosting platforms set them; the flags still win."""
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("HOST", "0.0.0.0")
    served = serve_captured(monkeypatch)
    assert (served["host"], served["port"]) == ("0.0.0.0", 9123)
    assert served["http"] == "app.web.head_limit:HeadLimitedHttpTools"  # a request's head bounded
    assert serve_captured(monkeypatch, "--port", "9000")["port"] == 9000


def serve_captured(monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    """`activation serve ARGS` up to the point uvicorn would start: what it would be given, the
    app as uvicorn would load it in the process `serve` prepared (its own environment)."""
    import uvicorn

    from app.main import create_app

    def run(app: str, **options: Any) -> None:
        assert app == "app.main:app"
        served.update(options, app=create_app())  # the module's app, built in this environment

    served: dict[str, Any] = {}
    monkeypatch.setattr(os, "environ", dict(os.environ))  # what `serve` sets stays in the test
    monkeypatch.setattr(uvicorn, "run", run)
    assert main(["serve", *args]) == 0
    return served


def trial_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A trial as the quick start's: embedded store, outbox, no PUBLIC_URL, HOST or PORT."""
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in ("PUBLIC_URL", "HOST", "PORT", "RESEND_API_KEY", "EMAIL_FROM"):
        monkeypatch.delenv(name, raising=False)
    clear_storage_env(monkeypatch)
    monkeypatch.setenv("LOOPS_DIR", str(SHIPPED_LOOPS))
    monkeypatch.setenv("CLERK_WEBHOOK_SIGNING_SECRET", SIGNING_SECRET)
    monkeypatch.setenv("ACTIVATION_API_KEY", API_KEY)
    monkeypatch.setenv("WORKER_IN_PROCESS", "false")  # the test drains the worker itself


async def test_served_on_another_port_the_unsubscribe_links_name_that_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`PORT=53117 make run` (`activation serve --host 127.0.0.1 --port 53117`) without
    PUBLIC_URL: a welcome's unsubscribe link names 127.0.0.1:53117, and startup says so."""
    trial_environment(monkeypatch, tmp_path)
    served = serve_captured(monkeypatch, "--host", "127.0.0.1", "--port", "53117")
    app = served["app"]
    assert (served["host"], served["port"]) == ("127.0.0.1", 53117)

    with caplog.at_level(logging.INFO, logger="app"):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                assert (
                    await post_webhook(http, json.dumps(clerk_event("created")).encode())
                ).is_success
                action = {
                    "user_id": clerk_event("created")["data"]["id"],
                    "action": "first_project_created",
                }
                assert (
                    await http.post("/v1/actions", json=action, headers=AUTH)
                ).status_code == 202
            await worker_of(app).drain()
            [email] = await store_of(app).queries.outbox()

    link = "http://127.0.0.1:53117/unsubscribe?token="
    assert email["headers"]["List-Unsubscribe"].startswith(f"<{link}")
    assert f'href="{link}' in email["html"]
    assert (
        f"no PUBLIC_URL, so unsubscribe links start {link.split('/unsubscribe')[0]}" in caplog.text
    )


def test_served_on_every_interface_the_links_name_localhost(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Procfile's `activation serve --host 0.0.0.0`, PORT from the platform: no link can
    name every interface, so links name localhost, at the port served on."""
    trial_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("PORT", "53117")
    serve_captured(monkeypatch, "--host", "0.0.0.0")
    settings = load_settings()  # as the served process reads them
    assert settings.links_url == "http://localhost:53117"
    _, _, paragraph = describe_configuration(settings)
    assert "every interface (HOST 0.0.0.0)" in paragraph
    assert "links start http://localhost:53117" in paragraph


def test_public_url_wins_over_the_address_served_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trial_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("PUBLIC_URL", "https://loops.acme.dev/")
    serve_captured(monkeypatch, "--port", "53117")
    settings = load_settings()  # as the served process reads them
    assert settings.links_url == "https://loops.acme.dev"


def test_a_separate_worker_links_to_the_port_in_port(redis_url: str, key_prefix: str) -> None:
    """`activation worker` serves nothing: without PUBLIC_URL its links name HOST and PORT, the
    web app's address when both processes are given the same environment."""
    seed_activated_user(redis_url, key_prefix)
    env = env_for(redis_url, key_prefix, PORT="53117")
    result = activation("worker", "--burst", env=env)

    assert result.returncode == 0, result.stderr
    [sent] = outbox(redis_url, key_prefix)
    assert sent["headers"]["List-Unsubscribe"].startswith("<http://127.0.0.1:53117/unsubscribe?")
    assert "unsubscribe links start http://127.0.0.1:53117" in result.stderr


def test_a_loop_file_with_several_mistakes_reports_them_all(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "welcome.html").write_text("---\nsubject: hi\n---\nhi\n")
    (tmp_path / "welcome.yaml").write_text(
        "type: activation\nopinon: typo\nsteps:\n"
        "  - trigger: {type: database, table: users, event: insert}\n"
        "    condition: {type: action, action: x, timeout: 5 min}\n"
        "    action: {type: email, template: welcome}\n"
        "recovery: {retries: -1}\n"
    )
    done = activation("check", str(tmp_path), env={**os.environ, "LOOPS_DIR": str(tmp_path)})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    for line, problem in zip(lines, [
        "welcome.yaml: opinon: unknown key; did you mean 'opinion'?",
        "welcome.yaml: steps[0].condition.timeout: '5 min' is not a duration like 30s, 5m, 2h, 3d",
        "welcome.yaml: recovery.retries: Input should be greater than or equal to 0",
    ], strict=True):  # fmt: skip
        assert line.endswith(problem), lines


PLANTED = {  # four mistakes in three loop files, and a broken template
    "welcome.yaml": """
        type: activation
        steps:
          - trigger: {type: database, table: users, event: insert}
            condition:
              type: action
              action: first_project_created
              timout: 5m
              where: {members: {gtee: 3}}
            action: {type: email, template: hi}
        """,
    "ten.yaml": """
        type: milestone
        steps:
          - trigger: {type: action, action: project_created, count: 10}
            action: {type: email, template: hi}
        recovery: {retries: -1}
        """,
    "upgraded.yaml": """
        type: milestone
        steps:
          - trigger: {type: action, action: plan_changed}
            action:
              type: email
              template: hi
              personalization: {name: "{{ user.name }}"}
              variants: [{when: {public_metadata.plan: team}, template: team}]
        """,
    "templates/hi.html": "---\nsubject: hi\n---\n<p>hi</p>\n",
    "templates/team.html": "---\nsubject: hi\n---\n<p>Hi {{ nmae }}</p>\n",
    "templates/broken.html": "---\nsubject: hi\n---\n<p>{{ name | }}</p>\n",
}


def test_check_reports_every_mistake_in_every_file_in_one_run(tmp_path: Path) -> None:
    folder = write_files(tmp_path, PLANTED)
    done = activation("check", str(folder), env={**os.environ, "LOOPS_DIR": str(folder)})

    assert done.returncode == 1
    lines = done.stderr.strip().removeprefix("activation check: ").splitlines()
    assert [line.removeprefix(f"{folder}/").split(": ")[:2] for line in lines] == [
        ["ten.yaml", "recovery.retries"],
        ["welcome.yaml", "steps[0].condition.timout"],
        ["welcome.yaml", "steps[0].condition.where"],
        ["templates/broken.html:4", "expected token 'name', got 'end of print statement'"],
        ["upgraded.yaml", "steps[0].action.variants[0]"],
    ]
    assert "unknown operator 'gtee': did you mean 'gte'?" in lines[2]
    assert lines[4].endswith(
        f"{folder}/templates/team.html:4: unknown variable 'nmae'; known: personalization keys "
        "(name) and user, loop, app_url, unsubscribe_url"
    )


# --- a command pays only for what it uses --------------------------------------------------------

HEAVY = ("pydantic", "fastapi", "redis", "fakeredis", "svix", "resend", "clerk_backend_api",
         "jinja2", "sqlglot", "httpx", "uvicorn")  # fmt: skip


def imported_by(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """The top-level packages `activation ARGS` imports, as `-X importtime` reports them."""
    command = [sys.executable, "-X", "importtime", "-m", "app.cli", *args]
    result = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    names = (line.rpartition("|")[2].strip() for line in result.stderr.splitlines())
    return {name.split(".")[0] for name in names if name and not name.startswith("import")}


def test_help_imports_none_of_the_app_s_libraries() -> None:
    """`activation --help` (bench/ times it) builds its parser from names alone."""
    assert not set(HEAVY) & imported_by("--help")


def test_check_on_the_embedded_store_reads_no_storage_and_no_web(tmp_path: Path) -> None:
    """`activation check` loads the loop folder and nothing of storage, the web app or the
    senders (bench/ times it)."""
    env = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME")}
    imported = imported_by("check", str(SHIPPED_LOOPS), env={**env, "LOOPS_DIR": "loops"})
    assert {"pydantic", "jinja2", "sqlglot"} <= imported  # the loop folder, read
    assert not {"fastapi", "redis", "fakeredis", "svix", "resend", "clerk_backend_api"} & imported
