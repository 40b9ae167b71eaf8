"""The HTTP layer: FastAPI routes over :class:`SearchBackend`, one error handler, the static search page.

Routes: ``POST /search``, ``GET /items/{id}``, ``GET /items/{id}/image[?size=N]``, ``POST /items``,
``GET /health``, ``GET /info``, the page at ``/`` (assets under ``/static/``) and the OpenAPI docs at ``/docs``.
Item ids may contain ``/`` and ``:``; clients should percent-encode them as one path segment (the page does).
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from ..data.textio import invalid_unicode_field
from ..errors import InvalidInputError, NotFoundError, PayloadTooLargeError, UnimirError
from ..index import Index
from .backend import DEFAULT_MAX_UPLOAD_BYTES, MAX_THUMB, MIN_THUMB, SearchBackend

log = logging.getLogger("unimir.serve")

STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
DOCS_ASSETS = "/docs-assets"


# --- OpenAPI documentation models (requests are parsed by the backend: JSON and multipart share one parser) ---

class SearchRequest(BaseModel):
    text: str | None = Field(None, description="query text")
    image: str | None = Field(None, description="query image, base64 (a data: URL is accepted); in multipart "
                                                "requests an uploaded file")
    image_id: str | None = Field(None, description="search with the image of an indexed item")
    instruction: str | None = Field(None, description="task instruction prepended to the text, M-BEIR style")
    modality: str | list[str] | None = Field(None, description="candidate filter: image, text, image,text, "
                                                               "several joined by '|', or any")
    mode: str = Field("dense", description="retrieval mode; GET /info lists the ones this index supports")
    k: int = Field(10, ge=1, le=1000)
    beams: int | None = Field(None, description="beam width of generative modes")
    exclude_query: bool = Field(False, description="drop candidates identical to the query")


class Hit(BaseModel):
    rank: int
    id: str
    modality: str
    text: str | None
    score: float | None
    tie_group: int
    image_url: str | None


class SearchResponse(BaseModel):
    query: dict[str, Any]
    results: list[Hit]
    count: int
    timings_ms: dict[str, float] = Field(description="encode, search, total (server time) in milliseconds")


class ItemRecord(BaseModel):
    id: str
    modality: str
    text: str | None
    src_content: str | None
    image_url: str | None


class AddItemRequest(BaseModel):
    text: str | None = None
    image: str | None = Field(None, description="base64 in JSON; an uploaded file in multipart requests")
    id: str | None = Field(None, description="default: a digest of the content")
    src_content: str | None = None


class AddItemResponse(BaseModel):
    item: ItemRecord
    created: bool
    items: int


class ErrorBody(BaseModel):
    status: int
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    form = json.loads(json.dumps(schema))
    form["properties"]["image"] = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema}, "multipart/form-data": {"schema": form}}}}


_ERRORS = {400: {"model": ErrorResponse, "description": "bad request"},
           404: {"model": ErrorResponse, "description": "unknown id"},
           413: {"model": ErrorResponse, "description": "upload over the size limit"}}


# --- the app ------------------------------------------------------------------------------------------------

def create_app(index: Index, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, *, warm_up: bool = False) -> FastAPI:
    """The FastAPI app serving ``index``. The index and its encoder are shared by all requests."""
    backend = SearchBackend(index, max_upload_bytes=max_upload_bytes)
    if warm_up:
        backend.warm_up()
    static = _load_static()
    # /docs and /redoc load Swagger UI and ReDoc from the files fastapi-offline ships (under DOCS_ASSETS), never
    # from a CDN, so the API page works on an offline machine
    app = FastAPIOffline(title="unimir search", version=_version(), static_url=DOCS_ASSETS,
                         description="Multimodal search over a unimir index: text, image or both, any to any.")
    app.state.backend = backend
    # a JSON search with a base64 image is 4/3 of the image; multipart adds a little framing
    body_limit = backend.max_upload_bytes * 4 // 3 + 64 * 1024
    app.add_middleware(_Guard, body_limit=body_limit)

    # --- errors: one handler per family, never a stack trace ---------------------------------------------
    @app.exception_handler(UnimirError)
    async def _unimir_error(request: Request, exc: UnimirError):
        if exc.http_status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return error_response(exc.http_status, type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return error_response(400, "InvalidInputError", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path!r}; see /docs"
        return error_response(exc.status_code, "HTTPError", message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # the server log gets the traceback (Starlette re-raises to uvicorn); the client only this message
        log.error("%s %s: unexpected %s", request.method, request.url.path, type(exc).__name__)
        return error_response(500, "InternalError", "internal server error (see the server log)")

    # --- page ---------------------------------------------------------------------------------------------
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> Response:
        return HTMLResponse(static["index.html"][0], headers={"Content-Security-Policy": PAGE_CSP,
                                                              "Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in static:  # a fixed table read at start-up: request names never reach the filesystem
            return error_response(404, "NotFoundError", f"no static file {name!r}")
        body, media = static[name]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        body, media = static["favicon.svg"]
        return Response(body, media_type=media)

    # --- API ----------------------------------------------------------------------------------------------
    @app.get("/health", tags=["status"], summary="Liveness and item count")
    def health() -> dict[str, Any]:
        return backend.health()

    @app.head("/health", include_in_schema=False)  # uptime checks and load balancers probe with HEAD
    def health_head() -> Response:
        return Response(status_code=200)

    @app.get("/info", tags=["status"], summary="What this index holds and supports (modes, presets, limits)")
    def info() -> dict[str, Any]:
        return backend.info()

    @app.post("/search", tags=["search"], summary="Search by text, image or both",
              response_model=SearchResponse, responses=_ERRORS, openapi_extra=_body_doc(SearchRequest))
    async def search(request: Request) -> Response:
        started = time.perf_counter()
        fields = await _fields(request, backend.max_upload_bytes)
        # parsing decodes base64 and probes the image: off the event loop, like the search itself
        result = await run_in_threadpool(lambda: backend.search(backend.parse_search(fields)))
        result["timings_ms"]["total"] = round((time.perf_counter() - started) * 1000, 2)
        return JSONResponse(result)

    @app.post("/items", tags=["items"], summary="Add an item (text and/or image) to the live index",
              status_code=201, response_model=AddItemResponse, responses={**_ERRORS, 409: {
                  "model": ErrorResponse, "description": "id already taken"}},
              openapi_extra=_body_doc(AddItemRequest))
    async def add_item(request: Request) -> Response:
        fields = await _fields(request, backend.max_upload_bytes)
        record, created = await run_in_threadpool(lambda: backend.add(backend.parse_item(fields)))
        return JSONResponse({"item": record, "created": created, "items": len(backend.index)},
                            status_code=201 if created else 200)

    # Ids may hold '/': the image route is declared first, and both resolve the id from the raw path.
    @app.get("/items/{id:path}/image", tags=["items"], summary="An item's image, or a thumbnail with ?size=",
             responses={200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "image bytes"},
                        **_ERRORS})
    def item_image(request: Request, id: str = Path(description="the item id, percent-encoded as one segment"),
                   size: int | None = Query(None, ge=MIN_THUMB, le=MAX_THUMB,
                                            description="fit into size×size pixels")) -> Response:
        did, want_image = _item_ref(request, backend)
        if not want_image:
            return JSONResponse(backend.item(did))
        body, media = backend.item_image(did, size)
        return Response(body, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/items/{id:path}", tags=["items"], summary="An item's record", response_model=ItemRecord,
             responses=_ERRORS)
    def item(request: Request, id: str = Path(description="the item id, percent-encoded as one segment")) -> Response:
        did, want_image = _item_ref(request, backend)
        if want_image:
            body, media = backend.item_image(did, None)
            return Response(body, media_type=media, headers={"Cache-Control": "public, max-age=3600"})
        return JSONResponse(backend.item(did))

    @app.delete("/items/{id:path}", tags=["items"], summary="Delete an item from the live index",
                responses=_ERRORS)
    async def delete_item(request: Request,
                          id: str = Path(description="the item id, percent-encoded as one segment")) -> Response:
        did, want_image = _item_ref(request, backend)
        if want_image:
            raise NotFoundError("an image cannot be deleted on its own; DELETE /items/{id}")
        await run_in_threadpool(lambda: backend.delete(did))
        return JSONResponse({"deleted": did, "items": len(backend.index)})

    return app


# --- request helpers ----------------------------------------------------------------------------------------

async def _fields(request: Request, max_upload_bytes: int) -> dict[str, Any]:
    """The fields of a JSON object body or of a form (multipart or urlencoded); uploads become bytes."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        raw = await request.body()
        if not raw.strip():
            raise InvalidInputError("empty request body: send a JSON object")
        try:
            data = json.loads(raw, object_pairs_hook=_unique_keys)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"the body is not valid JSON ({exc})") from None
        except RecursionError:
            raise InvalidInputError("the JSON body is nested too deeply") from None
        if not isinstance(data, dict):
            raise InvalidInputError("the JSON body must be an object")
        bad = invalid_unicode_field(data)
        if bad:
            raise InvalidInputError(f"field {bad!r} is not valid Unicode (a lone surrogate such as \\ud800)")
        return data
    if ctype == "application/x-www-form-urlencoded":
        return _urlencoded_fields(await request.body())
    if ctype in FORM_TYPES:
        try:
            form = await request.form(max_files=4, max_fields=32, max_part_size=max_upload_bytes * 4 // 3 + 1024)
        except MultiPartException as exc:
            raise InvalidInputError(f"malformed form data: {exc.message}") from None
        fields: dict[str, Any] = {}
        try:
            for key, value in form.multi_items():
                if key in fields:
                    raise InvalidInputError(f"field {key!r} given twice")
                if isinstance(value, UploadFile):
                    data = await value.read(max_upload_bytes + 1)
                    if not data and not value.filename:
                        continue  # an empty file input: browsers send a nameless empty part
                    if len(data) > max_upload_bytes:
                        raise PayloadTooLargeError(f"upload {key!r} is over the limit of {max_upload_bytes} bytes")
                    fields[key] = data
                else:
                    fields[key] = value
        finally:
            await form.close()
        return fields
    raise InvalidInputError("send the request as JSON (application/json) or as a form (multipart/form-data)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: ``{"k": 5, "k": 500}`` is refused, as a form field sent twice is."""
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise InvalidInputError(f"field {twice!r} given twice")
    return out


def _urlencoded_fields(body: bytes, max_fields: int = 32) -> dict[str, str]:
    """An urlencoded form, decoded strictly: Starlette's parser turns bytes that are not UTF-8 into U+FFFD, which
    would be searched or stored as if the client had sent them."""
    fields: dict[str, str] = {}
    for pair in body.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        name, value = (unquote_to_bytes(x.replace(b"+", b" ")) for x in (raw_name, raw_value))
        try:
            key = name.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError("a form field name is not valid UTF-8") from None
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"field {key!r} is not valid UTF-8") from None
        if key in fields:
            raise InvalidInputError(f"field {key!r} given twice")
        if len(fields) == max_fields:
            raise InvalidInputError(f"malformed form data: too many fields (at most {max_fields})")
        fields[key] = text
    return fields


def _item_ref(request: Request, backend: SearchBackend) -> tuple[str, bool]:
    """(item id, whether its image is wanted) from the request path.

    A client percent-encodes the id as one segment (``/items/cats%2Fa.png/image``), which is unambiguous.
    For hand-typed paths with raw slashes (``/items/cats/a.png/image``), the decoded path is matched against
    the ids in the index. Either way the result is only ever used as a key into the index.
    """
    raw = request.scope.get("raw_path") or request.url.path.encode()
    raw_path = raw.decode("latin-1").split("?", 1)[0]
    prefix = "/items/"
    if raw_path.startswith(prefix):
        rest = raw_path[len(prefix):]
        segments = rest.split("/")
        if len(segments) == 1:
            return _decode(segments[0]), False
        if len(segments) == 2 and segments[1] == "image" and backend.has_item(_decode(segments[0])):
            return _decode(segments[0]), True
        fallback = (_decode(segments[0]), True) if len(segments) == 2 and segments[1] == "image" else None
    else:
        fallback = None
    decoded = request.url.path
    decoded = decoded[decoded.index(prefix) + len(prefix):] if prefix in decoded else decoded
    if backend.has_item(decoded):
        return decoded, False
    if decoded.endswith("/image") and backend.has_item(decoded[:-len("/image")]):
        return decoded[:-len("/image")], True
    return fallback or (decoded, False)  # unknown: the look-up answers 404


def _decode(segment: str) -> str:
    try:
        return unquote(segment, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidInputError("the item id is not valid UTF-8") from None


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "type": kind, "message": message}}, status_code=status,
                        headers=headers)


