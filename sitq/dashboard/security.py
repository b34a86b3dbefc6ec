"""Who may use the dashboard: the access token, the Host check, CSRF protection of
every POST, and the headers that keep pages from being framed or scripted.

- With a token, every request must carry it: ``?token=`` once (it becomes an
  HttpOnly, SameSite=Strict cookie and is removed from the address bar), the
  cookie, or ``Authorization: Bearer``.
- Without one the dashboard is bound to a loopback address, and only loopback
  Host names are answered, so a web page cannot reach it by rebinding its own
  DNS name to 127.0.0.1.
- A POST needs the page's CSRF token in its form, and must not come from another
  site (its ``Origin``, else ``Sec-Fetch-Site``, else ``Referer``, is checked).
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sitq.dashboard.access import is_loopback

COOKIE = "sitq_dashboard_token"
CSRF_FIELD = "csrf"
#: Security headers on every response. Scripts and styles come only from /static.
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _host_name(host_header: str) -> str:
    """The name part of a Host header (``[::1]:8765`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Guard:
    """ASGI middleware that enforces the rules above before any route runs."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if self.token is not None and "token" in request.query_params:
            await self._set_cookie_and_strip(request)(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)  # type: ignore[arg-type]

    def _refusal(self, request: Request) -> Response | None:
        """The response refusing this request, or None to let it through."""
        if self.token is None:
            host = _host_name(request.headers.get("host", ""))
            if not is_loopback(host):
                return _plain(
                    421,
                    f"this dashboard answers only at 127.0.0.1 or localhost, not {host!r}; "
                    "to serve other names, start it with a token (--token)",
                )
        elif request.url.path.startswith("/static/"):
            pass  # the stylesheet and script are no secret; the 401 page uses them
        elif not self._has_token(request):
            return _plain(
                401,
                "this dashboard needs its access token: open the URL that `sitq dashboard` "
                "printed (it ends in ?token=...), or send 'Authorization: Bearer TOKEN'",
            )
        if request.method not in ("GET", "HEAD") and not same_origin(request):
            return _plain(403, "refused: this request came from another site")
        return None

    def _has_token(self, request: Request) -> bool:
        assert self.token is not None
        given = [
            request.query_params.get("token", ""),
            request.cookies.get(COOKIE, ""),
            request.headers.get("authorization", "").removeprefix("Bearer ").strip(),
        ]
        return any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    def _set_cookie_and_strip(self, request: Request) -> Response:
        """Remember the token in a cookie and take it out of the address bar."""
        query = urlencode([(k, v) for k, v in parse_qsl(request.url.query) if k != "token"])
        target = request.url.path + (f"?{query}" if query else "")
        response = Response(status_code=303, headers={"location": target, **HEADERS})
        response.set_cookie(
            COOKIE,
            self.token or "",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response


def same_origin(request: Request) -> bool:
    """False if the browser says the request came from another site."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    referer = request.headers.get("referer")
    if referer is not None:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" == own
    return True  # not a browser (curl, scripts): the CSRF token still applies


def csrf_ok(submitted: str | None, expected: str) -> bool:
    """Whether a form's CSRF field holds this dashboard's CSRF token."""
    return bool(submitted) and hmac.compare_digest((submitted or "").encode(), expected.encode())


def _plain(status: int, message: str) -> Response:
    return Response(message + "\n", status_code=status, media_type="text/plain", headers=HEADERS)
