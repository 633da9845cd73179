"""The HTTP API: thin handlers over the rooms of :class:`distren.service.Server`, grouped by
audience: :mod:`~distren.api.clients` (``/api``, users with tokens) and
:mod:`~distren.api.servers` (``/fed``, peers with signed requests).

Every error the service raises on purpose is a :class:`DistrenError`; it reaches the client as
``{"error": message}`` with the error's HTTP status. Anything else is a bug: it is logged and
answered with 500, and the server keeps serving.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .. import __version__
from ..errors import DistrenError
from . import clients, servers
from .common import BodyLimit, error_answer, invalid_request

if TYPE_CHECKING:
    from ..service import Server

__all__ = ["create_app", "error_answer"]
log = logging.getLogger("distren.api")


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="distren", version=__version__)
    app.state.server = server
    app.add_middleware(BodyLimit)

    app.add_exception_handler(DistrenError, error_answer)
    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal server error ({type(exc).__name__}); see the server's log"},
                            status_code=500)

    app.include_router(clients.router(server))
    app.include_router(servers.router(server))
    return app
