"""What every page shares: the Jinja2 environment of `templates/` (each page extends
`base.html`, its one stylesheet), the security headers, and `page()`, which renders one."""

from typing import Any

import jinja2
from fastapi.responses import HTMLResponse

from app.web.pages import panels

# Email HTML is shown in sandboxed iframes (no scripts, no same-origin); the pages run no script.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src https: data:; form-action 'self'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

PAGE_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("app.web.pages", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
PAGE_ENV.globals.update(panels.TEMPLATE_GLOBALS)


def page(name: str, status_code: int = 200, **variables: Any) -> HTMLResponse:
    """The template `name` rendered, with the pages' headers."""
    body = PAGE_ENV.get_template(name).render(**variables)
    return HTMLResponse(body, status_code=status_code, headers=HEADERS)
