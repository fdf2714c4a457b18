"""A local Resend API for tests: `POST /emails` and `POST /emails/batch`, checked against
Resend's OpenAPI schema.

This module owns `create_standin(api_key)` (the Starlette app), `reset(app)`, and `ResendStandin` /
`run_standin(api_key)`, which serve it on a real port (with `tests.standins.upstash.serve`) and
hand tests its URL, inbox, counters, fault script and chaos mode.

Behaviour, as Resend's API answers (https://resend.com/docs/api-reference/errors):

* Auth: no ``Authorization: Bearer ...`` → 401 ``missing_api_key``; another key → 403
  ``invalid_api_key``.
* Body: a JSON object valid against ``SendEmailRequest`` in
  ``tests/fixtures/resend_emails_schema.json`` (the keywords it uses: type, required, properties,
  additionalProperties, items, minItems/maxItems, min/maxLength, oneOf, allOf, $ref), plus rules
  Resend enforces that the schema only describes: addresses in from/to/cc/bcc/reply_to look like
  ``a@b.c`` or ``Name <a@b.c>``; tag names and values are 1-256 of ``[A-Za-z0-9_-]``.
  Not a JSON object → 400 ``validation_error``; a required field missing → 422
  ``missing_required_field``; anything else → 422 ``validation_error``. Messages name the field.
* ``Idempotency-Key`` (1-256 chars, else 400 ``invalid_idempotency_key``): the same key with the
  same payload within ``idempotency_window_s`` → 200 with the first id and no new inbox entry;
  another payload → 409 ``invalid_idempotent_request``; while a request holding the key is still
  being handled (a "hang" fault) → 409 ``concurrent_idempotent_requests``. Only accepted emails
  store their key, so a refused request may be retried with it.
* Accepted: 200 ``{"id": "<uuid4>"}`` and one entry appended to ``app.state.inbox``:
  ``{"id", "body" (the parsed JSON), "idempotency_key" (or None), "received_at_ms" (when it was
  recorded), "arrived_at_ms" (when its request arrived, before any hang; epoch ms both)}``.
* Errors are ``{"statusCode", "name", "message"}``, messages from
  ``tests/fixtures/resend_error_examples.json``; other paths 404 ``not_found``, other methods
  405 ``method_not_allowed``.

Batch (https://resend.com/docs/api-reference/emails/send-batch-emails), ``POST /emails/batch``:

* Auth as above. Body: a JSON array of 1-100 emails (not JSON → 400 ``validation_error``; not
  an array, empty or longer → 422 ``validation_error``), each checked as an ``/emails`` body, its
  messages' field paths prefixed with its index (``Invalid `[2].to` field...``); an email with
  ``attachments`` or ``scheduled_at`` is refused too (422 ``validation_error``), as Resend does.
* ``x-batch-validation``: ``strict`` (also when absent) or ``permissive``, else 422
  ``validation_error``. Strict: one invalid email refuses the request with its error, nothing
  accepted; success is ``{"data": [{"id"}, ...]}``. Permissive: the valid emails are accepted
  and the answer is 200 ``{"data": [{"id"} per accepted email, in order], "errors": [{"index",
  "message"} per refused one]}`` (even if every email is refused).
* ``Idempotency-Key`` as for ``/emails``, the payload being the array and the validation mode:
  a replay gets exactly the first 200 answer (same ids and errors), nothing new in the inbox. Batch
  keys live apart from ``/emails`` keys (``app.state.batch_idempotency``, ``batch_in_flight``): as
  far as we know Resend scopes a key to its endpoint, so the same key on both paths is two
  unrelated requests.
* Each accepted email goes to ``app.state.inbox`` as an ``/emails`` one does, plus ``"batch":
  True``; ``app.state.batches`` gets one entry per accepted batch request (replays aside):
  ``{"key" (or None), "size" (emails in it), "accepted", "validation" ("strict"|"permissive")}``.

Fault script: ``app.state.script`` is a list of faults; each request to ``/emails`` or
``/emails/batch`` takes the first one (if any), so ``script(("status", 500), ("status", 500))``
fails two requests, then lets the rest through. A fault is a tuple:

* ``("status", code)``: answer ``code`` at once, before auth or validation. Statuses Resend uses
  (400 401 403 404 405 409 422 429 500) get its JSON error body with the usual name (409:
  ``concurrent_idempotent_requests``); others (502, 503, 504) an HTML page, as a proxy would.
* ``("status", code, retry_after_s)``: the same plus a ``retry-after`` header (None: no header).
* ``("status", code, retry_after_s, name[, message])``: with this error name (and message)
  instead, e.g. ``("status", 409, None, "invalid_idempotent_request")``.
* ``("hang", seconds)``: answer nothing for ``seconds`` while holding the request's
  Idempotency-Key as in flight. If the client gives up meanwhile, nothing is recorded;
  otherwise the request is then handled normally.
* ``("accept_then_fail", status)``: handle the request normally (an accepted email goes to the
  inbox and its key is stored, so a retry gets the same id, or a batch the same answer), then
  answer ``status`` with a Resend error body instead of the 200: "Resend accepted but the
  sender never learned".
* ``("accept_then_fail", "drop")``: the same, but send the 200's headers and drop the connection
  before the body (uvicorn logs "ASGI callable returned without completing response").

Chaos (soak runs, ``tests/soak``): ``app.state.chaos`` (``ResendStandin.chaos(Chaos(...))``), when
set, draws a fault at random for each request the script leaves alone: ``("status", 500)`` at
``error_rate``, ``("status", 429, retry_after_s)`` at ``limit_rate`` (retry-after drawn from
``retry_after_s``), ``("accept_then_fail", 500)`` at ``accept_then_fail_rate`` and ``("hang",
seconds)`` at ``latency_rate`` (seconds drawn from ``latency_s``: added latency, or a timeout when
longer than the client waits); else none. Its draws are seeded (``seed``).

Team rate limit: ``app.state.rate_limit`` (``ResendStandin.limit(n)``), when set, is Resend's
per-second limit, shared by both paths: every answer on them carries ``ratelimit-limit``,
``ratelimit-remaining`` and ``ratelimit-reset`` (seconds to the next 1 s window), and a request
past the limit in its window is answered 429 ``rate_limit_exceeded`` with ``retry-after``;
``app.state.limited`` counts those. A batch is one request, whatever its size.

Counters: ``requests`` (every HTTP request, any path), ``connections`` (the set of client
``(host, port)`` pairs seen: one per TCP connection, so pooled clients show fewer), ``faults``
(a ``Counter`` of the faults taken, scripted or drawn, by ``fault_name``: ``"500"``, ``"429"``,
``"hang"``, ``"accept_then_fail 500"``...; ``"client left"`` counts hangs the client gave up on).
"""

