"""The HTTP service: FastAPI routes over an Engine and a Batcher.

    app = create_app(Settings(model="runs/sst2/best"))   # uvicorn runs it (server.py)

Every model route runs the same way: refuse a request over the limits (413), prepare its inputs
on a worker thread (422 names a bad one), queue them for the batcher (429 with Retry-After when
the queue is full), then shape the outputs into results. `Gate`, a plain ASGI middleware around
everything, checks the API key and the body size, counts the request in the metrics, and writes
its one JSON access-log line.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .batcher import Batcher, QueueFull
from .engine import Engine, InputError, Unsupported
from .metrics import Metrics
from .schemas import (
    EmbedRequest,
    ErrorBody,
    FillMaskRequest,
    FillMaskResult,
    Health,
    Info,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    Prediction,
    PredictRequest,
    Token,
    TokenizeRequest,
)

access_log = logging.getLogger("roberta_scratch.serve.access")
log = logging.getLogger("roberta_scratch.serve")

MODEL_ROUTES = ("/predict", "/embed", "/v1/embeddings", "/fill-mask")  # the ones that queue for the model
ROUTES = ("/predict", "/embed", "/v1/embeddings", "/fill-mask", "/tokenize", "/health", "/info", "/metrics")
OPEN_ROUTES = ("/health", "/docs", "/openapi.json")  # answered without the API key (probes, the schema)
ERRORS = {400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 429: {"model": ErrorBody}}


@dataclass
class Settings:
    """What `roberta-scratch serve` was given (see its --help)."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_tokens: int = 16384
    max_wait_ms: float = 0.0
    max_queue: int = 512
    max_client_batch_size: int = 32
    max_request_bytes: int = 1 << 20
    workers: int = 1
    threads: int = 0  # torch threads per worker; 0: the usable cores divided among the workers
    api_key: str | None = None
    device: str = "cpu"
    pooling: str = "mean"
    trust_code: bool = False
    graceful_timeout: float = 30.0


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str, limit: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.limit, self.headers = status, kind, limit, headers


def error_response(path: str, status: int, message: str, kind: str, limit=None, headers=None) -> JSONResponse:
    """TEI's error shape, or OpenAI's under /v1/ (so that its client reads the message)."""
    if path.startswith("/v1/"):
        body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    else:
        body = {"error": message, "error_type": kind, **({"limit": limit} if limit else {})}
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------------- the app


class Service:
    """The process's engine, batcher and metrics, and the one way a model route runs."""

    def __init__(self, settings: Settings, engine: Engine | None):
        self.settings, self.engine = settings, engine
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.status = "loading"

    async def start(self) -> None:
        s = self.settings
        if self.engine is None:  # a worker process of --workers N loads its own model
            self.engine = await run_in_threadpool(
                Engine.load, s.model, s.device, trust_code=s.trust_code, pooling=s.pooling
            )
        if s.threads:
            torch.set_num_threads(s.threads)
        self.batcher = Batcher(
            self.engine.run, s.max_batch_tokens, s.max_wait_ms / 1000, s.max_queue, self.metrics.observe_batch
        )
        self.batcher.start()
        await self.warm_up()
        self.status = "ok"

    async def warm_up(self) -> None:
        """One batch through every route the model has, so the first client is not the one who
        pays for lazy initialisation; /health says ok only after it."""
        task = self.engine.task
        samples = {
            "predict": [{"question": "Who?", "context": "Nobody."} if task and task.name == "qa" else {"text": "Hi."}],
            "embed": ["Hello world."],
            "fill-mask": [f"Hello {self.engine.tok.mask_token}."],
        }
        for route in self.engine.routes:
            await self.run(None, route, samples[route], truncate=True, top_k=1)

    async def stop(self) -> None:
        self.status = "draining"
        if self.batcher is not None:
            await self.batcher.drain()

    def info(self) -> dict:
        s = self.settings
        return {
            **self.engine.info(),
            "max_batch_tokens": s.max_batch_tokens,
            "max_wait_ms": s.max_wait_ms,
            "max_queue": s.max_queue,
            "max_client_batch_size": s.max_client_batch_size,
            "max_request_bytes": s.max_request_bytes,
            "torch_threads": torch.get_num_threads(),
            "workers": s.workers,
            "version": version(),
        }

    def check_count(self, rows: list) -> None:
        limit = self.settings.max_client_batch_size
        if len(rows) > limit:
            raise HTTPError(
                413,
                f"{len(rows)} inputs in one request, more than --max-client-batch-size {limit}: split the request",
                "validation",
                {"max_client_batch_size": limit},
            )

    async def run(self, request: Request | None, route: str, rows: list, truncate: bool, **options) -> list:
        """One request through prepare -> the batcher -> finish."""
        try:
            return await self._run(request, route, rows, truncate, **options)
        except QueueFull as e:
            raise HTTPError(429, str(e), "overloaded", headers={"Retry-After": str(e.retry_after)}) from None
        finally:
            if self.batcher is not None:
                self.metrics.queue_depth.set(self.batcher.depth)

    async def _run(self, request: Request | None, route: str, rows: list, truncate: bool, **options) -> list:
        if self.status not in ("ok", "loading"):
            raise HTTPError(503, f"the server is {self.status}", "unhealthy")
        self.check_count(rows)
        if self.batcher is not None:
            self.batcher.check_room(len(rows))  # before tokenizing: a refusal costs next to nothing
        try:
            features = await run_in_threadpool(self.engine.prepare, route, rows, truncate, **options)
        except Unsupported as e:
            raise HTTPError(400, str(e), "unsupported") from None
        except InputError as e:
            raise HTTPError(413 if e.limit else 422, str(e), "validation", e.limit) from None
        items = await self.batcher.submit(route, features) if features else []
        if request is not None:
            request.state.inputs = len(rows)
            request.state.tokens = sum(i.tokens for i in items)
            request.state.queue_ms = round(1000 * max((i.queue_s for i in items), default=0), 2)
            request.state.compute_ms = round(1000 * sum({i.batch: i.compute_s for i in items}.values()), 2)
        outputs = [i.future.result() for i in items]
        return await run_in_threadpool(self.engine.finish, route, rows, features, outputs, **options)


