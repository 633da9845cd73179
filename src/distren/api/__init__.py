"""The HTTP API: thin handlers over the rooms of :class:`distren.service.Server`, grouped by
audience: :mod:`~distren.api.clients` (``/api``, users with tokens),
:mod:`~distren.api.servers` (``/fed``, peers with signed requests) and
:mod:`~distren.api.people` (``/``, the dashboard, people signed in with a browser).

Every error the service raises on purpose is a :class:`DistrenError`; it reaches the client as
``{"error": message}`` with the error's HTTP status (a browser asking for a dashboard page gets
a page saying it). Anything else is a bug: it is logged and answered with 500, and the server
keeps serving.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import DistrenError
from . import clients, people, servers
from .common import BodyLimit, error_answer, invalid_request

if TYPE_CHECKING:
    from ..service import Server

__all__ = ["create_app", "error_answer"]
log = logging.getLogger("distren.api")


def create_app(server: Server) -> FastAPI:
    # No /docs and /redoc: they load Swagger UI and ReDoc from a CDN, and nothing a distren
    # server serves comes from elsewhere. /openapi.json stays.
    app = FastAPI(title="distren", version=__version__, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(BodyLimit)

    @app.exception_handler(DistrenError)
    async def distren_error(request: Request, exc: DistrenError):
        if people.is_page(request.url.path) and "text/html" in request.headers.get("accept", ""):
            return await people.error_page(request, exc)
        return await error_answer(request, exc)

    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal server error ({type(exc).__name__}); see the server's log"},
                            status_code=500)

    app.include_router(clients.router(server))
    app.include_router(servers.router(server))
    app.include_router(people.router(server))
    app.mount("/static", StaticFiles(directory=people.STATIC), name="static")
    return app
