"""The Resend stand-in's `POST /emails` (tests/standins/resend.py): it refuses a body against
Resend's schema and answers errors as Resend does, remembers an Idempotency-Key for its window only,
and refuses a fault it does not know."""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.standins.resend import ResendStandin

GOOD_BODY = {"from": "a@acme.dev", "to": "b@example.com", "subject": "Hi", "text": "Hello"}
NO_SUBJECT = {name: value for name, value in GOOD_BODY.items() if name != "subject"}
FIFTY_ONE = [f"u{i}@example.com" for i in range(51)]
BAD_VARIABLE = {"id": "tmpl_1", "variables": {"a": [1]}}


@pytest.fixture
def standin(resend: ResendStandin) -> Iterator[ResendStandin]:
    """The session's stand-in (tests/conftest.py's `resend`), emptied before and after."""
    yield resend
    resend.reset()


@pytest.mark.parametrize(
    ("body", "status", "name", "field"),
    [
        (NO_SUBJECT, 422, "missing_required_field", "subject"),
        ({**GOOD_BODY, "to": []}, 422, "validation_error", "to"),
        ({**GOOD_BODY, "to": FIFTY_ONE}, 422, "validation_error", "to"),
        ({**GOOD_BODY, "headers": ["X-A: 1"]}, 422, "validation_error", "headers"),
        ({**GOOD_BODY, "tags": [{"name": 1}]}, 422, "validation_error", "tags[0].name"),
        ({**GOOD_BODY, "template": {}}, 422, "missing_required_field", "template.id"),
        ({**GOOD_BODY, "template": BAD_VARIABLE}, 422, "validation_error", "template.variables.a"),
        ({**GOOD_BODY, "cc": 5}, 422, "validation_error", "cc"),
        (["not", "an", "object"], 400, "validation_error", None),
    ],
)
def test_the_standin_refuses_bodies_against_the_schema(
    standin: ResendStandin, body: Any, status: int, name: str, field: str | None
):
    response = post(standin, json=body)

    assert response.status_code == status
    error = response.json()
    assert (error["statusCode"], error["name"]) == (status, name)
    if field is not None:
        assert f"`{field}`" in error["message"]
    assert standin.inbox == []


def test_the_standin_accepts_a_minimal_valid_body(standin: ResendStandin):
    response = post(standin, json=GOOD_BODY)

    assert response.status_code == 200
    assert standin.inbox[0]["id"] == response.json()["id"]


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "name"),
    [
        ("POST", "/emails", {"Authorization": ""}, 401, "missing_api_key"),
        ("POST", "/emails", {"Idempotency-Key": "k" * 257}, 400, "invalid_idempotency_key"),
        ("POST", "/emails", {"Idempotency-Key": ""}, 400, "invalid_idempotency_key"),
        ("GET", "/emails", {}, 405, "method_not_allowed"),
        ("POST", "/nowhere", {}, 404, "not_found"),
    ],
)
def test_the_standin_answers_errors_like_resend(
    standin: ResendStandin, method: str, path: str, headers: dict[str, str], status: int, name: str
):
    response = post(standin, json=GOOD_BODY, method=method, path=path, headers=headers)

    assert response.status_code == status
    assert response.json()["name"] == name
    assert standin.requests == 1


def test_the_standin_forgets_keys_after_the_window(standin: ResendStandin):
    standin.app.state.idempotency_window_s = 0
    first = post(standin, json=GOOD_BODY, headers={"Idempotency-Key": "k1"})
    time.sleep(0.01)
    second = post(standin, json=GOOD_BODY, headers={"Idempotency-Key": "k1"})

    assert first.json()["id"] != second.json()["id"]
    assert len(standin.inbox) == 2


def test_an_unknown_fault_is_refused(standin: ResendStandin):
    with pytest.raises(ValueError, match="unknown fault"):
        standin.script(("explode",))


def post(
    standin: ResendStandin,
    *,
    json: Any,
    method: str = "POST",
    path: str = "/emails",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {"Authorization": f"Bearer {standin.api_key}", **(headers or {})}
    with httpx.Client(base_url=standin.url, timeout=5.0) as http:
        return http.request(method, path, json=json, headers=sent)
