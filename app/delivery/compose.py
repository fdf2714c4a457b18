"""Composes a loop's email for one user: template, personalization, unsubscribe link and headers.

Rendered once, when the email job is queued, and kept with the job: every retry sends exactly the
same payload under the same Idempotency-Key (Resend answers 409 to a key reused with another one).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from app.delivery.templates import RenderContext, TemplateSet
from app.delivery.unsubscribe_links import UnsubscribeTokens
from app.engine.email_jobs import RenderedEmail
from app.engine.evaluate import EmailOrder
from app.engine.loops import Loop
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

    def compose(self, order: EmailOrder, profile: UserProfile) -> RenderedEmail:
        """The email; raises TemplateRenderError when this user's data breaks the template."""
        assert profile.email is not None
        unsubscribe_url = self.unsubscribe_url(profile.id)
        context = RenderContext(
            user=user_fields(profile, self.app_url),
            loop={"id": order.loop_id, "type": str(self.loops[order.loop_id].type)},
            app_url=self.app_url,
            unsubscribe_url=unsubscribe_url,
        )
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
