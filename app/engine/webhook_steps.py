"""A webhook step as loaded: its `${ENV_NAME}` references resolved from the service's
environment (a missing one is a load error naming it), its URL held to http(s), its secret to the
`whsec_<base64>` form Standard Webhooks keys take. The URL and secret are never put in an error
message once resolved: they may carry a token (a Slack hook's path is one)."""

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

from app.engine.loop_spec import WebhookSpec
from app.engine.loops import ENV_REFERENCE_PATTERN, WebhookAction, WebhookFormat

_REFERENCE = re.compile(ENV_REFERENCE_PATTERN)
SECRET_PREFIX = "whsec_"  # noqa: S105 (the form of a key, not a key)

Problem = tuple[str, str]  # (field path, reason)


def webhook_action(
    where: str, spec: WebhookSpec, environment: Mapping[str, str]
) -> tuple[WebhookAction, list[Problem]]:
    """The webhook a valid spec states at `where` (`steps[0].action`), and what is wrong with it
    once its references are resolved from `environment`."""
    problems = list(_missing(where, spec, environment))
    url = resolve(spec.url, environment)
    secret = resolve(spec.secret, environment) if spec.secret is not None else None
    if not problems:
        problems += _url_problems(f"{where}.url", spec.url, url)
        if secret is not None and not signing_key(secret):
            problems.append((f"{where}.secret", _NOT_A_KEY))
    action = WebhookAction(url, WebhookFormat(spec.format), spec.text, secret)
    return action, problems


_NOT_A_KEY = "not a signing secret: whsec_ followed by base64 (a Standard Webhooks key)"


def references(text: str) -> list[str]:
    """The environment variables `text` names (`${NAME}`), in order."""
    return _REFERENCE.findall(text)


def resolve(text: str, environment: Mapping[str, str]) -> str:
    """`text` with each `${NAME}` replaced by its value ("" when unset: see `_missing`)."""
    return _REFERENCE.sub(lambda match: environment.get(match[1], ""), text)


def _missing(where: str, spec: WebhookSpec, environment: Mapping[str, str]) -> Iterator[Problem]:
    for key, text in (("url", spec.url), ("secret", spec.secret)):
        for name in references(text or ""):
            if not environment.get(name):
                yield f"{where}.{key}", f"${{{name}}} is not set in the service's environment"


def _url_problems(where: str, written: str, url: str) -> list[Problem]:
    """Whether the URL is one a POST can go to: http(s) with a host. What is shown of it is
    what the file says (a resolved URL may hold a token)."""
    shown = repr(written) if not references(written) else f"the URL {written} gives"
    try:
        parts = urlsplit(url)
    except ValueError:
        return [(where, f"{shown} is not a URL")]
    if parts.scheme not in ("http", "https"):
        return [(where, f"{shown} is not an http(s) URL: a webhook is an HTTP POST")]
    if not parts.hostname:
        return [(where, f"{shown} names no host")]
    return []


def signing_key(secret: str) -> bytes:
    """The key of a `whsec_<base64>` secret; empty when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        return b""
    raw = secret.removeprefix(SECRET_PREFIX).rstrip("=")
    try:
        return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        return b""
