"""What the hot intake routes use (`Intake`), and how busy the web process is (`Traffic`).

`Intake` holds what `POST /webhooks/clerk` and `POST /v1/actions` need, fetched from the app state
instead of through FastAPI dependencies: solving dependencies cost about 40 µs each per request
(measured with cProfile, five per webhook). The other routes keep the dependencies of
`app.web.deps`.
`app.web.gate.Gate` calls a hot route's endpoint directly, after the route's policy let it in. The
webhook's endpoint is the very function FastAPI routes to; the actions endpoint validates its body
as FastAPI does for the routed `post_actions`, which documents it. Tests send both ways the same
requests and compare the answers.
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from fastapi import Request
from starlette.responses import Response
from svix.webhooks import Webhook

from app.clock import Clock
from app.errors import NotConfigured
from app.observability.metrics import Metrics
from app.storage.store import Store


@dataclass(frozen=True, slots=True)
class Intake:
    store: Store
    clock: Clock
    metrics: Metrics
    wake_worker: Callable[[], None]
    tracked_counts: Mapping[str, frozenset[int]]
    clerk_verifier: Webhook | None

    def verifier(self) -> Webhook:
        if self.clerk_verifier is None:
            raise NotConfigured("not configured: set CLERK_WEBHOOK_SIGNING_SECRET")
        return self.clerk_verifier


def intake_of(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


Endpoint = Callable[[Request], Awaitable[Response]]


class Traffic:
    """How many HTTP requests the process is serving right now (counted by `app.web.gate.Gate`).

    The in-process worker asks `busy()` before it widens to more than one job at a time: while
    requests are in flight they come first (a webhook answered late is sent again), and the
    evaluations they cause wait a little; a quiet process runs them at full concurrency."""

    __slots__ = ("in_flight",)

    def __init__(self) -> None:
        self.in_flight = 0

    def busy(self) -> bool:
        return self.in_flight > 0