def as_list(inputs) -> list:
    return inputs if isinstance(inputs, list) else [inputs]


def create_app(settings: Settings, engine: Engine | None = None) -> Gate:
    """The app; `engine` is loaded already (one worker) or is loaded at startup (--workers N)."""
    service = Service(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        log.info("ready: %s", json.dumps(service.info()))
        yield
        await service.stop()

    app = FastAPI(
        title="roberta-scratch",
        summary="A RoBERTa model served with dynamic batching",
        version=version(),
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(router)
    app.add_exception_handler(HTTPError, on_http_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(Exception, on_failure)
    return Gate(app, settings, service.metrics)


async def on_http_error(request: Request, e: HTTPError):
    return error_response(request.url.path, e.status, str(e), e.kind, e.limit, e.headers)


async def on_invalid(request: Request, e: RequestValidationError):
    """422 with what pydantic found wrong, in one line (malformed JSON included)."""
    said = [f"{'.'.join(str(p) for p in err['loc']) or 'the request'}: {err['msg']}" for err in e.errors()]
    message = "; ".join(said[:3]) + (f"; and {len(said) - 3} more" if len(said) > 3 else "")
    return error_response(request.url.path, 422, message or "invalid request", "validation")


async def on_failure(request: Request, e: Exception):
    log.exception("request %s failed", request.url.path)
    return error_response(request.url.path, 500, f"the model failed on this request: {e}", "backend")


# ---------------------------------------------------------------------------- the routes

router = APIRouter()


def service_of(request: Request) -> Service:
    return request.app.state.service


@router.post("/predict", response_model=list[Prediction], responses=ERRORS)
async def predict(body: PredictRequest, request: Request):
    """The model's task, as `roberta-scratch predict` answers it: one result per input."""
    rows = [r if isinstance(r, str) else r.model_dump(exclude_none=True) for r in as_list(body.inputs)]
    return JSONResponse(await service_of(request).run(request, "predict", rows, body.truncate))


@router.post("/embed", response_model=list[list[float]], responses=ERRORS)
async def embed(body: EmbedRequest, request: Request):
    """The encoder's last hidden states, pooled over each input (mean or the <s> token)."""
    vectors = await service_of(request).run(
        request, "embed", as_list(body.inputs), body.truncate, pooling=body.pooling, normalize=body.normalize
    )
    return JSONResponse(vectors)


@router.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse, responses=ERRORS)
async def openai_embeddings(body: OpenAIEmbeddingRequest, request: Request):
    """OpenAI's embeddings API, so that its clients work unchanged: normalized vectors with the
    server's --pooling; inputs longer than the model takes are truncated, as OpenAI's are not."""
    service = service_of(request)
    hidden = service.engine.cfg.hidden_size
    if body.dimensions is not None and body.dimensions != hidden:
        raise HTTPError(422, f"dimensions {body.dimensions}: this model's embeddings have {hidden}", "validation")
    rows = [body.input] if isinstance(body.input, str) or _is_ids(body.input) else body.input
    vectors = await service.run(request, "embed", rows, truncate=True, normalize=True)
    tokens = getattr(request.state, "tokens", 0)

    def encode(v):
        if body.encoding_format == "base64":  # little-endian float32, as OpenAI sends them
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        return v

    return JSONResponse(
        {
            "object": "list",
            "data": [{"object": "embedding", "embedding": encode(v), "index": i} for i, v in enumerate(vectors)],
            "model": body.model or service.engine.info()["model_id"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


@router.post("/fill-mask", response_model=list[FillMaskResult], responses=ERRORS)
async def fill_mask(body: FillMaskRequest, request: Request):
    """The top_k fills of each <mask>, for a model with its masked-LM head."""
    results = await service_of(request).run(request, "fill-mask", as_list(body.inputs), body.truncate, top_k=body.top_k)
    return JSONResponse(results)


@router.post("/tokenize", response_model=list[list[Token]], responses=ERRORS)
async def tokenize(body: TokenizeRequest, request: Request):
    """Each input's tokens: id, text, whether special, and character span."""
    service = service_of(request)
    texts = as_list(body.inputs)
    service.check_count(texts)
    return JSONResponse(await run_in_threadpool(service.engine.tokenize, texts, body.add_special_tokens))


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request):
    """200 once the model is loaded and warmed up and the batching loop runs; 503 otherwise
    (loading, draining after SIGTERM): the readiness probe."""
    service = service_of(request)
    ok = service.status == "ok" and service.batcher is not None and service.batcher.alive
    status = service.status if service.status != "ok" or ok else "failed"
    return JSONResponse({"status": status}, status_code=200 if ok else 503)


@router.get("/info", response_model=Info)
async def info(request: Request):
    """The model and the server's limits."""
    return JSONResponse(service_of(request).info())


@router.get("/metrics", response_class=Response)
async def metrics(request: Request):
    """Prometheus text: requests, latency, batch sizes, queue depth, inputs and tokens."""
    service = service_of(request)
    service.metrics.queue_depth.set(service.batcher.depth if service.batcher else 0)
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) for v in value)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("roberta-scratch")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------- the gate

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class Gate:
    """Plain ASGI middleware: API key, body size, metrics and the JSON access log, for every
    request (errors included). It reads the whole body first (it is small by then) so that an
    oversized one is refused before any route parses it."""

    def __init__(self, app: FastAPI, settings: Settings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics
        self.state = app.state  # tests reach the service through it
        self.key = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        status = [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        path = scope["path"]
        self.metrics.in_flight.inc()
        try:
            refusal, body = await self._check(scope, headers, receive)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
            else:
                await self.app(scope, replay(body, receive), send_with_id)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            route = path if path in ROUTES else "other"
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(seconds)
            access_log.info(
                json.dumps(
                    {
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "id": rid,
                        "method": scope["method"],
                        "route": path,
                        "status": status[0],
                        "inputs": state.get("inputs", 0),
                        "tokens": state.get("tokens", 0),
                        "queue_ms": state.get("queue_ms", 0.0),
                        "compute_ms": state.get("compute_ms", 0.0),
                        "total_ms": round(1000 * seconds, 2),
                        "client": (scope.get("client") or ("", 0))[0],
                    }
                )
            )

    async def _check(self, scope, headers: dict, receive):
        """(a response refusing the request, or None; its body)."""
        path = scope["path"]
        if self.key is not None and path not in OPEN_ROUTES:
            if not secrets.compare_digest(headers.get(b"authorization", b""), self.key):
                return error_response(
                    path,
                    401,
                    "a valid API key is required: send Authorization: Bearer KEY",
                    "unauthorized",
                    headers={"WWW-Authenticate": "Bearer"},
                ), b""
        if path in MODEL_ROUTES:
            refusal = self._queue_full(path)
            if refusal is not None:
                return refusal, b""
        limit = self.settings.max_request_bytes
        too_big = error_response(
            path,
            413,
            f"the request body is larger than --max-request-bytes {limit}",
            "validation",
            {"max_request_bytes": limit},
        )
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            return too_big, b""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return Response(status_code=400), b""
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return too_big, b""
            if not message.get("more_body", False):
                return None, b"".join(chunks)

    def _queue_full(self, path: str):
        """429 before reading the body when the queue is full: under overload a refusal must cost
        next to nothing, or it takes the cores from the requests that were accepted."""
        batcher = self.state.service.batcher
        if batcher is None or batcher.depth < batcher.max_queue:
            return None
        full = QueueFull(batcher.depth, batcher.max_queue, batcher.retry_after(1))
        return error_response(path, 429, str(full), "overloaded", headers={"Retry-After": str(full.retry_after)})


def replay(body: bytes, receive):
    """A receive() that gives the body already read, then listens as before (for disconnects)."""
    sent = False

    async def receive_again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again
