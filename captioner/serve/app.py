"""The FastAPI application: routes (captioner/serve/routes.py), limits, error answers, the page.

Every refusal is JSON `{"detail": "..."}` with a 4xx status; an unexpected failure is a JSON
500 for that request only, and the service goes on.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from captioner import __version__
from captioner.serve.batching import Busy
from captioner.serve.budget import PixelBudget
from captioner.serve.limits import Limits, RequestRejected
from captioner.serve.model import CaptionModel
from captioner.serve.responses import FiniteJSONResponse
from captioner.serve.routes import STATIC_DIR, router

log = logging.getLogger("captioner.serve")


def create_app(model: CaptionModel, limits: Limits | None = None) -> FastAPI:
    """The service around `model`; its batcher runs while the app's lifespan does."""
    limits = limits or Limits()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Made here: its asyncio primitives belong to the serving loop.
        app.state.budget = PixelBudget(limits.max_pixels_in_flight, limits.max_decode_wait_s)
        async with model:
            yield

    app = FastAPI(title="captioner", version=__version__, lifespan=lifespan, default_response_class=FiniteJSONResponse)
    app.state.model = model
    app.state.limits = limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    app.add_exception_handler(RequestRejected, _rejected)
    app.add_exception_handler(Busy, _busy)
    app.add_exception_handler(Exception, _failed)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


class BodyLimit:
    """Refuses request bodies over `max_bytes` (413) by the Content-Length header or, without
    one, as soon as the body read so far is over: never more than that is held in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than {self.max_bytes} bytes; send fewer or smaller images"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise RequestRejected(413, message)  # inside the route: answered by _rejected
            return event

        await self.app(scope, limited_receive, send)


async def _rejected(request: Request, error: RequestRejected) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=error.status)


async def _busy(request: Request, error: Busy) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})


async def _failed(request: Request, error: Exception) -> JSONResponse:
    log.error("request %s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse({"detail": "internal error while serving this request; see the server log"}, status_code=500)
