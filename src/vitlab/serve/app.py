"""The Starlette app of `vitlab serve`: a JSON API over vitlab.serve.models and the page in static/.

    GET  /api/health                 {"status": "ok", "models": n}
    GET  /api/models                 {"models": [info, ...]}
    POST /api/predict                multipart image + model [+ top_k] -> {"model", "top_k": [...]}
                                     a detector: [+ threshold] -> vitlab.serve.detection.detect (boxes, scores)
                                     a captioner -> {"caption", "words"} (vitlab.serve.captioning.caption)
    POST /api/attention              the same form; ?full=1&head_fusion=mean&discard_ratio=0 -> vitlab.serve.analyse
                                     a detector: [+ threshold] -> each detection's cross-attention (detection.py)
                                     a captioner -> the words, each with its map over the image tokens (captioning.py)
    GET  /api/sample?model=&source=val|shapes|scenes&index=   PNG at the model's input size (X-Vitlab-Label: true class)

Every error is {"error": "one line"} with its status (400 bad input, 404 unknown model, 413 too large, 415 not
multipart, 503 busy); no traceback ever reaches a response. Model work runs in a thread pool sized to the CPU.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import VitlabError
from .captioning import caption, caption_attention
from .detection import detection_attention, detect, parse_threshold
from .models import ServedModel, analyse, decode_upload, png_bytes, predict_top_k, validation_image

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
MAX_UPLOAD_BYTES = 10 * 2**20
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class _TooLarge(HTTPException):
    """Raised from receive() once the streamed body passes the limit; the route's exception handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the upload is larger than the limit of {limit} bytes")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class UploadLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413, from its Content-Length before reading,
    or as soon as the streamed bytes pass the limit."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        too_large = error(413, f"the upload is larger than the limit of {self.limit} bytes")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await (too_large if length.isdigit() else error(400, "bad Content-Length"))(scope, receive, send)
        seen, started = 0, False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge(self.limit)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await too_large(scope, receive, send)