class _Guard:
    """ASGI middleware: refuses request bodies over the limit (413) and adds ``nosniff`` to every response."""

    def __init__(self, app, body_limit: int):
        self.app, self.body_limit = app, body_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = None
            for name, value in scope.get("headers", []):
                if name == b"content-length":
                    length = value
            if length is not None:
                if not length.strip().isdigit():
                    response = error_response(400, "InvalidInputError", "invalid Content-Length header")
                    return await response(scope, receive, send_with_headers)
                if int(length) > self.body_limit:
                    response = error_response(413, "PayloadTooLargeError",
                                              f"request body of {int(length)} bytes is over the limit of "
                                              f"{self.body_limit} bytes", headers={"Connection": "close"})
                    return await response(scope, receive, send_with_headers)
            seen = 0
            limit = self.body_limit

            async def limited_receive():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise PayloadTooLargeError(f"request body over the limit of {limit} bytes")
                return message

            return await self.app(scope, limited_receive, send_with_headers)
        return await self.app(scope, receive, send_with_headers)


def _load_static() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("unimir.serve").joinpath("static")
    return {name: (folder.joinpath(name).read_bytes(), media) for name, media in STATIC_FILES.items()}


def _version() -> str:
    try:
        from .. import __version__
        return __version__
    except ImportError:
        return "0"

