"""The local web page's server: a Starlette application over :class:`.jobs.Jobs`.

Security rules (docs/protect.md, "The local web page"):

* Every request but the page's static files carries the server's random token: the page
  itself in its address (``/?token=...``), API reads in the ``X-Token`` header or the
  ``token`` query parameter (so that ``<img>`` and download links work), API writes in the
  header only (a form on another site can send neither the header nor a preflight we would
  accept, so it cannot start or cancel anything).
* When bound to the loopback interface only ``Host: 127.0.0.1 / localhost / [::1]`` is
  answered, which stops DNS-rebinding pages from reading the API.
* Uploaded bytes go straight into the job's folder (:mod:`.uploads`), never to a shared
  temporary folder; job ids are checked against their pattern before any path is built.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import UnlearnableError
from ..protect.engine import STRENGTHS
from ..protect.images import UnreadableImage
from . import views
from .jobs import TASKS, Busy, Jobs

STATIC = Path(__file__).with_name("static")
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class TokenGate:
    """ASGI middleware: the token rules of the module doc."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not scope["path"].startswith("/static/"):
            request = Request(scope)
            given = request.headers.get("x-token")
            if given is None and request.method in ("GET", "HEAD"):
                given = request.query_params.get("token")
            if not given or not secrets.compare_digest(given.encode(), self.token.encode()):
                if scope["path"] == "/":
                    response = PlainTextResponse("This page needs its access token: open the address that "
                                                 "'unlearnable serve' printed.", status_code=403)
                else:
                    response = _error("missing or wrong access token", 403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _guard(handler):
    """Library errors become plain messages: 400, or 409 when another run is going on."""
    async def wrapped(request: Request):
        try:
            return await handler(request)
        except Busy as e:
            return _error(str(e), 409)
        except KeyError:
            return _error("no such job (it may have been removed)", 404)
        except (UnlearnableError, UnreadableImage) as e:
            return _error(str(e), 400)
    wrapped.__name__ = handler.__name__
    return wrapped


def create_app(jobs: Jobs, token: str, *, loopback: bool = True) -> Starlette:
    """The application; ``token`` is the one printed in the address."""

    def job_of(request: Request):
        return jobs.get(request.path_params["job"])

    def summary(job) -> dict:
        spec = job.spec
        return {"id": job.id, "created": spec.get("created"), "source": spec.get("source"),
                "folder": spec.get("folder"), "protect_settings": spec.get("protect"),
                **{task: jobs.progress(job, task) for task in TASKS}}

    def detail(job) -> dict:
        out = summary(job)
        if job.spec.get("source") == "upload":
            root = job.input_dir
            out["inputs"] = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                                   if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts))
        result = job.status("protect").get("result")
        if result:
            out["result"] = {k: result.get(k) for k in ("protected", "already_done", "images", "skipped", "ignored",
                                                        "eps_255", "linf_255", "mean_psnr", "mean_ssim", "seconds")}
        out["images"] = views.images(job.output_dir)
        verify = job.status("verify")
        if verify.get("state") == "done" and verify.get("result"):
            out["verify_result"] = verify["result"]
        return out

    async def page(request: Request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @_guard
    async def state(request: Request):
        active = await run_in_threadpool(jobs.active)
        lim = jobs.options.limits
        return JSONResponse({
            "jobs": [summary(j) for j in await run_in_threadpool(jobs.all)],
            "active": {"job": active[0].id, "task": active[1]} if active else None,
            "limits": {"file_bytes": lim.file_bytes, "job_bytes": lim.job_bytes, "files": lim.files,
                       "text": lim.describe()},
            "strengths": {k: {"eps_255": round(v["eps"] * 255), "epochs": v["epochs"]} for k, v in STRENGTHS.items()},
            "reference": jobs.options.reference})

    @_guard
    async def create(request: Request):
        try:
            body = await request.json()
        except ValueError:
            body = {}
        folder = body.get("folder") if isinstance(body, dict) else None
        job = await run_in_threadpool(jobs.create, folder or None)
        return JSONResponse(detail(job), status_code=201)

    @_guard
    async def show(request: Request):
        return JSONResponse(await run_in_threadpool(detail, job_of(request)))

    @_guard
    async def upload(request: Request):
        job = job_of(request)
        name = request.query_params.get("name", "")
        inbox = await run_in_threadpool(jobs.inbox, job)
        with inbox.upload(name) as up:
            try:
                async for chunk in request.stream():
                    up.write(chunk)
            except ClientDisconnect:  # nothing is kept; the page says the upload was interrupted
                return Response(status_code=400)
            received = await run_in_threadpool(up.finish)
        return JSONResponse(received.to_dict())

    @_guard
    async def start(request: Request):
        job, task = job_of(request), request.path_params["task"]
        if task not in TASKS:
            raise KeyError(task)
        try:
            body = await request.json()
        except ValueError:
            body = {}
        await run_in_threadpool(jobs.start, job, task, body if isinstance(body, dict) else {})
        return JSONResponse(summary(job), status_code=202)

    @_guard
    async def cancel(request: Request):
        job = job_of(request)
        stopped = await run_in_threadpool(jobs.cancel, job)
        return JSONResponse({"cancelled": stopped, **summary(job)})

    @_guard
    async def image(request: Request):
        job = job_of(request)
        n, kind = request.path_params["n"], request.path_params["kind"]
        entries = views.images(job.output_dir)
        if not 0 <= n < len(entries) or kind not in views.KINDS:
            raise KeyError(n)
        eps = (job.status("protect").get("result") or {}).get("eps_255") or 8
        png = await run_in_threadpool(views.preview, job.input_dir, job.output_dir, entries[n], kind, eps)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @_guard
    async def download(request: Request):
        job = job_of(request)
        if not (job.output_dir / "manifest.json").is_file():
            raise UnlearnableError("nothing protected yet")
        path = await run_in_threadpool(views.zip_output, job.output_dir, job.folder / "protected.zip")
        return FileResponse(path, media_type="application/zip", filename=f"protected-{job.id}.zip")

    routes = [
        Route("/", page),
        Route("/api/state", state),
        Route("/api/jobs", create, methods=["POST"]),
        Route("/api/jobs/{job}", show),
        Route("/api/jobs/{job}/files", upload, methods=["POST"]),
        Route("/api/jobs/{job}/start/{task}", start, methods=["POST"]),
        Route("/api/jobs/{job}/cancel", cancel, methods=["POST"]),
        Route("/api/jobs/{job}/images/{n:int}/{kind}.png", image),
        Route("/api/jobs/{job}/download", download),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)] if loopback else []
    middleware.append(Middleware(TokenGate, token=token))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(jobs.resume_unfinished)
        yield
        await run_in_threadpool(jobs.shutdown)

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
