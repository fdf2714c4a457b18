"""Developing against a local Upstash-compatible server: such a server forwards every script to
a stock Redis, which refuses Upstash's `allow-key-locking` flag, reports NOSCRIPT as an HTTP 500
of its own wording, and ignores `Upstash-Encoding: base64`. The service notices the refusal once,
says so once, and works: a signup and an action end in the welcome."""

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from app.settings import Settings
from app.storage.scripts import CLAIM, RECORD_USER
from tests.conftest import (
    AUTH,
    UPSTASH_TOKEN,
    FakeClock,
    clerk_event,
    post_webhook,
    resend_settings,
    running,
    worker_of,
)
from tests.standins.resend import ResendStandin
from tests.standins.upstash import create_standin, serve

USER = "user_local_upstash"


@pytest.fixture
def local_server(redis_url: str) -> Iterator[tuple[str, object]]:
    """The Upstash stand-in behaving as a local Upstash-compatible server (`local` knob)."""
    standin = create_standin(redis_url, UPSTASH_TOKEN)
    standin.state.local = True
    with serve(standin) as url:
        yield url, standin


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_the_service_runs_against_a_local_upstash_compatible_server(
    make_settings: Callable[..., Settings],
    local_server: tuple[str, object],
    redis_client: object,
    resend: ResendStandin,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, standin = local_server
    redis_client.script_flush()  # type: ignore[attr-defined]  # NOSCRIPT first, as on a fresh server
    settings = make_settings(
        upstash_redis_rest_url=url,
        upstash_redis_rest_token=UPSTASH_TOKEN,
        **resend_settings(resend),
    )
    with caplog.at_level(logging.INFO, logger="app.storage"):
        async with running(settings, clock) as (app, http):
            signup = json.dumps(clerk_event("created", USER)).encode()
            assert (await post_webhook(http, signup)).status_code == 200
            action = {"user_id": USER, "action": "first_project_created"}
            assert (await http.post("/v1/actions", json=action, headers=AUTH)).status_code == 202
            await worker_of(app).drain()
            state = await http.get(f"/v1/users/{USER}", headers=AUTH)

    assert state.status_code == 200, state.text
    assert [email["status"] for email in state.json()["emails"]] == ["sent"]
    assert resend.jobs == [f"email|{USER}|activation|0|action"]
    refusals = [r for r in caplog.records if "allow-key-locking" in r.getMessage()]
    assert len(refusals) == 1  # noticed and said once
    received = [body for path, body in standin.state.received if path == "/"]  # type: ignore[attr-defined]
    flagged = {RECORD_USER.key_locking_source, CLAIM.key_locking_source}
    later = [command for command in received[-5:] if command[0] == "EVAL"]
    assert not any(command[1] in flagged for command in later)  # plain scripts from then on