import asyncio
import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.standins.upstash import serve
from tests.support.constants import FIXTURES

API_KEY = "re_standin_test_key"
IDEMPOTENCY_WINDOW_S = 24 * 3600.0

Fault: TypeAlias = tuple[Any, ...]
Schema: TypeAlias = dict[str, Any]
Problem: TypeAlias = tuple[int, str, str]  # HTTP status, Resend error name, message

# The error name Resend gives each status it uses; other statuses come from a proxy (HTML).
NAMES = {
    400: "validation_error",
    401: "missing_api_key",
    403: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    409: "concurrent_idempotent_requests",
    422: "validation_error",
    429: "rate_limit_exceeded",
    500: "application_error",
}
ADDRESS_FIELDS = ("from", "to", "cc", "bcc", "reply_to")
_MAILBOX = r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>.]+"
ADDRESS = re.compile(rf"{_MAILBOX}|[^<>]*<{_MAILBOX}>")
TAG_TEXT = re.compile(r"[A-Za-z0-9_-]{1,256}")
ADDRESS_FORMAT = (
    "The email address needs to follow the `email@example.com` or "
    "`Name <email@example.com>` format."
)
FAULT_KINDS = ("status", "hang", "accept_then_fail")
BATCH_PATH = "/emails/batch"
BATCH_MAX_EMAILS = 100  # Resend's docs: "up to 100 batch emails at once"; the schema has no bound
BATCH_MODES = ("strict", "permissive")  # `x-batch-validation`, strict when absent
NOT_IN_BATCH = ("attachments", "scheduled_at")  # fields Resend's batch endpoint refuses


def load_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def error_messages() -> dict[str, str]:
    """Resend's message for each error name (the first one its errors page lists)."""
    messages: dict[str, str] = {}
    for example in load_json("resend_error_examples.json")["error_codes_from_docs_errors_page"]:
        messages.setdefault(example["name"], example["message"])
    return messages


