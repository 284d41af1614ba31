"""Errors are JSON, every one of them: the statuses OpenAPI documents and the app's handlers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from continuonbrain.models.store import is_disk_full
from continuonbrain.runtime.api_models import ErrorResponse

#: What each error status means, for OpenAPI (every error body is an ErrorResponse).
ERROR_TEXT = {
    400: "malformed request, or a Host header that is not this server's",
    401: "missing or wrong token ('Authorization: Bearer <token>')",
    404: "no such version or sim, or no shadow running",
    409: "conflict: a job runs, no candidate, a promotion in progress, a gate refuses",
    413: "request body over the size limit",
    422: "invalid input; the message names the field",
    429: "every session is in active use: a new session id is refused (Retry-After)",
    500: "unexpected server error",
    503: "no model loaded, or too many event subscribers (Retry-After)",
    507: "the disk is full; nothing half-written was left behind",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses: JSON ``ErrorResponse`` bodies (also on a
    route whose success answer is another media type, such as the SSE stream)."""
    json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    return {code: {"model": ErrorResponse, "description": ERROR_TEXT[code], "content": json_body} for code in codes}


def area_router() -> APIRouter:
    """The ``APIRouter`` of one area of the API: every route documents the 400 (a bad request
    or Host header, answered by the middleware) and the 500 every route can answer."""
    return APIRouter(responses=error_responses(400, 500))


def io_error(what: str, exc: OSError) -> HTTPException:
    """An OSError from the store as a JSON error: 507 for a full disk, 500 otherwise."""
    if is_disk_full(exc):
        return HTTPException(507, f"{what} failed: the disk is full ({exc})")
    return HTTPException(500, f"{what} failed: {type(exc).__name__}: {exc}")


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "header")]
        if e.get("type") == "json_invalid":  # FastAPI's loc is ("body", position): say what it is
            why = (e.get("ctx") or {}).get("error")
            at = f"at byte {loc[0]}" if loc else "unreadable"
            parts.append(f"request body is not valid JSON ({at}{f': {why}' if why else ''})")
            continue
        parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
    detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
    return JSONResponse({"detail": detail, "message": "; ".join(parts)}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    message = detail if isinstance(detail, str) else (detail or {}).get("message", str(detail))
    return JSONResponse(
        {"detail": detail, "message": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug or an I/O failure: still a JSON answer with the reason (the traceback goes to the log)."""
    if isinstance(exc, OSError) and is_disk_full(exc):
        message = f"the disk is full: {exc}"
        return JSONResponse({"detail": message, "message": message}, status_code=507)
    message = f"internal error: {type(exc).__name__}: {exc}"
    return JSONResponse({"detail": message, "message": message}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    # FastAPI's, Starlette's (404 of static files, 405) and the 413
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected_error)
