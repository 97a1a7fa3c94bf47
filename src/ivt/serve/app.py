"""The search service: a FastAPI app over one index and its model.

    POST /api/search {text, like, k, ...}   ranked ids, scores, image URLs and provenance; ``like``:
                                            an item id, "find this person" (with or without text)
    GET  /api/images/{id}                   the indexed image (only by id; never a path)
    GET  /api/frames/{id}                   a video crop's whole frame with its box drawn (JPEG)
    GET  /api/tracks/{id}                   the other crops of the item's track, in time order
    GET  /api/explain?id=..&text=..         PNG relevance maps of the text's phrases on the image
    GET  /healthz                           liveness and what is loaded
    GET  /                                  the web page (single file, no external resources)

The model and the index load once, in :func:`create_app`. Requests run in the server's thread
pool; the index is read-only after loading (safe to search concurrently) and model calls are
serialised by a lock, so concurrent requests neither race nor oversubscribe the CPU cores.
Mistakes in a request get a 4xx answer with a one-line ``error``.
"""
from __future__ import annotations

import errno
import io
import socket
import sys
import threading
import time
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException

from ivt.errors import ApiError, ConfigError, DataError, IndexStoreError, IvtError
from ivt.index.filters import SearchFilter
from ivt.index.frames import FrameNotAvailable, FrameServer
from ivt.index.gallery import Gallery
from ivt.index.query import (
    Example,
    combined_query,
    encode_query,
    example_item,
    example_ranking,
    open_for_search,
    query_label,
    results,
)
from ivt.terminal import printable

if TYPE_CHECKING:
    from ivt.inference import RetrievalModel

MAX_TEXT = 500
MAX_K = 100
MAX_BODY = 16 * 1024   # bytes; a query is a sentence
EXPLAIN_CACHE = 64
_MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp",
          ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff", ".gif": "image/gif"}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'",
}