MESSAGES = error_messages()


# --- the schema checker ---------------------------------------------------------------------


def is_type(value: object, expected: str) -> bool:
    if expected in ("number", "integer"):
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        return numeric and (expected == "number" or float(value).is_integer())  # type: ignore[arg-type]
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    return isinstance(value, kinds[expected])


def first(problems: Iterable[Problem | None]) -> Problem | None:
    return next((problem for problem in problems if problem is not None), None)


def invalid(path: str, reason: str) -> Problem:
    return 422, "validation_error", f"Invalid `{path}` field: {reason}."


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class SchemaChecker:
    """Checks a JSON value against the part of JSON Schema that Resend's `/emails` schema uses."""

    def __init__(self, document: Schema) -> None:
        self.document = document

    def problem(self, value: object, schema: Schema, path: str = "") -> Problem | None:
        """The first way `value` breaks `schema`, or None."""
        schema = self.resolve(schema)
        rules = (self.check_type, self.check_combined, self.check_object, self.check_array)
        return first(rule(value, schema, path) for rule in (*rules, self.check_string))

    def resolve(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            node: Any = self.document
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def check_type(self, value: object, schema: Schema, path: str) -> Problem | None:
        expected = schema.get("type")
        if expected is None or is_type(value, expected):
            return None
        return invalid(path, f"must be of type {expected}")

    def check_combined(self, value: object, schema: Schema, path: str) -> Problem | None:
        found = first(self.problem(value, part, path) for part in schema.get("allOf", []))
        options = schema.get("oneOf")
        if found is None and options is not None:
            matches = sum(self.problem(value, option, path) is None for option in options)
            found = None if matches == 1 else invalid(path, "does not match one allowed form")
        return found

    def check_object(self, value: object, schema: Schema, path: str) -> Problem | None:
        if not isinstance(value, dict):
            return None
        missing = [name for name in schema.get("required", []) if name not in value]
        if missing:
            return 422, "missing_required_field", f"Missing `{join(path, missing[0])}` field."
        return first(self.check_member(value[name], name, schema, path) for name in value)

    def check_member(self, value: object, name: str, schema: Schema, path: str) -> Problem | None:
        member = schema.get("properties", {}).get(name, schema.get("additionalProperties", True))
        if member is False:
            return invalid(join(path, name), "is not allowed")
        return None if member is True else self.problem(value, member, join(path, name))

    def check_array(self, value: object, schema: Schema, path: str) -> Problem | None:
        if not isinstance(value, list):
            return None
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return invalid(path, "has too few or too many items")
        items = schema.get("items")
        if items is None:
            return None
        return first(self.problem(item, items, f"{path}[{i}]") for i, item in enumerate(value))

    def check_string(self, value: object, schema: Schema, path: str) -> Problem | None:
        if not isinstance(value, str):
            return None
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            return invalid(path, "has the wrong length")
        return None


def resend_rules(body: dict[str, Any], path: str = "") -> Problem | None:
    """Rules Resend enforces that its schema only describes in prose (`path`: where `body` is)."""
    return first_address_problem(body, path) or first_tag_problem(body, path)


def first_address_problem(body: dict[str, Any], path: str = "") -> Problem | None:
    for name in ADDRESS_FIELDS:
        given = body.get(name, [])
        for address in [given] if isinstance(given, str) else given:
            if not ADDRESS.fullmatch(address.strip()):
                field = join(path, name)
                return 422, "validation_error", f"Invalid `{field}` field. {ADDRESS_FORMAT}"
    return None


def first_tag_problem(body: dict[str, Any], path: str = "") -> Problem | None:
    for i, tag in enumerate(body.get("tags", [])):
        for part in ("name", "value"):
            if part in tag and not TAG_TEXT.fullmatch(str(tag[part])):
                reason = "may only hold 1-256 ASCII letters, digits, _ or -"
                return invalid(join(path, f"tags[{i}].{part}"), reason)
    return None


class EmailsContract:
    """What `POST /emails` and `POST /emails/batch` accept, read from the OpenAPI document."""

    def __init__(self, document: Schema) -> None:
        self.checker = SchemaChecker(document)
        post = document["paths"]["/emails"]["post"]
        self.body_schema: Schema = post["requestBody"]["content"]["application/json"]["schema"]
        batch = document["paths"][BATCH_PATH]["post"]["requestBody"]["content"]
        self.batch_item_schema: Schema = batch["application/json"]["schema"]["items"]
        key = next(p for p in post["parameters"] if p["name"] == "Idempotency-Key")
        # The schema gives the maximum; Resend's errors page adds the minimum: "1-256 chars".
        self.key_schema: Schema = {"minLength": 1, **key["schema"]}

    def body_problem(self, raw: bytes) -> tuple[dict[str, Any], Problem | None]:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return {}, (400, "validation_error", MESSAGES["validation_error"])
        return body, self.checker.problem(body, self.body_schema) or resend_rules(body)

    def key_problem(self, key: str | None) -> Problem | None:
        if key is None or self.checker.problem(key, self.key_schema) is None:
            return None
        return 400, "invalid_idempotency_key", MESSAGES["invalid_idempotency_key"]

    def batch_problem(self, raw: bytes) -> tuple[list[Any], Problem | None]:
        """A batch's emails, or the problem that refuses the whole request."""
        try:
            emails = json.loads(raw)
        except ValueError:
            return [], (400, "validation_error", MESSAGES["validation_error"])
        if not isinstance(emails, list) or not 1 <= len(emails) <= BATCH_MAX_EMAILS:
            return [], invalid("body", f"must be an array of 1-{BATCH_MAX_EMAILS} emails")
        return emails, None

    def item_problem(self, email: object, index: int) -> Problem | None:
        """The first problem of a batch's email at `index`, its field path prefixed `[index]`."""
        path = f"[{index}]"
        if not isinstance(email, dict):
            return invalid(path, "must be of type object")
        refused = next((name for name in NOT_IN_BATCH if name in email), None)
        if refused is not None:
            return invalid(join(path, refused), "is not supported in batch sending")
        problem = self.checker.problem(email, self.batch_item_schema, path)
        return problem or resend_rules(email, path)


# --- the app --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """An idempotency key's first accepted request."""

    fingerprint: str
    email_id: str
    accepted_at_s: float


@dataclass(frozen=True)
class AcceptedBatch:
    """A batch idempotency key's first 200 answer."""

    fingerprint: str
    answer: dict[str, Any]
    accepted_at_s: float


@dataclass
class Chaos:
    """Random faults, one drawn for each request the script leaves alone (see the module
    docstring); the rates are chances per request, summing to at most 1."""

    error_rate: float = 0.0
    limit_rate: float = 0.0
    accept_then_fail_rate: float = 0.0
    latency_rate: float = 0.0
    retry_after_s: tuple[float, float] = (0.1, 1.0)
    latency_s: tuple[float, float] = (0.05, 1.0)
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def draw(self) -> Fault:
        roll = self.rng.random()
        for rate, fault in self.faults():
            if roll < rate:
                return fault()
            roll -= rate
        return ("none",)

    def faults(self) -> Iterator[tuple[float, Callable[[], Fault]]]:
        yield self.error_rate, lambda: ("status", 500)
        yield self.limit_rate, lambda: ("status", 429, self.seconds(self.retry_after_s))
        yield self.accept_then_fail_rate, lambda: ("accept_then_fail", 500)
        yield self.latency_rate, lambda: ("hang", self.seconds(self.latency_s))

    def seconds(self, span: tuple[float, float]) -> float:
        return round(self.rng.uniform(*span), 3)


def fault_name(fault: Fault) -> str:
    """How `faults` counts a fault: its status, or its kind (and status)."""
    if fault[0] == "status":
        return str(fault[1])
    return fault[0] if fault[0] == "hang" else f"{fault[0]} {fault[1]}"


class CountRequests:
    """ASGI middleware counting every HTTP request and the TCP connections they came over."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            state = scope["app"].state
            state.requests += 1
            state.connections.add(tuple(scope.get("client") or ("?", 0)))
        await self.app(scope, receive, send)


def create_standin(api_key: str = API_KEY) -> Starlette:
    app = Starlette(
        routes=[
            Route("/emails", send_email, methods=["POST"]),
            Route(BATCH_PATH, send_batch, methods=["POST"]),
        ],
        middleware=[Middleware(CountRequests)],
        exception_handlers={404: http_error, 405: http_error},
    )
    app.state.api_key = api_key
    app.state.contract = EmailsContract(load_json("resend_emails_schema.json"))
    reset(app)
    return app


def reset(app: Starlette) -> None:
    """Empty the inbox, the batches, the script, the counters and the idempotency stores."""
    app.state.script = []
    app.state.inbox = []
    app.state.batches = []
    app.state.requests = 0
    app.state.connections = set()
    app.state.idempotency = {}  # /emails: key -> Accepted
    app.state.batch_idempotency = {}  # /emails/batch: key -> AcceptedBatch
    app.state.in_flight = set()  # /emails keys a "hang" holds
    app.state.batch_in_flight = set()  # /emails/batch keys a "hang" holds
    app.state.idempotency_window_s = IDEMPOTENCY_WINDOW_S
    app.state.rate_limit = None
    app.state.window = (0, 0)  # (the window's second, requests in it)
    app.state.limited = 0
    app.state.chaos = None  # Chaos, or None
    app.state.faults = Counter()  # fault_name -> faults taken


async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return error(status, NAMES.get(status, "application_error"))


Acceptor: TypeAlias = Callable[[State, Request, bytes], Response]


async def send_email(request: Request) -> Response:
    return await rate_limited(request, accept)


async def send_batch(request: Request) -> Response:
    return await rate_limited(request, accept_batch)


async def rate_limited(request: Request, acceptor: Acceptor) -> Response:
    """The team limit around handling one request (a batch counts once)."""
    state = request.app.state
    request.state.arrived_at_ms = time.time_ns() // 1_000_000
    raw = await request.body()
    if state.rate_limit is None:
        return await handle(request, raw, acceptor)
    remaining, reset_s = take_rate(state)
    if remaining < 0:
        state.limited += 1
        response = error(429, "rate_limit_exceeded", retry_after_s=max(round(reset_s, 3), 0.001))
    else:
        response = await handle(request, raw, acceptor)
    response.headers["ratelimit-limit"] = str(state.rate_limit)
    response.headers["ratelimit-remaining"] = str(max(remaining, 0))
    response.headers["ratelimit-reset"] = f"{reset_s:.3f}"
    return response


def take_rate(state: State) -> tuple[int, float]:
    """A request counted in its 1-second window: what is left of the limit after it (below 0:
    over) and the seconds until the next window."""
    now = time.monotonic()
    second, used = state.window
    if int(now) != second:
        second, used = int(now), 0
    state.window = (second, used + 1)
    return state.rate_limit - used - 1, second + 1 - now


async def handle(request: Request, raw: bytes, acceptor: Acceptor) -> Response:
    """The next scripted fault, if any, around `acceptor` (Resend's checks and recording)."""
    state = request.app.state
    kind, *args = take_fault(state)
    if kind == "status":
        return fault_answer(*args)
    key = request.headers.get("idempotency-key")
    if kind == "hang" and await client_left(request, key, float(args[0])):
        state.faults["client left"] += 1
        return Response(status_code=499)
    response = acceptor(state, request, raw)
    if kind == "accept_then_fail" and response.status_code == 200:
        return DroppedConnection() if args[0] == "drop" else error(int(args[0]), "")
    return response


def take_fault(state: State) -> Fault:
    fault: Fault = ("none",)
    if state.script:
        fault = state.script.pop(0)
    elif state.chaos is not None:
        fault = state.chaos.draw()
    if fault[0] not in ("none", *FAULT_KINDS):
        raise ValueError(f"unknown fault {fault!r}; see the module docstring")
    if fault[0] != "none":
        state.faults[fault_name(fault)] += 1
    return fault


def accept(state: State, request: Request, raw: bytes) -> Response:
    """Everything Resend checks, then record the email or replay the key's first answer."""
    key = request.headers.get("idempotency-key")
    body, body_problem = state.contract.body_problem(raw)
    problem = auth_problem(state, request) or state.contract.key_problem(key) or body_problem
    if problem is None and key in state.in_flight:
        problem = 409, "concurrent_idempotent_requests", ""
    if problem is not None:
        return error(*problem)
    arrived = {"arrived_at_ms": request.state.arrived_at_ms}
    if key is None:
        return JSONResponse({"id": record(state, body, None, **arrived)})
    return replay_or_record(state, key, body, arrived)


def held_keys(request: Request) -> set[str]:
    """The keys held in flight for the request's path (Resend scopes keys per endpoint)."""
    state = request.app.state
    held: set[str] = state.batch_in_flight if request.url.path == BATCH_PATH else state.in_flight
    return held


def auth_problem(state: State, request: Request) -> Problem | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, "missing_api_key", ""
    if given.strip() != state.api_key:
        return 403, "invalid_api_key", ""
    return None


def replay_or_record(
    state: State, key: str, body: dict[str, Any], extra: dict[str, Any]
) -> Response:
    fingerprint = json.dumps(body, sort_keys=True)
    earlier: Accepted | None = state.idempotency.get(key)
    now_s = time.monotonic()
    if earlier is None or now_s - earlier.accepted_at_s > state.idempotency_window_s:
        email_id = record(state, body, key, **extra)
        state.idempotency[key] = Accepted(fingerprint, email_id, now_s)
        return JSONResponse({"id": email_id})
    if earlier.fingerprint != fingerprint:
        return error(409, "invalid_idempotent_request")
    return JSONResponse({"id": earlier.email_id})


def record(state: State, body: dict[str, Any], key: str | None, **extra: Any) -> str:
    email_id = str(uuid.uuid4())
    received_at_ms = time.time_ns() // 1_000_000
    entry = {"id": email_id, "body": body, "idempotency_key": key}
    state.inbox.append({**entry, "received_at_ms": received_at_ms, **extra})
    return email_id


def accept_batch(state: State, request: Request, raw: bytes) -> Response:
    """Everything Resend checks of a batch, then record its valid emails or replay the key's
    first answer."""
    key = request.headers.get("idempotency-key")
    mode = request.headers.get("x-batch-validation", "strict")
    emails, batch_problem = state.contract.batch_problem(raw)
    problems = [state.contract.item_problem(email, i) for i, email in enumerate(emails)]
    problem = auth_problem(state, request) or state.contract.key_problem(key)
    problem = problem or mode_problem(mode) or batch_problem
    if problem is None and mode == "strict":
        problem = first(problems)
    if problem is None and key in state.batch_in_flight:
        problem = 409, "concurrent_idempotent_requests", ""
    if problem is not None:
        return error(*problem)
    arrived_at_ms: int = request.state.arrived_at_ms
    return replay_or_record_batch(state, key, mode, emails, problems, arrived_at_ms)


def mode_problem(mode: str) -> Problem | None:
    if mode in BATCH_MODES:
        return None
    message = "Invalid `x-batch-validation` header: must be `strict` or `permissive`."
    return 422, "validation_error", message


def replay_or_record_batch(
    state: State,
    key: str | None,
    mode: str,
    emails: list[Any],
    problems: list[Problem | None],
    arrived_at_ms: int,
) -> Response:
    fingerprint = json.dumps({"validation": mode, "emails": emails}, sort_keys=True)
    earlier: AcceptedBatch | None = state.batch_idempotency.get(key)
    now_s = time.monotonic()
    if earlier is None or now_s - earlier.accepted_at_s > state.idempotency_window_s:
        answer = record_batch(state, key, mode, emails, problems, arrived_at_ms)
        if key is not None:
            state.batch_idempotency[key] = AcceptedBatch(fingerprint, answer, now_s)
        return JSONResponse(answer)
    if earlier.fingerprint != fingerprint:
        return error(409, "invalid_idempotent_request")
    return JSONResponse(earlier.answer)


def record_batch(
    state: State,
    key: str | None,
    mode: str,
    emails: list[Any],
    problems: list[Problem | None],
    arrived_at_ms: int,
) -> dict[str, Any]:
    """Record a batch's valid emails; its 200 answer."""
    pairs = zip(emails, problems, strict=True)
    extra = {"batch": True, "arrived_at_ms": arrived_at_ms}
    data = [{"id": record(state, email, key, **extra)} for email, bad in pairs if bad is None]
    size, accepted = len(emails), len(data)
    state.batches.append({"key": key, "size": size, "accepted": accepted, "validation": mode})
    if mode == "strict":
        return {"data": data}
    errors = [{"index": i, "message": bad[2]} for i, bad in enumerate(problems) if bad]
    return {"data": data, "errors": errors}


def error(
    status: int, name: str, message: str = "", retry_after_s: float | None = None
) -> Response:
    name = name or NAMES.get(status, "application_error")
    content = {"statusCode": status, "name": name, "message": message or MESSAGES.get(name, name)}
    headers = {} if retry_after_s is None else {"retry-after": f"{retry_after_s:g}"}
    return JSONResponse(content, status_code=status, headers=headers)


def fault_answer(
    status: int, retry_after_s: float | None = None, name: str = "", message: str = ""
) -> Response:
    if name or status in NAMES:
        return error(status, name, message, retry_after_s)
    headers = {} if retry_after_s is None else {"retry-after": f"{retry_after_s:g}"}
    page = f"<html><body><h1>{status}</h1>injected fault</body></html>"
    return HTMLResponse(page, status_code=status, headers=headers)


async def client_left(request: Request, key: str | None, hang_s: float) -> bool:
    """Hang for `hang_s` holding `key` in flight; True if the client hung up meanwhile."""
    held = held_keys(request)
    if key is not None:
        held.add(key)
    try:
        async with asyncio.timeout(hang_s):
            while (await request.receive())["type"] != "http.disconnect":
                pass
        return True
    except TimeoutError:
        return False
    finally:
        held.discard(key or "")


class DroppedConnection(Response):
    """Sends a 200's status line and headers, then ends without the promised body: the server
    closes the connection and the client sees it dropped mid-response."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"64")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})


def job_of(entry: dict[str, Any]) -> str:
    """The service's email job an inbox entry was sent for, from the tags it sends with each email
    (its key is the job id when sent alone, the batch's id when sent in a batch)."""
    tags = {tag["name"]: tag["value"] for tag in entry["body"].get("tags", [])}
    return f"email|{tags['user']}|{tags['loop']}|{tags['step']}|{tags['kind']}"


# --- serving --------------------------------------------------------------------------------


class ResendStandin:
    """The stand-in app and the base URL it is served on, with handles for tests."""

    def __init__(self, app: Starlette, url: str) -> None:
        self.app = app
        self.url = url

    def __repr__(self) -> str:
        return f"ResendStandin(url={self.url!r}, inbox={len(self.inbox)}, requests={self.requests})"

    @property
    def api_key(self) -> str:
        key: str = self.app.state.api_key
        return key

    @property
    def inbox(self) -> list[dict[str, Any]]:
        inbox: list[dict[str, Any]] = self.app.state.inbox
        return inbox

    @property
    def jobs(self) -> list[str]:
        """The email job each accepted email was sent for, in inbox order (`job_of`)."""
        return [job_of(entry) for entry in self.inbox]

    @property
    def batches(self) -> list[dict[str, Any]]:
        """One entry per accepted batch request, replays aside: key, size, accepted, validation."""
        batches: list[dict[str, Any]] = self.app.state.batches
        return batches

    @property
    def requests(self) -> int:
        count: int = self.app.state.requests
        return count

    @property
    def connections(self) -> int:
        """How many TCP connections requests arrived on."""
        return len(self.app.state.connections)

    def limit(self, per_s: int | None) -> None:
        """Enforce Resend's team limit (requests a second) with its headers; None: no limit."""
        self.app.state.rate_limit = per_s

    @property
    def limited(self) -> int:
        """Requests answered 429 for the team limit."""
        count: int = self.app.state.limited
        return count

    def chaos(self, chaos: "Chaos | None") -> None:
        """Draw random faults for requests the script leaves alone; None: none."""
        self.app.state.chaos = chaos

    @property
    def faults(self) -> Counter[str]:
        """Faults taken so far, scripted or drawn, by `fault_name`."""
        faults: Counter[str] = self.app.state.faults
        return faults

    def script(self, *faults: Fault) -> None:
        """Queue answers for the next requests, in order (see the module docstring)."""
        for fault in faults:
            if fault[0] not in FAULT_KINDS:
                raise ValueError(f"unknown fault {fault!r}; see the module docstring")
        self.app.state.script.extend(faults)

    def reset(self) -> None:
        reset(self.app)


@contextmanager
def run_standin(api_key: str = API_KEY) -> Iterator[ResendStandin]:
    """Serve a fresh stand-in on a free 127.0.0.1 port for the duration of the block."""
    app = create_standin(api_key)
    with serve(app) as url:
        yield ResendStandin(app, url)
