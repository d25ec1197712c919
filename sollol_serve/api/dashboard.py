"""The dashboard and its browser session: the page (admin permission, by key or session
cookie), a login form that turns a key into an HttpOnly SameSite=Strict cookie, and logout."""

import functools
import html
import string
import urllib.parse
from importlib import resources

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from sollol_serve.api.auth import SESSION_COOKIE, SESSION_TTL_S
from sollol_serve.api.body import read_body
from sollol_serve.api.services import Services, admit, services
from sollol_serve.protocol import GatewayError

router = APIRouter()


@functools.cache
def _page(name: str) -> str:
    return resources.files("sollol_serve.observability").joinpath(name).read_text()


def dashboard_page() -> str:
    """The live dashboard: one static page that polls /api/stats and /api/routing/decisions."""
    return _page("dashboard.html")


def login_page(root: str, message: str, status: int) -> HTMLResponse:
    """The dashboard's login form (when keys are on and the browser has no session)."""
    body = string.Template(_page("login.html")).substitute(action=html.escape(f"{root}/dashboard/login"),
                                                           message=html.escape(message))
    return HTMLResponse(body, status_code=status)


@router.get("/dashboard")
@router.get("/dashboard.html")  # the original SOLLOL's address of its dashboard
async def dashboard(request: Request, svc: Services = Depends(services)) -> Response:
    try:
        await admit(svc, request, "admin")
    except GatewayError as exc:
        if exc.status in (401, 403) and svc.auth.enabled:  # a browser: offer the login form
            message = ("that key lacks the admin permission" if exc.status == 403
                       else "log in with an API key that has the admin permission")
            return login_page(request.scope.get("root_path", ""), message, exc.status)
        raise
    return HTMLResponse(dashboard_page())


@router.post("/dashboard/login")
async def dashboard_login(request: Request, svc: Services = Depends(services)) -> Response:
    """The login form's key -> a session cookie (HttpOnly, SameSite=Strict) -> the dashboard."""
    root = request.scope.get("root_path", "")
    try:
        form = urllib.parse.parse_qs((await read_body(request, svc.config.max_body_bytes)).decode("utf-8", "replace"))
        principal, token = svc.auth.login((form.get("key") or [""])[0].strip())
        if "admin" not in principal.permissions:
            return login_page(root, "that key lacks the admin permission", 403)
    except GatewayError as exc:
        return login_page(root, exc.message, exc.status)
    response = RedirectResponse(f"{root}/dashboard", status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_TTL_S, path=root or "/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/dashboard/logout")
async def dashboard_logout(request: Request, svc: Services = Depends(services)) -> Response:
    """Ends the session for good (a copy of the cookie stops working too), and drops the cookie."""
    root = request.scope.get("root_path", "")
    token = request.cookies.get(SESSION_COOKIE)
    if token and svc.auth.enabled:
        try:
            await svc.sessions.revoke.remote(svc.auth.session(token).session)
        except GatewayError:
            pass  # no valid session to end
    response = RedirectResponse(f"{root}/dashboard", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=root or "/")
    return response
