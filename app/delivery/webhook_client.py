"""A webhook step's POST: one request per call over a pooled httpx client, bounded as a whole by
WEBHOOK_TIMEOUT_S, with Standard Webhooks headers, its answer translated (`app.errors`):

    2xx                                        sent
    408, 429, 5xx, another status, a timeout,  TransientSendError: retried per the loop's
    a refused or dropped connection            `recovery` (`retry-after` honoured)
    any other 4xx                              PermanentSendError: dead-letter

`webhook-id` comes from the job's id (`signing.webhook_message_id`), so every retry of one step for
one user carries the same; `webhook-timestamp` is the service's clock; `webhook-signature` only
when the step has a secret. Neither the URL nor the answer's body is ever logged or kept: either may
hold a token.
"""

import asyncio

import httpx

from app.clock import Clock
from app.delivery.pacing import parse_retry_after
from app.engine.loops import WebhookAction
from app.errors import PermanentSendError, TransientSendError
from app.signing import sign_webhook, webhook_message_id

USER_AGENT = "activation-loops webhook"
RETRIED_4XX = frozenset({408, 429})


class WebhookClient:
    """Posts webhook steps' bodies. `transport`: httpx's, for a test that answers in process."""

    def __init__(
        self, timeout_s: float, clock: Clock, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self.http = httpx.AsyncClient(timeout=timeout_s, transport=transport)

    def __repr__(self) -> str:
        return f"WebhookClient(timeout_s={self.timeout_s})"

    async def post(self, webhook: WebhookAction, job_id: str, body: str) -> int:
        """POST `body` for the job `job_id`; its status when 2xx, else a `SendError`."""
        headers = self.headers(webhook, job_id, body)
        try:
            # httpx's timeout bounds each phase; this bounds the whole exchange (a slow drip too)
            async with asyncio.timeout(self.timeout_s):
                response = await self.http.post(webhook.url, content=body, headers=headers)
        except TimeoutError:
            raise TransientSendError(f"no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise TransientSendError(f"no answer: {type(exc).__name__}") from None
        return outcome(response)

    def headers(self, webhook: WebhookAction, job_id: str, body: str) -> dict[str, str]:
        """Standard Webhooks headers: the id the receiver deduplicates by, the time, the
        signature (with a secret)."""
        msg_id, timestamp_s = webhook_message_id(job_id), self.clock() // 1000
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        headers |= {"webhook-id": msg_id, "webhook-timestamp": str(timestamp_s)}
        if webhook.secret is not None:
            headers["webhook-signature"] = sign_webhook(webhook.secret, msg_id, timestamp_s, body)
        return headers

    async def close(self) -> None:
        await self.http.aclose()


def outcome(response: httpx.Response) -> int:
    """The status of a 2xx answer; a `SendError` saying the status otherwise."""
    status = response.status_code
    if 200 <= status < 300:
        return status
    message = f"the endpoint answered {status}"
    if 400 <= status < 500 and status not in RETRIED_4XX:
        raise PermanentSendError(message, status=status)
    retry_after_s = parse_retry_after(response.headers)
    raise TransientSendError(message, status=status, retry_after_s=retry_after_s)


def dry_run_client(timeout_s: float, clock: Clock) -> WebhookClient:
    """A client whose every POST is answered 200 in process: a dry run's (`activation
    simulate`), where nothing leaves."""
    return WebhookClient(timeout_s, clock, httpx.MockTransport(lambda _: httpx.Response(200)))