def create_app(served: dict[str, ServedModel], *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               workers: int | None = None, max_full_values: int = 8_000_000, max_pending: int | None = None):
    """The ASGI app serving `served` (only these names are reachable). workers: model threads (default: the
    CPUs); max_pending: requests waiting for a model thread before 503 (default 8 per worker, at least 32)."""
    workers = workers or cpu_count()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vitlab-model")
    max_pending = max_pending or max(32, 8 * workers)
    pending = 0

    async def in_pool(fn: Callable[..., Any], *args, **kw) -> Any:
        nonlocal pending
        if pending >= max_pending:
            raise HTTPException(503, f"busy: {pending} requests are waiting; try again")
        pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, partial(fn, *args, **kw))
        finally:
            pending -= 1

    def lookup(name: str | None) -> ServedModel:
        if not name:
            if len(served) == 1:
                return next(iter(served.values()))
            raise HTTPException(400, f"say which model: the form field 'model' is one of {', '.join(served)}")
        if name not in served:                  # a name, never a path: nothing outside this dict is reachable
            raise HTTPException(404, f"unknown model {name[:80]!r}; loaded: {', '.join(served)}")
        return served[name]

    async def read_form(request: Request) -> tuple[ServedModel, bytes, dict[str, str]]:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise HTTPException(415, "send multipart/form-data with the file field 'image' and the field 'model'")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except _TooLarge:
            raise
        except HTTPException as e:
            raise HTTPException(400, f"malformed multipart body: {e.detail}") from None
        image = form.get("image")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        served_model = lookup(fields.get("model"))
        if image is None or isinstance(image, str):
            raise HTTPException(400, "the form has no file field 'image'")
        data = await image.read()
        await form.close()
        fields["filename"] = image.filename or ""       # only to name the upload in an error
        return served_model, data, fields

    def int_param(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
        if value is None or value == "":
            return default
        if not value.lstrip("-").isdigit() or not lo <= int(value) <= hi:
            raise HTTPException(400, f"{name} must be an integer in [{lo}, {hi}], got {value[:40]!r}")
        return int(value)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": len(served), "workers": workers})

    async def models(request: Request) -> Response:
        return JSONResponse({"models": [m.info() for m in served.values()],
                             "max_upload_bytes": max_upload_bytes})

    async def predict(request: Request) -> Response:
        m, data, fields = await read_form(request)
        if m.task == "detection":
            threshold = parse_threshold(fields.get("threshold"))
            found = await in_pool(detect, m, data, threshold, filename=fields["filename"])
            return JSONResponse({"model": m.name, "task": m.task, **found})
        if m.task == "captioning":
            said = await in_pool(caption, m, data, filename=fields["filename"])
            return JSONResponse({"model": m.name, "task": m.task, **said})
        top_k = int_param(fields.get("top_k"), "top_k", 5, 1, 1000)

        def work():
            return predict_top_k(m, decode_upload(data, m.predictor.image_size, filename=fields["filename"]), top_k)

        return JSONResponse({"model": m.name, "top_k": await in_pool(work)})

    async def attention(request: Request) -> Response:
        m, data, fields = await read_form(request)
        q = {**fields, **request.query_params}
        if m.task == "detection":
            threshold = parse_threshold(q.get("threshold"))
            return JSONResponse(await in_pool(detection_attention, m, data, threshold, filename=fields["filename"]))
        if m.task == "captioning":
            return JSONResponse(await in_pool(caption_attention, m, data, filename=fields["filename"]))
        full = q.get("full", "0")
        if full not in ("0", "1", "true", "false"):
            raise HTTPException(400, f"full must be 0 or 1, got {full[:40]!r}")
        try:
            discard = float(q.get("discard_ratio", "0"))
        except ValueError:
            raise HTTPException(400, "discard_ratio must be a number in [0, 1)") from None

        def work():
            image = decode_upload(data, m.predictor.image_size, filename=fields["filename"])
            return analyse(m, image, head_fusion=q.get("head_fusion", "mean"),
                           discard_ratio=discard, full=full in ("1", "true"), max_full_values=max_full_values)

        return JSONResponse(await in_pool(work))

    async def sample(request: Request) -> Response:
        m = lookup(request.query_params.get("model"))
        index = int_param(request.query_params.get("index"), "index", 0, 0, 2**31 - 1)
        image, label = await in_pool(validation_image, m, index, request.query_params.get("source", "val"))
        return Response(png_bytes(image), media_type="image/png", headers={"X-Vitlab-Label": label})

    async def on_http(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, str(exc.detail))

    async def on_vitlab(request: Request, exc: VitlabError) -> Response:
        return error(400, str(exc))

    async def on_disconnect(request: Request, exc: ClientDisconnect) -> Response:
        return error(400, "the client went away before the body was complete")

    async def on_other(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return error(500, "internal error (the server log has the details)")

    @asynccontextmanager
    async def lifespan(app):
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    routes = [Route("/api/health", health), Route("/api/models", models),
              Route("/api/predict", predict, methods=["POST"]), Route("/api/attention", attention, methods=["POST"]),
              Route("/api/sample", sample),
              Mount("/", StaticFiles(directory=STATIC, html=True), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        HTTPException: on_http, VitlabError: on_vitlab, ClientDisconnect: on_disconnect, Exception: on_other})

    return SecurityHeaders(UploadLimit(app, max_upload_bytes))


class SecurityHeaders:
    """ASGI middleware: every response says nosniff, no-store, and a CSP that allows no script, style or connection
    from anywhere but this app. (Plain ASGI rather than BaseHTTPMiddleware, whose task group would wrap an
    exception raised while the body streams in an ExceptionGroup.)"""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", CSP.encode()),
               (b"cache-control", b"no-store")]

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {name for name, _ in self.HEADERS}
                message = {**message, "headers": [h for h in message.get("headers", []) if h[0].lower() not in names]
                           + self.HEADERS}
            await send(message)

        await self.app(scope, receive, with_headers)
