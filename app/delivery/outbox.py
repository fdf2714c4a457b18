"""What sends an email (`Mailer`), and the outbox that stands in for Resend when no key is set.

Without `RESEND_API_KEY` nothing leaves the machine: the send module records the email in the
outbox (storage keeps the newest, `/outbox` shows them) and this mailer logs one line with the
subject and a masked address.
"""

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.engine.email_jobs import RenderedEmail

logger = logging.getLogger(__name__)

OUTBOX_ID_PREFIX = "outbox:"
MAX_BATCH = 100  # emails in one batch: Resend's limit for one request


class Mailer(Protocol):
    async def pace(self, max_wait_s: float = math.inf) -> float:
        """Wait for a slot to start a request; how long that took (s)."""

    async def send(
        self,
        email: RenderedEmail,
        idempotency_key: str,
        *,
        tags: Mapping[str, str] = {},
        max_wait_s: float = math.inf,
        paced: bool = False,
    ) -> str: ...


@dataclass(frozen=True, slots=True)
class BatchEmail:
    """One email of a batch: what is sent, and the tags Resend keeps with it."""

    email: RenderedEmail
    tags: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Refused:
    """An email of a batch that was refused alone (the rest went): why."""

    message: str


@runtime_checkable
class BatchMailer(Protocol):
    """A mailer that also sends up to 100 emails in one request, under one idempotency key:
    each email's id, or why it alone was refused, in their order."""

    async def pace(self, max_wait_s: float = math.inf) -> float:
        """Wait for a slot to start a request; how long that took (s)."""

    async def send_batch(
        self,
        emails: Sequence[BatchEmail],
        idempotency_key: str,
        *,
        max_wait_s: float = math.inf,
        paced: bool = False,
    ) -> list[str | Refused]: ...


class OutboxMailer:
    """No Resend key: nothing leaves the machine; the email is kept in the outbox and logged."""

    async def pace(self, max_wait_s: float = math.inf) -> float:
        return 0.0  # nothing to wait for: no limit on the outbox

    async def send(
        self,
        email: RenderedEmail,
        idempotency_key: str,
        *,
        tags: Mapping[str, str] = {},
        max_wait_s: float = math.inf,
        paced: bool = False,
    ) -> str:
        logger.info("outbox: %r to %s (not sent: no RESEND_API_KEY)", email.subject, mask(email.to))
        return f"{OUTBOX_ID_PREFIX}{idempotency_key}"


def mask(address: str) -> str:
    """`ada@example.org` -> `a***@example.org`: enough to recognise, not to harvest."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"
