"""`activation preview`: a template's subject, text and HTML, rendered for a sample or a stored
user exactly as the worker would."""

import argparse
import asyncio
import json
import secrets
from pathlib import Path

from pydantic import ValidationError

from app.cli.samples import SAMPLE_EMAIL, sample_profile, with_profile
from app.cli.windows import step_windows
from app.clock import system_clock_ms
from app.delivery.loop_folder import load_loop_files
from app.delivery.templates import TemplateSet
from app.delivery.unsubscribe_links import UnsubscribeTokens
from app.engine.assign import arm_of
from app.engine.email_jobs import RenderedEmail
from app.engine.evaluate import EmailOrder, choose_template
from app.engine.loops import EmailAction, Loop
from app.errors import ActivationError, TemplateRenderError
from app.runtime import build_composer, build_store
from app.settings import Settings, load_settings
from app.storage.records import UserProfile
from app.web.webhooks.clerk import ClerkUser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `activation preview`."""
    parser.add_argument("template", help="a template name (loops/templates/<name>.html)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--user", type=Path, help="a JSON file: a Clerk user or a stored profile")
    who.add_argument("--user-id", help="a user from the configured storage")
    parser.add_argument("--loop", help="the loop whose personalization to use")
    parser.add_argument("--out", type=Path, help="write an HTML page to open in a browser")
    parser.add_argument(
        "--profile", help="Clerk profile fields laid over the user's, a JSON object"
    )


def picked_template(loop: Loop, order: EmailOrder, profile: UserProfile) -> str:
    """The template the loop's step would send this user: a variant or an experiment's arm."""
    step = loop.steps[order.step]
    email = step.action_of(order.kind)
    if not isinstance(email, EmailAction) or order.template not in email.templates():
        return order.template  # no step sends it: rendered as it is
    return choose_template(email, profile.view(), arm_of(loop, profile.id))


def email_use(loops: dict[str, Loop], template: str, loop_id: str | None) -> EmailOrder:
    """The first loop step that sends `template` (in `loop_id` if given), as an email order."""
    chosen = [loops[loop_id]] if loop_id in loops else list(loops.values())
    if loop_id is not None and loop_id not in loops:
        raise ActivationError(f"no loop {loop_id!r} (known: {', '.join(loops) or 'none'})")
    for loop in chosen:
        for step in loop.steps:
            for kind, email in (("action", step.action), ("timeout", step.on_timeout)):
                if isinstance(email, EmailAction) and template in email.templates():
                    personalization = dict(email.personalization)
                    return EmailOrder(
                        "preview", loop.id, step.index, kind, template, personalization, 0
                    )
    if not chosen:
        raise ActivationError("no loops loaded: a template is rendered for a loop")
    return EmailOrder("preview", chosen[0].id, 0, "action", template, {}, 0)


def read_user_file(path: Path) -> UserProfile:
    """A Clerk event, a Clerk user object or a stored profile, as JSON."""
    try:
        data = json.loads(path.read_text("utf-8"))
        data = data.get("data", data) if isinstance(data, dict) else data
        if isinstance(data, dict) and "email_addresses" in data:
            return ClerkUser.model_validate(data).to_profile()
        return UserProfile.model_validate(data)
    except (OSError, ValueError, ValidationError) as exc:
        reason = str(exc).splitlines()[0]
        raise ActivationError(
            f"{path}: not a user (Clerk user or profile JSON): {reason}"
        ) from None


async def stored_user(settings: Settings, user_id: str) -> tuple[UserProfile, int | None]:
    """A stored user's profile, and when they registered (None: not yet)."""
    store = build_store(settings)
    try:
        found = await store.users.get(user_id)
    finally:
        await store.close()
    if found is None:
        raise ActivationError(
            f"no stored user {user_id!r} in {settings.storage_kind.value} storage"
        )
    return found.profile, found.registered_at_ms


def preview_tokens(settings: Settings) -> UnsubscribeTokens:
    """Real tokens when a secret is configured; else throwaway ones (no warning for a preview)."""
    configured = (
        settings.unsubscribe_secret,
        settings.activation_api_key,
        settings.clerk_webhook_signing_secret,
    )
    if any(secret is not None for secret in configured):
        return UnsubscribeTokens.from_settings(settings)
    return UnsubscribeTokens(secrets.token_bytes(32))


def render_preview(
    settings: Settings,
    loops: dict[str, Loop],
    templates: TemplateSet,
    order: EmailOrder,
    profile: UserProfile,
) -> RenderedEmail:
    composer = build_composer(settings, loops, templates, preview_tokens(settings))
    if profile.email is None:
        profile = profile.model_copy(update={"email": SAMPLE_EMAIL})
    try:
        return composer.compose(order, profile)
    except TemplateRenderError as exc:
        raise ActivationError(str(exc)) from None


def require_template(templates: TemplateSet, name: str) -> None:
    """Refuse a template that does not exist, with the name it likely misspells."""
    if name in templates:
        return
    from app.engine.spelling import did_you_mean

    close = did_you_mean(name, templates.names)
    hint = f": did you mean {close!r}?" if close else ""
    known = ", ".join(templates.names) or "none"
    raise ActivationError(f"no template {name!r}{hint} (known: {known})")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    loops, templates = load_loop_files(settings)
    require_template(templates, args.template)  # before anything is said about it
    order = email_use(loops, args.template, args.loop)
    signup_ms: int | None = None
    if args.user is not None:
        profile = read_user_file(args.user)
    elif args.user_id is not None:
        profile, signup_ms = asyncio.run(stored_user(settings, args.user_id))
    else:
        profile = sample_profile(created_at_ms=system_clock_ms())
    profile = with_profile(profile, args.profile)
    signup_ms = signup_ms if signup_ms is not None else profile.created_at
    picked = picked_template(loops[order.loop_id], order, profile)
    if picked != order.template:
        print(f"note: this user gets {picked!r} from this step (its variants or experiment)")
    email = render_preview(settings, loops, templates, order, profile)
    print(f"From:    {email.sender}\nTo:      {email.to}\nSubject: {email.subject}")
    print(f"Loop:    {order.loop_id} step {order.step} ({order.kind})")
    for window in step_windows(loops[order.loop_id].steps[order.step]):
        print(f"Window:  {window.on}: {window.said(signup_ms)}")
    print(f"\n--- text ---\n{email.text}")
    if args.out is None:
        print(f"\n--- html ---\n{email.html}")
        return 0
    write_preview_page(args.out, args.template, email, profile)
    print(f"\nwrote {args.out}: open it in a browser")
    return 0


def write_preview_page(
    path: Path, template: str, email: RenderedEmail, profile: UserProfile
) -> None:
    from app.web.pages.layout import PAGE_ENV  # the pages' templates and styling

    page = PAGE_ENV.get_template("preview.html").render(
        title=f"Preview: {template}",
        template=template,
        email=email.model_dump(),
        who=f"{profile.name} <{profile.email}>",
    )
    try:
        path.write_text(page, "utf-8")
    except OSError as exc:
        raise ActivationError(f"cannot write {path}: {exc.strerror}") from None
