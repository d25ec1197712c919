"""The dashboard and its browser session: the page (admin permission, by key or session
cookie), its static files (the charting library, the page's script and style), a login form
that turns a key into an HttpOnly SameSite=Strict cookie, and logout."""

import functools
import hashlib
import html
import string
import urllib.parse
from importlib import resources

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from sollol_serve.api.auth import SESSION_COOKIE, SESSION_TTL_S
from sollol_serve.api.body import read_body
from sollol_serve.api.services import Services, admit, services
from sollol_serve.protocol import GatewayError, NotFound

router = APIRouter()

# The only files /dashboard/static/ serves (sollol_serve/observability/static/), and their
# types. uPlot 1.6.32 (MIT, its LICENSE beside it) is vendored: the machines have no internet.
STATIC_TYPES = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page links every static file with ?v=<its digest>, so a file's address changes with its
# content and browsers may keep it for a year without asking again.
STATIC_CACHE = "public, max-age=31536000, immutable"


@functools.cache
def _page(name: str) -> str:
    return resources.files("sollol_serve.observability").joinpath(name).read_text()


@functools.cache
def _static(name: str) -> tuple[bytes, str]:
    """A static file's bytes and a digest of them (its version and ETag)."""
    data = resources.files("sollol_serve.observability").joinpath("static", name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:16]


def dashboard_page(root: str = "", auth: bool = False) -> str:
    """The live dashboard: a static page whose script polls /api/stats, /api/routing/decisions,
    /api/timeline, /api/applications and /api/alerts.
    `root` is the app's route prefix; `auth` says whether keys are on (a "Log out" button only then)."""
    logout = (f'<form id="logout" method="post" action="{html.escape(root)}/dashboard/logout">'
              '<button type="submit">Log out</button></form>') if auth else ""
    versions = {name.replace(".", "_"): _static(name)[1] for name in STATIC_TYPES}
    return string.Template(_page("dashboard.html")).substitute(
        root=html.escape(root), auth="true" if auth else "false", logout=logout, **versions)


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
    return HTMLResponse(dashboard_page(request.scope.get("root_path", ""), svc.auth.enabled),
                        headers={"Cache-Control": "no-store"})


@router.get("/dashboard/static/{name}")
async def dashboard_static(name: str, request: Request) -> Response:
    """The page's script and style and the charting library: public files (no key needed, like
    the login page; nothing in them is the cluster's), from a fixed list of names."""
    if name not in STATIC_TYPES:
        raise NotFound(f"no static file '{name}'")
    data, digest = _static(name)
    headers = {"Cache-Control": STATIC_CACHE, "ETag": f'"{digest}"', "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == f'"{digest}"':
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=STATIC_TYPES[name], headers=headers)


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
