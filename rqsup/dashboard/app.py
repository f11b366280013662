"""The dashboard as an ASGI app (Starlette): pages rendered on the server and
the JSON API under ``/api`` that they and scripts use.

It reads and acts through the same queue API as everything else
(:class:`rqsup.AsyncQueue`): no second data model. Login is built in (users
and roles: :mod:`rqsup.dashboard.auth`); every action is a POST that needs
the session's CSRF token and the role it names, and answers 403 in
read-only mode, whatever the page shows.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aredis
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from rqsup.dashboard.auth import User, verify_password
from rqsup.dashboard.data import DashboardError, Data
from rqsup.dashboard.live import Live
from rqsup.queue.connection import REDIS_ERRORS, async_client

log = logging.getLogger("rqsup.dashboard")

STATES = ("wait", "prioritized", "delayed", "active", "completed", "failed", "waiting-children")
#: Actions on one job and on a whole queue, with the role each needs.
JOB_ACTIONS = {"retry": "operator", "remove": "operator", "promote": "operator",
               "cancel": "operator", "priority": "operator", "delay": "operator"}
QUEUE_ACTIONS = {"pause": "operator", "resume": "operator", "drain": "operator",
                 "retry-failed": "operator", "promote-delayed": "operator",
                 "clean": "operator", "obliterate": "admin"}
_TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                         autoescape=select_autoescape(["html"]))
_TEMPLATES.filters["datetime"] = lambda s: datetime.fromtimestamp(s, UTC).strftime(
    "%Y-%m-%d %H:%M:%S")


def create_app(*, url: str | None = None, prefix: str = "rqsup",
               users: list[User] | tuple[User, ...] = (), read_only: bool = False,
               secret: str | None = None, mask: dict[str, list[str]] | None = None,
               client: aredis.Redis | None = None) -> Starlette:
    """The dashboard for the queues under ``prefix``. Without ``users`` every
    visitor is an admin: only for a dashboard on loopback (``rqsup dashboard``
    refuses another address then). ``mask``: data keys to hide, by queue."""
    data = Data(client or async_client(url), prefix, mask or {})
    live = Live(data)
    live.render_supervisors = lambda sups: _TEMPLATES.get_template(
        "supervisors_list.html").render(supervisors=sups, base=live.base)
    by_name = {u.name: u for u in users}
    app_state = {"read_only": read_only}

    def user_of(request: Request) -> User | None:
        if not by_name:
            return _ANON
        name = request.session.get("user")
        return by_name.get(name) if isinstance(name, str) else None

    def csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = request.session["csrf"] = secrets.token_urlsafe(24)
        return token

    def base(request: Request) -> str:
        """Where the app is mounted ("" at the root): every link starts with it."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    def path_in_app(request: Request) -> str:
        path = request.url.path
        b = base(request)
        return path[len(b):] if b and path.startswith(b) else path

    def page(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        user = user_of(request)
        html = _TEMPLATES.get_template(name).render(
            user=user, csrf=csrf(request), read_only=app_state["read_only"], states=STATES,
            base=base(request), **ctx)
        return HTMLResponse(html, status_code=ctx.get("status", 200))

    def needs_login(request: Request) -> Response | None:
        if user_of(request) is not None:
            return None
        if path_in_app(request).startswith("/api/"):
            return JSONResponse({"error": "log in first"}, status_code=401)
        return RedirectResponse(f"{base(request)}/login?next={path_in_app(request)}",
                                status_code=303)

    async def guarded(request: Request, render: Any) -> Response:
        refused = needs_login(request)
        if refused is not None:
            return refused
        try:
            response: Response = await render()
            return response
        except DashboardError as exc:
            if path_in_app(request).startswith("/api/"):
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            return page(request, "error.html", message=str(exc), status=exc.status)
        except REDIS_ERRORS as exc:
            log.warning("dashboard: Redis: %s", exc)
            if path_in_app(request).startswith("/api/"):
                return JSONResponse({"error": f"Redis unreachable: {exc}"}, status_code=503)
            return page(request, "error.html", message=f"Redis is unreachable ({exc}); "
                        "this page comes back by itself", status=503)

    async def login_page(request: Request) -> Response:
        return page(request, "login.html", next=request.query_params.get("next", "/"),
                    failed=False)

    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("user", "")), str(form.get("password", ""))
        user = by_name.get(name)
        nxt = str(form.get("next", "/"))
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        if user is None or not verify_password(password, user.password_hash):
            return page(request, "login.html", next=nxt, failed=True, status=401)
        request.session.clear()
        request.session["user"] = user.name
        return RedirectResponse(base(request) + nxt, status_code=303)

    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse(f"{base(request)}/login", status_code=303)

    async def overview(request: Request) -> Response:
        async def render() -> Response:
            return page(request, "overview.html", queues=await data.queues())
        return await guarded(request, render)

    async def queue_page(request: Request) -> Response:
        async def render() -> Response:
            queue = request.path_params["queue"]
            state = request.query_params.get("state", "wait")
            start = _int(request.query_params.get("start"), 0)
            search = request.query_params.get("q") or None
            jobs = await data.jobs(queue, state, start, 50, search)
            return page(request, "queue.html", queue=queue, info=await data.queue(queue),
                        state=state, start=start, jobs=jobs, search=search or "")
        return await guarded(request, render)

    async def job_page(request: Request) -> Response:
        async def render() -> Response:
            p = request.path_params
            return page(request, "job.html", queue=p["queue"],
                        job=await data.job(p["queue"], p["job_id"]))
        return await guarded(request, render)

    async def supervisors_page(request: Request) -> Response:
        async def render() -> Response:
            return page(request, "supervisors.html", supervisors=await data.supervisors())
        return await guarded(request, render)

    async def schedulers_page(request: Request) -> Response:
        async def render() -> Response:
            return page(request, "schedulers.html", schedulers=await data.schedulers())
        return await guarded(request, render)

    async def api_supervisors(request: Request) -> Response:
        async def render() -> Response:
            return JSONResponse(await data.supervisors())
        return await guarded(request, render)

    async def api_schedulers(request: Request) -> Response:
        async def render() -> Response:
            return JSONResponse(await data.schedulers())
        return await guarded(request, render)

    async def api_queues(request: Request) -> Response:
        async def render() -> Response:
            return JSONResponse(await data.queues())
        return await guarded(request, render)

    async def api_jobs(request: Request) -> Response:
        async def render() -> Response:
            q = request.path_params["queue"]
            return JSONResponse(await data.jobs(
                q, request.query_params.get("state", "wait"),
                _int(request.query_params.get("start"), 0),
                min(_int(request.query_params.get("count"), 50), 500),
                request.query_params.get("q") or None))
        return await guarded(request, render)

    async def api_job(request: Request) -> Response:
        async def render() -> Response:
            p = request.path_params
            return JSONResponse(await data.job(p["queue"], p["job_id"]))
        return await guarded(request, render)

    async def act(request: Request) -> Response:
        async def render() -> Response:
            p = request.path_params
            action, job_id = p["action"], p.get("job_id")
            needed = (JOB_ACTIONS if job_id else QUEUE_ACTIONS).get(action)
            if needed is None:
                raise DashboardError(f"no action {action!r}", 404)
            await _check_csrf(request)
            user = user_of(request)
            assert user is not None
            if app_state["read_only"]:
                raise DashboardError("the dashboard is read-only", 403)
            if not user.may(needed):
                raise DashboardError(f"{action} needs the {needed} role; {user.name} is a "
                                     f"{user.role}", 403)
            form = {k: str(v) for k, v in (await request.form()).items()}
            result = await data.act(p["queue"], action, job_id, form)
            log.warning("dashboard: %s did %s on queue %s%s: %s", user.name, action,
                        p["queue"], f" job {job_id}" if job_id else "", result)
            if "text/html" in request.headers.get("accept", ""):
                back = f"{base(request)}/queues/{p['queue']}" + (
                    f"/jobs/{job_id}" if job_id and action != "remove" else "")
                return RedirectResponse(back, status_code=303)
            return JSONResponse({"ok": True, "result": result})
        return await guarded(request, render)

    async def _check_csrf(request: Request) -> None:
        sent = request.headers.get("x-csrf-token")
        if sent is None:
            form = await request.form()
            sent = str(form.get("csrf", ""))
        expected = request.session.get("csrf")
        if not isinstance(expected, str) or not secrets.compare_digest(sent, expected):
            raise DashboardError("missing or wrong CSRF token", 403)

    async def api_live(request: Request) -> Response:
        refused = needs_login(request)
        if refused is not None:
            return refused
        queue, state = request.query_params.get("queue"), request.query_params.get("state")
        watch = (queue, state) if queue and state in STATES else None
        supervisors = request.query_params.get("watch") == "supervisors"
        if supervisors:
            live.base = base(request)  # links in the page the reader renders
        return StreamingResponse(live.stream(watch, supervisors), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def api_session(request: Request) -> Response:
        user = user_of(request)
        return JSONResponse({"user": user.name if user else None,
                             "role": user.role if user else None, "csrf": csrf(request),
                             "read_only": app_state["read_only"]})

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", overview),
        Route("/queues/{queue}", queue_page),
        Route("/queues/{queue}/jobs/{job_id}", job_page),
        Route("/supervisors", supervisors_page),
        Route("/schedulers", schedulers_page),
        Route("/api/supervisors", api_supervisors),
        Route("/api/schedulers", api_schedulers),
        Route("/api/session", api_session),
        Route("/api/live", api_live),
        Route("/api/queues", api_queues),
        Route("/api/queues/{queue}/jobs", api_jobs),
        Route("/api/queues/{queue}/jobs/{job_id}", api_job),
        Route("/api/queues/{queue}/jobs/{job_id}/{action}", act, methods=["POST"]),
        Route("/api/queues/{queue}/{action}", act, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[
        Middleware(SessionMiddleware, secret_key=secret or secrets.token_urlsafe(32),
                   session_cookie="rqsup_session", same_site="strict")])
    app.state.data = data
    app.state.live = live
    return app


_ANON = User("anonymous", "scrypt$-$-$-$-$-", "admin")


def _int(value: str | None, default: int) -> int:
    try:
        return max(0, int(value)) if value is not None else default
    except ValueError:
        return default
