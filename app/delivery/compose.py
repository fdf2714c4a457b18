"""Composes a loop's email for one user: template, personalization, unsubscribe link and headers;
and a webhook step's body (`webhook_body`): the step's event, or a Slack message from its `text`.

Rendered once, when the email job is queued, and kept with the job: every retry sends exactly the
same payload under the same Idempotency-Key (Resend answers 409 to a key reused with another one).
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from app.delivery.templates import RenderContext, TemplateSet
from app.delivery.unsubscribe_links import UnsubscribeTokens
from app.engine.email_jobs import EmailJob, RenderedEmail
from app.engine.evaluate import EmailOrder
from app.engine.loops import Loop, WebhookAction, WebhookFormat
from app.storage.records import UserProfile

# Resend's own sandbox sender: what the outbox shows when EMAIL_FROM is unset.
DEFAULT_SENDER = "Activation loops <onboarding@resend.dev>"


@dataclass(frozen=True)
class Composer:
    templates: TemplateSet
    loops: Mapping[str, Loop]
    tokens: UnsubscribeTokens
    sender: str
    app_url: str
    public_url: str

    def unsubscribe_url(self, user_id: str) -> str:
        return f"{self.public_url}/unsubscribe?token={quote(self.tokens.issue(user_id))}"

    def context(self, loop_id: str, profile: UserProfile) -> RenderContext:
        """What a template, a personalization value or a webhook's text sees."""
        return RenderContext(
            user=user_fields(profile, self.app_url),
            loop={"id": loop_id, "type": str(self.loops[loop_id].type)},
            app_url=self.app_url,
            unsubscribe_url=self.unsubscribe_url(profile.id),
        )

    def webhook_body(self, job: EmailJob, profile: UserProfile, webhook: WebhookAction) -> str:
        """The JSON a webhook step posts, the same on every retry: `{"text": ...}` for Slack
        (TemplateRenderError when this user's data breaks the text), else the step's event."""
        if webhook.format is WebhookFormat.SLACK and webhook.text is not None:
            text = self.templates.render_text(webhook.text, self.context(job.loop_id, profile))
            return json.dumps({"text": text}, ensure_ascii=False)
        return json.dumps(event_body(job, profile), ensure_ascii=False)

    def compose(self, order: EmailOrder, profile: UserProfile) -> RenderedEmail:
        """The email; raises TemplateRenderError when this user's data breaks the template."""
        assert profile.email is not None
        context = self.context(order.loop_id, profile)
        unsubscribe_url = context.unsubscribe_url
        rendered = self.templates.render(order.template, order.personalization, context)
        return RenderedEmail(
            sender=self.sender,
            to=profile.email,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            headers={
                "List-Unsubscribe": f"<{unsubscribe_url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )


def user_fields(profile: UserProfile, app_url: str) -> dict[str, Any]:
    """The `user` a template sees (templates.USER_FIELDS)."""
    return {
        **profile.model_dump(exclude={"updated_at"}),
        "name": profile.name,
        "activation_link": app_url,
    }


def event_body(job: EmailJob, profile: UserProfile) -> dict[str, Any]:
    """A `json` webhook step's body: the step that acted, for whom, when it decided."""
    occurred = datetime.fromtimestamp(job.queued_at / 1000, UTC)
    return {
        "type": "loop.step",
        "loop": job.loop_id,
        "step": job.step,
        "kind": job.kind,
        "user": {
            "id": profile.id,
            "email": profile.email,
            "first_name": profile.first_name,
            "last_name": profile.last_name,
        },
        "occurred_at": occurred.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