class SearchRequest(BaseModel):
    """The body of ``POST /api/search``."""

    model_config = ConfigDict(extra="forbid")
    text: StrictStr | None = Field(default=None, max_length=MAX_TEXT)
    like: StrictStr | StrictInt | None = None
    k: StrictInt = Field(default=10, ge=1, le=MAX_K)
    per_track: StrictBool = False
    rerank: StrictInt = Field(default=0, ge=0, le=MAX_K)
    cosine: StrictBool = False
    camera: list[StrictStr] | None = Field(default=None, max_length=64)
    after: StrictStr | StrictFloat | StrictInt | None = None
    before: StrictStr | StrictFloat | StrictInt | None = None
    track: StrictInt | None = Field(default=None, ge=0)
    min_score: StrictFloat | StrictInt | None = Field(default=None, ge=-1, le=1)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed JSON body"
    first = errors[0] if errors else {}
    loc = list(first.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path"):      # where in the request, not a field name
        loc = loc[1:]
    where = ".".join(str(p) for p in loc)
    kind = first.get("type", "")
    if kind == "missing":
        return 422, f"{where or 'body'} is required"
    if kind == "extra_forbidden":
        return 422, (f"unknown field {where!r} (allowed: text, like, k, per_track, rerank, cosine, camera, after, "
                     f"before, track, min_score)")
    if where == "text" and kind in ("string_too_long", "string_too_short"):
        return 422, f"text must be 1 to {MAX_TEXT} characters"
    if where == "k":
        return 422, f"k must be an integer from 1 to {MAX_K}"
    return 422, f"{where or 'body'}: {first.get('msg', 'invalid value')}"


def require_json(request: Request) -> None:
    """415 for a body that is not declared JSON: FastAPI would validate the raw bytes against the
    model and answer a misleading 422. Runs before the body is parsed (a route dependency)."""
    declared = request.headers.get("content-type", "")
    media = declared.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, f"Content-Type must be application/json, got {declared[:60] or 'none'!r}")


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413, whether announced by
    Content-Length or streamed. The body (small by then) is read here and replayed to the app."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _error(413, f"request body over {self.max_bytes} bytes")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await too_large(scope, receive, send)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return                                  # the client went away
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class SearchService:
    """The loaded index and model, and the operations the endpoints need."""

    def __init__(self, gallery: Gallery, model: RetrievalModel, explain_samples: int = 64) -> None:
        self.gallery = gallery
        self.model = model
        self.explain_samples = explain_samples
        self._model_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._explained: OrderedDict[tuple[int | str, str], bytes] = OrderedDict()
        self.frames = FrameServer(gallery)

    def item_id(self, raw: str, field: str | None = None) -> int | str:
        """An item id from a request (``field`` of the body, None for the URL), naming an existing
        item, else 404; 422 for a prefix of several items' ids."""
        where = f"{field}: " if field else ""
        try:
            item = self.gallery.parse_id(raw)
        except DataError as exc:
            raise ApiError(422, where + str(exc)) from exc
        if item is None:
            raise ApiError(404, f"{where}no image with id {raw[:40]!r}")
        return item

    def search(self, text: str | None, k: int, per_track: bool, rerank: int = 0,
               where: SearchFilter | None = None, like: int | str | None = None,
               cosine: bool = False) -> dict[str, Any]:
        """A description, an example item of the index (``like``: find this person), or both; an
        example alone is ranked as :mod:`ivt.index.same_person` says unless ``cosine``."""
        if text is None and like is None:
            raise ApiError(422, "give a text, a like (an item id), or both")
        if cosine and (text is not None or like is None):
            raise ApiError(422, "cosine is for a like (an item id) without a text")
        if rerank and not self.model.can_rerank:
            raise ApiError(422, "rerank needs a model trained with an image-text matching head (model.itm); "
                                "this index's model has none")
        if rerank and text is None:
            raise ApiError(422, "rerank orders by how well images match a text: give one")
        start = time.perf_counter()
        example: Example | None = None
        if like is not None:
            example = example_item(self.gallery, str(self.item_id(str(like), "like")))
        ignored: list[str] = []
        text_vector = None
        if text is not None:
            with self._model_lock:
                try:
                    text_vector, ignored = encode_query(self.model, text)
                except DataError as exc:
                    raise ApiError(422, str(exc)) from exc
        try:
            query = combined_query(text_vector, example)
            ranking = example_ranking(text, cosine)
            with self._model_lock:
                hits = results(self.gallery, query, k, per_track, (self.model, text, rerank) if rerank else None,
                               where, example, ranking)
        except IvtError as exc:  # a damaged model or index: the server's fault, said in JSON
            print("ivt serve: " + printable(exc, keep="\n"), file=sys.stderr)
            what = ("the search gave no finite scores (damaged model or index)" if not rerank else
                    "the search or its re-ranking failed (a damaged model or index, or an indexed image that "
                    "changed since it was indexed)")
            raise ApiError(500, f"{what}; see the server log") from exc
        return {"text": text, "like": None if example is None else example.item, "query": query_label(text, example),
                "k": k, "per_track": per_track, "rerank": rerank,
                "ranking": "cosine" if ranking is None else "same person", "count": len(self.gallery),
                "took_ms": round(1000 * (time.perf_counter() - start), 2), "ignored_words": ignored, "results": hits}

    def frame(self, item_id: int | str) -> bytes:
        try:
            return self.frames.jpeg(item_id)
        except FrameNotAvailable as exc:
            raise ApiError(404, str(exc)) from exc
        except IndexStoreError as exc:  # names server paths: the reason stays in the server's log
            print("ivt serve: " + printable(exc, keep="\n"), file=sys.stderr)
            raise ApiError(410, f"the video of image {str(item_id)[:12]} has changed or gone since it was indexed") \
                from exc

    def track(self, item_id: int | str, limit: int) -> dict[str, Any]:
        """The crops of the item's track, in time order (at most ``limit``, evenly spread)."""
        span = self.gallery.track_of(item_id)
        if span is None:
            return {"id": item_id, "track": None, "count": 1, "items": []}
        members = list(span.items)
        if len(members) > limit:
            members = [members[round(i * (len(members) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 \
                else [item_id]
        self.gallery.prefetch(members)
        items = []
        for member in members:
            info = self.gallery.describe(member, span)
            items.append({"id": member, "frame": info.get("frame"), "time": info.get("time"),
                          "image_url": f"/api/images/{member}", "frame_url": f"/api/frames/{member}"})
        return {"id": item_id, "track": span.track, "count": len(span.items), "start": span.start, "end": span.end,
                "items": items}

    def image(self, item_id: int | str) -> tuple[bytes, str]:
        try:
            data = self.gallery.read_image(item_id)
        except IndexStoreError as exc:  # the reason names server paths: it stays in the server's log
            print("ivt serve: " + printable(exc, keep="\n"), file=sys.stderr)
            raise ApiError(410, f"image {item_id} has changed or gone since it was indexed") from exc
        suffix = Path(self.gallery.item_path(item_id)).suffix.lower()
        return data, _MEDIA.get(suffix, "application/octet-stream")

    def explain(self, item_id: int | str, text: str) -> bytes:
        from PIL import Image

        from ivt.explain import explain_png

        try:
            self.model.tokenizer.words_left_out(text)       # refused as search refuses it
        except DataError as exc:
            raise ApiError(422, str(exc)) from exc
        key = (item_id, text)
        with self._cache_lock:
            if key in self._explained:
                self._explained.move_to_end(key)
                return self._explained[key]
        data, _ = self.image(item_id)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            with self._model_lock:
                _, png = explain_png(self.model, img, text, samples=self.explain_samples)
        with self._cache_lock:
            self._explained[key] = png
            while len(self._explained) > EXPLAIN_CACHE:
                self._explained.popitem(last=False)
        return png


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` for the server to listen on (``uvicorn.Server.run(sockets=
    [...])``), made before anything loads: a port already in use, or a host that is not an address
    of this machine, is a ConfigError naming host:port rather than a failure after "serving"."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot serve on {where}: {host!r} is not a host name or address that resolves "
                          f"({getattr(exc, 'strerror', None) or exc})") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn: a recently closed port is free
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reason = {errno.EADDRINUSE: "the port is already in use; choose another --port",
                  errno.EADDRNOTAVAIL: f"{host} is not an address of this machine; check --host"}.get(
                      exc.errno, exc.strerror or str(exc))
        raise ConfigError(f"cannot serve on {where}: {reason}") from exc
    return sock


def load_service(index_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
                 search_params: dict[str, int] | None = None, precision: str = "auto") -> SearchService:
    """Open the index (verified) and the model it was built with (checked by fingerprint)."""
    return SearchService(*open_for_search(index_dir, checkpoint, device, search_params, precision))


def _page() -> str:
    return resources.files("ivt.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(index_dir: str | Path | None = None, *, service: SearchService | None = None,
               checkpoint: str | Path | None = None, device: str = "auto", max_body: int = MAX_BODY) -> FastAPI:
    """The FastAPI app for an index (or for an already loaded ``service``)."""
    if service is None:
        if index_dir is None:
            raise ValueError("create_app needs an index directory or a loaded service")
        service = load_service(index_dir, checkpoint, device)
    svc = service
    page = _page()
    app = FastAPI(title="ivt search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return _error(status, message)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, message)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(Exception)
    async def _internal(_request: Request, _exc: Exception) -> JSONResponse:
        return _error(500, "internal error; see the server log")

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        manifest = svc.gallery.manifest
        return {"status": "ok", "items": len(svc.gallery), "tracks": svc.gallery.track_count(),
                "backend": manifest["backend"]["name"], "model": manifest["model"]["fingerprint"][:12]}

    @app.post("/api/search", dependencies=[Depends(require_json)])
    def search(body: SearchRequest) -> dict[str, Any]:
        text = body.text.strip() if body.text is not None else None
        if body.text is not None and not text:
            raise ApiError(422, f"text must be 1 to {MAX_TEXT} characters")
        try:
            where = SearchFilter.make(body.camera, body.after, body.before, body.track, body.min_score)
        except DataError as exc:
            raise ApiError(422, str(exc)) from exc
        return svc.search(text, body.k, body.per_track, body.rerank, where, body.like, body.cosine)

    @app.get("/api/images/{item_id}")
    def image(item_id: str) -> Response:
        data, media = svc.image(svc.item_id(item_id))
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/frames/{item_id}")
    def frame(item_id: str) -> Response:
        return Response(svc.frame(svc.item_id(item_id)), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/tracks/{item_id}")
    def track(item_id: str, limit: int = Query(24, ge=1, le=200)) -> dict[str, Any]:
        return svc.track(svc.item_id(item_id), limit)

    @app.get("/api/explain")
    def explain(id: str = Query(..., max_length=80),  # noqa: A002 - the public parameter name
                text: str = Query(..., min_length=1, max_length=MAX_TEXT)) -> Response:
        item = svc.item_id(id)
        if not text.strip():
            raise ApiError(422, f"text must be 1 to {MAX_TEXT} characters")
        return Response(svc.explain(item, text.strip()), media_type="image/png")

    app.add_middleware(BodySizeLimit, max_bytes=max_body)
    return app
