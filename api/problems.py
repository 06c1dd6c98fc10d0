"""Errors as RFC 9457 problem details: ``application/problem+json`` with a stable ``code``.

Every error the API answers has the same shape: ``type`` (a URN naming the code), ``title``,
``status``, ``detail``, ``instance`` (the request path), ``code`` (stable, for programs)
and, for invalid requests, ``errors`` naming each field. Request bodies over
``BODY_BYTES_MAX`` are refused before they are read into a model; a body must come with a
Content-Length (no chunks, not both), as ``application/json`` in UTF-8, and be JSON with
each key once per object (``{"amount": 1, "amount": 100}`` means whatever a reader picks).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from email.message import Message

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request as StarletteRequest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
BODY_BYTES_MAX = 64 * 1024
INSTANCE_LENGTH_MAX = 200
_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed",
           409: "Conflict", 411: "Length required", 413: "Request body too large",
           415: "Unsupported media type",
           422: "Invalid request", 500: "Internal error", 503: "Not ready"}
_CODES = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
          422: "invalid_request", 500: "internal_error", 503: "not_ready"}


class ProblemDocument(BaseModel):
    """The shape of every error answer (RFC 9457, plus ``code`` and ``errors``)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    errors: list[dict] | None = None


def responses(*statuses: int) -> dict:
    """OpenAPI ``responses`` entries for the problem documents a route may answer."""
    return {status: {"model": ProblemDocument, "description": _TITLES.get(status, "Error"),
                     "content": {MEDIA_TYPE: {}}} for status in statuses}


COMMON = responses(400, 413, 415, 422, 500)
"""Any route: a body that is not JSON, too large, not sent as JSON, an invalid request, an
unexpected error."""


class Problem(Exception):
    """Raise in a route: answered as a problem document with this status and code."""

    def __init__(self, status: int, code: str, detail: str, errors: list | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.errors = status, code, detail, errors
        self.headers = headers or {}


def document(status: int, code: str, detail: str, instance: str,
             errors: list | None = None) -> JSONResponse:
    if len(instance) > INSTANCE_LENGTH_MAX:  # a path of kilobytes is not echoed back
        instance = f"{instance[:INSTANCE_LENGTH_MAX]}..."
    body = {"type": f"urn:paycore:problem:{code}", "title": _TITLES.get(status, "Error"),
            "status": status, "detail": detail, "instance": instance, "code": code}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


def field_errors(errors) -> list[dict]:
    """Pydantic's errors as ``{"field": "body.amount", "message": ...}``, in order."""
    return [{"field": ".".join(str(part) for part in e["loc"]), "message": e["msg"]}
            for e in errors]


def _once_each(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are each given once (``json.loads``' hook)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        twice = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise json.JSONDecodeError(f"duplicate key {', '.join(twice)[:200]}", "", 0)
    return found


class _StrictJSONRequest(StarletteRequest):
    async def json(self):
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=_once_each)
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose body is JSON with each key once per object."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request):
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict


def _not_json(errors: list[dict]) -> str | None:
    """Why the body is not JSON, if that is what the validation errors say."""
    for error in errors:
        if error["type"] == "json_invalid":
            where = error["loc"][-1] if isinstance(error["loc"][-1], int) else 0
            return f"the body is not JSON: {error.get('ctx', {}).get('error', '')} " \
                   f"(at character {where})"
    return None


def _framing(request: Request) -> tuple[int, str, str] | None:
    """What is wrong with how a request presents its body, before it is read."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > BODY_BYTES_MAX:
        return 413, "body_too_large", f"request body of {length} bytes; at most {BODY_BYTES_MAX}"
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    if "transfer-encoding" in request.headers:
        if length is not None:
            return 400, "ambiguous_body_length", ("Content-Length and Transfer-Encoding "
                                                  "both given: send only a Content-Length")
        return 411, "length_required", "send the body with a Content-Length"
    if length is None or length == "0":
        return None
    media = Message()
    media["content-type"] = request.headers.get("content-type", "")
    charset = media.get_param("charset")
    if media.get_content_type() != "application/json" or \
            (charset is not None and str(charset).lower() != "utf-8"):
        return 415, "unsupported_media_type", "send the body as Content-Type: application/json"
    return None


def install(app: FastAPI) -> None:
    """Problem documents for every error, the body size limit and strict JSON bodies (for
    routes added after this)."""
    app.router.route_class = StrictJSONRoute

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        answer = document(exc.status, exc.code, exc.detail, request.url.path, exc.errors)
        answer.headers.update(exc.headers)
        return answer

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        not_json = _not_json(list(exc.errors()))
        if not_json:
            return document(400, "malformed_body", not_json, request.url.path)
        errors = field_errors(exc.errors())
        fields = ", ".join(e["field"] for e in errors)
        return document(422, "invalid_request", f"invalid: {fields}", request.url.path,
                        errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = _CODES.get(exc.status_code, f"http_{exc.status_code}")
        answer = document(exc.status_code, code, str(exc.detail), request.url.path)
        for name, value in (exc.headers or {}).items():
            answer.headers[name] = value
        if exc.status_code == 405:  # every method of the path, not only the matched route's
            answer.headers["Allow"] = ", ".join(sorted(
                {m for route in request.app.routes if isinstance(route, APIRoute)
                 and route.path_regex.match(request.url.path) for m in route.methods}))
        return answer

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return document(500, "internal_error", "an unexpected error; see the API log",
                        request.url.path)

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        refused = _framing(request)
        if refused is not None:
            return document(*refused, request.url.path)
        return await call_next(request)
